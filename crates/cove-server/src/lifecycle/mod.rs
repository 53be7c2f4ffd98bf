//! Sandbox lifecycle: create, look up, extend, kill; the reaper that ends expired and dead
//! sandboxes; and re-adoption of running sandboxes when the server restarts.

mod templates;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use cove_proto::rest::NewSandbox;
use cove_runtime::{
    RunningSandbox, Runtime, SandboxSpec, namespace::init::AGENT_SOCKET_INSIDE, userns,
};
use tokio_util::task::TaskTracker;

pub use self::templates::Templates;
use crate::{
    clock, secrets,
    store::{SandboxRecord, Store, StoreError},
};

/// Longest lifetime a sandbox can be given (E2B's highest tier: 24 hours).
pub const MAX_TIMEOUT_SECS: i64 = 24 * 60 * 60;
/// Resources of a sandbox whose request names none.
const CPU_COUNT: u32 = 2;
const MEMORY_MB: u64 = 1024;
/// What a request may ask for.
const CPU_RANGE: std::ops::RangeInclusive<u32> = 1..=64;
const MEMORY_MB_RANGE: std::ops::RangeInclusive<u64> = 64..=256 * 1024;
/// Processes and threads a sandbox may have at once (a fork bomb stops here).
const PIDS_MAX: u32 = 2048;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("sandbox {0} not found")]
    NotFound(String),
    #[error("template {0:?} not found")]
    TemplateNotFound(String),
    #[error("timeout must be between 0 and {MAX_TIMEOUT_SECS} seconds, got {0}")]
    BadTimeout(i64),
    #[error("{0}")]
    BadResources(String),
    #[error("the server runs its maximum of {0} sandboxes; kill some first")]
    TooMany(usize),
    #[error("sandbox {id} could not be started")]
    Start {
        id: String,
        #[source]
        source: cove_runtime::RuntimeError,
    },
    #[error("sandbox {id} could not be killed")]
    Kill {
        id: String,
        #[source]
        source: cove_runtime::RuntimeError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A sandbox that runs now.
#[derive(Debug)]
pub struct Live {
    record: RwLock<SandboxRecord>,
    pub running: RunningSandbox,
    /// The last CPU time read, and when: CPU use is reported over the time since.
    cpu_sample: std::sync::Mutex<Option<(std::time::Instant, Duration)>>,
}

impl Live {
    fn new(record: SandboxRecord, running: RunningSandbox) -> Self {
        Self {
            record: RwLock::new(record),
            running,
            cpu_sample: std::sync::Mutex::new(None),
        }
    }

    pub fn record(&self) -> SandboxRecord {
        self.record
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn id(&self) -> String {
        self.record
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .id
            .clone()
    }

    pub fn access_token(&self) -> String {
        self.record
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .envd_access_token
            .clone()
    }

    /// The token clients of its ports must show, when the sandbox is not public.
    pub fn traffic_token(&self) -> Option<String> {
        self.record
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .traffic_access_token
            .clone()
    }

    /// The agent's socket on the host.
    pub fn socket(&self) -> &std::path::Path {
        &self.running.socket
    }

    /// The sandbox's log file (setup and agent).
    pub fn log_path(&self) -> PathBuf {
        cove_runtime::namespace::init::SandboxDirs::new(self.record().dir).log()
    }
}

/// Settings of the lifecycle manager.
#[derive(Clone, Debug)]
pub struct LifecycleConfig {
    pub state_dir: PathBuf,
    pub max_sandboxes: usize,
    /// no_new_privs in every sandbox (at the price of `sudo`).
    pub no_new_privs: bool,
    /// Each sandbox's disk quota, in MiB.
    pub disk_mb: u64,
}

/// All sandboxes of this server.
pub struct Lifecycle {
    runtime: Arc<dyn Runtime>,
    store: Arc<Store>,
    templates: Templates,
    config: LifecycleConfig,
    live: RwLock<HashMap<String, Arc<Live>>>,
    /// Slots of sandboxes being created (not yet in `live`).
    reserved: std::sync::Mutex<Vec<u32>>,
    /// Kills under way. They run as tasks of their own, so that a caller that goes away
    /// (a client hanging up, the reaper stopping) cannot leave one half done.
    ending: TaskTracker,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle").finish_non_exhaustive()
    }
}

/// How a create request's lifetime defaults.
#[derive(Clone, Copy, Debug)]
pub enum ApiVersion {
    /// `POST /sandboxes`: 15 seconds.
    V1,
    /// `POST /v2/sandboxes`: 300 seconds.
    V2,
}

impl Lifecycle {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        store: Arc<Store>,
        templates: Templates,
        config: LifecycleConfig,
    ) -> Self {
        Self {
            runtime,
            store,
            templates,
            config,
            live: RwLock::default(),
            reserved: std::sync::Mutex::default(),
            ending: TaskTracker::new(),
        }
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    fn live_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    fn live_map_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes over the sandboxes a previous server left running; forgets and removes the rest.
    pub async fn adopt(&self) -> Result<usize, LifecycleError> {
        let mut adopted = 0;
        for record in self.store.sandboxes()? {
            let running = match (record.pid, record.pid_start_time) {
                (Some(pid), Some(start_time)) => Some(RunningSandbox {
                    id: record.id.clone(),
                    pid,
                    start_time,
                    socket: cove_runtime::namespace::init::SandboxDirs::new(&record.dir).socket(),
                }),
                _ => None,
            };
            match running {
                Some(running) if self.runtime.is_alive(&running) => {
                    tracing::info!(sandbox_id = %record.id, pid = running.pid, "re-adopted running sandbox");
                    self.live_map_mut()
                        .insert(record.id.clone(), Arc::new(Live::new(record, running)));
                    adopted += 1;
                }
                _ => {
                    tracing::info!(sandbox_id = %record.id, "sandbox ended while the server was away; removing it");
                    self.discard(&record).await;
                }
            }
        }
        Ok(adopted)
    }

    /// Creates and starts a sandbox for `team`.
    pub async fn create(
        &self,
        team: &str,
        request: NewSandbox,
        version: ApiVersion,
    ) -> Result<Arc<Live>, LifecycleError> {
        let template_name = request
            .template_id
            .clone()
            .unwrap_or_else(|| "base".to_owned());
        let template = self
            .templates
            .get(&template_name)
            .ok_or_else(|| LifecycleError::TemplateNotFound(template_name.clone()))?;
        let timeout = request.timeout.unwrap_or(match version {
            ApiVersion::V1 => 15,
            ApiVersion::V2 => 300,
        });
        if !(0..=MAX_TIMEOUT_SECS).contains(&timeout) {
            return Err(LifecycleError::BadTimeout(timeout));
        }
        let cpu_count = request.cpu_count.unwrap_or(CPU_COUNT);
        if !CPU_RANGE.contains(&cpu_count) {
            return Err(LifecycleError::BadResources(format!(
                "cpuCount must be between {} and {}, got {cpu_count}",
                CPU_RANGE.start(),
                CPU_RANGE.end()
            )));
        }
        let memory_mb = request.memory_mb.unwrap_or(MEMORY_MB);
        if !MEMORY_MB_RANGE.contains(&memory_mb) {
            return Err(LifecycleError::BadResources(format!(
                "memoryMB must be between {} and {}, got {memory_mb}",
                MEMORY_MB_RANGE.start(),
                MEMORY_MB_RANGE.end()
            )));
        }
        let slot = self.reserve_slot()?;
        let id = secrets::random_id(20);
        let now = clock::now_ms();
        let mut record = SandboxRecord {
            id: id.clone(),
            team: team.to_owned(),
            template_id: template.id.clone(),
            alias: Some(template.alias.clone()),
            metadata: request.metadata.unwrap_or_default(),
            env_vars: request.env_vars.unwrap_or_default(),
            envd_access_token: secrets::random_token(),
            traffic_access_token: request
                .network
                .as_ref()
                .and_then(|n| n.allow_public_traffic)
                .is_some_and(|public| !public)
                .then(secrets::random_token),
            started_at: now,
            end_at: now + timeout * 1000,
            cpu_count,
            memory_mb,
            disk_mb: self.config.disk_mb,
            allow_internet_access: request.allow_internet_access.unwrap_or(true),
            slot,
            dir: self.config.state_dir.join("sandboxes").join(&id),
            pid: None,
            pid_start_time: None,
        };
        // Recorded first, so a server that dies mid-create cleans up after itself.
        let result = self.start(&mut record, template.template.clone()).await;
        self.release_slot(slot);
        match result {
            Ok(live) => Ok(live),
            Err(err) => {
                self.discard(&record).await;
                Err(err)
            }
        }
    }

    async fn start(
        &self,
        record: &mut SandboxRecord,
        template: cove_runtime::Template,
    ) -> Result<Arc<Live>, LifecycleError> {
        self.store.put_sandbox(record)?;
        let spec = SandboxSpec {
            id: record.id.clone(),
            dir: record.dir.clone(),
            template,
            uid_base: userns::base_for_slot(record.slot),
            hostname: "sandbox".to_owned(),
            agent_args: agent_args(record),
            network: record.allow_internet_access,
            no_new_privs: self.config.no_new_privs,
            limits: cove_runtime::cgroup::Limits {
                memory_bytes: record.memory_mb << 20,
                cpus: record.cpu_count,
                pids: PIDS_MAX,
            },
        };
        let runtime = self.runtime.clone();
        let running = tokio::task::spawn_blocking(move || runtime.create(&spec))
            .await
            .map_err(|join| LifecycleError::Start {
                id: record.id.clone(),
                source: cove_runtime::RuntimeError::Start {
                    id: record.id.clone(),
                    reason: join.to_string(),
                },
            })?
            .map_err(|source| LifecycleError::Start {
                id: record.id.clone(),
                source,
            })?;
        record.pid = Some(running.pid);
        record.pid_start_time = Some(running.start_time);
        let live = Arc::new(Live::new(record.clone(), running));
        if let Err(err) = self.store.put_sandbox(record) {
            let _ = self.runtime.kill(&live.running);
            return Err(err.into());
        }
        self.live_map_mut().insert(record.id.clone(), live.clone());
        tracing::info!(sandbox_id = %record.id, pid = live.running.pid, "sandbox started");
        Ok(live)
    }

    fn reserve_slot(&self) -> Result<u32, LifecycleError> {
        let live = self.live_map();
        if live.len() >= self.config.max_sandboxes {
            return Err(LifecycleError::TooMany(self.config.max_sandboxes));
        }
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        let used: Vec<u32> = live
            .values()
            .map(|l| l.record().slot)
            .chain(reserved.iter().copied())
            .collect();
        let slot = (0..userns::MAX_SLOTS)
            .find(|s| !used.contains(s))
            .ok_or(LifecycleError::TooMany(self.config.max_sandboxes))?;
        reserved.push(slot);
        Ok(slot)
    }

    fn release_slot(&self, slot: u32) {
        self.reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| *s != slot);
    }

    /// A running sandbox of `team`.
    pub fn get(&self, team: &str, id: &str) -> Result<Arc<Live>, LifecycleError> {
        self.live_map()
            .get(id)
            .filter(|live| live.record().team == team)
            .cloned()
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))
    }

    /// What a sandbox uses now, with its CPU use in percent of its CPUs since the last call
    /// (or since it started).
    pub fn usage(&self, live: &Live) -> Option<(cove_runtime::cgroup::Usage, f64)> {
        let usage = self.runtime.usage(&live.running.id)?;
        let now = std::time::Instant::now();
        let record = live.record();
        let mut last = live.cpu_sample.lock().unwrap_or_else(|e| e.into_inner());
        let (since, cpu_then) = last.unwrap_or_else(|| {
            let age = Duration::from_millis((clock::now_ms() - record.started_at).max(1) as u64);
            (now.checked_sub(age).unwrap_or(now), Duration::ZERO)
        });
        *last = Some((now, usage.cpu_time));
        let wall = now.duration_since(since).as_secs_f64() * f64::from(record.cpu_count.max(1));
        let used = usage.cpu_time.saturating_sub(cpu_then).as_secs_f64();
        let pct = if wall > 0.0 {
            (used / wall * 100.0).min(100.0)
        } else {
            0.0
        };
        Some((usage, (pct * 100.0).round() / 100.0))
    }

    /// A running sandbox by id alone (for sandbox traffic, authenticated by its token).
    pub fn route(&self, id: &str) -> Option<Arc<Live>> {
        self.live_map().get(id).cloned()
    }

    /// All running sandboxes (for routing signed URLs).
    pub fn all(&self) -> Vec<Arc<Live>> {
        self.live_map().values().cloned().collect()
    }

    /// The running sandboxes of `team`, newest first.
    pub fn list(&self, team: &str) -> Vec<SandboxRecord> {
        let mut records: Vec<SandboxRecord> = self
            .live_map()
            .values()
            .map(|l| l.record())
            .filter(|r| r.team == team)
            .collect();
        records.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        records
    }

    /// Sets the sandbox to end `timeout` seconds from now (shorter or longer).
    pub fn set_timeout(&self, team: &str, id: &str, timeout: i64) -> Result<(), LifecycleError> {
        if !(0..=MAX_TIMEOUT_SECS).contains(&timeout) {
            return Err(LifecycleError::BadTimeout(timeout));
        }
        let live = self.get(team, id)?;
        self.update(&live, |r| r.end_at = clock::now_ms() + timeout * 1000)
    }

    /// Connecting to a running sandbox extends its life to `timeout` from now, never shortens.
    pub fn connect(
        &self,
        team: &str,
        id: &str,
        timeout: Option<i64>,
    ) -> Result<Arc<Live>, LifecycleError> {
        let timeout = timeout.unwrap_or(300);
        if !(0..=MAX_TIMEOUT_SECS).contains(&timeout) {
            return Err(LifecycleError::BadTimeout(timeout));
        }
        let live = self.get(team, id)?;
        let end = clock::now_ms() + timeout * 1000;
        self.update(&live, |r| r.end_at = r.end_at.max(end))?;
        Ok(live)
    }

    fn update(
        &self,
        live: &Live,
        change: impl FnOnce(&mut SandboxRecord),
    ) -> Result<(), LifecycleError> {
        let mut record = live.record.write().unwrap_or_else(|e| e.into_inner());
        let mut updated = record.clone();
        change(&mut updated);
        self.store.put_sandbox(&updated)?;
        *record = updated;
        Ok(())
    }

    /// Kills a sandbox of `team` and removes its files.
    pub async fn kill(self: &Arc<Self>, team: &str, id: &str) -> Result<(), LifecycleError> {
        let live = self.get(team, id)?;
        self.end(&live).await
    }

    async fn end(self: &Arc<Self>, live: &Arc<Live>) -> Result<(), LifecycleError> {
        let (this, live) = (self.clone(), live.clone());
        let id = live.id();
        self.ending
            .spawn(async move { this.end_now(&live).await })
            .await
            .unwrap_or_else(|join| {
                Err(LifecycleError::Kill {
                    id: id.clone(),
                    source: cove_runtime::RuntimeError::Start {
                        id,
                        reason: join.to_string(),
                    },
                })
            })
    }

    async fn end_now(&self, live: &Arc<Live>) -> Result<(), LifecycleError> {
        let record = live.record();
        // Gone from routing first: no new traffic reaches a dying sandbox.
        self.live_map_mut().remove(&record.id);
        let runtime = self.runtime.clone();
        let running = live.running.clone();
        let killed = tokio::task::spawn_blocking(move || runtime.kill(&running))
            .await
            .unwrap_or_else(|join| {
                Err(cove_runtime::RuntimeError::Start {
                    id: record.id.clone(),
                    reason: join.to_string(),
                })
            });
        if let Err(source) = killed {
            // Keep it listed so the kill can be retried.
            self.live_map_mut().insert(record.id.clone(), live.clone());
            return Err(LifecycleError::Kill {
                id: record.id,
                source,
            });
        }
        self.discard(&record).await;
        tracing::info!(sandbox_id = %record.id, "sandbox killed");
        Ok(())
    }

    /// Removes a sandbox's files and record (its processes must be gone).
    async fn discard(&self, record: &SandboxRecord) {
        let runtime = self.runtime.clone();
        let dir = record.dir.clone();
        if let Ok(Err(err)) = tokio::task::spawn_blocking(move || runtime.remove(&dir)).await {
            tracing::warn!(?err, sandbox_id = %record.id, "cannot remove the sandbox's files");
        }
        if let Err(err) = self.store.delete_sandbox(&record.id) {
            tracing::warn!(?err, sandbox_id = %record.id, "cannot forget the sandbox");
        }
    }

    /// Ends every sandbox whose time is up, and forgets those whose PID 1 died.
    pub async fn reap(self: &Arc<Self>) {
        let now = clock::now_ms();
        let candidates: Vec<Arc<Live>> = self.live_map().values().cloned().collect();
        for live in candidates {
            let expired = live.record().end_at <= now;
            let dead = !self.runtime.is_alive(&live.running);
            if expired || dead {
                tracing::info!(sandbox_id = %live.id(), expired, dead, "reaping sandbox");
                if let Err(err) = self.end(&live).await {
                    tracing::warn!(?err, "cannot reap sandbox");
                }
            }
        }
    }

    /// Runs [`Lifecycle::reap`] every `period`, for ever.
    pub async fn run_reaper(self: Arc<Self>, period: Duration) {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.reap().await;
        }
    }

    /// Kills every sandbox (shutdown with `--kill-on-exit`).
    pub async fn kill_all(self: &Arc<Self>) {
        let all: Vec<Arc<Live>> = self.live_map().values().cloned().collect();
        for live in all {
            if let Err(err) = self.end(&live).await {
                tracing::warn!(?err, "cannot kill sandbox on exit");
            }
        }
        // Kills that were already under way (the reaper's, a client's) finish too.
        self.ending.close();
        self.ending.wait().await;
    }

    /// Lets the backend tidy up after the last sandbox is gone (server shutdown).
    pub fn shutdown(&self) {
        self.runtime.shutdown();
    }
}

/// The agent's command line for a sandbox (it reaches PID 1 on stdin, never in argv).
fn agent_args(record: &SandboxRecord) -> Vec<String> {
    let mut args = vec![
        "--listen".to_owned(),
        format!("unix:{AGENT_SOCKET_INSIDE}"),
        "--access-token".to_owned(),
        record.envd_access_token.clone(),
        "--default-user".to_owned(),
        "user".to_owned(),
        "--default-workdir".to_owned(),
        "/home/user".to_owned(),
    ];
    let builtin = BTreeMap::from([
        ("E2B_SANDBOX_ID".to_owned(), record.id.clone()),
        ("E2B_TEMPLATE_ID".to_owned(), record.template_id.clone()),
    ]);
    for (key, value) in builtin.iter().chain(record.env_vars.iter()) {
        args.push("--env".to_owned());
        args.push(format!("{key}={value}"));
    }
    args
}
