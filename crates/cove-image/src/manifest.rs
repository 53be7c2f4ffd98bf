//! The JSON documents of an image: descriptors, image manifests and indexes (OCI and
//! Docker v2 schema 2 forms, which have the same shape).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub mod media_type {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    pub const OCI_NONDISTRIBUTABLE_LAYER_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    pub const DOCKER_MANIFEST_V1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";

    /// What a registry is asked for: every manifest and index form we can read.
    pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.v2+json";
}

/// Manifests and configs are small; a larger one is refused rather than buffered.
pub const MAX_DOCUMENT_BYTES: u64 = 8 << 20;

/// A pointer to content: its digest, size and kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// The platform of one entry of an index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformSpec {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// One image: its config and its layers, bottom first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// Several manifests, one per platform (OCI index or Docker manifest list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// A manifest document of either kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "Docker schema 1 manifests are not supported (the image must be pushed again with a current Docker)"
    )]
    SchemaOne,
    #[error("unsupported manifest media type {0:?}")]
    MediaType(String),
    #[error("malformed manifest")]
    Json(#[source] serde_json::Error),
}

impl Manifest {
    /// Parses a manifest, telling the kinds apart by the response's content type, else by
    /// the document's own `mediaType`, else by its shape.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Self, ManifestError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            #[serde(default)]
            schema_version: u32,
            #[serde(default)]
            media_type: Option<String>,
            #[serde(default)]
            manifests: Option<serde_json::Value>,
        }
        let probe: Probe = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        if probe.schema_version == 1 {
            return Err(ManifestError::SchemaOne);
        }
        let kind = content_type
            .map(|c| c.split(';').next().unwrap_or(c).trim().to_owned())
            .filter(|c| !matches!(c.as_str(), "" | "application/json" | "text/plain"))
            .or(probe.media_type);
        let is_index = match kind.as_deref() {
            Some(media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST) => true,
            Some(media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST) => false,
            Some(media_type::DOCKER_MANIFEST_V1_SIGNED) => return Err(ManifestError::SchemaOne),
            Some(other) if !other.is_empty() => {
                return Err(ManifestError::MediaType(other.to_owned()));
            }
            _ => probe.manifests.is_some(),
        };
        if is_index {
            serde_json::from_slice(bytes)
                .map(Manifest::Index)
                .map_err(ManifestError::Json)
        } else {
            serde_json::from_slice(bytes)
                .map(Manifest::Image)
                .map_err(ManifestError::Json)
        }
    }
}

/// How a layer blob is compressed, by media type (the bytes' magic decides when unpacking).
pub fn is_layer_media_type(media_type: &str) -> bool {
    matches!(
        media_type,
        media_type::OCI_LAYER
            | media_type::OCI_LAYER_GZIP
            | media_type::OCI_LAYER_ZSTD
            | media_type::DOCKER_LAYER_GZIP
            | media_type::DOCKER_FOREIGN_LAYER_GZIP
            | media_type::OCI_NONDISTRIBUTABLE_LAYER_GZIP
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar"
    ) || media_type.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn tells_indexes_from_manifests() {
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"sha256:{HEX}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#,
            media_type::OCI_MANIFEST
        );
        let Manifest::Index(index) = Manifest::parse(index.as_bytes(), None).expect("parses")
        else {
            panic!("an index")
        };
        assert_eq!(
            index.manifests[0]
                .platform
                .as_ref()
                .map(|p| p.variant.as_deref()),
            Some(Some("v8"))
        );
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"sha256:{HEX}","size":2}},"layers":[]}}"#,
            media_type::DOCKER_MANIFEST,
            media_type::DOCKER_CONFIG
        );
        assert!(matches!(
            Manifest::parse(image.as_bytes(), Some("application/json")),
            Ok(Manifest::Image(_))
        ));
    }

    #[test]
    fn schema_one_and_unknown_types_are_refused() {
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":1,"name":"x"}"#, None),
            Err(ManifestError::SchemaOne)
        ));
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":2}"#, Some("application/x-thing")),
            Err(ManifestError::MediaType(_))
        ));
    }
}
