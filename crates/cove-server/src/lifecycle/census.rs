//! Counting the sandboxes for the metrics: each running or paused one with its team, and the
//! warm ones ready.

use super::Lifecycle;
use crate::telemetry::Census;

impl Lifecycle {
    /// The sandboxes as they are now.
    pub fn census(&self) -> Census {
        Census {
            sandboxes: self
                .registry
                .all()
                .iter()
                .map(|live| live.read(|r| (r.team.clone(), r.paused.is_some())))
                .collect(),
            warm_ready: self.pool.ready(),
        }
    }
}
