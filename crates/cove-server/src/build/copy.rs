//! `COPY src dest [user] [mode]`: the uploaded build context becomes a layer, made on the
//! host without running anything from the image.
//!
//! The context (a tar or tar.gz of the matched paths, named relative to the client's context
//! directory) is unpacked with the layer store's safe unpacker — nothing leaves the target,
//! no link is followed, symbolic links stay links, device nodes are refused — then given its
//! owner (root unless the step names one) and mode, and moved under the destination, which is
//! resolved in the layers below as the sandbox would see it (links followed inside the
//! template, never on the host). Docker's rules place it: a directory's content goes into
//! the destination; a file goes to the destination path, or into it when the destination is
//! a directory (it ends with `/`, exists as one, or several sources are copied).

use std::{
    collections::BTreeSet,
    fs, io,
    io::BufReader,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::{
    accounts,
    layer_tree::{LayerTree, TreeError},
    stack::{Stack, StackError},
};

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("cannot read the uploaded files")]
    Context(#[source] io::Error),
    #[error("the uploaded files are not a valid archive")]
    Unpack(#[from] cove_image::UnpackError),
    #[error("the uploaded files hold nothing to copy")]
    Empty,
    #[error("the uploaded files are larger than {0} MiB unpacked (a sandbox's disk)")]
    TooLarge(u64),
    #[error("no user or group {0:?} in the template")]
    UnknownOwner(String),
    #[error("invalid mode {0:?}: give it in octal, like 0755")]
    Mode(String),
    #[error("cannot copy onto {0}: it is a file, not a directory")]
    NotADirectory(PathBuf),
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("cannot place {path} in the new layer")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One COPY, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    pub src: String,
    pub dest: String,
    /// `user[:group]`, empty for root.
    pub owner: String,
    /// Octal, empty to keep the files' own.
    pub mode: String,
}

impl Copy {
    /// Unpacks `archive` (at most `max_bytes` of it, unpacked) into `tree` (a new layer over
    /// `below`), relative paths of the destination taken from `workdir`. `scratch` is an
    /// empty directory on the tree's filesystem.
    pub fn apply(
        &self,
        archive: &Path,
        max_bytes: u64,
        below: &Stack,
        tree: &LayerTree<'_>,
        workdir: &Path,
        scratch: &Path,
    ) -> Result<(), CopyError> {
        let owner = if self.owner.is_empty() {
            (0, 0)
        } else {
            accounts::resolve_owner(below, &self.owner)?
                .ok_or_else(|| CopyError::UnknownOwner(self.owner.clone()))?
        };
        let mode = match self.mode.as_str() {
            "" => None,
            raw => Some(
                u32::from_str_radix(raw, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| CopyError::Mode(raw.to_owned()))?,
            ),
        };
        let roots = archive_roots(archive).map_err(CopyError::Context)?;
        if roots.is_empty() {
            return Err(CopyError::Empty);
        }
        let file = fs::File::open(archive).map_err(CopyError::Context)?;
        let mut reader = BufReader::new(file);
        let compression =
            cove_image::Compression::detect(&mut reader).map_err(CopyError::Context)?;
        let decoder = compression.decoder(reader).map_err(CopyError::Context)?;
        let mut limited = Limited {
            inner: decoder,
            left: max_bytes,
        };
        match cove_image::unpack(&mut limited, scratch) {
            Ok(_) => {}
            Err(_) if limited.left == 0 => return Err(CopyError::TooLarge(max_bytes >> 20)),
            Err(err) => return Err(err.into()),
        }
        set_owner_and_mode(scratch, owner, mode).map_err(|source| CopyError::Io {
            path: scratch.to_owned(),
            source,
        })?;

        let dest = workdir.join(&self.dest);
        let resolved = below.resolve(&dest)?;
        let dest_is_dir = below
            .lookup(&resolved.path)?
            .is_some_and(|entry| entry.is_dir());
        if resolved.exists && !dest_is_dir && (self.dest.ends_with('/') || roots.len() > 1) {
            return Err(CopyError::NotADirectory(resolved.path));
        }
        let into_dir =
            self.dest.ends_with('/') || roots.len() > 1 || has_wildcard(&self.src) || dest_is_dir;
        for root in &roots {
            let source = scratch.join(root);
            let is_dir = fs::symlink_metadata(&source)
                .map_err(|e| CopyError::Io {
                    path: source.clone(),
                    source: e,
                })?
                .is_dir();
            if is_dir {
                // The directory's content goes into the destination.
                tree.ensure_dir(&resolved.path, owner, dir_mode(&source))?;
                move_children(&source, &tree.host_path(&resolved.path))?;
            } else {
                let target = if into_dir {
                    let name = root.file_name().unwrap_or(root.as_os_str());
                    tree.ensure_dir(&resolved.path, owner, 0o755)?;
                    resolved.path.join(name)
                } else {
                    if let Some(parent) = resolved.path.parent() {
                        tree.ensure_dir(parent, owner, 0o755)?;
                    }
                    resolved.path.clone()
                };
                let host = tree.host_path(&target);
                replace(&source, &host)?;
            }
        }
        Ok(())
    }
}

/// A reader that fails once `left` bytes were read.
struct Limited<R> {
    inner: R,
    left: u64,
}

impl<R: io::Read> io::Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("the archive is larger than allowed"));
        }
        let cap = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..cap])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn has_wildcard(src: &str) -> bool {
    src.contains(['*', '?', '['])
}

fn dir_mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .map(|m| m.mode() & 0o7777)
        .unwrap_or(0o755)
}

/// The paths the archive names whose parent it does not name: what the client matched
/// (`""` for the context directory itself).
fn archive_roots(archive: &Path) -> io::Result<Vec<PathBuf>> {
    let mut reader = BufReader::new(fs::File::open(archive)?);
    let compression = cove_image::Compression::detect(&mut reader)?;
    let mut tar = tar::Archive::new(compression.decoder(reader)?);
    let mut named = BTreeSet::new();
    for entry in tar.entries()? {
        let entry = entry?;
        let path = entry.path()?;
        let clean: PathBuf = path
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        named.insert(clean);
    }
    if named.contains(Path::new("")) {
        return Ok(vec![PathBuf::new()]);
    }
    Ok(named
        .iter()
        .filter(|p| {
            !p.ancestors()
                .skip(1)
                .any(|a| !a.as_os_str().is_empty() && named.contains(a))
        })
        .cloned()
        .collect())
}

/// Gives every entry below `root` (not `root` itself) `owner`, and `mode` when set (links
/// keep theirs).
fn set_owner_and_mode(root: &Path, owner: (u32, u32), mode: Option<u32>) -> io::Result<()> {
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = entry.metadata()?;
            std::os::unix::fs::lchown(&path, Some(owner.0), Some(owner.1))?;
            if meta.file_type().is_symlink() {
                continue;
            }
            let keep_setid = meta.mode() & 0o7777;
            fs::set_permissions(
                &path,
                fs::Permissions::from_mode(mode.unwrap_or(keep_setid)),
            )?;
            if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    Ok(())
}

/// Moves the children of `from` into the directory `to`, merging into directories there.
fn move_children(from: &Path, to: &Path) -> Result<(), CopyError> {
    let entries = fs::read_dir(from).map_err(|source| CopyError::Io {
        path: from.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| CopyError::Io {
            path: from.to_owned(),
            source,
        })?;
        replace(&entry.path(), &to.join(entry.file_name()))?;
    }
    Ok(())
}

/// Moves `from` to `to`; a directory already at `to` (an earlier source) gets `from`'s
/// children, anything else there is replaced.
fn replace(from: &Path, to: &Path) -> Result<(), CopyError> {
    let io_err = |source| CopyError::Io {
        path: to.to_owned(),
        source,
    };
    match fs::symlink_metadata(to) {
        Ok(meta) if meta.is_dir() && fs::symlink_metadata(from).map_err(io_err)?.is_dir() => {
            return move_children(from, to);
        }
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(to).map_err(io_err)?,
        Ok(_) => fs::remove_file(to).map_err(io_err)?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_err(err)),
    }
    fs::rename(from, to).map_err(io_err)
}
