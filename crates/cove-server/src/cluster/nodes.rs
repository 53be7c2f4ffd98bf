//! The nodes table: what each node last reported, and the changes of state (up, draining,
//! down) that the nodes and operators make.

use cove_db::{Db, Row, params};
use serde::{Deserialize, Serialize};

use crate::store::{Result, StoreError};

/// Whether a node takes new sandboxes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Reports itself and takes new sandboxes.
    Up,
    /// Reports itself; takes no new sandboxes and lets its own run to their end.
    Draining,
    /// Stopped reporting itself: its sandboxes are lost until it comes back.
    Down,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Draining => "draining",
            NodeState::Down => "down",
        }
    }
}

/// What a node has, as it reported at its last heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// The host's available memory (MemAvailable), MiB.
    pub memory_free_mb: u64,
    pub cpus: u32,
    /// Its sandboxes, running and paused (warm ones not counted).
    pub sandboxes: usize,
    /// The most it runs at once (`--max-sandboxes`).
    pub max_sandboxes: usize,
    /// The built templates (ids) whose layers it has: their creates start without a fetch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<String>,
}

/// A node as the table has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub id: String,
    pub address: String,
    pub state: NodeState,
    pub capacity: Capacity,
    /// When its process started, Unix milliseconds.
    pub started_at: i64,
    /// Its last report, Unix milliseconds.
    pub heartbeat_at: i64,
}

const COLUMNS: &str = "id, address, state, draining, capacity, started_at, heartbeat_at";
/// The columns of [`node_row`], of a table named `n`.
pub const NODE_COLUMNS_OF_N: &str =
    "n.id, n.address, n.state, n.draining, n.capacity, n.started_at, n.heartbeat_at";

/// A node from a row of [`NODE_COLUMNS_OF_N`]: down when it stopped reporting, else
/// draining when it is being drained.
pub fn node_row(row: &Row) -> std::result::Result<NodeRow, StoreError> {
    let state = if row.text(2)? == "down" {
        NodeState::Down
    } else if row.flag(3)? {
        NodeState::Draining
    } else {
        NodeState::Up
    };
    Ok(NodeRow {
        id: row.text(0)?,
        address: row.text(1)?,
        state,
        capacity: serde_json::from_str(&row.text(4)?)?,
        started_at: row.int(5)?,
        heartbeat_at: row.int(6)?,
    })
}

/// The nodes table.
pub struct Nodes<'a>(pub &'a Db);

impl Nodes<'_> {
    /// Enters (or enters again) node `id` as just started and up; one being drained stays
    /// drained (a restart does not undo it).
    pub fn register(&self, id: &str, address: &str, capacity: &Capacity, now: i64) -> Result<()> {
        self.0.execute(
            "INSERT INTO nodes (id, address, state, capacity, started_at, heartbeat_at)
             VALUES (?1, ?2, 'up', ?3, ?4, ?4)
             ON CONFLICT (id) DO UPDATE SET address = excluded.address,
               capacity = excluded.capacity, started_at = excluded.started_at,
               heartbeat_at = excluded.heartbeat_at, state = 'up'",
            params![id, address, serde_json::to_string(capacity)?, now],
        )?;
        Ok(())
    }

    /// Node `id` reports itself: a node marked down while it was slow is up again. Returns
    /// its state now (none: its row is gone, which a heartbeat does not undo).
    pub fn heartbeat(&self, id: &str, capacity: &Capacity, now: i64) -> Result<Option<NodeState>> {
        self.0.execute(
            "UPDATE nodes SET capacity = ?2, heartbeat_at = ?3, state = 'up' WHERE id = ?1",
            params![id, serde_json::to_string(capacity)?, now],
        )?;
        Ok(self.get(id)?.map(|n| n.state))
    }

    /// Marks down the nodes not heard from since `before`; returns them.
    pub fn mark_silent_down(&self, before: i64) -> Result<Vec<NodeRow>> {
        let silent = self.0.transaction(|sql| {
            let silent = sql.query(
                &format!("SELECT {COLUMNS} FROM nodes WHERE heartbeat_at < ?1 AND state <> 'down'"),
                params![before],
            )?;
            sql.execute(
                "UPDATE nodes SET state = 'down' WHERE heartbeat_at < ?1 AND state <> 'down'",
                params![before],
            )?;
            Ok(silent)
        })?;
        silent.iter().map(node_row).collect()
    }

    /// Every node, by id.
    pub fn list(&self) -> Result<Vec<NodeRow>> {
        self.0
            .query(&format!("SELECT {COLUMNS} FROM nodes ORDER BY id"), &[])?
            .iter()
            .map(node_row)
            .collect()
    }

    pub fn get(&self, id: &str) -> Result<Option<NodeRow>> {
        self.0
            .query_row(
                &format!("SELECT {COLUMNS} FROM nodes WHERE id = ?1"),
                params![id],
            )?
            .map(|row| node_row(&row))
            .transpose()
    }

    /// Drains node `id` (`true`: it takes no new sandboxes and lets its own finish), or lets
    /// it take sandboxes again; a node that is down keeps it for when it comes back. `false`
    /// when there is no such node.
    pub fn set_draining(&self, id: &str, draining: bool) -> Result<bool> {
        let changed = self.0.execute(
            "UPDATE nodes SET draining = ?2 WHERE id = ?1",
            params![id, draining],
        )?;
        Ok(changed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn capacity(sandboxes: usize) -> Capacity {
        Capacity {
            memory_free_mb: 1000,
            cpus: 2,
            sandboxes,
            max_sandboxes: 10,
            templates: Vec::new(),
        }
    }

    #[test]
    fn nodes_go_down_when_silent_and_a_drain_outlives_a_restart() {
        crate::test_backends::each(|location| {
            let store = Store::open(location).unwrap();
            let nodes = Nodes(store.db());
            nodes
                .register("a", "http://a", &capacity(0), 1_000)
                .unwrap();
            nodes
                .register("b", "http://b", &capacity(0), 1_000)
                .unwrap();
            assert_eq!(
                nodes.heartbeat("a", &capacity(3), 5_000).unwrap(),
                Some(NodeState::Up)
            );
            let down = nodes.mark_silent_down(4_000).unwrap();
            assert_eq!(
                down.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
                ["b"]
            );
            assert!(nodes.mark_silent_down(4_000).unwrap().is_empty(), "once");
            let a = nodes.get("a").unwrap().unwrap();
            assert_eq!((a.state, a.capacity.sandboxes), (NodeState::Up, 3));
            // A drain set while a node is down holds when it comes back, until undrained.
            assert!(nodes.set_draining("b", true).unwrap());
            assert_eq!(nodes.get("b").unwrap().unwrap().state, NodeState::Down);
            nodes
                .register("b", "http://b2", &capacity(0), 6_000)
                .unwrap();
            let b = nodes.get("b").unwrap().unwrap();
            assert_eq!(
                (b.state, b.address.as_str()),
                (NodeState::Draining, "http://b2")
            );
            assert!(nodes.set_draining("b", false).unwrap());
            assert_eq!(
                nodes.heartbeat("b", &capacity(0), 7_000).unwrap(),
                Some(NodeState::Up)
            );
            assert!(!nodes.set_draining("nobody", true).unwrap());
            assert_eq!(
                nodes.heartbeat("nobody", &capacity(0), 7_000).unwrap(),
                None
            );
        });
    }

    /// A node's store keeps and reads back its own sandboxes, and says which node has
    /// another's.
    #[test]
    fn each_node_keeps_its_own_sandboxes() {
        crate::test_backends::each(|location| {
            let a = Store::open(location).unwrap().for_node("a");
            let b = Store::open(location).unwrap().for_node("b");
            Nodes(a.db())
                .register("a", "http://a", &capacity(0), 1)
                .unwrap();
            let mut record = crate::store::tests::record("s1");
            record.team = "t".into();
            a.put_sandbox(&record).unwrap();
            assert_eq!(a.sandboxes().unwrap().len(), 1);
            assert!(b.sandboxes().unwrap().is_empty());
            let owner = b.node_of_other("t", "s1").unwrap().unwrap();
            assert_eq!(owner.id, "a");
            assert!(b.node_of_other("other-team", "s1").unwrap().is_none());
            assert!(a.node_of_other("t", "s1").unwrap().is_none(), "its own");
            // A server on its own reads only the sandboxes of no node.
            let single = Store::open(location).unwrap();
            assert!(single.sandboxes().unwrap().is_empty());
            assert!(single.node_of_other("t", "s1").unwrap().is_none());
        });
    }
}
