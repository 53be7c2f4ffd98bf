//! A gVisor sandbox's root on the host: the template's layers under writable layers on the
//! sandbox's disk (the disk quota's ext4 image through a loop device, [`crate::disk`], or a
//! plain directory), one overlay per mount point, mounted in a mount namespace of the
//! container's own (see [`run_launch_stage`]) where runsc's gofer serves it to the sandbox. No idmapping: the gofer, host root, makes
//! files with the owners the sandbox asks for, so the writable layers keep the sandbox's own
//! uids, as the namespace backend stores them.
//!
//! The overlays are mounted under the sandbox's directory (host root's alone, `nosuid` and
//! `nodev` besides) and taken down by [`unmount`], innermost first, with the disk after them.

use std::{
    fs, io,
    os::{fd::AsRawFd, unix::fs::DirBuilderExt},
    path::{Component, Path, PathBuf},
    time::Duration,
};

use rustix::{
    fs::{Mode, OFlags, ResolveFlags},
    mount::{MountFlags, UnmountFlags},
};

use crate::{
    disk, mounts,
    namespace::init::{upper_in, work_in},
    template::Template,
    volume,
};

/// How long a disk's loop device may take to detach after its last unmount.
const DETACH_PATIENCE: Duration = Duration::from_secs(30);

/// What the launch stage ([`run_launch_stage`]) mounts before it becomes runsc.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct RootSpec {
    pub rootfs: PathBuf,
    pub disk: PathBuf,
    pub image: Option<PathBuf>,
    pub template: Template,
    /// The sandbox has a link to the internet ([`super::link`]): runsc runs its netstack on
    /// the link's interface, with `/proc/sys/net` hidden from it.
    #[serde(default)]
    pub network: bool,
}

/// The launch stage (host root, a process of its own): in a mount namespace of its own,
/// mounts the sandbox's root as `spec` says, then becomes runsc (`argv`), whose sandbox and
/// gofer processes keep that namespace. So the sandbox's mounts never are in the host's
/// mount namespace: no other process's copy of it (a namespace sandbox set up meanwhile)
/// can hold the sandbox's disk, and they go with the container's last process, its loop
/// device with them.
/// Returns only when it failed.
pub fn run_launch_stage(spec: &RootSpec, argv: &[std::ffi::OsString]) -> io::Error {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = argv.split_first() else {
        return io::Error::other("no runsc command to run");
    };
    let mounted = (|| -> io::Result<()> {
        // SAFETY: the launch stage is single-threaded and does not unshare the file table.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
        mounts::make_private()?;
        if spec.network {
            // This runsc takes any network namespace that has this directory's
            // `core/rmem_default` for the host's, and refuses it (see `super::link`).
            mounts::mount_tmpfs(Path::new("/proc/sys/net"), "mode=555,size=4k")?;
        }
        mount(
            &RootPaths {
                rootfs: &spec.rootfs,
                disk: &spec.disk,
                image: spec.image.as_deref(),
            },
            &spec.template,
        )
    })();
    match mounted {
        Err(err) => err,
        Ok(()) => std::process::Command::new(program).args(args).exec(),
    }
}

/// Where a sandbox's root is assembled.
pub struct RootPaths<'a> {
    /// The mount point of the root overlay.
    pub rootfs: &'a Path,
    /// The writable layers' home: the disk image's mount point, or a plain directory.
    pub disk: &'a Path,
    /// The disk image, when the sandbox has a quota.
    pub image: Option<&'a Path>,
}

/// Mounts the sandbox's disk (when it has an image) and its overlays.
pub fn mount(paths: &RootPaths<'_>, template: &Template) -> io::Result<()> {
    mkdir(paths.disk)?;
    mkdir(paths.rootfs)?;
    if let Some(image) = paths.image
        && !volume::is_mount_point(paths.disk)?
    {
        disk::mount_image(image, paths.disk).map_err(context("mount the sandbox's disk"))?;
    }
    for (i, at) in template.mount_points().iter().enumerate() {
        let lowers: Vec<&Path> = template.layers_at(at).map(|l| l.path.as_path()).collect();
        let (upper, work) = (upper_in(paths.disk, i), work_in(paths.disk, i));
        mkdir(&upper)?;
        mkdir(&work)?;
        // Below the root, the mount point is looked up inside the sandbox's files without
        // following links: a writable layer kept from before must not point us elsewhere.
        let target = open_beneath(paths.rootfs, at)?;
        let target_path = PathBuf::from(format!("/proc/self/fd/{}", target.as_raw_fd()));
        mounts::mount_overlay(&target_path, &lowers, &upper, &work)
            .map_err(context("mount an overlay of the sandbox's root"))?;
        drop(target);
        // No setuid programs or device files of the sandbox's mean anything on the host.
        let mounted = rustix::fs::open(
            paths.rootfs.join(relative(at)),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::mount::mount_remount(
            format!("/proc/self/fd/{}", mounted.as_raw_fd()).as_str(),
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::BIND,
            "",
        )?;
    }
    Ok(())
}

/// Unmounts every overlay under `rootfs` and the disk at `disk`, then waits for the disk's
/// loop device to detach. Nothing mounted is fine.
pub fn unmount(rootfs: &Path, disk: &Path, image: Option<&Path>) -> io::Result<()> {
    let mut points = mounts_under(rootfs)?;
    // Innermost first.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    if volume::is_mount_point(disk)? {
        points.push(disk.to_owned());
    }
    for point in points {
        match rustix::mount::unmount(&point, UnmountFlags::NOFOLLOW) {
            Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
            // Still held (a gofer on its way out): detach now, gone when let go.
            Err(rustix::io::Errno::BUSY) => {
                rustix::mount::unmount(&point, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)?;
            }
            Err(err) => {
                return Err(io::Error::new(
                    io::Error::from(err).kind(),
                    format!("cannot unmount {}: {err}", point.display()),
                ));
            }
        }
    }
    if let Some(image) = image
        && !volume::wait_detached(image, DETACH_PATIENCE)?
    {
        let holders = disk::attached_device(image)
            .ok()
            .flatten()
            .map(|device| holders_of(&device))
            .unwrap_or_default();
        return Err(io::Error::other(format!(
            "the loop device of {} did not detach within {DETACH_PATIENCE:?}; processes whose \
             mount namespace still has its filesystem: {holders:?}",
            image.display()
        )));
    }
    Ok(())
}

/// Processes (pid and name) whose mount namespace has a filesystem of block device
/// `device` mounted: a namespace copied from the host's while the disk was mounted keeps
/// the filesystem, and so the loop device, until it ends.
fn holders_of(device: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(device) else {
        return Vec::new();
    };
    let rdev = meta.rdev();
    let id = format!(" {}:{} ", rustix::fs::major(rdev), rustix::fs::minor(rdev));
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            fs::read_to_string(e.path().join("mountinfo")).is_ok_and(|table| table.contains(&id))
        })
        .map(|e| {
            let name = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            format!("{} {}", e.file_name().to_string_lossy(), name.trim())
        })
        .collect()
}

/// Mount points at or below `dir`, from the host's mount table.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let table = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect())
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if digits.len() == 3
                && let Ok(code) = u8::from_str_radix(&digits, 8)
            {
                out.push(char::from(code));
                for _ in 0..3 {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn relative(at: &Path) -> &Path {
    at.strip_prefix("/").unwrap_or(at)
}

/// An `O_PATH` descriptor of the directory `at` inside `root`, reached without following
/// any link and without leaving `root`; missing directories on the way are made.
fn open_beneath(root: &Path, at: &Path) -> io::Result<std::os::fd::OwnedFd> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir = rustix::fs::openat2(&root_fd, ".", flags, Mode::empty(), resolve)?;
    for component in relative(at).components() {
        let Component::Normal(name) = component else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("mount point {} is not plain", at.display()),
            ));
        };
        dir = match rustix::fs::openat2(&dir, name, flags, Mode::empty(), resolve) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(err) => return Err(err.into()),
                }
                rustix::fs::openat2(&dir, name, flags, Mode::empty(), resolve)?
            }
            Err(err) => {
                return Err(io::Error::new(
                    io::Error::from(err).kind(),
                    format!("cannot reach mount point {}: {err}", at.display()),
                ));
            }
        };
    }
    Ok(dir)
}

fn mkdir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
}

fn context(what: &'static str) -> impl FnOnce(io::Error) -> io::Error {
    move |err| io::Error::new(err.kind(), format!("cannot {what}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b/c\134d"), r"/a b/c\d");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
