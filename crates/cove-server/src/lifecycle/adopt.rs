//! Taking over, after a restart, the sandboxes a previous server left running; forgetting
//! and removing the rest.

use cove_runtime::Started;

use super::{Lifecycle, LifecycleError, pool::WARM_TEAM, pool::Warm};

impl Lifecycle {
    /// Re-adopts what still runs; returns how many.
    pub async fn adopt(&self) -> Result<usize, LifecycleError> {
        let mut adopted = 0;
        for record in self.store.sandboxes()? {
            let Some(handle) = record.handle.clone() else {
                // Cut short mid-create (or made by a Cove that kept no handle).
                tracing::info!(sandbox_id = %record.id, "sandbox was being created when the server stopped; removing it");
                let id = record.id.clone();
                match self.blocking(move |r| r.kill_leftovers(&id)).await {
                    Ok(()) => self.discard(&record).await,
                    Err(err) => {
                        tracing::warn!(?err, sandbox_id = %record.id, "cannot kill what is left of the sandbox")
                    }
                }
                continue;
            };
            let recovered = {
                let handle = handle.clone();
                self.blocking(move |r| r.recover(&handle)).await
            };
            match recovered {
                Ok(Some(started)) if record.team == WARM_TEAM => {
                    tracing::info!(sandbox_id = %record.id, "ending a warm sandbox of the previous server");
                    self.end_warm(Warm { record, started }).await;
                }
                Ok(Some(started)) => {
                    tracing::info!(sandbox_id = %record.id, "re-adopted running sandbox");
                    self.adopt_one(record, started);
                    adopted += 1;
                }
                Ok(None) => {
                    tracing::info!(sandbox_id = %record.id, "sandbox ended while the server was away; removing it");
                    // Whatever outlived its PID 1 (a network helper) goes too.
                    let id = record.id.clone();
                    let _ = self.blocking(move |r| r.kill_leftovers(&id)).await;
                    self.discard(&record).await;
                }
                Err(err) => {
                    // Left as it is: a later start may manage to look at it.
                    tracing::error!(?err, sandbox_id = %record.id, "cannot take over the sandbox");
                }
            }
        }
        Ok(adopted)
    }

    fn adopt_one(&self, record: crate::store::SandboxRecord, started: Started) {
        self.registry
            .insert(std::sync::Arc::new(super::Live::new(record, started)));
    }
}
