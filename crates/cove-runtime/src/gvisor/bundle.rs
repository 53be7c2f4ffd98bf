//! The OCI bundle runsc starts a sandbox from: `config.json` in the sandbox's directory,
//! written by us. The container's init is the `cove` binary (bound in read-only) running
//! the agent; its settings travel in one environment variable ([`AGENT_SPEC_ENV`]), which
//! only root inside the sandbox can read back (`/proc/1/environ`), and which the agent does
//! not hand on (it starts every process with an environment of its own).

use std::{
    fs, io,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{AgentSettings, Limits, confine, namespace::init, volume::VolumeMount};

/// The hidden `cove __sandbox-init` flag of a gVisor sandbox's init.
pub const AGENT_FLAG: &str = "--gvisor-agent";
/// The variable that carries the init's [`AgentSpec`] (JSON).
pub const AGENT_SPEC_ENV: &str = "COVE_GVISOR_AGENT";
/// Where the host directory of the agent's socket is mounted inside.
pub const AGENT_DIR_INSIDE: &str = "/run/cove";
/// Where the `cove` binary is mounted inside (read-only).
pub const EXE_INSIDE: &str = "/run/cove-agent";
/// Open files each process may have (as in the namespace backend).
const NOFILE_LIMIT: u64 = 65536;

/// What the init of a gVisor sandbox runs: the agent, listening on a socket it lets go of
/// for checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub agent: AgentSettings,
    /// The socket to listen on, inside the sandbox.
    pub socket: PathBuf,
    /// The file the agent writes once quiesced, inside the sandbox.
    pub marker: PathBuf,
    /// The file a restore under a new identity leaves for the agent, inside the sandbox.
    pub renewal: PathBuf,
    /// The size the agent keeps its log under, in bytes.
    pub log_cap: u64,
}

impl AgentSpec {
    pub fn new(agent: AgentSettings, log_cap: u64) -> Self {
        Self {
            agent,
            socket: Path::new(AGENT_DIR_INSIDE).join(super::channel::SOCKET),
            marker: Path::new(AGENT_DIR_INSIDE).join(super::channel::MARKER),
            renewal: Path::new(AGENT_DIR_INSIDE).join(super::channel::RENEWAL),
            log_cap,
        }
    }
}

/// Everything `config.json` is made from.
pub struct Bundle<'a> {
    pub rootfs: &'a Path,
    /// The host directory mounted at [`AGENT_DIR_INSIDE`].
    pub agent_dir: &'a Path,
    /// The `cove` binary on the host.
    pub exe: &'a Path,
    pub hostname: &'a str,
    pub agent: &'a AgentSpec,
    /// The limits as the host's cgroup enforces them (see `super::host_limits`).
    pub limits: Limits,
    /// The cgroup runsc makes in every hierarchy, `/cove/<container id>`.
    pub cgroups_path: &'a str,
    /// Volumes: host mount points bound in, served by the gofer like the root.
    pub volumes: &'a [VolumeMount],
    /// The network namespace of the sandbox's link ([`super::link`]); none: a namespace of
    /// its own with loopback only.
    pub netns: Option<&'a Path>,
    /// The statx shim on the host, bound in at [`super::statx::INSIDE`].
    pub statx_shim: &'a Path,
}

/// The OCI runtime spec of `bundle`.
pub fn config(bundle: &Bundle<'_>) -> Result<Value, serde_json::Error> {
    let log_filter = std::env::var(init::AGENT_LOG_ENV).unwrap_or_else(|_| "info".to_owned());
    let caps: Vec<String> = capability_names();
    let quota = i64::from(bundle.limits.cpus.max(1)) * 100_000;
    let mut mounts = vec![
        json!({ "destination": "/proc", "type": "proc", "source": "proc" }),
        json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs" }),
        json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"] }),
        // In the sentry's memory: the agent's mount points are made there, not on disk.
        json!({ "destination": "/run", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=755"] }),
    ];
    // Before the agent's own: a volume at or above them cannot hide them.
    mounts.extend(bundle.volumes.iter().map(|volume| {
        json!({ "destination": volume.target, "type": "bind", "source": volume.source,
                "options": ["rbind", "rw", "nosuid", "nodev"] })
    }));
    mounts.extend([
        json!({ "destination": AGENT_DIR_INSIDE, "type": "bind", "source": bundle.agent_dir,
                "options": ["rbind", "rw", "nosuid", "nodev", "noexec"] }),
        json!({ "destination": EXE_INSIDE, "type": "bind", "source": bundle.exe,
                "options": ["rbind", "ro", "nosuid", "nodev"] }),
        json!({ "destination": super::statx::INSIDE, "type": "bind",
                "source": bundle.statx_shim, "options": ["rbind", "ro", "nosuid", "nodev"] }),
    ]);
    let network = match bundle.netns {
        Some(path) => json!({ "type": "network", "path": path }),
        None => json!({ "type": "network" }),
    };
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": [EXE_INSIDE, init::SUBCOMMAND, AGENT_FLAG],
            "env": [
                format!("PATH={}", init::SANDBOX_PATH),
                format!("COVE_LOG={log_filter}"),
                format!("{AGENT_SPEC_ENV}={}", serde_json::to_string(bundle.agent)?),
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "inheritable": caps,
                "permitted": caps,
            },
            "rlimits": [
                { "type": "RLIMIT_NOFILE", "hard": NOFILE_LIMIT, "soft": NOFILE_LIMIT },
            ],
            // sudo works in the sandbox, as in the namespace backend by default.
            "noNewPrivileges": false,
        },
        "root": { "path": bundle.rootfs, "readonly": false },
        "hostname": bundle.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": bundle.cgroups_path,
            "resources": {
                "memory": {
                    "limit": bundle.limits.memory_bytes,
                    "swap": bundle.limits.memory_bytes,
                },
                "cpu": { "quota": quota, "period": 100_000 },
                "pids": { "limit": bundle.limits.pids },
            },
            "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" },
                { "type": "mount" }, network,
            ],
        },
    }))
}

/// What root in a gVisor sandbox keeps: the namespace backend's set (the sentry enforces
/// them on its own kernel; none is a capability on the host).
fn capability_names() -> Vec<String> {
    let kept = confine::kept_capabilities();
    let all = [
        (rustix::thread::CapabilitySet::CHOWN, "CAP_CHOWN"),
        (
            rustix::thread::CapabilitySet::DAC_OVERRIDE,
            "CAP_DAC_OVERRIDE",
        ),
        (rustix::thread::CapabilitySet::FSETID, "CAP_FSETID"),
        (rustix::thread::CapabilitySet::FOWNER, "CAP_FOWNER"),
        (rustix::thread::CapabilitySet::MKNOD, "CAP_MKNOD"),
        (rustix::thread::CapabilitySet::SETGID, "CAP_SETGID"),
        (rustix::thread::CapabilitySet::SETUID, "CAP_SETUID"),
        (rustix::thread::CapabilitySet::SETFCAP, "CAP_SETFCAP"),
        (rustix::thread::CapabilitySet::SETPCAP, "CAP_SETPCAP"),
        (
            rustix::thread::CapabilitySet::NET_BIND_SERVICE,
            "CAP_NET_BIND_SERVICE",
        ),
        (rustix::thread::CapabilitySet::KILL, "CAP_KILL"),
        (
            rustix::thread::CapabilitySet::AUDIT_WRITE,
            "CAP_AUDIT_WRITE",
        ),
    ];
    all.iter()
        .filter(|(cap, _)| kept.contains(*cap))
        .map(|(_, name)| (*name).to_owned())
        .collect()
}

/// Writes `config` as `config.json` in `dir` (host root's alone: it holds the token).
pub fn write(dir: &Path, config: &Value) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(config).map_err(io::Error::other)?;
    let staging = dir.join("config.json.new");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&staging)?;
    io::Write::write_all(&mut file, &json)?;
    drop(file);
    fs::rename(staging, dir.join("config.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_runs_the_agent_with_its_settings_and_limits() {
        let agent = AgentSpec::new(
            AgentSettings {
                access_token: "secret".into(),
                default_user: "user".into(),
                default_workdir: "/home/user".into(),
                env: Default::default(),
                code_interpreter_port: None,
                warm_kernel: false,
            },
            1 << 20,
        );
        let config = config(&Bundle {
            rootfs: Path::new("/s/rootfs"),
            agent_dir: Path::new("/s/agent"),
            exe: Path::new("/usr/bin/cove"),
            hostname: "box",
            agent: &agent,
            limits: Limits {
                memory_bytes: 1 << 30,
                cpus: 2,
                pids: 300,
            },
            cgroups_path: "/cove/c1",
            volumes: &[VolumeMount {
                source: "/state/volumes/v/mnt".into(),
                target: "/data".into(),
            }],
            netns: Some(Path::new("/s/netns")),
            statx_shim: Path::new("/s/statx-shim.so"),
        })
        .unwrap();
        // The link's network namespace, by its name in the sandbox's directory.
        let network = config["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap();
        assert_eq!(network["path"], "/s/netns");
        assert_eq!(config["process"]["args"][2], AGENT_FLAG);
        let env = config["process"]["env"].as_array().unwrap();
        let spec = env
            .iter()
            .find_map(|v| v.as_str()?.strip_prefix("COVE_GVISOR_AGENT="))
            .unwrap();
        assert_eq!(serde_json::from_str::<AgentSpec>(spec).unwrap(), agent);
        assert_eq!(agent.socket, Path::new("/run/cove/agent.sock"));
        let resources = &config["linux"]["resources"];
        assert_eq!(resources["memory"]["limit"], 1u64 << 30);
        assert_eq!(resources["cpu"]["quota"], 200_000);
        assert_eq!(resources["pids"]["limit"], 300);
        assert!(
            config["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == "CAP_SETUID")
        );
        // The volume is bound in before the agent's directory, which it cannot hide.
        let destinations: Vec<&str> = config["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        let at = |d: &str| destinations.iter().position(|x| *x == d).unwrap();
        assert!(at("/data") < at(AGENT_DIR_INSIDE));
        assert!(at("/run") < at("/data"));
    }
}
