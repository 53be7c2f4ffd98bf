//! Egress for sandboxes that may reach the internet: `pasta` (Debian package `passt`), a
//! user-mode network stack that runs as the sandbox's own unprivileged host uid, gives the
//! sandbox's network namespace an interface with the host's addressing, and relays its
//! connections through ordinary host sockets. It exits by itself when the sandbox ends.

use std::{
    io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Finds `pasta` on `PATH`.
pub fn find_pasta() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("pasta"))
        .find(|candidate| candidate.is_file())
}

/// Connects the network namespace of `pid` (owned by host uid `uid_base`) to the outside,
/// through the `cove` binary at `exe`, which runs [`run_pasta`] as a separate process.
/// Returns once the namespace is configured; pasta then keeps running in the background,
/// inside the sandbox's cgroup (`cgroup_procs`), which is how it is stopped with it.
pub fn connect(
    exe: &Path,
    pasta: &Path,
    pid: u32,
    uid_base: u32,
    cgroup_procs: &[PathBuf],
) -> io::Result<()> {
    let output = Command::new(exe)
        .args([
            crate::namespace::init::SUBCOMMAND,
            crate::namespace::init::NETWORK_FLAG,
        ])
        .arg(pasta)
        .arg(pid.to_string())
        .arg(uid_base.to_string())
        .args(cgroup_procs)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason: Vec<&str> = stderr.lines().filter(|l| !l.contains("syslog")).collect();
        Err(io::Error::other(format!(
            "cannot connect the sandbox to the network ({}): {}",
            output.status,
            reason.join("; ")
        )))
    }
}

/// The network stage (host root): joins the sandbox's cgroup (`cgroup_procs` files), and
/// in a private mount namespace gives the sandbox's uid a tun device node of its own (the
/// host's may be root-only), then becomes pasta running as that uid. Only returns on
/// failure.
pub fn run_pasta(pasta: &Path, pid: u32, uid_base: u32, cgroup_procs: &[PathBuf]) -> io::Error {
    for procs in cgroup_procs {
        if let Err(err) = std::fs::write(procs, std::process::id().to_string()) {
            return err;
        }
    }
    if let Err(err) = prepare_tun(uid_base) {
        return err;
    }
    std::os::unix::process::CommandExt::exec(
        Command::new(pasta)
            .arg("--runas")
            .arg(format!("{uid_base}:{uid_base}"))
            .args([
                "--config-net",
                "--quiet",
                // Connections to the gateway address must not become connections to the
                // host's own loopback services.
                "--no-map-gw",
                // No port forwarding in either direction.
                "-t",
                "none",
                "-u",
                "none",
                "-T",
                "none",
                "-U",
                "none",
            ])
            .arg(pid.to_string()),
    )
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
