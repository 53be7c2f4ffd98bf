//! The sandboxes that run or are paused now, by id, and a short memory of those that ended
//! (so a client asking after one learns why it is gone).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use cove_runtime::{AgentEndpoint, Handle, PauseMode, Started};

use super::metrics_history::History;
use crate::{agent_link::Links, store::SandboxRecord};

/// How many ended sandboxes are remembered.
const REMEMBERED: usize = 10_000;

/// A sandbox that runs or is paused now.
#[derive(Debug)]
pub struct Live {
    record: RwLock<SandboxRecord>,
    /// How the runtime and the server reach it (both change when it starts again).
    started: RwLock<Started>,
    /// One transition at a time: pause, resume, snapshot, kill. Whoever waited for it looks
    /// again at what the sandbox is now.
    pub(super) transition: tokio::sync::Mutex<()>,
    /// Connections to its agent, kept open between requests.
    links: Links,
    /// The last CPU time read, and when: CPU use is reported over the time since.
    pub(super) cpu_sample: Mutex<Option<(std::time::Instant, Duration)>>,
    /// Its resource use over time, sampled while it runs.
    pub(super) history: Mutex<History>,
}

impl Live {
    /// A sandbox that `started`, with the connections to its agent made so far, if any.
    pub(super) fn new(record: SandboxRecord, started: Started, links: Option<Links>) -> Self {
        let links = links.unwrap_or_else(|| Links::new(started.agent.clone()));
        Self {
            record: RwLock::new(record),
            links,
            started: RwLock::new(started),
            transition: tokio::sync::Mutex::new(()),
            cpu_sample: Mutex::new(None),
            history: Mutex::new(History::default()),
        }
    }

    /// What `look` reads of the record (without copying the rest).
    pub fn read<T>(&self, look: impl FnOnce(&SandboxRecord) -> T) -> T {
        look(&self.record.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Changes the record with `change` when `save` accepts the changed copy.
    pub(super) fn update<E>(
        &self,
        change: impl FnOnce(&mut SandboxRecord),
        save: impl FnOnce(&SandboxRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut record = self.record.write().unwrap_or_else(|e| e.into_inner());
        let mut updated = record.clone();
        change(&mut updated);
        save(&updated)?;
        *record = updated;
        Ok(())
    }

    pub fn record(&self) -> SandboxRecord {
        self.read(SandboxRecord::clone)
    }

    pub fn id(&self) -> String {
        self.read(|r| r.id.clone())
    }

    /// The team it belongs to.
    pub fn team(&self) -> String {
        self.read(|r| r.team.clone())
    }

    pub fn access_token(&self) -> String {
        self.read(|r| r.envd_access_token.clone())
    }

    /// The token clients of its ports must show, when the sandbox is not public.
    pub fn traffic_token(&self) -> Option<String> {
        self.read(|r| r.traffic_access_token.clone())
    }

    /// The `Host` requests to its ports carry instead of the client's (`maskRequestHost`).
    pub fn mask_request_host(&self) -> Option<String> {
        self.read(|r| r.mask_request_host.clone())
    }

    /// How the server reaches its agent.
    pub fn agent(&self) -> AgentEndpoint {
        self.started().agent.clone()
    }

    /// Connections to its agent (see [`Links`]).
    pub fn links(&self) -> &Links {
        &self.links
    }

    pub fn handle(&self) -> Handle {
        self.started().handle.clone()
    }

    /// `f` of the runtime's handle, without a copy of it (the reaper looks at every sandbox
    /// twice a second).
    pub fn with_handle<R>(&self, f: impl FnOnce(&Handle) -> R) -> R {
        f(&self.started().handle)
    }

    fn started(&self) -> std::sync::RwLockReadGuard<'_, Started> {
        self.started.read().unwrap_or_else(|e| e.into_inner())
    }

    /// After a transition: how the runtime and the server reach it now.
    pub(super) fn set_started(&self, started: Started) {
        let mut now = self.started.write().unwrap_or_else(|e| e.into_inner());
        self.links.renew(started.agent.clone());
        *now = started;
    }

    /// What its pause kept, while it is paused.
    pub fn paused(&self) -> Option<PauseMode> {
        self.read(|r| r.paused)
    }

    /// Changes the record in memory whatever the store says: after a transition the record
    /// must say what the sandbox is (a restarted server asks the runtime again anyway).
    pub(super) fn set_record(&self, change: impl FnOnce(&mut SandboxRecord)) -> SandboxRecord {
        let mut record = self.record.write().unwrap_or_else(|e| e.into_inner());
        change(&mut record);
        record.clone()
    }
}

/// A sandbox that ended, as remembered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub team: String,
    /// Why, in words for the client ("it was killed", "its agent exited").
    pub reason: String,
    /// Unix milliseconds.
    pub at: i64,
}

/// Running sandboxes, and the recently ended.
#[derive(Debug, Default)]
pub struct Registry {
    live: RwLock<HashMap<String, Arc<Live>>>,
    ended: Mutex<Tombstones>,
}

#[derive(Debug, Default)]
struct Tombstones {
    by_id: HashMap<String, Ended>,
    order: VecDeque<String>,
}

impl Registry {
    fn live(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    fn live_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Arc<Live>> {
        self.live().get(id).cloned()
    }

    pub fn insert(&self, live: Arc<Live>) {
        self.live_mut().insert(live.id(), live);
    }

    pub fn all(&self) -> Vec<Arc<Live>> {
        self.live().values().cloned().collect()
    }

    /// The records of `team`'s sandboxes, running and paused.
    pub fn records_of(&self, team: &str) -> Vec<SandboxRecord> {
        self.live()
            .values()
            .filter(|l| l.read(|r| r.team == team))
            .map(|l| l.record())
            .collect()
    }

    /// How many sandboxes hold memory (running, or paused with their memory).
    pub fn holding_memory(&self) -> usize {
        self.live()
            .values()
            .filter(|l| l.paused() != Some(PauseMode::Filesystem))
            .count()
    }

    /// Takes sandbox `id` out of the running and remembers why, in one step: from then on
    /// it is reported gone with `ended`'s reason, never merely "not found".
    pub fn retire(&self, id: &str, ended: Ended) {
        let mut live = self.live_mut();
        self.bury(id, ended);
        live.remove(id);
    }

    /// Puts a sandbox whose end failed back among the running.
    pub fn restore(&self, live: Arc<Live>) {
        let id = live.id();
        let mut running = self.live_mut();
        self.ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .remove(&id);
        running.insert(id, live);
    }

    /// Remembers that sandbox `id` ended.
    fn bury(&self, id: &str, ended: Ended) {
        let mut tombstones = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        if tombstones.by_id.insert(id.to_owned(), ended).is_none() {
            tombstones.order.push_back(id.to_owned());
        }
        while tombstones.order.len() > REMEMBERED {
            if let Some(oldest) = tombstones.order.pop_front() {
                tombstones.by_id.remove(&oldest);
            }
        }
    }

    /// How sandbox `id` ended, if it did lately.
    pub fn ended(&self, id: &str) -> Option<Ended> {
        self.ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .get(id)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_are_bounded() {
        let registry = Registry::default();
        for n in 0..REMEMBERED + 5 {
            registry.bury(
                &n.to_string(),
                Ended {
                    team: "t".into(),
                    reason: "killed".into(),
                    at: 1,
                },
            );
        }
        assert!(registry.ended("0").is_none());
        assert!(registry.ended(&REMEMBERED.to_string()).is_some());
    }
}
