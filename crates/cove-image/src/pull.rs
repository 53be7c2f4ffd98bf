//! Pulling an image into the store: resolve it, then fetch and unpack the layers the store
//! lacks, a few at a time, reporting progress.

use std::path::PathBuf;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::{
    Error,
    auth::Credentials,
    config::ImageConfig,
    digest::Digest,
    reference::Reference,
    registry::RegistryClient,
    store::{Expected, LayerStore},
};

/// Layers fetched at once, as Docker does by default.
const CONCURRENT_LAYERS: usize = 3;

/// An image in the store: its defaults and its layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// What it was pulled or imported as (`docker.io/library/python:3.12@sha256:…`).
    pub name: String,
    /// The digest of the platform's image manifest.
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub config: ImageConfig,
    /// The layers' ids in the store (diff ids), bottom first as images list them.
    pub layers: Vec<Digest>,
}

impl Image {
    /// The unpacked layer trees, top first, as a template lists its layers.
    pub fn layer_paths_top_first(&self, store: &LayerStore) -> Vec<PathBuf> {
        self.layers
            .iter()
            .rev()
            .map(|layer| store.layer_path(layer))
            .collect()
    }
}

/// What a pull is doing, for a progress bar or build log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullEvent {
    /// The image was found: its layers' blobs and compressed sizes, bottom first.
    Resolved {
        reference: String,
        manifest_digest: Digest,
        layers: Vec<(Digest, u64)>,
    },
    /// Layer `index` was in the store already.
    LayerCached { index: usize, layer: Digest },
    /// Bytes of layer `index`'s blob received so far, of `total`.
    LayerBytes {
        index: usize,
        blob: Digest,
        done: u64,
        total: u64,
    },
    /// Layer `index` is verified, unpacked and stored.
    LayerStored {
        index: usize,
        layer: Digest,
        disk_bytes: u64,
    },
}

/// Pulls `reference` into `store` and retains each of its layers for `owner`. If the pull
/// fails, the references it added are dropped again (the layers stay until [`LayerStore::gc`]).
pub async fn pull(
    client: &RegistryClient,
    store: &LayerStore,
    reference: &Reference,
    credentials: &Credentials,
    owner: &str,
    progress: &(dyn Fn(PullEvent) + Send + Sync),
) -> Result<Image, Error> {
    let image = client.resolve(reference, credentials).await?;
    progress(PullEvent::Resolved {
        reference: image.reference.to_string(),
        manifest_digest: image.manifest_digest.clone(),
        layers: image
            .manifest
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.size))
            .collect(),
    });
    let added = std::sync::Mutex::new(Vec::new());
    let note_added = |layer: &Digest, new: bool| {
        if new {
            added
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(layer.clone());
        }
    };
    // Set by the first layer that fails: layers not yet begun are then skipped. Layers under
    // way are let finish rather than dropped, since a dropped one would go on unpacking on
    // its blocking thread and add a reference after this pull gave its references back.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let jobs = image
        .manifest
        .layers
        .iter()
        .zip(&image.diff_ids)
        .enumerate()
        .map(|(index, (descriptor, diff_id))| {
            let image = &image;
            let note_added = &note_added;
            let failed = &failed;
            async move {
                if failed.load(std::sync::atomic::Ordering::Acquire) {
                    return Ok(());
                }
                let done = async {
                    if let Some(new) = store.retain_if_present(diff_id, owner)? {
                        note_added(diff_id, new);
                        progress(PullEvent::LayerCached {
                            index,
                            layer: diff_id.clone(),
                        });
                        return Ok::<_, Error>(());
                    }
                    let chunks = client.blob(image, descriptor).await?;
                    let total = descriptor.size;
                    let blob = descriptor.digest.clone();
                    let (info, new) = store
                        .install_stream(
                            Expected {
                                named_by_content: true,
                                diff_id: diff_id.clone(),
                                blob: Some((descriptor.digest.clone(), Some(total))),
                            },
                            chunks,
                            owner,
                            |done| {
                                progress(PullEvent::LayerBytes {
                                    index,
                                    blob: blob.clone(),
                                    done,
                                    total,
                                })
                            },
                        )
                        .await?;
                    note_added(diff_id, new);
                    progress(PullEvent::LayerStored {
                        index,
                        layer: info.id,
                        disk_bytes: info.disk_bytes,
                    });
                    Ok(())
                }
                .await;
                if done.is_err() {
                    failed.store(true, std::sync::atomic::Ordering::Release);
                }
                done
            }
        });
    let results: Vec<Result<(), Error>> = futures::stream::iter(jobs)
        .buffer_unordered(CONCURRENT_LAYERS)
        .collect()
        .await;
    if let Some(err) = results.into_iter().find_map(Result::err) {
        for layer in added.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if let Err(release) = store.release(layer, owner) {
                tracing::warn!(error = %crate::error_chain(&release), %layer, "cannot drop a reference after a failed pull");
            }
        }
        return Err(err);
    }
    Ok(Image {
        name: image.reference.to_string(),
        manifest_digest: image.manifest_digest,
        config_digest: image.config_digest,
        config: image.config,
        layers: image.diff_ids,
    })
}
