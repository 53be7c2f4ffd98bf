//! Image references (`python:3.12`, `ghcr.io/org/img@sha256:…`, `localhost:5000/x:y`),
//! normalised as Docker does: no registry means `docker.io`, a one-part Docker Hub name
//! lives under `library/`, and no tag nor digest means `:latest`.

use std::{fmt, str::FromStr};

use crate::digest::Digest;

/// Docker Hub's canonical name.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API is actually served.
pub(crate) const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// A fully normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("image reference {reference:?} is too long (at most 255 characters before the tag)")]
    TooLong { reference: String },
    #[error("image reference {reference:?} has an invalid registry {registry:?}")]
    Registry { reference: String, registry: String },
    #[error(
        "image reference {reference:?} has an invalid repository {repository:?} (lowercase letters, digits and . _ - separators, parts joined by /)"
    )]
    Repository {
        reference: String,
        repository: String,
    },
    #[error(
        "image reference {reference:?} has an invalid tag {tag:?} (letters, digits, _ . -, at most 128, not starting with . or -)"
    )]
    Tag { reference: String, tag: String },
    #[error("image reference {reference:?} has an invalid digest")]
    Digest {
        reference: String,
        #[source]
        source: crate::digest::DigestError,
    },
}

impl Reference {
    /// Parses and normalises a reference the way `docker pull` does.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (name_tag, digest) = match input.split_once('@') {
            Some((name, digest)) => {
                let digest = digest.parse().map_err(|source| ReferenceError::Digest {
                    reference: input.to_owned(),
                    source,
                })?;
                (name, Some(digest))
            }
            None => (input, None),
        };
        let (registry, rest) = split_registry(name_tag);
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((repository, tag)) => (repository, Some(tag)),
            None => (rest, None),
        };
        if name_tag.len() - tag.map_or(0, |t| t.len() + 1) > 255 {
            return Err(ReferenceError::TooLong {
                reference: input.to_owned(),
            });
        }
        if !valid_registry(registry) {
            return Err(ReferenceError::Registry {
                reference: input.to_owned(),
                registry: registry.to_owned(),
            });
        }
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_owned()
        };
        if !valid_repository(&repository) {
            return Err(ReferenceError::Repository {
                reference: input.to_owned(),
                repository,
            });
        }
        if let Some(tag) = tag.filter(|t| !valid_tag(t)) {
            return Err(ReferenceError::Tag {
                reference: input.to_owned(),
                tag: tag.to_owned(),
            });
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }

    /// The registry's name as users write it (`docker.io`, `ghcr.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry (`library/python`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same image pinned to `digest` (the tag is kept for display).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// What the manifest request names: the digest when there is one (it wins over the
    /// tag, as in Docker), else the tag.
    pub(crate) fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The host the registry API is served from (Docker Hub's differs from its name).
    pub(crate) fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// Whether the registry is on this machine, where plain HTTP is allowed as Docker does
    /// for `localhost` and 127.0.0.0/8.
    pub(crate) fn is_loopback(&self) -> bool {
        let host = host_of(&self.registry);
        host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Docker's rule: the first part names a registry if it has a `.` or `:`, is `localhost`,
/// or has uppercase letters (which repositories cannot).
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

/// The host part of `host[:port]` (IPv6 literals keep their brackets).
fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry.find(']').map_or(registry, |end| &registry[..=end]);
    }
    registry.split(':').next().unwrap_or(registry)
}

fn valid_registry(registry: &str) -> bool {
    let host = host_of(registry);
    let port = &registry[host.len()..];
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
        });
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    port_ok && host_ok
}

/// Each `/`-separated part: `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_repository(repository: &str) -> bool {
    !repository.is_empty()
        && repository.split('/').all(|part| {
            let bytes = part.as_bytes();
            let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
                return false;
            };
            let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            if !alnum(first) || !alnum(last) {
                return false;
            }
            let mut separator = String::new();
            for &b in bytes {
                if alnum(&b) {
                    let ok = separator.is_empty()
                        || separator == "."
                        || separator == "_"
                        || separator == "__"
                        || separator.bytes().all(|s| s == b'-');
                    if !ok {
                        return false;
                    }
                    separator.clear();
                } else if matches!(b, b'.' | b'_' | b'-') {
                    separator.push(b as char);
                } else {
                    return false;
                }
            }
            true
        })
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_short_names_are_normalised() {
        let r = parsed("python:3.12");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/python");
        assert_eq!(r.tag(), Some("3.12"));
        assert_eq!(r.to_string(), "docker.io/library/python:3.12");
        assert_eq!(r, parsed("docker.io/library/python:3.12"));
        assert_eq!(r, parsed("index.docker.io/library/python:3.12"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
    }

    #[test]
    fn no_tag_means_latest_and_user_repos_keep_their_namespace() {
        assert_eq!(
            parsed("ubuntu").to_string(),
            "docker.io/library/ubuntu:latest"
        );
        assert_eq!(
            parsed("e2bdev/code-interpreter").to_string(),
            "docker.io/e2bdev/code-interpreter:latest"
        );
    }

    #[test]
    fn other_registries_and_digests() {
        let hex = "a".repeat(64);
        let r = parsed(&format!("ghcr.io/org/img@sha256:{hex}"));
        assert_eq!(r.registry(), "ghcr.io");
        assert_eq!(r.repository(), "org/img");
        assert_eq!(r.tag(), None);
        assert_eq!(r.manifest_reference(), format!("sha256:{hex}"));
        let both = parsed(&format!("ghcr.io/org/img:v1@sha256:{hex}"));
        assert_eq!(both.tag(), Some("v1"));
        assert_eq!(both.manifest_reference(), format!("sha256:{hex}"));
    }

    #[test]
    fn localhost_and_ports() {
        let r = parsed("localhost:5000/x:y");
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository(), "x");
        assert_eq!(r.tag(), Some("y"));
        assert!(r.is_loopback());
        assert!(parsed("127.0.0.1:5000/a/b").is_loopback());
        assert!(parsed("localhost/x").is_loopback());
        assert!(!parsed("ghcr.io/x").is_loopback());
        // A port-less first part without dots is a Docker Hub namespace.
        assert_eq!(parsed("myorg/app:1").registry(), "docker.io");
    }

    #[test]
    fn invalid_references_are_refused() {
        assert!(matches!(Reference::parse(""), Err(ReferenceError::Empty)));
        assert!(matches!(
            Reference::parse("Python:3"),
            Err(ReferenceError::Repository { .. })
        ));
        assert!(matches!(
            Reference::parse("python:-bad"),
            Err(ReferenceError::Tag { .. })
        ));
        assert!(matches!(
            Reference::parse("python@sha256:abc"),
            Err(ReferenceError::Digest { .. })
        ));
        assert!(matches!(
            Reference::parse("ghcr.io/a//b"),
            Err(ReferenceError::Repository { .. })
        ));
        assert!(matches!(
            Reference::parse("bad_host.io:99999999/a"),
            Err(ReferenceError::Registry { .. })
        ));
        assert!(Reference::parse(&format!("{}:1", "a".repeat(300))).is_err());
    }
}
