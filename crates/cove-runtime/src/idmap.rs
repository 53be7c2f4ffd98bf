//! Idmapped mounts: a view of a host directory whose file owners are shifted into a
//! sandbox's uid range, so host-root-owned template files look root-owned inside the
//! sandbox without mapping host uid 0 into it. The sandbox's writable layer is seen through
//! one too (a writable one): what the sandbox writes as its uid N is stored as N, whatever
//! range it runs in, so the layer can be started again in another range or become a
//! template layer itself.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::Path,
};

use rustix::mount::{MoveMountFlags, OpenTreeFlags};

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;

/// Mounts a recursive, read-only clone of `source` at `target`, with owners mapped through
/// the user namespace `userns` (on-disk uid N appears as what N maps to in `userns`).
pub fn mount_idmapped(source: &Path, target: &Path, userns: BorrowedFd<'_>) -> io::Result<()> {
    clone_idmapped(source, target, userns, MOUNT_ATTR_RDONLY)
}

/// Like [`mount_idmapped`], but writable: files created through it by host uid M are stored
/// as the uid that maps to M in `userns`.
pub fn mount_idmapped_writable(
    source: &Path,
    target: &Path,
    userns: BorrowedFd<'_>,
) -> io::Result<()> {
    clone_idmapped(source, target, userns, 0)
}

const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;

/// Mounts a writable, idmapped clone of `source` (not of what is mounted below it) on the
/// directory `target` is an open descriptor of, without setuid programs or device files:
/// a volume seen by a sandbox. Owners are stored as the sandbox sees them (its root as 0,
/// its user as 1000), so every sandbox that mounts it sees the same owners.
pub fn mount_volume(
    source: &Path,
    target: BorrowedFd<'_>,
    userns: BorrowedFd<'_>,
) -> io::Result<()> {
    let tree = idmapped_tree(source, userns, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, false)?;
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    Ok(())
}

fn clone_idmapped(
    source: &Path,
    target: &Path,
    userns: BorrowedFd<'_>,
    extra: u64,
) -> io::Result<()> {
    let tree = idmapped_tree(source, userns, extra, true)?;
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

/// A detached clone of `source` with owners mapped through `userns` and `extra` attributes.
fn idmapped_tree(
    source: &Path,
    userns: BorrowedFd<'_>,
    extra: u64,
    recursive: bool,
) -> io::Result<std::os::fd::OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    let mut setattr_flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
        setattr_flags |= libc::AT_RECURSIVE;
    }
    let tree = rustix::mount::open_tree(rustix::fs::CWD, source, flags)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | extra,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `tree` is an open mount fd we own, the empty path is a valid C string, and
    // `attr` is a properly laid out `struct mount_attr` that outlives the call; the kernel
    // only reads `size_of::<MountAttr>()` bytes from it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_fd().as_raw_fd(),
            c"".as_ptr(),
            setattr_flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}
