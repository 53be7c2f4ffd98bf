//! Volumes: named filesystems that outlive sandboxes. Each is an ext4 filesystem of its own
//! in a sparse image file of the quota's size (as a sandbox's disk is, see [`crate::disk`]),
//! mounted once on the host where only host root can reach it, and shown in each sandbox
//! that mounts it through an idmapped mount (see [`crate::idmap::mount_volume`]): owners are
//! stored as sandboxes see them, whatever uid range each runs in.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Component, Path, PathBuf},
};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};

use crate::{disk, idmap, userns};

/// A volume mounted into a sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// Where the volume is mounted on the host (a directory only host root can reach).
    pub source: PathBuf,
    /// Where the sandbox sees it: an absolute path without `..`.
    pub target: PathBuf,
}

/// The owner of a new volume's root directory: the sandbox's `user`, so that the default
/// user of every sandbox can write it.
pub const ROOT_OWNER: u32 = 1000;

/// Formats a new volume of `size` bytes in `image` and mounts it at `mountpoint`, its root
/// owned by [`ROOT_OWNER`] and empty (no `lost+found`).
pub fn create(image: &Path, mountpoint: &Path, size: u64) -> io::Result<()> {
    disk::format_image(image, size)?;
    mount(image, mountpoint)?;
    let prepared = (|| -> io::Result<()> {
        let root = rustix::fs::open(
            mountpoint,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        match rustix::fs::unlinkat(&root, "lost+found", rustix::fs::AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(err) => return Err(err.into()),
        }
        rustix::fs::fchown(
            &root,
            Some(rustix::fs::Uid::from_raw(ROOT_OWNER)),
            Some(rustix::fs::Gid::from_raw(ROOT_OWNER)),
        )?;
        rustix::fs::fchmod(&root, Mode::from_raw_mode(0o755))?;
        Ok(())
    })();
    if let Err(err) = prepared {
        let _ = unmount(mountpoint);
        return Err(err);
    }
    Ok(())
}

/// Mounts the volume in `image` at `mountpoint` unless it is mounted there already. A volume
/// still mounted in sandboxes a previous server left running is mounted from the device they
/// use: a second device over the same image would corrupt it.
pub fn mount(image: &Path, mountpoint: &Path) -> io::Result<()> {
    if is_mount_point(mountpoint)? {
        return Ok(());
    }
    match disk::attached_device(image)? {
        Some(device) => disk::mount_device(&device, mountpoint),
        None => disk::mount_image(image, mountpoint),
    }
}

/// Unmounts the host's mount of a volume (sandboxes keep theirs; the loop device detaches
/// by itself once the last one goes). Not mounted is not an error.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    if !is_mount_point(mountpoint)? {
        return Ok(());
    }
    rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH)?;
    Ok(())
}

/// Waits up to `patience` until no loop device is attached to `image` any more, polling;
/// whether it got there. Once a volume is unmounted everywhere, its device detaches when the
/// last user of the filesystem lets go, which can be a moment after the unmount returns: a
/// sandbox's mount namespace still being torn down by the kernel, a network helper still
/// exiting. A missing image has nothing attached.
pub fn wait_detached(image: &Path, patience: std::time::Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match disk::attached_device(image) {
            Ok(None) => return Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(err) => return Err(err),
            Ok(Some(_)) if std::time::Instant::now() >= deadline => return Ok(false),
            Ok(Some(_)) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

/// Whether something is mounted on the directory `path` (it sits on another device than
/// its parent). A missing directory is not a mount point.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let own = match rustix::fs::lstat(path) {
        Ok(stat) => stat,
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(err) => return Err(err.into()),
    };
    let parent = rustix::fs::stat(path.join(".."))?;
    Ok(own.st_dev != parent.st_dev)
}

/// Mounts `volume` into the sandbox root `rootfs` (setup stage, before `pivot_root`). The
/// target is resolved inside `rootfs` (symlinks in the sandbox's files stay inside it), and
/// missing directories on the way are made as the sandbox's root (uid range `base`).
pub fn attach(
    rootfs: &Path,
    volume: &VolumeMount,
    userns: BorrowedFd<'_>,
    base: u32,
) -> io::Result<()> {
    let target = directory_in_root(rootfs, &volume.target, base)?;
    idmap::mount_volume(&volume.source, target.as_fd(), userns)
}

/// An `O_PATH` descriptor of the directory `path` inside `rootfs`, made where missing.
fn directory_in_root(rootfs: &Path, path: &Path, base: u32) -> io::Result<OwnedFd> {
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let open = |at: &Path| {
        crate::confined_open::openat2(
            &root,
            if at.as_os_str().is_empty() {
                Path::new(".")
            } else {
                at
            },
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        )
    };
    let mut so_far = PathBuf::new();
    let mut dir = open(&so_far)?;
    for component in path.components() {
        let name = match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(name) => name,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("mount path {} is not plain", path.display()),
                ));
            }
        };
        let next = so_far.join(name);
        dir = match open(&next) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                {
                    let _as_root = userns::ActingAsSandboxRoot::begin(base)?;
                    match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
                open(&next)?
            }
            Err(err) => return Err(err.into()),
        };
        so_far = next;
    }
    Ok(dir)
}
