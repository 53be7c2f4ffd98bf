//! Ending sandboxes: kills asked for, the reaper that ends expired and dead ones (or pauses
//! those that asked for it, see [`super::pause`]), and the end of everything at shutdown. A
//! sandbox is ended only when it was asked for, its time is up, or it was positively seen
//! to have died: one that cannot be looked at (too many open files, say) is left alone. A
//! paused sandbox has no timeout.

use std::{sync::Arc, time::Duration};

use cove_runtime::Liveness;

use super::{Ended, Lifecycle, LifecycleError, Live, metrics_history::SAMPLE_PERIOD};
use crate::{clock, store::SandboxRecord};

impl Lifecycle {
    /// Kills a sandbox of `team` and removes its files.
    pub async fn kill(self: &Arc<Self>, team: &str, id: &str) -> Result<(), LifecycleError> {
        let live = self.get(team, id)?;
        self.end(&live, "it was killed".to_owned()).await
    }

    /// Ends `live` for `reason` in a task of its own.
    async fn end(self: &Arc<Self>, live: &Arc<Live>, reason: String) -> Result<(), LifecycleError> {
        self.end_if(live, reason, |_| true).await
    }

    /// Ends `live` for `reason` if, once the transitions under way have finished, `still`
    /// holds: what the reaper saw (dead, expired) may no longer be true after a pause, a
    /// resume or a connect that ran meanwhile.
    async fn end_if(
        self: &Arc<Self>,
        live: &Arc<Live>,
        reason: String,
        still: impl FnOnce(&Live) -> bool + Send + 'static,
    ) -> Result<(), LifecycleError> {
        let (this, live) = (self.clone(), live.clone());
        self.ending
            .spawn(async move { this.end_now(&live, reason, still).await })
            .await
            .unwrap_or_else(|join| Err(LifecycleError::Crashed(join.to_string())))
    }

    async fn end_now(
        &self,
        live: &Arc<Live>,
        reason: String,
        still: impl FnOnce(&Live) -> bool,
    ) -> Result<(), LifecycleError> {
        // After a transition under way (a pause, a snapshot): then it is killed as it is.
        let _turn = self.turn_of(live).await?;
        if !still(live) {
            tracing::debug!(sandbox_id = %live.id(), team = %live.team(), %reason, "not ended: it changed meanwhile");
            return Ok(());
        }
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
        let handle = live.handle();
        if let Err(source) = self.blocking(move |r| r.kill(&handle)).await {
            // Keep it listed so the kill can be retried.
            self.registry.restore(live.clone());
            return Err(LifecycleError::Kill {
                id: record.id,
                source,
            });
        }
        self.discard(&record).await;
        tracing::info!(sandbox_id = %record.id, team = %record.team, %reason, "sandbox ended");
        Ok(())
    }

    /// Removes a sandbox's files and record (its processes must be gone).
    pub(super) async fn discard(&self, record: &SandboxRecord) {
        let id = record.id.clone();
        if let Err(err) = self.blocking(move |r| r.remove(&id)).await {
            tracing::warn!(?err, sandbox_id = %record.id, team = %record.team, "cannot remove the sandbox's files");
        }
        self.release_layers(record);
        if let Err(err) = self.store.delete_sandbox(&record.id) {
            tracing::warn!(?err, sandbox_id = %record.id, team = %record.team, "cannot forget the sandbox");
        }
        // The last sandbox of a deleted snapshot takes its layers with it.
        if record
            .template
            .as_ref()
            .is_some_and(|t| self.has_snapshot_layers(t))
        {
            self.collect_layers().await;
        }
    }

    /// Ends every sandbox whose time is up or that was seen to have died; pauses instead
    /// those that asked for it.
    pub async fn reap(self: &Arc<Self>) {
        let now = clock::now_ms();
        let mut candidates = self.registry.all();
        // Paused ones have no timeout, and nothing runs to be seen dying.
        candidates.retain(|l| l.paused().is_none());
        // One blocking call for all of them: thousands of sandboxes, one thread. A sandbox
        // that runs and has time left is done with; the handle of any other is kept as it
        // was seen, to tell later whether it is still that sandbox.
        let Ok(looked) = self
            .blocking(move |r| {
                let looked: Vec<_> = candidates
                    .into_iter()
                    .map(|live| {
                        let (look, seen) = live.with_handle(|handle| {
                            let look = r.liveness(handle);
                            let suspect = !matches!(look, Ok(Liveness::Running))
                                || live.read(|record| record.end_at <= now);
                            (look, suspect.then(|| handle.clone()))
                        });
                        (live, look, seen)
                    })
                    .collect();
                Ok(looked)
            })
            .await
        else {
            return;
        };
        for (live, look, seen) in looked {
            let Some(seen) = seen else {
                continue;
            };
            if live.transition.try_lock().is_err() {
                // A transition under way decides what it is next.
                continue;
            }
            let expired = live.read(|r| r.end_at <= now);
            if expired && let Some(paused) = self.pause_on_timeout(&live).await {
                match paused {
                    Ok(()) => continue,
                    Err(LifecycleError::NotFound(_) | LifecycleError::Ended { .. }) => continue,
                    Err(err) => {
                        tracing::warn!(?err, sandbox_id = %live.id(), team = %live.team(), "cannot pause the sandbox whose time is up; ending it");
                    }
                }
            }
            let reason = if expired {
                Some("its timeout ended".to_owned())
            } else {
                match look {
                    Ok(Liveness::Running) => None,
                    Ok(Liveness::Ended(why)) => Some(why.to_string()),
                    Err(err) => {
                        tracing::warn!(?err, sandbox_id = %live.id(), team = %live.team(), "cannot look at the sandbox; leaving it be");
                        None
                    }
                }
            };
            if let Some(reason) = reason {
                tracing::info!(sandbox_id = %live.id(), team = %live.team(), %reason, "reaping sandbox");
                // Only if it is still what was seen: not paused, not resumed on new processes
                // since, and (when expired) not given more time by a connect.
                let still = move |live: &Live| {
                    live.paused().is_none()
                        && live.handle() == seen
                        && (!expired || live.read(|r| r.end_at <= clock::now_ms()))
                };
                if let Err(err) = self.end_if(&live, reason, still).await {
                    tracing::warn!(?err, sandbox_id = %live.id(), team = %live.team(), "cannot reap sandbox");
                }
            }
        }
    }

    /// Runs [`Lifecycle::reap`] every `period`, for ever, and samples the running
    /// sandboxes' use for their metrics history every [`SAMPLE_PERIOD`] or so.
    pub async fn run_reaper(self: Arc<Self>, period: Duration) {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let sample_every = (SAMPLE_PERIOD.as_millis() / period.as_millis().max(1)).max(1);
        let mut tick: u128 = 0;
        loop {
            interval.tick().await;
            self.reap().await;
            self.expire_warm().await;
            if tick.is_multiple_of(sample_every) {
                self.sample_all().await;
            }
            tick += 1;
        }
    }

    /// Kills every sandbox (shutdown with `--kill-on-exit`).
    pub async fn kill_all(self: &Arc<Self>) {
        for live in self.registry.all() {
            if let Err(err) = self.end(&live, "the server stopped".to_owned()).await {
                tracing::warn!(?err, sandbox_id = %live.id(), team = %live.team(), "cannot kill sandbox on exit");
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
