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

fn clone_idmapped(
    source: &Path,
    target: &Path,
    userns: BorrowedFd<'_>,
    extra: u64,
) -> io::Result<()> {
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )?;
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
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}
