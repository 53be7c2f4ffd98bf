//! The mounts that make a sandbox's filesystem: overlays over template layers, a minimal
//! `/dev`, fresh `/proc` and `/sys`, and the switch of root.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

/// Device nodes bound from the host into the sandbox's `/dev`: harmless character devices
/// every program expects.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// `mount(2)` of a filesystem with string options.
fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> io::Result<()> {
    let data =
        std::ffi::CString::new(data).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    rustix::mount::mount(source, target, fstype, flags, Some(data.as_c_str()))?;
    Ok(())
}

/// A tmpfs at `target` with `options`.
pub fn mount_tmpfs(target: &Path, options: &str) -> io::Result<()> {
    mount_fs(
        "tmpfs",
        target,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        options,
    )
}

/// A small tmpfs at `target` for mount points only (directories; no device files, nothing
/// to run), readable by host root alone but searchable, like a sandbox's directory.
pub fn mount_scratch(target: &Path) -> io::Result<()> {
    mount_fs(
        "tmpfs",
        target,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "mode=0711,size=64k,nr_inodes=1024",
    )
}

/// An empty, read-only tmpfs at `target`: hides what is below.
pub fn mount_tmpfs_read_only(target: &Path) -> io::Result<()> {
    mount_fs(
        "tmpfs",
        target,
        "tmpfs",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "size=0",
    )
}

/// Makes every mount below `/` private, so nothing we mount leaks back to the host and
/// nothing the host mounts later shows up in the sandbox.
pub fn make_private() -> io::Result<()> {
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )?;
    Ok(())
}

/// An overlay at `target`: `lowers` (top first, read-only) under the writable `upper`.
pub fn mount_overlay(target: &Path, lowers: &[&Path], upper: &Path, work: &Path) -> io::Result<()> {
    let lowerdir = lowers
        .iter()
        .map(|p| escape_overlay_path(p))
        .collect::<Vec<_>>()
        .join(":");
    let options = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        escape_overlay_path(upper),
        escape_overlay_path(work)
    );
    mount_fs("overlay", target, "overlay", MountFlags::empty(), &options)
}

/// Overlay options separate paths with `:` and options with `,`; both must be escaped.
fn escape_overlay_path(path: &Path) -> String {
    path.to_string_lossy()
        .replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}

/// A tmpfs `/dev` with the usual character devices (bound from the host), the standard
/// symlinks, and mount points for `pts` and `shm`.
pub fn populate_dev(dev: &Path) -> io::Result<()> {
    mount_fs(
        "tmpfs",
        dev,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "mode=755,size=65536k",
    )?;
    for name in DEVICES {
        let node = dev.join(name);
        fs::File::create(&node)?;
        rustix::mount::mount_bind(Path::new("/dev").join(name), &node)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))?;
    }
    fs::DirBuilder::new().mode(0o755).create(dev.join("pts"))?;
    fs::DirBuilder::new().mode(0o1777).create(dev.join("shm"))?;
    fs::set_permissions(dev.join("shm"), fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

/// Binds `source` onto `target` (both must exist).
pub fn bind(source: &Path, target: &Path) -> io::Result<()> {
    rustix::mount::mount_bind(source, target)?;
    Ok(())
}

/// The pseudo filesystems a sandbox's PID 1 mounts once it is inside its namespaces.
pub fn mount_kernel_filesystems(root: &Path) -> io::Result<()> {
    let hardened = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount_fs("proc", &root.join("proc"), "proc", hardened, "")?;
    mount_fs(
        "sysfs",
        &root.join("sys"),
        "sysfs",
        hardened | MountFlags::RDONLY,
        "",
    )?;
    mount_fs(
        "devpts",
        &root.join("dev/pts"),
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )?;
    mount_fs(
        "shm",
        &root.join("dev/shm"),
        "tmpfs",
        hardened,
        "mode=1777,size=65536k",
    )?;
    Ok(())
}

/// Binds `root` onto itself. Mounts copied into a user namespace's mount namespace are
/// locked, and pivot_root refuses a locked new root; the bind made here is not locked.
pub fn rebind_root(root: &Path) -> io::Result<()> {
    rustix::mount::mount_bind_recursive(root, root)?;
    Ok(())
}

/// Makes `root` the root of this mount namespace and detaches the old root entirely.
pub fn pivot_into(root: &Path) -> io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let old_root = rustix::fs::open(
        "/",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let new_root = rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::process::fchdir(&new_root)?;
    // With new_root == put_old the old root ends up stacked on top of the new one, where
    // it can be detached without needing a directory for it inside the sandbox.
    rustix::process::pivot_root(".", ".")?;
    rustix::process::fchdir(&old_root)?;
    // Unmount events must not travel back to the host's mounts.
    rustix::mount::mount_change(
        ".",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)?;
    rustix::process::chdir("/")?;
    Ok(())
}
