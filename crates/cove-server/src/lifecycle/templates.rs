//! The templates sandboxes can be created from, by id or name (`name:tag` for a tagged
//! build): the embedded `base` (every team's), and the templates each team built, whose
//! builds the catalogue keeps and whose layers the layer store holds.

use std::{path::Path, sync::Arc};

use cove_image::{Digest, LayerStore};
use cove_runtime::{Layer, Template, template::TemplateError};

use super::LifecycleError;
use crate::{
    catalog::{self, BuildRow, Built, Catalog, Owner, TemplateRow},
    store::SandboxDefaults,
};

/// What a template's sandboxes run when they start, and how to tell they are ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartCommand {
    pub start_cmd: Option<String>,
    pub ready_cmd: Option<String>,
}

/// Whose a template is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateKind {
    /// Built into the server, for every team.
    BuiltIn,
    /// Built by `team` (build `build`).
    Built { team: String, build: String },
}

/// A template as the API knows it.
#[derive(Clone, Debug)]
pub struct TemplateEntry {
    pub id: String,
    pub alias: String,
    /// Other names clients use for it.
    pub names: Vec<String>,
    pub template: Template,
    pub created_at: i64,
    pub kind: TemplateKind,
    /// Its user, working directory and variables (none: E2B's defaults).
    pub defaults: Option<SandboxDefaults>,
    pub start: Option<StartCommand>,
    /// What a create that names no resources gets.
    pub cpu_count: Option<u32>,
    pub memory_mb: Option<u64>,
    /// Its layers in the layer store (kept while its sandboxes run).
    pub store_layers: Vec<Digest>,
    /// The shell its start and ready commands run in (none: `/bin/sh`).
    pub shell: Option<String>,
}

impl TemplateEntry {
    /// What warm sandboxes of it are kept under: a new build is another template to them.
    pub fn warm_key(&self) -> String {
        match &self.kind {
            TemplateKind::BuiltIn => self.id.clone(),
            TemplateKind::Built { build, .. } => format!("{}@{build}", self.id),
        }
    }

    /// Whether `team` may use it.
    pub fn visible_to(&self, team: &str) -> bool {
        match &self.kind {
            TemplateKind::BuiltIn => true,
            TemplateKind::Built { team: owner, .. } => owner == team,
        }
    }
}

/// The registry.
#[derive(Clone, Debug)]
pub struct Templates {
    base: Arc<TemplateEntry>,
    catalog: Arc<Catalog>,
    store: LayerStore,
}

impl Templates {
    /// Builds (or reuses) the base template under `dir`; built templates come from `catalog`
    /// and their layers from `store`.
    pub fn load(
        dir: &Path,
        catalog: Arc<Catalog>,
        store: LayerStore,
    ) -> Result<Self, TemplateError> {
        let base = cove_runtime::template::base(&dir.join("base"))?;
        let entry = TemplateEntry {
            id: "base".to_owned(),
            alias: "base".to_owned(),
            names: vec![
                "base".to_owned(),
                "code-interpreter-v1".to_owned(),
                "code-interpreter".to_owned(),
            ],
            template: base,
            created_at: crate::clock::now_ms(),
            kind: TemplateKind::BuiltIn,
            defaults: None,
            start: None,
            cpu_count: None,
            memory_mb: None,
            store_layers: Vec::new(),
            shell: None,
        };
        Ok(Self {
            base: Arc::new(entry),
            catalog,
            store,
        })
    }

    /// The built-in `base` template.
    pub fn base(&self) -> &TemplateEntry {
        &self.base
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn store(&self) -> &LayerStore {
        &self.store
    }

    /// The template `team` means by `name` (`id`, `name` or either with `:tag`): the team's
    /// own before the built-in ones.
    pub fn get(&self, team: &str, name: &str) -> Result<TemplateEntry, LifecycleError> {
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
        }
    }
}
