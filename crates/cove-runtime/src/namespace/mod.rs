//! The namespace backend: each sandbox gets its own user, mount, PID, IPC, UTS, network and
//! cgroup namespaces, an overlay root over idmapped template layers, and the agent as PID 1.

pub mod init;

use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use self::init::{InitSpec, Report, SUBCOMMAND, SandboxDirs};
use crate::{
    RunningSandbox, Runtime, RuntimeError, SandboxSpec,
    cgroup::{Hierarchy, Usage},
    disk::ImagePool,
    egress::{EgressConfig, EgressError, EgressFilter},
    process,
};

/// How long to wait for a killed sandbox's PID 1 to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs sandboxes in Linux namespaces, using the `cove` binary at `exe` for the stages.
#[derive(Clone, Debug)]
pub struct NamespaceRuntime {
    exe: PathBuf,
    /// The user-mode network stack for sandboxes with egress, when installed.
    network_helper: Option<PathBuf>,
    /// Where sandboxes' cgroups go; without one there are no resource limits.
    cgroups: Option<Hierarchy>,
    /// Formatted disk images (the disk quota); without it the writable layer is a plain
    /// directory on the host's disk.
    disks: Option<ImagePool>,
    /// What network helpers may not connect to, or why there is no filter (then sandboxes
    /// cannot have internet access).
    egress: Result<std::sync::Arc<EgressFilter>, String>,
}

impl NamespaceRuntime {
    /// A runtime whose sandboxes with internet access are filtered as `egress` says.
    pub fn new(exe: impl Into<PathBuf>, egress: EgressConfig) -> Self {
        let cgroups = match Hierarchy::detect(Path::new("/sys/fs/cgroup")) {
            Ok(hierarchy) => Some(hierarchy),
            Err(err) => {
                tracing::warn!(%err, "sandboxes will run without resource limits");
                None
            }
        };
        let egress = match cgroups.as_ref().and_then(|c| c.egress_dir("probe")) {
            None => Err(EgressError::NoCgroupV2),
            Some(_) => EgressFilter::start(&egress),
        }
        .map(std::sync::Arc::new)
        .map_err(|err| {
            let reason = crate::egress::error_chain(&err);
            tracing::error!(err = %reason, "sandboxes with internet access cannot be created: their egress filter (eBPF on cgroup v2) is unavailable");
            reason
        });
        Self {
            exe: exe.into(),
            network_helper: crate::network::find_helper(),
            cgroups,
            disks: None,
            egress,
        }
    }

    /// Gives every sandbox a disk of `size` bytes, from images prepared under `pool_dir`.
    pub fn with_disk_quota(mut self, pool_dir: PathBuf, size: u64) -> std::io::Result<Self> {
        self.disks = Some(ImagePool::start(pool_dir, size, DISK_POOL_SIZE)?);
        Ok(self)
    }
}

/// Formatted disk images kept ready.
const DISK_POOL_SIZE: usize = 4;

impl NamespaceRuntime {
    /// The egress filter, or why sandboxes cannot have internet access on this host.
    fn egress_filter(&self) -> Result<&EgressFilter, String> {
        self.egress.as_deref().map_err(|reason| {
            format!("internet access is unavailable on this host, because sandboxes would reach the host's network unfiltered ({reason}); create the sandbox without internet access")
        })
    }

    fn connect_network(
        &self,
        id: &str,
        dir: &Path,
        pid: u32,
        uid_base: u32,
    ) -> std::io::Result<()> {
        let helper = self.network_helper.as_deref().ok_or_else(|| {
            std::io::Error::other(
                "internet access needs slirp4netns (Debian package slirp4netns); install it or create the sandbox without internet access",
            )
        })?;
        // The helper joins the sandbox's cgroups (limits, and its end with the sandbox) and
        // the egress cgroup, whose filter refuses the host and its surroundings.
        let procs = self
            .cgroups
            .as_ref()
            .map(|c| c.helper_procs_files(id))
            .unwrap_or_default();
        let filter = self.egress_filter().map_err(std::io::Error::other)?;
        let egress_dir = self
            .cgroups
            .as_ref()
            .and_then(|c| c.egress_dir(id))
            .ok_or_else(|| std::io::Error::other("the sandbox has no egress cgroup"))?;
        filter
            .attach(&egress_dir)
            .map_err(|e| std::io::Error::other(crate::egress::error_chain(&e)))?;
        let log = SandboxDirs::new(dir).log();
        let connection = crate::network::Connection {
            helper,
            pid,
            uid_base,
            log: &log,
            cgroup_procs: &procs,
        };
        crate::network::connect(&self.exe, &connection)
    }
}

impl NamespaceRuntime {
    /// Runs the setup stage and, when asked, connects the network.
    fn start(&self, spec: &SandboxSpec) -> Result<RunningSandbox, RuntimeError> {
        let dirs = SandboxDirs::new(&spec.dir);
        let io_err = |what: &'static str| move |source| RuntimeError::Io { what, source };
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dirs.log())
            .map_err(io_err("open the sandbox log"))?;
        let init = InitSpec {
            id: spec.id.clone(),
            dir: spec.dir.clone(),
            template: spec.template.clone(),
            uid_base: spec.uid_base,
            hostname: spec.hostname.clone(),
            agent_args: spec.agent_args.clone(),
            cgroups: self.cgroups.clone(),
            no_new_privs: spec.no_new_privs,
        };
        let mut child = Command::new(&self.exe)
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .env_clear()
            .env(
                "COVE_LOG",
                std::env::var("COVE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .spawn()
            .map_err(io_err("start the sandbox setup"))?;
        let spec_json = serde_json::to_vec(&init).map_err(|e| RuntimeError::Io {
            what: "encode the sandbox spec",
            source: std::io::Error::other(e),
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&spec_json)
                .map_err(io_err("hand the spec to the sandbox setup"))?;
        }
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        let status = child.wait().map_err(io_err("wait for the sandbox setup"))?;
        let pid = match serde_json::from_str::<Report>(out.trim()) {
            Ok(Report::Started { pid }) => pid,
            Ok(Report::Failed { error }) => {
                return Err(RuntimeError::Start {
                    id: spec.id.clone(),
                    reason: error,
                });
            }
            Err(_) => {
                return Err(RuntimeError::Start {
                    id: spec.id.clone(),
                    reason: format!(
                        "the setup exited with {status} without a report (see {})",
                        dirs.log().display()
                    ),
                });
            }
        };
        // Read from the host's /proc: the setup stage no longer sees host pids.
        let start_time = process::start_time(pid)
            .map_err(io_err("read the start time of the sandbox's PID 1"))?;
        let sandbox = RunningSandbox {
            id: spec.id.clone(),
            pid,
            start_time,
            socket: dirs.socket(),
        };
        let network = match spec.network {
            true => self.connect_network(&spec.id, &spec.dir, pid, spec.uid_base),
            false => Ok(()),
        };
        if let Err(err) = network {
            let _ = process::kill_and_wait(pid, start_time, KILL_TIMEOUT);
            return Err(RuntimeError::Start {
                id: spec.id.clone(),
                reason: err.to_string(),
            });
        }
        Ok(sandbox)
    }

    fn destroy_cgroup(&self, id: &str) -> Result<(), RuntimeError> {
        self.on_cgroups("remove the sandbox's cgroup", |c| {
            c.destroy(id, KILL_TIMEOUT)
        })
    }

    /// Does `change` to the cgroups, when sandboxes have them.
    fn on_cgroups(
        &self,
        what: &'static str,
        change: impl FnOnce(&crate::cgroup::Hierarchy) -> Result<(), crate::cgroup::CgroupError>,
    ) -> Result<(), RuntimeError> {
        match &self.cgroups {
            Some(cgroups) => change(cgroups).map_err(|e| RuntimeError::Io {
                what,
                source: std::io::Error::other(e),
            }),
            None => Ok(()),
        }
    }
}

impl Runtime for NamespaceRuntime {
    fn create(&self, spec: &SandboxSpec) -> Result<RunningSandbox, RuntimeError> {
        if spec.network {
            // Before anything starts: never a sandbox whose egress is unfiltered.
            self.egress_filter().map_err(|reason| RuntimeError::Start {
                id: spec.id.clone(),
                reason,
            })?;
        }
        fs::create_dir_all(&spec.dir).map_err(|source| RuntimeError::Io {
            what: "create the sandbox directory",
            source,
        })?;
        if let Some(disks) = &self.disks {
            let image = SandboxDirs::new(&spec.dir).disk_image();
            if !image.exists() {
                disks.take(&image).map_err(|source| RuntimeError::Io {
                    what: "prepare the sandbox's disk",
                    source,
                })?;
            }
        }
        if let Some(cgroups) = &self.cgroups {
            cgroups
                .create(&spec.id, spec.limits)
                .map_err(|e| RuntimeError::Io {
                    what: "create the sandbox's cgroup",
                    source: std::io::Error::other(e),
                })?;
        }
        let started = self.start(spec);
        if started.is_err() {
            // Whatever got started is in the cgroup; take it all down.
            let _ = self.destroy_cgroup(&spec.id);
        }
        started
    }

    fn is_alive(&self, sandbox: &RunningSandbox) -> bool {
        process::is_alive(sandbox.pid, sandbox.start_time)
    }

    fn kill(&self, sandbox: &RunningSandbox) -> Result<(), RuntimeError> {
        // Killing the whole cgroup is faster than waiting for the PID namespace to empty
        // under load (a fork bomb, memory pressure), and it takes the network helper too.
        self.destroy_cgroup(&sandbox.id)?;
        process::kill_and_wait(sandbox.pid, sandbox.start_time, KILL_TIMEOUT).map_err(|source| {
            RuntimeError::Io {
                what: "kill the sandbox",
                source,
            }
        })
    }

    fn kill_leftovers(&self, id: &str) -> Result<(), RuntimeError> {
        self.destroy_cgroup(id)
    }

    fn shutdown(&self) {
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove_parents_if_empty();
        }
        if let Some(disks) = &self.disks {
            disks.stop();
        }
    }

    fn set_limits(&self, id: &str, limits: crate::cgroup::Limits) -> Result<(), RuntimeError> {
        self.on_cgroups("change the sandbox's limits", |c| c.set_limits(id, limits))
    }

    fn usage(&self, id: &str) -> Option<Usage> {
        self.cgroups.as_ref()?.usage(id).ok()
    }

    fn remove(&self, dir: &Path) -> Result<(), RuntimeError> {
        match fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RuntimeError::Io {
                what: "remove the sandbox's files",
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_filter_sandboxes_with_internet_access_are_refused_before_anything_starts() {
        let state = tempfile::tempdir().unwrap();
        let runtime = NamespaceRuntime {
            exe: PathBuf::from("/nonexistent/cove"),
            network_helper: None,
            cgroups: None,
            disks: None,
            egress: Err(EgressError::NoCgroupV2.to_string()),
        };
        let spec = SandboxSpec {
            id: "egress-test".into(),
            dir: state.path().join("sandbox"),
            template: crate::Template {
                name: "none".into(),
                layers: Vec::new(),
            },
            uid_base: crate::userns::base_for_slot(0),
            hostname: "sandbox".into(),
            agent_args: Vec::new(),
            network: true,
            limits: crate::cgroup::Limits {
                memory_bytes: 1 << 30,
                cpus: 1,
                pids: 64,
            },
            no_new_privs: false,
        };
        let err = runtime.create(&spec).unwrap_err().to_string();
        assert!(
            err.contains("internet access is unavailable on this host")
                && err.contains("no cgroup v2 hierarchy"),
            "{err}"
        );
        assert!(!spec.dir.exists());
    }
}
