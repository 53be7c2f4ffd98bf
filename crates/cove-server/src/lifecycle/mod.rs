//! Sandbox lifecycle: create, look up, extend, kill; the reaper that ends expired and dead
//! sandboxes; and re-adoption of running sandboxes when the server restarts.

mod pool;
mod settings;
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

use self::{
    pool::{Taken, WARM_TEAM, Warm, WarmPool},
    settings::{Settings, check_timeout, limits},
};
pub use self::{settings::MAX_TIMEOUT_SECS, templates::Templates};
use crate::{
    clock, secrets,
    store::{SandboxRecord, Store, StoreError},
};

/// The template warm sandboxes are made of.
const WARM_TEMPLATE: &str = "base";

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
    /// A create's or kill's task panicked.
    #[error("the operation failed unexpectedly: {0}")]
    Crashed(String),
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

    /// What `look` reads of the record (without copying the rest).
    fn read<T>(&self, look: impl FnOnce(&SandboxRecord) -> T) -> T {
        look(&self.record.read().unwrap_or_else(|e| e.into_inner()))
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

    /// The agent's socket on the host.
    pub fn socket(&self) -> &std::path::Path {
        &self.running.socket
    }

    /// The sandbox's log file (setup and agent).
    pub fn log_path(&self) -> PathBuf {
        cove_runtime::namespace::init::SandboxDirs::new(self.read(|r| r.dir.clone())).log()
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
    /// Warm sandboxes kept ready, of each kind (with and without internet access).
    pub warm: usize,
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
    /// Creates under way (tasks of their own, like kills).
    creating: TaskTracker,
    pool: WarmPool,
    /// Warm sandboxes being started; closed at shutdown.
    warming: TaskTracker,
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
            pool: WarmPool::new(config.warm),
            config,
            live: RwLock::default(),
            reserved: std::sync::Mutex::default(),
            ending: TaskTracker::new(),
            creating: TaskTracker::new(),
            warming: TaskTracker::new(),
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
                Some(running) if record.team == WARM_TEAM => {
                    tracing::info!(sandbox_id = %record.id, "ending a warm sandbox of the previous server");
                    self.end_warm(Warm { record, running }).await;
                }
                Some(running) if self.runtime.is_alive(&running) => {
                    tracing::info!(sandbox_id = %record.id, pid = running.pid, "re-adopted running sandbox");
                    self.live_map_mut()
                        .insert(record.id.clone(), Arc::new(Live::new(record, running)));
                    adopted += 1;
                }
                Some(_) => {
                    tracing::info!(sandbox_id = %record.id, "sandbox ended while the server was away; removing it");
                    self.discard(&record).await;
                }
                None => {
                    tracing::info!(sandbox_id = %record.id, "sandbox was being created when the server stopped; removing it");
                    let id = record.id.clone();
                    match self.blocking(move |r| r.kill_leftovers(&id)).await {
                        Ok(()) => self.discard(&record).await,
                        Err(err) => {
                            tracing::warn!(?err, sandbox_id = %record.id, "cannot kill what is left of the sandbox")
                        }
                    }
                }
            }
        }
        Ok(adopted)
    }

    /// Creates and starts a sandbox for `team`: a warm one when the pool has one that fits,
    /// else a new one. The work runs as a task of its own: a client that hangs up halfway
    /// leaves a sandbox that runs out its timeout, never one half made or owned by nobody.
    pub async fn create(
        self: &Arc<Self>,
        team: &str,
        request: NewSandbox,
        version: ApiVersion,
    ) -> Result<Arc<Live>, LifecycleError> {
        let settings = Settings::from_request(&self.templates, team, request, version)?;
        self.check_room()?;
        let this = self.clone();
        self.creating
            .spawn(async move { this.create_now(settings).await })
            .await
            .unwrap_or_else(|join| Err(LifecycleError::Crashed(join.to_string())))
    }

    async fn create_now(self: &Arc<Self>, settings: Settings) -> Result<Arc<Live>, LifecycleError> {
        if settings.template.id == WARM_TEMPLATE {
            let taken = self.pool.take(settings.network);
            self.refill(settings.network);
            let warm = match taken {
                Taken::Ready(warm) => Some(*warm),
                Taken::Soon(promise) => promise.await.ok(),
                Taken::None => None,
            };
            if let Some(warm) = warm {
                match self.claim(warm, &settings).await {
                    Ok(live) => return Ok(live),
                    Err(err) => tracing::warn!(?err, "a warm sandbox failed; starting a new one"),
                }
            }
        }
        let slot = self.reserve_slot()?;
        let mut record = settings.record(&self.config, secrets::random_id(20), slot);
        // Recorded first, so a server that dies mid-create cleans up after itself.
        let result = self
            .start(&mut record, settings.template.template.clone())
            .await;
        let result = match result {
            Ok(running) => Ok(self.go_live(record.clone(), running)),
            Err(err) => {
                self.discard(&record).await;
                Err(err)
            }
        };
        self.release_slot(slot);
        result
    }

    /// Hands a warm sandbox to its owner: its limits, environment and record become theirs.
    async fn claim(&self, warm: Warm, settings: &Settings) -> Result<Arc<Live>, LifecycleError> {
        let Warm {
            record: warm_record,
            running,
        } = warm;
        let slot = warm_record.slot;
        let mut record = settings.record(&self.config, warm_record.id.clone(), slot);
        record.envd_access_token = warm_record.envd_access_token.clone();
        record.pid = warm_record.pid;
        record.pid_start_time = warm_record.pid_start_time;
        if let Err(err) = self.hand_over(&record, &warm_record, &running).await {
            self.end_warm(Warm {
                record: warm_record,
                running,
            })
            .await;
            return Err(err);
        }
        let live = self.go_live(record, running);
        self.release_slot(slot);
        Ok(live)
    }

    async fn hand_over(
        &self,
        record: &SandboxRecord,
        warm: &SandboxRecord,
        running: &RunningSandbox,
    ) -> Result<(), LifecycleError> {
        let failed = |reason: String| LifecycleError::Start {
            id: record.id.clone(),
            source: cove_runtime::RuntimeError::Start {
                id: record.id.clone(),
                reason,
            },
        };
        if !self.runtime.is_alive(running) {
            return Err(failed("the warm sandbox has died".to_owned()));
        }
        if (record.cpu_count, record.memory_mb) != (warm.cpu_count, warm.memory_mb) {
            let (id, limits) = (record.id.clone(), limits(record));
            self.blocking(move |r| r.set_limits(&id, limits))
                .await
                .map_err(|source| LifecycleError::Start {
                    id: record.id.clone(),
                    source,
                })?;
        }
        if !record.env_vars.is_empty() {
            let init = serde_json::json!({ "envVars": record.env_vars });
            crate::agent_link::post_json(
                &running.socket,
                "/init",
                Some(&record.envd_access_token),
                &init,
            )
            .await
            .map_err(|err| failed(format!("cannot set its environment: {err}")))?;
        }
        self.store.put_sandbox(record)?;
        Ok(())
    }

    /// Makes a started sandbox reachable.
    fn go_live(&self, record: SandboxRecord, running: RunningSandbox) -> Arc<Live> {
        let id = record.id.clone();
        let live = Arc::new(Live::new(record, running));
        self.live_map_mut().insert(id.clone(), live.clone());
        tracing::info!(sandbox_id = %id, pid = live.running.pid, "sandbox started");
        live
    }

    /// Starts the sandbox `record` describes and records its PID 1.
    async fn start(
        &self,
        record: &mut SandboxRecord,
        template: cove_runtime::Template,
    ) -> Result<RunningSandbox, LifecycleError> {
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
            limits: limits(record),
        };
        let running = self
            .blocking(move |r| r.create(&spec))
            .await
            .map_err(|source| LifecycleError::Start {
                id: record.id.clone(),
                source,
            })?;
        record.pid = Some(running.pid);
        record.pid_start_time = Some(running.start_time);
        if let Err(err) = self.store.put_sandbox(record) {
            let _ = self.runtime.kill(&running);
            return Err(err.into());
        }
        Ok(running)
    }

    /// Tops the warm pool of this kind up again, one sandbox at a time, in the background.
    pub fn refill(self: &Arc<Self>, network: bool) {
        if self.warming.is_closed() || !self.pool.begin_start(network) {
            return;
        }
        let this = self.clone();
        self.warming.spawn(async move {
            loop {
                let warm = this.start_warm(network).await;
                let started = warm.is_some();
                this.pool.finish_start(network, warm);
                // After a failure the next create tries again, not a busy loop.
                if !started || this.warming.is_closed() || !this.pool.begin_start(network) {
                    break;
                }
            }
        });
    }

    /// Fills both warm pools (at startup).
    pub fn warm_up(self: &Arc<Self>) {
        self.refill(false);
        self.refill(true);
    }

    async fn start_warm(&self, network: bool) -> Option<Warm> {
        let template = self.templates.get(WARM_TEMPLATE)?.clone();
        let settings = Settings::warm(template, network);
        let slot = match self.reserve_warm_slot() {
            Ok(slot) => slot,
            Err(err) => {
                tracing::warn!(?err, "no slot for a warm sandbox");
                return None;
            }
        };
        let mut record = settings.record(&self.config, secrets::random_id(20), slot);
        match self
            .start(&mut record, settings.template.template.clone())
            .await
        {
            Ok(running) => {
                tracing::debug!(sandbox_id = %record.id, network, "warm sandbox ready");
                Some(Warm { record, running })
            }
            Err(err) => {
                tracing::warn!(?err, "cannot start a warm sandbox");
                self.discard(&record).await;
                self.release_slot(slot);
                None
            }
        }
    }

    /// Ends a warm sandbox nobody will take.
    async fn end_warm(&self, warm: Warm) {
        let running = warm.running.clone();
        match self.blocking(move |r| r.kill(&running)).await {
            Err(err) if self.runtime.is_alive(&warm.running) => {
                tracing::warn!(?err, sandbox_id = %warm.record.id, "cannot kill a warm sandbox");
            }
            _ => self.discard(&warm.record).await,
        }
        self.release_slot(warm.record.slot);
    }

    /// At shutdown: lets creates under way finish, stops refilling the pool and ends every
    /// warm sandbox (they are not worth keeping).
    pub async fn settle(&self) {
        self.creating.close();
        self.creating.wait().await;
        self.warming.close();
        self.warming.wait().await;
        for warm in self.pool.drain() {
            self.end_warm(warm).await;
        }
    }

    /// Refuses a create when the server runs its maximum (warm sandboxes do not count).
    fn check_room(&self) -> Result<(), LifecycleError> {
        if self.live_map().len() >= self.config.max_sandboxes {
            return Err(LifecycleError::TooMany(self.config.max_sandboxes));
        }
        Ok(())
    }

    fn reserve_slot(&self) -> Result<u32, LifecycleError> {
        self.check_room()?;
        self.reserve_warm_slot()
    }

    /// A free slot, whatever the number of sandboxes (warm sandboxes do not count).
    fn reserve_warm_slot(&self) -> Result<u32, LifecycleError> {
        let live = self.live_map();
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        let used: Vec<u32> = live
            .values()
            .map(|l| l.read(|r| r.slot))
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
            .filter(|live| live.read(|r| r.team == team))
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
            .filter(|l| l.read(|r| r.team == team))
            .map(|l| l.record())
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
        check_timeout(timeout)?;
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
        check_timeout(timeout)?;
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
        self.ending
            .spawn(async move { this.end_now(&live).await })
            .await
            .unwrap_or_else(|join| Err(LifecycleError::Crashed(join.to_string())))
    }

    async fn end_now(&self, live: &Arc<Live>) -> Result<(), LifecycleError> {
        let record = live.record();
        // Gone from routing first: no new traffic reaches a dying sandbox.
        self.live_map_mut().remove(&record.id);
        let running = live.running.clone();
        if let Err(source) = self.blocking(move |r| r.kill(&running)).await {
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

    /// Runs a call of the runtime (they block) on a blocking thread; a panic in it comes back
    /// as an error of the call.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn Runtime) -> Result<T, cove_runtime::RuntimeError> + Send + 'static,
    ) -> Result<T, cove_runtime::RuntimeError> {
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || call(runtime.as_ref()))
            .await
            .unwrap_or_else(|join| {
                Err(cove_runtime::RuntimeError::Io {
                    what: "finish a call of the runtime",
                    source: std::io::Error::other(join),
                })
            })
    }

    /// Removes a sandbox's files and record (its processes must be gone).
    async fn discard(&self, record: &SandboxRecord) {
        let dir = record.dir.clone();
        if let Err(err) = self.blocking(move |r| r.remove(&dir)).await {
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
            let expired = live.read(|r| r.end_at <= now);
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

/// The port of the code interpreter inside a sandbox (E2B's Jupyter port).
pub const CODE_INTERPRETER_PORT: u16 = 49999;

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
        "--code-interpreter".to_owned(),
        format!("127.0.0.1:{CODE_INTERPRETER_PORT}"),
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
