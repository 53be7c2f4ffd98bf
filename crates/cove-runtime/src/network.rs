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

/// What starts the helper and stays its parent: a shell (`/bin/sh`) that runs it and waits
/// for it, so that the helper, killed with its sandbox, is reaped at once. Its name (`$0`)
/// says what it is in `ps`.
const KEEPER_SCRIPT: &str = r#""$@" & wait $!"#;
const KEEPER_NAME: &str = "cove-network-keeper";

/// The network stage (host root): joins the sandbox's cgroups, gives the sandbox's uid a
/// tun device node of its own in a private mount namespace (the host's may be root-only),
/// starts the helper as that uid and waits until the sandbox's interface has its default
/// route. The helper keeps running after this process exits.
///
/// The helper is started by a keeper ([`KEEPER_SCRIPT`], as the sandbox's uid too) that this
/// stage moves out of the sandbox's cgroups, to the roots of their hierarchies, once the
/// helper runs, and that does nothing but wait for it: when the sandbox's cgroup is killed,
/// its helper is reaped at once by the keeper, which then ends. An orphaned helper would wait
/// for the host's PID 1 to reap it, and the sandbox's cgroup cannot be removed before (that
/// made every kill of a sandbox with internet access several times slower than one without).
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
    let mut keeper = Command::new("/bin/sh")
        .args(["-c", KEEPER_SCRIPT, KEEPER_NAME])
        .arg(connection.helper)
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
    let ended = |status: std::process::ExitStatus| {
        io::Error::other(format!(
            "slirp4netns ended with {status} (see {})",
            connection.log.display()
        ))
    };
    // The helper inherits the keeper's cgroups when it starts: the keeper leaves only after.
    let helper = loop {
        if let Some(helper) = first_child(keeper.id()) {
            break helper;
        }
        if let Some(status) = keeper.try_wait()? {
            return Err(ended(status));
        }
        if Instant::now() > deadline {
            let _ = keeper.kill();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the network keeper did not start slirp4netns",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    // Should a hierarchy refuse it, the keeper stays in that one of the sandbox's cgroups
    // and is killed with it: the helper is then reaped by the host's PID 1, as before.
    for home in hierarchy_roots(connection.cgroup_procs) {
        let _ = fs::write(home, keeper.id().to_string());
    }
    loop {
        if has_default_route(pid) {
            return Ok(());
        }
        if let Some(status) = keeper.try_wait()? {
            return Err(ended(status));
        }
        if Instant::now() > deadline {
            if let Some(helper) = rustix::process::Pid::from_raw(helper) {
                let _ = rustix::process::kill_process(helper, rustix::process::Signal::KILL);
            }
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "slirp4netns did not configure the sandbox's network",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The first child of process `pid`, once it has one.
fn first_child(pid: u32) -> Option<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The `cgroup.procs` file of the root of each hierarchy `procs` (files of cgroups below
/// them) lie in: the topmost directory up from each that still has a `cgroup.procs`.
fn hierarchy_roots(procs: &[PathBuf]) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    for file in procs {
        let mut root = None;
        let mut dir = file.parent();
        while let Some(d) = dir {
            if d.join("cgroup.procs").is_file() {
                root = Some(d.join("cgroup.procs"));
            } else {
                break;
            }
            dir = d.parent();
        }
        if let Some(root) = root.filter(|r| !roots.contains(r)) {
            roots.push(root);
        }
    }
    roots
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keeper_goes_to_the_root_of_each_hierarchy_once() {
        let host = tempfile::tempdir().unwrap();
        // Two hierarchies mounted below a directory that is none (as /sys/fs/cgroup in v1).
        let procs = |dir: &str| {
            let dir = host.path().join(dir);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("cgroup.procs"), "").unwrap();
            dir.join("cgroup.procs")
        };
        for root in ["memory", "unified"] {
            procs(root);
            procs(&format!("{root}/cove"));
        }
        let files = [
            procs("memory/cove/sbx"),
            procs("unified/cove/sbx"),
            procs("unified/cove/sbx/egress"),
        ];
        assert_eq!(
            hierarchy_roots(&files),
            [
                host.path().join("memory/cgroup.procs"),
                host.path().join("unified/cgroup.procs")
            ]
        );
    }
}
