//! Warm sandboxes: started ahead of demand with a template's default settings (and, for a
//! template with a start command, already started and ready), so that a create takes one and
//! only gives it its owner, its environment (`/init`) and its limits. Building a sandbox costs
//! tens of milliseconds when the kernel's cgroup machinery is cold; taking a warm one costs
//! about one. A create that finds none ready waits for one being started, if no other create
//! waits for it already: it was begun earlier than a new one would be, so it is ready sooner.
//!
//! Each template a create used lately has its own pool (`target` of each kind, with and
//! without internet access); one nobody used for a while loses its warm sandboxes, and all
//! pools together hold at most `total`: past it, a template's new warm sandbox takes the
//! place of one of the template used longest ago.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use cove_runtime::Started;

use crate::{agent_link::Links, store::SandboxRecord};

/// The team recorded for warm sandboxes: no API key ever has it, and a restarted server
/// knows them by it (and ends them).
pub const WARM_TEAM: &str = "";

/// A started sandbox nobody owns yet.
#[derive(Debug)]
pub struct Warm {
    pub record: SandboxRecord,
    pub started: Started,
    /// Connections to its agent, kept for whoever gets it.
    pub links: Links,
}

impl Warm {
    pub fn new(record: SandboxRecord, started: Started) -> Self {
        let links = Links::new(started.agent.clone());
        Self {
            record,
            started,
            links,
        }
    }
}

/// Warm sandboxes of one template and kind.
#[derive(Debug, Default)]
struct Kind {
    ready: Vec<Warm>,
    /// Being started right now.
    starting: usize,
    /// Creates waiting for those, at most one each.
    waiting: VecDeque<oneshot::Sender<Warm>>,
}

/// What [`WarmPool::take`] found.
#[derive(Debug)]
pub enum Taken {
    Ready(Box<Warm>),
    /// One being started is promised to the caller (the channel closes if its start fails).
    Soon(oneshot::Receiver<Warm>),
    None,
}

/// What [`WarmPool::begin_start`] decided.
#[derive(Debug)]
pub enum Begin {
    /// Start one; end `evicted` (another template's, to stay within the total) first.
    Go {
        evicted: Option<Box<Warm>>,
    },
    No,
}

#[derive(Debug, Default)]
struct State {
    kinds: HashMap<(String, bool), Kind>,
    /// When a create last asked for each template.
    used: HashMap<String, Instant>,
}

/// Warm sandboxes, `target` of each kind per template, `total` at most.
#[derive(Debug)]
pub struct WarmPool {
    target: usize,
    total: usize,
    state: Mutex<State>,
}

impl WarmPool {
    pub fn new(target: usize, total: usize) -> Self {
        Self {
            target,
            total,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that a create asked for template `key` now.
    pub fn touch(&self, key: &str) {
        self.state().used.insert(key.to_owned(), Instant::now());
    }

    /// A warm sandbox of this template and kind: a ready one, else one being started that no
    /// other create waits for.
    pub fn take(&self, key: &str, network: bool) -> Taken {
        let mut state = self.state();
        state.used.insert(key.to_owned(), Instant::now());
        let Some(kind) = state.kinds.get_mut(&(key.to_owned(), network)) else {
            return Taken::None;
        };
        kind.waiting.retain(|w| !w.is_closed());
        if let Some(warm) = kind.ready.pop() {
            Taken::Ready(Box::new(warm))
        } else if kind.waiting.len() < kind.starting {
            let (promise, receiver) = oneshot::channel();
            kind.waiting.push_back(promise);
            Taken::Soon(receiver)
        } else {
            Taken::None
        }
    }

    /// Claims the right to start one more of this template and kind, when its pool is short
    /// of it and none is being started (one at a time: the CPUs are for the sandboxes in
    /// use). At the total, the warm sandbox of the template used longest ago (if it was used
    /// before this one) makes room.
    pub fn begin_start(&self, key: &str, network: bool) -> Begin {
        let mut state = self.state();
        let short = {
            let kind = state.kinds.entry((key.to_owned(), network)).or_default();
            kind.starting == 0 && kind.ready.len() < self.target
        };
        if !short {
            return Begin::No;
        }
        let held: usize = state
            .kinds
            .values()
            .map(|k| k.ready.len() + k.starting)
            .sum();
        let mut evicted = None;
        if held >= self.total {
            let mine = state.used.get(key).copied();
            let used = state.used.clone();
            let victim = state
                .kinds
                .iter()
                .filter(|((k, _), kind)| k != key && !kind.ready.is_empty())
                .map(|((k, n), _)| (used.get(k).copied(), k.clone(), *n))
                .filter(|(at, _, _)| match (at, mine) {
                    (Some(at), Some(mine)) => *at < mine,
                    (None, _) => true,
                    (Some(_), None) => false,
                })
                .min_by_key(|(at, _, _)| *at);
            let Some((_, victim_key, victim_network)) = victim else {
                return Begin::No;
            };
            evicted = state
                .kinds
                .get_mut(&(victim_key, victim_network))
                .and_then(|k| k.ready.pop())
                .map(Box::new);
        }
        if let Some(kind) = state.kinds.get_mut(&(key.to_owned(), network)) {
            kind.starting += 1;
        }
        Begin::Go { evicted }
    }

    /// Ends a start claimed with [`WarmPool::begin_start`], with its sandbox if it worked:
    /// to the first create waiting, else into the pool.
    pub fn finish_start(&self, key: &str, network: bool, warm: Option<Warm>) {
        let mut state = self.state();
        let kind = state.kinds.entry((key.to_owned(), network)).or_default();
        kind.starting = kind.starting.saturating_sub(1);
        let Some(mut warm) = warm else {
            // A failed start breaks one promise: that create starts a sandbox of its own.
            kind.waiting.pop_front();
            return;
        };
        while let Some(promise) = kind.waiting.pop_front() {
            match promise.send(warm) {
                Ok(()) => return,
                Err(unwanted) => warm = unwanted,
            }
        }
        kind.ready.push(warm);
    }

    /// How many are ready, of every template and kind.
    pub fn ready(&self) -> usize {
        self.state().kinds.values().map(|k| k.ready.len()).sum()
    }

    /// The warm sandboxes of templates no create asked for in `idle` (except `keep`'s),
    /// taken out of the pool to be ended.
    pub fn expire(&self, idle: Duration, keep: &str) -> Vec<Warm> {
        let mut state = self.state();
        let now = Instant::now();
        let stale: Vec<String> = state
            .used
            .iter()
            .filter(|(k, at)| k.as_str() != keep && now.duration_since(**at) >= idle)
            .map(|(k, _)| k.clone())
            .collect();
        let mut ended = Vec::new();
        for key in stale {
            state.used.remove(&key);
            for network in [false, true] {
                if let Some(kind) = state.kinds.get_mut(&(key.clone(), network)) {
                    ended.append(&mut kind.ready);
                    if kind.starting == 0 && kind.waiting.is_empty() {
                        state.kinds.remove(&(key.clone(), network));
                    }
                }
            }
        }
        ended
    }

    /// Every warm sandbox, taking them out of the pool (at shutdown).
    pub fn drain(&self) -> Vec<Warm> {
        let mut state = self.state();
        state
            .kinds
            .values_mut()
            .flat_map(|k| std::mem::take(&mut k.ready))
            .collect()
    }
}
