//! The templates sandboxes can be created from, by id or alias.

use std::{path::Path, sync::Arc};

use cove_runtime::{Template, template::TemplateError};

/// A template as the API knows it.
#[derive(Clone, Debug)]
pub struct TemplateEntry {
    pub id: String,
    pub alias: String,
    /// Other names clients use for it.
    pub names: Vec<String>,
    pub template: Template,
    pub created_at: i64,
}

/// The registry. For now it holds the embedded `base` template, which also answers to the
/// names the E2B SDKs use by default for code interpreting.
#[derive(Clone, Debug)]
pub struct Templates {
    entries: Arc<Vec<TemplateEntry>>,
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
        };
        Ok(Self {
            entries: Arc::new(vec![entry]),
        })
    }

    /// The template with this id or name (`name:tag` matches `name`).
    pub fn get(&self, name: &str) -> Option<&TemplateEntry> {
        let name = name.split(':').next().unwrap_or(name);
        self.entries
            .iter()
            .find(|e| e.id == name || e.names.iter().any(|n| n == name))
    }

    pub fn all(&self) -> &[TemplateEntry] {
        &self.entries
    }
}
