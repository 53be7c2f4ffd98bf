//! Bodies of E2B's template build API (`POST /v3/templates`, the context upload, the build,
//! its status, tags, aliases), shared by `cove serve` and the SDK, and the few Cove adds
//! (import, collection, disk use). Field names follow E2B's API.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Body of `POST /v3/templates`: a template (new, or rebuilt when the name is taken by the
/// caller's team) and its next build.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewTemplate {
    /// `name` or `name:tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Deprecated spelling of `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(rename = "teamID", default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<u32>,
    #[serde(rename = "memoryMB", default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_disk_mb: Option<u64>,
    /// Cove's: the backend its sandboxes run on (`namespace`, `gvisor`) unless a create names
    /// one in its metadata (`cove.runtime`); kept until a build names another. None: the
    /// server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

/// Answer of `POST /v3/templates` (202).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRequested {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub public: bool,
    pub names: Vec<String>,
    pub tags: Vec<String>,
    pub aliases: Vec<String>,
}

/// Answer of `GET /templates/{id}/files/{hash}` (201): whether the build context with that
/// hash is there already, and where to `PUT` it if not (the URL carries its own credential).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileUpload {
    pub present: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Body of `POST /v2/templates/{id}/builds/{buildID}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildStart {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_image_registry: Option<RegistryAuth>,
    /// Rebuild every step, whatever the cache holds.
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
}

/// Credentials for the registry of `fromImage`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RegistryAuth {
    /// Any registry, with a user name and password (or token).
    Registry { username: String, password: String },
    /// Google Artifact Registry / GCR with a service account.
    Gcp {
        #[serde(rename = "serviceAccountJson")]
        service_account_json: String,
    },
    /// Amazon ECR with an access key.
    Aws {
        #[serde(rename = "awsAccessKeyId")]
        access_key_id: String,
        #[serde(rename = "awsSecretAccessKey")]
        secret_access_key: String,
        #[serde(rename = "awsRegion")]
        region: String,
    },
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets.
        match self {
            Self::Registry { username, .. } => f
                .debug_struct("Registry")
                .field("username", username)
                .finish_non_exhaustive(),
            Self::Gcp { .. } => f.debug_struct("Gcp").finish_non_exhaustive(),
            Self::Aws { region, .. } => f
                .debug_struct("Aws")
                .field("region", region)
                .finish_non_exhaustive(),
        }
    }
}

/// One build step as the SDKs send it: `RUN [cmd, user?]`, `COPY [src, dest, user, mode]`
/// (with `filesHash`), `ENV [k, v, …]`, `WORKDIR [path]`, `USER [name]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_hash: Option<String>,
    /// Rebuild this step (and the ones after it) whatever the cache holds.
    #[serde(default)]
    pub force: bool,
}

/// Where a build is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    /// Created, its steps not sent yet, or waiting for its turn.
    Waiting,
    Building,
    Ready,
    Error,
}

impl BuildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Building => "building",
            Self::Ready => "ready",
            Self::Error => "error",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Self::Ready | Self::Error)
    }
}

impl std::str::FromStr for BuildStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "waiting" => Ok(Self::Waiting),
            "building" => Ok(Self::Building),
            "ready" => Ok(Self::Ready),
            "error" => Ok(Self::Error),
            other => Err(format!("unknown build status {other:?}")),
        }
    }
}

/// One line of a build's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildLogEntry {
    /// RFC 3339.
    pub timestamp: String,
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
    /// The step it belongs to: `base`, `1`…`n` (the request's steps, counted from one),
    /// `finalize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Cove's own: how far a download is, for progress bars (E2B's SDKs ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// Bytes of a download done, of `total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// Why a build ended as it did (its failing step, with that step's last log lines).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildReason {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default)]
    pub log_entries: Vec<BuildLogEntry>,
}

/// Answer of `GET /templates/{id}/builds/{buildID}/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub status: BuildStatus,
    /// Always empty (E2B's deprecated raw lines).
    #[serde(default)]
    pub logs: Vec<String>,
    #[serde(default)]
    pub log_entries: Vec<BuildLogEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<BuildReason>,
}

/// Body of `POST /templates/tags`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignTags {
    /// `name:tag`: the build to tag (`name` alone is its `default` tag).
    pub target: String,
    pub tags: Vec<String>,
}

/// Answer of `POST /templates/tags` (201).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedTags {
    pub tags: Vec<String>,
    #[serde(rename = "buildID")]
    pub build_id: String,
}

/// Body of `DELETE /templates/tags`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteTags {
    pub name: String,
    pub tags: Vec<String>,
}

/// One item of `GET /templates/{id}/tags`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateTag {
    pub tag: String,
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub created_at: String,
}

/// Answer of `GET /templates/aliases/{alias}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasInfo {
    #[serde(rename = "templateID")]
    pub template_id: String,
    pub public: bool,
}

/// One item of Cove's `GET /cove/templates/usage`: what a template's layers take on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateUsage {
    #[serde(rename = "templateID")]
    pub template_id: String,
    pub aliases: Vec<String>,
    /// Layers of its builds.
    pub layers: usize,
    /// Bytes they take, each layer counted once.
    pub disk_bytes: u64,
    /// Of those, bytes of layers other templates use too.
    pub shared_bytes: u64,
}

/// Answer of Cove's `POST /cove/templates/gc`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectedLayers {
    pub removed_layers: usize,
    pub freed_bytes: u64,
    /// Layers and snapshot directories removed from the object store (`--object-store`).
    #[serde(default)]
    pub shared_removed: usize,
    #[serde(default)]
    pub shared_freed_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_python_sdks_build_body_parses() {
        // As captured from e2b 2.63.0's Template.build.
        let body: BuildStart = serde_json::from_str(
            r#"{"fromImage":"python:3.12","force":false,"steps":[{"type":"USER","args":["root"],"force":false},{"type":"COPY","args":["app","/app/src","user:user","0755"],"filesHash":"4196f6a7","force":false},{"type":"RUN","args":["pip install numpy","root"],"force":true}],"startCmd":"python -m http.server 8000","readyCmd":"[ -n \"$(ss -Htuln sport = :8000)\" ]"}"#,
        )
        .unwrap();
        assert_eq!(body.from_image.as_deref(), Some("python:3.12"));
        assert_eq!(body.steps[1].kind, "COPY");
        assert_eq!(body.steps[1].files_hash.as_deref(), Some("4196f6a7"));
        assert!(body.steps[2].force);
        let auth: RegistryAuth =
            serde_json::from_str(r#"{"type":"registry","username":"u","password":"secret"}"#)
                .unwrap();
        assert!(!format!("{auth:?}").contains("secret"));
        let aws: RegistryAuth = serde_json::from_str(
            r#"{"type":"aws","awsAccessKeyId":"a","awsSecretAccessKey":"s","awsRegion":"eu-west-1"}"#,
        )
        .unwrap();
        assert!(matches!(aws, RegistryAuth::Aws { .. }));
    }

    #[test]
    fn status_answers_omit_what_is_unset() {
        let info = BuildInfo {
            template_id: "t".into(),
            build_id: "b".into(),
            status: BuildStatus::Building,
            logs: Vec::new(),
            log_entries: vec![BuildLogEntry {
                timestamp: "2026-01-01T00:00:00Z".into(),
                level: "info".into(),
                message: "hi".into(),
                step: Some("1".into()),
                progress: None,
            }],
            reason: None,
        };
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["status"], "building");
        assert!(json.get("reason").is_none());
        assert!(json["logEntries"][0].get("progress").is_none());
    }
}
