//! Egress for sandboxes that may reach the internet: `slirp4netns` (Debian package of the
//! same name), a user-mode network stack that runs as the sandbox's own unprivileged host
//! uid and inside its cgroups. It gives the sandbox's network namespace a `tap0` interface
//! (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3) and relays its connections through
//! ordinary host sockets, which the egress filter ([`crate::egress`]) watches. It ends
//! with the sandbox's cgroup.
//!
//! slirp4netns rather than pasta: it needs about 3 MiB per sandbox, pasta about 30.

use std::{
    ffi::OsStr,
    fs, io,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// How long the helper gets to configure the sandbox's interface.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a sandbox cannot have internet access on a host without the helper.
pub const NO_HELPER: &str = "internet access needs slirp4netns (Debian package slirp4netns); install it or create the sandbox without internet access";

/// Why a sandbox cannot have internet access on a host whose egress filter could not start
/// (`reason`).
pub fn unfiltered(reason: &str) -> String {
    format!(
        "internet access is unavailable on this host, because sandboxes would reach the host's network unfiltered ({reason}); create the sandbox without internet access"
    )
}

/// Finds `slirp4netns` on `PATH`.
pub fn find_helper() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("slirp4netns"))
        .find(|candidate| candidate.is_file())
}

/// What the network stage needs to know.
#[derive(Debug)]
pub struct Connection<'a> {
    pub helper: &'a Path,
    /// The sandbox's PID 1 on the host (its namespaces are the target).
    pub pid: u32,
    /// The sandbox's host uid/gid, which owns its user namespace.
    pub uid_base: u32,
    /// Where the helper's own messages go.
    pub log: &'a Path,
    /// The files through which the helper joins its cgroups ([`crate::cgroup::join`]).
    pub cgroup_joins: &'a [PathBuf],
}

/// Connects the sandbox's network namespace to the outside through a stage of the `cove`
/// binary at `exe`, which runs [`run_stage`] as a process of its own (it changes its mount
/// namespace): forked by `spawner` when there is one, else exec'd. Returns once the sandbox's
/// interface is configured.
pub fn connect(
    exe: &Path,
    spawner: Option<&crate::namespace::spawner::Spawner>,
    connection: &Connection<'_>,
) -> io::Result<()> {
    let pid = connection.pid.to_string();
    let base = connection.uid_base.to_string();
    let mut args = vec![
        OsStr::new(crate::namespace::init::NETWORK_FLAG),
        connection.helper.as_os_str(),
        OsStr::new(&pid),
        OsStr::new(&base),
        connection.log.as_os_str(),
    ];
    args.extend(connection.cgroup_joins.iter().map(|p| p.as_os_str()));
    let forked = match spawner {
        Some(spawner) => spawner.output(&args)?,
        None => None,
    };
    let (status, stderr) = match forked {
        Some(output) => output,
        None => {
            let output = Command::new(exe)
                .arg(crate::namespace::init::SUBCOMMAND)
                .args(&args)
                .env_clear()
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()?;
            (output.status, output.stderr)
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cannot connect the sandbox to the network ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        )))
    }
}

/// The network stage (host root): joins the sandbox's cgroups, gives the sandbox's uid a
/// tun device node of its own in a private mount namespace (the host's may be root-only),
/// starts the helper as that uid and waits until the sandbox's interface has its default
/// route. The helper keeps running after this process exits.
pub fn run_stage(connection: &Connection<'_>) -> io::Result<()> {
    crate::cgroup::join(connection.cgroup_joins).map_err(io::Error::other)?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(connection.log)?;
    enter_own_root(connection.helper, connection.uid_base)?;
    let pid = connection.pid;
    let mut helper = Command::new(connection.helper)
        .args([
            "--configure",
            "--mtu=65520",
            // 10.0.2.2 must not lead to the host's loopback services.
            "--disable-host-loopback",
            "--enable-seccomp",
        ])
        .arg(format!("--userns-path=/proc/{pid}/ns/user"))
        .arg(pid.to_string())
        .arg("tap0")
        // Nothing of the server's environment (a forked stage has the spawner's).
        .env_clear()
        .uid(connection.uid_base)
        .gid(connection.uid_base)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if has_default_route(pid) {
            return Ok(());
        }
        if let Some(status) = helper.try_wait()? {
            return Err(io::Error::other(format!(
                "slirp4netns exited with {status} (see {})",
                connection.log.display()
            )));
        }
        if Instant::now() > deadline {
            let _ = helper.kill();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "slirp4netns did not configure the sandbox's network",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether the network namespace of `pid` has a default route yet.
fn has_default_route(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/net/route"))
        .map(|routes| {
            routes
                .lines()
                .skip(1)
                .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
        })
        .unwrap_or(false)
}

/// Directories of the host the helper sees, read-only: its program and libraries, and
/// `/etc` for the name servers it forwards the sandbox's queries to. Missing ones are left
/// out; symlinks among them (a merged `/usr`) are made again as symlinks.
const HELPER_SEES: [&str; 8] = [
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc",
];

/// Gives this stage, and so the helper it starts, a root of its own in a private mount
/// namespace: a tmpfs holding read-only binds of [`HELPER_SEES`], a fresh `/proc` (the
/// helper joins the sandbox's namespaces through it), and a `/dev` with `null`, `urandom`
/// and a tun device node owned by the sandbox's uid (the host's may be root-only).
///
/// The helper parses everything the sandbox sends, so it should see no more of the host
/// than it needs; and a copy of the host's whole mount table would keep every filesystem
/// mounted on the host at this moment (volumes, above all) busy for as long as the helper
/// lives: an unmounted volume's loop device would not detach until then.
fn enter_own_root(helper: &Path, uid_base: u32) -> io::Result<()> {
    use rustix::{
        fs::{FileType, Mode},
        mount::MountFlags,
    };
    // The directories made below must be searchable by the helper, which runs as the
    // sandbox's uid, whatever umask the server runs with (a service's `UMask=0077` made
    // `/dev/net` host root's alone, and no sandbox with internet access started).
    rustix::process::umask(Mode::from_raw_mode(0o022));
    // SAFETY: the network stage is single-threaded and does not unshare the file table.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
    crate::mounts::make_private()?;
    // Any directory serves as the mount point: this namespace is the stage's alone.
    let root = Path::new("/tmp");
    crate::mounts::mount_tmpfs(root, "mode=755,size=64k")?;
    let read_only = |target: &Path| -> io::Result<()> {
        rustix::mount::mount_remount(
            target,
            MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
            "",
        )?;
        Ok(())
    };
    for name in HELPER_SEES {
        let source = Path::new("/").join(name);
        let target = root.join(name);
        match fs::symlink_metadata(&source) {
            Ok(meta) if meta.file_type().is_symlink() => {
                std::os::unix::fs::symlink(fs::read_link(&source)?, &target)?;
            }
            Ok(meta) if meta.is_dir() => {
                fs::create_dir(&target)?;
                rustix::mount::mount_bind_recursive(&source, &target)?;
                read_only(&target)?;
            }
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    // A helper installed elsewhere (an operator's PATH) is bound in alone.
    let helper = fs::canonicalize(helper)?;
    let inside = root.join(helper.strip_prefix("/").unwrap_or(&helper));
    if !inside.exists() {
        if let Some(dir) = inside.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::File::create(&inside)?;
        rustix::mount::mount_bind(&helper, &inside)?;
        read_only(&inside)?;
    }
    fs::create_dir(root.join("proc"))?;
    rustix::mount::mount(
        "proc",
        root.join("proc"),
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )?;
    let dev = root.join("dev");
    fs::create_dir(&dev)?;
    crate::mounts::mount_tmpfs(&dev, "mode=755,size=16k")?;
    for name in ["null", "urandom"] {
        fs::File::create(dev.join(name))?;
        rustix::mount::mount_bind(Path::new("/dev").join(name), dev.join(name))?;
    }
    fs::create_dir(dev.join("net"))?;
    let tun = dev.join("net/tun");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &tun,
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(10, 200),
    )?;
    std::os::unix::fs::chown(&tun, Some(uid_base), Some(uid_base))?;
    crate::mounts::pivot_into(root)
}
