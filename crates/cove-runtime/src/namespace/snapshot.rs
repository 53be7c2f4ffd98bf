//! Snapshots: a sandbox's writable layers copied into read-only layers (see
//! [`crate::layer`]). A running sandbox is frozen for the copy, so that it is one moment of
//! its files, and thawed right after; a paused one is copied as it is.

use std::{fs, path::Path};

use super::NamespaceRuntime;
use crate::{Handle, PauseMode, RuntimeError, Template, layer};

impl NamespaceRuntime {
    pub(super) fn snapshot_sandbox(
        &self,
        handle: &Handle,
        template: &Template,
        into: &Path,
    ) -> Result<Template, RuntimeError> {
        let id = &handle.id;
        let state = self.current(handle)?;
        let dirs = self.dirs(id);
        let points = template.mount_points();
        let image = dirs.disk_image();
        let spec = layer::CopySpec {
            dir: dirs.root.clone(),
            image: image.exists().then_some(image),
            attached: state.paused != Some(PauseMode::Filesystem),
            points: points.len(),
            into: into.to_owned(),
        };
        let freeze =
            state.paused.is_none() && self.cgroups.as_ref().is_some_and(|c| c.can_freeze());
        if state.paused.is_none() && !freeze {
            tracing::warn!(sandbox_id = %id, "no cgroup freezer: the snapshot is copied while the sandbox runs");
        }
        if freeze {
            self.freeze(id, true)?;
        }
        let copied = layer::copy(&self.exe, &spec);
        if freeze {
            // Thawed whatever the copy did: a snapshot must not leave its sandbox stopped.
            self.freeze(id, false)?;
        }
        let copied = copied.map_err(|source| {
            let _ = fs::remove_dir_all(into);
            RuntimeError::Io {
                what: "copy the sandbox's writable layer",
                source,
            }
        })?;
        if copied.is_empty() {
            // Nothing written: no layer, and no directory left for one.
            let _ = fs::remove_dir(into);
        }
        Ok(layer::on_top(template, copied, into))
    }
}
