//! Snapshots shared through the object store (`--object-store`), so that in a cluster a
//! snapshot taken on one node starts sandboxes on any other, and outlives its node.
//!
//! - Taking one: its snapshot directories (see [`super::snapshot`]: its new layers and memory
//!   image, and those of the snapshots below it) are written to the object store before it
//!   is recorded; its record says which, and where the node that took it keeps snapshots,
//!   built layers and the base template (its layers' paths start there).
//! - Using one elsewhere: a node that does not know a name looks for a shared snapshot of the
//!   team in the database and takes it into its catalogue with its paths made its own
//!   ([`Lifecycle::adopt_snapshot`]); the first create fetches what it lacks: the snapshot
//!   directories, and built layers from the object store as for any template
//!   ([`Lifecycle::fetch_snapshot`]). The node then reports it as cached, so placement
//!   prefers it.
//! - Deleting one (on any node: the record is shared): the other nodes drop it from their
//!   catalogues within a few seconds ([`Lifecycle::forget_deleted_snapshots`]) and its files
//!   once no sandbox uses them. What it wrote to the object store stays (as a deleted
//!   template's layers do).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use cove_runtime::Template;
use serde::{Deserialize, Serialize};

use super::{
    Lifecycle, LifecycleError, TemplateEntry, TemplateKind,
    layers::{layers_below, snapshot_owner, template_store_layers},
};
use crate::{
    secrets,
    store::{Store, StoreError},
};

/// What the other nodes need to start a snapshot's sandboxes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shared {
    /// The snapshot directories (names in a node's snapshots directory) its layers and
    /// memory image are in, each in the object store under its name.
    pub dirs: Vec<String>,
    /// Where the node that took it keeps what its layers' paths name.
    pub made_in: Places,
}

/// Where a node keeps layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Places {
    /// Snapshots' directories.
    pub snapshots: PathBuf,
    /// The layer store (built templates' layers).
    pub layer_store: PathBuf,
    /// The base template.
    pub base: PathBuf,
}

impl Places {
    /// `path`, below one of these places, at the same place below `here`'s; any other path
    /// (the host's system directories of the base template) as it is.
    fn moved(&self, path: &Path, here: &Places) -> PathBuf {
        [
            (&self.snapshots, &here.snapshots),
            (&self.layer_store, &here.layer_store),
            (&self.base, &here.base),
        ]
        .into_iter()
        .find_map(|(from, to)| Some(to.join(path.strip_prefix(from).ok()?)))
        .unwrap_or_else(|| path.to_owned())
    }
}

/// The snapshot directories `template`'s layers and memory image are in (names in
/// `snapshots`), each once, in order.
fn dirs_of(template: &Template, snapshots: &Path) -> Vec<String> {
    let mut dirs: Vec<String> = Vec::new();
    for path in template.paths() {
        let name = path
            .strip_prefix(snapshots)
            .ok()
            .and_then(|rest| rest.components().next())
            .and_then(|c| c.as_os_str().to_str());
        if let Some(name) = name
            && !dirs.iter().any(|d| d == name)
        {
            dirs.push(name.to_owned());
        }
    }
    dirs
}

/// `entry` with its paths moved from where it was taken to `here`.
fn moved_here(mut entry: TemplateEntry, shared: &Shared, here: &Places) -> TemplateEntry {
    for layer in &mut entry.template.layers {
        layer.path = shared.made_in.moved(&layer.path, here);
    }
    if let Some(memory) = &mut entry.template.memory {
        *memory = shared.made_in.moved(memory, here);
    }
    entry
}

impl Lifecycle {
    fn places(&self) -> Places {
        Places {
            snapshots: self.config.snapshots_dir.clone(),
            layer_store: self.templates.store().root().to_owned(),
            base: self.templates.base_dir().to_owned(),
        }
    }

    /// Writes the snapshot directories of `template` (taken here) to the object store, when
    /// the server has one; returns what its record keeps of them.
    pub(super) async fn share_snapshot(
        &self,
        template: &Template,
    ) -> Result<Option<Shared>, LifecycleError> {
        let Some(depot) = self.templates.depot() else {
            return Ok(None);
        };
        let dirs = dirs_of(template, &self.config.snapshots_dir);
        let began = std::time::Instant::now();
        for name in &dirs {
            let dir = self.config.snapshots_dir.join(name);
            depot.put_tree(name, &dir).await.map_err(|err| {
                tracing::warn!(err = %cove_image::error_chain(&err), snapshot_dir = %name, "cannot store a snapshot in the object store");
                LifecycleError::LayersUnavailable(format!(
                    "cannot store the snapshot in the object store: {}",
                    cove_image::error_chain(&err)
                ))
            })?;
        }
        tracing::debug!(
            dirs = dirs.len(),
            took_ms = began.elapsed().as_millis() as u64,
            "snapshot stored in the object store"
        );
        Ok(Some(Shared {
            dirs,
            made_in: self.places(),
        }))
    }

    /// The snapshot of `team` that `name` names, taken on another node of the cluster and
    /// shared, now in this node's catalogue with its paths made this node's (its files come
    /// with the first sandbox made from it: [`Lifecycle::fetch_snapshot`]). None outside a
    /// cluster, or when there is no such snapshot. The database is read on a blocking
    /// thread.
    pub(super) async fn adopt_snapshot(&self, team: &str, name: &str) -> Option<TemplateEntry> {
        self.store.node()?;
        let owner = team.to_owned();
        let read = self
            .read_store(move |store| store.cluster_templates::<TemplateEntry>(&owner))
            .await;
        let stored = match read {
            Ok(stored) => stored,
            Err(err) => {
                tracing::warn!(?err, team = %team, "cannot look for the team's shared snapshots");
                return None;
            }
        };
        let (entry, shared) = stored.into_iter().find_map(|(entry, _)| {
            let shared = entry.shared.clone()?;
            (matches!(entry.kind, TemplateKind::Snapshot { .. }) && entry.answers_to(name))
                .then_some((entry, shared))
        })?;
        let entry = moved_here(entry, &shared, &self.places());
        self.templates.put(entry.clone());
        tracing::info!(snapshot = %entry.id, team = %team, "a snapshot shared by another node is in this node's catalogue");
        Some(entry)
    }

    /// Makes sure this node has every file snapshot `entry`'s sandboxes start from: its
    /// snapshot directories and the built layers under it, fetched from the object store
    /// when missing (the layers are kept for the snapshot while this node knows it).
    pub(super) async fn fetch_snapshot(&self, entry: &TemplateEntry) -> Result<(), LifecycleError> {
        let Some(shared) = &entry.shared else {
            return Ok(());
        };
        let snapshots = &self.config.snapshots_dir;
        let store = self.templates.store();
        let missing_dirs: Vec<&String> = shared
            .dirs
            .iter()
            .filter(|name| !snapshots.join(name).exists())
            .collect();
        let store_layers = template_store_layers(store, &entry.template);
        if !missing_dirs.is_empty() || store_layers.iter().any(|l| !store.contains(l)) {
            let depot = self.templates.depot().ok_or_else(|| {
                LifecycleError::LayersUnavailable(format!(
                    "snapshot {:?} was taken on another node (its files are not on this one) and this node has no object store to fetch them from (cove serve --object-store)",
                    entry.alias
                ))
            })?;
            let unavailable = |err: cove_depot::DepotError| {
                tracing::warn!(err = %cove_image::error_chain(&err), snapshot = %entry.id, "cannot fetch a snapshot's files");
                LifecycleError::LayersUnavailable(format!(
                    "cannot fetch snapshot {:?}'s files from the object store: {}",
                    entry.alias,
                    cove_image::error_chain(&err)
                ))
            };
            super::snapshot::make_dir(snapshots).map_err(|err| {
                LifecycleError::LayersUnavailable(format!("cannot keep snapshot files: {err}"))
            })?;
            for name in missing_dirs {
                let into = snapshots.join(name);
                let staging = snapshots.join(format!("{name}.fetching-{}", secrets::random_id(8)));
                // Not collected as unused while they arrive.
                let _held = self
                    .layers_in_use
                    .hold_paths(vec![into.clone(), staging.clone()]);
                depot
                    .fetch_tree(name, &into, &staging)
                    .await
                    .map_err(unavailable)?;
            }
            let owner = snapshot_owner(&entry.id);
            for layer in &store_layers {
                depot
                    .fetch(store, layer, &owner)
                    .await
                    .map_err(unavailable)?;
            }
        }
        // A base template of another version, or a layer outside what is shared.
        if let Some(absent) = entry.template.paths().find(|path| !path.exists()) {
            return Err(LifecycleError::LayersUnavailable(format!(
                "snapshot {:?} uses {} which this node does not have (was it taken by another version of cove?)",
                entry.alias,
                absent.display()
            )));
        }
        self.templates.note_cached(&entry.id);
        Ok(())
    }

    /// In a cluster, before a create from `name`: brings this node's entry of the team's
    /// snapshot `name` names, if it has one, up to date with the database — gone when it was
    /// deleted through another node (a snapshot made under the name since taken in instead),
    /// the new one when it was taken again under its name elsewhere. A name this node does
    /// not know is the caller's to look for ([`Lifecycle::adopt_snapshot`]).
    pub(super) async fn sync_snapshot(&self, team: &str, name: &str) -> Result<(), LifecycleError> {
        if self.store.node().is_none() {
            return Ok(());
        }
        let known = self
            .templates
            .snapshots(team)
            .into_iter()
            .find(|e| e.answers_to(name));
        let Some(known) = known else {
            return Ok(());
        };
        match self.stored(&known.id).await? {
            Some(stored) if stored.created_at == known.created_at => {}
            // Taken again under its name on another node, and shared: that one now.
            Some(stored) if let Some(shared) = stored.shared.clone() => {
                self.release_template_layers(&known);
                self.templates
                    .put(moved_here(stored, &shared, &self.places()));
                self.templates.forget_cached(&known.id);
                self.collect_layers().await;
            }
            // Deleted (another snapshot may have the name now), or taken again where only
            // that node has it.
            _ => {
                self.forget(std::slice::from_ref(&known)).await;
                self.adopt_snapshot(team, name).await;
            }
        }
        Ok(())
    }

    /// Runs a read of the database (they block) on a blocking thread; a panic in it comes
    /// back as an error.
    async fn read_store<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, LifecycleError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || read(&store))
            .await
            .map_err(|join| LifecycleError::Crashed(join.to_string()))??)
    }

    /// The stored entry of template `id`, read on a blocking thread.
    async fn stored(&self, id: &str) -> Result<Option<TemplateEntry>, LifecycleError> {
        let id = id.to_owned();
        self.read_store(move |store| store.template(&id)).await
    }

    /// In a cluster, checks that snapshot `entry` was not deleted through another node
    /// since this one took it into its catalogue (it then leaves it at once).
    pub(super) async fn check_not_deleted(
        &self,
        entry: &TemplateEntry,
    ) -> Result<(), LifecycleError> {
        if self.store.node().is_none() || !matches!(entry.kind, TemplateKind::Snapshot { .. }) {
            return Ok(());
        }
        if self.stored(&entry.id).await?.is_some() {
            return Ok(());
        }
        self.forget(std::slice::from_ref(entry)).await;
        Err(LifecycleError::TemplateNotFound(entry.alias.clone()))
    }

    /// What the snapshots in the object store (every node's) need there: their directories,
    /// and the built layers under them. Read from the database on a blocking thread.
    pub async fn shared_in_use(&self) -> Result<cove_depot::Kept, LifecycleError> {
        let entries = self
            .read_store(|store| store.every_template::<TemplateEntry>())
            .await?;
        let mut kept = cove_depot::Kept::default();
        for entry in entries {
            let Some(shared) = entry.shared else { continue };
            kept.trees.extend(shared.dirs);
            kept.layers
                .extend(layers_below(&shared.made_in.layer_store, &entry.template));
        }
        Ok(kept)
    }

    /// Every `period` until aborted: [`Lifecycle::forget_deleted_snapshots`].
    pub async fn watch_deleted_snapshots(self: Arc<Self>, period: std::time::Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.forget_deleted_snapshots().await;
        }
    }

    /// Drops from this node's catalogue the snapshots deleted on other nodes (their files go
    /// once no sandbox uses them). Only in a cluster: a server alone deletes its own.
    pub async fn forget_deleted_snapshots(&self) {
        if self.store.node().is_none() {
            return;
        }
        let known = self.templates.all_snapshots();
        if known.is_empty() {
            return;
        }
        let ids = match self.read_store(|store| store.template_ids()).await {
            Ok(ids) => ids,
            Err(err) => {
                tracing::debug!(?err, "cannot check which snapshots are still there");
                return;
            }
        };
        let gone: Vec<TemplateEntry> = known.into_iter().filter(|e| !ids.contains(&e.id)).collect();
        if gone.is_empty() {
            return;
        }
        self.forget(&gone).await;
    }

    /// Takes snapshots deleted through other nodes out of this node's catalogue; their
    /// files go once no sandbox uses them.
    async fn forget(&self, gone: &[TemplateEntry]) {
        for entry in gone {
            self.templates.remove(&entry.id);
            self.templates.forget_cached(&entry.id);
            self.release_template_layers(entry);
            tracing::info!(snapshot = %entry.id, "a snapshot deleted through another node is gone from this one");
        }
        self.collect_layers().await;
    }
}

#[cfg(test)]
mod tests {
    use cove_runtime::Layer;

    use super::*;

    fn places(root: &str) -> Places {
        Places {
            snapshots: PathBuf::from(format!("{root}/snapshots")),
            layer_store: PathBuf::from(format!("{root}/images")),
            base: PathBuf::from(format!("{root}/templates/base")),
        }
    }

    fn layer(path: &str) -> Layer {
        Layer {
            path: PathBuf::from(path),
            at: PathBuf::from("/"),
        }
    }

    #[test]
    fn paths_move_to_the_same_places_of_another_node() {
        let (there, here) = (places("/var/lib/a"), places("/srv/b"));
        for (from, to) in [
            ("/var/lib/a/snapshots/s1/0", "/srv/b/snapshots/s1/0"),
            (
                "/var/lib/a/images/layers/sha256/ab/root",
                "/srv/b/images/layers/sha256/ab/root",
            ),
            (
                "/var/lib/a/templates/base/v3/root",
                "/srv/b/templates/base/v3/root",
            ),
            ("/usr", "/usr"),
        ] {
            assert_eq!(there.moved(Path::new(from), &here), PathBuf::from(to));
        }
    }

    #[test]
    fn a_template_names_each_snapshot_directory_once() {
        let template = Template {
            name: "t".into(),
            layers: vec![
                layer("/s/new/1"),
                layer("/s/new/0"),
                layer("/s/older/0"),
                layer("/images/layers/sha256/ab/root"),
                layer("/usr"),
            ],
            memory: Some(PathBuf::from("/s/new/memory")),
        };
        assert_eq!(dirs_of(&template, Path::new("/s")), vec!["new", "older"]);
    }
}
