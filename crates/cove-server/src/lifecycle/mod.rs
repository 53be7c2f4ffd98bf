//! Sandbox lifecycle, one concept per file: what a create asks for ([`settings`]), whether
//! there is room for it ([`admission`]), starting it or handing out a warm one ([`create`],
//! [`warm`], [`pool`]), the running and recently ended sandboxes ([`registry`]), their
//! lifetime ([`lifetime`]), their use ([`usage`]), ending them and the reaper ([`end`]), and
//! taking them over after a restart ([`adopt`]).

mod admission;
mod adopt;
mod create;
mod end;
pub mod layers;
mod lifetime;
mod pool;
mod private;
mod registry;
mod settings;
pub mod start_cmd;
pub mod templates;
mod usage;
mod warm;

use std::{path::PathBuf, sync::Arc};

use cove_runtime::{Runtime, RuntimeError};
use tokio_util::task::TaskTracker;

use self::{admission::Admission, pool::WarmPool, registry::Registry};
pub use self::{
    admission::AdmissionConfig,
    private::{PrivateSandbox, PrivateSpec},
    registry::{Ended, Live},
    settings::{HostCaps, MAX_TIMEOUT_SECS},
    templates::{StartCommand, TemplateEntry, TemplateKind, Templates},
};
use crate::store::{SandboxRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("sandbox {0} not found")]
    NotFound(String),
    #[error("sandbox {id} is gone: {}", ended.reason)]
    Ended { id: String, ended: Ended },
    #[error("template {0:?} not found")]
    TemplateNotFound(String),
    #[error("{0}")]
    TemplateNotReady(String),
    #[error("the template's start command failed: {0}")]
    StartCommand(String),
    #[error("timeout must be between 0 and {MAX_TIMEOUT_SECS} seconds, got {0}")]
    BadTimeout(i64),
    #[error("{0}")]
    BadResources(String),
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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
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
    /// What one sandbox may ask for.
    pub caps: HostCaps,
    pub admission: AdmissionConfig,
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
    /// The server's own sandboxes running now (ended at shutdown).
    private: private::Running,
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
    ) -> Self {
        Self {
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
            private: private::Running::default(),
        }
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// What one sandbox may ask for.
    pub fn caps(&self) -> HostCaps {
        self.config.caps
    }

    /// A running sandbox of `team`; for one that ended lately, why.
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
            None => Err(LifecycleError::NotFound(id.to_owned())),
        }
    }

    /// A running sandbox by id alone (for sandbox traffic, authenticated by its token).
    pub fn route(&self, id: &str) -> Option<Arc<Live>> {
        self.registry.get(id)
    }

    /// All running sandboxes (for routing signed URLs).
    pub fn all(&self) -> Vec<Arc<Live>> {
        self.registry.all()
    }

    /// The running sandboxes of `team`, newest first.
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
}

/// Where a sandbox's state lives, for the runtime's directories.
pub fn sandboxes_dir(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("sandboxes")
}
