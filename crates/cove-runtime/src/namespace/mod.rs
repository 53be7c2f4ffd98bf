//! The namespace backend: each sandbox gets its own user, mount, PID, IPC, UTS, network and
//! cgroup namespaces, an overlay root over idmapped template layers, and the agent as PID 1.
//!
//! Each sandbox has a directory `<root>/<id>` that only host root writes and that nothing
//! inside the sandbox can see: its disk image, its log, the agent's listening socket and
//! the backend's own record of it ([`state`]). Pausing, resuming and snapshots are in
//! [`pause`] and [`snapshot`].

pub mod init;
pub mod init_binary;
mod pause;
pub mod reroot;
mod snapshot;
pub mod spawner;
pub(crate) mod state;
mod teardown;

use std::{
    fs,
    io::{self, Read},
    os::{
        fd::{AsFd, BorrowedFd},
        unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use self::{
    init::{InitSpec, Report, SandboxDirs},
    state::State,
    teardown::Teardowns,
};
use crate::{
    AgentEndpoint, EndReason, Handle, Limits, Liveness, PauseMode, Recovered, Runtime,
    RuntimeError, SandboxSpec, Started, Template,
    cgroup::{Hierarchy, Usage},
    disk::{ImagePool, Preparation},
    egress::{EgressConfig, EgressError, EgressFilter, Refusal, SandboxPolicy},
    process,
    uid_ranges::{LEASE_DIR, Slots},
    userns,
};

/// How long to wait for a killed sandbox's PID 1 to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(30);
/// The backend's name in handles.
const NAME: &str = "namespace";
/// How often a create tries another uid range when other servers hold the ones it picked.
const SLOT_ATTEMPTS: usize = 16;
/// The most of a sandbox's log that is read back (the agent keeps its part smaller).
const LOG_READ_LIMIT: u64 = 16 << 20;
/// Free space the sandboxes' filesystem must have for another sandbox: its disk image is
/// sparse and takes space only as it is written, so this is no reservation, only a refusal
/// to start sandboxes on a disk that is already full.
const MIN_FREE_BYTES: u64 = 64 << 20;

/// Where the markers of kills still being finished go: beside the sandboxes' directories
/// (host root's, as they are), not among them.
fn teardown_dir(root: &Path) -> PathBuf {
    const NAME: &str = "sandbox-teardowns";
    root.parent()
        .map_or_else(|| root.join(NAME), |parent| parent.join(NAME))
}

/// The environment of a setup stage: nothing of the server's but how to log.
fn stage_env() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let level = std::env::var_os("COVE_LOG").unwrap_or_else(|| "info".into());
    let mut env = vec![("COVE_LOG".into(), level)];
    if let Some(agent) = std::env::var_os(init::AGENT_LOG_ENV) {
        env.push((init::AGENT_LOG_ENV.into(), agent));
    }
    env
}

/// Runs sandboxes in Linux namespaces, using the `cove` binary at `exe` for the stages.
#[derive(Clone, Debug)]
pub struct NamespaceRuntime {
    exe: PathBuf,
    /// What sandboxes' PID 1 runs when not `exe`: `cove-init` beside it ([`init_binary`]).
    init_exe: Option<init_binary::InitBinary>,
    /// Where sandboxes' directories live.
    root: PathBuf,
    slots: Arc<Slots>,
    /// The user-mode network stack for sandboxes with egress, when installed.
    network_helper: Option<PathBuf>,
    /// Where sandboxes' cgroups go; without one there are no resource limits.
    cgroups: Option<Hierarchy>,
    /// Formatted disk images (the disk quota); without it the writable layer is a plain
    /// directory on the host's disk.
    disks: Option<ImagePool>,
    /// What network helpers may not connect to, or why there is no filter (then sandboxes
    /// cannot have internet access).
    egress: Result<Arc<EgressFilter>, String>,
    /// no_new_privs for every process of every sandbox (breaks setuid programs like sudo).
    no_new_privs: bool,
    /// The size each sandbox's agent keeps its log under, in bytes.
    log_cap: u64,
    /// Sandboxes' PID 1s, for [`Runtime::liveness`].
    exits: Arc<process::ExitWatch>,
    /// Kills whose cgroups are still being removed.
    teardowns: Arc<Teardowns>,
    /// What forks setup and network stages, started with the first one (none when it
    /// cannot start: then each stage is exec'd).
    spawner: Arc<std::sync::OnceLock<Option<spawner::Spawner>>>,
}

impl NamespaceRuntime {
    /// A runtime whose sandboxes live under `root`, built with the `cove` binary at `exe`,
    /// and whose sandboxes with internet access are filtered as `egress` says.
    pub fn new(exe: impl Into<PathBuf>, root: impl Into<PathBuf>, egress: EgressConfig) -> Self {
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
        .map(Arc::new)
        .map_err(|err| {
            let reason = crate::egress::error_chain(&err);
            tracing::error!(err = %reason, "sandboxes with internet access cannot be created: their egress filter (eBPF on cgroup v2) is unavailable");
            reason
        });
        let root: PathBuf = root.into();
        let teardowns = Arc::new(Teardowns::new(teardown_dir(&root)));
        let exe: PathBuf = exe.into();
        let init_exe = match init_binary::beside(&exe) {
            Ok(Some(binary)) => Some(binary),
            Ok(None) => {
                tracing::info!(
                    "no {} beside {}: sandboxes' PID 1 runs cove itself (a slower start)",
                    init_binary::NAME,
                    exe.display()
                );
                None
            }
            Err(reason) => {
                tracing::warn!(%reason, "{} is not used: sandboxes' PID 1 runs cove itself", init_binary::NAME);
                None
            }
        };
        let runtime = Self {
            exe,
            init_exe,
            root,
            slots: Arc::new(Slots::new(LEASE_DIR, userns::MAX_SLOTS)),
            network_helper: crate::network::find_helper(),
            cgroups,
            disks: None,
            egress,
            no_new_privs: false,
            log_cap: init::DEFAULT_LOG_CAP,
            exits: Arc::default(),
            teardowns,
            spawner: Arc::default(),
        };
        // What a server that stopped did not finish removing: its sandboxes are gone.
        for id in runtime.teardowns.unfinished() {
            if runtime.destroy_cgroup(&id).is_ok() {
                runtime.teardowns.done(&id);
            }
        }
        runtime
    }

    /// Gives every sandbox a disk of `size` bytes, from images prepared under `pool_dir`.
    pub fn with_disk_quota(mut self, pool_dir: PathBuf, size: u64) -> io::Result<Self> {
        self.disks = Some(ImagePool::start(
            pool_dir,
            size,
            DISK_POOL_SIZE,
            Preparation::Mounted,
        )?);
        Ok(self)
    }

    /// Sets no_new_privs in every sandbox (setuid programs such as `sudo` stop working).
    pub fn with_no_new_privs(mut self, on: bool) -> Self {
        self.no_new_privs = on;
        self
    }

    /// Keeps each sandbox's log under `bytes` (its agent drops the older half when full).
    pub fn with_log_cap(mut self, bytes: u64) -> Self {
        self.log_cap = bytes;
        self
    }

    fn dirs(&self, id: &str) -> SandboxDirs {
        SandboxDirs::new(self.root.join(id))
    }

    /// What the handle says of its sandbox.
    fn state(&self, handle: &Handle) -> Result<State, RuntimeError> {
        let foreign = || RuntimeError::ForeignHandle {
            id: handle.id.clone(),
            backend: handle.backend.clone(),
        };
        if handle.backend != NAME {
            return Err(foreign());
        }
        serde_json::from_value(handle.state.clone()).map_err(|_| foreign())
    }

    /// What the sandbox's directory says of it, which is newer than a handle stored before
    /// a transition (or the handle's word, for a sandbox that keeps no file).
    fn current(&self, handle: &Handle) -> Result<State, RuntimeError> {
        let from_handle = self.state(handle)?;
        Ok(state::load(&self.dirs(&handle.id).root)
            .map_err(RuntimeError::io("read the sandbox's state"))?
            .unwrap_or(from_handle))
    }

    /// Records `state` in the sandbox's directory.
    fn save(&self, id: &str, state: &State) -> Result<(), RuntimeError> {
        state::save(&self.dirs(id).root, state)
            .map_err(RuntimeError::io("save the sandbox's state"))
    }

    fn handle(&self, id: &str, state: State) -> Handle {
        Handle {
            id: id.to_owned(),
            backend: NAME.to_owned(),
            state: serde_json::to_value(state).expect("the state is plain numbers"),
        }
    }

    fn started(&self, id: &str, state: State) -> Started {
        Started {
            handle: self.handle(id, state),
            agent: AgentEndpoint::Unix(self.dirs(id).socket()),
        }
    }
}

/// Formatted disk images kept ready.
const DISK_POOL_SIZE: usize = 4;

/// A sandbox's own directory: only searchable by others (PID 1 passes through it).
const SANDBOX_DIR_MODE: u32 = 0o711;

/// Makes `path` (and its parents) with `mode`, whatever the umask, or gives an existing one
/// that mode.
fn make_dir_with_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

impl NamespaceRuntime {
    /// What gVisor sandboxes beside these reach the internet with: the same helper, egress
    /// filter and uid ranges.
    pub fn internet(&self) -> crate::gvisor::link::Internet {
        crate::gvisor::link::Internet {
            helper: self.network_helper.clone(),
            filter: self.egress.clone(),
            slots: self.slots.clone(),
        }
    }

    /// The egress filter, or why sandboxes cannot have internet access on this host.
    fn egress_filter(&self) -> Result<&EgressFilter, String> {
        self.egress
            .as_deref()
            .map_err(|reason| crate::network::unfiltered(reason))
    }

    /// What forks this runtime's stages: started with the first, none when it cannot start.
    fn spawner(&self) -> Option<&spawner::Spawner> {
        self.spawner
            .get_or_init(|| match spawner::Spawner::start(&self.exe, &stage_env()) {
                Ok(spawner) => Some(spawner),
                Err(err) => {
                    tracing::warn!(%err, "no stage spawner: every stage is exec'd");
                    None
                }
            })
            .as_ref()
    }

    fn connect_network(&self, id: &str, pid: u32, uid_base: u32) -> io::Result<()> {
        let helper = self
            .network_helper
            .as_deref()
            .ok_or_else(|| io::Error::other(crate::network::NO_HELPER))?;
        // The helper joins the sandbox's cgroups (limits, and its end with the sandbox) and
        // the egress cgroup, whose filter refuses the host and its surroundings.
        let joins = self
            .cgroups
            .as_ref()
            .map(|c| c.helper_join_files(id))
            .unwrap_or_default();
        let filter = self.egress_filter().map_err(io::Error::other)?;
        let egress_dir = self
            .cgroups
            .as_ref()
            .and_then(|c| c.egress_dir(id))
            .ok_or_else(|| io::Error::other("the sandbox has no egress cgroup"))?;
        filter
            .attach_sandbox(id, &egress_dir)
            .map_err(|e| io::Error::other(crate::egress::error_chain(&e)))?;
        let log = self.dirs(id).log();
        let connection = crate::network::Connection {
            helper,
            pid,
            uid_base,
            log: &log,
            cgroup_joins: &joins,
        };
        crate::network::connect(&self.exe, self.spawner(), &connection)
    }

    /// The sandbox's directory, in `root` ([`Self::make_parent`], made first): only
    /// searchable, since PID 1 (root of the sandbox's user namespace, no one on the host)
    /// reaches its root filesystem through it.
    fn make_dir(&self, dirs: &SandboxDirs) -> Result<(), RuntimeError> {
        make_dir_with_mode(&dirs.root, SANDBOX_DIR_MODE)
            .map_err(RuntimeError::io("create the sandbox directory"))
    }

    /// The directory of all sandboxes' directories, host root's alone (closed to everyone
    /// else).
    fn make_parent(&self) -> Result<(), RuntimeError> {
        make_dir_with_mode(&self.root, 0o700)
            .map(|()| crate::spread::spread_subdirectories(&self.root))
            .map_err(RuntimeError::io("create the sandbox directory"))
    }

    /// Refuses new sandboxes while the filesystem their disks live on is (nearly) full.
    fn check_space(&self) -> Result<(), RuntimeError> {
        let stat = rustix::fs::statvfs(&self.root)
            .map_err(|e| RuntimeError::io("measure the free disk space")(e.into()))?;
        let free_bytes = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free_bytes < MIN_FREE_BYTES {
            return Err(RuntimeError::HostDiskFull { free_bytes });
        }
        Ok(())
    }

    /// Runs the setup stage in uid range `slot` (handing it the disk's filesystem when it is
    /// `mounted` already) and, when asked, connects the network. `None` when another
    /// server's sandbox holds the range (nothing was started).
    fn start(
        &self,
        spec: &SandboxSpec,
        slot: u32,
        mounted: Option<BorrowedFd<'_>>,
    ) -> Result<Option<Started>, RuntimeError> {
        let dirs = self.dirs(&spec.id);
        // Read and written by host root only; the agent keeps its part bounded.
        let log = fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dirs.log())
            .map_err(RuntimeError::io("open the sandbox log"))?;
        let init = InitSpec {
            id: spec.id.clone(),
            dir: dirs.root.clone(),
            template: spec.template.clone(),
            slot,
            lease_dir: self.slots.dir().to_owned(),
            hostname: spec.hostname.clone(),
            agent: spec.agent.clone(),
            cgroups: self.cgroups.clone(),
            no_new_privs: self.no_new_privs,
            log_cap: self.log_cap,
            volumes: spec.volumes.clone(),
            init_exe: self.init_exe.clone(),
            disk_mounted: mounted.is_some(),
        };
        let mut spec_line = serde_json::to_vec(&init).map_err(|e| RuntimeError::Io {
            what: "encode the sandbox spec",
            source: io::Error::other(e),
        })?;
        spec_line.push(b'\n');
        // The setup joins the sandbox's cgroups itself before anything else (see
        // `init::setup`); the spec is all it needs, and it is in the stage's stdin before
        // the stage starts.
        let mut child = spawner::Setup::start(
            &self.exe,
            self.spawner(),
            &stage_env(),
            log,
            mounted,
            &spec_line,
        )
        .map_err(RuntimeError::io("start the sandbox setup"))?;
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        let status = child
            .wait()
            .map_err(RuntimeError::io("wait for the sandbox setup"))?;
        let failed = |reason: String| RuntimeError::Start {
            id: spec.id.clone(),
            reason,
        };
        let pid = match serde_json::from_str::<Report>(out.trim()) {
            Ok(Report::Started { pid }) => pid,
            Ok(Report::SlotTaken) => return Ok(None),
            Ok(Report::Failed { error }) => return Err(failed(error)),
            Err(_) => {
                return Err(failed(format!(
                    "the setup exited with {status} without a report (see {})",
                    dirs.log().display()
                )));
            }
        };
        // Read from the host's /proc: the setup stage no longer sees host pids.
        let start_time = process::start_time(pid).map_err(RuntimeError::io(
            "read the start time of the sandbox's PID 1",
        ))?;
        if spec.network
            && let Err(err) = self.connect_network(&spec.id, pid, userns::base_for_slot(slot))
        {
            let _ = process::kill_and_wait(pid, start_time, KILL_TIMEOUT);
            return Err(failed(err.to_string()));
        }
        let state = State {
            pid,
            start_time,
            slot,
            network: spec.network,
            paused: None,
        };
        if let Err(err) = self.save(&spec.id, &state) {
            let _ = process::kill_and_wait(pid, start_time, KILL_TIMEOUT);
            return Err(err);
        }
        Ok(Some(self.started(&spec.id, state)))
    }

    /// Starts the sandbox in a free uid range, trying another when another server took the
    /// one picked in the meantime.
    fn start_in_free_range(
        &self,
        spec: &SandboxSpec,
        mounted: Option<BorrowedFd<'_>>,
    ) -> Result<Started, RuntimeError> {
        for _ in 0..SLOT_ATTEMPTS {
            let slot = self.slots.reserve().ok_or(RuntimeError::NoUidRange)?;
            match self.start(spec, slot, mounted) {
                Ok(Some(started)) => return Ok(started),
                Ok(None) => self.slots.lost(slot),
                Err(err) => {
                    self.slots.release(slot);
                    return Err(err);
                }
            }
        }
        Err(RuntimeError::NoUidRange)
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
        change: impl FnOnce(&Hierarchy) -> Result<(), crate::cgroup::CgroupError>,
    ) -> Result<(), RuntimeError> {
        match &self.cgroups {
            Some(cgroups) => change(cgroups).map_err(|e| RuntimeError::Io {
                what,
                source: io::Error::other(e),
            }),
            None => Ok(()),
        }
    }
}

impl Runtime for NamespaceRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create(&self, spec: &SandboxSpec) -> Result<Started, RuntimeError> {
        if spec.template.memory.is_some() {
            return Err(RuntimeError::Unsupported {
                backend: NAME,
                what: "start sandboxes from a memory snapshot (gVisor can)",
            });
        }
        self.check_egress(spec)?;
        self.teardowns.wait_for(&spec.id);
        let dirs = self.dirs(&spec.id);
        self.make_parent()?;
        self.check_space()?;
        // A pool image comes in a directory of its own, which becomes the sandbox's: neither
        // a directory made nor one removed on the create's path (on a host filesystem
        // without a journal each took up to 1–2 ms).
        let taken = match &self.disks {
            Some(disks) if !dirs.root.exists() => disks
                .take_dir(&dirs.root, SANDBOX_DIR_MODE)
                .map_err(RuntimeError::io("prepare the sandbox's disk"))?,
            _ => None,
        };
        let mounted = match taken {
            Some(taken) => taken.mounted,
            None => {
                self.make_dir(&dirs)?;
                match &self.disks {
                    Some(disks) if !dirs.disk_image().exists() => disks
                        .take(&dirs.disk_image())
                        .map_err(RuntimeError::io("prepare the sandbox's disk"))?,
                    _ => None,
                }
            }
        };
        self.launch(spec, mounted.as_ref().map(AsFd::as_fd))
    }

    fn recover(&self, handle: &Handle) -> Result<Option<Recovered>, RuntimeError> {
        self.recover_state(handle)
    }

    fn liveness(&self, handle: &Handle) -> Result<Liveness, RuntimeError> {
        let state = self.state(handle)?;
        if state.paused == Some(PauseMode::Filesystem) {
            // Nothing runs; it lives on as long as its files.
            self.exits.forget(&handle.id);
            return Ok(if self.dirs(&handle.id).root.is_dir() {
                Liveness::Running
            } else {
                Liveness::Ended(EndReason::AgentExited)
            });
        }
        let alive = self
            .exits
            .is_alive(&handle.id, state.pid, state.start_time)
            .map_err(RuntimeError::io("look at the sandbox's PID 1"))?;
        if alive {
            return Ok(Liveness::Running);
        }
        let out_of_memory = self
            .cgroups
            .as_ref()
            .and_then(|c| c.oom_kills(&handle.id).ok())
            .is_some_and(|kills| kills > 0);
        Ok(Liveness::Ended(if out_of_memory {
            EndReason::OutOfMemory
        } else {
            EndReason::AgentExited
        }))
    }

    fn kill(&self, handle: &Handle) -> Result<(), RuntimeError> {
        self.exits.forget(&handle.id);
        // Refusals not yet told go to the log before the sandbox's counters go.
        let _ = self.take_egress_refusals(&handle.id);
        let state = self.current(handle)?;
        let running = state.paused != Some(PauseMode::Filesystem);
        if state.network && running {
            // Everything is killed now, the network helper too; its cgroups go once the
            // helper's exit is through (see `teardown`).
            if let Some(cgroups) = &self.cgroups {
                cgroups.kill(&handle.id, KILL_TIMEOUT);
            }
            self.stop_pid1(&state)?;
            let (runtime, id) = (self.clone(), handle.id.clone());
            self.teardowns.defer(&handle.id, move || {
                let removed = runtime.destroy_cgroup(&id);
                if let Err(err) = &removed {
                    tracing::warn!(%err, id, "cannot remove a killed sandbox's cgroups");
                }
                if let Ok(filter) = &runtime.egress {
                    filter.forget(&id);
                }
                removed.is_ok()
            });
            return Ok(());
        }
        if let Ok(filter) = &self.egress {
            filter.forget(&handle.id);
        }
        // Killing the whole cgroup is faster than waiting for the PID namespace to empty
        // under load (a fork bomb, memory pressure).
        self.destroy_cgroup(&handle.id)?;
        if running {
            self.stop_pid1(&state)?;
        }
        Ok(())
    }

    fn kill_leftovers(&self, id: &str) -> Result<(), RuntimeError> {
        if let Ok(filter) = &self.egress {
            filter.forget(id);
        }
        self.destroy_cgroup(id)
    }

    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        // Everything in the directory is host root's: no link in it was made by a sandbox.
        match fs::remove_dir_all(self.dirs(id).root) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RuntimeError::Io {
                what: "remove the sandbox's files",
                source,
            }),
        }
    }

    fn usage(&self, handle: &Handle) -> Result<Usage, RuntimeError> {
        let cgroups = self.cgroups.as_ref().ok_or_else(|| RuntimeError::Io {
            what: "read the sandbox's usage",
            source: io::Error::new(io::ErrorKind::Unsupported, "sandboxes have no cgroups"),
        })?;
        cgroups.usage(&handle.id).map_err(|e| RuntimeError::Io {
            what: "read the sandbox's usage",
            source: io::Error::other(e),
        })
    }

    fn set_limits(&self, handle: &Handle, limits: Limits) -> Result<(), RuntimeError> {
        self.on_cgroups("change the sandbox's limits", |c| {
            c.set_limits(&handle.id, limits)
        })
    }

    fn set_egress_policy(
        &self,
        id: &str,
        policy: Option<&SandboxPolicy>,
    ) -> Result<(), RuntimeError> {
        // Without a filter no sandbox has internet access: nothing to narrow.
        match &self.egress {
            Ok(filter) => filter.set_sandbox_policy(self.cgroups.as_ref(), id, policy),
            Err(_) => Ok(()),
        }
    }

    fn egress_ca_pem(&self) -> Option<String> {
        let filter = self.egress.as_ref().ok()?;
        filter.interception_ca_pem().map(str::to_owned)
    }

    fn take_egress_refusals(&self, id: &str) -> Vec<(Refusal, u64)> {
        match &self.egress {
            Ok(filter) => filter.take_refusals_into_log(id, &self.dirs(id).log()),
            Err(_) => Vec::new(),
        }
    }

    fn holds(&self, id: &str) -> bool {
        self.dirs(id).root.is_dir()
    }

    fn log(&self, id: &str) -> Result<String, RuntimeError> {
        read_log(&self.dirs(id).log())
    }

    fn shutdown(&self) {
        self.teardowns.wait();
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove_parents_if_empty();
        }
        if let Some(disks) = &self.disks {
            disks.stop();
        }
    }

    fn pause(&self, handle: &Handle, mode: PauseMode) -> Result<Handle, RuntimeError> {
        self.pause_sandbox(handle, mode)
    }

    fn resume(&self, handle: &Handle, spec: &SandboxSpec) -> Result<Started, RuntimeError> {
        self.teardowns.wait_for(&spec.id);
        self.resume_sandbox(handle, spec)
    }

    fn snapshot(
        &self,
        handle: &Handle,
        template: &Template,
        into: &Path,
    ) -> Result<Template, RuntimeError> {
        self.snapshot_sandbox(handle, template, into)
    }

    fn can_reroot(&self) -> bool {
        true
    }

    fn reroot(&self, handle: &Handle, template: &Template) -> Result<(), RuntimeError> {
        let state = self.current(handle)?;
        if state.paused.is_some() {
            return Err(RuntimeError::WrongState {
                id: handle.id.clone(),
                state: "paused",
            });
        }
        let spec = reroot::RerootSpec {
            dir: self.dirs(&handle.id).root,
            template: template.clone(),
            slot: state.slot,
            pid: state.pid,
            start_time: state.start_time,
        };
        reroot::reroot(&self.exe, &spec).map_err(|source| RuntimeError::Io {
            what: "give the sandbox its new root",
            source,
        })
    }
}

/// The newest part of the sandbox log at `path` (empty when there is none); shared with
/// the gVisor backend, whose logs are written the same way.
pub(crate) fn read_log(path: &Path) -> Result<String, RuntimeError> {
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(source) => {
            return Err(RuntimeError::Io {
                what: "read the sandbox's log",
                source,
            });
        }
    };
    // Only the newest part of a log that grew past what is read back.
    let len = file
        .metadata()
        .map_err(RuntimeError::io("read the sandbox's log"))?
        .len();
    let mut file = file;
    std::io::Seek::seek(
        &mut file,
        io::SeekFrom::Start(len.saturating_sub(LOG_READ_LIMIT)),
    )
    .map_err(RuntimeError::io("read the sandbox's log"))?;
    let mut raw = Vec::new();
    file.take(LOG_READ_LIMIT)
        .read_to_end(&mut raw)
        .map_err(RuntimeError::io("read the sandbox's log"))?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

impl NamespaceRuntime {
    /// Before anything starts: never a sandbox whose egress is unfiltered.
    fn check_egress(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        if spec.network {
            self.egress_filter().map_err(|reason| RuntimeError::Start {
                id: spec.id.clone(),
                reason,
            })?;
        }
        Ok(())
    }

    /// Starts the sandbox `spec` describes in its directory (made already, its disk with
    /// it, and that disk's filesystem `mounted` detached when the pool had it so), in a
    /// cgroup of its own.
    fn launch(
        &self,
        spec: &SandboxSpec,
        mounted: Option<BorrowedFd<'_>>,
    ) -> Result<Started, RuntimeError> {
        if let Some(cgroups) = &self.cgroups {
            cgroups
                .create(&spec.id, spec.limits)
                .map_err(|e| RuntimeError::Io {
                    what: "create the sandbox's cgroup",
                    source: io::Error::other(e),
                })?;
        }
        let started = self.start_in_free_range(spec, mounted);
        if started.is_err() {
            // Whatever got started is in the cgroup; take it all down.
            let _ = self.destroy_cgroup(&spec.id);
        }
        started
    }

    /// Kills the sandbox's PID 1 (if it still is the one `state` names) and gives its uid
    /// range back once it is gone (its lease goes with it).
    fn stop_pid1(&self, state: &State) -> Result<(), RuntimeError> {
        process::kill_and_wait(state.pid, state.start_time, KILL_TIMEOUT)
            .map_err(RuntimeError::io("kill the sandbox"))?;
        self.slots.release(state.slot);
        Ok(())
    }

    /// Points the egress filter of this server at a sandbox a previous server filtered: its
    /// filter stays attached, but nobody keeps its maps current any more.
    fn filter_again(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.cgroups.as_ref().and_then(|c| c.egress_dir(id));
        if let (Ok(filter), Some(dir)) = (self.egress_filter(), dir) {
            filter
                .attach_sandbox(id, &dir)
                .map_err(|e| RuntimeError::Io {
                    what: "filter the sandbox's egress again",
                    source: io::Error::other(crate::egress::error_chain(&e)),
                })?;
        }
        Ok(())
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
            init_exe: None,
            root: state.path().join("sandboxes"),
            slots: Arc::new(Slots::new(state.path().join("leases"), 4)),
            network_helper: None,
            cgroups: None,
            disks: None,
            egress: Err(EgressError::NoCgroupV2.to_string()),
            no_new_privs: false,
            log_cap: init::DEFAULT_LOG_CAP,
            exits: Arc::default(),
            teardowns: Arc::new(Teardowns::new(state.path().join("teardowns"))),
            spawner: Arc::default(),
        };
        let spec = SandboxSpec {
            id: "egress-test".into(),
            template: crate::Template {
                memory: None,
                name: "none".into(),
                layers: Vec::new(),
            },
            hostname: "sandbox".into(),
            agent: crate::AgentSettings {
                access_token: String::new(),
                default_user: "user".into(),
                default_workdir: "/home/user".into(),
                env: Default::default(),
                code_interpreter_port: None,
                warm_kernel: false,
            },
            network: true,
            limits: Limits {
                memory_bytes: 1 << 30,
                cpus: 1,
                pids: 64,
            },
            volumes: Vec::new(),
            runtime: None,
        };
        let err = runtime.create(&spec).unwrap_err().to_string();
        assert!(
            err.contains("internet access is unavailable on this host")
                && err.contains("no cgroup v2 hierarchy"),
            "{err}"
        );
        assert!(!state.path().join("sandboxes").exists());
    }
}
