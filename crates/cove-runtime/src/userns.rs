//! User namespaces: root inside a sandbox is an unprivileged uid range on the host.

use std::{fs, io, os::fd::BorrowedFd, path::PathBuf};

use rustix::thread::LinkNameSpaceType;

/// Ids each sandbox gets: uid/gid 0..SIZE inside map to base..base+SIZE outside.
pub const RANGE_SIZE: u32 = 65536;

/// First host id handed to sandboxes (above the ids Debian gives to accounts and subuids).
pub const FIRST_BASE: u32 = 1 << 24;

/// How many sandboxes can have disjoint ranges (keeping clear of the top id, 2^32 - 1).
pub const MAX_SLOTS: u32 = (u32::MAX - FIRST_BASE) / RANGE_SIZE - 1;

/// The host uid/gid that is root in the sandbox using `slot`.
pub fn base_for_slot(slot: u32) -> u32 {
    FIRST_BASE + slot * RANGE_SIZE
}

/// Maps root..65535 of the user namespace of `pid` to `base..` on the host, for both uids
/// and gids. `setgroups` stays allowed so tools like `sudo` work inside.
pub fn write_id_maps(pid: u32, base: u32) -> io::Result<()> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let map = format!("0 {base} {RANGE_SIZE}\n");
    fs::write(proc.join("uid_map"), &map)?;
    fs::write(proc.join("gid_map"), &map)?;
    Ok(())
}

/// Joins the user namespace `userns` and becomes its root (all ids 0, no supplementary
/// groups). Only a single-threaded process can do this.
pub fn enter_as_root(userns: BorrowedFd<'_>) -> io::Result<()> {
    rustix::thread::move_into_link_name_space(userns, Some(LinkNameSpaceType::User))?;
    let root_gid = rustix::process::Gid::ROOT;
    let root_uid = rustix::process::Uid::ROOT;
    rustix::thread::set_thread_groups(&[])?;
    rustix::thread::set_thread_res_gid(root_gid, root_gid, root_gid)?;
    rustix::thread::set_thread_res_uid(root_uid, root_uid, root_uid)?;
    Ok(())
}

/// While alive, this (single-threaded) process acts on files as the sandbox's root — host
/// uid and gid `base` — with host root's capabilities kept. Mounting the overlays so makes
/// their creator the sandbox's root: overlayfs creates its work directories, copies files
/// up and writes whiteouts with its creator's ids, and through the sandbox's idmapped
/// writable layer only ids of the sandbox's range can be stored (host root cannot).
#[derive(Debug)]
pub struct ActingAsSandboxRoot(());

impl ActingAsSandboxRoot {
    pub fn begin(base: u32) -> io::Result<Self> {
        set_fs_ids(base)?;
        // A file-system uid other than 0 drops the file capabilities from the effective set
        // (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_MKNOD…); overlayfs needs them to copy
        // up files of every owner and to make whiteouts. They are still permitted.
        let caps = rustix::thread::capabilities(None)?;
        rustix::thread::set_capabilities(
            None,
            rustix::thread::CapabilitySets {
                effective: caps.permitted,
                permitted: caps.permitted,
                inheritable: caps.inheritable,
            },
        )?;
        Ok(Self(()))
    }
}

impl Drop for ActingAsSandboxRoot {
    fn drop(&mut self) {
        // Back to 0, the kernel raises the file capabilities again by itself.
        let _ = set_fs_ids(0);
    }
}

/// Sets this thread's file-system uid and gid to `id`.
fn set_fs_ids(id: u32) -> io::Result<()> {
    // SAFETY: setfsuid and setfsgid take plain integers and only change this thread's
    // credentials; they cannot fail in a way that leaves memory unsound.
    let (uid_ok, gid_ok) = unsafe {
        libc::setfsgid(id);
        libc::setfsuid(id);
        // They report the previous id, not errors: asking again with an invalid id
        // (which changes nothing) tells what is in effect now.
        (
            libc::setfsuid(u32::MAX) as u32 == id,
            libc::setfsgid(u32::MAX) as u32 == id,
        )
    };
    if uid_ok && gid_ok {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cannot act on files as host uid {id}"
        )))
    }
}
