//! Unpacking one layer's tar stream into a directory that overlayfs can stack.
//!
//! Every file is made relative to a directory descriptor, one path component at a time with
//! `O_NOFOLLOW`, so no entry can reach outside the layer root and no symlink (from this
//! archive or anywhere) is ever followed while unpacking. An entry with a `..` component, or
//! one whose parent is a symlink, makes the whole layer fail: a registry that serves such a
//! layer is not trusted with the rest of it either.
//!
//! OCI whiteouts become overlayfs's own: `.wh.NAME` a character device 0:0 named `NAME`,
//! `.wh..wh..opq` the xattr `trusted.overlay.opaque="y"` on its directory. Numeric owners,
//! modes (setuid included), mtimes and the harmless xattrs are kept. Device nodes and fifos
//! are skipped with a warning: a sandbox gets its own `/dev`, and a device node in a layer
//! would be a hole in it (and a char device 0:0 would read as a whiteout).

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    io::{self, Read},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::{Component, Path},
};

use rustix::{
    fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags},
    io::Errno,
};

/// The overlayfs xattr that hides a lower directory's content.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What one layer held, for the store's records and the logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Entries written (files, directories, links, whiteouts).
    pub entries: u64,
    /// Bytes the tree takes on disk (allocated blocks, each inode once).
    pub disk_bytes: u64,
    /// Entries left out (device nodes, fifos, unknown kinds), with what they were.
    pub skipped: Vec<SkippedEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedEntry {
    pub path: String,
    pub kind: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot read the layer archive")]
    Archive(#[source] io::Error),
    #[error("layer entry {path:?} leaves the layer root")]
    Escape { path: String },
    #[error("layer entry {path:?} goes through a symlink or a non-directory")]
    ThroughLink { path: String },
    #[error("hard link {path:?} points at {target:?}, which is not an earlier file of this layer")]
    LinkTarget { path: String, target: String },
    #[error("layer entry {path:?} has an owner id out of range")]
    Owner { path: String },
    #[error("cannot {op} {path:?} while unpacking")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Unpacks the uncompressed tar stream `reader` into the existing, empty directory `root`.
pub fn unpack(reader: impl Read, root: &Path) -> Result<UnpackReport, UnpackError> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", root.display().to_string(), e.into()))?;
    let mut unpacker = Unpacker {
        root: root_fd,
        parent_cache: None,
        dir_times: Vec::new(),
        report: UnpackReport::default(),
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(UnpackError::Archive)? {
        let entry = entry.map_err(UnpackError::Archive)?;
        unpacker.entry(entry)?;
    }
    unpacker.finish()?;
    Ok(unpacker.report)
}

struct Unpacker {
    root: OwnedFd,
    /// The last parent directory opened: archives list siblings together.
    parent_cache: Option<(Vec<OsString>, OwnedFd)>,
    /// Directory mtimes are set last: creating children changes them.
    dir_times: Vec<(Vec<OsString>, Timestamps)>,
    report: UnpackReport,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            return Ok(());
        }
        let components = clean(&raw_path).ok_or_else(|| UnpackError::Escape {
            path: shown.clone(),
        })?;
        let meta = Meta::of(&mut entry, &shown)?;

        let Some((name, parents)) = components.split_last() else {
            // The layer root itself ("./"): only its metadata matters.
            if kind.is_dir() {
                let root = self
                    .root
                    .try_clone()
                    .map_err(|e| io_err("open", &shown, e))?;
                self.apply_dir_meta(&root, &meta, &shown)?;
                self.dir_times.push((Vec::new(), meta.times));
            }
            return Ok(());
        };

        let name_bytes = name.as_bytes();
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let parent = self.parent(parents, &shown)?;
            if name_bytes == OPAQUE_MARKER.as_bytes() {
                rustix::fs::fsetxattr(&parent, OPAQUE_XATTR, b"y", XattrFlags::empty())
                    .map_err(|e| io_err("mark opaque the parent of", &shown, e.into()))?;
            } else if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) || hidden.is_empty() {
                // AUFS bookkeeping (`.wh..wh.plnk`, …): nothing overlayfs needs.
                tracing::debug!(path = %shown, "skipping AUFS metadata entry");
                return Ok(());
            } else {
                let hidden = OsStr::from_bytes(hidden);
                self.replace(&parent, hidden, &shown)?;
                rustix::fs::mknodat(
                    &parent,
                    hidden,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|e| io_err("make the whiteout", &shown, e.into()))?;
            }
            self.report.entries += 1;
            return Ok(());
        }

        let parent = self.parent(parents, &shown)?;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.replace(&parent, name, &shown)?;
                let fd = rustix::fs::openat(
                    &parent,
                    name.as_os_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| io_err("create", &shown, e.into()))?;
                let mut file = File::from(fd);
                io::copy(&mut entry, &mut file).map_err(UnpackError::Archive)?;
                fchown(&file, &meta, &shown)?;
                rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode))
                    .map_err(|e| io_err("set the mode of", &shown, e.into()))?;
                set_xattrs(&file, &meta.xattrs, &shown)?;
                rustix::fs::futimens(&file, &meta.times)
                    .map_err(|e| io_err("set the times of", &shown, e.into()))?;
                self.count_blocks(&file);
            }
            tar::EntryType::Directory => {
                let dir = match open_dir(&parent, name) {
                    Ok(dir) => dir,
                    Err(_) => {
                        self.replace(&parent, name, &shown)?;
                        rustix::fs::mkdirat(&parent, name.as_os_str(), Mode::from_raw_mode(0o700))
                            .map_err(|e| io_err("create the directory", &shown, e.into()))?;
                        let dir = open_dir(&parent, name)
                            .map_err(|e| io_err("open the directory", &shown, e.into()))?;
                        self.count_blocks(&dir);
                        dir
                    }
                };
                self.apply_dir_meta(&dir, &meta, &shown)?;
                self.dir_times.push((components.clone(), meta.times));
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.replace(&parent, name, &shown)?;
                // The target is stored as written; it is never followed here, and inside
                // the sandbox it resolves against the sandbox's own root.
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, name.as_os_str())
                    .map_err(|e| io_err("create the symlink", &shown, e.into()))?;
                rustix::fs::chownat(
                    &parent,
                    name.as_os_str(),
                    Some(meta.uid),
                    Some(meta.gid),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io_err("set the owner of", &shown, e.into()))?;
                rustix::fs::utimensat(
                    &parent,
                    name.as_os_str(),
                    &meta.times,
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io_err("set the times of", &shown, e.into()))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_shown = String::from_utf8_lossy(&target).into_owned();
                let link_error = || UnpackError::LinkTarget {
                    path: shown.clone(),
                    target: target_shown.clone(),
                };
                let target_components = clean(&target).ok_or_else(link_error)?;
                let Some((target_name, target_parents)) = target_components.split_last() else {
                    return Err(link_error());
                };
                if target_components == components {
                    // A link to itself: the file is already there.
                    return Ok(());
                }
                let target_parent = self.walk(target_parents, false).map_err(|_| link_error())?;
                let target_stat = rustix::fs::statat(
                    &target_parent,
                    target_name.as_os_str(),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|_| link_error())?;
                if FileType::from_raw_mode(target_stat.st_mode) == FileType::Directory {
                    return Err(link_error());
                }
                self.replace(&parent, name, &shown)?;
                rustix::fs::linkat(
                    &target_parent,
                    target_name.as_os_str(),
                    &parent,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| io_err("create the hard link", &shown, e.into()))?;
            }
            other => {
                let kind = match other {
                    tar::EntryType::Char => "character device",
                    tar::EntryType::Block => "block device",
                    tar::EntryType::Fifo => "fifo",
                    _ => "unknown entry type",
                };
                let path = components
                    .iter()
                    .map(|c| c.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                tracing::warn!(%path, kind, "skipping a layer entry sandboxes must not have");
                self.report.skipped.push(SkippedEntry { path, kind });
                return Ok(());
            }
        }
        self.report.entries += 1;
        Ok(())
    }

    /// Clears the way for a new entry; a removed directory may be the cached parent.
    fn replace(&mut self, parent: &OwnedFd, name: &OsStr, shown: &str) -> Result<(), UnpackError> {
        if remove_existing(parent, name, shown)? {
            self.parent_cache = None;
        }
        Ok(())
    }

    fn apply_dir_meta(&self, dir: &OwnedFd, meta: &Meta, shown: &str) -> Result<(), UnpackError> {
        fchown(dir, meta, shown)?;
        rustix::fs::fchmod(dir, Mode::from_raw_mode(meta.mode))
            .map_err(|e| io_err("set the mode of", shown, e.into()))?;
        set_xattrs(dir, &meta.xattrs, shown)
    }

    fn count_blocks(&mut self, fd: impl AsFd) {
        if let Ok(stat) = rustix::fs::fstat(fd) {
            self.report.disk_bytes += (stat.st_blocks as u64) * 512;
        }
    }

    /// The parent directory of an entry, made (root-owned, 0755) where the archive did not
    /// list it; cached because archives keep siblings together.
    fn parent(&mut self, parents: &[OsString], shown: &str) -> Result<OwnedFd, UnpackError> {
        if let Some((cached, fd)) = &self.parent_cache
            && cached.as_slice() == parents
        {
            return fd
                .try_clone()
                .map_err(|e| io_err("open the parent of", shown, e));
        }
        let fd = self.walk(parents, true).map_err(|err| match err {
            WalkError::Link => UnpackError::ThroughLink {
                path: shown.to_owned(),
            },
            WalkError::Io(e) => io_err("open the parent of", shown, e.into()),
        })?;
        let copy = fd
            .try_clone()
            .map_err(|e| io_err("open the parent of", shown, e))?;
        self.parent_cache = Some((parents.to_vec(), copy));
        Ok(fd)
    }

    /// Opens `components` below the root one at a time, never following a symlink.
    fn walk(&mut self, components: &[OsString], create: bool) -> Result<OwnedFd, WalkError> {
        let mut dir = self
            .root
            .try_clone()
            .map_err(|e| WalkError::Io(Errno::from_io_error(&e).unwrap_or(Errno::BADF)))?;
        for component in components {
            dir = match open_dir(&dir, component) {
                Ok(next) => next,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(
                        &dir,
                        component.as_os_str(),
                        Mode::from_raw_mode(0o755),
                    ) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(WalkError::Io(e)),
                    }
                    open_dir(&dir, component).map_err(|e| match e {
                        Errno::LOOP | Errno::NOTDIR => WalkError::Link,
                        e => WalkError::Io(e),
                    })?
                }
                Err(Errno::LOOP | Errno::NOTDIR) => return Err(WalkError::Link),
                Err(e) => return Err(WalkError::Io(e)),
            };
        }
        Ok(dir)
    }

    /// Sets the directories' mtimes, deepest first, once nothing more is made in them.
    fn finish(&mut self) -> Result<(), UnpackError> {
        self.parent_cache = None;
        let mut times = std::mem::take(&mut self.dir_times);
        times.sort_by_key(|(components, _)| std::cmp::Reverse(components.len()));
        for (components, stamp) in times {
            let shown = components
                .iter()
                .map(|c| c.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let dir = match self.walk(&components, false) {
                Ok(dir) => dir,
                // A later entry replaced the directory (or removed it with a whiteout).
                Err(WalkError::Link | WalkError::Io(Errno::NOENT)) => continue,
                Err(WalkError::Io(e)) => return Err(io_err("open", &shown, e.into())),
            };
            rustix::fs::futimens(&dir, &stamp)
                .map_err(|e| io_err("set the times of", &shown, e.into()))?;
        }
        Ok(())
    }
}

enum WalkError {
    Link,
    Io(Errno),
}

/// What an entry says about its owner, mode, times and xattrs.
struct Meta {
    uid: Uid,
    gid: Gid,
    mode: u32,
    times: Timestamps,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Meta {
    fn of<R: Read>(entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Self, UnpackError> {
        let header = entry.header();
        let id = |v: io::Result<u64>| {
            v.ok()
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| UnpackError::Owner {
                    path: shown.to_owned(),
                })
        };
        let uid = Uid::from_raw(id(header.uid())?);
        let gid = Gid::from_raw(id(header.gid())?);
        let mode = header.mode().map_err(UnpackError::Archive)? & 0o7777;
        let mtime = header.mtime().unwrap_or(0).min(i64::MAX as u64) as i64;
        let stamp = Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        };
        let mut xattrs = Vec::new();
        if let Some(extensions) = entry.pax_extensions().map_err(UnpackError::Archive)? {
            for extension in extensions {
                let extension = extension.map_err(UnpackError::Archive)?;
                let Some(name) = extension.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                    continue;
                };
                if allowed_xattr(name) {
                    xattrs.push((
                        OsString::from_vec(name.to_vec()),
                        extension.value_bytes().to_vec(),
                    ));
                } else {
                    tracing::debug!(path = %shown, xattr = %String::from_utf8_lossy(name), "skipping an xattr");
                }
            }
        }
        Ok(Self {
            uid,
            gid,
            mode,
            times: Timestamps {
                last_access: stamp,
                last_modification: stamp,
            },
            xattrs,
        })
    }
}

/// User xattrs and file capabilities are kept. Overlayfs's own (`trusted.overlay.*`,
/// `user.overlay.*`) would let a layer forge whiteouts, redirects or metacopy files, and the
/// rest of `trusted.*` / `security.*` is the host's business, not an image's.
pub(crate) fn allowed_xattr(name: &[u8]) -> bool {
    (name.starts_with(b"user.") && !name.starts_with(b"user.overlay."))
        || name == b"security.capability"
}

/// The entry's path as components below the root: `./` and leading `/` are dropped (the
/// root is the layer's root), a `..` anywhere refuses the entry.
fn clean(raw: &[u8]) -> Option<Vec<OsString>> {
    let mut components = Vec::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(part) => components.push(part.to_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(components)
}

fn open_dir(parent: &impl AsFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn fchown(fd: impl AsFd, meta: &Meta, shown: &str) -> Result<(), UnpackError> {
    rustix::fs::fchown(fd, Some(meta.uid), Some(meta.gid))
        .map_err(|e| io_err("set the owner of", shown, e.into()))
}

fn set_xattrs(
    fd: impl AsFd,
    xattrs: &[(OsString, Vec<u8>)],
    shown: &str,
) -> Result<(), UnpackError> {
    for (name, value) in xattrs {
        match rustix::fs::fsetxattr(fd.as_fd(), name.as_os_str(), value, XattrFlags::empty()) {
            Ok(()) => {}
            // A filesystem without user xattrs loses them, as `tar -x` does.
            Err(Errno::NOTSUP | Errno::PERM) => {
                tracing::debug!(path = %shown, xattr = ?name, "filesystem refused an xattr");
            }
            Err(e) => return Err(io_err("set an xattr of", shown, e.into())),
        }
    }
    Ok(())
}

/// Removes what an earlier entry of this layer put at `name` (a later entry wins, as in
/// tar); a directory goes with its content.
/// Whether it was a directory.
fn remove_existing(parent: &impl AsFd, name: &OsStr, shown: &str) -> Result<bool, UnpackError> {
    let stat = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(io_err("inspect", shown, e.into())),
    };
    if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
        remove_tree(parent.as_fd(), name).map_err(|e| io_err("replace", shown, e.into()))?;
        Ok(true)
    } else {
        rustix::fs::unlinkat(parent, name, AtFlags::empty())
            .map_err(|e| io_err("replace", shown, e.into()))?;
        Ok(false)
    }
}

/// Removes the directory `name` below `parent` and all it holds, never following a link.
pub(crate) fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    let dir = open_dir(&parent, name)?;
    let mut children = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let child = entry.file_name().to_bytes();
        if child == b"." || child == b".." {
            continue;
        }
        children.push((
            OsString::from_vec(child.to_vec()),
            entry.file_type() == FileType::Directory,
        ));
    }
    for (child, is_dir) in children {
        if is_dir {
            remove_tree(dir.as_fd(), &child)?;
        } else {
            rustix::fs::unlinkat(&dir, child.as_os_str(), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

fn io_err(op: &'static str, path: impl Into<String>, source: io::Error) -> UnpackError {
    UnpackError::Io {
        op,
        path: path.into(),
        source,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    use super::*;

    /// Builds tar archives byte by byte, so tests can write entries no honest tool would.
    pub(crate) struct TarWriter {
        builder: tar::Builder<Vec<u8>>,
    }

    impl Default for TarWriter {
        fn default() -> Self {
            Self {
                builder: tar::Builder::new(Vec::new()),
            }
        }
    }

    impl TarWriter {
        pub(crate) fn entry(
            &mut self,
            path: &str,
            kind: tar::EntryType,
            mode: u32,
            owner: (u64, u64),
            link: Option<&str>,
            data: &[u8],
        ) -> &mut Self {
            let mut header = tar::Header::new_gnu();
            let name = &mut header.as_gnu_mut().expect("a GNU header").name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_uid(owner.0);
            header.set_gid(owner.1);
            header.set_mtime(1_700_000_000);
            header.set_size(data.len() as u64);
            if let Some(link) = link {
                let field = &mut header.as_gnu_mut().expect("a GNU header").linkname;
                field[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            self.builder.append(&header, data).expect("append");
            self
        }

        pub(crate) fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
            self.entry(path, tar::EntryType::Regular, 0o644, (0, 0), None, data)
        }

        pub(crate) fn dir(&mut self, path: &str) -> &mut Self {
            self.entry(path, tar::EntryType::Directory, 0o755, (0, 0), None, b"")
        }

        pub(crate) fn with_xattr(&mut self, path: &str, name: &str, value: &[u8]) -> &mut Self {
            let key = format!("SCHILY.xattr.{name}");
            self.builder
                .append_pax_extensions([(key.as_str(), value)])
                .expect("pax");
            self.file(path, b"x")
        }

        pub(crate) fn finish(&mut self) -> Vec<u8> {
            std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()))
                .into_inner()
                .expect("finish")
        }
    }

    fn unpack_into(archive: &[u8]) -> (tempfile::TempDir, Result<UnpackReport, UnpackError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("root")).expect("root");
        let result = unpack(archive, &dir.path().join("root"));
        (dir, result)
    }

    #[test]
    fn keeps_owners_modes_links_times_and_safe_xattrs() {
        use tar::EntryType::*;
        let archive = TarWriter::default()
            .entry("./", Directory, 0o755, (0, 0), None, b"")
            .entry("home/user/", Directory, 0o750, (1000, 1000), None, b"")
            .entry(
                "home/user/notes",
                Regular,
                0o600,
                (1000, 1000),
                None,
                b"mine",
            )
            .entry("usr/bin/su", Regular, 0o4755, (0, 0), None, b"#!/bin/sh\n")
            .entry(
                "usr/bin/again",
                Link,
                0o4755,
                (0, 0),
                Some("usr/bin/su"),
                b"",
            )
            .entry(
                "etc/os",
                Symlink,
                0o777,
                (0, 0),
                Some("/usr/lib/os-release"),
                b"",
            )
            .entry("dev/sda", Block, 0o660, (0, 0), None, b"")
            .entry("dev/null", Char, 0o666, (0, 0), None, b"")
            .entry("run/pipe", Fifo, 0o600, (0, 0), None, b"")
            .with_xattr("tagged", "user.origin", b"cove")
            .with_xattr("forged", "trusted.overlay.redirect", b"/etc")
            .finish();
        let (dir, result) = unpack_into(&archive);
        let report = result.expect("unpacks");
        let root = dir.path().join("root");

        let home = std::fs::metadata(root.join("home/user")).expect("home");
        assert_eq!(
            (home.uid(), home.gid(), home.mode() & 0o7777),
            (1000, 1000, 0o750)
        );
        let notes = std::fs::metadata(root.join("home/user/notes")).expect("notes");
        assert_eq!(
            (notes.uid(), notes.permissions().mode() & 0o7777),
            (1000, 0o600)
        );
        assert_eq!(notes.mtime(), 1_700_000_000);
        let su = std::fs::metadata(root.join("usr/bin/su")).expect("su");
        assert_eq!(su.permissions().mode() & 0o7777, 0o4755, "setuid kept");
        let again = std::fs::metadata(root.join("usr/bin/again")).expect("link");
        assert_eq!((again.ino(), su.nlink()), (su.ino(), 2), "a real hard link");
        assert_eq!(
            std::fs::read_link(root.join("etc/os")).expect("symlink"),
            Path::new("/usr/lib/os-release")
        );
        for gone in ["dev/sda", "dev/null", "run/pipe"] {
            assert!(!root.join(gone).exists(), "{gone} must be skipped");
        }
        assert_eq!(
            report.skipped.iter().map(|s| s.kind).collect::<Vec<_>>(),
            ["block device", "character device", "fifo"]
        );
        assert_eq!(
            xattr::get(root.join("tagged"), "user.origin").expect("xattr"),
            Some(b"cove".to_vec())
        );
        assert_eq!(
            xattr::get(root.join("forged"), "trusted.overlay.redirect").expect("xattr"),
            None,
            "an image cannot set overlayfs's own xattrs"
        );
        assert!(report.disk_bytes > 0);
    }

    #[test]
    fn whiteouts_and_opaque_directories_use_overlayfs_form() {
        let archive = TarWriter::default()
            .dir("etc/")
            .file("etc/.wh.motd", b"")
            .dir("var/cache/")
            .file("var/cache/.wh..wh..opq", b"")
            .file("var/cache/fresh", b"new")
            .file(".wh..wh.plnk", b"")
            .finish();
        let (dir, result) = unpack_into(&archive);
        result.expect("unpacks");
        let root = dir.path().join("root");
        let whiteout = std::fs::symlink_metadata(root.join("etc/motd")).expect("whiteout");
        assert!(whiteout.file_type().is_char_device());
        assert_eq!(whiteout.rdev(), 0, "device 0:0");
        assert!(!root.join("etc/.wh.motd").exists());
        assert_eq!(
            xattr::get(root.join("var/cache"), OPAQUE_XATTR).expect("xattr"),
            Some(b"y".to_vec())
        );
        assert!(!root.join("var/cache/.wh..wh..opq").exists());
        assert!(!root.join(".wh..wh.plnk").exists() && !root.join(".wh.plnk").exists());
    }

    #[test]
    fn parent_components_are_refused_and_nothing_escapes() {
        let archive = TarWriter::default()
            .file("../../etc/passwd", b"root::0:0::/:/bin/sh\n")
            .finish();
        let (dir, result) = unpack_into(&archive);
        assert!(
            matches!(result, Err(UnpackError::Escape { .. })),
            "{result:?}"
        );
        assert!(!dir.path().join("etc").exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("root"))
                .expect("ls")
                .count(),
            0
        );
    }

    #[test]
    fn absolute_paths_stay_inside_the_root() {
        let archive = TarWriter::default()
            .file("/etc/passwd", b"inside\n")
            .finish();
        let (dir, result) = unpack_into(&archive);
        result.expect("unpacks");
        assert_eq!(
            std::fs::read(dir.path().join("root/etc/passwd")).expect("inside"),
            b"inside\n"
        );
    }

    #[test]
    fn a_file_through_a_symlink_is_refused() {
        let outside = tempfile::tempdir().expect("outside");
        for target in [outside.path().to_str().expect("utf-8"), "../.."] {
            let archive = TarWriter::default()
                .entry(
                    "evil",
                    tar::EntryType::Symlink,
                    0o777,
                    (0, 0),
                    Some(target),
                    b"",
                )
                .file("evil/pwned", b"gotcha")
                .finish();
            let (_dir, result) = unpack_into(&archive);
            assert!(
                matches!(result, Err(UnpackError::ThroughLink { .. })),
                "{target}: {result:?}"
            );
            assert!(!outside.path().join("pwned").exists());
        }
        // A directory entry through a symlink, and a hard link through one, too.
        let archive = TarWriter::default()
            .entry("up", tar::EntryType::Symlink, 0o777, (0, 0), Some("/"), b"")
            .entry(
                "up/tmp/x",
                tar::EntryType::Link,
                0o644,
                (0, 0),
                Some("up/etc/passwd"),
                b"",
            )
            .finish();
        let (_dir, result) = unpack_into(&archive);
        assert!(result.is_err(), "{result:?}");
    }

    #[test]
    fn hard_links_must_point_inside_the_layer() {
        for target in ["/etc/passwd", "../outside", "missing"] {
            let archive = TarWriter::default()
                .entry(
                    "stolen",
                    tar::EntryType::Link,
                    0o644,
                    (0, 0),
                    Some(target),
                    b"",
                )
                .finish();
            let (_dir, result) = unpack_into(&archive);
            assert!(
                matches!(result, Err(UnpackError::LinkTarget { .. })),
                "{target}: {result:?}"
            );
        }
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let archive = TarWriter::default()
            .file("thing", b"a file first")
            .dir("thing/")
            .file("thing/inside", b"then a directory")
            .dir("other/")
            .file("other/x", b"x")
            .file("other", b"then a file")
            .finish();
        let (dir, result) = unpack_into(&archive);
        result.expect("unpacks");
        let root = dir.path().join("root");
        assert_eq!(
            std::fs::read(root.join("thing/inside")).expect("read"),
            b"then a directory"
        );
        assert_eq!(
            std::fs::read(root.join("other")).expect("read"),
            b"then a file"
        );
    }
}
