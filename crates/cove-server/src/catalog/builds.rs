//! Builds: each is created with its template's request (`waiting`), started when its steps
//! arrive (`triggered`), and ends `ready` with the layers it made or `error` with why.

use std::collections::BTreeMap;

use cove_db::{Row, params};
use cove_proto::templates::{BuildReason, BuildStatus};
use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError, Result};

/// What a finished build made: everything a sandbox of it needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Built {
    /// The layers its steps and its base made, in the layer store, top first.
    pub layers: Vec<String>,
    /// The layer Cove puts on top of them (accounts, host name, name servers).
    pub accounts: String,
    /// The user and working directory its processes run as and in by default.
    pub user: String,
    pub workdir: String,
    /// Variables every process of its sandboxes gets (the image's, then the build's).
    pub env: BTreeMap<String, String>,
    /// Started in the background when a sandbox starts; the sandbox is ready once
    /// `ready_cmd` succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
    /// What it was built from (`docker.io/library/python:3.12@sha256:…`, `template abc`).
    pub from: String,
    /// The shell its commands run in (`/bin/bash`, else `/bin/sh`).
    #[serde(default = "default_shell")]
    pub shell: String,
}

fn default_shell() -> String {
    "/bin/sh".to_owned()
}

/// A build as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildRow {
    pub id: String,
    pub template: String,
    pub status: BuildStatus,
    /// Its steps arrived and it was started (or waits for its turn).
    pub triggered: bool,
    /// The tags it takes once ready.
    pub tags: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    pub result: Option<Built>,
    pub reason: Option<BuildReason>,
}

const COLUMNS: &str =
    "id, template, status, triggered, tags, created_at, updated_at, finished_at, result, reason";

impl Catalog {
    /// A new build of `template` that will take `tags`.
    pub fn new_build(&self, id: &str, template: &str, tags: &[String]) -> Result<BuildRow> {
        let now = crate::clock::now_ms();
        self.db.execute(
            "INSERT INTO template_builds (id, template, status, tags, created_at, updated_at) VALUES (?1, ?2, 'waiting', ?3, ?4, ?4)",
            params![id, template, serde_json::to_string(tags)?, now],
        )?;
        Ok(BuildRow {
            id: id.to_owned(),
            template: template.to_owned(),
            status: BuildStatus::Waiting,
            triggered: false,
            tags: tags.to_vec(),
            created_at: now,
            updated_at: now,
            finished_at: None,
            result: None,
            reason: None,
        })
    }

    /// Build `id` of `template`.
    pub fn build(&self, template: &str, id: &str) -> Result<Option<BuildRow>> {
        self.db
            .query_row(
                &format!("SELECT {COLUMNS} FROM template_builds WHERE id = ?1 AND template = ?2"),
                params![id, template],
            )?
            .map(|row| raw_build(&row)?.parse())
            .transpose()
    }

    /// Whether build `id` is known, of any template and in any state.
    pub fn build_exists(&self, id: &str) -> Result<bool> {
        Ok(self
            .db
            .query_row("SELECT 1 FROM template_builds WHERE id = ?1", params![id])?
            .is_some())
    }

    /// Every build of `template`, newest first.
    pub fn builds_of(&self, template: &str) -> Result<Vec<BuildRow>> {
        self.db
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM template_builds WHERE template = ?1 ORDER BY created_at DESC, id"
                ),
                params![template],
            )?
            .iter()
            .map(|row| raw_build(row)?.parse())
            .collect()
    }

    /// Marks a waiting build as started; `false` when it was started already.
    pub fn trigger_build(&self, id: &str) -> Result<bool> {
        let changed = self.db.execute(
            "UPDATE template_builds SET triggered = 1, updated_at = ?2 WHERE id = ?1 AND triggered = 0 AND status = 'waiting'",
            params![id, crate::clock::now_ms()],
        )?;
        Ok(changed == 1)
    }

    /// Sets a running build's status.
    pub fn set_build_status(&self, id: &str, status: BuildStatus) -> Result<()> {
        self.db.execute(
            "UPDATE template_builds SET status = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, status.as_str(), crate::clock::now_ms()],
        )?;
        Ok(())
    }

    /// Ends a build: ready with what it made, or failed for `reason`.
    pub fn finish_build(
        &self,
        id: &str,
        outcome: std::result::Result<&Built, &BuildReason>,
    ) -> Result<()> {
        let now = crate::clock::now_ms();
        let (status, result, reason) = match outcome {
            Ok(built) => ("ready", Some(serde_json::to_string(built)?), None),
            Err(reason) => ("error", None, Some(serde_json::to_string(reason)?)),
        };
        self.db.execute(
            "UPDATE template_builds SET status = ?2, result = ?3, reason = ?4, updated_at = ?5, finished_at = ?5 WHERE id = ?1",
            params![id, status, result, reason, now],
        )?;
        Ok(())
    }

    /// After a restart: every build that was started and had not finished ends as failed
    /// (its work died with the server). Returns them.
    pub fn fail_interrupted_builds(&self, reason: &BuildReason) -> Result<Vec<BuildRow>> {
        let interrupted = self
            .db
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM template_builds WHERE triggered = 1 AND status IN ('waiting', 'building')"
                ),
                &[],
            )?
            .iter()
            .map(|row| raw_build(row)?.parse())
            .collect::<Result<Vec<_>>>()?;
        for build in &interrupted {
            self.finish_build(&build.id, Err(reason))?;
        }
        Ok(interrupted)
    }

    /// Deletes builds that never started and are older than `before` (abandoned requests).
    pub fn forget_untriggered_builds(&self, before: i64) -> Result<usize> {
        let forgotten = self.db.execute(
            "DELETE FROM template_builds WHERE triggered = 0 AND status = 'waiting' AND created_at < ?1",
            params![before],
        )?;
        Ok(usize::try_from(forgotten).unwrap_or(usize::MAX))
    }
}

struct RawBuild {
    id: String,
    template: String,
    status: String,
    triggered: bool,
    tags: String,
    created_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
    result: Option<String>,
    reason: Option<String>,
}

fn raw_build(row: &Row) -> cove_db::Result<RawBuild> {
    Ok(RawBuild {
        id: row.text(0)?,
        template: row.text(1)?,
        status: row.text(2)?,
        triggered: row.flag(3)?,
        tags: row.text(4)?,
        created_at: row.int(5)?,
        updated_at: row.int(6)?,
        finished_at: row.opt_int(7)?,
        result: row.opt_text(8)?,
        reason: row.opt_text(9)?,
    })
}

impl RawBuild {
    fn parse(self) -> Result<BuildRow> {
        let status = self.status.parse().map_err(|e: String| {
            CatalogError::Record(<serde_json::Error as serde::de::Error>::custom(e))
        })?;
        Ok(BuildRow {
            id: self.id,
            template: self.template,
            status,
            triggered: self.triggered,
            tags: serde_json::from_str(&self.tags)?,
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
            result: self
                .result
                .as_deref()
                .map(serde_json::from_str)
                .transpose()?,
            reason: self
                .reason
                .as_deref()
                .map(serde_json::from_str)
                .transpose()?,
        })
    }
}
