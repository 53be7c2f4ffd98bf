//! Isolation backends for Cove sandboxes, behind one trait ([`Runtime`]). The namespace
//! backend builds each sandbox from Linux namespaces, an overlay root over idmapped template
//! layers, and runs the agent as its PID 1; the gVisor backend ([`gvisor`]) runs it as the
//! init of a runsc container instead. This is the only crate of Cove that uses
//! `unsafe` (for syscalls without safe wrappers); each use says why it is sound.
//!
//! What the server knows of a sandbox is backend-neutral: the [`SandboxSpec`] it asks for, the
//! opaque [`Handle`] it stores (and hands back after a restart), the [`AgentEndpoint`] it
//! connects to, and [`Limits`] / [`Usage`]. Everything else — directories, uid ranges,
//! processes, sockets — belongs to the backend.

pub mod backends;
pub mod cgroup;
pub mod confine;
pub mod confined_open;
pub mod disk;
pub mod egress;
pub mod endpoint;
pub mod gvisor;
pub mod idmap;
pub mod inherited;
pub mod layer;
pub mod masks;
pub mod mounts;
pub mod namespace;
pub mod net;
pub mod network;
pub mod process;
pub mod requirements;
pub mod seccomp;
pub mod spread;
pub mod stage;
pub mod template;
pub mod uid_ranges;
pub mod userns;
pub mod volume;
pub mod volume_files;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use crate::{
    cgroup::{Limits, Usage},
    gvisor::GvisorRuntime,
    namespace::NamespaceRuntime,
    template::{Layer, Template},
};

/// What the agent inside a sandbox is told at start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSettings {
    /// The token every request to the agent must carry.
    pub access_token: String,
    /// The user calls run as when they name none.
    pub default_user: String,
    /// The working directory of processes that name none.
    pub default_workdir: PathBuf,
    /// Environment variables of every process the agent starts.
    pub env: BTreeMap<String, String>,
    /// The loopback port the code interpreter listens on, if it runs.
    pub code_interpreter_port: Option<u16>,
    /// Start the default Python kernel at once, before any code asks for it (warm sandboxes).
    #[serde(default)]
    pub warm_kernel: bool,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct SandboxSpec {
    pub id: String,
    pub template: Template,
    pub hostname: String,
    pub agent: AgentSettings,
    /// Egress to the internet through user-mode networking; otherwise loopback only.
    pub network: bool,
    /// Memory, CPU and process limits.
    pub limits: Limits,
    /// Volumes mounted into it.
    pub volumes: Vec<volume::VolumeMount>,
    /// The backend to run it on, by name (see [`backends::Backends`]); `None`: the
    /// server's default.
    pub runtime: Option<String>,
}

/// What a backend needs to find a sandbox again, stored by the server as it is (JSON) and
/// handed back after a restart. Only the backend that made it reads what is inside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    pub id: String,
    /// The backend that made it.
    pub backend: String,
    pub state: serde_json::Value,
}

/// How the server reaches a sandbox's agent. Connect through [`AgentEndpoint::resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentEndpoint {
    /// A Unix socket in a directory only host root can write.
    Unix(PathBuf),
    /// A Unix socket in a host directory the sandbox can write (root inside a gVisor sandbox
    /// makes files there): whatever sits at the path may have been put there by the sandbox,
    /// so it is never connected to by name. It is opened without following a symlink,
    /// must be a socket, and is connected to through that open descriptor.
    UnixInSandbox(PathBuf),
}

/// A sandbox that runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    pub handle: Handle,
    pub agent: AgentEndpoint,
}

/// What a paused sandbox kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PauseMode {
    /// Its processes are stopped where they are, their memory kept: resuming continues them.
    Memory,
    /// Its processes ended and its memory was freed; only its files are kept: resuming
    /// starts it again on them.
    Filesystem,
}

/// A sandbox found again after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovered {
    Running(Started),
    /// Paused, keeping what `PauseMode` says.
    Paused(Started, PauseMode),
}

/// What a look at a sandbox found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// Its processes are gone; why, when the backend can tell.
    Ended(EndReason),
}

/// Why a sandbox ended without being killed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Its memory limit was reached and the kernel killed its agent.
    OutOfMemory,
    /// Its agent (PID 1) exited or was killed from inside.
    AgentExited,
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EndReason::OutOfMemory => "it ran out of memory and its agent was killed",
            EndReason::AgentExited => "its agent exited",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("sandbox {id} did not start: {reason}")]
    Start { id: String, reason: String },
    #[error("every uid range is in use")]
    NoUidRange,
    #[error("the server's disk is full ({} MiB free): no new sandbox until space returns", .free_bytes >> 20)]
    HostDiskFull { free_bytes: u64 },
    #[error("sandbox {id} belongs to another backend ({backend})")]
    ForeignHandle { id: String, backend: String },
    /// The backend cannot do this (another backend may).
    #[error("the {backend} backend cannot {what}")]
    Unsupported {
        backend: &'static str,
        what: &'static str,
    },
    #[error("sandbox {id} is {state}")]
    WrongState { id: String, state: &'static str },
    /// What was asked cannot be done while the sandbox is as it is now (its own doing).
    #[error("sandbox {id}: {reason}")]
    NotNow { id: String, reason: String },
}

impl RuntimeError {
    fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| RuntimeError::Io { what, source }
    }
}

/// An isolation backend. Calls block; async callers run them on a blocking thread.
pub trait Runtime: Send + Sync + 'static {
    /// The backend's name, recorded in every [`Handle`] it makes.
    fn name(&self) -> &'static str;
    /// The backends a sandbox can be created on ([`SandboxSpec::runtime`]), the default
    /// first: this one alone, unless it is several ([`backends::Backends`]).
    fn backends(&self) -> Vec<&'static str> {
        vec![self.name()]
    }
    /// Starts a sandbox and returns once its agent listens.
    fn create(&self, spec: &SandboxSpec) -> Result<Started, RuntimeError>;
    /// After a server restart: the sandbox `handle` names, running or paused, if it is
    /// still there. A transition the previous server left half done is finished or undone
    /// here, so the sandbox is in one clear state.
    fn recover(&self, handle: &Handle) -> Result<Option<Recovered>, RuntimeError>;
    /// Whether the sandbox still runs. An error means it could not be looked at, which
    /// says nothing about whether it runs.
    fn liveness(&self, handle: &Handle) -> Result<Liveness, RuntimeError>;
    /// Kills every process of the sandbox and waits for them to be gone.
    fn kill(&self, handle: &Handle) -> Result<(), RuntimeError>;
    /// Kills whatever still runs of sandbox `id` without a handle: a sandbox whose creation
    /// was cut short (the server died mid-create).
    fn kill_leftovers(&self, id: &str) -> Result<(), RuntimeError>;
    /// Deletes a dead sandbox's files (its writable layer, its log).
    fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// What the sandbox uses now.
    fn usage(&self, handle: &Handle) -> Result<Usage, RuntimeError>;
    /// Changes a running sandbox's limits.
    fn set_limits(&self, handle: &Handle, limits: Limits) -> Result<(), RuntimeError>;
    /// The sandbox's log (what its setup and agent wrote), oldest first.
    fn log(&self, id: &str) -> Result<String, RuntimeError>;
    /// Removes what the backend set up for sandboxes in general, if none is left.
    fn shutdown(&self);

    /// Pauses a running sandbox, keeping what `mode` says; returns its handle while paused.
    fn pause(&self, handle: &Handle, mode: PauseMode) -> Result<Handle, RuntimeError> {
        let _ = (handle, mode);
        Err(RuntimeError::Unsupported {
            backend: self.name(),
            what: "pause sandboxes",
        })
    }

    /// Resumes a paused sandbox. `spec` is what it was created with (its limits and agent
    /// settings as they are now); a sandbox paused without memory starts again from it.
    fn resume(&self, handle: &Handle, spec: &SandboxSpec) -> Result<Started, RuntimeError> {
        let _ = (handle, spec);
        Err(RuntimeError::Unsupported {
            backend: self.name(),
            what: "resume sandboxes",
        })
    }

    /// Freezes the files of a running or paused sandbox made from `template` into new
    /// read-only layers under `into` (a directory that does not exist yet), and returns the
    /// template a sandbox starts from to find them as they are now: `template` with them on
    /// top. Processes and memory are not part of it.
    fn snapshot(
        &self,
        handle: &Handle,
        template: &Template,
        into: &Path,
    ) -> Result<Template, RuntimeError> {
        let _ = (handle, template, into);
        Err(RuntimeError::Unsupported {
            backend: self.name(),
            what: "snapshot sandboxes",
        })
    }

    /// Like [`Runtime::snapshot`], and keeps the processes and their memory too: the
    /// template returned carries a checkpoint image under `into` ([`Template::memory`]), and
    /// a sandbox made from it starts with those processes running. A running sandbox stops
    /// for the checkpoint and runs on from it. [`RuntimeError::NotNow`] when the sandbox
    /// holds what cannot be checkpointed (it runs on untouched).
    fn snapshot_memory(
        &self,
        handle: &Handle,
        template: &Template,
        into: &Path,
    ) -> Result<Template, RuntimeError> {
        let _ = (handle, template, into);
        Err(RuntimeError::Unsupported {
            backend: self.name(),
            what: "keep memory in snapshots",
        })
    }

    /// Gives sandbox `id` its own egress policy (`None` or an empty one: the server's rules
    /// alone). Set before [`Runtime::create`], it holds from the sandbox's first connection;
    /// set on a running sandbox, from its next one. It is kept through pause and resume
    /// until the sandbox is killed; a restarted server sets it again.
    fn set_egress_policy(
        &self,
        id: &str,
        policy: Option<&egress::SandboxPolicy>,
    ) -> Result<(), RuntimeError> {
        let _ = id;
        match policy.filter(|p| !p.is_empty()) {
            None => Ok(()),
            Some(_) => Err(RuntimeError::Unsupported {
                backend: self.name(),
                what: "apply egress policies",
            }),
        }
    }

    /// The certificate of the CA its egress proxies sign intercepted HTTPS connections under
    /// (E2B's `rules`), PEM: what sandboxes with rules must trust. None: no interception.
    fn egress_ca_pem(&self) -> Option<String> {
        None
    }

    /// The connections of sandbox `id` its egress filter refused since the last call, by
    /// what refused them, each also told in the sandbox's log (counted for sandboxes with a
    /// policy of their own).
    fn take_egress_refusals(&self, id: &str) -> Vec<(egress::Refusal, u64)> {
        let _ = id;
        Vec::new()
    }

    /// Whether sandbox `id` is one of this backend's (its files are here).
    fn holds(&self, id: &str) -> bool {
        let _ = id;
        false
    }

    /// Whether [`Runtime::reroot`] works here.
    fn can_reroot(&self) -> bool {
        false
    }

    /// Gives a running sandbox in which nothing but its agent ran (a warm one) a new root
    /// filesystem made of `template`'s layers on a fresh writable layer, its processes,
    /// namespaces and handle kept: a fork starts so from a warm sandbox of its source's
    /// template. Whatever the old root held is gone.
    fn reroot(&self, handle: &Handle, template: &Template) -> Result<(), RuntimeError> {
        let _ = (handle, template);
        Err(RuntimeError::Unsupported {
            backend: self.name(),
            what: "give sandboxes a new root",
        })
    }
}
