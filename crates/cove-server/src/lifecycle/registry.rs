//! The sandboxes that run now, by id, and a short memory of those that ended (so a client
//! asking after one learns why it is gone).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use cove_runtime::{AgentEndpoint, Handle, Started};

use crate::store::SandboxRecord;

/// How many ended sandboxes are remembered.
const REMEMBERED: usize = 10_000;

/// A sandbox that runs now.
#[derive(Debug)]
pub struct Live {
    record: RwLock<SandboxRecord>,
    handle: Handle,
    agent: AgentEndpoint,
    /// The last CPU time read, and when: CPU use is reported over the time since.
    pub(super) cpu_sample: Mutex<Option<(std::time::Instant, Duration)>>,
}

impl Live {
    pub(super) fn new(record: SandboxRecord, started: Started) -> Self {
        Self {
            record: RwLock::new(record),
            handle: started.handle,
            agent: started.agent,
            cpu_sample: Mutex::new(None),
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

    pub fn access_token(&self) -> String {
        self.read(|r| r.envd_access_token.clone())
    }

    /// The token clients of its ports must show, when the sandbox is not public.
    pub fn traffic_token(&self) -> Option<String> {
        self.read(|r| r.traffic_access_token.clone())
    }

    /// How the server reaches its agent.
    pub fn agent(&self) -> &AgentEndpoint {
        &self.agent
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
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

    pub fn len(&self) -> usize {
        self.live().len()
    }

    /// The records of `team`'s running sandboxes.
    pub fn records_of(&self, team: &str) -> Vec<SandboxRecord> {
        self.live()
            .values()
            .filter(|l| l.read(|r| r.team == team))
            .map(|l| l.record())
            .collect()
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
