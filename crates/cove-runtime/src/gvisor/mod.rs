//! The gVisor backend: each sandbox is a runsc container (the sentry, a user-space kernel,
//! with the ptrace platform), whose init is the agent. What runsc needs and what it is
//! known to do on this kind of host is in `docs/GVISOR-NOTES.md`.
//!
//! Each sandbox has a directory `<root>/sandboxes/<id>` that only host root can reach:
//! - `state.json`: the container id and whether it is paused (also in the handle);
//! - `config.json`: the OCI bundle ([`bundle`]);
//! - `disk.img` and `disk/`: the disk quota and the writable layers, `rootfs/`: the root
//!   overlays ([`rootfs`]);
//! - `agent/`: the agent's socket, mounted into the sandbox ([`channel`]);
//! - `sandbox.log`: what the agent and runsc wrote; `checkpoint/`: the image of a sandbox
//!   paused with its memory.
//!
//! A pause with memory quiesces the agent and checkpoints the container (it stops); a resume
//! restores it under the same container id and tells the agent to listen again. A pause
//! without memory takes everything down but the directory (the disk image keeps the
//! writable layers); a resume starts a new container on it. Snapshots copy the writable
//! layers, and with memory the checkpoint beside them ([`snapshot`]); a sandbox made from a
//! snapshot with memory is restored from it under its own identity. Volumes are bound in
//! from their host mounts and served by the gofer like the root. Internet access goes
//! through a link of the sandbox's own ([`link`]). Reroots are not done: they are refused
//! with [`RuntimeError::Unsupported`].

pub mod bundle;
pub mod channel;
pub mod link;
mod pause;
pub mod rootfs;
pub mod runsc;
mod snapshot;
pub mod statx;

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use self::{
    bundle::{AgentSpec, Bundle},
    channel::Channel,
    runsc::{Runsc, Status},
};
use crate::{
    EndReason, Handle, Limits, Liveness, PauseMode, Recovered, Runtime, RuntimeError, SandboxSpec,
    Started,
    cgroup::{Hierarchy, Usage},
    disk::{ImagePool, Preparation},
    egress::error_chain,
    namespace::{init::DEFAULT_LOG_CAP, read_log, state},
};

/// The backend's name in handles.
pub const NAME: &str = "gvisor";
/// The cgroup parent runsc puts each container's cgroup under (the namespace backend's).
const CGROUP_PARENT: &str = "cove";
/// Host threads and processes of the sentry and the gofer themselves, counted by the host's
/// pids cgroup on top of the sandbox's own: 135 were measured for an idle agent and one
/// Python process (docs/GVISOR-NOTES.md).
const SENTRY_PIDS: u32 = 256;
/// How long a killed sandbox's cgroup may take to empty.
const KILL_TIMEOUT: Duration = Duration::from_secs(30);
/// Formatted disk images kept ready.
const DISK_POOL_SIZE: usize = 4;

/// What the backend records of a sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// runsc's id of its container (see [`container_id`]).
    container: String,
    /// Set while it is paused (or being paused).
    #[serde(default)]
    paused: Option<PauseMode>,
    /// Its limits as last set (a restore sets them again).
    #[serde(default)]
    limits: Option<Limits>,
    /// It has internet access: a link ([`link`]) while its container runs.
    #[serde(default)]
    internet: bool,
    /// Paused with its memory kept in the host's ([`GvisorRuntime::hold`]), not
    /// checkpointed: a sandbox with internet access, whose network stack this runsc cannot
    /// save.
    #[serde(default)]
    frozen: bool,
}

/// Runs sandboxes in gVisor, with the `cove` binary at `exe` as their agent.
#[derive(Clone, Debug)]
pub struct GvisorRuntime {
    exe: PathBuf,
    root: PathBuf,
    runsc: Runsc,
    cgroups: Option<Hierarchy>,
    disks: Option<ImagePool>,
    log_cap: u64,
    /// What sandboxes with internet access get theirs from; none: they are refused.
    internet: Option<link::Internet>,
    /// The uid ranges of the running links ([`link`]).
    links: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
}

/// Paths of one sandbox.
struct Dirs {
    root: PathBuf,
}

impl Dirs {
    fn rootfs(&self) -> PathBuf {
        self.root.join("rootfs")
    }
    fn disk(&self) -> PathBuf {
        self.root.join("disk")
    }
    fn image(&self) -> PathBuf {
        self.root.join("disk.img")
    }
    fn agent(&self) -> PathBuf {
        self.root.join("agent")
    }
    fn log(&self) -> PathBuf {
        self.root.join("sandbox.log")
    }
    fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint")
    }
    /// A link to the network namespace of its link, for runsc.
    fn netns(&self) -> PathBuf {
        self.root.join("netns")
    }
    fn existing_image(&self) -> Option<PathBuf> {
        Some(self.image()).filter(|i| i.exists())
    }
    /// What the launch stage mounts for `spec`'s sandbox.
    fn root_spec(&self, spec: &SandboxSpec) -> rootfs::RootSpec {
        rootfs::RootSpec {
            network: spec.network,
            ..self.root_of(&spec.template)
        }
    }
    /// What the launch stage mounts for a sandbox of `template`.
    fn root_of(&self, template: &crate::Template) -> rootfs::RootSpec {
        rootfs::RootSpec {
            rootfs: self.rootfs(),
            disk: self.disk(),
            image: self.existing_image(),
            template: template.clone(),
            network: false,
        }
    }
}

impl GvisorRuntime {
    /// A runtime whose sandboxes and runsc's records live under `root`, running the agent
    /// from the `cove` binary at `exe`, with runsc from its Debian package.
    pub fn new(exe: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        let (exe, root) = (exe.into(), root.into());
        let cgroups = match Hierarchy::detect(Path::new("/sys/fs/cgroup")) {
            Ok(hierarchy) => {
                if !hierarchy.can_freeze() {
                    tracing::warn!(
                        "no cgroup freezer: a paused gVisor sandbox that was restored from a \
                         checkpoint runs on (this runsc's pause does not stop it)"
                    );
                }
                Some(hierarchy)
            }
            Err(err) => {
                tracing::warn!(%err, "gVisor sandboxes will run without resource limits");
                None
            }
        };
        Self {
            exe: exe.clone(),
            runsc: Runsc::new(
                PathBuf::from(runsc::DEFAULT_BINARY),
                root.join("runsc"),
                exe.clone(),
            ),
            root,
            cgroups,
            disks: None,
            log_cap: DEFAULT_LOG_CAP,
            internet: None,
            links: Default::default(),
        }
    }

    /// Gives sandboxes that ask for it internet access through `internet` (the namespace
    /// backend's helper, egress filter and uid ranges).
    pub fn with_internet(mut self, internet: link::Internet) -> Self {
        self.internet = Some(internet);
        self
    }

    /// Uses the runsc binary at `binary`.
    pub fn with_runsc(mut self, binary: PathBuf) -> Self {
        self.runsc = Runsc::new(binary, self.root.join("runsc"), self.exe.clone());
        self
    }

    /// Gives every sandbox a disk of `size` bytes, from images prepared under `pool_dir`.
    pub fn with_disk_quota(mut self, pool_dir: PathBuf, size: u64) -> io::Result<Self> {
        // Written only: a gVisor sandbox's disk is mounted on the host by its rootfs stage
        // (`rootfs::mount`), which is not handed one mounted ahead.
        self.disks = Some(ImagePool::start(
            pool_dir,
            size,
            DISK_POOL_SIZE,
            Preparation::Written,
        )?);
        Ok(self)
    }

    /// Keeps each sandbox's log under `bytes`.
    pub fn with_log_cap(mut self, bytes: u64) -> Self {
        self.log_cap = bytes;
        self
    }

    /// The egress filter its sandboxes with internet access are behind, if there is one.
    fn egress(&self) -> Option<&crate::egress::EgressFilter> {
        self.internet.as_ref()?.filter.as_deref().ok()
    }

    /// runsc's id for sandbox `id` (see [`container_id`]).
    pub fn container_id(&self, id: &str) -> String {
        container_id(&self.root, id)
    }

    fn dirs(&self, id: &str) -> Dirs {
        Dirs {
            root: self.root.join("sandboxes").join(id),
        }
    }

    fn channel(&self, id: &str) -> Channel {
        Channel::new(self.dirs(id).agent())
    }

    fn state(&self, handle: &Handle) -> Result<State, RuntimeError> {
        let foreign = || RuntimeError::ForeignHandle {
            id: handle.id.clone(),
            backend: handle.backend.clone(),
        };
        if handle.backend != NAME {
            return Err(foreign());
        }
        let from_handle: State =
            serde_json::from_value(handle.state.clone()).map_err(|_| foreign())?;
        // The directory's record is newer than a handle stored before a transition.
        Ok(state::load(&self.dirs(&handle.id).root)
            .map_err(RuntimeError::io("read the sandbox's state"))?
            .unwrap_or(from_handle))
    }

    fn save(&self, id: &str, state: &State) -> Result<(), RuntimeError> {
        state::save(&self.dirs(id).root, state)
            .map_err(RuntimeError::io("save the sandbox's state"))
    }

    fn handle(&self, id: &str, state: &State) -> Handle {
        Handle {
            id: id.to_owned(),
            backend: NAME.to_owned(),
            state: serde_json::to_value(state).expect("the state is plain strings"),
        }
    }

    fn started(&self, id: &str, state: &State) -> Started {
        Started {
            handle: self.handle(id, state),
            agent: self.channel(id).endpoint(),
        }
    }

    /// The sandbox's directory and its agent's, for host root alone.
    fn make_dirs(&self, dirs: &Dirs) -> Result<(), RuntimeError> {
        let make = |path: &Path| -> io::Result<()> {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        };
        make(&self.root)
            .and_then(|()| make(&self.root.join("sandboxes")))
            .map(|()| crate::spread::spread_subdirectories(&self.root.join("sandboxes")))
            .and_then(|()| make(&self.root.join("runsc")))
            .and_then(|()| make(&dirs.root))
            .and_then(|()| channel::make_dir(&dirs.agent()))
            .map_err(RuntimeError::io("create the sandbox directory"))
    }

    fn open_log(&self, dirs: &Dirs) -> Result<fs::File, RuntimeError> {
        fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dirs.log())
            .map_err(RuntimeError::io("open the sandbox log"))
    }

    /// Everything but the directory: the container, its cgroup, the mounts, the loop device.
    fn teardown(&self, id: &str, container: &str) -> Result<(), RuntimeError> {
        let dirs = self.dirs(id);
        // runsc's delete asks the sentry to stop the container: one its cgroup holds frozen
        // would never answer. Its processes are killed where they stand, then let go, so
        // that a frozen sandbox runs not one more instruction; runsc then deletes a dead
        // container.
        if let Some(cgroups) = &self.cgroups
            && self.held_by_freezer(container)
        {
            cgroups.kill(container, KILL_TIMEOUT);
        }
        let deleted = self
            .runsc
            .delete(container)
            .map_err(runsc_err("kill the sandbox"));
        // Whatever runsc left in the cgroup (it should have killed all) goes now.
        self.on_cgroups("remove the sandbox's cgroup", |c| {
            c.destroy(container, KILL_TIMEOUT)
        })?;
        remove_other_cgroups(container);
        self.link_down(id)?;
        deleted?;
        let image = dirs.existing_image();
        rootfs::unmount(&dirs.rootfs(), &dirs.disk(), image.as_deref())
            .map_err(RuntimeError::io("unmount the sandbox's files"))
    }

    /// Whether the host's cgroup freezer holds `container` ([`Self::hold`]). runsc cannot
    /// look at such a container: its `state` asks the sentry, and waits for an answer that
    /// does not come. The cgroup says what there is to know.
    fn held_by_freezer(&self, container: &str) -> bool {
        self.cgroups
            .as_ref()
            .is_some_and(|c| c.freeze_state(container) == Some(true))
    }

    /// Whether any process is left in `container`'s cgroup (an exited one, even before it
    /// is reaped, is not listed).
    fn has_processes(&self, container: &str) -> bool {
        self.cgroups.as_ref().is_some_and(|c| {
            c.procs_files(container)
                .iter()
                .any(|file| fs::read_to_string(file).is_ok_and(|procs| !procs.trim().is_empty()))
        })
    }

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

    /// Builds the root and the bundle and starts the container: a fresh agent, or for a
    /// template with memory, its processes restored under this sandbox's identity. Returns
    /// once its agent listens.
    fn launch(&self, spec: &SandboxSpec, dirs: &Dirs, state: &State) -> Result<(), RuntimeError> {
        let failed = |reason: String| RuntimeError::Start {
            id: spec.id.clone(),
            reason,
        };
        let log = self.write_bundle(spec, dirs, state)?;
        if spec.network {
            self.link_up(&spec.id)?;
        }
        if let Some(image) = &spec.template.memory {
            return self.restore(
                &spec.id,
                state,
                image,
                &dirs.root_spec(spec),
                Some(spec.limits),
                Some(&spec.agent),
            );
        }
        self.runsc
            .run(&state.container, &dirs.root, &dirs.root_spec(spec), &log)
            .map_err(|e| failed(e.to_string()))?;
        self.channel(&spec.id)
            .wait_listening(&self.runsc, &state.container)
            .map_err(|e| failed(format!("{}; {}", error_chain(&e), log_tail(&dirs.log()))))?;
        // runsc sets the memory limit but leaves swap alone: ours counts swap as memory.
        self.on_cgroups("set the sandbox's limits", |c| {
            c.set_limits(&state.container, host_limits(spec.limits))
        })
    }

    /// Writes the OCI bundle of `spec`'s container and clears the agent's directory;
    /// returns the sandbox log, for runsc.
    fn write_bundle(
        &self,
        spec: &SandboxSpec,
        dirs: &Dirs,
        state: &State,
    ) -> Result<fs::File, RuntimeError> {
        let failed = |reason: String| RuntimeError::Start {
            id: spec.id.clone(),
            reason,
        };
        let agent = AgentSpec::new(statx::preloaded(&spec.agent), self.log_cap);
        let shim = statx::install(&self.root).map_err(RuntimeError::io("write the statx shim"))?;
        let cgroups_path = format!("/{CGROUP_PARENT}/{}", state.container);
        let config = bundle::config(&Bundle {
            rootfs: &dirs.rootfs(),
            agent_dir: &dirs.agent(),
            exe: &self.exe,
            hostname: &spec.hostname,
            agent: &agent,
            limits: host_limits(spec.limits),
            cgroups_path: &cgroups_path,
            volumes: &spec.volumes,
            netns: spec.network.then(|| dirs.netns()).as_deref(),
            statx_shim: &shim,
        })
        .map_err(|e| failed(format!("cannot write its OCI spec: {e}")))?;
        bundle::write(&dirs.root, &config).map_err(RuntimeError::io("write the OCI bundle"))?;
        self.channel(&spec.id)
            .clear()
            .map_err(channel_err("clear the agent's directory"))?;
        self.open_log(dirs)
    }

    /// Restores container `state.container` of sandbox `id` from the checkpoint in `image`
    /// on the root `root` and waits until its agent listens again; an agent restored from
    /// another sandbox's image takes `renew`'s token and environment first.
    fn restore(
        &self,
        id: &str,
        state: &State,
        image: &Path,
        root: &rootfs::RootSpec,
        limits: Option<Limits>,
        renew: Option<&crate::AgentSettings>,
    ) -> Result<(), RuntimeError> {
        let failed = |reason: String| RuntimeError::Start {
            id: id.to_owned(),
            reason,
        };
        let dirs = self.dirs(id);
        let log = self.open_log(&dirs)?;
        // Left by a restore cut short.
        self.runsc
            .delete(&state.container)
            .map_err(runsc_err("delete the sandbox's old container"))?;
        let channel = self.channel(id);
        if let Some(agent) = renew {
            channel
                .renew(&statx::preloaded(agent))
                .map_err(channel_err("renew the sandbox's agent"))?;
        }
        let began = std::time::Instant::now();
        self.runsc
            .restore(&state.container, &dirs.root, image, root, &log)
            .map_err(|e| failed(e.to_string()))?;
        let restored = began.elapsed();
        channel
            .listen_again(&self.runsc, &state.container)
            .map_err(|e| failed(format!("{}; {}", error_chain(&e), log_tail(&dirs.log()))))?;
        tracing::debug!(sandbox_id = %id, restore_ms = restored.as_millis(), listening_ms = began.elapsed().as_millis(), "restored");
        // runsc set those of the bundle, which may be older.
        match limits {
            Some(limits) => self.on_cgroups("set the sandbox's limits", |c| {
                c.set_limits(&state.container, host_limits(limits))
            }),
            None => Ok(()),
        }
    }
}

/// The limits the host's cgroup enforces for a sandbox limited to `limits`: its process
/// count plus the sentry's and the gofer's own threads.
fn host_limits(limits: Limits) -> Limits {
    Limits {
        pids: limits.pids.saturating_add(SENTRY_PIDS),
        ..limits
    }
}

/// runsc's id for sandbox `id` of the backend whose state lives at `root`. runsc names its
/// control socket (an abstract Unix socket, shared by every runsc state directory) after
/// the container id, so ids must be unique host-wide: the sandbox id alone could be another
/// server's too, so a hash of this backend's directory goes with it.
pub fn container_id(root: &Path, id: &str) -> String {
    let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    // FNV-1a: stable across builds, unlike std's hasher, so a restarted server derives the
    // same id.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in root.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("cove-{id}-{:012x}", hash & 0xffff_ffff_ffff)
}

/// runsc also makes the container's cgroup in the hierarchies Cove does not use (blkio,
/// cpuset, devices, …) and removes them on delete; a delete that failed leaves them, empty
/// once the cgroup's processes are gone.
fn remove_other_cgroups(container: &str) {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for hierarchy in hierarchies.flatten() {
        let dir = hierarchy.path().join(CGROUP_PARENT).join(container);
        if dir.is_dir() {
            let _ = fs::remove_dir(&dir);
        }
    }
}

fn runsc_err(what: &'static str) -> impl FnOnce(runsc::RunscError) -> RuntimeError {
    move |e| RuntimeError::Io {
        what,
        source: io::Error::other(e),
    }
}

fn channel_err(what: &'static str) -> impl FnOnce(channel::ChannelError) -> RuntimeError {
    move |e| RuntimeError::Io {
        what,
        source: io::Error::other(error_chain(&e)),
    }
}

/// The end of the sandbox log at `path`, for an error message.
fn log_tail(path: &Path) -> String {
    const TAIL: usize = 2048;
    let log = read_log(path).unwrap_or_default();
    let mut start = log.len().saturating_sub(TAIL);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    format!("its log ends with: {}", log[start..].trim())
}

impl Runtime for GvisorRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create(&self, spec: &SandboxSpec) -> Result<Started, RuntimeError> {
        self.check_link(spec)?;
        self.runsc.check().map_err(|e| RuntimeError::Start {
            id: spec.id.clone(),
            reason: e.to_string(),
        })?;
        let dirs = self.dirs(&spec.id);
        self.make_dirs(&dirs)?;
        if let Some(disks) = &self.disks
            && !dirs.image().exists()
        {
            disks
                .take(&dirs.image())
                .map_err(RuntimeError::io("prepare the sandbox's disk"))?;
        }
        let state = State {
            container: self.container_id(&spec.id),
            paused: None,
            limits: Some(spec.limits),
            internet: spec.network,
            frozen: false,
        };
        // Recorded before anything runs, so that a kill finds what there is to kill.
        self.save(&spec.id, &state)?;
        if let Err(err) = self.launch(spec, &dirs, &state) {
            if let Err(cleanup) = self.teardown(&spec.id, &state.container) {
                tracing::warn!(err = %error_chain(&cleanup), sandbox_id = %spec.id, "cannot clean up after a failed start");
            }
            return Err(err);
        }
        Ok(self.started(&spec.id, &state))
    }

    fn recover(&self, handle: &Handle) -> Result<Option<Recovered>, RuntimeError> {
        let state = self.state(handle)?;
        let id = &handle.id;
        if state.paused == Some(PauseMode::Filesystem) {
            return Ok(self
                .dirs(id)
                .root
                .is_dir()
                .then(|| Recovered::Paused(self.started(id, &state), PauseMode::Filesystem)));
        }
        if state.paused == Some(PauseMode::Memory) && !state.frozen {
            return Ok(self
                .dirs(id)
                .checkpoint()
                .join("checkpoint.img")
                .exists()
                .then(|| Recovered::Paused(self.started(id, &state), PauseMode::Memory)));
        }
        if state.frozen && self.held_by_freezer(&state.container) {
            return Ok(self
                .has_processes(&state.container)
                .then(|| Recovered::Paused(self.started(id, &state), PauseMode::Memory)));
        }
        let status = self
            .runsc
            .state(&state.container)
            .map_err(runsc_err("look at the sandbox"))?;
        Ok(match status {
            // A freeze recorded but cut short by the server's end is finished now.
            Some(Status::Running) if state.frozen => {
                self.hold(&state.container, true)?;
                Some(Recovered::Paused(
                    self.started(id, &state),
                    PauseMode::Memory,
                ))
            }
            Some(Status::Running) => Some(Recovered::Running(self.started(id, &state))),
            Some(Status::Paused) if state.frozen => {
                // Paused by runsc (by an older Cove, or on a host without a freezer): held by
                // the freezer from now on, where the host has one.
                if self.cgroups.as_ref().is_some_and(Hierarchy::can_freeze) {
                    self.runsc
                        .freeze(&state.container, false)
                        .map_err(runsc_err("thaw the sandbox"))?;
                    self.hold(&state.container, true)?;
                }
                Some(Recovered::Paused(
                    self.started(id, &state),
                    PauseMode::Memory,
                ))
            }
            _ => None,
        })
    }

    fn liveness(&self, handle: &Handle) -> Result<Liveness, RuntimeError> {
        let state = self.state(handle)?;
        if state.paused == Some(PauseMode::Filesystem) {
            // Nothing runs; it lives on as long as its files.
            return Ok(if self.dirs(&handle.id).root.is_dir() {
                Liveness::Running
            } else {
                Liveness::Ended(EndReason::AgentExited)
            });
        }
        if state.paused == Some(PauseMode::Memory) && !state.frozen {
            // Nothing runs; it lives on as long as its checkpoint.
            let kept = self
                .dirs(&handle.id)
                .checkpoint()
                .join("checkpoint.img")
                .exists();
            return Ok(if kept {
                Liveness::Running
            } else {
                Liveness::Ended(EndReason::AgentExited)
            });
        }
        // The container's cgroup holds its sentry, gofer and stubs for as long as it lives.
        // runsc's `state` is asked only where there are no cgroups: it asks the sentry, and
        // one frozen meanwhile (a pause under way) never answers. It costs a runsc process
        // per sandbox and look, too.
        let alive = match &self.cgroups {
            Some(_) => self.has_processes(&state.container),
            None => matches!(
                self.runsc
                    .state(&state.container)
                    .map_err(runsc_err("look at the sandbox"))?,
                Some(Status::Running | Status::Created | Status::Paused)
            ),
        };
        if alive {
            return Ok(Liveness::Running);
        }
        let out_of_memory = self
            .cgroups
            .as_ref()
            .and_then(|c| c.oom_kills(&state.container).ok())
            .is_some_and(|kills| kills > 0);
        Ok(Liveness::Ended(if out_of_memory {
            EndReason::OutOfMemory
        } else {
            EndReason::AgentExited
        }))
    }

    fn kill(&self, handle: &Handle) -> Result<(), RuntimeError> {
        if let Some(filter) = self.egress() {
            // Refusals not yet told go to the log before the sandbox's counters go.
            let _ = self.take_egress_refusals(&handle.id);
            filter.forget(&handle.id);
        }
        let state = self.state(handle)?;
        self.teardown(&handle.id, &state.container)
    }

    fn holds(&self, id: &str) -> bool {
        self.dirs(id).root.is_dir()
    }

    fn set_egress_policy(
        &self,
        id: &str,
        policy: Option<&crate::egress::SandboxPolicy>,
    ) -> Result<(), RuntimeError> {
        // Without a filter no sandbox has internet access: nothing to narrow.
        match self.egress() {
            Some(filter) => filter.set_sandbox_policy(self.cgroups.as_ref(), id, policy),
            None => Ok(()),
        }
    }

    fn egress_ca_pem(&self) -> Option<String> {
        self.egress()?.interception_ca_pem().map(str::to_owned)
    }

    fn take_egress_refusals(&self, id: &str) -> Vec<(crate::egress::Refusal, u64)> {
        match self.egress() {
            Some(filter) => filter.take_refusals_into_log(id, &self.dirs(id).log()),
            None => Vec::new(),
        }
    }

    fn kill_leftovers(&self, id: &str) -> Result<(), RuntimeError> {
        // Its directory is made before anything else: without it, nothing of it runs (and
        // beside another backend, that backend's ids come here too).
        if !self.dirs(id).root.exists() {
            return Ok(());
        }
        let container = state::load::<State>(&self.dirs(id).root)
            .ok()
            .flatten()
            .map_or_else(|| self.container_id(id), |s| s.container);
        self.teardown(id, &container)
    }

    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let dirs = self.dirs(id);
        // Not one of ours (beside another backend, every removal comes here too).
        if !dirs.root.exists() {
            return Ok(());
        }
        // Never delete through a mount: the sandbox's files would go with it, and a mount
        // left would be a mount point removed under the host's feet.
        let mounted = rootfs::mounts_under(&dirs.root)
            .map_err(RuntimeError::io("read the host's mount table"))?;
        if !mounted.is_empty() {
            return Err(RuntimeError::WrongState {
                id: id.to_owned(),
                state: "still mounted (kill it first)",
            });
        }
        // The agent's directory holds what the sandbox made there: links are removed, never
        // followed.
        match fs::remove_dir_all(&dirs.root) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RuntimeError::Io {
                what: "remove the sandbox's files",
                source,
            }),
        }
    }

    fn usage(&self, handle: &Handle) -> Result<Usage, RuntimeError> {
        let state = self.state(handle)?;
        let cgroups = self.cgroups.as_ref().ok_or_else(|| RuntimeError::Io {
            what: "read the sandbox's usage",
            source: io::Error::new(io::ErrorKind::Unsupported, "sandboxes have no cgroups"),
        })?;
        // The host's view: the sentry and the gofer are counted with the sandbox.
        cgroups
            .usage(&state.container)
            .map_err(|e| RuntimeError::Io {
                what: "read the sandbox's usage",
                source: io::Error::other(e),
            })
    }

    fn set_limits(&self, handle: &Handle, limits: Limits) -> Result<(), RuntimeError> {
        let mut state = self.state(handle)?;
        if state.paused.is_some() {
            return Err(RuntimeError::WrongState {
                id: handle.id.clone(),
                state: "paused",
            });
        }
        self.on_cgroups("change the sandbox's limits", |c| {
            c.set_limits(&state.container, host_limits(limits))
        })?;
        state.limits = Some(limits);
        self.save(&handle.id, &state)
    }

    fn log(&self, id: &str) -> Result<String, RuntimeError> {
        read_log(&self.dirs(id).log())
    }

    fn shutdown(&self) {
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove_parents_if_empty();
        }
        // The parents runsc made in the hierarchies Cove does not use; fails harmlessly
        // while a sandbox's cgroup is inside.
        if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
            for hierarchy in hierarchies.flatten() {
                let _ = fs::remove_dir(hierarchy.path().join(CGROUP_PARENT));
            }
        }
        if let Some(disks) = &self.disks {
            disks.stop();
        }
    }

    fn pause(&self, handle: &Handle, mode: PauseMode) -> Result<Handle, RuntimeError> {
        self.pause_sandbox(handle, mode)
    }

    fn resume(&self, handle: &Handle, spec: &SandboxSpec) -> Result<Started, RuntimeError> {
        self.resume_sandbox(handle, spec)
    }

    fn snapshot(
        &self,
        handle: &Handle,
        template: &crate::Template,
        into: &Path,
    ) -> Result<crate::Template, RuntimeError> {
        self.snapshot_sandbox(handle, template, into, false)
    }

    fn snapshot_memory(
        &self,
        handle: &Handle,
        template: &crate::Template,
        into: &Path,
    ) -> Result<crate::Template, RuntimeError> {
        self.snapshot_sandbox(handle, template, into, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_differ_between_state_directories_and_stay_the_same_for_one() {
        let a = container_id(Path::new("/nonexistent/a"), "box");
        let b = container_id(Path::new("/nonexistent/b"), "box");
        assert_ne!(a, b);
        assert_eq!(a, container_id(Path::new("/nonexistent/a"), "box"));
        assert!(a.starts_with("cove-box-"));
    }

    #[test]
    fn the_host_pids_limit_leaves_room_for_the_sentry() {
        let limits = Limits {
            memory_bytes: 1,
            cpus: 1,
            pids: 100,
        };
        assert_eq!(host_limits(limits).pids, 100 + SENTRY_PIDS);
    }
}
