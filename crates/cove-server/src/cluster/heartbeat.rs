//! A node's part in the cluster while it runs: registered at start, a report every
//! heartbeat (which also tells it whether it is being drained), the silent nodes marked
//! down, and itself marked down when it stops.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use super::{Capacity, NodeConfig, NodeState, Nodes};
use crate::{
    clock,
    store::{Result, Store},
};

/// This process as a node of the cluster.
#[derive(Debug)]
pub struct Membership {
    pub config: NodeConfig,
    /// Its last report said it is being drained.
    draining: AtomicBool,
}

impl Membership {
    /// Enters the node in the nodes table as started now.
    pub fn register(config: NodeConfig, store: &Store, capacity: &Capacity) -> Result<Self> {
        let nodes = Nodes(store.db());
        nodes.register(&config.id, &config.address, capacity, clock::now_ms())?;
        let draining = nodes
            .get(&config.id)?
            .is_some_and(|n| n.state == NodeState::Draining);
        if draining {
            tracing::warn!(node = %config.id, "this node is being drained: it takes no new sandboxes");
        }
        Ok(Self {
            config,
            draining: AtomicBool::new(draining),
        })
    }

    /// Whether it takes no new sandboxes.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// One heartbeat: reports `capacity`, learns whether it is drained, and marks down the
    /// nodes that stopped reporting.
    fn beat(&self, store: &Store, capacity: &Capacity) -> Result<()> {
        let nodes = Nodes(store.db());
        let now = clock::now_ms();
        let state = match nodes.heartbeat(&self.config.id, capacity, now)? {
            Some(state) => state,
            // Its row was removed: it enters itself again.
            None => {
                nodes.register(&self.config.id, &self.config.address, capacity, now)?;
                NodeState::Up
            }
        };
        let draining = state == NodeState::Draining;
        if self.draining.swap(draining, Ordering::Relaxed) != draining {
            tracing::info!(node = %self.config.id, draining, "this node's drain changed");
        }
        let silent_since =
            now - i64::try_from(self.config.down_after.as_millis()).unwrap_or(i64::MAX);
        for node in nodes.mark_silent_down(silent_since)? {
            tracing::warn!(
                node = %node.id,
                last_heard = %clock::rfc3339(node.heartbeat_at),
                "a node stopped reporting: it is down and its sandboxes are lost until it comes back"
            );
        }
        Ok(())
    }

    /// Marks this node down (it is stopping: its sandboxes cannot be reached until it is back).
    pub fn leave(&self, store: &Store) {
        if let Err(err) = store.db().execute(
            "UPDATE nodes SET state = 'down' WHERE id = ?1",
            cove_db::params![&self.config.id],
        ) {
            tracing::warn!(?err, node = %self.config.id, "cannot mark this node down as it stops");
        }
    }
}

/// Reports every heartbeat until aborted; `capacity` says what the node has now. A report
/// that fails (the database away) is logged and the next one tried.
pub async fn run_heartbeats(
    membership: Arc<Membership>,
    store: Arc<Store>,
    capacity: impl Fn() -> Capacity + Send + Sync + 'static,
) {
    let capacity = Arc::new(capacity);
    let mut tick = tokio::time::interval(membership.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (membership, store, capacity) = (membership.clone(), store.clone(), capacity.clone());
        let beat = tokio::task::spawn_blocking(move || membership.beat(&store, &capacity()));
        match beat.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(?err, "cannot report this node to the cluster"),
            Err(err) => tracing::warn!(?err, "a heartbeat failed"),
        }
    }
}

/// What this host has free now, `sandboxes` of `max_sandboxes` in use, and the built
/// templates whose layers it has.
pub fn capacity_now(sandboxes: usize, max_sandboxes: usize, templates: Vec<String>) -> Capacity {
    let memory_free_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib >> 10);
    Capacity {
        memory_free_mb,
        cpus: std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        sandboxes,
        max_sandboxes,
        templates,
    }
}
