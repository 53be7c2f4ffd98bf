//! Snapshots of a gVisor sandbox: its writable layers copied into read-only layers by the
//! copy stage of [`crate::layer`] (as for the namespace backend) and, with memory, the
//! checkpoint of its processes beside them in `<into>/memory`, which the template returned
//! names ([`crate::Template::memory`]): a sandbox made from it is restored from that image
//! on exactly those layers.
//!
//! - A running sandbox is held still for the copy: without memory it is frozen
//!   ([`GvisorRuntime::hold`]) and thawed after; with memory it is checkpointed as a pause
//!   would, copied, and restored from its own checkpoint, so it runs on (the connections to
//!   its agent end, as on a pause).
//! - A sandbox paused with memory gives its checkpoint and its files; one paused without
//!   memory has no processes to give, only its files.

use std::{fs, io, path::Path};

use super::{GvisorRuntime, State, rootfs};
use crate::{Handle, PauseMode, RuntimeError, Template, egress::error_chain, layer};

/// The checkpoint's directory in a snapshot's.
const MEMORY_DIR: &str = "memory";

impl GvisorRuntime {
    pub(super) fn snapshot_sandbox(
        &self,
        handle: &Handle,
        template: &Template,
        into: &Path,
        memory: bool,
    ) -> Result<Template, RuntimeError> {
        let id = &handle.id;
        let state = self.state(handle)?;
        if memory && state.internet {
            return Err(RuntimeError::Unsupported {
                backend: super::NAME,
                what: "keep the memory of a sandbox with internet access (this runsc cannot \
                       save its network stack's connections); snapshot it without memory",
            });
        }
        match (state.paused, memory) {
            (Some(PauseMode::Filesystem), true) => Err(RuntimeError::NotNow {
                id: id.clone(),
                reason: "it was paused without memory: it has no processes to keep, only its \
                         files (snapshot it without memory)"
                    .to_owned(),
            }),
            // Frozen in place: its container runs on its disk.
            (Some(_), false) if state.frozen => self.copy_files(id, template, into, true, None),
            (Some(_), false) => self.copy_files(id, template, into, false, None),
            (Some(PauseMode::Memory), true) => self.copy_with_checkpoint(id, template, into),
            (None, false) => {
                self.hold(&state.container, true)?;
                let copied = self.copy_files(id, template, into, true, None);
                // Thawed whatever the copy did: a snapshot must not leave its sandbox stopped.
                self.hold(&state.container, false)?;
                copied
            }
            (None, true) => self.snapshot_running(handle, state, template, into),
        }
    }

    /// Checkpoints a running sandbox, copies its checkpoint and files, and restores it from
    /// its checkpoint whatever the copy did.
    fn snapshot_running(
        &self,
        handle: &Handle,
        state: State,
        template: &Template,
        into: &Path,
    ) -> Result<Template, RuntimeError> {
        let id = &handle.id;
        let dirs = self.dirs(id);
        // Refused (a TCP listener) before anything stops: it runs on untouched.
        self.pause_sandbox(handle, PauseMode::Memory)?;
        let copied = self.copy_with_checkpoint(id, template, into);
        let paused = State {
            paused: Some(PauseMode::Memory),
            ..state
        };
        let resumed = self.restore(
            id,
            &paused,
            &dirs.checkpoint(),
            &dirs.root_of(template),
            paused.limits,
            None,
        );
        match resumed {
            Ok(()) => {
                let running = State {
                    paused: None,
                    ..paused
                };
                self.save(id, &running)?;
                if let Err(err) = fs::remove_dir_all(dirs.checkpoint()) {
                    tracing::warn!(%err, sandbox_id = %id, "cannot remove the restored checkpoint");
                }
            }
            Err(err) => {
                // Its checkpoint stays: it counts as paused with memory, and a resume
                // tries again.
                tracing::error!(err = %error_chain(&err), sandbox_id = %id, "a sandbox checkpointed for a snapshot did not run on; it stays paused");
                let _ = fs::remove_dir_all(into);
                return Err(err);
            }
        }
        copied
    }

    /// Copies a sandbox paused with memory into `into`: its writable layers and its
    /// checkpoint (in `<into>/memory`); returns `template` with both. Nothing is left in
    /// `into` when it fails.
    fn copy_with_checkpoint(
        &self,
        id: &str,
        template: &Template,
        into: &Path,
    ) -> Result<Template, RuntimeError> {
        let image = into.join(MEMORY_DIR);
        let copied = self
            .copy_files(id, template, into, false, Some(&image))
            .and_then(|copied| {
                link_or_copy_dir(&self.dirs(id).checkpoint(), &image)
                    .map(|()| copied)
                    .map_err(|source| RuntimeError::Io {
                        what: "copy the sandbox's checkpoint",
                        source,
                    })
            });
        if copied.is_err() {
            let _ = fs::remove_dir_all(into);
        }
        copied.map(|copied| Template {
            memory: Some(image),
            ..copied
        })
    }

    /// Copies the sandbox's writable layers into `into` (made here; `also` may be made in it
    /// later) and returns `template` with them on top. `attached`: its disk is mounted by a
    /// container that runs.
    fn copy_files(
        &self,
        id: &str,
        template: &Template,
        into: &Path,
        attached: bool,
        also: Option<&Path>,
    ) -> Result<Template, RuntimeError> {
        let dirs = self.dirs(id);
        let image = dirs.existing_image();
        if !attached {
            // A checkpointed or paused sandbox's disk may still be on its way off its loop
            // device: the copy attaches it anew only once it is off.
            rootfs::unmount(&dirs.rootfs(), &dirs.disk(), image.as_deref())
                .map_err(RuntimeError::io("let go of the sandbox's disk"))?;
        }
        let points = template.mount_points();
        let spec = layer::CopySpec {
            dir: dirs.root.clone(),
            image,
            attached,
            points: points.len(),
            into: into.to_owned(),
        };
        let copied = layer::copy(&self.exe, &spec).map_err(|source| {
            let _ = fs::remove_dir_all(into);
            RuntimeError::Io {
                what: "copy the sandbox's writable layer",
                source,
            }
        })?;
        if copied.is_empty() && also.is_none() {
            // Nothing written: no layer, and no directory left for one.
            let _ = fs::remove_dir(into);
        }
        Ok(layer::on_top(template, copied, into))
    }
}

/// Gives `to` (which must not exist) the regular files of the directory `from`: hard links
/// where the filesystem allows, copies elsewhere. Both are host root's alone.
fn link_or_copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = to.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    fs::DirBuilder::new().mode(0o700).create(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let target = to.join(entry.file_name());
        if fs::hard_link(entry.path(), &target).is_err() {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
