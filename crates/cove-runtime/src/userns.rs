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
