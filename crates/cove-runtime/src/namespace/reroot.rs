//! Rerooting: a sandbox that runs takes a new root filesystem — other layers (a snapshot's,
//! on top of the same template's) on a fresh writable layer — while its namespaces, cgroup,
//! network and agent stay as they are. A fork starts so from a warm sandbox of its source's
//! template: what a fork waits for is the copy of the source's files, not a sandbox's start.
//!
//! Only a sandbox in which nothing but its agent ran is rerooted (a warm one, before anybody
//! has it): a process of anyone's with a working directory or an open file in the old root
//! would keep writing there.
//!
//! The stage (`cove __sandbox-init --reroot`, host root, single-threaded):
//! 1. in a private mount namespace, mounts the sandbox's disk from its loop device, moves
//!    its writable layers aside and assembles the new root as setup does
//!    ([`super::init::build_rootfs`]), then takes it as a detached copy;
//! 2. joins the sandbox's mount namespace, attaches the copy over the old root, moves the
//!    kernel filesystems PID 1 mounted (`/proc` with its masks, `/sys`, `/dev/pts`,
//!    `/dev/shm`) onto it and pivots: every process whose root was the old one (the agent)
//!    has the new one, and the old root is detached;
//! 3. answers, then removes the writable layers it moved aside (nothing of anyone's: only
//!    the agent ran there).

use std::{
    fs,
    io::{self, Read},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use rustix::{
    fs::{AtFlags, FileType, Mode, OFlags},
    mount::{MountPropagationFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags},
    thread::LinkNameSpaceType,
};
use serde::{Deserialize, Serialize};

use super::init::{self, RootSpec, SandboxDirs};
use crate::{
    Template,
    egress::error_chain,
    mounts, process,
    stage::{self, context},
};

/// The stage's flag.
pub const REROOT_FLAG: &str = "--reroot";

/// Where the old writable layers go on the disk until they are removed.
const RETIRED: &str = "retired";

/// The kernel filesystems PID 1 mounted in its root, moved onto the new one.
const KERNEL_MOUNTS: [&str; 4] = ["proc", "sys", "dev/pts", "dev/shm"];

/// What the stage is asked to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RerootSpec {
    /// The sandbox's directory.
    pub dir: PathBuf,
    /// The layers of its new root.
    pub template: Template,
    /// Its uid range.
    pub slot: u32,
    /// Its PID 1 and when that started (against pid reuse).
    pub pid: u32,
    pub start_time: u64,
}

/// What the stage reports on stdout.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RerootReport {
    Done,
    Failed(String),
}

/// Reroots the sandbox `spec` names, through the `cove` binary at `exe`.
pub fn reroot(exe: &Path, spec: &RerootSpec) -> io::Result<()> {
    match stage::run(exe, REROOT_FLAG, spec)? {
        RerootReport::Done => Ok(()),
        RerootReport::Failed(error) => Err(io::Error::other(error)),
    }
}

/// The stage (host root, its own process): reads a [`RerootSpec`] on stdin, answers with a
/// [`RerootReport`] once the sandbox has its new root, then removes the old writable
/// layers (what goes wrong there is only logged: the sandbox runs on either way).
pub fn run_stage() -> io::Result<()> {
    match stage() {
        Ok(disk_dir) => {
            stage::answer(&RerootReport::Done)?;
            remove_tree(disk_dir.as_fd(), RETIRED)
                .map_err(context("cannot remove the old writable layers"))
        }
        Err(err) => stage::answer(&RerootReport::Failed(err.to_string())),
    }
}

/// Everything up to the new root; returns the disk, where the old writable layers wait to
/// be removed.
fn stage() -> io::Result<OwnedFd> {
    let mut raw = Vec::new();
    io::stdin().read_to_end(&mut raw)?;
    let spec: RerootSpec = serde_json::from_slice(&raw).map_err(io::Error::other)?;
    let (userns, mntns) = namespaces_of(spec.pid, spec.start_time)?;
    let dirs = SandboxDirs::new(&spec.dir);

    // What is made below gets the usual modes whatever the server's umask: the overlays are
    // mounted acting as the sandbox's root, who must be able to search their directories.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    // 1. The new root, in a mount namespace of this stage's own.
    init::unshare(rustix::thread::UnshareFlags::NEWNS)?;
    mounts::make_private()?;
    init::enter_dir(&dirs, init::DiskFrom::Running)
        .map_err(|e| io::Error::other(error_chain(&e)))?;
    let disk_dir = retire_writable_layers(&dirs.disk())?;
    let root = RootSpec {
        template: &spec.template,
        slot: spec.slot,
        volumes: &[],
    };
    init::build_rootfs(&root, &dirs, userns.as_fd())
        .map_err(|e| io::Error::other(error_chain(&e)))?;
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        dirs.rootfs(),
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::AT_RECURSIVE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| context("cannot copy the new root")(e.into()))?;

    // 2. Into the sandbox's mount namespace: the new root on top of the old one.
    rustix::thread::move_into_link_name_space(mntns.as_fd(), Some(LinkNameSpaceType::Mount))
        .map_err(|e| context("cannot join the sandbox's mount namespace")(e.into()))?;
    let kernel: Vec<OwnedFd> = KERNEL_MOUNTS
        .iter()
        .map(|path| {
            rustix::fs::open(
                Path::new("/").join(path),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
            )
        })
        .collect::<Result<_, _>>()
        .map_err(|e| context("cannot find the sandbox's kernel filesystems")(e.into()))?;
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        "/",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| context("cannot attach the new root")(e.into()))?;
    for (fd, path) in kernel.iter().zip(KERNEL_MOUNTS) {
        rustix::mount::move_mount(
            fd.as_fd(),
            "",
            tree.as_fd(),
            path,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| io::Error::other(format!("cannot move /{path} to the new root: {e}")))?;
    }
    rustix::process::fchdir(&tree).map_err(|e| context("cannot enter the new root")(e.into()))?;
    // With new_root == put_old the old root ends up on top of the new one, and every
    // process whose root or working directory was the old root now has the new one.
    rustix::process::pivot_root(".", ".")
        .map_err(|e| context("cannot switch to the new root")(e.into()))?;
    rustix::mount::mount_change(
        ".",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .map_err(|e| context("cannot detach the old root")(e.into()))?;

    Ok(disk_dir)
}

/// The user and mount namespaces of PID 1 `pid`, if it is still the one that started at
/// `start_time`.
fn namespaces_of(pid: u32, start_time: u64) -> io::Result<(OwnedFd, OwnedFd)> {
    let open = |name: &str| -> io::Result<OwnedFd> {
        Ok(fs::File::open(format!("/proc/{pid}/ns/{name}"))?.into())
    };
    let namespaces = (open("user")?, open("mnt")?);
    // Checked after opening: the descriptors are the sandbox's, not a later process's.
    if !process::is_alive(pid, start_time)? {
        return Err(io::Error::other("the sandbox's PID 1 is gone"));
    }
    // Its agent alone: a process of anyone's would go on in the old root (and is no
    // process a warm sandbox has).
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let children = fs::read_to_string(task?.path().join("children"))?;
        if !children.trim().is_empty() {
            return Err(io::Error::other(
                "processes other than its agent run in it: only a sandbox nobody used yet takes a new root",
            ));
        }
    }
    Ok(namespaces)
}

/// Moves the writable layers (`upper`, `work`) on the disk mounted at `disk` into a
/// directory of their own, [`RETIRED`], and returns the disk opened (the stage removes them
/// through it once it has left this mount namespace). The old root's overlay keeps using
/// them (it holds them, not their names) until it is detached; the new one gets fresh ones.
fn retire_writable_layers(disk: &Path) -> io::Result<OwnedFd> {
    let retired = disk.join(RETIRED);
    match fs::remove_dir_all(&retired) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    fs::create_dir(&retired)?;
    for name in ["upper", "work"] {
        match fs::rename(disk.join(name), retired.join(name)) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(rustix::fs::open(
        disk,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?)
}

/// Removes the directory `name` below `parent` and all it holds, never following a link
/// (the same walk as the layer store's `remove_tree` in `cove-image`).
fn remove_tree(parent: BorrowedFd<'_>, name: impl rustix::path::Arg + Copy) -> io::Result<()> {
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let child = entry.file_name();
        if child.to_bytes() != b"." && child.to_bytes() != b".." {
            children.push((child.to_owned(), entry.file_type() == FileType::Directory));
        }
    }
    for (child, is_dir) in children {
        if is_dir {
            remove_tree(dir.as_fd(), child.as_c_str())?;
        } else {
            rustix::fs::unlinkat(&dir, child.as_c_str(), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    Ok(())
}
