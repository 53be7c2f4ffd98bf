//! What `cove serve` sets up for templates: the layer store, the catalogue, the registry
//! client (with `--registry-mirror`s) and the builder.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use cove_image::{ClientConfig, LayerStore, Mirror, RegistryClient, StoreOptions};

use crate::{
    build::{Builder, BuilderConfig, Contexts},
    catalog::Catalog,
    lifecycle::Lifecycle,
};

/// Template settings of `cove serve`.
#[derive(Clone, Debug)]
pub struct TemplatesConfig {
    /// Mirrors of registries (`docker.io=http://127.0.0.1:5000`), tried before them.
    pub registry_mirrors: Vec<Mirror>,
    /// Warm sandboxes kept in all, over every template.
    pub warm_total: usize,
    /// Which warm sandboxes start their Python kernel before they are handed out: their
    /// first `run_code` answers at once, for about 1 s of CPU and 60 MiB per warm sandbox.
    pub warm_kernels: crate::lifecycle::WarmKernels,
    /// Template builds that run at once.
    pub concurrent_builds: usize,
    /// The largest upload (build files, image archives), in MiB.
    pub max_upload_mb: u64,
    /// Certificates (a PEM file, or a directory of `*.crt` files) templates trust besides
    /// their image's own: the CA of a TLS-intercepting egress proxy.
    pub ca_certs: Option<PathBuf>,
    /// Where built templates' layers are shared with the other nodes of a cluster
    /// (`s3://bucket/prefix`, or a directory); none: they stay on the node that built them.
    pub object_store: Option<String>,
    /// How long what no template or snapshot needs stays in the object store before a
    /// collection removes it.
    pub object_store_keep_for: std::time::Duration,
}

/// [`TemplatesConfig::object_store_keep_for`] unless set: longer than any build's upload.
pub const OBJECT_STORE_KEEP_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

impl Default for TemplatesConfig {
    fn default() -> Self {
        Self {
            registry_mirrors: Vec::new(),
            warm_total: 8,
            warm_kernels: crate::lifecycle::WarmKernels::default(),
            concurrent_builds: 2,
            max_upload_mb: 8192,
            ca_certs: None,
            object_store: None,
            object_store_keep_for: OBJECT_STORE_KEEP_FOR,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Store(#[from] cove_image::StoreError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Registry(#[from] cove_image::RegistryError),
    #[error(transparent)]
    Context(#[from] crate::build::context::ContextError),
    #[error(transparent)]
    Depot(#[from] cove_depot::DepotError),
    #[error("cannot read the certificates {path}")]
    Certificates {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The PEM certificates at `path`: a file, or the `*.crt` files of a directory (and its
/// subdirectories, as Debian's /usr/local/share/ca-certificates has them).
fn read_certificates(path: &Path) -> Result<String, SetupError> {
    let err = |source| SetupError::Certificates {
        path: path.to_owned(),
        source,
    };
    if path.is_file() {
        return std::fs::read_to_string(path).map_err(err);
    }
    let mut files = Vec::new();
    let mut pending = vec![path.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            let kind = entry.file_type().map_err(err)?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if entry.path().extension().is_some_and(|e| e == "crt") {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    let mut pem = String::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(err)?;
        if text.contains("-----BEGIN CERTIFICATE-----") {
            pem.push_str(text.trim_end());
            pem.push('\n');
        }
    }
    Ok(pem)
}

/// The layer store under the state directory.
pub fn open_store(state_dir: &Path) -> Result<LayerStore, SetupError> {
    Ok(LayerStore::open(
        state_dir.join("images"),
        StoreOptions::default(),
    )?)
}

/// The object store built templates' layers are shared through, when `config` names one.
pub fn open_depot(config: &TemplatesConfig) -> Result<Option<Arc<cove_depot::Depot>>, SetupError> {
    let Some(location) = &config.object_store else {
        return Ok(None);
    };
    let depot = cove_depot::Depot::open(location)?;
    tracing::info!(location = %depot.location(), "templates' layers are shared through an object store");
    Ok(Some(Arc::new(depot)))
}

/// The builder, and what the previous server left half built marked failed.
pub fn builder(
    state_dir: &Path,
    disk_mb: u64,
    config: &TemplatesConfig,
    catalog: Arc<Catalog>,
    store: LayerStore,
    lifecycle: Arc<Lifecycle>,
) -> Result<Arc<Builder>, SetupError> {
    let registry = RegistryClient::new(ClientConfig {
        mirrors: config.registry_mirrors.clone(),
        ..ClientConfig::default()
    })?;
    let contexts = Contexts::open(
        &state_dir.join("templates").join("files"),
        config.max_upload_mb << 20,
    )?;
    let builder = Arc::new(Builder::new(
        catalog,
        store,
        registry,
        contexts,
        lifecycle,
        BuilderConfig {
            concurrent: config.concurrent_builds,
            resolv_conf: cove_runtime::template::resolv_conf(Path::new("/etc")),
            extra_ca_certs: match &config.ca_certs {
                Some(path) if path.exists() => read_certificates(path)?,
                _ => String::new(),
            },
            max_layer_bytes: disk_mb << 20,
            object_store_keep_for: config.object_store_keep_for,
        },
    ));
    let interrupted = builder.fail_interrupted()?;
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "builds the previous server was running are marked failed"
        );
    }
    Ok(builder)
}
