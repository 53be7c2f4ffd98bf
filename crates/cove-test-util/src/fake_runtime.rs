//! A runtime without sandboxes, for tests of the server's own logic (admission, the
//! lifecycle's states, the reaper, pauses and resumes, snapshots, adoption after a
//! restart): it records what it is asked and answers as the test tells it. Integration
//! tests use real sandboxes instead.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use cove_runtime::{
    AgentEndpoint, EndReason, Handle, Layer, Limits, Liveness, PauseMode, Recovered, Runtime,
    RuntimeError, SandboxSpec, Started, Template, Usage,
};

/// The backend name in the fake's handles.
const NAME: &str = "fake";

/// What the fake knows of one sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeSandbox {
    pub spec_network: bool,
    pub limits: Limits,
    /// `None` while it runs.
    pub ended: Option<EndReason>,
    /// Looking at it fails (as reading `/proc` does when the server is out of descriptors).
    pub unobservable: bool,
    pub killed: bool,
    /// Set while it is paused.
    pub paused: Option<PauseMode>,
    /// How often it was started (create, and resumes from its files).
    pub starts: u32,
    /// How often it was snapshotted.
    pub snapshots: u32,
    /// The template it last started from, or was rerooted onto.
    pub template: Option<Template>,
    /// How often it was given a new root.
    pub reroots: u32,
}

#[derive(Debug, Default)]
struct State {
    sandboxes: BTreeMap<String, FakeSandbox>,
    failing_creates: usize,
    create_delay: Option<Duration>,
    /// Pauses, resumes and snapshots take this long.
    transition_delay: Option<Duration>,
    /// Pauses with memory are unsupported (a host without a cgroup freezer).
    no_memory_pause: bool,
    /// Looking at sandboxes takes this long (blocking, as reading `/proc` under load does).
    liveness_delay: Option<Duration>,
    /// Looks at sandboxes under way.
    looking: usize,
    /// Pauses, resumes and snapshots under way.
    in_transition: usize,
    shut_down: bool,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

impl FakeRuntime {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next `n` creates fail.
    pub fn fail_next_creates(&self, n: usize) {
        self.state().failing_creates = n;
    }

    /// Every create takes this long (blocking, as a real start does).
    pub fn slow_creates(&self, delay: Duration) {
        self.state().create_delay = Some(delay);
    }

    /// Every pause, resume and snapshot takes this long (blocking, as a real one does).
    pub fn slow_transitions(&self, delay: Duration) {
        self.state().transition_delay = Some(delay);
    }

    /// Every look at a sandbox takes this long.
    pub fn slow_liveness(&self, delay: Duration) {
        self.state().liveness_delay = Some(delay);
    }

    /// How many looks at sandboxes are under way now.
    pub fn looks_under_way(&self) -> usize {
        self.state().looking
    }

    /// Pauses that keep memory are unsupported from now on.
    pub fn refuse_memory_pauses(&self) {
        self.state().no_memory_pause = true;
    }

    /// Sandbox `id` is found paused (as a server killed mid-pause leaves it).
    pub fn set_paused(&self, id: &str, paused: Option<PauseMode>) {
        if let Some(sandbox) = self.state().sandboxes.get_mut(id) {
            sandbox.paused = paused;
        }
    }

    fn delay_transition(&self) {
        self.take_time(|s| (&mut s.in_transition, s.transition_delay));
    }

    /// Blocks for the delay `which` names, counted in its counter meanwhile.
    fn take_time(&self, which: impl Fn(&mut State) -> (&mut usize, Option<Duration>)) {
        let delay = {
            let mut state = self.state();
            let (under_way, delay) = which(&mut state);
            *under_way += 1;
            delay
        };
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
        *which(&mut self.state()).0 -= 1;
    }

    /// How many pauses, resumes and snapshots are under way now.
    pub fn transitions_under_way(&self) -> usize {
        self.state().in_transition
    }

    /// Sandbox `id` ends on its own, for `reason`.
    pub fn end(&self, id: &str, reason: EndReason) {
        if let Some(sandbox) = self.state().sandboxes.get_mut(id) {
            sandbox.ended = Some(reason);
        }
    }

    /// Looking at sandbox `id` fails (or works again).
    pub fn make_unobservable(&self, id: &str, unobservable: bool) {
        if let Some(sandbox) = self.state().sandboxes.get_mut(id) {
            sandbox.unobservable = unobservable;
        }
    }

    /// What the fake knows of sandbox `id`.
    pub fn sandbox(&self, id: &str) -> Option<FakeSandbox> {
        self.state().sandboxes.get(id).cloned()
    }

    /// Ids of the sandboxes that run (not paused).
    pub fn running(&self) -> Vec<String> {
        self.state()
            .sandboxes
            .iter()
            .filter(|(_, s)| s.ended.is_none() && !s.killed && s.paused.is_none())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Ids of the sandboxes that are paused.
    pub fn paused(&self) -> Vec<String> {
        self.state()
            .sandboxes
            .iter()
            .filter(|(_, s)| s.ended.is_none() && !s.killed && s.paused.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether `shutdown` was called.
    pub fn was_shut_down(&self) -> bool {
        self.state().shut_down
    }

    fn handle(id: &str) -> Handle {
        Handle {
            id: id.to_owned(),
            backend: NAME.to_owned(),
            state: serde_json::Value::Null,
        }
    }

    fn started(id: &str) -> Started {
        Started {
            handle: Self::handle(id),
            agent: AgentEndpoint::Unix(format!("/nonexistent/cove-fake/{id}.sock").into()),
        }
    }

    fn known(&self, handle: &Handle) -> Result<FakeSandbox, RuntimeError> {
        if handle.backend != NAME {
            return Err(RuntimeError::ForeignHandle {
                id: handle.id.clone(),
                backend: handle.backend.clone(),
            });
        }
        self.sandbox(&handle.id).ok_or_else(|| RuntimeError::Io {
            what: "find the sandbox",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }
}

impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create(&self, spec: &SandboxSpec) -> Result<Started, RuntimeError> {
        let delay = self.state().create_delay;
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
        let mut state = self.state();
        if state.failing_creates > 0 {
            state.failing_creates -= 1;
            return Err(RuntimeError::Start {
                id: spec.id.clone(),
                reason: "the fake was told to fail".to_owned(),
            });
        }
        state.sandboxes.insert(
            spec.id.clone(),
            FakeSandbox {
                spec_network: spec.network,
                limits: spec.limits,
                ended: None,
                unobservable: false,
                killed: false,
                paused: None,
                starts: 1,
                snapshots: 0,
                template: Some(spec.template.clone()),
                reroots: 0,
            },
        );
        Ok(Self::started(&spec.id))
    }

    fn recover(&self, handle: &Handle) -> Result<Option<Recovered>, RuntimeError> {
        let sandbox = self.known(handle)?;
        if sandbox.ended.is_some() || sandbox.killed {
            return Ok(None);
        }
        let started = Self::started(&handle.id);
        Ok(Some(match sandbox.paused {
            None => Recovered::Running(started),
            Some(mode) => Recovered::Paused(started, mode),
        }))
    }

    fn liveness(&self, handle: &Handle) -> Result<Liveness, RuntimeError> {
        self.take_time(|s| (&mut s.looking, s.liveness_delay));
        let sandbox = self.known(handle)?;
        if sandbox.unobservable {
            return Err(RuntimeError::Io {
                what: "look at the sandbox",
                source: std::io::Error::from_raw_os_error(24), // EMFILE
            });
        }
        Ok(match (sandbox.ended, sandbox.killed, sandbox.paused) {
            (Some(reason), _, _) => Liveness::Ended(reason),
            // Paused without its memory, nothing of it runs.
            (None, true, _) | (None, false, Some(PauseMode::Filesystem)) => {
                Liveness::Ended(EndReason::AgentExited)
            }
            (None, false, _) => Liveness::Running,
        })
    }

    fn kill(&self, handle: &Handle) -> Result<(), RuntimeError> {
        self.known(handle)?;
        if let Some(sandbox) = self.state().sandboxes.get_mut(&handle.id) {
            sandbox.killed = true;
        }
        Ok(())
    }

    fn kill_leftovers(&self, id: &str) -> Result<(), RuntimeError> {
        if let Some(sandbox) = self.state().sandboxes.get_mut(id) {
            sandbox.killed = true;
        }
        Ok(())
    }

    fn remove(&self, _id: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn usage(&self, handle: &Handle) -> Result<Usage, RuntimeError> {
        let sandbox = self.known(handle)?;
        Ok(Usage {
            memory_bytes: sandbox.limits.memory_bytes / 2,
            ..Usage::default()
        })
    }

    fn set_limits(&self, handle: &Handle, limits: Limits) -> Result<(), RuntimeError> {
        self.known(handle)?;
        if let Some(sandbox) = self.state().sandboxes.get_mut(&handle.id) {
            sandbox.limits = limits;
        }
        Ok(())
    }

    fn log(&self, id: &str) -> Result<String, RuntimeError> {
        // As the real stages write it: one JSON object a line.
        Ok(format!(
            "{{\"timestamp\":\"2026-01-01T00:00:00Z\",\"level\":\"INFO\",\"fields\":{{\"message\":\"fake sandbox {id}\"}},\"target\":\"fake\"}}\n"
        ))
    }

    fn shutdown(&self) {
        self.state().shut_down = true;
    }

    fn pause(&self, handle: &Handle, mode: PauseMode) -> Result<Handle, RuntimeError> {
        self.known(handle)?;
        self.delay_transition();
        let mut state = self.state();
        if mode == PauseMode::Memory && state.no_memory_pause {
            return Err(RuntimeError::Unsupported {
                backend: NAME,
                what: "pause sandboxes with their memory",
            });
        }
        let sandbox = state.sandboxes.get_mut(&handle.id).expect("known above");
        match (sandbox.paused, mode) {
            (None, _) | (Some(PauseMode::Memory), PauseMode::Filesystem) => {
                sandbox.paused = Some(mode);
                Ok(Self::handle(&handle.id))
            }
            (Some(_), _) => Err(RuntimeError::WrongState {
                id: handle.id.clone(),
                state: "paused already",
            }),
        }
    }

    fn resume(&self, handle: &Handle, spec: &SandboxSpec) -> Result<Started, RuntimeError> {
        self.known(handle)?;
        self.delay_transition();
        let mut state = self.state();
        let sandbox = state.sandboxes.get_mut(&handle.id).expect("known above");
        match sandbox.paused.take() {
            None => Err(RuntimeError::WrongState {
                id: handle.id.clone(),
                state: "running",
            }),
            Some(mode) => {
                if mode == PauseMode::Filesystem {
                    sandbox.starts += 1;
                    sandbox.limits = spec.limits;
                    sandbox.template = Some(spec.template.clone());
                }
                Ok(Self::started(&handle.id))
            }
        }
    }

    /// Makes `into/0` (an empty layer) and puts it on top of `template`.
    fn snapshot(
        &self,
        handle: &Handle,
        template: &Template,
        into: &Path,
    ) -> Result<Template, RuntimeError> {
        self.known(handle)?;
        self.delay_transition();
        let layer = into.join("0");
        std::fs::create_dir_all(&layer).map_err(|source| RuntimeError::Io {
            what: "make the snapshot's layer",
            source,
        })?;
        if let Some(sandbox) = self.state().sandboxes.get_mut(&handle.id) {
            sandbox.snapshots += 1;
        }
        let mut layers = vec![Layer {
            path: layer,
            at: "/".into(),
        }];
        layers.extend(template.layers.iter().cloned());
        Ok(Template {
            memory: None,
            name: template.name.clone(),
            layers,
        })
    }

    fn can_reroot(&self) -> bool {
        true
    }

    fn reroot(&self, handle: &Handle, template: &Template) -> Result<(), RuntimeError> {
        self.known(handle)?;
        match self.state().sandboxes.get_mut(&handle.id) {
            Some(sandbox) if sandbox.ended.is_none() && sandbox.paused.is_none() => {
                sandbox.template = Some(template.clone());
                sandbox.reroots += 1;
                Ok(())
            }
            _ => Err(RuntimeError::WrongState {
                id: handle.id.clone(),
                state: "not running",
            }),
        }
    }
}
