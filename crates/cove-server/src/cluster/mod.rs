//! Cove on several machines sharing one PostgreSQL database. This part is the nodes': each
//! `cove serve --role node` registers itself (where it is reached, what it has free),
//! reports every [`NodeConfig::heartbeat`], and marks down the nodes that stopped reporting
//! for [`NodeConfig::down_after`]; a sandbox of a node that is down is *lost* (reported as
//! gone, never moved elsewhere) until its node comes back and takes it over again. A node
//! being drained takes no new sandboxes and lets its own run to their end.
//!
//! A node records its sandboxes under its id and takes over only those after a restart; it
//! holds its id in the database while it runs, so two processes cannot both be one node.

pub(crate) mod forward;
mod heartbeat;
mod nodes;

use std::time::Duration;

pub use self::{
    heartbeat::{Membership, capacity_now, run_heartbeats},
    nodes::{Capacity, NODE_COLUMNS_OF_N, NodeRow, NodeState, Nodes, node_row},
};

/// How a node takes part in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Its name in the cluster (unique; the host name by default).
    pub id: String,
    /// Where the other parts of the cluster reach its API and sandbox traffic
    /// (`http://10.0.0.5:3000`).
    pub address: String,
    /// How often it reports itself.
    pub heartbeat: Duration,
    /// How long without a report before a node counts as down.
    pub down_after: Duration,
}

impl NodeConfig {
    /// A node whose address names port 0 (it listens on any free port, and has no
    /// `--advertise`) is reached at the port its listener got.
    pub fn listening_on(&mut self, port: u16) {
        if let Some(host) = self.address.strip_suffix(":0") {
            self.address = format!("{host}:{port}");
        }
    }

    /// Heartbeats every 2 s; down after 10 s without one.
    pub const HEARTBEAT: Duration = Duration::from_secs(2);
    pub const DOWN_AFTER: Duration = Duration::from_secs(10);
}
