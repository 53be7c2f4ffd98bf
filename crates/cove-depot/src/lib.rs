//! Templates' layers in object storage, so that every node of a cluster can start sandboxes
//! of a template built on any of them.
//!
//! ```text
//! <prefix>/layers/sha256/<id>.tar.gz   the layer as a gzip'd OCI layer archive
//! <prefix>/layers/sha256/<id>.json     its record: the archive's digest, size and entries
//! ```
//!
//! A layer is written once, by the node that made it, before its build is marked ready: the
//! record is written after the archive, so a record names a complete archive. A node that
//! lacks a layer fetches it on first use, verifying the archive against the record, and keeps
//! it in its layer store from then on (collected like any other). Layers are named by id and
//! never change, so an archive is never overwritten (its record is written again, unchanged,
//! by a writer that finds it there: see [`collect`]).
//!
//! Snapshots' directories are kept there too (see [`trees`]): `<prefix>/snapshots/<name>…`.
//! What no template or snapshot needs any more is collected after a grace period (see
//! [`collect`]).
//!
//! Where: `s3://bucket/prefix` (credentials, region and endpoint from the usual `AWS_*`
//! variables: `AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true` for an S3-compatible server of one's
//! own), or a directory (`file:///srv/cove-depot` or an absolute path) for one machine or a
//! shared filesystem.

mod collect;
mod trees;

use std::{
    collections::HashMap,
    io::{self, Write},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
pub use collect::{Collected, Kept};
use cove_image::{Digest, Exported, LayerInfo, LayerStore, StoreError};
use object_store::{
    ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart, aws::AmazonS3Builder,
    local::LocalFileSystem, path::Path as ObjectPath,
};

/// Parts of a multipart upload (S3 wants at least 5 MiB but the last).
const PART_BYTES: usize = 8 << 20;
/// Parts uploaded at once.
const PARTS_AT_ONCE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum DepotError {
    #[error(
        "invalid object store {0:?}: give s3://BUCKET/PREFIX, file:///DIRECTORY or an absolute path"
    )]
    Location(String),
    #[error("cannot use the object store {location}")]
    Open {
        location: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("layer {layer} is not in the object store {location}")]
    Missing { layer: Digest, location: String },
    #[error("object store {location}: cannot {op} {object}")]
    Objects {
        location: String,
        op: &'static str,
        object: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("snapshot directory {name:?} is not in the object store {location}")]
    MissingTree { name: String, location: String },
    #[error("invalid snapshot directory name {0:?}")]
    TreeName(String),
    #[error("object store {location}: the record {object} is not valid")]
    Record {
        location: String,
        object: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "object store {location}: {object} is not what its record says (another digest or size): it was changed or damaged; nothing was kept"
    )]
    Changed { location: String, object: String },
    #[error("cannot keep {object} from the object store in {path}")]
    Local {
        object: String,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot unpack {object} from the object store")]
    Unpack {
        object: String,
        #[source]
        source: cove_image::UnpackError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{object}: the copy stopped unexpectedly: {reason}")]
    Crashed { object: String, reason: String },
}

type Result<T, E = DepotError> = std::result::Result<T, E>;

/// The object store layers are shared through.
pub struct Depot {
    objects: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// Where, as shown to people (no credentials are part of it).
    location: String,
    /// One fetch of a layer (or snapshot directory) at a time: creates that need the same
    /// one wait for the first.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Depot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Depot")
            .field("location", &self.location)
            .finish()
    }
}

/// What a [`Depot::put`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Put {
    /// The layer was there already.
    Present,
    /// It was written.
    Written(Exported),
}

impl Depot {
    /// The object store `location` names (see the module's documentation), S3's settings
    /// from this process's `AWS_*` variables. A directory is made if missing (mode 0700:
    /// layers hold images' setuid files).
    pub fn open(location: &str) -> Result<Self> {
        Self::open_with(location, std::env::vars())
    }

    /// [`Depot::open`] with S3's settings from `vars` (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`,
    /// …; other names are ignored).
    pub fn open_with(
        location: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| DepotError::Open {
            location: location.to_owned(),
            source,
        };
        let (objects, prefix): (Arc<dyn ObjectStore>, ObjectPath) = if let Some(rest) =
            location.strip_prefix("s3://")
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(DepotError::Location(location.to_owned()));
            }
            let mut s3 = AmazonS3Builder::new();
            for (key, value) in vars {
                if let Some(key) = key
                    .strip_prefix("AWS_")
                    .and_then(|_| key.to_ascii_lowercase().parse().ok())
                {
                    s3 = s3.with_config(key, value);
                }
            }
            let s3 = s3
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| open_err(Box::new(e)))?;
            (Arc::new(s3), ObjectPath::from(prefix.trim_matches('/')))
        } else {
            let dir = location.strip_prefix("file://").unwrap_or(location);
            if !dir.starts_with('/') {
                return Err(DepotError::Location(location.to_owned()));
            }
            make_private_dir(std::path::Path::new(dir)).map_err(|e| open_err(Box::new(e)))?;
            let local = LocalFileSystem::new_with_prefix(dir).map_err(|e| open_err(Box::new(e)))?;
            (Arc::new(local), ObjectPath::default())
        };
        Ok(Self {
            objects,
            prefix,
            location: location.to_owned(),
            fetching: Mutex::default(),
        })
    }

    /// Where the layers are, as shown to people.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn object(&self, layer: &Digest, suffix: &str) -> ObjectPath {
        self.prefix
            .clone()
            .join("layers")
            .join("sha256")
            .join(format!("{}.{suffix}", layer.hex()))
    }

    fn objects_err(
        &self,
        op: &'static str,
        object: &ObjectPath,
    ) -> impl Fn(object_store::Error) -> DepotError {
        let (location, object) = (self.location.clone(), object.to_string());
        move |source| DepotError::Objects {
            location: location.clone(),
            op,
            object: object.clone(),
            source: Box::new(source),
        }
    }

    /// The record of `layer`, when the depot has it.
    async fn record(&self, layer: &Digest) -> Result<Option<Exported>> {
        self.record_at(&self.object(layer, "json")).await
    }

    /// The record at `path`, when the depot has it.
    async fn record_at(&self, path: &ObjectPath) -> Result<Option<Exported>> {
        let got = match self.objects.get(path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(self.objects_err("read", path)(err)),
        };
        let bytes = got.bytes().await.map_err(self.objects_err("read", path))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| DepotError::Record {
                location: self.location.clone(),
                object: path.to_string(),
                source,
            })
    }

    /// Checks that the object store answers (a read of a record no layer has).
    pub async fn check(&self) -> Result<()> {
        self.has(&Digest::of(b"cove-depot: is the object store there?"))
            .await
            .map(drop)
    }

    /// Whether the depot has `layer`.
    pub async fn has(&self, layer: &Digest) -> Result<bool> {
        Ok(self.record(layer).await?.is_some())
    }

    /// Writes `layer` from `store` unless the depot has it. The caller retains the layer
    /// meanwhile.
    pub async fn put(&self, store: &LayerStore, layer: &Digest) -> Result<Put> {
        let record = self.object(layer, "json");
        if let Some(present) = self.record_at(&record).await? {
            self.refresh(&record, &present).await?;
            return Ok(Put::Present);
        }
        let (store, id) = (store.clone(), layer.clone());
        let exported = self
            .upload(&self.object(layer, "tar.gz"), &record, move |out| {
                Ok(store.export_layer(&id, out)?)
            })
            .await?;
        tracing::info!(layer = %layer, bytes = exported.size, depot = %self.location, "layer stored in the object store");
        Ok(Put::Written(exported))
    }

    /// Writes `record` again as it is: what is used again looks young to a collection
    /// ([`Depot::collect`]).
    async fn refresh(&self, path: &ObjectPath, record: &Exported) -> Result<()> {
        let json = serde_json::to_vec(record).expect("a record serialises");
        self.objects
            .put(path, PutPayload::from(json))
            .await
            .map_err(self.objects_err("write", path))?;
        Ok(())
    }

    /// Writes what `export` writes (on a blocking thread) to `archive` in parts, then its
    /// record to `record`: a record always names a complete archive.
    async fn upload(
        &self,
        archive: &ObjectPath,
        record: &ObjectPath,
        export: impl FnOnce(&mut ChannelWriter) -> Result<Exported> + Send + 'static,
    ) -> Result<Exported> {
        let upload = self
            .objects
            .put_multipart(archive)
            .await
            .map_err(self.objects_err("write", archive))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let object = archive.to_string();
        let job = tokio::task::spawn_blocking(move || {
            let mut out = ChannelWriter::new(tx);
            let exported = export(&mut out)?;
            out.flush().map_err(|err| DepotError::Crashed {
                object,
                reason: err.to_string(),
            })?;
            Ok::<_, DepotError>(exported)
        });
        let mut sent = Ok(());
        while let Some(chunk) = rx.recv().await {
            if let Err(err) = writer.wait_for_capacity(PARTS_AT_ONCE).await {
                sent = Err(err);
                break;
            }
            writer.put(chunk);
        }
        drop(rx);
        let exported = job.await.map_err(|e| DepotError::Crashed {
            object: archive.to_string(),
            reason: e.to_string(),
        });
        let exported = match (exported, sent) {
            (Ok(Ok(exported)), Ok(())) => exported,
            (Ok(Err(err)), _) | (Err(err), _) => {
                let _ = writer.abort().await;
                return Err(err);
            }
            (_, Err(err)) => {
                let _ = writer.abort().await;
                return Err(self.objects_err("write", archive)(err));
            }
        };
        writer
            .finish()
            .await
            .map_err(self.objects_err("write", archive))?;
        self.refresh(record, &exported).await?;
        Ok(exported)
    }

    /// Makes sure `store` has `layer`, fetching it from the depot if not, and retains it for
    /// `owner`. Returns whether it was fetched.
    pub async fn fetch(&self, store: &LayerStore, layer: &Digest, owner: &str) -> Result<bool> {
        self.in_turn(layer.to_string(), self.fetch_now(store, layer, owner))
            .await
    }

    /// Runs `work` after any other work of the same `key` (one fetch of a thing at a time).
    async fn in_turn<T>(&self, key: String, work: impl Future<Output = T>) -> T {
        let turn = {
            let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
            fetching.entry(key.clone()).or_default().clone()
        };
        let done = {
            let _turn = turn.lock().await;
            work.await
        };
        let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&turn) <= 2 {
            fetching.remove(&key);
        }
        done
    }

    async fn fetch_now(&self, store: &LayerStore, layer: &Digest, owner: &str) -> Result<bool> {
        if store.retain(layer, owner).is_ok() {
            return Ok(false);
        }
        let record = self
            .record(layer)
            .await?
            .ok_or_else(|| DepotError::Missing {
                layer: layer.clone(),
                location: self.location.clone(),
            })?;
        let archive = self.object(layer, "tar.gz");
        let got = self
            .objects
            .get(&archive)
            .await
            .map_err(self.objects_err("read", &archive))?;
        let began = std::time::Instant::now();
        let info: LayerInfo = store
            .import_layer(layer, &record, got.into_stream(), owner)
            .await?
            .0;
        tracing::info!(layer = %layer, bytes = record.size, disk_bytes = info.disk_bytes, took_ms = began.elapsed().as_millis() as u64, "layer fetched from the object store");
        Ok(true)
    }
}

fn make_private_dir(dir: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(err) => Err(err),
    }
}

/// A blocking writer whose bytes go to an async task in chunks.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

const CHUNK_BYTES: usize = 1 << 20;

impl ChannelWriter {
    fn new(tx: tokio::sync::mpsc::Sender<Bytes>) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::other("the upload stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
