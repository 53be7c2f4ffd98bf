//! The content-addressed layer store.
//!
//! ```text
//! <root>/lock                               held (flock) while a store is open
//! <root>/blobs/sha256/<hex>                 compressed layer blobs, when kept
//! <root>/layers/sha256/<diff-id hex>/rootfs unpacked tree, stacked as an overlay lowerdir
//! <root>/layers/sha256/<diff-id hex>/layer.json  what the layer is (blob, size on disk)
//! <root>/layers/sha256/<diff-id hex>/refs/<owner>  one empty file per user of the layer
//! <root>/tmp/                               unpacks and removals under way
//! ```
//!
//! Layers are keyed by their diff id (the digest of the uncompressed tar), so the same
//! layer pulled gzip'd from a registry and imported plain from `docker save` is stored once.
//! A layer is unpacked under `tmp/` and renamed into `layers/` only once both digests are
//! verified: a layer directory exists complete or not at all. Removal renames it back into
//! `tmp/` first, for the same reason. The root is mode 0700: layers hold images' setuid
//! files and files owned by arbitrary host uids, which no host user may reach.

use std::{
    fs,
    io::{self, BufReader, Read, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

mod export;
mod tree;

pub use export::{Exported, export_tree};

use crate::{
    compression::Compression,
    digest::{Digest, HashingReader},
    unpack::{self, SkippedEntry, UnpackError},
};

/// How a store is kept.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Keep each layer's compressed blob beside its tree (to serve or export it later);
    /// off, only the unpacked trees take space.
    pub keep_blobs: bool,
}

/// A handle on a layer store; cheap to clone, one per process and directory.
#[derive(Clone)]
pub struct LayerStore {
    inner: Arc<Inner>,
}

/// The stores this process has open, by their canonical root.
static OPEN_HERE: Mutex<std::collections::BTreeMap<PathBuf, std::sync::Weak<Inner>>> =
    Mutex::new(std::collections::BTreeMap::new());

struct Inner {
    root: PathBuf,
    options: StoreOptions,
    /// Serialises reference changes, installs and collection within this process; the
    /// `lock` file's flock keeps other processes out.
    refs: Mutex<()>,
    _lock: fs::File,
}

/// One stored layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// The diff id: digest of the uncompressed tar; the layer's name in the store.
    pub id: Digest,
    /// The compressed blob's digest, when the layer came from a registry or layout.
    pub blob: Option<Digest>,
    /// Bytes the unpacked tree takes on disk.
    pub disk_bytes: u64,
    /// Entries unpacked.
    pub entries: u64,
    /// Entries refused (device nodes, fifos), by path.
    pub skipped: Vec<String>,
    /// Who uses the layer (template ids, sandbox ids, builds: whatever callers retain with).
    #[serde(skip)]
    pub owners: Vec<String>,
}

/// What a collection removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed: Vec<Digest>,
    pub freed_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the layer store {0} is open in another process")]
    Busy(PathBuf),
    #[error("layer {0} is not in the store")]
    UnknownLayer(Digest),
    #[error("invalid layer owner {0:?} (1 to 200 of A-Z a-z 0-9 . _ - : @, not starting with .)")]
    Owner(String),
    #[error("layer {layer}: {what} digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        layer: Digest,
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {layer} is larger than the {expected} bytes its descriptor says")]
    TooLarge { layer: Digest, expected: u64 },
    #[error("cannot unpack layer {layer}")]
    Unpack {
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("cannot download layer {layer}")]
    Download {
        layer: Digest,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What a caller knows about a layer before unpacking it.
#[derive(Clone, Debug)]
pub(crate) struct Expected {
    pub diff_id: Digest,
    /// The compressed blob's digest and size, when the source names them.
    pub blob: Option<(Digest, Option<u64>)>,
    /// The layer's id is the digest of its tar (an image's layer), which is checked; false
    /// for a layer made on a machine ([`LayerStore::import_layer`]), named by its maker.
    pub named_by_content: bool,
}

impl LayerStore {
    /// Opens (creating) the store at `root`; leftovers of interrupted unpacks are removed.
    pub fn open(root: impl Into<PathBuf>, options: StoreOptions) -> Result<Self, StoreError> {
        let root = root.into();
        for dir in [
            root.clone(),
            root.join("blobs/sha256"),
            root.join("layers/sha256"),
            root.join("tmp"),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| io_err("create", &dir, source))?;
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
            .map_err(|source| io_err("restrict", &root, source))?;
        // Opened again in this process (a server restarted in place, as tests do): the same
        // store, whose lock this process holds already.
        let key = fs::canonicalize(&root).map_err(|source| io_err("resolve", &root, source))?;
        let mut open = OPEN_HERE.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, weak| weak.strong_count() > 0);
        if let Some(inner) = open.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(Self { inner });
        }
        let lock_path = root.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| io_err("open", &lock_path, source))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(StoreError::Busy(root)),
            Err(e) => return Err(io_err("lock", &lock_path, e.into())),
        }
        let store = Self {
            inner: Arc::new(Inner {
                root,
                options,
                refs: Mutex::new(()),
                _lock: lock,
            }),
        };
        store.clear_tmp()?;
        open.insert(key, Arc::downgrade(&store.inner));
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The unpacked tree of `layer`: what a template stacks as a read-only layer.
    pub fn layer_path(&self, layer: &Digest) -> PathBuf {
        self.layer_dir(layer).join("rootfs")
    }

    /// Where a kept blob lives (it may be absent).
    pub fn blob_path(&self, blob: &Digest) -> PathBuf {
        self.inner.root.join("blobs/sha256").join(blob.hex())
    }

    /// Whether `layer` is stored complete.
    pub fn contains(&self, layer: &Digest) -> bool {
        self.layer_dir(layer).join("layer.json").is_file()
    }

    /// The record of `layer` with its owners, if stored.
    pub fn layer(&self, layer: &Digest) -> Result<Option<LayerInfo>, StoreError> {
        let path = self.layer_dir(layer).join("layer.json");
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io_err("read", &path, source)),
        };
        let mut info: LayerInfo = serde_json::from_slice(&bytes)
            .map_err(|e| io_err("parse", &path, io::Error::other(e)))?;
        info.owners = self.owners(layer)?;
        Ok(Some(info))
    }

    /// Every stored layer with its owners.
    pub fn layers(&self) -> Result<Vec<LayerInfo>, StoreError> {
        let dir = self.inner.root.join("layers/sha256");
        let mut layers = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|source| io_err("list", &dir, source))? {
            let entry = entry.map_err(|source| io_err("list", &dir, source))?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            else {
                continue;
            };
            if let Some(info) = self.layer(&id)? {
                layers.push(info);
            }
        }
        layers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(layers)
    }

    /// Bytes the layers take on disk, each counted once (a template's or an image's use).
    pub fn disk_usage(&self, layers: &[Digest]) -> Result<u64, StoreError> {
        let mut seen = std::collections::BTreeSet::new();
        let mut total = 0;
        for layer in layers {
            if seen.insert(layer) {
                total += self
                    .layer(layer)?
                    .ok_or_else(|| StoreError::UnknownLayer(layer.clone()))?
                    .disk_bytes;
            }
        }
        Ok(total)
    }

    /// Records that `owner` uses `layer`; a layer with owners is never collected.
    /// Whether `owner` did not hold it before.
    pub fn retain(&self, layer: &Digest, owner: &str) -> Result<bool, StoreError> {
        let _guard = self.lock();
        self.retain_locked(layer, owner)
    }

    /// Drops `owner`'s use of `layer`; whether it had one.
    pub fn release(&self, layer: &Digest, owner: &str) -> Result<bool, StoreError> {
        check_owner(owner)?;
        let _guard = self.lock();
        let path = self.layer_dir(layer).join("refs").join(owner);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(io_err("remove", &path, source)),
        }
    }

    /// Drops every use `owner` has (a deleted template, a gone sandbox); how many.
    pub fn release_all(&self, owner: &str) -> Result<usize, StoreError> {
        check_owner(owner)?;
        let mut released = 0;
        for layer in self.layers()? {
            if layer.owners.iter().any(|o| o == owner) && self.release(&layer.id, owner)? {
                released += 1;
            }
        }
        Ok(released)
    }

    /// The owners of `layer`.
    pub fn owners(&self, layer: &Digest) -> Result<Vec<String>, StoreError> {
        let dir = self.layer_dir(layer).join("refs");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_err("list", &dir, source)),
        };
        let mut owners = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| io_err("list", &dir, source))?;
            if let Some(name) = entry.file_name().to_str() {
                owners.push(name.to_owned());
            }
        }
        owners.sort();
        Ok(owners)
    }

    /// Removes every layer nobody retains, and kept blobs whose layer is gone. Under the lock
    /// the doomed layers are only moved aside (a rename each), so a collection never holds up
    /// installs or retains while it deletes large trees.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let mut doomed = Vec::new();
        {
            let _guard = self.lock();
            let mut kept_blobs = std::collections::BTreeSet::new();
            for layer in self.layers()? {
                if !layer.owners.is_empty() {
                    if let Some(blob) = layer.blob {
                        kept_blobs.insert(blob);
                    }
                    continue;
                }
                doomed.push(self.move_aside(&layer.id)?);
                tracing::info!(layer = %layer.id, bytes = layer.disk_bytes, "collected an unused layer");
                report.freed_bytes += layer.disk_bytes;
                report.removed.push(layer.id);
            }
            let blobs = self.inner.root.join("blobs/sha256");
            for entry in fs::read_dir(&blobs).map_err(|source| io_err("list", &blobs, source))? {
                let entry = entry.map_err(|source| io_err("list", &blobs, source))?;
                let keep = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| Digest::from_hex(n).ok())
                    .is_some_and(|d| kept_blobs.contains(&d));
                if !keep {
                    let path = entry.path();
                    let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(&path).map_err(|source| io_err("remove", &path, source))?;
                    report.freed_bytes += size;
                }
            }
        }
        // An interrupted removal is finished by the next open (`clear_tmp`).
        for dir in doomed {
            remove_dir(&dir);
        }
        Ok(report)
    }

    /// Unpacks a layer from a blob reader (compressed or not), verifying its digests, and
    /// retains it for `owner`. An already stored layer is only retained.
    pub(crate) fn install_blocking(
        &self,
        expected: &Expected,
        reader: impl Read,
        owner: &str,
    ) -> Result<(LayerInfo, bool), StoreError> {
        check_owner(owner)?;
        let id = &expected.diff_id;
        let staging = self
            .inner
            .root
            .join("tmp")
            .join(uuid::Uuid::new_v4().to_string());
        let result = self.unpack_to(expected, reader, &staging);
        let info = match result {
            Ok(info) => info,
            Err(err) => {
                remove_dir(&staging);
                return Err(err);
            }
        };
        let _guard = self.lock();
        let target = self.layer_dir(id);
        match fs::rename(&staging, &target) {
            Ok(()) => {
                tracing::debug!(layer = %id, disk_bytes = info.disk_bytes, "layer stored");
            }
            // Someone stored the same layer meanwhile: theirs is as good as ours.
            Err(_) if self.contains(id) => remove_dir(&staging),
            Err(source) => {
                remove_dir(&staging);
                return Err(io_err("store", &target, source));
            }
        }
        if let (Some(blob), true) = (&info.blob, self.inner.options.keep_blobs) {
            let kept = target.join("blob");
            let path = self.blob_path(blob);
            if kept.exists() {
                fs::rename(&kept, &path).map_err(|source| io_err("keep", &path, source))?;
            }
        }
        let new = self.retain_locked(id, owner)?;
        let mut info = info;
        info.owners = self.owners(id)?;
        Ok((info, new))
    }

    /// Like [`install_blocking`](Self::install_blocking), fed by a download: chunks are
    /// hashed and unpacked on a blocking thread as they arrive, and `on_bytes` hears how many
    /// bytes have come so far.
    pub(crate) async fn install_stream<S, E>(
        &self,
        expected: Expected,
        mut chunks: S,
        owner: &str,
        on_bytes: impl Fn(u64),
    ) -> Result<(LayerInfo, bool), StoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::error::Error + Send + Sync + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(32);
        let store = self.clone();
        let owner_copy = owner.to_owned();
        let job_expected = expected.clone();
        let job = tokio::task::spawn_blocking(move || {
            store.install_blocking(&job_expected, ChannelReader::new(rx), &owner_copy)
        });
        let layer = expected
            .blob
            .as_ref()
            .map_or(&expected.diff_id, |(d, _)| d)
            .clone();
        let limit = expected.blob.as_ref().and_then(|(_, size)| *size);
        let mut done = 0u64;
        let mut failure: Option<StoreError> = None;
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(bytes) => {
                    done += bytes.len() as u64;
                    if let Some(limit) = limit.filter(|l| done > *l) {
                        failure = Some(StoreError::TooLarge {
                            layer: layer.clone(),
                            expected: limit,
                        });
                        let _ = tx.send(Err(io::Error::other("download refused"))).await;
                        break;
                    }
                    on_bytes(done);
                    if tx.send(Ok(bytes)).await.is_err() {
                        // The unpacker stopped; its error says why.
                        break;
                    }
                }
                Err(err) => {
                    failure = Some(StoreError::Download {
                        layer: layer.clone(),
                        source: Box::new(err),
                    });
                    let _ = tx.send(Err(io::Error::other("download failed"))).await;
                    break;
                }
            }
        }
        drop(tx);
        let installed = job.await.map_err(|e| StoreError::Download {
            layer: layer.clone(),
            source: Box::new(e),
        })?;
        match failure {
            Some(err) => Err(err),
            None => installed,
        }
    }

    /// Retains a stored layer for `owner` if it is there (so a pull can skip it): `None`
    /// when it must be fetched, else whether the reference is new.
    pub(crate) fn retain_if_present(
        &self,
        layer: &Digest,
        owner: &str,
    ) -> Result<Option<bool>, StoreError> {
        let _guard = self.lock();
        if !self.contains(layer) {
            return Ok(None);
        }
        self.retain_locked(layer, owner).map(Some)
    }

    fn unpack_to(
        &self,
        expected: &Expected,
        reader: impl Read,
        staging: &Path,
    ) -> Result<LayerInfo, StoreError> {
        let id = &expected.diff_id;
        let rootfs = staging.join("rootfs");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&rootfs)
            .map_err(|source| io_err("create", &rootfs, source))?;
        fs::set_permissions(staging, fs::Permissions::from_mode(0o700))
            .map_err(|source| io_err("restrict", staging, source))?;
        let blob_copy = match (&expected.blob, self.inner.options.keep_blobs) {
            (Some(_), true) => {
                let path = staging.join("blob");
                Some(fs::File::create(&path).map_err(|source| io_err("create", &path, source))?)
            }
            _ => None,
        };
        let unpack_error = |source| StoreError::Unpack {
            layer: id.clone(),
            source,
        };
        let mut raw = BufReader::with_capacity(
            256 << 10,
            HashingReader::new(Tee {
                inner: reader,
                copy: blob_copy,
            }),
        );
        let compression =
            Compression::detect(&mut raw).map_err(|e| unpack_error(UnpackError::Archive(e)))?;
        let (report, diff_id, compressed) = {
            let decoder = compression
                .decoder(&mut raw)
                .map_err(|e| unpack_error(UnpackError::Archive(e)))?;
            let mut tar = HashingReader::new(decoder);
            let report = unpack::unpack(&mut tar, &rootfs).map_err(unpack_error)?;
            // Whatever follows the archive's end is part of the digests too.
            tar.drain()
                .map_err(|e| unpack_error(UnpackError::Archive(e)))?;
            (report, tar.finish().0, compression != Compression::None)
        };
        let mut raw = raw.into_inner();
        raw.drain()
            .map_err(|e| unpack_error(UnpackError::Archive(e)))?;
        let (blob_digest, _) = raw.finish();
        if let Some((expected_blob, _)) = &expected.blob
            && *expected_blob != blob_digest
        {
            return Err(StoreError::DigestMismatch {
                layer: id.clone(),
                what: "blob",
                expected: expected_blob.clone(),
                actual: blob_digest,
            });
        }
        if expected.named_by_content && diff_id != *id {
            return Err(StoreError::DigestMismatch {
                layer: id.clone(),
                what: "uncompressed (diff id)",
                expected: id.clone(),
                actual: diff_id,
            });
        }
        let info = LayerInfo {
            id: id.clone(),
            blob: Some(blob_digest).filter(|_| compressed || expected.blob.is_some()),
            disk_bytes: report.disk_bytes,
            entries: report.entries,
            skipped: report
                .skipped
                .iter()
                .map(|SkippedEntry { path, kind }| format!("{path} ({kind})"))
                .collect(),
            owners: Vec::new(),
        };
        let record = staging.join("layer.json");
        let json = serde_json::to_vec_pretty(&info).expect("a layer record serialises");
        fs::write(&record, json).map_err(|source| io_err("write", &record, source))?;
        Ok(info)
    }

    /// Whether the reference is new.
    fn retain_locked(&self, layer: &Digest, owner: &str) -> Result<bool, StoreError> {
        check_owner(owner)?;
        if !self.contains(layer) {
            return Err(StoreError::UnknownLayer(layer.clone()));
        }
        let refs = self.layer_dir(layer).join("refs");
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&refs)
            .map_err(|source| io_err("create", &refs, source))?;
        let path = refs.join(owner);
        match fs::File::create_new(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(source) => Err(io_err("create", &path, source)),
        }
    }

    /// Moves a layer out of `layers/` into `tmp/`, where nothing reads it, for removal.
    fn move_aside(&self, layer: &Digest) -> Result<PathBuf, StoreError> {
        let dir = self.layer_dir(layer);
        let doomed = self.inner.root.join("tmp").join(format!(
            "gc-{}-{}",
            layer.hex(),
            uuid::Uuid::new_v4()
        ));
        fs::rename(&dir, &doomed).map_err(|source| io_err("remove", &dir, source))?;
        Ok(doomed)
    }

    fn clear_tmp(&self) -> Result<(), StoreError> {
        let tmp = self.inner.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(|source| io_err("list", &tmp, source))? {
            let entry = entry.map_err(|source| io_err("list", &tmp, source))?;
            tracing::info!(path = %entry.path().display(), "removing an interrupted unpack");
            remove_dir(&entry.path());
        }
        Ok(())
    }

    fn layer_dir(&self, layer: &Digest) -> PathBuf {
        self.inner.root.join("layers/sha256").join(layer.hex())
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // A panic while holding the lock leaves nothing half-done that the lock protects.
        self.inner.refs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for LayerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

/// Owners become file names: a safe alphabet, so no owner is a path.
fn check_owner(owner: &str) -> Result<(), StoreError> {
    let ok = !owner.is_empty()
        && owner.len() <= 200
        && !owner.starts_with('.')
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Owner(owner.to_owned()))
    }
}

/// Removes a tree of ours (under the store's private root), logging what it cannot.
fn remove_dir(path: &Path) {
    if let Err(err) = fs::remove_dir_all(path)
        && err.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(?err, path = %path.display(), "cannot remove a layer directory");
    }
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Copies what is read into a file as well (the kept blob).
struct Tee<R> {
    inner: R,
    copy: Option<fs::File>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(copy) = &mut self.copy {
            copy.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

/// A blocking reader over chunks sent from an async task.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(err)) => return Err(err),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::unpack::tests::TarWriter;

    fn layer() -> (Vec<u8>, Vec<u8>, Digest, Digest) {
        let tar = TarWriter::default()
            .dir("app/")
            .file("app/main.py", b"print('hi')\n")
            .finish();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let (diff_id, blob) = (Digest::of(&tar), Digest::of(&gz));
        (tar, gz, diff_id, blob)
    }

    fn open(dir: &Path, keep_blobs: bool) -> LayerStore {
        LayerStore::open(dir, StoreOptions { keep_blobs }).expect("store")
    }

    #[test]
    fn a_digest_mismatch_keeps_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), true);
        let (_, gz, diff_id, _) = layer();
        let wrong = Digest::of(b"something else");
        let err = store
            .install_blocking(
                &Expected {
                    named_by_content: true,
                    diff_id: diff_id.clone(),
                    blob: Some((wrong, None)),
                },
                gz.as_slice(),
                "test",
            )
            .expect_err("refused");
        assert!(
            matches!(err, StoreError::DigestMismatch { what: "blob", .. }),
            "{err}"
        );
        let err = store
            .install_blocking(
                &Expected {
                    named_by_content: true,
                    diff_id: Digest::of(b"not the tar"),
                    blob: None,
                },
                gz.as_slice(),
                "test",
            )
            .expect_err("refused");
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(!store.contains(&diff_id));
        for sub in ["tmp", "blobs/sha256", "layers/sha256"] {
            assert_eq!(
                fs::read_dir(dir.path().join(sub)).expect("ls").count(),
                0,
                "{sub} must be empty"
            );
        }
    }

    #[test]
    fn layers_are_shared_counted_and_collected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), true);
        let (tar, gz, diff_id, blob) = layer();
        let expected = Expected {
            named_by_content: true,
            diff_id: diff_id.clone(),
            blob: Some((blob.clone(), Some(gz.len() as u64))),
        };
        let (info, new) = store
            .install_blocking(&expected, gz.as_slice(), "template:a")
            .expect("stored");
        assert!(new);
        assert_eq!(info.blob.as_ref(), Some(&blob));
        assert!(store.blob_path(&blob).is_file(), "blob kept");
        assert_eq!(
            fs::read(store.layer_path(&diff_id).join("app/main.py")).expect("read"),
            b"print('hi')\n"
        );
        // The same layer from an uncompressed source is the same layer.
        let plain = Expected {
            named_by_content: true,
            diff_id: diff_id.clone(),
            blob: None,
        };
        let (_, new) = store
            .install_blocking(&plain, tar.as_slice(), "sandbox:b")
            .expect("stored again");
        assert!(new);
        assert_eq!(
            store.owners(&diff_id).expect("owners"),
            ["sandbox:b", "template:a"]
        );
        assert!(
            !store.retain(&diff_id, "template:a").expect("retain"),
            "held already"
        );
        assert!(
            store
                .disk_usage(&[diff_id.clone(), diff_id.clone()])
                .expect("du")
                > 0
        );

        assert!(store.release(&diff_id, "template:a").expect("release"));
        assert!(
            store.gc().expect("gc").removed.is_empty(),
            "sandbox:b still uses it"
        );
        assert_eq!(store.release_all("sandbox:b").expect("release all"), 1);
        let report = store.gc().expect("gc");
        assert_eq!(report.removed, std::slice::from_ref(&diff_id));
        assert!(!store.contains(&diff_id));
        assert!(
            !store.blob_path(&blob).exists(),
            "blob collected with its layer"
        );
        assert!(matches!(
            store.retain(&diff_id, "x"),
            Err(StoreError::UnknownLayer(_))
        ));
    }

    #[test]
    fn owners_cannot_be_paths_and_a_store_opens_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), false);
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert!(matches!(
                store.retain(&Digest::of(b""), bad),
                Err(StoreError::Owner(_))
            ));
        }
        // This process opening it again gets the same store (one lock, one set of refs).
        let again = LayerStore::open(dir.path(), StoreOptions::default()).expect("reopen");
        assert!(Arc::ptr_eq(&store.inner, &again.inner));
        drop((store, again));
        // Whoever else holds its lock (another process) keeps it out.
        let other = fs::File::open(dir.path().join("lock")).expect("lock file");
        rustix::fs::flock(&other, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .expect("the lock is free once the store is dropped");
        assert!(matches!(
            LayerStore::open(dir.path(), StoreOptions::default()),
            Err(StoreError::Busy(_))
        ));
    }

    #[test]
    fn interrupted_unpacks_are_cleared_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(dir.path(), false));
        fs::create_dir_all(dir.path().join("tmp/half/rootfs/usr")).expect("leftover");
        let store = open(dir.path(), false);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).expect("ls").count(), 0);
        assert!(store.layers().expect("layers").is_empty());
    }

    #[test]
    fn zstd_layers_unpack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), false);
        let (tar, _, diff_id, _) = layer();
        let zst = ruzstd::encoding::compress_to_vec(
            tar.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let expected = Expected {
            named_by_content: true,
            diff_id: diff_id.clone(),
            blob: Some((Digest::of(&zst), None)),
        };
        store
            .install_blocking(&expected, zst.as_slice(), "t")
            .expect("stored");
        assert!(store.layer_path(&diff_id).join("app/main.py").is_file());
    }
}
