//! Directories whose entries come and go with sandboxes: the sandboxes' own directories,
//! the disk pool's images, the markers of kills under way.
//!
//! ext4 without a journal (`recently_deleted` in `fs/ext4/ialloc.c`) will not reuse an
//! inode freed in the last minute or so: each new inode steps over every such inode of its
//! block group, reading the inode table for each. New files land in their directory's
//! group, so a directory where sandboxes come and go by the hundred makes every later file
//! there pay for all of them: about 1 ms an inode on a host that has run a few bursts.
//!
//! Marked as a "top directory" (`FS_TOPDIR_FL`), a directory's subdirectories are spread
//! over the block groups the way the root's are (ext4's Orlov allocator), and the files of
//! each land where few were freed. Filesystems without the flag ignore it.

use std::{fs, io, path::Path};

use rustix::{fs::IFlags, io::Errno};

/// Marks `dir` so that its subdirectories are spread over the filesystem (see the module).
/// Nothing to do where the filesystem keeps no such flag; a failure costs only speed, so it
/// is logged, not returned.
pub fn spread_subdirectories(dir: &Path) {
    if let Err(err) = mark(dir) {
        tracing::warn!(%err, dir = %dir.display(), "cannot spread a directory's entries over the filesystem");
    }
}

fn mark(dir: &Path) -> io::Result<()> {
    let handle = fs::File::open(dir)?;
    let flags = match rustix::fs::ioctl_getflags(&handle) {
        Ok(flags) => flags,
        Err(err) if unsupported(err) => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    if flags.contains(IFlags::TOPDIR) {
        return Ok(());
    }
    match rustix::fs::ioctl_setflags(&handle, flags | IFlags::TOPDIR) {
        Err(err) if !unsupported(err) => Err(err.into()),
        _ => Ok(()),
    }
}

/// Whether `err` says the filesystem has no inode flags (tmpfs before 6.0, overlayfs over
/// such a filesystem, …) or not this one.
fn unsupported(err: Errno) -> bool {
    matches!(
        err,
        Errno::NOTTY | Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_marked_once_and_keeps_its_other_flags() {
        let dir = tempfile::tempdir().unwrap();
        let handle = fs::File::open(dir.path()).unwrap();
        let Ok(before) = rustix::fs::ioctl_getflags(&handle) else {
            // This filesystem keeps no flags: only the call's success can be checked.
            mark(dir.path()).unwrap();
            return;
        };
        mark(dir.path()).unwrap();
        mark(dir.path()).unwrap();
        let after = rustix::fs::ioctl_getflags(&handle).unwrap();
        if supports_topdir(dir.path()) {
            assert_eq!(after, before | IFlags::TOPDIR);
        } else {
            assert_eq!(after, before);
        }
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = mark(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        // Only logged: a create goes on without the spreading.
        spread_subdirectories(&dir.path().join("missing"));
    }

    /// Whether the filesystem of `dir` is one of ext2/3/4, which keep `FS_TOPDIR_FL`.
    fn supports_topdir(dir: &Path) -> bool {
        const EXT_SUPER_MAGIC: i64 = 0xEF53;
        rustix::fs::statfs(dir).is_ok_and(|s| s.f_type == EXT_SUPER_MAGIC)
    }
}
