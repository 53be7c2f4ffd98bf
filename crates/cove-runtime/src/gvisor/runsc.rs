//! Invoking `runsc` (gVisor's OCI runtime). Every call names the same `--root` (where
//! runsc keeps its record of our containers) and the same global flags: the ptrace platform
//! (KVM is not usable on the hosts this was measured on), no network (`--network=none`:
//! a netstack with loopback only, which checkpoints), and `--host-uds=create` so the agent
//! can listen on a socket the host sees (see `super::channel`).
//!
//! runsc's control socket is an abstract Unix socket named after the container id, shared
//! by every `--root` on the host: container ids must be unique host-wide
//! (`super::container_id`).

use crate::gvisor::rootfs::RootSpec;
use std::{
    fs,
    io::{self, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// The flag of a sentry without network (loopback only).
const NO_NETWORK: &str = "--network=none";
/// The flag of a sentry whose netstack runs on its link's interface (`super::link`).
const LINKED_NETWORK: &str = "--network=sandbox";

/// How long a runsc command may take before it counts as hung (a checkpoint of a large
/// sandbox on a loaded host takes seconds; `checkpoint --leave-running` was seen to hang).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum RunscError {
    #[error("runsc is not installed ({0} not found; Debian package runsc)")]
    Missing(PathBuf),
    #[error("cannot run runsc {command} for container {id}")]
    Spawn {
        command: &'static str,
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("runsc {command} for container {id} failed ({status}): {stderr}")]
    Failed {
        command: &'static str,
        id: String,
        status: String,
        stderr: String,
    },
    #[error("runsc {command} for container {id} did not finish within {timeout:?}")]
    Hung {
        command: &'static str,
        id: String,
        timeout: Duration,
    },
}

impl RunscError {
    /// Whether runsc failed saying `what`.
    fn says(&self, what: &str) -> bool {
        matches!(self, RunscError::Failed { stderr, .. } if stderr.contains(what))
    }
}

/// What runsc says of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

/// One runsc state directory and the flags every call shares.
#[derive(Clone, Debug)]
pub struct Runsc {
    binary: PathBuf,
    root: PathBuf,
    /// The `cove` binary, whose launch stage mounts a container's root in a mount
    /// namespace of its own and then runs `runsc run` or `runsc restore` there.
    exe: PathBuf,
}

/// Where Debian's package installs runsc.
pub const DEFAULT_BINARY: &str = "/usr/bin/runsc";

impl Runsc {
    pub fn new(binary: PathBuf, root: PathBuf, exe: PathBuf) -> Self {
        Self { binary, root, exe }
    }

    /// Whether the binary exists.
    pub fn check(&self) -> Result<(), RunscError> {
        if self.binary.is_file() {
            Ok(())
        } else {
            Err(RunscError::Missing(self.binary.clone()))
        }
    }

    fn command(&self) -> Command {
        self.command_with(NO_NETWORK)
    }

    /// A runsc command whose sentry's network is `network` (only `run` and `restore` make
    /// one): [`NO_NETWORK`], or for a sandbox with a link ([`super::link`]) its netstack.
    fn command_with(&self, network: &str) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--root")
            .arg(&self.root)
            .args(["--platform=ptrace", network, "--host-uds=create"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null());
        command
    }

    /// Starts container `id` from the bundle in `bundle` (its `config.json`), detached. Its
    /// init's stdout and stderr, and runsc's own complaints, go to `log`.
    pub fn run(
        &self,
        id: &str,
        bundle: &Path,
        root: &RootSpec,
        log: &fs::File,
    ) -> Result<(), RunscError> {
        let mut command = self.command_with(network_of(root));
        command
            .args(["run", "--detach", "--bundle"])
            .arg(bundle)
            .arg(id);
        self.detached("run", id, self.launched(command, root)?, log)
    }

    /// Starts container `id` again from the checkpoint in `image`, detached.
    pub fn restore(
        &self,
        id: &str,
        bundle: &Path,
        image: &Path,
        root: &RootSpec,
        log: &fs::File,
    ) -> Result<(), RunscError> {
        let mut command = self.command_with(network_of(root));
        command
            .args(["restore", "--detach", "--image-path"])
            .arg(image)
            .arg("--bundle")
            .arg(bundle)
            .arg(id);
        self.detached("restore", id, self.launched(command, root)?, log)
    }

    /// `runsc` as `command` says, started by the launch stage once it mounted `root`
    /// ([`crate::gvisor::rootfs::run_launch_stage`]).
    fn launched(&self, command: Command, root: &RootSpec) -> Result<Command, RunscError> {
        let spec = serde_json::to_string(root).map_err(|e| RunscError::Spawn {
            command: "launch",
            id: String::new(),
            source: io::Error::other(e),
        })?;
        let mut launch = Command::new(&self.exe);
        launch
            .args([
                crate::namespace::init::SUBCOMMAND,
                crate::namespace::init::GVISOR_LAUNCH_FLAG,
            ])
            .arg(spec)
            .arg(command.get_program())
            .args(command.get_args())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null());
        Ok(launch)
    }

    fn detached(
        &self,
        what: &'static str,
        id: &str,
        mut command: Command,
        log: &fs::File,
    ) -> Result<(), RunscError> {
        let spawn = |source| RunscError::Spawn {
            command: what,
            id: id.to_owned(),
            source,
        };
        // The container keeps these descriptors as its stdio: a host file (not a pipe,
        // which breaks restores).
        command
            .stdout(log.try_clone().map_err(spawn)?)
            .stderr(log.try_clone().map_err(spawn)?);
        let before = log.metadata().map(|m| m.len()).unwrap_or(0);
        let child = command.spawn().map_err(spawn)?;
        let status = wait(child, what, id)?.0;
        if status.success() {
            return Ok(());
        }
        Err(RunscError::Failed {
            command: what,
            id: id.to_owned(),
            status: status.to_string(),
            stderr: tail_since(log, before),
        })
    }

    /// Sends `signal` (`KILL`, `USR1`…) to the container's init, or to every process of it.
    pub fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), RunscError> {
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, signal]);
        self.call("kill", id, &args).map(drop)
    }

    /// Saves the container's processes and memory into `image` (a directory); the
    /// container stops.
    pub fn checkpoint(&self, id: &str, image: &Path) -> Result<(), RunscError> {
        let image = image.to_string_lossy();
        self.call(
            "checkpoint",
            id,
            &["checkpoint", "--image-path", &image, id],
        )
        .map(drop)
    }

    /// Stops every process of the container where it is (`frozen`) or lets them go on.
    pub fn freeze(&self, id: &str, frozen: bool) -> Result<(), RunscError> {
        let verb = if frozen { "pause" } else { "resume" };
        self.call(verb, id, &[verb, id]).map(drop)
    }

    /// Deletes the container, killing it first if it still runs. Nothing to delete is fine.
    pub fn delete(&self, id: &str) -> Result<(), RunscError> {
        match self.call("delete", id, &["delete", "--force", id]) {
            Err(RunscError::Failed { stderr, .. }) if is_unknown(&stderr) => Ok(()),
            // This runsc's delete of a paused container panics at its very end ("invalid
            // state transition: paused => stopped"), once the container is gone: done, if
            // runsc knows it no more.
            Err(err) if err.says("paused => stopped") => match self.state(id)? {
                None => Ok(()),
                Some(_) => Err(err),
            },
            other => other.map(drop),
        }
    }

    /// The container's status; `None` when runsc knows no such container.
    pub fn state(&self, id: &str) -> Result<Option<Status>, RunscError> {
        let out = match self.call("state", id, &["state", id]) {
            Ok(out) => out,
            Err(RunscError::Failed { stderr, .. }) if is_unknown(&stderr) => return Ok(None),
            Err(err) => return Err(err),
        };
        let state: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| RunscError::Failed {
                command: "state",
                id: id.to_owned(),
                status: "an unreadable answer".to_owned(),
                stderr: e.to_string(),
            })?;
        Ok(match state["status"].as_str() {
            Some("created") => Some(Status::Created),
            Some("running") => Some(Status::Running),
            Some("paused") => Some(Status::Paused),
            _ => Some(Status::Stopped),
        })
    }

    fn call(&self, what: &'static str, id: &str, args: &[&str]) -> Result<String, RunscError> {
        let child = self
            .command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RunscError::Spawn {
                command: what,
                id: id.to_owned(),
                source,
            })?;
        let (status, stdout, stderr) = wait(child, what, id)?;
        if status.success() {
            Ok(stdout)
        } else {
            Err(RunscError::Failed {
                command: what,
                id: id.to_owned(),
                status: status.to_string(),
                stderr: stderr.trim().to_owned(),
            })
        }
    }
}

/// Whether runsc's complaint says the container does not exist.
fn is_unknown(stderr: &str) -> bool {
    stderr.contains("does not exist") || stderr.contains("not found")
}

/// Waits for `child` up to [`COMMAND_TIMEOUT`], killing it when it takes longer; its exit
/// status and what it wrote to its piped stdout and stderr.
/// The network flag for a sandbox whose root is `root`.
fn network_of(root: &RootSpec) -> &'static str {
    if root.network {
        LINKED_NETWORK
    } else {
        NO_NETWORK
    }
}

fn wait(
    mut child: Child,
    what: &'static str,
    id: &str,
) -> Result<(ExitStatus, String, String), RunscError> {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunscError::Hung {
                    command: what,
                    id: id.to_owned(),
                    timeout: COMMAND_TIMEOUT,
                });
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(RunscError::Spawn {
                    command: what,
                    id: id.to_owned(),
                    source,
                });
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok((status, stdout, stderr))
}

/// What `log` gained after offset `from` (at most its last 4 KiB), for an error message.
fn tail_since(log: &fs::File, from: u64) -> String {
    use std::os::unix::fs::FileExt;
    let len = log.metadata().map(|m| m.len()).unwrap_or(from);
    let start = from.max(len.saturating_sub(4096));
    let mut buf = vec![0; usize::try_from(len - start.min(len)).unwrap_or(0)];
    let read = log.read_at(&mut buf, start).unwrap_or(0);
    buf.truncate(read);
    String::from_utf8_lossy(&buf).trim().to_owned()
}
