//! OCI images onto disk as layers a template can stack: image references, a registry client
//! (token and Basic auth, mirrors, platform selection, verified digests), a content-addressed
//! store of unpacked layers with reference counting, and imports from OCI layouts and
//! `docker save` archives.
//!
//! ```no_run
//! # async fn example() -> Result<(), cove_image::Error> {
//! use cove_image::{ClientConfig, Credentials, LayerStore, Reference, RegistryClient, StoreOptions};
//!
//! let store = LayerStore::open("/var/lib/cove/images", StoreOptions::default())?;
//! let client = RegistryClient::new(ClientConfig {
//!     mirrors: vec!["docker.io=http://127.0.0.1:5000".parse()?],
//!     ..ClientConfig::default()
//! })?;
//! let reference = Reference::parse("python:3.12")?;
//! let image = cove_image::pull(&client, &store, &reference, &Credentials::Anonymous,
//!     "template:my-app", &|event| tracing::info!(?event, "pull")).await?;
//! let lowerdirs = image.layer_paths_top_first(&store);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod auth;
mod compression;
mod config;
mod digest;
mod import;
mod manifest;
mod mirror;
mod platform;
mod pull;
mod reference;
mod registry;
mod store;
mod unpack;

pub use crate::{
    auth::Credentials,
    compression::Compression,
    config::ImageConfig,
    digest::{Digest, DigestError, HashingReader},
    import::{ImportError, import, import_blocking},
    manifest::{
        Descriptor, ImageIndex, ImageManifest, Manifest, ManifestError, PlatformSpec, media_type,
    },
    mirror::{Mirror, MirrorError},
    platform::{Platform, PlatformError},
    pull::{Image, PullEvent, pull},
    reference::{DOCKER_HUB, Reference, ReferenceError},
    registry::{ClientConfig, RegistryClient, RegistryError, ResolvedImage},
    store::{Exported, GcReport, LayerInfo, LayerStore, StoreError, StoreOptions, export_tree},
    unpack::{OPAQUE_XATTR, SkippedEntry, UnpackError, UnpackReport, unpack},
};

/// Everything that can go wrong getting an image onto disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Import(#[from] ImportError),
}

impl Error {
    /// Whether the user caused it (a bad reference, an unknown or foreign image, refused
    /// credentials, a broken image or archive) rather than this machine or an unreachable or
    /// failing registry: a 4xx, not a 5xx (502 for the registry's own failures).
    pub fn is_user_error(&self) -> bool {
        match self {
            Self::Reference(_) | Self::Mirror(_) | Self::Import(_) => true,
            Self::Registry(err) => match err {
                RegistryError::Status { status, .. } => *status < 500,
                RegistryError::Client(_)
                | RegistryError::Connect { .. }
                | RegistryError::Token { .. } => false,
                _ => true,
            },
            Self::Store(err) => matches!(
                err,
                StoreError::DigestMismatch { .. }
                    | StoreError::TooLarge { .. }
                    | StoreError::Unpack { .. }
                    | StoreError::Owner(_)
            ),
        }
    }
}

/// An error and its causes on one line (`a: b: c`), for logs and build output.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
