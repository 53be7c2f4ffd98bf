//! Importing images without a registry: an OCI image layout directory (`skopeo copy … oci:`,
//! `umoci`, BuildKit's `type=oci` output) or a `docker save` tarball (the classic
//! `manifest.json` form, and the OCI layout that Docker 25+ writes inside it).

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    Error,
    config::RawConfig,
    digest::Digest,
    manifest::{ImageManifest, MAX_DOCUMENT_BYTES, Manifest},
    platform::Platform,
    pull::Image,
    reference::Reference,
    registry::check_image,
    store::{Expected, LayerStore},
};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is neither an OCI image layout (index.json) nor a docker save archive (manifest.json)"
    )]
    Format { path: PathBuf },
    #[error("{path} has no {what}")]
    Missing { path: PathBuf, what: String },
    #[error("{path} holds {count} images ({names}); name the one to import")]
    Ambiguous {
        path: PathBuf,
        count: usize,
        names: String,
    },
    #[error("bad {what} in {path}")]
    Json {
        path: PathBuf,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("bad index.json in {path}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: crate::manifest::ManifestError,
    },
    #[error("{what} in {path}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        path: PathBuf,
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what} in {path} is larger than {limit} bytes")]
    TooLarge {
        path: PathBuf,
        what: String,
        limit: u64,
    },
}

/// Imports the image `tag` (or the only one) from an OCI layout directory or a `docker save`
/// tarball at `path`, retaining its layers for `owner`. Blocking: call it from
/// `spawn_blocking` (or use [`import`]).
pub fn import_blocking(
    store: &LayerStore,
    path: &Path,
    tag: Option<&str>,
    platform: &Platform,
    owner: &str,
) -> Result<Image, Error> {
    let source = Source::open(path)?;
    let importer = Importer {
        source,
        path: path.to_owned(),
        platform,
    };
    if importer.source.exists("index.json") {
        importer.oci_layout(store, tag, owner)
    } else if importer.source.exists("manifest.json") {
        importer.docker_archive(store, tag, owner)
    } else {
        Err(ImportError::Format {
            path: path.to_owned(),
        }
        .into())
    }
}

/// [`import_blocking`] on a blocking thread.
pub async fn import(
    store: &LayerStore,
    path: &Path,
    tag: Option<&str>,
    platform: &Platform,
    owner: &str,
) -> Result<Image, Error> {
    let (store, path, tag, platform, owner) = (
        store.clone(),
        path.to_owned(),
        tag.map(str::to_owned),
        platform.clone(),
        owner.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        import_blocking(&store, &path, tag.as_deref(), &platform, &owner)
    })
    .await
    .map_err(|e| {
        Error::Import(ImportError::Io {
            path: PathBuf::new(),
            source: io::Error::other(e),
        })
    })?
}

/// Files of a layout directory, or entries of a tarball found by one scan.
enum Source {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        entries: HashMap<String, (u64, u64)>,
    },
}

impl Source {
    fn open(path: &Path) -> Result<Self, ImportError> {
        let io_err = |source| ImportError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io_err)?;
        if meta.is_dir() {
            return Ok(Self::Dir(path.to_owned()));
        }
        let mut archive = tar::Archive::new(File::open(path).map_err(io_err)?);
        let mut entries = HashMap::new();
        for entry in archive.entries().map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = String::from_utf8_lossy(&entry.path_bytes())
                .trim_start_matches("./")
                .to_owned();
            entries.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(Self::Tar {
            path: path.to_owned(),
            entries,
        })
    }

    fn exists(&self, name: &str) -> bool {
        match self {
            Self::Dir(dir) => dir.join(name).is_file(),
            Self::Tar { entries, .. } => entries.contains_key(name),
        }
    }

    fn reader(&self, name: &str) -> Result<Box<dyn Read>, ImportError> {
        match self {
            Self::Dir(dir) => {
                let path = dir.join(name);
                // Names come from the image's own JSON: keep them inside the layout.
                if name.split('/').any(|c| c == ".." || c.is_empty()) {
                    return Err(ImportError::Missing {
                        path: dir.clone(),
                        what: format!("file {name:?}"),
                    });
                }
                let file = File::open(&path).map_err(|source| match source.kind() {
                    io::ErrorKind::NotFound => ImportError::Missing {
                        path: dir.clone(),
                        what: format!("file {name}"),
                    },
                    _ => ImportError::Io { path, source },
                })?;
                Ok(Box::new(file))
            }
            Self::Tar { path, entries } => {
                let &(offset, size) = entries.get(name).ok_or_else(|| ImportError::Missing {
                    path: path.clone(),
                    what: format!("entry {name}"),
                })?;
                let io_err = |source| ImportError::Io {
                    path: path.clone(),
                    source,
                };
                let mut file = File::open(path).map_err(io_err)?;
                file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
                Ok(Box::new(file.take(size)))
            }
        }
    }

    fn document(&self, name: &str, what: &str) -> Result<Vec<u8>, ImportError> {
        let mut bytes = Vec::new();
        self.reader(name)?
            .take(MAX_DOCUMENT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ImportError::Io {
                path: self.path().to_owned(),
                source,
            })?;
        if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
            return Err(ImportError::TooLarge {
                path: self.path().to_owned(),
                what: what.to_owned(),
                limit: MAX_DOCUMENT_BYTES,
            });
        }
        Ok(bytes)
    }

    /// A blob named by digest, checked.
    fn blob_document(&self, digest: &Digest, what: &str) -> Result<Vec<u8>, ImportError> {
        let bytes = self.document(&blob_name(digest), what)?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(ImportError::DigestMismatch {
                path: self.path().to_owned(),
                what: what.to_owned(),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    fn path(&self) -> &Path {
        match self {
            Self::Dir(path) | Self::Tar { path, .. } => path,
        }
    }
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

struct Importer<'a> {
    source: Source,
    path: PathBuf,
    platform: &'a Platform,
}

impl Importer<'_> {
    fn json<T: for<'de> Deserialize<'de>>(
        &self,
        bytes: &[u8],
        what: &str,
    ) -> Result<T, ImportError> {
        serde_json::from_slice(bytes).map_err(|source| ImportError::Json {
            path: self.path.clone(),
            what: what.to_owned(),
            source,
        })
    }

    fn oci_layout(
        &self,
        store: &LayerStore,
        tag: Option<&str>,
        owner: &str,
    ) -> Result<Image, Error> {
        let index_bytes = self.source.document("index.json", "index.json")?;
        let Manifest::Index(index) =
            Manifest::parse(&index_bytes, None).map_err(|source| ImportError::Manifest {
                path: self.path.clone(),
                source,
            })?
        else {
            return Err(ImportError::Format {
                path: self.path.clone(),
            }
            .into());
        };
        let named = |d: &&crate::manifest::Descriptor| d.annotations.get(REF_NAME).cloned();
        let chosen = match tag {
            Some(tag) => index
                .manifests
                .iter()
                .find(|d| {
                    named(d).is_some_and(|n| {
                        n == tag || n.rsplit_once(':').is_some_and(|(_, t)| t == tag)
                    })
                })
                .ok_or_else(|| ImportError::Missing {
                    path: self.path.clone(),
                    what: format!("image tagged {tag:?}"),
                })?,
            None if index.manifests.len() == 1 => &index.manifests[0],
            None => {
                return Err(ImportError::Ambiguous {
                    path: self.path.clone(),
                    count: index.manifests.len(),
                    names: index
                        .manifests
                        .iter()
                        .map(|d| named(&d).unwrap_or_else(|| d.digest.to_string()))
                        .collect::<Vec<_>>()
                        .join(", "),
                }
                .into());
            }
        };
        let name = named(&chosen).unwrap_or_else(|| chosen.digest.to_string());
        let (manifest, manifest_digest) = self.image_manifest(&chosen.digest, &name)?;
        let config_bytes = self
            .source
            .blob_document(&manifest.config.digest, "image config")?;
        let raw: RawConfig = self.json(&config_bytes, "image config")?;
        check_image(&name, self.platform, &manifest, &raw)?;
        let layers: Vec<(String, Expected)> = manifest
            .layers
            .iter()
            .zip(&raw.rootfs.diff_ids)
            .map(|(descriptor, diff_id)| {
                (
                    blob_name(&descriptor.digest),
                    Expected {
                        named_by_content: true,
                        diff_id: diff_id.clone(),
                        blob: Some((descriptor.digest.clone(), Some(descriptor.size))),
                    },
                )
            })
            .collect();
        self.install(store, &layers, owner)?;
        Ok(Image {
            name,
            manifest_digest,
            config_digest: manifest.config.digest.clone(),
            config: raw.image_config(),
            layers: raw.rootfs.diff_ids,
        })
    }

    /// The image manifest at `digest`, through a platform index if it is one.
    fn image_manifest(
        &self,
        digest: &Digest,
        name: &str,
    ) -> Result<(ImageManifest, Digest), Error> {
        let bytes = self.source.blob_document(digest, "manifest")?;
        let parse = |bytes: &[u8]| {
            Manifest::parse(bytes, None).map_err(|source| {
                crate::registry::RegistryError::Manifest {
                    reference: name.to_owned(),
                    source,
                }
            })
        };
        match parse(&bytes)? {
            Manifest::Image(manifest) => Ok((manifest, digest.clone())),
            Manifest::Index(index) => {
                let entry = self
                    .platform
                    .select(&index, name)
                    .map_err(crate::registry::RegistryError::from)?;
                let bytes = self.source.blob_document(&entry.digest, "manifest")?;
                match parse(&bytes)? {
                    Manifest::Image(manifest) => Ok((manifest, entry.digest.clone())),
                    Manifest::Index(_) => Err(ImportError::Format {
                        path: self.path.clone(),
                    }
                    .into()),
                }
            }
        }
    }

    fn docker_archive(
        &self,
        store: &LayerStore,
        tag: Option<&str>,
        owner: &str,
    ) -> Result<Image, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let manifest_bytes = self.source.document("manifest.json", "manifest.json")?;
        let entries: Vec<Entry> = self.json(&manifest_bytes, "manifest.json")?;
        let tags = |e: &Entry| e.repo_tags.clone().unwrap_or_default();
        let chosen = match tag {
            Some(tag) => {
                let wanted = Reference::parse(tag).ok();
                entries
                    .iter()
                    .find(|e| {
                        tags(e).iter().any(|t| {
                            t == tag || (wanted.is_some() && Reference::parse(t).ok() == wanted)
                        })
                    })
                    .ok_or_else(|| ImportError::Missing {
                        path: self.path.clone(),
                        what: format!("image tagged {tag:?}"),
                    })?
            }
            None if entries.len() == 1 => &entries[0],
            None => {
                return Err(ImportError::Ambiguous {
                    path: self.path.clone(),
                    count: entries.len(),
                    names: entries
                        .iter()
                        .map(|e| tags(e).join(" "))
                        .collect::<Vec<_>>()
                        .join(", "),
                }
                .into());
            }
        };
        let config_bytes = self.source.document(&chosen.config, "image config")?;
        let config_digest = Digest::of(&config_bytes);
        // The config's file name is its digest (`<hex>.json`, or `blobs/sha256/<hex>`).
        let named_hex = chosen
            .config
            .rsplit('/')
            .next()
            .map(|n| n.trim_end_matches(".json"));
        if let Some(named) = named_hex.and_then(|h| Digest::from_hex(h).ok())
            && named != config_digest
        {
            return Err(ImportError::DigestMismatch {
                path: self.path.clone(),
                what: "image config".to_owned(),
                expected: named,
                actual: config_digest,
            }
            .into());
        }
        let raw: RawConfig = self.json(&config_bytes, "image config")?;
        let name = tags(chosen)
            .first()
            .cloned()
            .unwrap_or_else(|| config_digest.to_string());
        if raw.rootfs.diff_ids.len() != chosen.layers.len() {
            return Err(crate::registry::RegistryError::Invalid {
                reference: name,
                message: format!(
                    "manifest.json lists {} layers but the config names {}",
                    chosen.layers.len(),
                    raw.rootfs.diff_ids.len()
                ),
            }
            .into());
        }
        let config = raw.image_config();
        if !raw.os.is_empty()
            && !self
                .platform
                .matches(&raw.os, &raw.architecture, raw.variant.as_deref())
        {
            return Err(
                crate::registry::RegistryError::Platform(crate::platform::PlatformError {
                    reference: name,
                    wanted: self.platform.to_string(),
                    available: vec![format!("{}/{}", raw.os, raw.architecture)],
                })
                .into(),
            );
        }
        // `docker save` layers are checked against the config's diff ids alone.
        let layers: Vec<(String, Expected)> = chosen
            .layers
            .iter()
            .zip(&raw.rootfs.diff_ids)
            .map(|(file, diff_id)| {
                (
                    file.trim_start_matches("./").to_owned(),
                    Expected {
                        named_by_content: true,
                        diff_id: diff_id.clone(),
                        blob: None,
                    },
                )
            })
            .collect();
        self.install(store, &layers, owner)?;
        Ok(Image {
            name,
            // A classic archive has no manifest: the config's digest names the image.
            manifest_digest: config_digest.clone(),
            config_digest,
            config,
            layers: raw.rootfs.diff_ids,
        })
    }

    /// Stores each layer not stored yet; on failure the references added are dropped.
    fn install(
        &self,
        store: &LayerStore,
        layers: &[(String, Expected)],
        owner: &str,
    ) -> Result<(), Error> {
        let mut added = Vec::new();
        let result = (|| {
            for (name, expected) in layers {
                let new = match store.retain_if_present(&expected.diff_id, owner)? {
                    Some(new) => new,
                    None => {
                        let reader = self.source.reader(name)?;
                        store.install_blocking(expected, reader, owner)?.1
                    }
                };
                if new {
                    added.push(expected.diff_id.clone());
                }
            }
            Ok::<_, Error>(())
        })();
        if result.is_err() {
            for layer in &added {
                let _ = store.release(layer, owner);
            }
        }
        result
    }
}
