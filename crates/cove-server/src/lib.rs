//! `cove serve`: E2B's REST control plane, the proxy to sandboxes, and their lifecycle, on
//! one listener. State lives in an embedded SQLite file under the state directory.
#![forbid(unsafe_code)]

mod agent_link;
pub mod api;
mod clock;
pub mod front;
mod keyring;
pub mod lifecycle;
pub mod proxy;
mod query;
pub mod secrets;
pub mod store;
mod unread;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::Router;
use cove_runtime::{NamespaceRuntime, Runtime};

use crate::{
    lifecycle::{Lifecycle, LifecycleConfig, Templates},
    store::Store,
};

/// How often expired and dead sandboxes are looked for.
const REAP_PERIOD: Duration = Duration::from_millis(500);

/// The team keys created by the server itself belong to.
pub const DEFAULT_TEAM: &str = "default";

/// Start-up configuration of `cove serve`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// The domain sandbox hosts are built from (`{port}-{id}.{domain}`); default
    /// `localhost:<port>`.
    pub domain: Option<String>,
    /// Keys to accept (registered for the default team at start).
    pub api_keys: Vec<String>,
    /// Kill every sandbox on SIGTERM/SIGINT instead of leaving them running.
    pub kill_on_exit: bool,
    pub max_sandboxes: usize,
    /// Set no_new_privs in every sandbox (setuid programs such as `sudo` stop working).
    pub no_new_privs: bool,
    /// Each sandbox's disk quota, in MiB.
    pub disk_mb: u64,
    /// Warm sandboxes kept ready, of each kind (with and without internet access).
    pub warm: usize,
    /// The `cove` binary sandboxes are built with.
    pub exe: PathBuf,
    /// Connection limits and timeouts of the HTTP front door.
    pub front: front::FrontConfig,
}

/// Everything handlers share.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    store: Arc<Store>,
    keys: keyring::KeyRing,
    lifecycle: Arc<Lifecycle>,
    domain: String,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("domain", &self.0.domain)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// The valid API keys, checked without a database query.
    pub(crate) fn keys(&self) -> &keyring::KeyRing {
        &self.0.keys
    }

    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.0.lifecycle
    }

    /// The domain sandbox hosts are built from.
    pub fn domain(&self) -> &str {
        &self.0.domain
    }
}

/// The whole HTTP application: the proxy in front of the API.
pub fn router(state: AppState) -> Router {
    api::routes()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            proxy::intercept,
        ))
        .layer(axum::middleware::from_fn(unread::close_if_unread))
        .with_state(state)
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use the state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Template(#[from] cove_runtime::template::TemplateError),
    #[error(transparent)]
    Lifecycle(#[from] lifecycle::LifecycleError),
    #[error("cannot catch SIGTERM and SIGINT")]
    Signals(#[source] std::io::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Opens the state directory's database.
pub fn open_store(state_dir: &std::path::Path) -> Result<Store, ServerError> {
    std::fs::create_dir_all(state_dir).map_err(|source| ServerError::StateDir {
        path: state_dir.to_owned(),
        source,
    })?;
    Ok(Store::open(&db_path(state_dir))?)
}

fn db_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("state.db")
}

/// A server ready to serve: state opened, keys registered, sandboxes re-adopted, bound.
pub struct Server {
    state: AppState,
    listener: tokio::net::TcpListener,
    front: front::Front,
    kill_on_exit: bool,
    shutdown: ShutdownSignal,
    /// A key created because the store had none; shown once to whoever started the server.
    pub created_key: Option<String>,
}

impl Server {
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        // First of all: a SIGTERM that arrives while sandboxes are being adopted or warmed
        // must stop the server cleanly, not kill it with them half set up.
        let shutdown = ShutdownSignal::install().map_err(ServerError::Signals)?;
        let front = front::Front::prepare(&config.front);
        let store = Arc::new(open_store(&config.state_dir)?);
        for key in &config.api_keys {
            store.add_key(DEFAULT_TEAM, "from --api-key", key)?;
        }
        let created_key = if store.has_keys()? {
            None
        } else {
            Some(store.create_key(DEFAULT_TEAM, "first key")?.1)
        };
        let keys = keyring::KeyRing::open(&db_path(&config.state_dir))?;
        let templates = Templates::load(&config.state_dir.join("templates"))?;
        let runtime = NamespaceRuntime::new(&config.exe)
            .with_disk_quota(config.state_dir.join("disk-pool"), config.disk_mb << 20)
            .map_err(|source| ServerError::StateDir {
                path: config.state_dir.join("disk-pool"),
                source,
            })?;
        let runtime: Arc<dyn Runtime> = Arc::new(runtime);
        let lifecycle = Arc::new(Lifecycle::new(
            runtime,
            store.clone(),
            templates,
            LifecycleConfig {
                state_dir: config.state_dir.clone(),
                max_sandboxes: config.max_sandboxes,
                no_new_privs: config.no_new_privs,
                disk_mb: config.disk_mb,
                warm: config.warm,
            },
        ));
        let adopted = lifecycle.adopt().await?;
        let listener = front::listen(config.listen).map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
        let domain = config
            .domain
            .clone()
            .unwrap_or_else(|| format!("localhost:{}", addr.port()));
        tracing::info!(%addr, %domain, adopted, state_dir = %config.state_dir.display(), "cove serve ready");
        Ok(Self {
            state: AppState(Arc::new(Inner {
                store,
                keys,
                lifecycle,
                domain,
            })),
            listener,
            front,
            kill_on_exit: config.kill_on_exit,
            shutdown,
            created_key,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until SIGTERM/SIGINT. Sandboxes keep running unless `kill_on_exit`.
    pub async fn run(self) -> Result<(), ServerError> {
        let lifecycle = self.state.lifecycle().clone();
        let reaper = tokio::spawn(lifecycle.clone().run_reaper(REAP_PERIOD));
        lifecycle.warm_up();
        let app = router(self.state.clone());
        self.front
            .serve(self.listener, app, self.shutdown.received())
            .await;
        reaper.abort();
        lifecycle.settle().await;
        if self.kill_on_exit {
            tracing::info!("killing every sandbox before exiting");
            lifecycle.kill_all().await;
        }
        lifecycle.shutdown();
        Ok(())
    }
}

/// SIGTERM and SIGINT, caught from the moment the server starts.
struct ShutdownSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first of them (also one that came before this is called).
    async fn received(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        tracing::info!("shutting down");
    }
}
