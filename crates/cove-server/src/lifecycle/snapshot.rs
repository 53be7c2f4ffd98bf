//! Snapshots: a sandbox's files frozen into read-only layers on top of its template's
//! (`POST /sandboxes/{id}/snapshots`), which become a template of the team's: sandboxes
//! start from it like from any other (`Sandbox.create(snapshotID)`), it is listed by
//! `GET /snapshots` and deleted by `DELETE /templates/{id}`. What is kept is the files, and
//! where the sandbox's backend can (gVisor) its processes and memory too, in a checkpoint
//! image beside the layers: its sandboxes start with those processes running (the API says
//! which: `mode: full` or `filesystem`; see [`Keep`]).
//!
//! Layers live in `<snapshots_dir>/<id>/` and are shared: by the snapshot's template, by
//! every sandbox made from it (its record keeps its layers, so a sandbox outlives the
//! deletion of its template, paused or not), and by snapshots of those sandboxes. A layer
//! directory is removed when nothing uses it any more ([`Lifecycle::collect_layers`]).

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use cove_runtime::Template;

use super::{Lifecycle, LifecycleError, TemplateEntry, TemplateKind};
use crate::{clock, secrets};

/// Layer directories in use by work not yet recorded anywhere: a snapshot being copied, a
/// create from a snapshot before its record is stored.
#[derive(Debug, Default)]
pub struct LayersInUse {
    held: Arc<Mutex<HashMap<PathBuf, usize>>>,
}

/// Keeps its layers in use until dropped.
#[derive(Debug)]
pub struct LayersHeld {
    held: Arc<Mutex<HashMap<PathBuf, usize>>>,
    paths: Vec<PathBuf>,
}

impl LayersInUse {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, usize>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds every layer of `template`.
    pub fn hold(&self, template: &Template) -> LayersHeld {
        self.hold_paths(template.paths().map(Path::to_path_buf).collect())
    }

    pub(super) fn hold_paths(&self, paths: Vec<PathBuf>) -> LayersHeld {
        let mut held = self.held();
        for path in &paths {
            *held.entry(path.clone()).or_default() += 1;
        }
        LayersHeld {
            held: self.held.clone(),
            paths,
        }
    }

    fn paths(&self) -> HashSet<PathBuf> {
        self.held().keys().cloned().collect()
    }
}

impl Drop for LayersHeld {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for path in &self.paths {
            if let Some(count) = held.get_mut(path) {
                *count -= 1;
                if *count == 0 {
                    held.remove(path);
                }
            }
        }
    }
}

/// What a snapshot or fork keeps of the sandbox's processes, as asked (`memory`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Files only (`memory: false`).
    Files,
    /// Memory too, or fail (`memory: true`).
    Memory,
    /// Memory where the sandbox's backend can keep it now, else files (no `memory`): the
    /// answer's `mode` says which.
    MemoryIfItCan,
}

impl Keep {
    pub fn asked(memory: Option<bool>) -> Self {
        match memory {
            Some(false) => Keep::Files,
            Some(true) => Keep::Memory,
            None => Keep::MemoryIfItCan,
        }
    }
}

/// A snapshot just made: where its layers are, held until it is recorded somewhere.
#[derive(Debug)]
pub struct Made {
    pub template: Template,
    pub _held: LayersHeld,
}

impl Lifecycle {
    /// Snapshots a sandbox of `team` into a template of the team's, named `name` when
    /// given (a name used before moves to the new snapshot).
    pub async fn create_snapshot(
        self: &Arc<Self>,
        team: &str,
        id: &str,
        name: Option<String>,
        memory: Option<bool>,
    ) -> Result<TemplateEntry, LifecycleError> {
        if let Some(name) = &name {
            check_name(name)?;
        }
        let live = self.get(team, id)?;
        if let Some(n) = &name {
            // In a cluster, the name may be a snapshot's taken (and shared) on another node.
            self.sync_snapshot(team, n).await?;
            self.snapshot_named(team, n).await;
        }
        let existing = match &name {
            Some(n) => match self.templates.get(team, n) {
                Ok(e) if matches!(e.kind, TemplateKind::Snapshot { .. }) => Some(e),
                // One catalogue: a name is one template's, a snapshot's or a built one's.
                Ok(e) if matches!(e.kind, TemplateKind::Built { .. }) => {
                    return Err(LifecycleError::NameTaken(n.clone()));
                }
                Ok(_) | Err(LifecycleError::TemplateNotFound(_)) => None,
                Err(LifecycleError::TemplateNotReady(_)) => {
                    return Err(LifecycleError::NameTaken(n.clone()));
                }
                Err(err) => return Err(err),
            },
            None => None,
        };
        if let Some(n) = &name
            && existing.is_none()
            && !matches!(
                self.templates.catalog().name_owner(team, n)?,
                crate::catalog::Owner::Nobody
            )
        {
            return Err(LifecycleError::NameTaken(n.clone()));
        }
        let made = self.snapshot_of(&live, Keep::asked(memory)).await?;
        let shared = self.share_snapshot(&made.template).await?;
        let record = live.record();
        // What the sandbox's template set for its processes, it sets for the snapshot's.
        let source = self.templates.get(team, &record.template_id).ok();
        let snapshot_id = existing
            .as_ref()
            .map_or_else(|| secrets::random_id(20), |e| e.id.clone());
        let entry = TemplateEntry {
            alias: name.clone().unwrap_or_else(|| snapshot_id.clone()),
            names: name.iter().map(|n| format!("{team}/{n}")).collect(),
            id: snapshot_id,
            template: Template {
                name: name.unwrap_or_else(|| id.to_owned()),
                ..made.template.clone()
            },
            created_at: clock::now_ms(),
            kind: TemplateKind::Snapshot {
                team: team.to_owned(),
                sandbox: id.to_owned(),
            },
            defaults: record.defaults.clone(),
            start: source.as_ref().and_then(|s| s.start.clone()),
            cpu_count: Some(record.cpu_count),
            memory_mb: Some(record.memory_mb),
            store_layers: Vec::new(),
            shell: source.and_then(|s| s.shell),
            // Its sandboxes run where its source ran, when the source named a backend.
            runtime: record.metadata.get(super::settings::RUNTIME_KEY).cloned(),
            shared,
        };
        // The layer store's layers under it (a built template's) stay while it does.
        self.retain_template_layers(&entry).map_err(|err| {
            LifecycleError::BadRequest(format!(
                "a layer of the sandbox's template {:?} is gone ({err}); it cannot be snapshotted",
                record.template_id
            ))
        })?;
        if let Err(err) = self.store.put_template(&entry.id, team, &entry) {
            self.release_template_layers(&entry);
            return Err(err.into());
        }
        self.templates.put(entry.clone());
        if entry.shared.is_some() {
            self.templates.note_cached(&entry.id);
        }
        drop(made);
        if existing.is_some() {
            // The layers the name had before, unless something else uses them.
            self.collect_layers().await;
        }
        tracing::info!(sandbox_id = %id, team = %team, snapshot = %entry.id, "snapshot taken");
        Ok(entry)
    }

    /// Copies `live`'s files into new layers, and its memory as `keep` says (in its turn:
    /// not while it pauses or resumes).
    pub(super) async fn snapshot_of(
        self: &Arc<Self>,
        live: &Arc<super::Live>,
        keep: Keep,
    ) -> Result<Made, LifecycleError> {
        let (this, live) = (self.clone(), live.clone());
        self.in_own_task(async move {
            let _turn = this.turn_of(&live).await?;
            let record = live.record();
            let template = match record.template.clone() {
                Some(template) => template,
                None => {
                    this.templates
                        .get(&record.team, &record.template_id)?
                        .template
                }
            };
            let into = this.config.snapshots_dir.join(secrets::random_id(20));
            let held = this.layers_in_use.hold_paths(vec![into.clone()]);
            let handle = live.handle();
            let dir = this.config.snapshots_dir.clone();
            let id = record.id.clone();
            let made = this
                .blocking(move |r| {
                    make_dir(&dir)?;
                    match keep {
                        Keep::Files => r.snapshot(&handle, &template, &into),
                        Keep::Memory => r.snapshot_memory(&handle, &template, &into),
                        Keep::MemoryIfItCan => match r.snapshot_memory(&handle, &template, &into) {
                            Err(
                                err @ (cove_runtime::RuntimeError::Unsupported { .. }
                                | cove_runtime::RuntimeError::NotNow { .. }),
                            ) => {
                                tracing::info!(sandbox_id = %id, reason = %err, "snapshot keeps the files only");
                                let _ = std::fs::remove_dir_all(&into);
                                r.snapshot(&handle, &template, &into)
                            }
                            other => other,
                        },
                    }
                })
                .await
                .map_err(|source| LifecycleError::Transition {
                    id: record.id.clone(),
                    what: "snapshotted",
                    source,
                })?;
            // Its layers are held from here on by the template they make.
            let held_now = this.layers_in_use.hold(&made);
            drop(held);
            Ok(Made {
                template: made,
                _held: held_now,
            })
        })
        .await
    }

    /// Takes the stored snapshots into the registry (at start).
    pub fn load_snapshots(&self) -> Result<usize, LifecycleError> {
        let stored: Vec<TemplateEntry> = self.store.templates()?;
        let count = stored.len();
        for entry in stored {
            self.templates.put(entry);
        }
        Ok(count)
    }

    /// `team`'s snapshots, newest first: of sandbox `sandbox` or named `name` when given.
    pub fn snapshots(
        &self,
        team: &str,
        sandbox: Option<&str>,
        name: Option<&str>,
    ) -> Vec<TemplateEntry> {
        select_snapshots(self.templates.snapshots(team), team, sandbox, name)
    }

    /// The snapshot of `team` that `name` names, if it names one (in a cluster, also one
    /// another node took and shared).
    pub async fn snapshot_named(&self, team: &str, name: &str) -> Option<TemplateEntry> {
        let known = self
            .templates
            .snapshots(team)
            .into_iter()
            .find(|e| e.answers_to(name));
        match known {
            Some(known) => Some(known),
            None => self.adopt_snapshot(team, name).await,
        }
    }

    /// Deletes a snapshot of `team`. Sandboxes made from it keep running, and its layers
    /// stay as long as they do.
    pub async fn delete_snapshot(&self, entry: &TemplateEntry) -> Result<(), LifecycleError> {
        // Deleted through another node already: not found, as on that node.
        self.check_not_deleted(entry).await?;
        self.store.delete_template(&entry.id)?;
        self.templates.remove(&entry.id);
        self.release_template_layers(entry);
        tracing::info!(snapshot = %entry.id, "snapshot deleted");
        self.collect_layers().await;
        Ok(())
    }

    /// Whether `template` has layers of a snapshot.
    pub(super) fn has_snapshot_layers(&self, template: &Template) -> bool {
        template
            .layers
            .iter()
            .any(|l| l.path.starts_with(&self.config.snapshots_dir))
    }

    /// Removes the snapshot layers nothing uses any more: no template, no sandbox (running
    /// or paused, as stored), no work under way.
    pub async fn collect_layers(&self) {
        let mut used = self.templates.layer_paths();
        used.extend(self.layers_in_use.paths());
        match self.store.sandboxes() {
            Ok(records) => used.extend(
                records
                    .into_iter()
                    .filter_map(|r| r.template)
                    .flat_map(|t| t.paths().map(Path::to_path_buf).collect::<Vec<_>>()),
            ),
            Err(err) => {
                // Not knowing what sandboxes use, remove nothing.
                tracing::warn!(
                    ?err,
                    "cannot read the sandboxes; snapshot layers are kept for now"
                );
                return;
            }
        }
        let dir = self.config.snapshots_dir.clone();
        let removed = self
            .blocking(move |_| Ok(remove_unused(&dir, &used)))
            .await
            .unwrap_or_default();
        for gone in removed {
            tracing::info!(layers = %gone.display(), "snapshot layers removed: nothing uses them");
        }
    }
}

/// The snapshot directory, host root's alone like the rest of the state.
pub(super) fn make_dir(dir: &Path) -> Result<(), cove_runtime::RuntimeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| cove_runtime::RuntimeError::Io {
            what: "create the snapshots directory",
            source,
        })
}

/// Removes the directories of `dir` none of whose layers is `used`; returns them.
fn remove_unused(dir: &Path, used: &HashSet<PathBuf>) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if used.iter().any(|u| u.starts_with(&path)) {
            continue;
        }
        // Everything in it was copied there by host root: no link in it leads out.
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed.push(path),
            Err(err) => {
                tracing::warn!(%err, layers = %path.display(), "cannot remove unused snapshot layers")
            }
        }
    }
    removed
}

/// A snapshot's name: what E2B allows in a template name.
fn check_name(name: &str) -> Result<(), LifecycleError> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(LifecycleError::BadRequest(format!(
            "invalid snapshot name {name:?}: use letters, digits, '-', '_' and '.' (at most 128)"
        )))
    }
}

/// The snapshots among `entries` (of `team`), newest first: of sandbox `sandbox` or named
/// `name` when given.
pub fn select_snapshots(
    entries: impl IntoIterator<Item = TemplateEntry>,
    team: &str,
    sandbox: Option<&str>,
    name: Option<&str>,
) -> Vec<TemplateEntry> {
    let mut found: Vec<TemplateEntry> = entries
        .into_iter()
        .filter(|e| match &e.kind {
            TemplateKind::Snapshot { sandbox: of, .. } => {
                sandbox.is_none_or(|s| s == of)
                    && name.is_none_or(|n| e.answers_to(n) || e.answers_to(&format!("{team}/{n}")))
            }
            TemplateKind::BuiltIn | TemplateKind::Built { .. } => false,
        })
        .collect();
    found.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_layer_directories_go_and_used_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["used", "unused"] {
            std::fs::create_dir_all(dir.path().join(name).join("0")).unwrap();
        }
        let used = HashSet::from([dir.path().join("used/0")]);
        assert_eq!(
            remove_unused(dir.path(), &used),
            vec![dir.path().join("unused")]
        );
        assert!(dir.path().join("used/0").exists());
    }

    #[test]
    fn held_layers_are_held_until_the_last_holder_goes() {
        let inuse = LayersInUse::default();
        let a = inuse.hold_paths(vec![PathBuf::from("/x")]);
        let b = inuse.hold_paths(vec![PathBuf::from("/x")]);
        drop(a);
        assert!(inuse.paths().contains(Path::new("/x")));
        drop(b);
        assert!(inuse.paths().is_empty());
    }

    #[test]
    fn snapshot_names_are_checked() {
        assert!(check_name("my-snap_1.0").is_ok());
        for bad in ["", "a/b", "a:b", "ä"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
