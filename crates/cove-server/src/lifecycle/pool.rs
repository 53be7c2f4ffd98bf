//! Warm sandboxes: started ahead of demand with the default settings, so that a create takes
//! one and only gives it its owner, its environment (`/init`) and its limits. Building a sandbox costs
//! tens of milliseconds when the kernel's cgroup machinery is cold; taking a warm one costs
//! about one. A create that finds none ready waits for one being started, if no other create
//! waits for it already: it was begun earlier than a new one would be, so it is ready sooner.

use std::{collections::VecDeque, sync::Mutex};

use tokio::sync::oneshot;

use cove_runtime::Started;

use crate::store::SandboxRecord;

/// The team recorded for warm sandboxes: no API key ever has it, and a restarted server
/// knows them by it (and ends them).
pub const WARM_TEAM: &str = "";

/// A started sandbox nobody owns yet.
#[derive(Debug)]
pub struct Warm {
    pub record: SandboxRecord,
    pub started: Started,
}

/// Warm sandboxes of one kind (with or without internet access).
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

/// Warm sandboxes, `target` of each kind.
#[derive(Debug)]
pub struct WarmPool {
    target: usize,
    kinds: Mutex<[Kind; 2]>,
}

fn index(network: bool) -> usize {
    usize::from(network)
}

impl WarmPool {
    pub fn new(target: usize) -> Self {
        Self {
            target,
            kinds: Mutex::default(),
        }
    }

    fn kinds(&self) -> std::sync::MutexGuard<'_, [Kind; 2]> {
        self.kinds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A warm sandbox of this kind: a ready one, else one being started that no other
    /// create waits for.
    pub fn take(&self, network: bool) -> Taken {
        let mut kinds = self.kinds();
        let kind = &mut kinds[index(network)];
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

    /// Claims the right to start one more of this kind, when the pool is short of it and
    /// none is being started (one at a time: the CPUs are for the sandboxes in use).
    pub fn begin_start(&self, network: bool) -> bool {
        let mut kinds = self.kinds();
        let kind = &mut kinds[index(network)];
        let short = kind.starting == 0 && kind.ready.len() < self.target;
        if short {
            kind.starting += 1;
        }
        short
    }

    /// Ends a start claimed with [`WarmPool::begin_start`], with its sandbox if it worked:
    /// to the first create waiting, else into the pool.
    pub fn finish_start(&self, network: bool, warm: Option<Warm>) {
        let mut kinds = self.kinds();
        let kind = &mut kinds[index(network)];
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

    /// How many are ready, of both kinds.
    pub fn ready(&self) -> usize {
        self.kinds().iter().map(|k| k.ready.len()).sum()
    }

    /// Every warm sandbox, taking them out of the pool (at shutdown).
    pub fn drain(&self) -> Vec<Warm> {
        let mut kinds = self.kinds();
        kinds
            .iter_mut()
            .flat_map(|k| std::mem::take(&mut k.ready))
            .collect()
    }
}
