//! Reading a stack of layers as overlayfs shows it, without mounting it: which layer an entry
//! comes from, whiteouts and opaque directories honoured, symbolic links resolved inside the
//! stack's own root (never on the host).
//!
//! The host only ever looks at entries (`lstat`, `readlink`, reading a regular file) under
//! directories it has checked are real directories of that layer, and layers do not change
//! once stored: a symbolic link in a layer is read as a link, never followed by the host.

use std::{
    fs, io,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Component, Path, PathBuf},
};

/// The overlayfs xattr that hides a lower directory's content.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// How many symbolic links one resolution follows (Linux's own limit).
const MAX_LINKS: usize = 40;
/// The largest file [`Stack::read_file`] reads.
const MAX_READ: u64 = 16 << 20;

/// Layers shown at `/`, top first.
#[derive(Clone, Debug)]
pub struct Stack {
    layers: Vec<PathBuf>,
}

/// What is at a path of the stack.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Where it is on the host (in its topmost layer).
    pub host_path: PathBuf,
    pub meta: fs::Metadata,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.meta.is_dir()
    }
}

/// A path resolved in the stack: symbolic links followed, `..` kept inside the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Absolute, normal, link-free path in the stack.
    pub path: PathBuf,
    /// Whether something is there (the last component may be missing).
    pub exists: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot read {path} in the template's layers")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("too many symbolic links resolving {0}")]
    Loop(PathBuf),
    #[error("{0} is larger than a file Cove reads from a template")]
    TooLarge(PathBuf),
}

impl Stack {
    pub fn new(layers: Vec<PathBuf>) -> Self {
        Self { layers }
    }

    /// The entry at `path` (absolute, link-free, normal), as the merged view shows it.
    pub fn lookup(&self, path: &Path) -> Result<Option<Entry>, StackError> {
        let io_err = |source| StackError::Io {
            path: path.to_owned(),
            source,
        };
        let components = normal_components(path);
        // The layers whose directory at the current prefix takes part in the merge.
        let mut merging: Vec<usize> = (0..self.layers.len()).collect();
        let mut prefix = PathBuf::new();
        let mut found: Option<Entry> = None;
        for (depth, name) in components.iter().enumerate() {
            prefix.push(name);
            let last = depth + 1 == components.len();
            found = None;
            let mut next = Vec::new();
            for &layer in &merging {
                let host = self.layers[layer].join(&prefix);
                let meta = match fs::symlink_metadata(&host) {
                    Ok(meta) => meta,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    Err(err) if err.raw_os_error() == Some(libc_enotdir()) => continue,
                    Err(err) => return Err(io_err(err)),
                };
                if is_whiteout(&meta) {
                    break;
                }
                let is_dir = meta.is_dir();
                if found.is_none() {
                    found = Some(Entry {
                        host_path: host.clone(),
                        meta: meta.clone(),
                    });
                } else if !is_dir {
                    // A non-directory under a directory is hidden, and so is what is below.
                    break;
                }
                if !is_dir {
                    break;
                }
                next.push(layer);
                if is_opaque(&host) {
                    break;
                }
            }
            match &found {
                None => return Ok(None),
                Some(entry) if !last && !entry.is_dir() => {
                    return Err(StackError::NotADirectory(PathBuf::from("/").join(&prefix)));
                }
                Some(_) => {}
            }
            merging = next;
        }
        match found {
            Some(entry) => Ok(Some(entry)),
            // The root itself.
            None if components.is_empty() => {
                let Some(top) = self.layers.first() else {
                    return Ok(None);
                };
                let meta = fs::symlink_metadata(top).map_err(io_err)?;
                Ok(Some(Entry {
                    host_path: top.clone(),
                    meta,
                }))
            }
            None => Ok(None),
        }
    }

    /// The content of the regular file at `path` (links followed), if there is one.
    pub fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, StackError> {
        let resolved = self.resolve(path)?;
        if !resolved.exists {
            return Ok(None);
        }
        let Some(entry) = self.lookup(&resolved.path)? else {
            return Ok(None);
        };
        if !entry.meta.is_file() {
            return Ok(None);
        }
        if entry.meta.len() > MAX_READ {
            return Err(StackError::TooLarge(resolved.path));
        }
        // A regular file of a stored layer (checked just above with lstat): reading it
        // follows no link.
        fs::read(&entry.host_path)
            .map(Some)
            .map_err(|source| StackError::Io {
                path: resolved.path,
                source,
            })
    }

    /// `path` with every symbolic link resolved inside the stack (as a chroot would),
    /// relative paths taken from `/`. Every component but the last must exist.
    pub fn resolve(&self, path: &Path) -> Result<Resolved, StackError> {
        let mut pending: Vec<PathBuf> = normal_components(path).into_iter().rev().collect();
        let mut done = PathBuf::from("/");
        let mut links = 0;
        while let Some(name) = pending.pop() {
            if name.as_os_str() == ".." {
                done.pop();
                continue;
            }
            let candidate = done.join(&name);
            match self.lookup(&candidate)? {
                None if pending.is_empty() => {
                    return Ok(Resolved {
                        path: candidate,
                        exists: false,
                    });
                }
                None => {
                    // A missing directory on the way: what follows is missing too.
                    let mut rest = candidate;
                    while let Some(name) = pending.pop() {
                        if name.as_os_str() == ".." {
                            rest.pop();
                        } else {
                            rest.push(name);
                        }
                    }
                    return Ok(Resolved {
                        path: rest,
                        exists: false,
                    });
                }
                Some(entry) if entry.meta.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(StackError::Loop(path.to_owned()));
                    }
                    let target =
                        fs::read_link(&entry.host_path).map_err(|source| StackError::Io {
                            path: candidate.clone(),
                            source,
                        })?;
                    if target.is_absolute() {
                        done = PathBuf::from("/");
                    }
                    for part in raw_components(&target).into_iter().rev() {
                        pending.push(part);
                    }
                }
                Some(entry) => {
                    if !pending.is_empty() && !entry.is_dir() {
                        return Err(StackError::NotADirectory(candidate));
                    }
                    done = candidate;
                }
            }
        }
        Ok(Resolved {
            path: done,
            exists: true,
        })
    }
}

/// The components of an absolute or relative path, `.` and `..` folded lexically (`..` at
/// the root stays there).
fn normal_components(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for part in raw_components(path) {
        if part.as_os_str() == ".." {
            out.pop();
        } else {
            out.push(part);
        }
    }
    out
}

/// The named components of a path and its `..`s, in order (`.` and `/` dropped).
fn raw_components(path: &Path) -> Vec<PathBuf> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(PathBuf::from(name)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect()
}

fn libc_enotdir() -> i32 {
    rustix::io::Errno::NOTDIR.raw_os_error()
}

/// A whiteout: a character device 0/0.
pub fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    let mut value = [0u8; 2];
    matches!(rustix::fs::lgetxattr(dir, OPAQUE_XATTR, &mut value), Ok(1) if value[0] == b'y')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(root: &Path, name: &str) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn whiteout(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
    }

    #[test]
    fn lookups_follow_overlay_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let (top, mid, bottom) = (
            layer(tmp.path(), "top"),
            layer(tmp.path(), "mid"),
            layer(tmp.path(), "bottom"),
        );
        fs::create_dir_all(bottom.join("etc/skel")).unwrap();
        fs::write(bottom.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::write(bottom.join("etc/motd"), "hi").unwrap();
        fs::write(bottom.join("etc/skel/.bashrc"), "x").unwrap();
        fs::create_dir_all(mid.join("etc")).unwrap();
        whiteout(&mid.join("etc/motd"));
        fs::create_dir_all(top.join("etc/skel")).unwrap();
        rustix::fs::lsetxattr(
            top.join("etc/skel"),
            OPAQUE_XATTR,
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc", top.join("config")).unwrap();
        std::os::unix::fs::symlink("../../etc/passwd", bottom.join("etc/skel/pw")).unwrap();
        let stack = Stack::new(vec![top.clone(), mid, bottom.clone()]);

        assert_eq!(
            stack.read_file(Path::new("/etc/passwd")).unwrap().unwrap(),
            b"root:x:0:0::/root:/bin/sh\n"
        );
        assert!(stack.lookup(Path::new("/etc/motd")).unwrap().is_none());
        // The opaque directory hides the bottom layer's content.
        assert!(
            stack
                .lookup(Path::new("/etc/skel/.bashrc"))
                .unwrap()
                .is_none()
        );
        assert!(stack.lookup(Path::new("/etc/skel/pw")).unwrap().is_none());
        // Links resolve inside the stack, absolute ones from its root.
        assert_eq!(
            stack.resolve(Path::new("/config/passwd")).unwrap(),
            Resolved {
                path: "/etc/passwd".into(),
                exists: true
            }
        );
        assert_eq!(
            stack.resolve(Path::new("config/new/file")).unwrap(),
            Resolved {
                path: "/etc/new/file".into(),
                exists: false
            }
        );
        assert_eq!(
            stack.resolve(Path::new("/../../etc")).unwrap().path,
            PathBuf::from("/etc")
        );
        assert!(stack.lookup(Path::new("/")).unwrap().unwrap().is_dir());
        // A link to the host's files points into the stack, never out of it.
        std::os::unix::fs::symlink("/proc/self/root/etc/shadow", top.join("steal")).unwrap();
        assert!(stack.read_file(Path::new("/steal")).unwrap().is_none());
        std::os::unix::fs::symlink("loop", top.join("loop")).unwrap();
        assert!(matches!(
            stack.resolve(Path::new("/loop")),
            Err(StackError::Loop(_))
        ));
        assert!(matches!(
            stack.resolve(Path::new("/etc/passwd/x")),
            Err(StackError::NotADirectory(_))
        ));
    }
}
