//! Which node a new sandbox goes to, decided here and at once (no scheduler round trip):
//! the better of two nodes drawn at random among those up and not drained — among those that
//! have the template's layers when some do, so its create needs no fetch — by what they
//! reported free at their last heartbeat plus the creates this process sent them since; the
//! rest follow, best first, for when the chosen one refuses. Drawing two spreads concurrent
//! creates that all read the same reports, where always taking the emptiest node would send
//! them all to it; counting one's own creates spreads those made one after the other between
//! two reports.

use std::{collections::HashMap, sync::Mutex};

use crate::cluster::{NodeRow, NodeState};

/// How much room a node has: its free sandbox slots as a share of all, then its free memory.
fn room(node: &NodeRow) -> (u64, u64) {
    let capacity = &node.capacity;
    let max = capacity.max_sandboxes.max(1) as u64;
    let free = max.saturating_sub(capacity.sandboxes as u64);
    (free * 1000 / max, capacity.memory_free_mb)
}

/// The nodes to try for a new sandbox of `template` (a built template's id, when the create
/// names one), in order; `draw(n)` is a random number below `n`.
pub fn candidates(
    nodes: Vec<NodeRow>,
    template: Option<&str>,
    mut draw: impl FnMut(usize) -> usize,
) -> Vec<NodeRow> {
    let mut open: Vec<NodeRow> = nodes
        .into_iter()
        .filter(|n| n.state == NodeState::Up && n.capacity.sandboxes < n.capacity.max_sandboxes)
        .collect();
    open.sort_by_key(|n| std::cmp::Reverse(room(n)));
    // Those with the template's layers first (the sort is stable: best first within each).
    let has = |n: &NodeRow| template.is_some_and(|t| n.capacity.templates.iter().any(|c| c == t));
    open.sort_by_key(|n| !has(n));
    let pool = match open.iter().filter(|n| has(n)).count() {
        0 => open.len(),
        with => with,
    };
    if pool < 2 {
        return open;
    }
    let first = draw(pool);
    let mut second = draw(pool - 1);
    if second >= first {
        second += 1;
    }
    let chosen = if room(&open[second]) > room(&open[first]) {
        second
    } else {
        first
    };
    let chosen = open.remove(chosen);
    open.insert(0, chosen);
    open
}

/// The creates this process sent each node since the node's last report: added to what the
/// report says, until the next report (which counts them itself).
#[derive(Debug, Default)]
pub struct Sent {
    since_report: Mutex<HashMap<String, (i64, usize)>>,
}

impl Sent {
    /// `nodes` with the creates sent since their reports counted in.
    pub fn counted(&self, mut nodes: Vec<NodeRow>) -> Vec<NodeRow> {
        let mut sent = self.since_report.lock().unwrap_or_else(|e| e.into_inner());
        sent.retain(|id, (report, _)| {
            nodes
                .iter()
                .any(|n| &n.id == id && n.heartbeat_at == *report)
        });
        for node in &mut nodes {
            if let Some((_, count)) = sent.get(&node.id) {
                node.capacity.sandboxes += count;
            }
        }
        nodes
    }

    /// One more create sent to `node` (as of its report at `report`).
    pub fn note(&self, node: &NodeRow) {
        let mut sent = self.since_report.lock().unwrap_or_else(|e| e.into_inner());
        let entry = sent
            .entry(node.id.clone())
            .or_insert((node.heartbeat_at, 0));
        if entry.0 != node.heartbeat_at {
            *entry = (node.heartbeat_at, 0);
        }
        entry.1 += 1;
    }
}

/// A random number below `n` (`n` > 0).
pub fn draw(n: usize) -> usize {
    let mut bytes = [0u8; 8];
    // The kernel's random bytes; should they fail, the first candidate is as good a draw.
    if rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()).is_err() {
        return 0;
    }
    (u64::from_ne_bytes(bytes) % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Capacity;

    fn node(id: &str, state: NodeState, sandboxes: usize) -> NodeRow {
        NodeRow {
            id: id.into(),
            address: format!("http://{id}"),
            state,
            capacity: Capacity {
                memory_free_mb: 1000,
                cpus: 2,
                sandboxes,
                max_sandboxes: 10,
                templates: Vec::new(),
            },
            started_at: 0,
            heartbeat_at: 0,
        }
    }

    fn ids(nodes: &[NodeRow]) -> Vec<&str> {
        nodes.iter().map(|n| n.id.as_str()).collect()
    }

    #[test]
    fn the_roomier_of_two_drawn_goes_first_and_closed_nodes_never() {
        let nodes = vec![
            node("a", NodeState::Up, 8),
            node("b", NodeState::Up, 2),
            node("c", NodeState::Draining, 0),
            node("d", NodeState::Down, 0),
            node("e", NodeState::Up, 10),
            node("f", NodeState::Up, 5),
        ];
        // Open, by room: b, f, a. Drawn: f (index 1) and a (index 2): f has more room.
        let mut draws = [1, 1].into_iter();
        let order = candidates(nodes.clone(), None, |_| draws.next().unwrap());
        assert_eq!(ids(&order), ["f", "b", "a"]);
        // Drawn: b and f: b.
        let mut draws = [0, 0].into_iter();
        assert_eq!(
            ids(&candidates(nodes.clone(), None, |_| draws.next().unwrap())),
            ["b", "f", "a"]
        );
        assert_eq!(
            ids(&candidates(vec![node("x", NodeState::Up, 1)], None, |_| 0)),
            ["x"]
        );
        assert!(candidates(vec![node("y", NodeState::Down, 0)], None, |_| 0).is_empty());
        for _ in 0..100 {
            assert!(draw(3) < 3);
        }
    }

    #[test]
    fn nodes_with_the_template_come_first() {
        let mut with = node("with", NodeState::Up, 9);
        with.capacity.templates = vec!["tpl".into()];
        let mut also = node("also", NodeState::Up, 7);
        also.capacity.templates = vec!["tpl".into(), "other".into()];
        let nodes = vec![node("empty", NodeState::Up, 0), with, also];
        // Two with it: the better of them, then the other, then the rest.
        let order = candidates(nodes.clone(), Some("tpl"), |n| n - 1);
        assert_eq!(ids(&order), ["also", "with", "empty"]);
        // One with it: that one, then the rest by room.
        let order = candidates(nodes.clone(), Some("other"), |_| 0);
        assert_eq!(ids(&order), ["also", "empty", "with"]);
        // None with it, or no template: room alone.
        let order = candidates(nodes, Some("unknown"), |_| 0);
        assert_eq!(order[0].id, "empty");
    }

    #[test]
    fn creates_sent_since_a_report_count_until_the_next() {
        let sent = Sent::default();
        let (a, b) = (node("a", NodeState::Up, 2), node("b", NodeState::Up, 2));
        // Two nodes always drawn together: without counting, every create between two
        // reports would go to the same one.
        let mut placed = Vec::new();
        for _ in 0..4 {
            let order = candidates(sent.counted(vec![a.clone(), b.clone()]), None, |n| n - 1);
            sent.note(&order[0]);
            placed.push(order[0].id.clone());
        }
        placed.sort();
        assert_eq!(placed, ["a", "a", "b", "b"]);
        // A new report counts them itself.
        let mut reported = a.clone();
        reported.heartbeat_at += 1;
        reported.capacity.sandboxes = 4;
        let counted = sent.counted(vec![reported, b.clone()]);
        assert_eq!(counted[0].capacity.sandboxes, 4);
        assert_eq!(counted[1].capacity.sandboxes, 4);
    }
}
