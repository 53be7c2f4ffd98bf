//! Platforms (`linux/amd64`) and picking an index's entry for ours.

use std::fmt;

use crate::manifest::{Descriptor, ImageIndex, PlatformSpec};

/// An operating system, CPU architecture and optional variant, as OCI names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{reference} has no {wanted} image; it has: {}", if available.is_empty() { "none".to_owned() } else { available.join(", ") })]
pub struct PlatformError {
    pub reference: String,
    pub wanted: String,
    pub available: Vec<String>,
}

impl Platform {
    /// The platform sandboxes on this machine run: Linux on this CPU.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    /// Whether an index entry's or a config's platform is ours (any variant when we name none).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && (self.variant.is_none() || self.variant.as_deref() == variant)
    }

    /// The entry of `index` for this platform, or an error listing the platforms it has.
    pub fn select<'a>(
        &self,
        index: &'a ImageIndex,
        reference: &str,
    ) -> Result<&'a Descriptor, PlatformError> {
        index
            .manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| self.matches(&p.os, &p.architecture, p.variant.as_deref()))
            })
            .ok_or_else(|| PlatformError {
                reference: reference.to_owned(),
                wanted: self.to_string(),
                available: index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    // Build attestations hang off indexes as "unknown/unknown".
                    .filter(|p| p.os != "unknown")
                    .map(spec_name)
                    .collect(),
            })
    }
}

impl Default for Platform {
    fn default() -> Self {
        Self::host()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

pub(crate) fn spec_name(p: &PlatformSpec) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn entry(os: &str, arch: &str, variant: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: crate::manifest::media_type::OCI_MANIFEST.to_owned(),
            digest: Digest::of(format!("{os}{arch}").as_bytes()),
            size: 1,
            platform: Some(PlatformSpec {
                architecture: arch.to_owned(),
                os: os.to_owned(),
                variant: variant.map(str::to_owned),
            }),
            annotations: Default::default(),
            urls: vec![],
        }
    }

    #[test]
    fn picks_ours_and_names_the_others_when_missing() {
        let amd64 = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        let index = ImageIndex {
            schema_version: 2,
            media_type: None,
            manifests: vec![
                entry("linux", "arm64", Some("v8")),
                entry("unknown", "unknown", None),
                entry("linux", "amd64", None),
            ],
        };
        assert_eq!(
            amd64.select(&index, "x").expect("found").digest,
            index.manifests[2].digest
        );
        let only_arm = ImageIndex {
            manifests: index.manifests[..2].to_vec(),
            ..index
        };
        let err = amd64
            .select(&only_arm, "docker.io/library/x:1")
            .expect_err("no amd64");
        assert_eq!(
            err.to_string(),
            "docker.io/library/x:1 has no linux/amd64 image; it has: linux/arm64/v8"
        );
    }
}
