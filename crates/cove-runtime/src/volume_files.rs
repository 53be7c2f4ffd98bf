//! The host's own work on a volume's files (the content API): every byte there was written
//! by sandboxes, so nothing is reached by joining strings. Each path is resolved by
//! `openat2(2)` from the volume's root descriptor with `RESOLVE_IN_ROOT` (a symlink to
//! `/etc/shadow` means the volume's `etc/shadow`), `RESOLVE_NO_MAGICLINKS` and
//! `RESOLVE_NO_XDEV`; what lies below a directory being listed or removed is opened with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, and only regular files are read.

use std::{
    fs, io,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use rustix::{
    fs::{AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Stat, Uid},
    io::Errno,
};

/// The highest owner id the content API sets: sandboxes map ids below 65536.
pub const MAX_ID: u32 = 65_535;

/// How deep a removal or a listing goes below where it starts.
const MAX_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum VolumeFileError {
    #[error("invalid path {0:?}: {1}")]
    BadPath(String, &'static str),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("{0} is a directory")]
    IsADirectory(String),
    #[error("{0} is not a regular file")]
    NotAFile(String),
    #[error("{0} exists already")]
    Exists(String),
    #[error("{0} is nested too deep")]
    TooDeep(String),
    #[error("the volume is full")]
    NoSpace,
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl VolumeFileError {
    fn of(what: &'static str, path: &VolumePath) -> impl FnOnce(Errno) -> Self {
        let path = path.to_string();
        move |errno| match errno {
            Errno::NOENT | Errno::LOOP | Errno::XDEV => VolumeFileError::NotFound(path),
            Errno::NOTDIR => VolumeFileError::NotADirectory(path),
            Errno::ISDIR => VolumeFileError::IsADirectory(path),
            Errno::EXIST => VolumeFileError::Exists(path),
            // A FIFO without a reader, or a socket, planted where a file was expected.
            Errno::NXIO | Errno::OPNOTSUPP => VolumeFileError::NotAFile(path),
            Errno::NOSPC | Errno::DQUOT => VolumeFileError::NoSpace,
            other => VolumeFileError::Io {
                what,
                path,
                source: other.into(),
            },
        }
    }

    /// An error of writing file content.
    pub fn of_write(path: &VolumePath, err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(code) => Self::of("write", path)(Errno::from_raw_os_error(code)),
            None => VolumeFileError::Io {
                what: "write",
                path: path.to_string(),
                source: err,
            },
        }
    }
}

type Result<T> = std::result::Result<T, VolumeFileError>;

/// A path inside a volume: plain names only (`.` and empty parts dropped, `..` refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumePath(Vec<String>);

impl VolumePath {
    pub fn parse(raw: &str) -> Result<Self> {
        let mut names = Vec::new();
        for name in raw.split('/') {
            match name {
                "" | "." => {}
                ".." => {
                    return Err(VolumeFileError::BadPath(
                        raw.to_owned(),
                        "'..' is not allowed",
                    ));
                }
                _ if name.contains('\0') => {
                    return Err(VolumeFileError::BadPath(
                        raw.to_owned(),
                        "NUL is not allowed",
                    ));
                }
                _ => names.push(name.to_owned()),
            }
        }
        Ok(Self(names))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The last name (empty for the root).
    pub fn name(&self) -> &str {
        self.0.last().map_or("", String::as_str)
    }

    fn parent(&self) -> Self {
        Self(self.0[..self.0.len().saturating_sub(1)].to_vec())
    }

    fn child(&self, name: &str) -> Self {
        let mut names = self.0.clone();
        names.push(name.to_owned());
        Self(names)
    }

    /// Relative to the volume's root (`.` for the root itself).
    fn relative(&self) -> String {
        if self.0.is_empty() {
            ".".to_owned()
        } else {
            self.0.join("/")
        }
    }
}

impl std::fmt::Display for VolumePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", self.0.join("/"))
    }
}

/// What kind of entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    Other,
}

/// An entry of a volume as the content API describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// From the volume's root, starting with `/`.
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Unix milliseconds.
    pub atime_ms: i64,
    pub mtime_ms: i64,
    pub ctime_ms: i64,
    /// Where a symlink points, as stored.
    pub target: Option<String>,
}

/// Who owns what the content API makes, and its permission bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ownership {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
}

/// A volume's root, open.
#[derive(Debug)]
pub struct VolumeRoot(OwnedFd);

const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);
const BELOW: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Owners of what is made when the request names none: the sandbox's `user`.
const DEFAULT_OWNER: u32 = crate::volume::ROOT_OWNER;

impl VolumeRoot {
    /// Opens the root directory of a volume mounted at `mountpoint`.
    pub fn open(mountpoint: &Path) -> io::Result<Self> {
        Ok(Self(rustix::fs::open(
            mountpoint,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )?))
    }

    fn resolve(&self, path: &VolumePath, flags: OFlags, what: &'static str) -> Result<OwnedFd> {
        // openat2 refuses flags O_PATH ignores.
        let extra = if flags.contains(OFlags::PATH) {
            OFlags::CLOEXEC
        } else {
            OFlags::CLOEXEC | OFlags::NOCTTY
        };
        crate::confined_open::openat2(
            &self.0,
            path.relative().as_str(),
            flags | extra,
            Mode::empty(),
            IN_ROOT,
        )
        .map_err(VolumeFileError::of(what, path))
    }

    fn parent_dir(&self, path: &VolumePath) -> Result<OwnedFd> {
        self.resolve(
            &path.parent(),
            OFlags::PATH | OFlags::DIRECTORY,
            "open the directory of",
        )
    }

    /// The entry at `path` (a symlink is described, not followed).
    pub fn stat(&self, path: &VolumePath) -> Result<Entry> {
        if path.is_root() {
            let stat = rustix::fs::fstat(&self.0).map_err(VolumeFileError::of("stat", path))?;
            return Ok(entry(path, &stat, None));
        }
        let parent = self.parent_dir(path)?;
        entry_at(&parent, path)
    }

    /// The entries below the directory `path`, `depth` levels deep (1: its own entries).
    pub fn list(&self, path: &VolumePath, depth: usize) -> Result<Vec<Entry>> {
        let dir = self.resolve(path, OFlags::RDONLY | OFlags::DIRECTORY, "list")?;
        let mut entries = Vec::new();
        list_into(dir, path, depth.clamp(1, MAX_DEPTH), &mut entries)?;
        Ok(entries)
    }

    /// The regular file at `path`, open for reading.
    pub fn open_file(&self, path: &VolumePath) -> Result<fs::File> {
        // Non-blocking: a FIFO a sandbox left there must not hold a host thread.
        let fd = self.resolve(path, OFlags::RDONLY | OFlags::NONBLOCK, "open")?;
        regular(&fd, path)?;
        let flags = rustix::fs::fcntl_getfl(&fd).map_err(VolumeFileError::of("open", path))?;
        rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK)
            .map_err(VolumeFileError::of("open", path))?;
        Ok(fs::File::from(fd))
    }

    /// The file at `path` created or emptied, open for writing; missing parent directories
    /// are made when `parents`.
    pub fn create_file(
        &self,
        path: &VolumePath,
        owner: Ownership,
        parents: bool,
    ) -> Result<fs::File> {
        if path.is_root() {
            return Err(VolumeFileError::IsADirectory(path.to_string()));
        }
        if parents {
            self.make_dirs(&path.parent(), owner_without_mode(owner))?;
        }
        let mode = owner.mode.unwrap_or(0o644);
        let fd = crate::confined_open::openat2(
            &self.0,
            path.relative().as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::from_raw_mode(mode),
            IN_ROOT,
        )
        .map_err(VolumeFileError::of("create", path))?;
        regular(&fd, path)?;
        rustix::fs::ftruncate(&fd, 0).map_err(VolumeFileError::of("empty", path))?;
        set_owner(&fd, path, owner, true)?;
        if owner.mode.is_some() {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                .map_err(VolumeFileError::of("set the mode of", path))?;
        }
        Ok(fs::File::from(fd))
    }

    /// Makes the directory `path`; with `parents`, the missing ones above it too, and one
    /// that exists already is no error.
    pub fn make_dir(&self, path: &VolumePath, owner: Ownership, parents: bool) -> Result<Entry> {
        if parents {
            self.make_dirs(path, owner)?;
        } else {
            if path.is_root() {
                return Err(VolumeFileError::Exists(path.to_string()));
            }
            let parent = self.parent_dir(path)?;
            make_one_dir(&parent, path, owner)?;
        }
        self.stat(path)
    }

    fn make_dirs(&self, path: &VolumePath, owner: Ownership) -> Result<()> {
        let mut so_far = VolumePath(Vec::new());
        let mut dir = self.resolve(&so_far, OFlags::PATH | OFlags::DIRECTORY, "open")?;
        for name in &path.0 {
            let next = so_far.child(name);
            dir = match self.resolve(&next, OFlags::PATH | OFlags::DIRECTORY, "open") {
                Ok(fd) => fd,
                Err(VolumeFileError::NotFound(_)) => {
                    match make_one_dir(&dir, &next, owner) {
                        Ok(()) | Err(VolumeFileError::Exists(_)) => {}
                        Err(err) => return Err(err),
                    }
                    self.resolve(&next, OFlags::PATH | OFlags::DIRECTORY, "open")?
                }
                Err(err) => return Err(err),
            };
            so_far = next;
        }
        Ok(())
    }

    /// Removes the file, symlink or directory (with all below it) at `path`.
    pub fn remove(&self, path: &VolumePath) -> Result<()> {
        if path.is_root() {
            return Err(VolumeFileError::BadPath(
                path.to_string(),
                "the volume's root cannot be removed",
            ));
        }
        let parent = self.parent_dir(path)?;
        remove_at(&parent, path, 0)
    }

    /// Changes the owner and mode of what `path` names (a symlink's target, inside the
    /// volume).
    pub fn set_metadata(&self, path: &VolumePath, owner: Ownership) -> Result<Entry> {
        let fd = self.resolve(path, OFlags::PATH, "open")?;
        set_owner(&fd, path, owner, false)?;
        if let Some(mode) = owner.mode {
            // fchmod needs a descriptor of the file itself; a symlink cannot be changed.
            let stat = rustix::fs::fstat(&fd).map_err(VolumeFileError::of("stat", path))?;
            let kind = FileType::from_raw_mode(stat.st_mode);
            if !matches!(kind, FileType::RegularFile | FileType::Directory) {
                return Err(VolumeFileError::NotAFile(path.to_string()));
            }
            let open = self.resolve(path, OFlags::RDONLY | OFlags::NONBLOCK, "open")?;
            rustix::fs::fchmod(&open, Mode::from_raw_mode(mode))
                .map_err(VolumeFileError::of("set the mode of", path))?;
        }
        let stat = rustix::fs::fstat(&fd).map_err(VolumeFileError::of("stat", path))?;
        Ok(entry(path, &stat, None))
    }
}

fn owner_without_mode(owner: Ownership) -> Ownership {
    Ownership {
        mode: None,
        ..owner
    }
}

fn regular(fd: &OwnedFd, path: &VolumePath) -> Result<()> {
    let stat = rustix::fs::fstat(fd).map_err(VolumeFileError::of("stat", path))?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => Ok(()),
        FileType::Directory => Err(VolumeFileError::IsADirectory(path.to_string())),
        _ => Err(VolumeFileError::NotAFile(path.to_string())),
    }
}

/// Sets owners asked for; `defaults`: the sandbox's `user` where none was asked for.
fn set_owner(fd: &OwnedFd, path: &VolumePath, owner: Ownership, defaults: bool) -> Result<()> {
    let pick = |id: Option<u32>| id.or(defaults.then_some(DEFAULT_OWNER));
    let (uid, gid) = (pick(owner.uid), pick(owner.gid));
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    rustix::fs::chownat(
        fd,
        "",
        uid.map(Uid::from_raw),
        gid.map(Gid::from_raw),
        AtFlags::EMPTY_PATH,
    )
    .map_err(VolumeFileError::of("set the owner of", path))
}

fn make_one_dir(parent: &OwnedFd, path: &VolumePath, owner: Ownership) -> Result<()> {
    let mode = owner.mode.unwrap_or(0o755);
    rustix::fs::mkdirat(parent, path.name(), Mode::from_raw_mode(mode))
        .map_err(VolumeFileError::of("make", path))?;
    let made = crate::confined_open::openat2(
        parent,
        path.name(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        BELOW,
    )
    .map_err(VolumeFileError::of("open", path))?;
    set_owner(&made, path, owner, true)?;
    // The umask took bits off.
    rustix::fs::fchmod(&made, Mode::from_raw_mode(mode))
        .map_err(VolumeFileError::of("set the mode of", path))
}

fn entry_at(dir: &impl AsFd, path: &VolumePath) -> Result<Entry> {
    let stat = rustix::fs::statat(dir, path.name(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(VolumeFileError::of("stat", path))?;
    let target = if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
        rustix::fs::readlinkat(dir, path.name(), Vec::new())
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    } else {
        None
    };
    Ok(entry(path, &stat, target))
}

fn entry(path: &VolumePath, stat: &Stat, target: Option<String>) -> Entry {
    let ms = |secs: i64, nsec: u64| secs * 1000 + (nsec / 1_000_000) as i64;
    Entry {
        name: path.name().to_owned(),
        path: path.to_string(),
        kind: match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => EntryKind::File,
            FileType::Directory => EntryKind::Directory,
            FileType::Symlink => EntryKind::Symlink,
            _ => EntryKind::Other,
        },
        size: stat.st_size as u64,
        mode: stat.st_mode & 0o7777,
        uid: stat.st_uid,
        gid: stat.st_gid,
        atime_ms: ms(stat.st_atime, stat.st_atime_nsec),
        mtime_ms: ms(stat.st_mtime, stat.st_mtime_nsec),
        ctime_ms: ms(stat.st_ctime, stat.st_ctime_nsec),
        target,
    }
}

fn names_in(dir: &OwnedFd, path: &VolumePath) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut listing = rustix::fs::Dir::read_from(dir).map_err(VolumeFileError::of("list", path))?;
    while let Some(item) = listing.read() {
        let item = item.map_err(VolumeFileError::of("list", path))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn list_into(dir: OwnedFd, path: &VolumePath, depth: usize, out: &mut Vec<Entry>) -> Result<()> {
    for name in names_in(&dir, path)? {
        let child = path.child(&name);
        let entry = match entry_at(&dir, &child) {
            Ok(entry) => entry,
            // Removed by a sandbox meanwhile.
            Err(VolumeFileError::NotFound(_)) => continue,
            Err(err) => return Err(err),
        };
        let descend = depth > 1 && entry.kind == EntryKind::Directory;
        out.push(entry);
        if descend {
            match crate::confined_open::openat2(
                &dir,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                BELOW,
            ) {
                Ok(below) => list_into(below, &child, depth - 1, out)?,
                // Replaced by a symlink or removed meanwhile: not followed.
                Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR | Errno::XDEV) => {}
                Err(err) => return Err(VolumeFileError::of("list", &child)(err)),
            }
        }
    }
    Ok(())
}

fn remove_at(parent: &OwnedFd, path: &VolumePath, depth: usize) -> Result<()> {
    let stat = rustix::fs::statat(parent, path.name(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(VolumeFileError::of("remove", path))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(parent, path.name(), AtFlags::empty())
            .map_err(VolumeFileError::of("remove", path));
    }
    if depth >= MAX_DEPTH {
        return Err(VolumeFileError::TooDeep(path.to_string()));
    }
    let dir = crate::confined_open::openat2(
        parent,
        path.name(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        BELOW,
    )
    .map_err(VolumeFileError::of("remove", path))?;
    for name in names_in(&dir, path)? {
        match remove_at(&dir, &path.child(&name), depth + 1) {
            Ok(()) | Err(VolumeFileError::NotFound(_)) => {}
            Err(err) => return Err(err),
        }
    }
    rustix::fs::unlinkat(parent, path.name(), AtFlags::REMOVEDIR)
        .map_err(VolumeFileError::of("remove", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_plain_names() {
        assert_eq!(
            VolumePath::parse("/a//b/./c").unwrap().to_string(),
            "/a/b/c"
        );
        assert!(VolumePath::parse("/").unwrap().is_root());
        assert!(VolumePath::parse("a/../b").is_err());
        assert!(VolumePath::parse("a\0b").is_err());
    }

    #[test]
    fn symlinks_stay_inside_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", dir.path().join("up")).unwrap();
        let root = VolumeRoot::open(dir.path()).unwrap();
        let passwd = VolumePath::parse("passwd").unwrap();
        assert!(matches!(
            root.open_file(&passwd),
            Err(VolumeFileError::NotFound(_))
        ));
        let up = VolumePath::parse("up/passwd").unwrap();
        assert!(matches!(
            root.open_file(&up),
            Err(VolumeFileError::NotFound(_))
        ));
        // Writing through the link lands inside the volume.
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let mut file = root
            .create_file(&passwd, Ownership::default(), false)
            .unwrap();
        std::io::Write::write_all(&mut file, b"inside").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("etc/passwd")).unwrap(),
            b"inside"
        );
        assert_eq!(
            root.list(&VolumePath::parse("up").unwrap(), 1)
                .unwrap()
                .len(),
            1
        );
        root.remove(&VolumePath::parse("up").unwrap()).unwrap();
        assert!(dir.path().join("etc/passwd").exists());
        assert_eq!(root.stat(&passwd).unwrap().kind, EntryKind::Symlink);
    }
}
