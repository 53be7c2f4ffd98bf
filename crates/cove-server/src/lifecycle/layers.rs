//! The layer store's references of running sandboxes: each sandbox made from built layers
//! retains them (owner `sandbox:<id>`) from before it starts until its files are removed, so
//! deleting its template or collecting unused layers never takes a layer from under it.

use cove_image::{Digest, LayerStore};

use cove_runtime::Template;

use super::{Lifecycle, TemplateEntry};
use crate::store::SandboxRecord;

/// The layer-store owner of a sandbox's layers.
pub fn owner(sandbox_id: &str) -> String {
    format!("sandbox:{sandbox_id}")
}

/// The layer-store owner of a snapshot's layers (those of the template it was taken of).
pub fn snapshot_owner(snapshot_id: &str) -> String {
    format!("snapshot:{snapshot_id}")
}

/// The store layers a sandbox record's template uses.
pub fn store_layers(store: &LayerStore, record: &SandboxRecord) -> Vec<Digest> {
    record
        .template
        .as_ref()
        .map(|t| template_store_layers(store, t))
        .unwrap_or_default()
}

/// The store layers among a template's layers.
pub fn template_store_layers(store: &LayerStore, template: &Template) -> Vec<Digest> {
    layers_below(store.root(), template)
}

/// The layers of a template that are in the layer store at `store_root` (another node's,
/// for a snapshot that node took).
pub fn layers_below(store_root: &std::path::Path, template: &Template) -> Vec<Digest> {
    let root = store_root.join("layers/sha256");
    template
        .layers
        .iter()
        .filter_map(|layer| {
            let hex = layer.path.strip_prefix(&root).ok()?.components().next()?;
            Digest::from_hex(hex.as_os_str().to_str()?).ok()
        })
        .collect()
}

impl Lifecycle {
    /// Retains the store layers `record` uses for it.
    pub(super) fn retain_layers(
        &self,
        record: &SandboxRecord,
    ) -> Result<(), cove_image::StoreError> {
        let store = self.templates.store();
        for layer in store_layers(store, record) {
            store.retain(&layer, &owner(&record.id))?;
        }
        Ok(())
    }

    /// Drops what [`Lifecycle::retain_layers`] retained.
    pub(super) fn release_layers(&self, record: &SandboxRecord) {
        let store = self.templates.store();
        for layer in store_layers(store, record) {
            if let Err(err) = store.release(&layer, &owner(&record.id)) {
                tracing::warn!(?err, sandbox_id = %record.id, %layer, "cannot release a layer");
            }
        }
    }

    /// Retains the store layers a snapshot's template uses for it (a snapshot of a sandbox
    /// made from a built template keeps that template's layers when it is deleted).
    pub(super) fn retain_template_layers(
        &self,
        entry: &TemplateEntry,
    ) -> Result<(), cove_image::StoreError> {
        let store = self.templates.store();
        for layer in template_store_layers(store, &entry.template) {
            store.retain(&layer, &snapshot_owner(&entry.id))?;
        }
        Ok(())
    }

    /// Drops what [`Lifecycle::retain_template_layers`] retained.
    pub(super) fn release_template_layers(&self, entry: &TemplateEntry) {
        if let Err(err) = self
            .templates
            .store()
            .release_all(&snapshot_owner(&entry.id))
        {
            tracing::warn!(?err, snapshot = %entry.id, "cannot release a snapshot's layers");
        }
    }

    /// After a restart: drops the references of sandboxes that are gone (a server that died
    /// between a sandbox's end and its release).
    pub fn release_layers_of_gone_sandboxes(&self) {
        let store = self.templates.store();
        let Ok(layers) = store.layers() else {
            return;
        };
        let known: std::collections::HashSet<String> = self
            .store
            .sandboxes()
            .unwrap_or_default()
            .into_iter()
            .map(|r| owner(&r.id))
            .collect();
        for layer in layers {
            for holder in layer
                .owners
                .iter()
                .filter(|o| o.starts_with("sandbox:") && !known.contains(*o))
            {
                let _ = store.release(&layer.id, holder);
            }
        }
    }
}
