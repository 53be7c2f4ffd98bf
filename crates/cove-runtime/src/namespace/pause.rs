//! Pausing and resuming, as honest as this backend can be: process memory cannot be written
//! to disk here (CRIU does not work on these kernels), so
//!
//! - **with memory**, the sandbox's cgroup is frozen: its processes, and its network helper
//!   with them, stop where they are and keep their memory; resuming thaws them.
//! - **without memory**, its processes end and its directory (disk image, log) stays;
//!   resuming starts it again on the same writable layer, with the same id and token. Its
//!   uid range may differ then, which the writable layer does not mind (its owners are
//!   stored as the sandbox sees them, see [`crate::idmap`]).
//!
//! Each transition is recorded in the sandbox's directory before it takes effect (see
//! [`super::state`]); [`NamespaceRuntime::recover_state`] drives a sandbox that a killed
//! server left halfway to the state the record names: a pause is finished, a resume from
//! disk undone (its new processes killed), a thaw that was not recorded frozen again.

use super::{NamespaceRuntime, state::State};
use crate::{Handle, PauseMode, Recovered, RuntimeError, SandboxSpec, Started, process};

impl NamespaceRuntime {
    fn wrong_state(id: &str, state: &'static str) -> RuntimeError {
        RuntimeError::WrongState {
            id: id.to_owned(),
            state,
        }
    }

    pub(super) fn freeze(&self, id: &str, frozen: bool) -> Result<(), RuntimeError> {
        let cgroups = self.cgroups.as_ref().filter(|c| c.can_freeze()).ok_or(
            RuntimeError::Unsupported {
                backend: super::NAME,
                what: "pause sandboxes with their memory on this host (it has no cgroup freezer)",
            },
        )?;
        cgroups.hold(id, frozen)
    }

    /// Whether sandbox `id`'s cgroup is frozen now.
    fn is_frozen(&self, id: &str) -> bool {
        self.cgroups
            .as_ref()
            .and_then(|c| c.freeze_state(id))
            .unwrap_or(false)
    }

    pub(super) fn pause_sandbox(
        &self,
        handle: &Handle,
        mode: PauseMode,
    ) -> Result<Handle, RuntimeError> {
        let id = &handle.id;
        let mut state = self.current(handle)?;
        match (state.paused, mode) {
            (None, PauseMode::Memory) => {
                state.paused = Some(PauseMode::Memory);
                self.save(id, &state)?;
                if let Err(err) = self.freeze(id, true) {
                    // Back to running, as recorded.
                    let _ = self.freeze(id, false);
                    state.paused = None;
                    self.save(id, &state)?;
                    return Err(err);
                }
            }
            // From running, or from frozen (a resume that drops the memory).
            (None | Some(PauseMode::Memory), PauseMode::Filesystem) => {
                state.paused = Some(PauseMode::Filesystem);
                self.save(id, &state)?;
                self.stop_processes(id, &state)?;
            }
            (Some(_), _) => return Err(Self::wrong_state(id, "paused already")),
        }
        Ok(self.handle(id, state))
    }

    /// Ends every process of a sandbox whose files stay (a pause without memory).
    fn stop_processes(&self, id: &str, state: &State) -> Result<(), RuntimeError> {
        self.destroy_cgroup(id)?;
        self.stop_pid1(state)
    }

    pub(super) fn resume_sandbox(
        &self,
        handle: &Handle,
        spec: &SandboxSpec,
    ) -> Result<Started, RuntimeError> {
        let id = &handle.id;
        let mut state = self.current(handle)?;
        match state.paused {
            None => Err(Self::wrong_state(id, "running")),
            Some(PauseMode::Memory) => {
                let alive = process::is_alive(state.pid, state.start_time)
                    .map_err(RuntimeError::io("look at the sandbox's PID 1"))?;
                if !alive {
                    // Its processes died while frozen (killed by hand, say): what is left is
                    // its disk, and it starts again from there.
                    tracing::warn!(sandbox_id = %id, "the paused sandbox's processes are gone; starting it again from its disk");
                    state.paused = Some(PauseMode::Filesystem);
                    self.save(id, &state)?;
                    return self.start_again(spec, state);
                }
                self.freeze(id, false)?;
                state.paused = None;
                self.save(id, &state)?;
                Ok(self.started(id, state))
            }
            Some(PauseMode::Filesystem) => self.start_again(spec, state),
        }
    }

    /// Starts a sandbox paused without memory on its kept directory. Until the new processes
    /// are recorded, the sandbox counts as paused: a server killed in between finds them
    /// (in the sandbox's cgroup) and ends them.
    fn start_again(&self, spec: &SandboxSpec, paused: State) -> Result<Started, RuntimeError> {
        let dirs = self.dirs(&spec.id);
        if !dirs.root.is_dir() {
            return Err(RuntimeError::Start {
                id: spec.id.clone(),
                reason: "its files are gone".to_owned(),
            });
        }
        // Leftovers of a resume cut short.
        self.destroy_cgroup(&spec.id)?;
        self.check_egress(spec)?;
        // A resumed disk is the stopped sandbox's own: the setup attaches it.
        let started = self.launch(spec, None);
        if started.is_err() {
            // `start` recorded nothing: the directory still says paused.
            let _ = self.save(&spec.id, &paused);
        }
        started
    }

    /// See [`crate::Runtime::recover`] and the module documentation.
    pub(super) fn recover_state(&self, handle: &Handle) -> Result<Option<Recovered>, RuntimeError> {
        let id = &handle.id;
        let mut state = self.current(handle)?;
        let alive = process::is_alive(state.pid, state.start_time)
            .map_err(RuntimeError::io("look at the sandbox's PID 1"))?;
        match state.paused {
            None if !alive => Ok(None),
            None => {
                if self.is_frozen(id) {
                    // Frozen, but recorded as running: a thaw cut short. It runs.
                    self.freeze(id, false)?;
                }
                if state.network {
                    self.filter_again(id)?;
                }
                self.slots.adopt(state.slot);
                Ok(Some(Recovered::Running(self.started(id, state))))
            }
            Some(PauseMode::Memory) if alive => {
                if !self.is_frozen(id) {
                    // A freeze cut short, or a thaw not yet recorded: paused, as recorded.
                    self.freeze(id, true)?;
                }
                if state.network {
                    self.filter_again(id)?;
                }
                self.slots.adopt(state.slot);
                Ok(Some(Recovered::Paused(
                    self.started(id, state),
                    PauseMode::Memory,
                )))
            }
            Some(_) => {
                // Paused without memory, or with memory whose processes are gone (the
                // host restarted): its files are what is left.
                if !self.dirs(id).root.is_dir() {
                    return Ok(None);
                }
                self.destroy_cgroup(id)?;
                if state.paused != Some(PauseMode::Filesystem) {
                    state.paused = Some(PauseMode::Filesystem);
                    self.save(id, &state)?;
                }
                Ok(Some(Recovered::Paused(
                    self.started(id, state),
                    PauseMode::Filesystem,
                )))
            }
        }
    }
}
