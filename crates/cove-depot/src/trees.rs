//! Snapshots' directories in object storage, so that a snapshot taken on one node starts
//! sandboxes on any other.
//!
//! ```text
//! <prefix>/snapshots/<name>.tar.gz   the directory (its layers, its memory image) archived
//! <prefix>/snapshots/<name>.json     its record: the archive's digest, size and entries
//! ```
//!
//! A snapshot's directory is named by a random id where it is made and never changes after,
//! so it is written once, like a layer, and the record after the archive. A node fetches it
//! whole into a staging directory of the caller's: the archive is downloaded, checked against
//! its record, and only then unpacked (with the unpacker's checks: nothing outside the
//! directory, no links followed, no device nodes) and moved into place.

use std::{fs, io, path::Path};

use futures::StreamExt;
use object_store::{ObjectStoreExt, path::Path as ObjectPath};
use tokio::io::AsyncWriteExt;

use crate::{Depot, DepotError, Put, Result};

/// Longest directory name taken (snapshots' are 20 characters).
const NAME_MAX: usize = 64;

impl Depot {
    fn tree_object(&self, name: &str, suffix: &str) -> Result<ObjectPath> {
        let valid = !name.is_empty()
            && name.len() <= NAME_MAX
            && name.bytes().all(|b| b.is_ascii_alphanumeric());
        if !valid {
            return Err(DepotError::TreeName(name.to_owned()));
        }
        Ok(self
            .prefix
            .clone()
            .join("snapshots")
            .join(format!("{name}.{suffix}")))
    }

    /// Whether the depot has snapshot directory `name`.
    pub async fn has_tree(&self, name: &str) -> Result<bool> {
        Ok(self
            .record_at(&self.tree_object(name, "json")?)
            .await?
            .is_some())
    }

    /// Writes directory `dir` as snapshot directory `name` unless the depot has it. Nothing
    /// may change `dir` meanwhile.
    pub async fn put_tree(&self, name: &str, dir: &Path) -> Result<Put> {
        let record = self.tree_object(name, "json")?;
        if let Some(present) = self.record_at(&record).await? {
            self.refresh(&record, &present).await?;
            return Ok(Put::Present);
        }
        let archive = self.tree_object(name, "tar.gz")?;
        let (root, object) = (dir.to_owned(), archive.to_string());
        let exported = self
            .upload(&archive, &record, move |out| {
                cove_image::export_tree(&root, out).map_err(|source| DepotError::Local {
                    object,
                    path: root.display().to_string(),
                    source,
                })
            })
            .await?;
        tracing::info!(snapshot_dir = %name, bytes = exported.size, depot = %self.location, "snapshot directory stored in the object store");
        Ok(Put::Written(exported))
    }

    /// Fetches snapshot directory `name` into `into` (which must not exist), through
    /// `staging` (which must not exist either; removed whatever happens). Returns whether it
    /// was fetched: `into` may have come meanwhile from another fetch.
    pub async fn fetch_tree(&self, name: &str, into: &Path, staging: &Path) -> Result<bool> {
        let fetched = self
            .in_turn(format!("snapshots/{name}"), async {
                if into.exists() {
                    return Ok(false);
                }
                self.fetch_tree_now(name, into, staging)
                    .await
                    .map(|()| true)
            })
            .await;
        let _ = fs::remove_dir_all(staging);
        fetched
    }

    async fn fetch_tree_now(&self, name: &str, into: &Path, staging: &Path) -> Result<()> {
        let object = self.tree_object(name, "tar.gz")?;
        let record = self
            .record_at(&self.tree_object(name, "json")?)
            .await?
            .ok_or_else(|| DepotError::MissingTree {
                name: name.to_owned(),
                location: self.location.clone(),
            })?;
        let local = |path: &Path| {
            let (object, path) = (object.to_string(), path.display().to_string());
            move |source| DepotError::Local {
                object: object.clone(),
                path: path.clone(),
                source,
            }
        };
        crate::make_private_dir(staging).map_err(local(staging))?;
        let file = staging.join("archive.tar.gz");
        let began = std::time::Instant::now();
        let got = self
            .objects
            .get(&object)
            .await
            .map_err(self.objects_err("read", &object))?;
        let mut chunks = got.into_stream();
        let mut out = tokio::fs::File::create(&file).await.map_err(local(&file))?;
        let mut size = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(self.objects_err("read", &object))?;
            size += chunk.len() as u64;
            if size > record.size {
                return Err(self.changed(&object));
            }
            out.write_all(&chunk).await.map_err(local(&file))?;
        }
        out.flush().await.map_err(local(&file))?;
        drop(out);
        let tree = staging.join("tree");
        let (from, to, what) = (file.clone(), tree.clone(), object.to_string());
        let checked =
            tokio::task::spawn_blocking(move || unpack_checked(&from, &to, &record, &what))
                .await
                .map_err(|e| DepotError::Crashed {
                    object: object.to_string(),
                    reason: e.to_string(),
                })?;
        match checked {
            Ok(true) => {}
            Ok(false) => return Err(self.changed(&object)),
            Err(err) => return Err(err),
        }
        match fs::rename(&tree, into) {
            Ok(()) => {}
            // Another server sharing this directory fetched it meanwhile.
            Err(_) if into.exists() => {}
            Err(source) => return Err(local(into)(source)),
        }
        tracing::info!(snapshot_dir = %name, bytes = size, took_ms = began.elapsed().as_millis() as u64, "snapshot directory fetched from the object store");
        Ok(())
    }

    fn changed(&self, object: &ObjectPath) -> DepotError {
        DepotError::Changed {
            location: self.location.clone(),
            object: object.to_string(),
        }
    }
}

/// Checks the archive at `file` against `record`, then unpacks it into `tree` (made here).
/// False when the archive is not the recorded one: nothing is unpacked.
fn unpack_checked(
    file: &Path,
    tree: &Path,
    record: &cove_image::Exported,
    object: &str,
) -> Result<bool> {
    let local = |path: &Path, source: io::Error| DepotError::Local {
        object: object.to_owned(),
        path: path.display().to_string(),
        source,
    };
    let mut hashed =
        cove_image::HashingReader::new(fs::File::open(file).map_err(|e| local(file, e))?);
    hashed.drain().map_err(|e| local(file, e))?;
    if hashed.finish() != (record.digest.clone(), record.size) {
        return Ok(false);
    }
    crate::make_private_dir(tree).map_err(|e| local(tree, e))?;
    let archive = fs::File::open(file).map_err(|e| local(file, e))?;
    cove_image::unpack(
        flate2::read::GzDecoder::new(io::BufReader::new(archive)),
        tree,
    )
    .map_err(|source| DepotError::Unpack {
        object: object.to_owned(),
        source,
    })?;
    Ok(true)
}
