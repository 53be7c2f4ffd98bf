//! The image config: what a container of the image runs by default, and its layers'
//! uncompressed digests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// The defaults an image declares, for making a template's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    /// `KEY=value` entries in the image's order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `name`, `uid`, `name:group` or `uid:gid`, as the image says it.
    pub user: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `8000/tcp` and the like.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    /// The environment as pairs (an entry without `=` is a variable set to "").
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (e.clone(), String::new()),
            })
            .collect()
    }
}

/// The config document as registries store it.
#[derive(Debug, Deserialize)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<RawRunConfig>,
    pub rootfs: RawRootfs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RawRunConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawRootfs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

impl RawConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The public part, with empty strings read as absent (Docker writes `"User": ""`).
    pub fn image_config(&self) -> ImageConfig {
        let run = self.config.as_ref();
        let text = |v: Option<&String>| v.filter(|s| !s.is_empty()).cloned();
        ImageConfig {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
            env: run.and_then(|r| r.env.clone()).unwrap_or_default(),
            working_dir: text(run.and_then(|r| r.working_dir.as_ref())),
            user: text(run.and_then(|r| r.user.as_ref())),
            entrypoint: run.and_then(|r| r.entrypoint.clone()),
            cmd: run.and_then(|r| r.cmd.clone()),
            exposed_ports: run
                .and_then(|r| r.exposed_ports.as_ref())
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default(),
            labels: run.and_then(|r| r.labels.clone()).unwrap_or_default(),
            stop_signal: text(run.and_then(|r| r.stop_signal.as_ref())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_configs() {
        let raw = RawConfig::parse(
            br#"{"architecture":"amd64","os":"linux","config":{"User":"","Env":["PATH=/usr/bin","LANG=C.UTF-8","EMPTY"],"Cmd":["python3"],"WorkingDir":"/app","ExposedPorts":{"8000/tcp":{}}},"rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}}"#,
        )
        .expect("parses");
        let config = raw.image_config();
        assert_eq!(config.user, None);
        assert_eq!(config.working_dir.as_deref(), Some("/app"));
        assert_eq!(config.cmd, Some(vec!["python3".to_owned()]));
        assert_eq!(config.entrypoint, None);
        assert_eq!(config.exposed_ports, vec!["8000/tcp".to_owned()]);
        assert_eq!(config.env_pairs()[2], ("EMPTY".to_owned(), String::new()));
        assert_eq!(raw.rootfs.diff_ids.len(), 1);
        assert_eq!(raw.rootfs.kind, "layers");
    }
}
