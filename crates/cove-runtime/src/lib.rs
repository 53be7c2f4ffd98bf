//! Isolation backends for Cove sandboxes. The namespace backend builds each sandbox from
//! Linux namespaces, an overlay root over idmapped template layers, and runs the agent as
//! its PID 1. This is the only crate of Cove that uses `unsafe` (for syscalls without safe
//! wrappers); each use says why it is sound.

pub mod cgroup;
pub mod confine;
pub mod disk;
pub mod egress;
pub mod idmap;
pub mod masks;
pub mod mounts;
pub mod namespace;
pub mod net;
pub mod network;
pub mod process;
pub mod seccomp;
pub mod template;
pub mod userns;

use std::path::{Path, PathBuf};

pub use crate::{
    namespace::NamespaceRuntime,
    template::{Layer, Template},
};

/// What to start.
#[derive(Clone, Debug)]
pub struct SandboxSpec {
    pub id: String,
    /// The sandbox's own directory on the host (created if missing).
    pub dir: PathBuf,
    pub template: Template,
    /// Host uid/gid that is root inside; the sandbox owns the next 65536 ids.
    pub uid_base: u32,
    pub hostname: String,
    /// Arguments for the agent (as for `cove agent`).
    pub agent_args: Vec<String>,
    /// Egress to the internet through user-mode networking; otherwise loopback only.
    pub network: bool,
    /// Memory, CPU and process limits.
    pub limits: cgroup::Limits,
    /// no_new_privs for every process of the sandbox (breaks setuid programs like sudo).
    pub no_new_privs: bool,
}

/// A started sandbox: its PID 1 on the host (with start time, against pid reuse) and the
/// agent's socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningSandbox {
    pub id: String,
    pub pid: u32,
    pub start_time: u64,
    pub socket: PathBuf,
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
}

/// An isolation backend. Calls block; async callers run them on a blocking thread.
pub trait Runtime: Send + Sync + 'static {
    /// Starts a sandbox and returns once its agent listens.
    fn create(&self, spec: &SandboxSpec) -> Result<RunningSandbox, RuntimeError>;
    /// Whether the sandbox's PID 1 still runs.
    fn is_alive(&self, sandbox: &RunningSandbox) -> bool;
    /// Kills every process of the sandbox and waits for them to be gone.
    fn kill(&self, sandbox: &RunningSandbox) -> Result<(), RuntimeError>;
    /// Deletes a dead sandbox's directory (its writable layer).
    fn remove(&self, dir: &Path) -> Result<(), RuntimeError>;
    /// What the sandbox uses now, when the backend can tell.
    fn usage(&self, id: &str) -> Option<cgroup::Usage>;
    /// Kills whatever still runs of sandbox `id` without knowing its PID 1: a sandbox whose
    /// creation was cut short (the server died mid-create).
    fn kill_leftovers(&self, id: &str) -> Result<(), RuntimeError>;
    /// Changes a running sandbox's limits.
    fn set_limits(&self, id: &str, limits: cgroup::Limits) -> Result<(), RuntimeError>;
    /// Removes what the backend set up for sandboxes in general, if none is left.
    fn shutdown(&self);
}
