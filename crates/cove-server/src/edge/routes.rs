//! Where each sandbox runs, as the cluster's database says, kept in memory. A route is
//! asked again after [`FRESH_FOR`]; while the database cannot be reached the routes known
//! keep serving, so running sandboxes stay reachable through a database outage.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use crate::{
    cluster::{NodeRow, NodeState},
    proxy::SignedFiles,
    store::Store,
};

/// How long a route is used before the database is asked again (a sandbox killed, or its
/// node gone down, is noticed within this).
const FRESH_FOR: Duration = Duration::from_secs(1);

/// What is known of a sandbox.
#[derive(Clone, Debug)]
pub enum Found {
    /// It runs on the node reached at this address.
    Node { address: String },
    /// Its node is down.
    Lost { node: String, last_heard: i64 },
    /// No node has it.
    Unknown,
}

#[derive(Clone)]
struct Route {
    node: NodeRow,
    /// Its access token, which signed file URLs are checked against.
    token: String,
}

impl Route {
    fn found(&self) -> Found {
        match self.node.state {
            NodeState::Down => Found::Lost {
                node: self.node.id.clone(),
                last_heard: self.node.heartbeat_at,
            },
            NodeState::Up | NodeState::Draining => Found::Node {
                address: self.node.address.clone(),
            },
        }
    }
}

/// The routes (see the module documentation).
pub struct Routes {
    store: Arc<Store>,
    known: RwLock<Known>,
}

#[derive(Default)]
struct Known {
    by_id: HashMap<String, (Route, Instant)>,
    /// When every route was last read (for signed URLs, which name no sandbox).
    all_read: Option<Instant>,
}

impl Routes {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            known: RwLock::default(),
        }
    }

    /// Where sandbox `id` runs.
    pub fn find(&self, id: &str) -> Found {
        if let Some((route, read)) = self.read().by_id.get(id)
            && read.elapsed() < FRESH_FOR
        {
            return route.found();
        }
        match self.store.placed(Some(id)) {
            Ok(placed) => {
                let mut known = self.write();
                match placed.into_iter().next() {
                    Some((record, node)) => {
                        let route = Route {
                            node,
                            token: record.envd_access_token,
                        };
                        let found = route.found();
                        known.by_id.insert(id.to_owned(), (route, Instant::now()));
                        found
                    }
                    None => {
                        known.by_id.remove(id);
                        Found::Unknown
                    }
                }
            }
            Err(err) => {
                tracing::warn!(?err, sandbox_id = %id, "cannot ask the database where a sandbox runs; using the route known");
                self.read()
                    .by_id
                    .get(id)
                    .map_or(Found::Unknown, |(route, _)| route.found())
            }
        }
    }

    /// The sandbox whose access token signed `signed`, and where it runs.
    pub fn signed(&self, signed: &SignedFiles) -> Option<(String, Found)> {
        let stale = self
            .read()
            .all_read
            .is_none_or(|read| read.elapsed() >= FRESH_FOR);
        if stale {
            match self.store.placed(None) {
                Ok(placed) => {
                    let now = Instant::now();
                    let mut known = self.write();
                    known.by_id = placed
                        .into_iter()
                        .map(|(record, node)| {
                            let route = Route {
                                node,
                                token: record.envd_access_token,
                            };
                            (record.id, (route, now))
                        })
                        .collect();
                    known.all_read = Some(now);
                }
                Err(err) => {
                    tracing::warn!(
                        ?err,
                        "cannot read the sandboxes' routes; using the ones known"
                    );
                }
            }
        }
        self.read()
            .by_id
            .iter()
            .find(|(_, (route, _))| signed.is_signed_by(&route.token))
            .map(|(id, (route, _))| (id.clone(), route.found()))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.known.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Known> {
        self.known.write().unwrap_or_else(|e| e.into_inner())
    }
}
