//! A finished build's layers written to the object store the nodes of a cluster share
//! (`--object-store`), before the build is marked ready: once any node sees it ready, every
//! node can fetch its layers. Layers the store has already (a base shared with another
//! template, a step the cache reused) are not written again.

use cove_image::Digest;

use super::{Builder, Failure, logs::BuildLog, run::FINALIZE_STEP};
use crate::catalog::{BuildRow, Built};

impl Builder {
    /// Writes `built`'s layers to the object store, when the server has one.
    pub(super) async fn share(
        &self,
        build: &BuildRow,
        built: &Built,
        log: &BuildLog,
    ) -> Result<(), Failure> {
        let Some(depot) = self.lifecycle.templates().depot() else {
            return Ok(());
        };
        let began = std::time::Instant::now();
        let (mut written, mut bytes) = (0usize, 0u64);
        for hex in std::iter::once(&built.accounts).chain(&built.layers) {
            let layer = Digest::from_hex(hex)
                .map_err(|e| Failure::at(FINALIZE_STEP, format!("invalid layer {hex}: {e}")))?;
            match depot.put(&self.store, &layer).await {
                Ok(cove_depot::Put::Present) => {}
                Ok(cove_depot::Put::Written(archive)) => {
                    written += 1;
                    bytes += archive.size;
                }
                Err(err) => {
                    tracing::warn!(err = %cove_image::error_chain(&err), build_id = %build.id, %layer, "cannot store a layer in the object store");
                    return Err(Failure::at(
                        FINALIZE_STEP,
                        format!(
                            "cannot store the template's layers in the object store: {}",
                            cove_image::error_chain(&err)
                        ),
                    ));
                }
            }
        }
        if written > 0 {
            log.info(
                FINALIZE_STEP,
                format!(
                    "stored {written} layers ({:.1} MiB) in the object store in {:.1} s",
                    bytes as f64 / f64::from(1 << 20),
                    began.elapsed().as_secs_f64()
                ),
            );
        }
        Ok(())
    }
}
