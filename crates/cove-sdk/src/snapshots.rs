//! Pausing sandboxes, snapshots of their files and forks.

use std::time::Duration;

use cove_proto::rest::{self, ForkResult, ForkSandbox, NewSnapshot, PauseSandbox, SnapshotInfo};

use crate::{
    Sandbox,
    config::ConnectionConfig,
    error::{Error, Result},
};

/// What a pause keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseMode {
    /// The processes and their memory (resuming continues them).
    Memory,
    /// Only the files (resuming starts the sandbox again on them).
    Filesystem,
}

impl Sandbox {
    /// Pauses this sandbox; `false` when it was paused already. [`Sandbox::connect`] resumes
    /// it.
    pub async fn pause(&self, mode: PauseMode) -> Result<bool> {
        Self::pause_by_id(self.config(), self.id(), mode).await
    }

    /// Pauses the sandbox `id`; `false` when it was paused already.
    pub async fn pause_by_id(config: &ConnectionConfig, id: &str, mode: PauseMode) -> Result<bool> {
        let body = PauseSandbox {
            memory: Some(mode == PauseMode::Memory),
            require_healthy_guest: None,
        };
        match config
            .api(http::Method::POST, &format!("/sandboxes/{id}/pause"))
            .json(&body)
            .send_empty()
            .await
        {
            Ok(()) => Ok(true),
            Err(Error::Api { status: 409, .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Freezes this sandbox's files into a snapshot that sandboxes can be created from
    /// (`CreateOptions::template` = its `snapshot_id`).
    pub async fn snapshot(&self, name: Option<&str>) -> Result<SnapshotInfo> {
        let body = NewSnapshot {
            name: name.map(str::to_owned),
            memory: None,
        };
        self.config()
            .api(
                http::Method::POST,
                &format!("/sandboxes/{}/snapshots", self.id()),
            )
            .json(&body)
            .send_json()
            .await
    }

    /// Deletes a snapshot; `false` when there is no such snapshot.
    pub async fn delete_snapshot(config: &ConnectionConfig, snapshot_id: &str) -> Result<bool> {
        let path = format!("/templates/{}", urlencode(snapshot_id));
        crate::error::found(config.api(http::Method::DELETE, &path).send_empty().await)
    }

    /// Starts `count` new sandboxes on a copy of this one's files, each living `timeout`;
    /// one outcome per fork.
    pub async fn fork(
        &self,
        count: u32,
        timeout: Option<Duration>,
    ) -> Result<Vec<Result<Sandbox>>> {
        let body = ForkSandbox {
            timeout: timeout.map(|t| t.as_secs().try_into().unwrap_or(i64::MAX)),
            count: Some(i64::from(count)),
            // The source's memory too, where its backend can keep it (the server's choice).
            memory: None,
        };
        let results: Vec<ForkResult> = self
            .config()
            .api(
                http::Method::POST,
                &format!("/sandboxes/{}/fork", self.id()),
            )
            .json(&body)
            .send_json()
            .await?;
        Ok(results
            .into_iter()
            .map(|result| match (result.sandbox, result.error) {
                (Some(info), _) => Sandbox::from_info(self.config(), info),
                (None, Some(rest::ApiError { code, message })) => Err(Error::Api {
                    status: code,
                    message,
                }),
                (None, None) => Err(Error::Protocol(
                    "a fork result with neither sandbox nor error".into(),
                )),
            })
            .collect())
    }
}

/// Escapes what a path segment cannot hold as it is (`/` and `:` of snapshot names).
fn urlencode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
