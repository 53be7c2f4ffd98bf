//! Layers made on this machine rather than downloaded (a template build's steps, the accounts
//! layer Cove adds to templates): a directory tree prepared beside the store and moved into
//! it under an id its maker chose, complete or not at all, as unpacked layers are.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::{LayerInfo, LayerStore, StoreError, check_owner, io_err, remove_dir};
use crate::digest::Digest;

impl LayerStore {
    /// A new empty directory (mode 0700) on the store's filesystem, to prepare a layer tree
    /// in for [`LayerStore::install_tree`]. What is left of it is removed when the store is
    /// next opened.
    pub fn staging_dir(&self) -> Result<PathBuf, StoreError> {
        let path = self
            .inner
            .root
            .join("tmp")
            .join(format!("made-{}", uuid::Uuid::new_v4()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| io_err("create", &path, source))?;
        Ok(path)
    }

    /// Moves the directory `tree` (on the store's filesystem, see
    /// [`LayerStore::staging_dir`]) into the store as layer `id`, and retains it for `owner`.
    /// When the store has `id` already, `tree` is removed and the stored layer retained: an
    /// id names one content. Returns the layer and whether the reference is new.
    pub fn install_tree(
        &self,
        id: &Digest,
        tree: &Path,
        owner: &str,
    ) -> Result<(LayerInfo, bool), StoreError> {
        check_owner(owner)?;
        let (disk_bytes, entries) =
            measure(tree).map_err(|source| io_err("measure", tree, source))?;
        let staging = self.staging_dir()?;
        let rootfs = staging.join("rootfs");
        let prepared = fs::rename(tree, &rootfs)
            .map_err(|source| io_err("move", tree, source))
            .and_then(|()| {
                let info = LayerInfo {
                    id: id.clone(),
                    blob: None,
                    disk_bytes,
                    entries,
                    skipped: Vec::new(),
                    owners: Vec::new(),
                };
                let record = staging.join("layer.json");
                let json = serde_json::to_vec_pretty(&info).expect("a layer record serialises");
                fs::write(&record, json).map_err(|source| io_err("write", &record, source))?;
                Ok(info)
            });
        let info = match prepared {
            Ok(info) => info,
            Err(err) => {
                remove_dir(&staging);
                return Err(err);
            }
        };
        let _guard = self.lock();
        let target = self.layer_dir(id);
        match fs::rename(&staging, &target) {
            Ok(()) => tracing::debug!(layer = %id, disk_bytes, "layer stored"),
            Err(_) if self.contains(id) => remove_dir(&staging),
            Err(source) => {
                remove_dir(&staging);
                return Err(io_err("store", &target, source));
            }
        }
        let new = self.retain_locked(id, owner)?;
        let mut info = info;
        info.owners = self.owners(id)?;
        Ok((info, new))
    }
}

/// Bytes on disk and entries of a tree, counting each hard-linked file once.
fn measure(root: &Path) -> io::Result<(u64, u64)> {
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            entries += 1;
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            bytes += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    // The layer's root is shown as the sandbox's `/`: it must be searchable.
    let mode = fs::symlink_metadata(root)?.mode() & 0o7777;
    if mode & 0o111 == 0 {
        fs::set_permissions(root, fs::Permissions::from_mode(mode | 0o755))?;
    }
    Ok((bytes, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    #[test]
    fn made_trees_are_stored_once_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            LayerStore::open(dir.path().join("store"), StoreOptions::default()).expect("store");
        let id = Digest::of(b"step: RUN echo hi");
        let tree = store.staging_dir().expect("staging").join("tree");
        fs::create_dir_all(tree.join("etc")).expect("mkdir");
        fs::write(tree.join("etc/hello"), b"hi").expect("write");
        let (info, new) = store.install_tree(&id, &tree, "build:b1").expect("install");
        assert!(new && info.entries == 2 && info.disk_bytes > 0);
        assert_eq!(
            fs::read(store.layer_path(&id).join("etc/hello")).expect("stored"),
            b"hi"
        );
        assert!(!tree.exists());

        // The same id again: the stored layer is kept, the new tree dropped.
        let again = store.staging_dir().expect("staging").join("tree");
        fs::create_dir_all(&again).expect("mkdir");
        let (info, new) = store
            .install_tree(&id, &again, "build:b2")
            .expect("install");
        assert!(new && info.owners == ["build:b1", "build:b2"]);
        assert!(!again.exists());
        assert!(store.layer_path(&id).join("etc/hello").exists());
    }
}
