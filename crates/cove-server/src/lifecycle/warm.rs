//! Keeping warm sandboxes: started ahead of demand, one at a time per kind, and ended at
//! shutdown (they are not worth keeping).

use std::sync::Arc;

use super::{Lifecycle, pool::Warm, settings::Settings};
use crate::secrets;

/// The template warm sandboxes are made of.
pub const WARM_TEMPLATE: &str = "base";

impl Lifecycle {
    /// Tops the warm pool of this kind up again, one sandbox at a time, in the background.
    pub fn refill(self: &Arc<Self>, network: bool) {
        if self.warming.is_closed() || !self.pool.begin_start(network) {
            return;
        }
        let this = self.clone();
        self.warming.spawn(async move {
            loop {
                let warm = this.start_warm(network).await;
                let started = warm.is_some();
                this.pool.finish_start(network, warm);
                // After a failure the next create tries again, not a busy loop.
                if !started || this.warming.is_closed() || !this.pool.begin_start(network) {
                    break;
                }
            }
        });
    }

    /// Fills both warm pools (at startup).
    pub fn warm_up(self: &Arc<Self>) {
        self.refill(false);
        self.refill(true);
    }

    async fn start_warm(&self, network: bool) -> Option<Warm> {
        let template = self.templates.built_in(WARM_TEMPLATE)?;
        let settings = Settings::warm(template, self.config.caps, network);
        let mut record = settings.record(&self.config, secrets::random_id(20));
        match self
            .start(&mut record, settings.template.template.clone())
            .await
        {
            Ok(started) => {
                tracing::debug!(sandbox_id = %record.id, network, "warm sandbox ready");
                Some(Warm { record, started })
            }
            Err(err) => {
                tracing::warn!(?err, "cannot start a warm sandbox");
                self.discard(&record).await;
                None
            }
        }
    }

    /// Ends a warm sandbox nobody will take.
    pub(super) async fn end_warm(&self, warm: Warm) {
        let handle = warm.started.handle.clone();
        match self.blocking(move |r| r.kill(&handle)).await {
            Ok(()) => self.discard(&warm.record).await,
            Err(err) => {
                tracing::warn!(?err, sandbox_id = %warm.record.id, "cannot kill a warm sandbox");
            }
        }
    }

    /// At shutdown: lets creates and transitions under way finish, stops refilling the pool
    /// and ends every warm sandbox.
    pub async fn settle(&self) {
        self.creating.close();
        self.creating.wait().await;
        // Pauses, resumes and snapshots under way finish too.
        self.transitions.close();
        self.transitions.wait().await;
        self.warming.close();
        self.warming.wait().await;
        for warm in self.pool.drain() {
            self.end_warm(warm).await;
        }
    }
}
