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
    /// the uploaded files older than a day; then, with an object store, what no template or
    /// snapshot of the cluster needs there any more ([`Builder::collect_shared`]).
    pub async fn collect(&self) -> Result<CollectedLayers, StorageError> {
        let mut collected = self.collect_here().await?;
        if let Some((removed, freed)) = self.collect_shared().await {
            collected.shared_removed = removed;
            collected.shared_freed_bytes = freed;
        }
        Ok(collected)
    }

    /// Removes from the object store the layers no build of any template uses and the
    /// snapshot directories no snapshot uses (those older than `--object-store-keep-for`:
    /// younger ones may be about to be recorded). Nothing is removed when what is in use
    /// cannot be read whole. None without an object store, or when it failed (logged).
    async fn collect_shared(&self) -> Option<(usize, u64)> {
        let depot = self.lifecycle.templates().depot()?.clone();
        let catalog = self.catalog.clone();
        let built = tokio::task::spawn_blocking(move || built_layers(&catalog)).await;
        let mut kept = match built {
            Ok(Ok(layers)) => cove_depot::Kept {
                layers,
                ..Default::default()
            },
            Ok(Err(err)) => {
                tracing::warn!(
                    ?err,
                    "cannot read the templates' layers; the object store is not collected now"
                );
                return None;
            }
            Err(err) => {
                tracing::warn!(?err, "the object store's collection stopped unexpectedly");
                return None;
            }
        };
        match self.lifecycle.shared_in_use().await {
            Ok(snapshots) => {
                kept.layers.extend(snapshots.layers);
                kept.trees = snapshots.trees;
            }
            Err(err) => {
                tracing::warn!(
                    ?err,
                    "cannot read the shared snapshots; the object store is not collected now"
                );
                return None;
            }
        }
        match depot
            .collect(&kept, self.config.object_store_keep_for)
            .await
        {
            Ok(done) => {
                if done.removed > 0 {
                    tracing::info!(removed = done.removed, freed_bytes = done.freed_bytes, depot = %depot.location(), "collected the object store");
                }
                Some((done.removed, done.freed_bytes))
            }
            Err(err) => {
                tracing::warn!(err = %cove_image::error_chain(&err), "cannot collect the object store");
                None
            }
        }
    }

    /// Every `period` until aborted: [`Builder::collect`] (with an object store, which
    /// deletions elsewhere in the cluster leave things in).
    pub async fn collect_every(self: Arc<Self>, period: std::time::Duration) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(err) = self.collect().await {
                tracing::warn!(err = %cove_image::error_chain(&err), "cannot collect unused layers");
            }
        }
    }

    async fn collect_here(&self) -> Result<CollectedLayers, StorageError> {
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
                ..CollectedLayers::default()
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

/// The layers of every finished build of every template (every team's).
fn built_layers(
    catalog: &crate::catalog::Catalog,
) -> Result<std::collections::HashSet<Digest>, CatalogError> {
    let mut layers = std::collections::HashSet::new();
    for row in catalog.all_templates()? {
        for build in catalog.builds_of(&row.id)? {
            let Some(built) = build.result else { continue };
            layers.extend(
                std::iter::once(&built.accounts)
                    .chain(&built.layers)
                    .filter_map(|hex| Digest::from_hex(hex).ok()),
            );
        }
    }
    Ok(layers)
}
