//! Sandbox lifecycle, one concept per file: what a create asks for ([`settings`]), whether
//! there is room for it ([`admission`]), starting it or handing out a warm one ([`create`],
//! [`warm`], [`pool`]), the running, paused and recently ended sandboxes ([`registry`]),
//! their lifetime ([`lifetime`]), pausing and resuming them ([`pause`]), snapshots of them
//! ([`snapshot`]) and forks ([`fork`]), their use now and over time ([`usage`],
//! [`metrics_history`]), ending them and the reaper ([`end`]), and taking them over after a
//! restart ([`adopt`]).

mod admission;
mod adopt;
mod census;
mod create;
mod egress;
mod end;
mod fork;
mod kernel_images;
pub mod layers;
mod lifetime;
pub mod mask;
pub mod metrics_history;
mod pause;
mod pool;
mod private;
mod registry;
mod settings;
pub mod shared_snapshots;
mod snapshot;
pub mod start_cmd;
pub mod templates;
mod usage;
mod warm;

use std::{path::PathBuf, sync::Arc};

use cove_runtime::{Runtime, RuntimeError};
use tokio_util::task::TaskTracker;

use self::{admission::Admission, pool::WarmPool, registry::Registry, snapshot::LayersInUse};
pub use self::{
    admission::AdmissionConfig,
    egress::rules_json,
    fork::MAX_FORKS,
    pause::Connected,
    private::{PrivateSandbox, PrivateSpec},
    registry::{Ended, Live},
    settings::{HostCaps, MAX_TIMEOUT_SECS},
    snapshot::select_snapshots,
    templates::{StartCommand, TemplateEntry, TemplateKind, Templates},
    warm::WarmKernels,
};
use crate::store::{SandboxRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("sandbox {0} not found")]
    NotFound(String),
    /// It ran on a cluster node that stopped reporting: gone for its clients, until the
    /// node comes back and takes it over again.
    #[error(
        "sandbox {id} is lost: its node {node} stopped answering (last heard from at {last_heard})"
    )]
    Lost {
        id: String,
        node: String,
        last_heard: String,
    },
    /// It runs on another node of the cluster, which answers for it.
    #[error("sandbox {id} runs on node {node} ({address}), not on this one")]
    OnOtherNode {
        id: String,
        node: String,
        address: String,
    },
    #[error("sandbox {id} is gone: {}", ended.reason)]
    Ended { id: String, ended: Ended },
    #[error("template {0:?} not found")]
    TemplateNotFound(String),
    #[error("{0}")]
    TemplateNotReady(String),
    /// Its layers are not on this node and cannot be fetched (no object store, or it
    /// cannot be reached): another node may have them.
    #[error("{0}")]
    LayersUnavailable(String),
    #[error("the template's start command failed: {0}")]
    StartCommand(String),
    #[error("timeout must be between 0 and {MAX_TIMEOUT_SECS} seconds, got {0}")]
    BadTimeout(i64),
    #[error("{0}")]
    BadResources(String),
    #[error(
        "invalid environment variable {0:?}: names must be non-empty without '=' or NUL, values without NUL"
    )]
    BadEnvVar(String),
    #[error("the server runs its maximum of {0} sandboxes; kill some first")]
    TooMany(usize),
    #[error("{0}")]
    TeamLimit(String),
    #[error("the server is busy starting other sandboxes; try again shortly")]
    Busy,
    #[error("sandbox {id} could not be started")]
    Start {
        id: String,
        #[source]
        source: RuntimeError,
    },
    #[error("sandbox {id} could not be killed")]
    Kill {
        id: String,
        #[source]
        source: RuntimeError,
    },
    #[error("sandbox {0} is already paused")]
    AlreadyPaused(String),
    #[error("sandbox {0} is already running")]
    AlreadyRunning(String),
    /// Traffic to a paused sandbox that does not resume by itself.
    #[error("sandbox {0} is paused")]
    Paused(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("sandbox {id} could not be {what}")]
    Transition {
        id: String,
        what: &'static str,
        #[source]
        source: RuntimeError,
    },
    #[error("snapshot {0:?} not found")]
    SnapshotNotFound(String),
    /// A template of the team has this name already (a snapshot's and a built template's
    /// names are one namespace).
    #[error("the template name {0:?} is taken by another template of the team: choose another")]
    NameTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Volume(#[from] crate::volumes::VolumeError),
    /// A create's or kill's task panicked.
    #[error("the operation failed unexpectedly: {0}")]
    Crashed(String),
}

/// Settings of the lifecycle manager.
#[derive(Clone, Debug)]
pub struct LifecycleConfig {
    /// Each sandbox's disk quota, in MiB (as listed; the runtime enforces it).
    pub disk_mb: u64,
    /// Warm sandboxes kept ready, of each kind (with and without internet access), per
    /// template used lately.
    pub warm: usize,
    /// Warm sandboxes kept ready in all (every template and kind together).
    pub warm_total: usize,
    /// Which warm sandboxes start their Python kernel ahead of use.
    pub warm_kernels: WarmKernels,
    /// What one sandbox may ask for.
    pub caps: HostCaps,
    /// The backends sandboxes can run on, the default first.
    pub runtimes: Vec<&'static str>,
    pub admission: AdmissionConfig,
    /// Where snapshots' layers are kept.
    pub snapshots_dir: PathBuf,
    /// The egress CA's certificate, installed in sandboxes whose `rules` set headers (none:
    /// there is no egress CA).
    pub egress_ca_pem: Option<String>,
}

/// How a create request's lifetime defaults.
#[derive(Clone, Copy, Debug)]
pub enum ApiVersion {
    /// `POST /sandboxes`: 15 seconds.
    V1,
    /// `POST /v2/sandboxes`: 300 seconds.
    V2,
}

/// All sandboxes of this server.
pub struct Lifecycle {
    runtime: Arc<dyn Runtime>,
    store: Arc<Store>,
    templates: Templates,
    config: LifecycleConfig,
    registry: Registry,
    admission: Admission,
    /// Kills under way. They run as tasks of their own, so that a caller that goes away
    /// (a client hanging up, the reaper stopping) cannot leave one half done.
    ending: TaskTracker,
    /// Creates under way (tasks of their own, like kills).
    creating: TaskTracker,
    pool: WarmPool,
    /// Warm sandboxes being started; closed at shutdown.
    warming: TaskTracker,
    /// Wakes refills waiting out [`warm::REFILL_AFTER_CLAIM`]: a create is waiting for them.
    hurry_refills: tokio::sync::Notify,
    /// The server's own sandboxes running now (ended at shutdown).
    private: private::Running,
    /// Pauses, resumes and snapshots under way (tasks of their own, like kills).
    transitions: TaskTracker,
    /// Snapshot layers being made or used by creates not yet recorded.
    layers_in_use: LayersInUse,
    /// Memory snapshots of templates with their kernel up, for gVisor sandboxes.
    kernel_images: kernel_images::KernelImages,
    /// What Prometheus is told (`GET /metrics`).
    metrics: Arc<crate::telemetry::Metrics>,
    /// The volumes sandboxes mount.
    volumes: Arc<crate::volumes::Volumes>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle").finish_non_exhaustive()
    }
}

impl Lifecycle {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        store: Arc<Store>,
        templates: Templates,
        config: LifecycleConfig,
        volumes: Arc<crate::volumes::Volumes>,
    ) -> Self {
        Self {
            volumes,
            runtime,
            admission: Admission::new(config.admission.clone()),
            store,
            templates,
            pool: WarmPool::new(config.warm, config.warm_total),
            config,
            registry: Registry::default(),
            ending: TaskTracker::new(),
            creating: TaskTracker::new(),
            warming: TaskTracker::new(),
            hurry_refills: tokio::sync::Notify::new(),
            private: private::Running::default(),
            transitions: TaskTracker::new(),
            layers_in_use: LayersInUse::default(),
            kernel_images: Default::default(),
            metrics: Arc::default(),
        }
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<crate::telemetry::Metrics> {
        &self.metrics
    }

    /// The volumes sandboxes mount.
    pub fn volumes(&self) -> &Arc<crate::volumes::Volumes> {
        &self.volumes
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// What one sandbox may ask for.
    pub fn caps(&self) -> HostCaps {
        self.config.caps
    }

    /// Refuses a backend this server does not have, `named_by` saying who named it.
    pub fn check_runtime(&self, asked: &str, named_by: &str) -> Result<(), LifecycleError> {
        settings::check_runtime(&self.config.runtimes, asked, named_by)
    }

    /// A running or paused sandbox of `team`; for one that ended lately, why.
    pub fn get(&self, team: &str, id: &str) -> Result<Arc<Live>, LifecycleError> {
        if let Some(live) = self
            .registry
            .get(id)
            .filter(|live| live.read(|r| r.team == team))
        {
            return Ok(live);
        }
        match self.registry.ended(id).filter(|e| e.team == team) {
            Some(ended) => Err(LifecycleError::Ended {
                id: id.to_owned(),
                ended,
            }),
            None => Err(self.elsewhere(team, id)),
        }
    }

    /// Why a sandbox this server does not have is not here: another node of its cluster has
    /// it (or had it, and is down), or it does not exist.
    fn elsewhere(&self, team: &str, id: &str) -> LifecycleError {
        match self.store.node_of_other(team, id) {
            Ok(Some(node)) if node.state == crate::cluster::NodeState::Down => {
                LifecycleError::Lost {
                    id: id.to_owned(),
                    node: node.id,
                    last_heard: crate::clock::rfc3339(node.heartbeat_at),
                }
            }
            Ok(Some(node)) => LifecycleError::OnOtherNode {
                id: id.to_owned(),
                node: node.id,
                address: node.address,
            },
            Ok(None) => LifecycleError::NotFound(id.to_owned()),
            Err(err) => {
                tracing::warn!(?err, sandbox_id = %id, "cannot ask the cluster where the sandbox is");
                LifecycleError::NotFound(id.to_owned())
            }
        }
    }

    /// A running or paused sandbox by id alone (for sandbox traffic, authenticated by its
    /// token).
    pub fn route(&self, id: &str) -> Option<Arc<Live>> {
        self.registry.get(id)
    }

    /// All sandboxes, running and paused (for routing signed URLs: the proxy answers for a
    /// paused one as it does for a request naming it).
    pub fn all(&self) -> Vec<Arc<Live>> {
        self.registry.all()
    }

    /// The running and paused sandboxes of `team`, newest first.
    pub fn list(&self, team: &str) -> Vec<SandboxRecord> {
        let mut records = self.registry.records_of(team);
        records.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        records
    }

    /// The sandbox's log (what its setup and agent wrote).
    pub async fn log(&self, live: &Live) -> Result<String, RuntimeError> {
        let id = live.id();
        self.blocking(move |r| r.log(&id)).await
    }

    /// Runs a call of the runtime (they block) on a blocking thread; a panic in it comes back
    /// as an error of the call.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn Runtime) -> Result<T, RuntimeError> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || call(runtime.as_ref()))
            .await
            .unwrap_or_else(|join| {
                Err(RuntimeError::Io {
                    what: "finish a call of the runtime",
                    source: std::io::Error::other(join),
                })
            })
    }

    /// Saves a change of a running sandbox's record.
    fn update(
        &self,
        live: &Live,
        change: impl FnOnce(&mut SandboxRecord),
    ) -> Result<(), LifecycleError> {
        live.update(change, |record| self.store.put_sandbox(record))?;
        Ok(())
    }

    /// Records what a transition made of a sandbox: in memory whatever happens, then in the
    /// store (a restarted server asks the runtime what became of it anyway).
    fn commit(&self, live: &Live, change: impl FnOnce(&mut SandboxRecord)) {
        let record = live.set_record(change);
        if let Err(err) = self.store.put_sandbox(&record) {
            tracing::error!(?err, sandbox_id = %record.id, team = %record.team, "cannot save the sandbox's new state");
        }
    }

    /// Waits for `live`'s turn for a transition; an error when it ended (or was replaced)
    /// while waiting.
    async fn turn_of<'a>(
        &self,
        live: &'a Live,
    ) -> Result<tokio::sync::MutexGuard<'a, ()>, LifecycleError> {
        let turn = live.transition.lock().await;
        let id = live.id();
        match self.registry.get(&id) {
            Some(now) if std::ptr::eq(Arc::as_ptr(&now), live) => Ok(turn),
            _ => Err(match self.registry.ended(&id) {
                Some(ended) => LifecycleError::Ended { id, ended },
                None => LifecycleError::NotFound(id),
            }),
        }
    }

    /// Runs a transition as a task of its own: a client that hangs up cannot leave one half
    /// done.
    async fn in_own_task<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, LifecycleError>> + Send + 'static,
    ) -> Result<T, LifecycleError> {
        self.transitions
            .spawn(work)
            .await
            .unwrap_or_else(|join| Err(LifecycleError::Crashed(join.to_string())))
    }
}

/// Where a sandbox's state lives, for the runtime's directories.
pub fn sandboxes_dir(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("sandboxes")
}
