//! What the host must have for sandboxes, checked one by one with what to do about each
//! missing piece (`cove doctor`).

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// How a check went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Sandboxes run, but something is missing (internet access, run_code, …).
    Warn,
    /// Sandboxes cannot run.
    Fail,
}

/// One requirement and what was found.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// What was found.
    pub found: String,
    /// What to do, when it is not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, found: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Ok,
            found: found.into(),
            fix: None,
        }
    }

    fn not(name: &'static str, status: Status, found: impl Into<String>, fix: &str) -> Self {
        Self {
            name,
            status,
            found: found.into(),
            fix: Some(fix.to_owned()),
        }
    }
}

/// The oldest kernel with idmapped mounts under overlayfs (the template layers).
const MIN_KERNEL: (u32, u32) = (5, 19);

/// Checks this host for sandboxes whose state lives in `state_dir`.
pub fn check(state_dir: &Path) -> Vec<Check> {
    vec![
        root(),
        kernel(),
        overlay(),
        user_namespaces(),
        cgroups(),
        egress_filter(),
        loop_devices(),
        program(
            "mkfs.ext4",
            Status::Fail,
            "the sandboxes' disks (their quota) are ext4 images",
            "apt-get install e2fsprogs",
        ),
        program(
            "slirp4netns",
            Status::Warn,
            "sandboxes with internet access need it",
            "apt-get install slirp4netns",
        ),
        program(
            "runsc",
            Status::Warn,
            "gVisor, the stronger isolation tier and the benchmark's baseline",
            "apt-get install runsc",
        ),
    ]
    .into_iter()
    .chain(gvisor_limits(&state_dir.join("gvisor")))
    .chain([
        init_binary(),
        kernels(),
        open_files(),
        free_space(state_dir),
        preview_names(),
    ])
    .collect()
}

/// What gVisor sandboxes cannot do on this host's runsc, found by asking it (none when runsc
/// is not installed): reported by `cove doctor` and by `cove serve` at start. runsc keeps
/// its records of the probe in a directory made (and removed) below `scratch`.
pub fn gvisor_limits(scratch: &Path) -> Vec<Check> {
    let runsc = Path::new(crate::gvisor::runsc::DEFAULT_BINARY);
    if !runsc.is_file() {
        return Vec::new();
    }
    let version = std::process::Command::new(runsc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|out| out.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "an unknown version".to_owned());
    vec![
        Check::not(
            "gvisor-backend",
            Status::Warn,
            format!(
                "{version}: the ptrace platform (no KVM); nothing listening on TCP can be \
                 checkpointed; a sandbox with internet access pauses with its memory kept \
                 in the host's (frozen) and snapshots only its files"
            ),
            "see docs/GVISOR-NOTES.md and docs/SECURITY.md",
        ),
        statx_inside(runsc, scratch),
    ]
}

/// Whether GNU `stat` works inside a sandbox of this runsc (`runsc do` with the host's root
/// read-only, no network, no cgroups, its state in a directory of its own).
fn statx_inside(runsc: &Path, scratch: &Path) -> Check {
    const NAME: &str = "gvisor-statx";
    let state = fs::create_dir_all(scratch).and_then(|()| {
        tempfile::Builder::new()
            .prefix("probe-")
            .tempdir_in(scratch)
    });
    let Ok(state) = state else {
        return Check::not(
            NAME,
            Status::Warn,
            format!(
                "not checked (cannot make a directory in {})",
                scratch.display()
            ),
            "run cove doctor as root",
        );
    };
    let out = std::process::Command::new(runsc)
        .arg("--root")
        .arg(state.path())
        .args([
            "--network=none",
            "--ignore-cgroups",
            "do",
            "/usr/bin/stat",
            "-c",
            "%F",
            "/",
        ])
        .output();
    match out {
        Ok(out) if out.status.success() => Check::ok(NAME, "GNU ls and stat work inside"),
        // Worked around: see `crate::gvisor::statx`.
        Ok(out) => Check::ok(
            NAME,
            format!(
                "this runsc's statx refuses GNU ls and stat ({}); gVisor sandboxes preload \
                 Cove's statx shim, with which they work",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ),
        Err(err) => Check::not(
            NAME,
            Status::Warn,
            format!("not checked: cannot run runsc ({err})"),
            "run cove doctor as root",
        ),
    }
}

fn root() -> Check {
    if rustix::process::geteuid().is_root() {
        Check::ok("root", "running as root")
    } else {
        Check::not(
            "root",
            Status::Fail,
            "not root",
            "run cove serve as root: it makes namespaces, mounts and cgroups",
        )
    }
}

fn kernel() -> Check {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if version >= MIN_KERNEL {
        Check::ok("kernel", format!("Linux {release}"))
    } else {
        Check::not(
            "kernel",
            Status::Fail,
            format!("Linux {release}"),
            "Linux 5.19 or newer is needed (idmapped mounts under overlayfs)",
        )
    }
}

fn overlay() -> Check {
    let known = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if known
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        Check::ok("overlayfs", "the kernel has overlay")
    } else {
        Check::not(
            "overlayfs",
            Status::Fail,
            "the kernel has no overlay filesystem",
            "modprobe overlay",
        )
    }
}

fn user_namespaces() -> Check {
    let max = fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if max > 0 {
        Check::ok("user namespaces", format!("up to {max}"))
    } else {
        Check::not(
            "user namespaces",
            Status::Fail,
            "none allowed",
            "sysctl -w user.max_user_namespaces=65536",
        )
    }
}

fn cgroups() -> Check {
    match crate::cgroup::Hierarchy::detect(Path::new("/sys/fs/cgroup")) {
        Ok(crate::cgroup::Hierarchy::V2(_)) => Check::ok("cgroups", "v2"),
        Ok(crate::cgroup::Hierarchy::V1 { .. }) => Check::ok("cgroups", "v1 (hybrid)"),
        Err(err) => Check::not(
            "cgroups",
            Status::Warn,
            err.to_string(),
            "mount cgroup v2, or v1 memory, cpu, cpuacct and pids: without them sandboxes have no resource limits",
        ),
    }
}

fn egress_filter() -> Check {
    let v2 = [
        "/sys/fs/cgroup/cgroup.controllers",
        "/sys/fs/cgroup/unified/cgroup.controllers",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    if v2 {
        Check::ok(
            "egress filter",
            "a cgroup v2 hierarchy for its eBPF programs",
        )
    } else {
        Check::not(
            "egress filter",
            Status::Warn,
            "no cgroup v2 hierarchy",
            "mount the unified cgroup hierarchy: without it sandboxes cannot have internet access",
        )
    }
}

fn loop_devices() -> Check {
    if Path::new("/dev/loop-control").exists() {
        Check::ok("loop devices", "/dev/loop-control")
    } else {
        Check::not(
            "loop devices",
            Status::Fail,
            "no /dev/loop-control",
            "modprobe loop (the sandboxes' disks are loop-mounted images)",
        )
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn program(name: &'static str, missing: Status, why: &str, fix: &str) -> Check {
    match find_program(name) {
        Some(path) => Check::ok(name, path.display().to_string()),
        None => Check::not(name, missing, format!("not installed ({why})"), fix),
    }
}

/// `cove-init` beside this binary: sandboxes' PID 1 (without it `cove` does the job, a
/// larger exec for every create).
fn init_binary() -> Check {
    const NAME: &str = crate::namespace::init_binary::NAME;
    const FIX: &str = "install cove-init (built with cove: cargo build --release -p cove-cli) beside cove, mode 0755, owned by root";
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => {
            return Check::not(NAME, Status::Warn, format!("cannot find cove: {err}"), FIX);
        }
    };
    match crate::namespace::init_binary::beside(&exe) {
        Ok(Some(binary)) => Check::ok(NAME, binary.path.display().to_string()),
        Ok(None) => Check::not(
            NAME,
            Status::Warn,
            format!(
                "not beside {}: sandboxes' PID 1 runs cove itself, a slower start",
                exe.display()
            ),
            FIX,
        ),
        Err(reason) => Check::not(NAME, Status::Warn, format!("not used: {reason}"), FIX),
    }
}

fn kernels() -> Check {
    let python = [
        "/usr/share/jupyter/kernels",
        "/usr/local/share/jupyter/kernels",
    ]
    .iter()
    .any(|dir| Path::new(dir).join("python3/kernel.json").exists());
    if python {
        Check::ok("run_code", "a Python Jupyter kernel for the base template")
    } else {
        Check::not(
            "run_code",
            Status::Warn,
            "no Python Jupyter kernel on the host, so the base template cannot run code",
            "scripts/setup --system (Debian's python3-ipykernel)",
        )
    }
}

fn open_files() -> Check {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard >= 65536 {
        Check::ok("open files", format!("hard limit {hard}"))
    } else {
        Check::not(
            "open files",
            Status::Warn,
            format!("hard limit {hard}"),
            "raise it (ulimit -Hn, LimitNOFILE= in a systemd unit): it bounds the connections the server takes",
        )
    }
}

fn free_space(state_dir: &Path) -> Check {
    // The state directory may not exist yet: its nearest existing ancestor holds it.
    let existing = state_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match rustix::fs::statvfs(existing) {
        Ok(stat) => {
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            let found = format!("{} MiB free for {}", free >> 20, state_dir.display());
            if free >= 1 << 30 {
                Check::ok("disk space", found)
            } else {
                Check::not(
                    "disk space",
                    Status::Warn,
                    found,
                    "sandboxes' disks grow as they are written: give the state directory more room",
                )
            }
        }
        Err(err) => Check::not(
            "disk space",
            Status::Warn,
            format!("cannot measure: {err}"),
            "check the state directory",
        ),
    }
}

fn preview_names() -> Check {
    let nsswitch = fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
    let hosts = nsswitch
        .lines()
        .find(|l| l.trim_start().starts_with("hosts:"))
        .unwrap_or_default();
    let listed = hosts.split_whitespace().any(|s| s == "myhostname");
    // The module named on the line must exist too: glibc skips a missing one silently.
    let installed = NSS_LIBRARY_DIRS
        .iter()
        .any(|dir| Path::new(dir).join("libnss_myhostname.so.2").exists());
    if listed && installed {
        Check::ok(
            "preview hosts",
            "*.localhost resolves for every program (nss myhostname)",
        )
    } else {
        let found = if listed {
            "myhostname is on the hosts: line but libnss_myhostname.so.2 is not installed"
        } else {
            "*.localhost resolves in browsers and curl, not in glibc programs (Python, Node)"
        };
        Check::not(
            "preview hosts",
            Status::Warn,
            found,
            "scripts/setup --system (installs libnss-myhostname, puts myhostname on the hosts: \
             line of /etc/nsswitch.conf), or serve with --domain and a wildcard DNS record",
        )
    }
}

/// Where glibc's NSS modules live on Debian and other distributions.
const NSS_LIBRARY_DIRS: [&str; 6] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_says_what_to_do_when_not_ok() {
        let checks = check(Path::new("/nonexistent/state"));
        assert!(checks.len() >= 10);
        for check in &checks {
            assert_eq!(check.status == Status::Ok, check.fix.is_none(), "{check:?}");
        }
        let disk = checks.iter().find(|c| c.name == "disk space").unwrap();
        assert!(disk.found.contains("/nonexistent/state"), "{disk:?}");
    }
}
