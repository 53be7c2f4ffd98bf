//! Which binary a sandbox's PID 1 runs: `cove-init` (the `cove-init` crate), installed next
//! to `cove`, when it is there and as safe to run as `cove` itself; else `cove` does the job
//! (`cove __sandbox-init --pid1`), a larger exec for every create.
//!
//! The setup stage opens it as host root, before it enters the sandbox's user namespace, and
//! PID 1 is exec'd through that descriptor: no directory on its path needs to be searchable
//! by the sandbox's users, and nothing can swap the file in between. The file must still be
//! the one the server checked when it started: a new `cove-init` installed beside a server
//! still running (an upgrade before the restart) could read its spec otherwise; then that
//! sandbox's PID 1 runs `cove`.

use std::{
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::{MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The binary's name, in the directory of `cove`.
pub const NAME: &str = "cove-init";

/// The `cove-init` a server checked: where it is, and which file it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitBinary {
    pub path: PathBuf,
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl InitBinary {
    fn is(&self, stat: &rustix::fs::Stat) -> bool {
        stat.st_dev == self.dev
            && stat.st_ino == self.ino
            && stat.st_mtime == self.mtime
            && i64::try_from(stat.st_mtime_nsec).ok() == Some(self.mtime_nsec)
    }
}

/// `cove-init` next to `exe` (the `cove` binary), or why a sandbox's PID 1 runs `exe` itself
/// (Ok(None): not installed, which is no fault).
pub fn beside(exe: &Path) -> Result<Option<InitBinary>, String> {
    let path = exe.with_file_name(NAME);
    let path = match path.canonicalize() {
        Ok(path) => path,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("cannot resolve {}: {err}", path.display())),
    };
    let meta = check(&path)?;
    Ok(Some(InitBinary {
        dev: meta.dev(),
        ino: meta.ino(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        path,
    }))
}

/// `path` (links resolved) may be run as a sandbox's PID 1: a regular file of host root (or
/// of the server's own user) that no one else may change, in a directory no one else may
/// change, and that the sandbox's root (no owner of it) may execute.
fn check(path: &Path) -> Result<std::fs::Metadata, String> {
    let euid = rustix::process::geteuid().as_raw();
    let trusted = |p: &Path| -> Result<std::fs::Metadata, String> {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.uid() != 0 && meta.uid() != euid {
            return Err(format!("{} belongs to uid {}", p.display(), meta.uid()));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(format!("{} is writable by others", p.display()));
        }
        Ok(meta)
    };
    let meta = trusted(path)?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.permissions().mode() & 0o001 == 0 {
        return Err(format!(
            "{} is not executable by others (a sandbox's root is no owner of it)",
            path.display()
        ));
    }
    trusted(path.parent().unwrap_or(Path::new("/")))?;
    Ok(meta)
}

/// `binary`, open for an exec by a process that could not reach it by path: a close-on-exec
/// descriptor numbered from `lowest` on (clear of the numbers descriptors are handed to PID 1
/// at). None when another file is there now.
pub fn open(binary: &InitBinary, lowest: i32) -> io::Result<Option<OwnedFd>> {
    use rustix::fs::{Mode, OFlags};
    let file = match rustix::fs::open(
        &binary.path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(file) => file,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    if !binary.is(&rustix::fs::fstat(&file)?) {
        return Ok(None);
    }
    Ok(Some(rustix::io::fcntl_dupfd_cloexec(&file, lowest)?))
}

/// The path an exec reaches `fd` through in this process.
pub fn exec_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(dir: &Path, mode: u32) -> PathBuf {
        let exe = dir.join("cove");
        std::fs::write(&exe, "").unwrap();
        let init = dir.join(NAME);
        std::fs::write(&init, "").unwrap();
        std::fs::set_permissions(&init, std::fs::Permissions::from_mode(mode)).unwrap();
        exe
    }

    #[test]
    fn found_beside_cove_when_safe() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = install(dir.path(), 0o755);
        assert_eq!(
            beside(&exe).unwrap().unwrap().path,
            dir.path().canonicalize().unwrap().join(NAME)
        );
    }

    #[test]
    fn absent_is_no_fault() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(beside(&dir.path().join("cove")).unwrap(), None);
    }

    #[test]
    fn refused_when_others_could_change_or_not_run_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = install(dir.path(), 0o757);
        assert!(beside(&exe).unwrap_err().contains("writable by others"));
        let exe = install(dir.path(), 0o750);
        assert!(
            beside(&exe)
                .unwrap_err()
                .contains("not executable by others")
        );
        // A directory others may write: the file could be swapped.
        let exe = install(dir.path(), 0o755);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(beside(&exe).unwrap_err().contains("writable by others"));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(beside(&exe).unwrap_err().contains("writable by others"));
    }

    #[test]
    fn opened_above_the_passed_numbers_while_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = install(dir.path(), 0o755);
        let binary = beside(&exe).unwrap().unwrap();
        let fd = open(&binary, 16).unwrap().unwrap();
        assert!(fd.as_raw_fd() >= 16);
        assert!(std::fs::metadata(exec_path(&fd)).unwrap().is_file());
        // Installed anew (an upgrade): not the file the server checked.
        let new = dir.path().join("new");
        std::fs::write(&new, "").unwrap();
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&new, &binary.path).unwrap();
        assert!(open(&binary, 16).unwrap().is_none());
        // Gone, or a link in its place.
        std::fs::remove_file(&binary.path).unwrap();
        assert!(open(&binary, 16).unwrap().is_none());
        std::os::unix::fs::symlink(&exe, &binary.path).unwrap();
        assert!(open(&binary, 16).unwrap().is_none());
    }
}
