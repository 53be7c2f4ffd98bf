//! Registry mirrors, `docker.io=http://127.0.0.1:5000` as Docker's `registry-mirrors` and
//! containerd's `hosts.toml` have them: a pull tries the mirrors of the image's registry in
//! order and falls back to the registry itself.

use std::{fmt, str::FromStr};

use reqwest::Url;

use crate::reference::DOCKER_HUB;

/// A mirror of one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// The registry mirrored, as references name it (`docker.io`, `ghcr.io`).
    pub registry: String,
    /// Where the mirror serves the registry API (`http://127.0.0.1:5000`); plain HTTP is
    /// allowed, since an operator names it.
    pub endpoint: Url,
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(
        "registry mirror {0:?} is not of the form REGISTRY=URL (docker.io=http://127.0.0.1:5000)"
    )]
    Form(String),
    #[error(
        "registry mirror {0:?} needs an http:// or https:// URL with a host and no path, query or credentials"
    )]
    Url(String),
}

impl FromStr for Mirror {
    type Err = MirrorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (registry, url) = s
            .split_once('=')
            .filter(|(r, u)| !r.is_empty() && !u.is_empty())
            .ok_or_else(|| MirrorError::Form(s.to_owned()))?;
        let registry = match registry.trim() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
            other => other,
        };
        let endpoint = Url::parse(url.trim()).map_err(|_| MirrorError::Url(s.to_owned()))?;
        let ok = matches!(endpoint.scheme(), "http" | "https")
            && endpoint.host_str().is_some()
            && matches!(endpoint.path(), "" | "/")
            && endpoint.query().is_none()
            && endpoint.username().is_empty()
            && endpoint.password().is_none();
        if !ok {
            return Err(MirrorError::Url(s.to_owned()));
        }
        Ok(Self {
            registry: registry.to_owned(),
            endpoint,
        })
    }
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}",
            self.registry,
            self.endpoint.as_str().trim_end_matches('/')
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_style_mirrors() {
        let m: Mirror = "docker.io=http://127.0.0.1:5000".parse().expect("valid");
        assert_eq!(m.registry, "docker.io");
        assert_eq!(m.endpoint.as_str(), "http://127.0.0.1:5000/");
        assert_eq!(m.to_string(), "docker.io=http://127.0.0.1:5000");
        let hub: Mirror = "index.docker.io=https://mirror.example/"
            .parse()
            .expect("valid");
        assert_eq!(hub.registry, "docker.io");
    }

    #[test]
    fn refuses_malformed_mirrors() {
        for bad in [
            "http://127.0.0.1:5000",
            "docker.io=",
            "docker.io=ftp://x",
            "docker.io=http://x/v2/prefix",
            "docker.io=http://user:pw@x",
        ] {
            assert!(bad.parse::<Mirror>().is_err(), "{bad}");
        }
    }
}
