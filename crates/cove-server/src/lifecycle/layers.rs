//! The layer store's references of running sandboxes: each sandbox made from built layers
//! retains them (owner `sandbox:<id>`) from before it starts until its files are removed, so
//! deleting its template or collecting unused layers never takes a layer from under it.

use cove_image::{Digest, LayerStore};

use super::Lifecycle;
use crate::store::SandboxRecord;

/// The layer-store owner of a sandbox's layers.
pub fn owner(sandbox_id: &str) -> String {
    format!("sandbox:{sandbox_id}")
}

/// The store layers a sandbox record's template uses.
pub fn store_layers(store: &LayerStore, record: &SandboxRecord) -> Vec<Digest> {
    let root = store.root().join("layers/sha256");
    record
        .template
        .iter()
        .flat_map(|t| &t.layers)
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
