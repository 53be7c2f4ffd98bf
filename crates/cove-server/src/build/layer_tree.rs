//! A new layer prepared on the host (a COPY, a WORKDIR, Cove's accounts layer): paths are
//! written into a directory that will be stacked on top of `below`. A directory the stack
//! has already gets its attributes in the new layer too (overlayfs shows the topmost
//! layer's), so writing into `/etc` leaves `/etc` as it was.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::stack::{Stack, StackError};

/// Who owns a new entry: (uid, gid) as the sandbox sees them.
pub type Owner = (u32, u32);

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error("cannot write {path} into the new layer")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// See the module documentation.
pub struct LayerTree<'a> {
    root: PathBuf,
    below: &'a Stack,
}

impl<'a> LayerTree<'a> {
    /// A layer tree in the existing empty directory `root`, to go on top of `below`.
    pub fn new(root: PathBuf, below: &'a Stack) -> Self {
        Self { root, below }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `path` (absolute in the sandbox) is on the host.
    pub fn host_path(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Whether anything was written.
    pub fn is_empty(&self) -> bool {
        fs::read_dir(&self.root)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(true)
    }

    /// Makes the directory `path` (absolute, resolved) and its parents in the layer: those the
    /// stack has keep their owner, mode and time; new ones are `owner`'s, mode `mode`.
    pub fn ensure_dir(&self, path: &Path, owner: Owner, mode: u32) -> Result<(), TreeError> {
        let mut sandbox_path = PathBuf::from("/");
        self.copy_attributes(&sandbox_path, None)?;
        for part in path.components().skip(1) {
            sandbox_path.push(part);
            let host = self.host_path(&sandbox_path);
            match fs::symlink_metadata(&host) {
                Ok(meta) if meta.is_dir() => continue,
                // Something the layer holds already (a file or link it copied) is in the way.
                Ok(_) => {
                    return Err(TreeError::Io {
                        path: sandbox_path,
                        source: io::Error::from(io::ErrorKind::NotADirectory),
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(TreeError::Io {
                        path: sandbox_path,
                        source,
                    });
                }
            }
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&host)
                .map_err(|source| TreeError::Io {
                    path: sandbox_path.clone(),
                    source,
                })?;
            self.copy_attributes(&sandbox_path, Some((owner, mode)))?;
        }
        Ok(())
    }

    /// Gives the layer's entry at `path` the attributes the stack's has; when the stack has
    /// none, `new` (owner and mode), if given.
    fn copy_attributes(&self, path: &Path, new: Option<(Owner, u32)>) -> Result<(), TreeError> {
        let host = self.host_path(path);
        let io_err = |source| TreeError::Io {
            path: path.to_owned(),
            source,
        };
        let (owner, mode, mtime) = match self.below.lookup(path)? {
            Some(entry) if entry.is_dir() => (
                (entry.meta.uid(), entry.meta.gid()),
                entry.meta.mode() & 0o7777,
                Some((entry.meta.mtime(), entry.meta.mtime_nsec())),
            ),
            _ => match new {
                Some((owner, mode)) => (owner, mode, None),
                None => ((0, 0), 0o755, None),
            },
        };
        std::os::unix::fs::lchown(&host, Some(owner.0), Some(owner.1)).map_err(io_err)?;
        fs::set_permissions(&host, fs::Permissions::from_mode(mode)).map_err(io_err)?;
        if let Some((sec, nsec)) = mtime {
            set_mtime(&host, sec, nsec).map_err(io_err)?;
        }
        Ok(())
    }

    /// Writes the regular file `path` (its parent directory must be in the layer).
    pub fn write_file(
        &self,
        path: &Path,
        content: &[u8],
        owner: Owner,
        mode: u32,
    ) -> Result<(), TreeError> {
        let host = self.host_path(path);
        let io_err = |source| TreeError::Io {
            path: path.to_owned(),
            source,
        };
        fs::write(&host, content).map_err(io_err)?;
        std::os::unix::fs::lchown(&host, Some(owner.0), Some(owner.1)).map_err(io_err)?;
        fs::set_permissions(&host, fs::Permissions::from_mode(mode)).map_err(io_err)
    }
}

/// Sets a path's modification (and access) time, not following a link.
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) -> io::Result<()> {
    let time = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: time,
            last_modification: time,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_the_stack_has_keep_their_attributes() {
        let tmp = tempfile::tempdir().unwrap();
        let lower = tmp.path().join("lower");
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::set_permissions(lower.join("etc"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::lchown(lower.join("etc"), Some(0), Some(4)).unwrap();
        let stack = Stack::new(vec![lower]);
        let root = tmp.path().join("new");
        fs::create_dir(&root).unwrap();
        let tree = LayerTree::new(root.clone(), &stack);
        assert!(tree.is_empty());
        tree.ensure_dir(Path::new("/etc/app/conf"), (1000, 1000), 0o755)
            .unwrap();
        tree.write_file(Path::new("/etc/app/conf/x"), b"x", (1000, 1000), 0o600)
            .unwrap();
        let etc = fs::metadata(root.join("etc")).unwrap();
        assert_eq!((etc.mode() & 0o7777, etc.gid()), (0o750, 4));
        let app = fs::metadata(root.join("etc/app")).unwrap();
        assert_eq!((app.mode() & 0o7777, app.uid()), (0o755, 1000));
        let file = fs::metadata(root.join("etc/app/conf/x")).unwrap();
        assert_eq!((file.mode() & 0o7777, file.uid()), (0o600, 1000));
        assert!(!tree.is_empty());
    }
}
