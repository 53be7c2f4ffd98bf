//! Egress for sandboxes that may reach the internet: `slirp4netns` (Debian package of the
//! same name), a user-mode network stack that runs as the sandbox's own unprivileged host
//! uid and inside its cgroups. It gives the sandbox's network namespace a `tap0` interface
//! (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3) and relays its connections through
//! ordinary host sockets, which the egress filter ([`crate::egress`]) watches. It ends
//! with the sandbox's cgroup.
//!
//! slirp4netns rather than pasta: it needs about 3 MiB per sandbox, pasta about 30.

use std::{
    fs, io,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// How long the helper gets to configure the sandbox's interface.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The `cgroup.procs` files the helper joins.
    pub cgroup_procs: &'a [PathBuf],
}

/// Connects the sandbox's network namespace to the outside through the `cove` binary at
/// `exe`, which runs [`run_stage`] as a process of its own (it changes its mount namespace).
/// Returns once the sandbox's interface is configured.
pub fn connect(exe: &Path, connection: &Connection<'_>) -> io::Result<()> {
    let output = Command::new(exe)
        .args([
            crate::namespace::init::SUBCOMMAND,
            crate::namespace::init::NETWORK_FLAG,
        ])
        .arg(connection.helper)
        .arg(connection.pid.to_string())
        .arg(connection.uid_base.to_string())
        .arg(connection.log)
        .args(connection.cgroup_procs)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cannot connect the sandbox to the network ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// The network stage (host root): joins the sandbox's cgroups, gives the sandbox's uid a
/// tun device node of its own in a private mount namespace (the host's may be root-only),
/// starts the helper as that uid and waits until the sandbox's interface has its default
/// route. The helper keeps running after this process exits.
pub fn run_stage(connection: &Connection<'_>) -> io::Result<()> {
    for procs in connection.cgroup_procs {
        fs::write(procs, std::process::id().to_string())?;
    }
    prepare_tun(connection.uid_base)?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(connection.log)?;
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

fn prepare_tun(uid_base: u32) -> io::Result<()> {
    use rustix::fs::{FileType, Mode};
    // SAFETY: the network stage is single-threaded and does not unshare the file table.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
    crate::mounts::make_private()?;
    crate::mounts::mount_tmpfs(Path::new("/dev/net"), "mode=755,size=16k")?;
    let tun = Path::new("/dev/net/tun");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        tun,
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(10, 200),
    )?;
    std::os::unix::fs::chown(tun, Some(uid_base), Some(uid_base))?;
    Ok(())
}
