//! The one catalogue of templates sandboxes are created from, by id or name (`name:tag` for
//! a tagged build): the embedded `base` (every team's), the templates each team built (whose
//! builds the catalogue database keeps and whose layers the layer store holds), and each
//! team's snapshots (see [`super::snapshot`]), which are templates too, as on E2B: stored,
//! back after a restart, listed and deleted like built ones.

use std::{
    collections::{BTreeSet, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use cove_depot::Depot;
use cove_image::{Digest, LayerStore};
use cove_runtime::{Layer, Template, template::TemplateError};
use serde::{Deserialize, Serialize};

use super::LifecycleError;
use crate::{
    catalog::{self, BuildRow, Built, Catalog, Owner, TemplateRow},
    store::SandboxDefaults,
};

/// What a template's sandboxes run when they start, and how to tell they are ready.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartCommand {
    pub start_cmd: Option<String>,
    pub ready_cmd: Option<String>,
}

/// Whose a template is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateKind {
    /// Built into the server, for every team.
    BuiltIn,
    /// Built by `team` (build `build`).
    Built { team: String, build: String },
    /// A snapshot of `sandbox`, for `team` alone.
    Snapshot { team: String, sandbox: String },
}

/// A template as the API knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateEntry {
    pub id: String,
    pub alias: String,
    /// Other names clients use for it.
    pub names: Vec<String>,
    pub template: Template,
    pub created_at: i64,
    /// What kind of template it is, and whose.
    pub kind: TemplateKind,
    /// Its user, working directory and variables (none: E2B's defaults).
    #[serde(default)]
    pub defaults: Option<SandboxDefaults>,
    #[serde(default)]
    pub start: Option<StartCommand>,
    /// What a create that names no resources gets.
    #[serde(default)]
    pub cpu_count: Option<u32>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// Its layers in the layer store (kept while its sandboxes run); for a snapshot, found
    /// again from its layers' paths.
    #[serde(skip)]
    pub store_layers: Vec<Digest>,
    /// The shell its start and ready commands run in (none: `/bin/sh`).
    #[serde(default)]
    pub shell: Option<String>,
    /// The backend its sandboxes run on unless a create names one (none: the server's
    /// default). A snapshot's is its source's.
    #[serde(default)]
    pub runtime: Option<String>,
    /// For a snapshot stored in the object store too: what the other nodes of a cluster
    /// fetch to start its sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<super::shared_snapshots::Shared>,
}

impl TemplateEntry {
    /// What warm sandboxes of it are kept under: a new build is another template to them.
    pub fn warm_key(&self) -> String {
        match &self.kind {
            TemplateKind::BuiltIn | TemplateKind::Snapshot { .. } => self.id.clone(),
            TemplateKind::Built { build, .. } => format!("{}@{build}", self.id),
        }
    }

    /// Whether `team` may use it.
    pub fn visible_to(&self, team: &str) -> bool {
        match &self.kind {
            TemplateKind::BuiltIn => true,
            TemplateKind::Built { team: owner, .. }
            | TemplateKind::Snapshot { team: owner, .. } => owner == team,
        }
    }

    /// Whether `name` (`id`, a name or the alias, with or without a `:tag`) is this one.
    pub fn answers_to(&self, name: &str) -> bool {
        let name = name.split(':').next().unwrap_or(name);
        self.id == name || self.alias == name || self.names.iter().any(|n| n == name)
    }

    /// The id clients use with its tag (E2B's `snapshotID`): its first name, or its id.
    pub fn tagged_id(&self) -> String {
        format!("{}:default", self.names.first().unwrap_or(&self.id))
    }
}

/// The registry.
#[derive(Clone, Debug)]
pub struct Templates {
    base: Arc<TemplateEntry>,
    /// Where the base template is built.
    base_dir: PathBuf,
    catalog: Arc<Catalog>,
    store: LayerStore,
    /// Where built templates' layers are shared with the other nodes of a cluster.
    depot: Option<Arc<Depot>>,
    /// The built templates (ids) whose layers this machine has, as far as it knows: built
    /// or fetched here, or found complete at start. Reported to the cluster's placement.
    cached: Arc<RwLock<BTreeSet<String>>>,
    /// Snapshots (shared: they come and go while the server runs; stored by the lifecycle).
    snapshots: Arc<RwLock<Vec<TemplateEntry>>>,
}

/// The names E2B's code-interpreter SDKs create sandboxes of (`base` here, which has Python
/// and ipykernel).
pub const CODE_INTERPRETER_NAMES: [&str; 2] = ["code-interpreter-v1", "code-interpreter"];

impl Templates {
    /// Builds (or reuses) the base template under `dir`; built templates come from `catalog`
    /// and their layers from `store`.
    pub fn load(
        dir: &Path,
        catalog: Arc<Catalog>,
        store: LayerStore,
        depot: Option<Arc<Depot>>,
    ) -> Result<Self, TemplateError> {
        let base_dir = dir.join("base");
        let base = cove_runtime::template::base(&base_dir)?;
        let entry = TemplateEntry {
            id: "base".to_owned(),
            alias: "base".to_owned(),
            names: ["base"]
                .into_iter()
                .chain(CODE_INTERPRETER_NAMES)
                .map(str::to_owned)
                .collect(),
            template: base,
            created_at: crate::clock::now_ms(),
            kind: TemplateKind::BuiltIn,
            defaults: None,
            start: None,
            cpu_count: None,
            memory_mb: None,
            store_layers: Vec::new(),
            shell: None,
            runtime: None,
            shared: None,
        };
        Ok(Self {
            base: Arc::new(entry),
            base_dir,
            catalog,
            store,
            depot,
            cached: Arc::default(),
            snapshots: Arc::default(),
        })
    }

    /// The built-in `base` template.
    pub fn base(&self) -> &TemplateEntry {
        &self.base
    }

    /// Where the base template is built (its layers are below it).
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn store(&self) -> &LayerStore {
        &self.store
    }

    /// Where built templates' layers are shared, when the server shares them.
    pub fn depot(&self) -> Option<&Arc<Depot>> {
        self.depot.as_ref()
    }

    /// The built templates whose layers this machine has (see [`Templates::note_cached`]).
    pub fn cached(&self) -> Vec<String> {
        self.cached
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Notes that this machine has every layer of template `id` (its build finished here, or
    /// they were fetched).
    pub fn note_cached(&self, id: &str) {
        self.cached
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned());
    }

    /// Notes that this machine may no longer have template `id`'s layers (a snapshot deleted
    /// elsewhere).
    pub fn forget_cached(&self, id: &str) {
        self.cached
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Finds the built templates whose default build's layers are all here (at start).
    pub fn find_cached(&self) -> Result<usize, LifecycleError> {
        let mut found = 0;
        for row in self.catalog.all_templates()? {
            let Some(build) = self.build_for(&row, None)? else {
                continue;
            };
            let Some(entry) = self.entry(&row, &build) else {
                continue;
            };
            if entry.store_layers.iter().all(|l| self.store.contains(l)) {
                self.note_cached(&row.id);
                found += 1;
            }
        }
        Ok(found)
    }

    /// Makes sure this machine has the layers of built template `entry`, fetching from the
    /// object store those it lacks (a template built on another node of the cluster); each
    /// is kept for the build, as its builder keeps its own.
    pub async fn ensure_local(&self, entry: &TemplateEntry) -> Result<(), LifecycleError> {
        let TemplateKind::Built { build, .. } = &entry.kind else {
            return Ok(());
        };
        let missing: Vec<&Digest> = entry
            .store_layers
            .iter()
            .filter(|layer| !self.store.contains(layer))
            .collect();
        if missing.is_empty() {
            self.note_cached(&entry.id);
            return Ok(());
        }
        let Some(depot) = &self.depot else {
            return Err(LifecycleError::LayersUnavailable(format!(
                "template {:?} was built on another node (its layers are not on this one) and this node has no object store to fetch them from (cove serve --object-store)",
                entry.alias
            )));
        };
        let owner = crate::build::owner(build);
        for layer in missing {
            depot.fetch(&self.store, layer, &owner).await.map_err(|err| {
                tracing::warn!(err = %cove_image::error_chain(&err), template = %entry.id, %layer, "cannot fetch a template's layer");
                LifecycleError::LayersUnavailable(format!(
                    "cannot fetch template {:?}'s layers from the object store: {}",
                    entry.alias,
                    cove_image::error_chain(&err)
                ))
            })?;
        }
        self.note_cached(&entry.id);
        Ok(())
    }

    /// The template `team` means by `name` (`id`, `name` or either with `:tag`): the team's
    /// own (snapshots, then built ones) before the built-in ones.
    pub fn get(&self, team: &str, name: &str) -> Result<TemplateEntry, LifecycleError> {
        if let Some(snapshot) = self
            .read()
            .iter()
            .find(|e| e.visible_to(team) && e.answers_to(name))
        {
            return Ok(snapshot.clone());
        }
        let (bare, tag) = match name.split_once(':') {
            Some((bare, tag)) => (bare, Some(tag)),
            None => (name, None),
        };
        let not_found = || LifecycleError::TemplateNotFound(name.to_owned());
        match self.catalog.find(team, bare)? {
            Owner::Team(row) => {
                let build = self.build_for(&row, tag)?.ok_or_else(|| {
                    LifecycleError::TemplateNotReady(match tag {
                        Some(tag) => format!("template {bare:?} has no build tagged {tag:?}"),
                        None => format!(
                            "template {bare:?} has no finished build yet (see its build status)"
                        ),
                    })
                })?;
                self.entry(&row, &build).ok_or_else(not_found)
            }
            Owner::OtherTeam => Err(not_found()),
            Owner::Nobody if self.base.names.iter().any(|n| n == bare) => {
                Ok(TemplateEntry::clone(&self.base))
            }
            Owner::Nobody => Err(not_found()),
        }
    }

    /// The build `tag` names (`default` when none: a bare name means the default tag, or the
    /// newest ready build of a template that has no default tag).
    fn build_for(&self, row: &TemplateRow, tag: Option<&str>) -> catalog::Result<Option<BuildRow>> {
        let tagged = self
            .catalog
            .tagged_build(&row.id, tag.unwrap_or(catalog::DEFAULT_TAG))?;
        if tagged.is_some() || tag.is_some() {
            return Ok(tagged.filter(|b| b.result.is_some()));
        }
        Ok(self
            .catalog
            .builds_of(&row.id)?
            .into_iter()
            .find(|b| b.result.is_some()))
    }

    /// The entry of build `build` of template `row`.
    pub fn entry(&self, row: &TemplateRow, build: &BuildRow) -> Option<TemplateEntry> {
        let built = build.result.as_ref()?;
        Some(self.entry_of(row, &build.id, built))
    }

    fn entry_of(&self, row: &TemplateRow, build: &str, built: &Built) -> TemplateEntry {
        let store_layers: Vec<Digest> = std::iter::once(&built.accounts)
            .chain(&built.layers)
            .filter_map(|hex| Digest::from_hex(hex).ok())
            .collect();
        let layers = store_layers
            .iter()
            .map(|digest| Layer {
                path: self.store.layer_path(digest),
                at: "/".into(),
            })
            .collect();
        let alias = row.names.first().cloned().unwrap_or_else(|| row.id.clone());
        let start =
            (built.start_cmd.is_some() || built.ready_cmd.is_some()).then(|| StartCommand {
                start_cmd: built.start_cmd.clone(),
                ready_cmd: built.ready_cmd.clone(),
            });
        TemplateEntry {
            id: row.id.clone(),
            alias: alias.clone(),
            names: row.names.clone(),
            template: Template {
                memory: None,
                name: alias,
                layers,
            },
            created_at: row.created_at,
            kind: TemplateKind::Built {
                team: row.team.clone(),
                build: build.to_owned(),
            },
            defaults: Some(SandboxDefaults {
                user: built.user.clone(),
                workdir: built.workdir.clone(),
                env: built.env.clone(),
            }),
            start,
            cpu_count: Some(row.cpu_count),
            memory_mb: Some(row.memory_mb),
            store_layers,
            shell: Some(built.shell.clone()),
            runtime: row.runtime.clone(),
            shared: None,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<TemplateEntry>> {
        self.snapshots.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<TemplateEntry>> {
        self.snapshots.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The built-in template named `name`.
    pub fn built_in(&self, name: &str) -> Option<TemplateEntry> {
        self.base
            .answers_to(name)
            .then(|| TemplateEntry::clone(&self.base))
    }

    /// `team`'s snapshots.
    pub fn snapshots(&self, team: &str) -> Vec<TemplateEntry> {
        self.read()
            .iter()
            .filter(|e| e.visible_to(team))
            .cloned()
            .collect()
    }

    /// Every team's snapshots.
    pub fn all_snapshots(&self) -> Vec<TemplateEntry> {
        self.read().clone()
    }

    /// Adds a snapshot, or replaces the one with its id.
    pub fn put(&self, entry: TemplateEntry) {
        let mut entries = self.write();
        entries.retain(|e| e.id != entry.id);
        entries.push(entry);
    }

    /// Takes the snapshot with this id out.
    pub fn remove(&self, id: &str) -> Option<TemplateEntry> {
        let mut entries = self.write();
        let at = entries.iter().position(|e| e.id == id)?;
        Some(entries.remove(at))
    }

    /// The directories of every layer a snapshot uses.
    pub fn layer_paths(&self) -> HashSet<PathBuf> {
        self.read()
            .iter()
            .flat_map(|e| e.template.paths().map(Path::to_path_buf))
            .collect()
    }
}
