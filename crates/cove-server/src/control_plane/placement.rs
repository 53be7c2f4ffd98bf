//! Which node a new sandbox goes to, decided here and at once (no scheduler round trip):
//! the better of two nodes drawn at random among those up and not drained, by what they
//! reported free at their last heartbeat; the rest follow, best first, for when the chosen
//! one refuses. Drawing two spreads concurrent creates that all read the same reports,
//! where always taking the emptiest node would send them all to it.

use crate::cluster::{NodeRow, NodeState};

/// How much room a node has: its free sandbox slots as a share of all, then its free memory.
fn room(node: &NodeRow) -> (u64, u64) {
    let capacity = &node.capacity;
    let max = capacity.max_sandboxes.max(1) as u64;
    let free = max.saturating_sub(capacity.sandboxes as u64);
    (free * 1000 / max, capacity.memory_free_mb)
}

/// The nodes to try for a new sandbox, in order; `draw(n)` is a random number below `n`.
pub fn candidates(nodes: Vec<NodeRow>, mut draw: impl FnMut(usize) -> usize) -> Vec<NodeRow> {
    let mut open: Vec<NodeRow> = nodes
        .into_iter()
        .filter(|n| n.state == NodeState::Up && n.capacity.sandboxes < n.capacity.max_sandboxes)
        .collect();
    if open.len() < 2 {
        return open;
    }
    let first = draw(open.len());
    let mut second = draw(open.len() - 1);
    if second >= first {
        second += 1;
    }
    let chosen = if room(&open[second]) > room(&open[first]) {
        second
    } else {
        first
    };
    let chosen = open.swap_remove(chosen);
    open.sort_by_key(|n| std::cmp::Reverse(room(n)));
    open.insert(0, chosen);
    open
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
        // Drawn: a (index 0) and f (index 2 of the open a, b, f): f has more room.
        let mut draws = [0, 1].into_iter();
        let order = candidates(nodes.clone(), |_| draws.next().unwrap());
        assert_eq!(ids(&order), ["f", "b", "a"]);
        // Drawn: a and b: b.
        let mut draws = [0, 0].into_iter();
        assert_eq!(
            ids(&candidates(nodes.clone(), |_| draws.next().unwrap())),
            ["b", "f", "a"]
        );
        assert_eq!(
            ids(&candidates(vec![node("x", NodeState::Up, 1)], |_| 0)),
            ["x"]
        );
        assert!(candidates(vec![node("y", NodeState::Down, 0)], |_| 0).is_empty());
        for _ in 0..100 {
            assert!(draw(3) < 3);
        }
    }
}
