//! Ending sandboxes: kills asked for, the reaper that ends expired and dead ones, and the
//! end of everything at shutdown. A sandbox is ended only when it was asked for, its time
//! is up, or it was positively seen to have died: one that cannot be looked at (too many
//! open files, say) is left alone.

use std::{sync::Arc, time::Duration};

use cove_runtime::Liveness;

use super::{Ended, Lifecycle, LifecycleError, Live};
use crate::{clock, store::SandboxRecord};

impl Lifecycle {
    /// Kills a sandbox of `team` and removes its files.
    pub async fn kill(self: &Arc<Self>, team: &str, id: &str) -> Result<(), LifecycleError> {
        let live = self.get(team, id)?;
        self.end(&live, "it was killed".to_owned()).await
    }

    /// Ends `live` for `reason` in a task of its own.
    async fn end(self: &Arc<Self>, live: &Arc<Live>, reason: String) -> Result<(), LifecycleError> {
        let (this, live) = (self.clone(), live.clone());
        self.ending
            .spawn(async move { this.end_now(&live, reason).await })
            .await
            .unwrap_or_else(|join| Err(LifecycleError::Crashed(join.to_string())))
    }

    async fn end_now(&self, live: &Arc<Live>, reason: String) -> Result<(), LifecycleError> {
        let record = live.record();
        // Gone from routing first: from now on its traffic is answered "not found", and
        // asking after it tells why it is gone.
        self.registry.retire(
            &record.id,
            Ended {
                team: record.team.clone(),
                reason: reason.clone(),
                at: clock::now_ms(),
            },
        );
        let handle = live.handle().clone();
        if let Err(source) = self.blocking(move |r| r.kill(&handle)).await {
            // Keep it listed so the kill can be retried.
            self.registry.restore(live.clone());
            return Err(LifecycleError::Kill {
                id: record.id,
                source,
            });
        }
        self.discard(&record).await;
        tracing::info!(sandbox_id = %record.id, %reason, "sandbox ended");
        Ok(())
    }

    /// Removes a sandbox's files and record (its processes must be gone).
    pub(super) async fn discard(&self, record: &SandboxRecord) {
        let id = record.id.clone();
        if let Err(err) = self.blocking(move |r| r.remove(&id)).await {
            tracing::warn!(?err, sandbox_id = %record.id, "cannot remove the sandbox's files");
        }
        self.release_layers(record);
        if let Err(err) = self.store.delete_sandbox(&record.id) {
            tracing::warn!(?err, sandbox_id = %record.id, "cannot forget the sandbox");
        }
    }

    /// Ends every sandbox whose time is up or that was seen to have died.
    pub async fn reap(self: &Arc<Self>) {
        let now = clock::now_ms();
        let candidates = self.registry.all();
        let handles: Vec<_> = candidates.iter().map(|l| l.handle().clone()).collect();
        // One blocking call for all of them: thousands of sandboxes, one thread.
        let looks = self
            .blocking(move |r| Ok(handles.iter().map(|h| r.liveness(h)).collect::<Vec<_>>()))
            .await
            .unwrap_or_default();
        for (live, look) in candidates.iter().zip(looks) {
            let reason = if live.read(|r| r.end_at <= now) {
                Some("its timeout ended".to_owned())
            } else {
                match look {
                    Ok(Liveness::Running) => None,
                    Ok(Liveness::Ended(why)) => Some(why.to_string()),
                    Err(err) => {
                        tracing::warn!(?err, sandbox_id = %live.id(), "cannot look at the sandbox; leaving it be");
                        None
                    }
                }
            };
            if let Some(reason) = reason {
                tracing::info!(sandbox_id = %live.id(), %reason, "reaping sandbox");
                if let Err(err) = self.end(live, reason).await {
                    tracing::warn!(?err, "cannot reap sandbox");
                }
            }
        }
    }

    /// Runs [`Lifecycle::reap`] every `period`, for ever.
    pub async fn run_reaper(self: Arc<Self>, period: Duration) {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.reap().await;
            self.expire_warm().await;
        }
    }

    /// Kills every sandbox (shutdown with `--kill-on-exit`).
    pub async fn kill_all(self: &Arc<Self>) {
        for live in self.registry.all() {
            if let Err(err) = self.end(&live, "the server stopped".to_owned()).await {
                tracing::warn!(?err, "cannot kill sandbox on exit");
            }
        }
        // Kills that were already under way (the reaper's, a client's) finish too.
        self.ending.close();
        self.ending.wait().await;
    }

    /// Lets the backend tidy up after the last sandbox is gone (server shutdown).
    pub fn shutdown(&self) {
        self.runtime.shutdown();
    }
}
