//! The layers templates take on disk: what each template uses, dropping a deleted
//! template's, and collecting the layers nothing retains any more (no template's build, no
//! running sandbox, no build under way). Layers only the cache names go too: a step whose
//! layer was collected simply runs again.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use cove_image::Digest;
use cove_proto::templates::{CollectedLayers, TemplateUsage};

use super::{Builder, owner};
use crate::catalog::CatalogError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] cove_image::StoreError),
    #[error("the collection stopped unexpectedly: {0}")]
    Crashed(String),
}

impl Builder {
    /// Checks that `reference` can be pulled (it exists, for this machine's platform), with
    /// `credentials`.
    pub async fn resolve(
        &self,
        reference: &cove_image::Reference,
        credentials: &cove_image::Credentials,
    ) -> Result<(), cove_image::RegistryError> {
        self.registry
            .resolve(reference, credentials)
            .await
            .map(drop)
    }

    /// Drops the layer references of deleted builds, then collects what nothing uses on a
    /// background task: a delete answers at once, however large the layers and slow the disk.
    pub fn forget(self: &Arc<Self>, builds: &[String]) {
        for build in builds {
            if let Err(err) = self.store.release_all(&owner(build)) {
                tracing::warn!(?err, build_id = %build, "cannot release a deleted build's layers");
            }
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            if let Err(err) = this.collect().await {
                tracing::warn!(err = %cove_image::error_chain(&err), "cannot collect unused layers");
            }
        });
    }

    /// Removes every layer nothing retains, forgets the cache entries that named them, and
    /// the uploaded files older than a day.
    pub async fn collect(&self) -> Result<CollectedLayers, StorageError> {
        let (store, catalog, contexts) = (
            self.store.clone(),
            self.catalog.clone(),
            self.contexts.clone(),
        );
        tokio::task::spawn_blocking(move || {
            release_deleted_builds(&store, &catalog)?;
            let report = store.gc()?;
            catalog.forget_cached_layers(&|hex| {
                Digest::from_hex(hex).is_ok_and(|d| store.contains(&d))
            })?;
            let day_ago = crate::clock::now_ms() - 24 * 3600 * 1000;
            for (team, hash) in catalog.forget_uploads(day_ago)? {
                contexts.remove(&team, &hash);
            }
            catalog.forget_untriggered_builds(day_ago)?;
            if !report.removed.is_empty() {
                tracing::info!(
                    layers = report.removed.len(),
                    freed_bytes = report.freed_bytes,
                    "collected unused layers"
                );
            }
            Ok(CollectedLayers {
                removed_layers: report.removed.len(),
                freed_bytes: report.freed_bytes,
            })
        })
        .await
        .map_err(|e| StorageError::Crashed(e.to_string()))?
    }

    /// What each of `team`'s templates takes on disk.
    pub async fn usage(&self, team: &str) -> Result<Vec<TemplateUsage>, StorageError> {
        let (store, catalog, team) = (self.store.clone(), self.catalog.clone(), team.to_owned());
        tokio::task::spawn_blocking(move || {
            let all = catalog.all_templates()?;
            // Which templates use each layer, over every team (sharing is by content).
            let mut users: HashMap<String, BTreeSet<String>> = HashMap::new();
            let mut per_template: HashMap<String, BTreeSet<String>> = HashMap::new();
            for row in &all {
                for build in catalog.builds_of(&row.id)? {
                    let Some(built) = build.result else { continue };
                    for layer in std::iter::once(&built.accounts).chain(&built.layers) {
                        users
                            .entry(layer.clone())
                            .or_default()
                            .insert(row.id.clone());
                        per_template
                            .entry(row.id.clone())
                            .or_default()
                            .insert(layer.clone());
                    }
                }
            }
            let mut usage = Vec::new();
            for row in all.into_iter().filter(|r| r.team == team) {
                let layers = per_template.remove(&row.id).unwrap_or_default();
                let (mut disk, mut shared) = (0, 0);
                for layer in &layers {
                    let Ok(digest) = Digest::from_hex(layer) else {
                        continue;
                    };
                    let Some(info) = store.layer(&digest)? else {
                        continue;
                    };
                    disk += info.disk_bytes;
                    if users.get(layer).is_some_and(|u| u.len() > 1) {
                        shared += info.disk_bytes;
                    }
                }
                usage.push(TemplateUsage {
                    template_id: row.id,
                    aliases: row.names,
                    layers: layers.len(),
                    disk_bytes: disk,
                    shared_bytes: shared,
                });
            }
            Ok(usage)
        })
        .await
        .map_err(|e| StorageError::Crashed(e.to_string()))?
    }
}

/// Drops the references of builds the catalogue no longer has: a template deleted through
/// another node of a cluster leaves the layers this node fetched for it.
fn release_deleted_builds(
    store: &cove_image::LayerStore,
    catalog: &crate::catalog::Catalog,
) -> Result<(), StorageError> {
    let mut known: HashMap<String, bool> = HashMap::new();
    for layer in store.layers()? {
        for holder in store.owners(&layer.id)? {
            let Some(build) = holder.strip_prefix("build:") else {
                continue;
            };
            let exists = match known.get(build) {
                Some(exists) => *exists,
                None => {
                    let exists = catalog.build_exists(build)?;
                    known.insert(build.to_owned(), exists);
                    exists
                }
            };
            if !exists {
                store.release(&layer.id, &holder)?;
            }
        }
    }
    Ok(())
}
