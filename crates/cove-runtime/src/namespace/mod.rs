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
use crate::{RunningSandbox, Runtime, RuntimeError, SandboxSpec, process};

/// How long to wait for a killed sandbox's PID 1 to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs sandboxes in Linux namespaces, using the `cove` binary at `exe` for the stages.
#[derive(Clone, Debug)]
pub struct NamespaceRuntime {
    exe: PathBuf,
    /// The user-mode network stack for sandboxes with egress, when installed.
    pasta: Option<PathBuf>,
}

impl NamespaceRuntime {
    pub fn new(exe: impl Into<PathBuf>) -> Self {
        Self {
            exe: exe.into(),
            pasta: crate::network::find_pasta(),
        }
    }
}

impl NamespaceRuntime {
    fn connect_network(&self, pid: u32, uid_base: u32) -> std::io::Result<()> {
        let pasta = self.pasta.as_deref().ok_or_else(|| {
            std::io::Error::other("internet access needs pasta (Debian package passt); install it or create the sandbox without internet access")
        })?;
        crate::network::connect(&self.exe, pasta, pid, uid_base)
    }
}

impl Runtime for NamespaceRuntime {
    fn create(&self, spec: &SandboxSpec) -> Result<RunningSandbox, RuntimeError> {
        let dirs = SandboxDirs::new(&spec.dir);
        let io_err = |what: &'static str| move |source| RuntimeError::Io { what, source };
        fs::create_dir_all(&spec.dir).map_err(io_err("create the sandbox directory"))?;
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
        match serde_json::from_str::<Report>(out.trim()) {
            Ok(Report::Started { pid }) => {
                // Read from the host's /proc: the setup stage no longer sees host pids.
                let start_time = process::start_time(pid)
                    .map_err(io_err("read the start time of the sandbox's PID 1"))?;
                let sandbox = RunningSandbox {
                    pid,
                    start_time,
                    socket: dirs.socket(),
                };
                let network = if spec.network {
                    self.connect_network(pid, spec.uid_base)
                } else {
                    Ok(())
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
            Ok(Report::Failed { error }) => Err(RuntimeError::Start {
                id: spec.id.clone(),
                reason: error,
            }),
            Err(_) => Err(RuntimeError::Start {
                id: spec.id.clone(),
                reason: format!(
                    "the setup exited with {status} without a report (see {})",
                    dirs.log().display()
                ),
            }),
        }
    }

    fn is_alive(&self, sandbox: &RunningSandbox) -> bool {
        process::is_alive(sandbox.pid, sandbox.start_time)
    }

    fn kill(&self, sandbox: &RunningSandbox) -> Result<(), RuntimeError> {
        process::kill_and_wait(sandbox.pid, sandbox.start_time, KILL_TIMEOUT).map_err(|source| {
            RuntimeError::Io {
                what: "kill the sandbox",
                source,
            }
        })
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
