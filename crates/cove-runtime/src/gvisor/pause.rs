//! Pausing and resuming a gVisor sandbox.
//!
//! - **With memory**: the agent lets go of its host socket and connections (see
//!   [`super::channel`]), `runsc checkpoint` writes the sandbox's processes and memory to
//!   `checkpoint/` and stops it, and the stopped container is deleted; a resume restores it
//!   under the same container id and tells the agent to listen again. A checkpoint that fails
//!   after the container stopped loses the sandbox (runsc's behaviour): everything known to
//!   make one fail is ruled out first.
//! - **With memory, with internet access**: this runsc cannot save a network stack that
//!   held connections to the outside, so the container is frozen in place
//!   ([`GvisorRuntime::hold`]): its memory stays in the host's, as in the namespace
//!   backend, and a resume thaws it.
//! - **Without memory**: the container, its cgroup, mounts and loop device go; the directory
//!   (the disk image with the writable layers) stays, and a resume starts a new container on
//!   it, with no processes but the agent (also for a sandbox made from a snapshot with
//!   memory).
//!
//! The state is recorded before each transition takes effect, as in the namespace backend.

use std::{fs, io, os::unix::fs::DirBuilderExt};

use super::{Dirs, GvisorRuntime, State, channel_err, error_chain, runsc::Status, runsc_err};
use crate::{Handle, PauseMode, RuntimeError, SandboxSpec, Started};

impl GvisorRuntime {
    /// Holds every process of `container` where it is (`frozen`), or lets them go on.
    ///
    /// The host's cgroup freezer does it where the host has one: the container's sentry,
    /// gofer and platform stubs all live in its cgroup. runsc's own pause is the fallback,
    /// and only that: it answers, but leaves a container that `runsc restore` started
    /// running (a restored sandbox's process was measured writing on through a whole second
    /// of "pause"). With the freezer, freezing what is frozen or thawing what is not is
    /// fine, and a freeze that fails lets go of what it stopped.
    pub(super) fn hold(&self, container: &str, frozen: bool) -> Result<(), RuntimeError> {
        let Some(cgroups) = self.cgroups.as_ref().filter(|c| c.can_freeze()) else {
            return if frozen {
                self.runsc
                    .freeze(container, true)
                    .map_err(runsc_err("freeze the sandbox"))
            } else {
                self.runsc
                    .freeze(container, false)
                    .map_err(runsc_err("thaw the sandbox"))
            };
        };
        if !frozen {
            return if self.held_by_freezer(container) {
                cgroups.hold(container, false)
            } else {
                Ok(())
            };
        }
        let held = cgroups.hold(container, true);
        if held.is_err() {
            // Not held after all: let go of what did stop.
            let _ = cgroups.hold(container, false);
        }
        held
    }

    pub(super) fn pause_sandbox(
        &self,
        handle: &Handle,
        mode: PauseMode,
    ) -> Result<Handle, RuntimeError> {
        let id = &handle.id;
        let mut state = self.state(handle)?;
        match (state.paused, mode) {
            (None, PauseMode::Memory) => {}
            // From running, or from a checkpoint (a resume that drops the memory).
            (None | Some(PauseMode::Memory), PauseMode::Filesystem) => {
                // A frozen one is not thawed first: the teardown kills its processes where
                // they stand.
                state.frozen = false;
                state.paused = Some(PauseMode::Filesystem);
                self.save(id, &state)?;
                self.teardown(id, &state.container)?;
                remove_checkpoint(&self.dirs(id))?;
                return Ok(self.handle(id, &state));
            }
            (Some(_), _) => {
                return Err(RuntimeError::WrongState {
                    id: id.clone(),
                    state: "paused already",
                });
            }
        }
        if state.internet {
            // This runsc refuses to save a network stack that holds any connection to the
            // outside (one closed a minute ago too, which nothing inside can see) and then
            // ends the sandbox: the memory stays in the host's instead. Recorded first: a
            // server that dies meanwhile finishes the freeze when it comes back.
            state.paused = Some(PauseMode::Memory);
            state.frozen = true;
            self.save(id, &state)?;
            if let Err(err) = self.hold(&state.container, true) {
                state.paused = None;
                state.frozen = false;
                self.save(id, &state)?;
                return Err(err);
            }
            return Ok(self.handle(id, &state));
        }
        let channel = self.channel(id);
        // A checkpoint that fails leaves the container stopped: nothing that would make it
        // fail (a socket bound on the host, host descriptors) may be left.
        match channel.quiesce(&self.runsc, &state.container) {
            Ok(()) => {}
            // The agent serves on: nothing to undo.
            Err(super::channel::ChannelError::NotNow(reason)) => {
                return Err(RuntimeError::NotNow {
                    id: id.clone(),
                    reason,
                });
            }
            Err(err) => {
                // No checkpoint then; the agent, if it went quiet after all, listens again.
                let _ = channel.listen_again(&self.runsc, &state.container);
                return Err(channel_err("quiesce the sandbox's agent")(err));
            }
        }
        let image = self.dirs(id).checkpoint();
        let fresh = match fs::remove_dir_all(&image) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => fs::DirBuilder::new().mode(0o700).create(&image),
        };
        if let Err(source) = fresh {
            let _ = channel.listen_again(&self.runsc, &state.container);
            return Err(RuntimeError::Io {
                what: "make the checkpoint's directory",
                source,
            });
        }
        state.paused = Some(PauseMode::Memory);
        self.save(id, &state)?;
        if let Err(err) = self.runsc.checkpoint(&state.container, &image) {
            let running = matches!(
                self.runsc.state(&state.container),
                Ok(Some(Status::Running))
            );
            if running {
                let _ = channel.listen_again(&self.runsc, &state.container);
                state.paused = None;
                self.save(id, &state)?;
            }
            return Err(runsc_err("checkpoint the sandbox")(err));
        }
        // The container is stopped (or stopping): its id is free for the restore. runsc's
        // delete of a checkpointed container takes 1.4 s here (measured; plain or forced):
        // most of a pause.
        self.runsc
            .delete(&state.container)
            .map_err(runsc_err("delete the checkpointed container"))?;
        Ok(self.handle(id, &state))
    }

    pub(super) fn resume_sandbox(
        &self,
        handle: &Handle,
        spec: &SandboxSpec,
    ) -> Result<Started, RuntimeError> {
        let id = &handle.id;
        let mut state = self.state(handle)?;
        match state.paused {
            None => {
                return Err(RuntimeError::WrongState {
                    id: id.clone(),
                    state: "running",
                });
            }
            Some(PauseMode::Filesystem) => return self.start_again(spec, state),
            Some(PauseMode::Memory) if state.frozen => {
                self.hold(&state.container, false)?;
                state.paused = None;
                state.frozen = false;
                state.limits = Some(spec.limits);
                self.save(id, &state)?;
                // Its limits may have changed while it was paused.
                self.on_cgroups("set the sandbox's limits", |c| {
                    c.set_limits(&state.container, super::host_limits(spec.limits))
                })?;
                return Ok(self.started(id, &state));
            }
            Some(PauseMode::Memory) => {}
        }
        let dirs = self.dirs(id);
        self.restore(
            id,
            &state,
            &dirs.checkpoint(),
            &dirs.root_spec(spec),
            Some(spec.limits),
            None,
        )?;
        state.paused = None;
        state.limits = Some(spec.limits);
        self.save(id, &state)?;
        if let Err(err) = remove_checkpoint(&dirs) {
            tracing::warn!(err = %error_chain(&err), sandbox_id = %id, "cannot remove the restored checkpoint");
        }
        Ok(self.started(id, &state))
    }

    /// Starts a sandbox paused without memory again on its kept files (a new container
    /// under the same id, its agent told what `spec` says now). Until it listens, it counts
    /// as paused.
    fn start_again(&self, spec: &SandboxSpec, mut state: State) -> Result<Started, RuntimeError> {
        let dirs = self.dirs(&spec.id);
        if !dirs.root.is_dir() {
            return Err(RuntimeError::Start {
                id: spec.id.clone(),
                reason: "its files are gone".to_owned(),
            });
        }
        // Leftovers of a resume cut short.
        self.teardown(&spec.id, &state.container)?;
        // A new start on its files, with no processes, also for a sandbox made from a
        // snapshot with memory: that image's processes belong with the files as they were
        // then, and its restore fails once a file they held open is gone.
        let spec = SandboxSpec {
            template: crate::Template {
                memory: None,
                ..spec.template.clone()
            },
            ..spec.clone()
        };
        let spec = &spec;
        if let Err(err) = self.launch(spec, &dirs, &state) {
            if let Err(cleanup) = self.teardown(&spec.id, &state.container) {
                tracing::warn!(err = %error_chain(&cleanup), sandbox_id = %spec.id, "cannot clean up after a failed resume");
            }
            return Err(err);
        }
        state.paused = None;
        state.limits = Some(spec.limits);
        self.save(&spec.id, &state)?;
        Ok(self.started(&spec.id, &state))
    }
}

/// Deletes a sandbox's checkpoint, if it has one.
fn remove_checkpoint(dirs: &Dirs) -> Result<(), RuntimeError> {
    match fs::remove_dir_all(dirs.checkpoint()) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(RuntimeError::Io {
            what: "remove the sandbox's checkpoint",
            source: err,
        }),
        _ => Ok(()),
    }
}
