//! The templates sandboxes can be created from, by id or name: the embedded `base` (every
//! team's), and each team's snapshots (see [`super::snapshot`]), which are stored and come
//! back after a restart.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use cove_runtime::{Template, template::TemplateError};
use serde::{Deserialize, Serialize};

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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateKind {
    /// Built into the server, for every team.
    BuiltIn,
    /// A snapshot of `sandbox`, for `team` alone.
    Snapshot { team: String, sandbox: String },
}

impl TemplateEntry {
    /// Whether `team` may use it.
    pub fn visible_to(&self, team: &str) -> bool {
        match &self.kind {
            TemplateKind::BuiltIn => true,
            TemplateKind::Snapshot { team: owner, .. } => owner == team,
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

/// The registry (shared: snapshots come and go while the server runs).
#[derive(Clone, Debug)]
pub struct Templates {
    entries: Arc<RwLock<Vec<TemplateEntry>>>,
}

impl Templates {
    /// Builds (or reuses) the base template under `dir`.
    pub fn load(dir: &Path) -> Result<Self, TemplateError> {
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
        };
        Ok(Self {
            entries: Arc::new(RwLock::new(vec![entry])),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<TemplateEntry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<TemplateEntry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The template `team` means by `name` (its own before the built-in ones).
    pub fn get(&self, team: &str, name: &str) -> Option<TemplateEntry> {
        let entries = self.read();
        entries
            .iter()
            .filter(|e| e.visible_to(team) && e.answers_to(name))
            .min_by_key(|e| matches!(e.kind, TemplateKind::BuiltIn))
            .cloned()
    }

    /// The built-in template named `name`.
    pub fn built_in(&self, name: &str) -> Option<TemplateEntry> {
        self.read()
            .iter()
            .find(|e| matches!(e.kind, TemplateKind::BuiltIn) && e.answers_to(name))
            .cloned()
    }

    /// Every template `team` may use.
    pub fn all(&self, team: &str) -> Vec<TemplateEntry> {
        self.read()
            .iter()
            .filter(|e| e.visible_to(team))
            .cloned()
            .collect()
    }

    /// Adds a template, or replaces the one with its id.
    pub fn put(&self, entry: TemplateEntry) {
        let mut entries = self.write();
        entries.retain(|e| e.id != entry.id);
        entries.push(entry);
    }

    /// Takes the template with this id out.
    pub fn remove(&self, id: &str) -> Option<TemplateEntry> {
        let mut entries = self.write();
        let at = entries.iter().position(|e| e.id == id)?;
        Some(entries.remove(at))
    }

    /// The directories of every layer a template uses.
    pub fn layer_paths(&self) -> HashSet<PathBuf> {
        self.read()
            .iter()
            .flat_map(|e| e.template.layers.iter().map(|l| l.path.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, names: &[&str], kind: TemplateKind) -> TemplateEntry {
        TemplateEntry {
            id: id.into(),
            alias: id.into(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            template: Template {
                name: id.into(),
                layers: Vec::new(),
            },
            created_at: 0,
            kind,
        }
    }

    #[test]
    fn snapshots_are_their_teams_and_answer_to_their_names() {
        let templates = Templates {
            entries: Arc::new(RwLock::new(vec![entry(
                "base",
                &["base"],
                TemplateKind::BuiltIn,
            )])),
        };
        let snap = entry(
            "abc",
            &["team-a/mine"],
            TemplateKind::Snapshot {
                team: "team-a".into(),
                sandbox: "s".into(),
            },
        );
        assert_eq!(snap.tagged_id(), "team-a/mine:default");
        templates.put(snap);
        assert!(templates.get("team-a", "team-a/mine:default").is_some());
        assert!(templates.get("team-a", "abc:default").is_some());
        assert!(templates.get("team-b", "abc").is_none(), "another team's");
        assert_eq!(templates.get("team-b", "base:v1").unwrap().id, "base");
        assert_eq!(templates.all("team-b").len(), 1);
        assert!(templates.remove("abc").is_some());
        assert!(templates.get("team-a", "abc").is_none());
    }
}
