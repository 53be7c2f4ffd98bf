//! A build's base image: pulled into the layer store (through the configured mirrors, with
//! the request's credentials), its progress in the build log.

use std::sync::{Arc, Mutex};

use cove_image::{Credentials, Image, LayerStore, PullEvent, Reference, RegistryClient};

use super::logs::BuildLog;

/// The step name of everything before the first step.
pub const BASE_STEP: &str = "base";

/// Pulls `reference` into `store` for `owner`, logging as it goes.
pub async fn pull(
    client: &RegistryClient,
    store: &LayerStore,
    reference: &Reference,
    credentials: &Credentials,
    owner: &str,
    log: &BuildLog,
) -> Result<Image, cove_image::Error> {
    log.info(BASE_STEP, format!("pulling {reference}"));
    let sizes: Arc<Mutex<Vec<u64>>> = Arc::default();
    let progress = {
        let (log, sizes) = (log.clone(), sizes.clone());
        move |event: PullEvent| report(&log, &sizes, event)
    };
    // The pull's future is not provably `Send` (a compiler limit with the higher-ranked
    // closures inside it), so it runs on a blocking thread of its own, driven there.
    let (client, store, reference_owned, credentials, owner) = (
        client.clone(),
        store.clone(),
        reference.clone(),
        credentials.clone(),
        owner.to_owned(),
    );
    let runtime = tokio::runtime::Handle::current();
    let image = tokio::task::spawn_blocking(move || {
        runtime.block_on(cove_image::pull(
            &client,
            &store,
            &reference_owned,
            &credentials,
            &owner,
            &progress,
        ))
    })
    .await
    .map_err(|join| {
        cove_image::Error::Store(cove_image::StoreError::Io {
            op: "finish",
            path: std::path::PathBuf::from("the pull"),
            source: std::io::Error::other(join.to_string()),
        })
    })??;
    log.info(
        BASE_STEP,
        format!("pulled {} ({} layers)", image.name, image.layers.len()),
    );
    Ok(image)
}

fn report(log: &BuildLog, sizes: &Mutex<Vec<u64>>, event: PullEvent) {
    let count = || sizes.lock().map(|s| s.len()).unwrap_or(0);
    match event {
        PullEvent::Resolved {
            manifest_digest,
            layers,
            ..
        } => {
            let total: u64 = layers.iter().map(|(_, size)| size).sum();
            if let Ok(mut sizes) = sizes.lock() {
                *sizes = layers.iter().map(|(_, size)| *size).collect();
            }
            log.info(
                BASE_STEP,
                format!(
                    "image {manifest_digest}: {} layers, {}",
                    layers.len(),
                    mib(total)
                ),
            );
        }
        PullEvent::LayerCached { index, layer } => log.info(
            BASE_STEP,
            format!(
                "layer {}/{} {} already stored",
                index + 1,
                count(),
                short(&layer)
            ),
        ),
        PullEvent::LayerBytes {
            index,
            blob,
            done,
            total,
        } => log.progress(
            BASE_STEP,
            &blob.to_string(),
            format!(
                "downloading layer {}/{} {}: {} of {}",
                index + 1,
                count(),
                short(&blob),
                mib(done),
                mib(total)
            ),
            done,
            total,
        ),
        PullEvent::LayerStored {
            index,
            layer,
            disk_bytes,
        } => log.info(
            BASE_STEP,
            format!(
                "layer {}/{} {} unpacked ({} on disk)",
                index + 1,
                count(),
                short(&layer),
                mib(disk_bytes)
            ),
        ),
    }
}

fn short(digest: &cove_image::Digest) -> String {
    digest.hex()[..12].to_owned()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}
