//! Volumes: a team's named filesystems that outlive sandboxes. Made and listed through the
//! control plane (`/volumes`); their files are read and written through the content API
//! (`/volumecontent/{id}/…`) with the volume's own token, as E2B's `Volume` class does.

use cove_proto::rest::{NewVolume, Volume as Listed, VolumeAndToken, VolumeEntryStat};

use crate::{
    config::ConnectionConfig,
    error::{Error, Result},
};

/// A volume and the token of its content.
#[derive(Clone, Debug)]
pub struct Volume {
    config: ConnectionConfig,
    info: VolumeAndToken,
}

impl Volume {
    /// Makes a volume named `name` of `size_mb` MiB (the server's default when `None`).
    pub async fn create(
        config: &ConnectionConfig,
        name: &str,
        size_mb: Option<u64>,
    ) -> Result<Self> {
        let body = NewVolume {
            name: name.to_owned(),
            size_mb,
        };
        let info = config
            .api(http::Method::POST, "/volumes")
            .json(&body)
            .send_json()
            .await?;
        Ok(Self {
            config: config.clone(),
            info,
        })
    }

    /// The team's volumes.
    pub async fn list(config: &ConnectionConfig) -> Result<Vec<Listed>> {
        config.api(http::Method::GET, "/volumes").send_json().await
    }

    /// The volume `id` of the team.
    pub async fn connect(config: &ConnectionConfig, id: &str) -> Result<Self> {
        let info = config
            .api(http::Method::GET, &format!("/volumes/{id}"))
            .send_json()
            .await?;
        Ok(Self {
            config: config.clone(),
            info,
        })
    }

    /// The volume of the team named `name`.
    pub async fn by_name(config: &ConnectionConfig, name: &str) -> Result<Self> {
        let listed = Self::list(config).await?;
        let found = listed
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| Error::NotFound(format!("volume {name:?}")))?;
        Self::connect(config, &found.volume_id).await
    }

    /// Deletes the volume `id` and its files; `false` when there is none. A volume mounted
    /// in a sandbox is refused (HTTP 409).
    pub async fn destroy(config: &ConnectionConfig, id: &str) -> Result<bool> {
        crate::error::found(
            config
                .api(http::Method::DELETE, &format!("/volumes/{id}"))
                .send_empty()
                .await,
        )
    }

    pub fn id(&self) -> &str {
        &self.info.volume_id
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Its quota in MiB, when the server says.
    pub fn size_mb(&self) -> Option<u64> {
        self.info.size_mb
    }

    fn content(&self, method: http::Method, what: &str, path: &str) -> crate::config::ApiRequest {
        let url = format!(
            "{}/volumecontent/{}/{what}",
            self.config.api_url(),
            self.info.volume_id
        );
        self.config
            .raw(method, &url)
            .bearer(&self.info.token)
            .query(&[("path", path)])
    }

    /// The content of the file at `path`.
    pub async fn read(&self, path: &str) -> Result<bytes::Bytes> {
        self.content(http::Method::GET, "file", path)
            .send_bytes()
            .await
    }

    /// Writes `data` to the file at `path` (made with its missing parent directories, or
    /// replaced).
    pub async fn write(
        &self,
        path: &str,
        data: impl Into<reqwest::Body>,
    ) -> Result<VolumeEntryStat> {
        self.content(http::Method::PUT, "file", path)
            .query(&[("force", "true")])
            .body(data)
            .send_json()
            .await
    }

    /// The entries of the directory at `path`.
    pub async fn list_dir(&self, path: &str) -> Result<Vec<VolumeEntryStat>> {
        self.content(http::Method::GET, "dir", path)
            .send_json()
            .await
    }

    /// What is at `path`.
    pub async fn stat(&self, path: &str) -> Result<VolumeEntryStat> {
        self.content(http::Method::GET, "path", path)
            .send_json()
            .await
    }

    /// Makes the directory `path` with its missing parents.
    pub async fn make_dir(&self, path: &str) -> Result<VolumeEntryStat> {
        self.content(http::Method::POST, "dir", path)
            .query(&[("force", "true")])
            .send_json()
            .await
    }

    /// Removes the file or directory (with what is below it) at `path`.
    pub async fn remove(&self, path: &str) -> Result<()> {
        self.content(http::Method::DELETE, "path", path)
            .send_empty()
            .await
    }
}
