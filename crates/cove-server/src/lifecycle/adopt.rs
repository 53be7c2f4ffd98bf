//! Taking over, after a restart, the sandboxes a previous server left running or paused;
//! forgetting and removing the rest. The runtime says what each sandbox is now (it finishes
//! or undoes a transition the previous server left halfway), and the record follows.

use cove_runtime::{PauseMode, Recovered, Started};

use super::{Lifecycle, LifecycleError, pool::WARM_TEAM, pool::Warm};
use crate::{clock, store::SandboxRecord};

impl Lifecycle {
    /// Re-adopts what still runs or is paused; returns how many. Snapshots come back too,
    /// and layers nothing uses any more go.
    pub async fn adopt(&self) -> Result<usize, LifecycleError> {
        self.load_snapshots()?;
        let mut adopted = 0;
        for record in self.store.sandboxes()? {
            let Some(handle) = record.handle.clone() else {
                // Cut short mid-create (or made by a Cove that kept no handle).
                tracing::info!(sandbox_id = %record.id, team = %record.team, "sandbox was being created when the server stopped; removing it");
                let id = record.id.clone();
                match self.blocking(move |r| r.kill_leftovers(&id)).await {
                    Ok(()) => self.discard(&record).await,
                    Err(err) => {
                        tracing::warn!(?err, sandbox_id = %record.id, team = %record.team, "cannot kill what is left of the sandbox")
                    }
                }
                continue;
            };
            // Its own egress rules first, so the runtime attaches them as it takes the
            // sandbox over (the previous server's programs, with its rules, stay attached
            // until then).
            if let Err(err) = self.apply_egress(&record.id, record.egress.as_ref()).await {
                tracing::error!(?err, sandbox_id = %record.id, team = %record.team, "cannot apply the sandbox's egress rules again");
            }
            let recovered = {
                let handle = handle.clone();
                self.blocking(move |r| r.recover(&handle)).await
            };
            match recovered {
                Ok(Some(Recovered::Running(started) | Recovered::Paused(started, _)))
                    if record.team == WARM_TEAM =>
                {
                    tracing::info!(sandbox_id = %record.id, team = %record.team, "ending a warm sandbox of the previous server");
                    self.end_warm(Warm::new(record, started)).await;
                }
                Ok(Some(Recovered::Running(started))) => {
                    tracing::info!(sandbox_id = %record.id, team = %record.team, "re-adopted running sandbox");
                    self.adopt_one(record, started, None);
                    adopted += 1;
                }
                Ok(Some(Recovered::Paused(started, mode))) => {
                    tracing::info!(sandbox_id = %record.id, team = %record.team, ?mode, "re-adopted paused sandbox");
                    self.adopt_one(record, started, Some(mode));
                    adopted += 1;
                }
                Ok(None) => {
                    tracing::info!(sandbox_id = %record.id, team = %record.team, "sandbox ended while the server was away; removing it");
                    // Whatever outlived its PID 1 (a network helper) goes too.
                    let id = record.id.clone();
                    let _ = self.blocking(move |r| r.kill_leftovers(&id)).await;
                    self.discard(&record).await;
                }
                Err(err) => {
                    // Left as it is: a later start may manage to look at it.
                    tracing::error!(?err, sandbox_id = %record.id, team = %record.team, "cannot take over the sandbox");
                }
            }
        }
        self.collect_layers().await;
        Ok(adopted)
    }

    /// Takes over a sandbox as the runtime found it: running, or paused keeping `paused`.
    fn adopt_one(&self, mut record: SandboxRecord, started: Started, paused: Option<PauseMode>) {
        if record.paused.is_some() && paused.is_none() {
            // A resume finished as the previous server died: it runs from now on.
            record.end_at = clock::now_ms() + record.lifecycle.timeout_secs * 1000;
        }
        record.paused = paused;
        record.handle = Some(started.handle.clone());
        if let Err(err) = self.store.put_sandbox(&record) {
            tracing::warn!(?err, sandbox_id = %record.id, team = %record.team, "cannot save what the sandbox is now");
        }
        self.registry
            .insert(std::sync::Arc::new(super::Live::new(record, started, None)));
    }
}
