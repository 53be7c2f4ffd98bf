//! `cove serve`: E2B's REST control plane, the proxy to sandboxes, and their lifecycle, on
//! one listener. State lives in an embedded SQLite file under the state directory.
#![forbid(unsafe_code)]

mod agent_exec;
mod agent_link;
pub mod api;
pub mod build;
pub mod catalog;
pub mod clock;
pub mod cluster;
pub mod control_plane;
pub mod edge;
pub mod front;
pub mod gateway;
mod keyring;
pub mod lifecycle;
pub mod proxy;
mod query;
pub mod secrets;
mod splice;
pub mod store;
// Operating cove serve (issue 17): metrics and TLS.
pub mod telemetry;
mod templates_setup;
#[cfg(test)]
mod test_backends;
pub mod tls;
// The web dashboard at /ui (issue 17).
pub mod ui;
mod unread;
pub mod volumes;

pub use lifecycle::WarmKernels;
pub use templates_setup::TemplatesConfig;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::Router;
use cove_runtime::{NamespaceRuntime, Runtime};

use crate::{
    lifecycle::{AdmissionConfig, HostCaps, Lifecycle, LifecycleConfig, Templates},
    store::Store,
};

/// How often expired and dead sandboxes are looked for.
const REAP_PERIOD: Duration = Duration::from_millis(500);
/// How often a server with an object store collects it (and its own unused layers).
const SHARED_COLLECTION_PERIOD: Duration = Duration::from_secs(3600);

/// The team keys created by the server itself belong to.
pub const DEFAULT_TEAM: &str = "default";

/// Start-up configuration of `cove serve`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// Where the state database is (`postgres://…`); none: SQLite in the state directory.
    pub database: Option<String>,
    /// This server as a node of a cluster sharing `database` (`--role node`).
    pub node: Option<cluster::NodeConfig>,
    /// The domain sandbox hosts are built from (`{port}-{id}.{domain}`); default
    /// `localhost:<port>`.
    pub domain: Option<String>,
    /// Keys to accept (registered for the default team at start).
    pub api_keys: Vec<String>,
    /// Kill every sandbox on SIGTERM/SIGINT instead of leaving them running.
    pub kill_on_exit: bool,
    pub max_sandboxes: usize,
    /// The most memory (MiB) and CPUs one sandbox may ask for; default: the host's.
    pub max_sandbox_memory_mb: Option<u64>,
    pub max_sandbox_cpus: Option<u32>,
    /// Sandboxes started at once, and creates that may wait for a turn (default: from the
    /// host's CPUs; 1024).
    pub max_starting: Option<usize>,
    pub max_waiting: Option<usize>,
    /// Set no_new_privs in every sandbox (setuid programs such as `sudo` stop working).
    pub no_new_privs: bool,
    /// Each sandbox's disk quota, in MiB.
    pub disk_mb: u64,
    /// The quota of a new volume that names none, in MiB.
    pub volume_mb: u64,
    /// The size each sandbox's log is kept under, in KiB.
    pub log_kb: u64,
    /// Warm sandboxes kept ready, of each kind (with and without internet access).
    pub warm: usize,
    /// The backend sandboxes run on unless their create metadata names another
    /// (`cove.runtime`).
    pub runtime: RuntimeKind,
    /// The `cove` binary sandboxes are built with.
    pub exe: PathBuf,
    /// What sandboxes with internet access may reach (`--allow-private-egress`).
    pub egress: cove_runtime::egress::EgressConfig,
    /// Connection limits and timeouts of the HTTP front door.
    pub front: front::FrontConfig,
    /// Metrics and TLS.
    pub operations: OperationsConfig,
    /// Template builds, registries, warm sandboxes of templates.
    pub templates: TemplatesConfig,
}

/// The isolation backends `cove serve` has (`--runtime`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Linux namespaces around the host's kernel (the default).
    #[default]
    Namespace,
    /// gVisor's user-space kernel (runsc), with memory kept through pauses.
    Gvisor,
}

/// How `cove serve` is operated: who reads its metrics, and TLS (docs/OPERATIONS.md).
#[derive(Clone, Debug, Default)]
pub struct OperationsConfig {
    /// A listener of its own for `GET /metrics`, without authentication.
    pub metrics_listen: Option<SocketAddr>,
    /// The bearer token that opens `GET /metrics` on the main port.
    pub metrics_token: Option<String>,
    /// Serve HTTPS with this certificate.
    pub tls: Option<tls::TlsSource>,
}

/// Everything handlers share.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    store: Arc<Store>,
    keys: keyring::KeyRing,
    lifecycle: Arc<Lifecycle>,
    builder: Arc<build::Builder>,
    catalog: Arc<catalog::Catalog>,
    domain: String,
    metrics_token: Option<String>,
    /// This server as a cluster node.
    membership: Option<Arc<cluster::Membership>>,
    max_sandboxes: usize,
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

    /// This server as a cluster node, when it is one.
    pub fn membership(&self) -> Option<&Arc<cluster::Membership>> {
        self.0.membership.as_ref()
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

    /// The token that opens `GET /metrics` on the main port, if any.
    pub fn metrics_token(&self) -> Option<&str> {
        self.0.metrics_token.as_deref()
    }

    /// The template builder.
    pub fn builder(&self) -> &Arc<build::Builder> {
        &self.0.builder
    }

    /// The catalogue of built templates.
    pub fn templates_catalog(&self) -> &Arc<catalog::Catalog> {
        &self.0.catalog
    }
}

/// The whole HTTP application: the proxy in front of the API.
pub fn router(state: AppState) -> Router {
    api::routes()
        .route("/metrics", axum::routing::get(telemetry::endpoint::scrape))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            telemetry::endpoint::count_refusals,
        ))
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
    #[error("--runtime gvisor needs runsc at {0} (apt-get install runsc)")]
    NoRunsc(PathBuf),
    #[error(transparent)]
    Template(#[from] cove_runtime::template::TemplateError),
    #[error(transparent)]
    Lifecycle(#[from] lifecycle::LifecycleError),
    #[error(transparent)]
    Templates(#[from] templates_setup::SetupError),
    #[error("cannot catch SIGTERM and SIGINT")]
    Signals(#[source] std::io::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Opens the state database (`database`, else the state directory's file), making the state
/// directory first. The directory is host root's alone: it holds the sandboxes' tokens and,
/// with SQLite, the hashes of API keys.
pub fn open_store(
    state_dir: &std::path::Path,
    database: Option<&str>,
) -> Result<Store, ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let state_err = |source| ServerError::StateDir {
        path: state_dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(state_err)?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(state_err)?;
    Ok(Store::open(&self::database(state_dir, database))?)
}

/// Where the state lives: `database` (`--database`) when given, else the SQLite file in the
/// state directory.
pub fn database(state_dir: &std::path::Path, database: Option<&str>) -> cove_db::Location {
    database.map_or_else(
        || cove_db::Location::File(state_dir.join("state.db")),
        cove_db::Location::parse,
    )
}

impl AppState {
    /// Opens the state directory and builds what handlers share over `runtime`: keys
    /// registered (one created when there are none, returned to be shown once), templates
    /// loaded, sandboxes a previous server left re-adopted. Tests call [`router`] on it
    /// without a socket.
    pub async fn open(
        config: &ServerConfig,
        runtime: Arc<dyn Runtime>,
        domain: String,
    ) -> Result<(Self, Option<String>), ServerError> {
        let mut store = open_store(&config.state_dir, config.database.as_deref())?;
        if let Some(node) = &config.node {
            store = store.for_node(&node.id);
        }
        let store = Arc::new(store);
        store.claim()?;
        let location = database(&config.state_dir, config.database.as_deref());
        for key in &config.api_keys {
            store.add_key(DEFAULT_TEAM, "from --api-key", key)?;
        }
        let created_key = store
            .create_first_key(DEFAULT_TEAM, "first key")?
            .map(|(_, secret)| secret);
        let keys = keyring::KeyRing::open(&location)?;
        let layer_store = templates_setup::open_store(&config.state_dir)?;
        let catalog =
            Arc::new(catalog::Catalog::open(&location).map_err(templates_setup::SetupError::from)?);
        let templates = Templates::load(
            &config.state_dir.join("templates"),
            catalog.clone(),
            layer_store.clone(),
            templates_setup::open_depot(&config.templates)?,
        )?;
        if let Some(depot) = templates.depot() {
            // Said at start rather than at the first build: a wrong bucket, endpoint or key.
            match tokio::time::timeout(std::time::Duration::from_secs(10), depot.check()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(err = %cove_image::error_chain(&err), "the object store cannot be used now: builds fail and templates built on other nodes cannot start here until it can")
                }
                Err(_) => {
                    tracing::warn!(location = %depot.location(), "the object store did not answer within 10 s: builds fail and templates built on other nodes cannot start here until it does")
                }
            }
        }
        let host = HostCaps::of_this_host();
        let caps = HostCaps {
            memory_mb: config.max_sandbox_memory_mb.unwrap_or(host.memory_mb),
            cpus: config.max_sandbox_cpus.unwrap_or(host.cpus),
        };
        let mut admission = AdmissionConfig::for_this_host(config.max_sandboxes);
        admission.max_starting = config.max_starting.unwrap_or(admission.max_starting);
        admission.max_waiting = config.max_waiting.unwrap_or(admission.max_waiting);
        let volumes = Arc::new(
            volumes::Volumes::open(store.clone(), &config.state_dir, config.volume_mb).map_err(
                |source| ServerError::StateDir {
                    path: config.state_dir.join("volumes"),
                    source,
                },
            )?,
        );
        // The CA the runtime's proxies sign with: the one sandboxes with rules must trust.
        let egress_ca_pem = runtime.egress_ca_pem();
        let runtimes = runtime.backends();
        let lifecycle = Arc::new(Lifecycle::new(
            runtime,
            store.clone(),
            templates,
            LifecycleConfig {
                disk_mb: config.disk_mb,
                // A warm sandbox takes its template by a reroot, which gVisor sandboxes
                // cannot do: none are kept when it is the default.
                warm: if config.runtime == RuntimeKind::Gvisor {
                    0
                } else {
                    config.warm
                },
                warm_total: config.templates.warm_total.max(2 * config.warm),
                warm_kernels: config.templates.warm_kernels,
                caps,
                runtimes,
                admission,
                snapshots_dir: config.state_dir.join("snapshots"),
                egress_ca_pem,
            },
            volumes,
        ));
        let adopted = lifecycle.adopt().await?;
        lifecycle.release_layers_of_gone_sandboxes();
        let builder = templates_setup::builder(
            &config.state_dir,
            config.disk_mb,
            &config.templates,
            catalog.clone(),
            layer_store,
            lifecycle.clone(),
        )?;
        tracing::info!(adopted, state_dir = %config.state_dir.display(), "state opened");
        let membership = match &config.node {
            Some(node) => {
                match lifecycle.templates().find_cached() {
                    Ok(found) => tracing::info!(
                        templates = found,
                        "built templates whose layers this node has"
                    ),
                    Err(err) => {
                        tracing::warn!(?err, "cannot tell which templates' layers this node has")
                    }
                }
                let capacity = cluster::capacity_now(
                    lifecycle.all().len(),
                    config.max_sandboxes,
                    lifecycle.templates().cached(),
                );
                let membership = cluster::Membership::register(node.clone(), &store, &capacity)?;
                tracing::info!(node = %node.id, address = %node.address, "joined the cluster");
                Some(Arc::new(membership))
            }
            None => None,
        };
        Ok((
            AppState(Arc::new(Inner {
                store,
                keys,
                lifecycle,
                builder,
                catalog,
                domain,
                metrics_token: config.operations.metrics_token.clone(),
                membership,
                max_sandboxes: config.max_sandboxes,
            })),
            created_key,
        ))
    }
}

/// The namespace backend as `config` sets it up.
fn namespace_runtime(config: &ServerConfig) -> Result<NamespaceRuntime, ServerError> {
    let mut egress = config.egress.clone();
    match tls::egress_ca::EgressIssuer::open(&config.state_dir) {
        Ok(issuer) => egress.interception = Some(Arc::new(issuer)),
        Err(err) => {
            tracing::warn!(err = %cove_runtime::egress::error_chain(&err), "no egress CA: rules that set headers on HTTPS requests will refuse them")
        }
    }
    let runtime = NamespaceRuntime::new(
        &config.exe,
        lifecycle::sandboxes_dir(&config.state_dir),
        egress,
    )
    .with_no_new_privs(config.no_new_privs)
    .with_log_cap(config.log_kb << 10)
    .with_disk_quota(config.state_dir.join("disk-pool"), config.disk_mb << 20)
    .map_err(|source| ServerError::StateDir {
        path: config.state_dir.join("disk-pool"),
        source,
    })?;
    Ok(runtime)
}

/// The backends `config` asks for: the namespace backend, and beside it the gVisor backend
/// when runsc is installed; the one `--runtime` names is the default.
fn runtimes(config: &ServerConfig) -> Result<Arc<dyn Runtime>, ServerError> {
    let namespace_backend = namespace_runtime(config)?;
    let internet = namespace_backend.internet();
    let namespace: Arc<dyn Runtime> = Arc::new(namespace_backend);
    let runsc = PathBuf::from(cove_runtime::gvisor::runsc::DEFAULT_BINARY);
    if !runsc.is_file() {
        if config.runtime == RuntimeKind::Gvisor {
            return Err(ServerError::NoRunsc(runsc));
        }
        tracing::info!(runsc = %runsc.display(), "no gVisor runtime: runsc is not installed");
        return Ok(namespace);
    }
    let dir = config.state_dir.join("gvisor");
    let gvisor: Arc<dyn Runtime> = Arc::new(
        cove_runtime::GvisorRuntime::new(&config.exe, &dir)
            .with_internet(internet)
            .with_log_cap(config.log_kb << 10)
            .with_disk_quota(dir.join("disk-pool"), config.disk_mb << 20)
            .map_err(|source| ServerError::StateDir {
                path: dir.join("disk-pool"),
                source,
            })?,
    );
    let backends = match config.runtime {
        RuntimeKind::Namespace => cove_runtime::backends::Backends::new(namespace).with(gvisor),
        RuntimeKind::Gvisor => cove_runtime::backends::Backends::new(gvisor).with(namespace),
    };
    tracing::info!(runtimes = ?backends.names(), "runtimes");
    // What gVisor sandboxes cannot do here, said once at start (`cove doctor` says it too).
    let scratch = dir.clone();
    std::thread::spawn(move || {
        for check in cove_runtime::requirements::gvisor_limits(&scratch) {
            if check.status != cove_runtime::requirements::Status::Ok {
                tracing::warn!(check = check.name, found = %check.found, fix = check.fix.as_deref().unwrap_or(""), "gVisor limit");
            }
        }
    });
    Ok(Arc::new(backends))
}

/// A server ready to serve: bound, state opened, keys registered, sandboxes re-adopted.
pub struct Server {
    state: AppState,
    listener: tokio::net::TcpListener,
    front: front::Front,
    /// The listener of `--metrics-listen`.
    metrics_listener: Option<tokio::net::TcpListener>,
    /// The local CA of `--tls self-signed`.
    pub local_ca: Option<tls::LocalCa>,
    kill_on_exit: bool,
    shutdown: ShutdownSignal,
    /// A key created because the store had none; shown once to whoever started the server.
    pub created_key: Option<String>,
}

impl Server {
    /// A server on the namespace backend.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        // First of all: a SIGTERM that arrives while sandboxes are being adopted or warmed
        // must stop the server cleanly, not kill it with them half set up.
        let shutdown = ShutdownSignal::install().map_err(ServerError::Signals)?;
        let front = front::Front::prepare(&config.front);
        let runtime = runtimes(&config)?;
        Self::bind_with(config, runtime, front, shutdown).await
    }

    async fn bind_with(
        mut config: ServerConfig,
        runtime: Arc<dyn Runtime>,
        front: front::Front,
        shutdown: ShutdownSignal,
    ) -> Result<Self, ServerError> {
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
        if let Some(node) = config.node.as_mut() {
            node.listening_on(addr.port());
        }
        let domain = config
            .domain
            .clone()
            .unwrap_or_else(|| default_domain(addr.port(), config.operations.tls.is_some()));
        let metrics_listener = match config.operations.metrics_listen {
            Some(at) => {
                Some(front::listen(at).map_err(|source| ServerError::Listen { addr: at, source })?)
            }
            None => None,
        };
        let (front, local_ca) = match &config.operations.tls {
            Some(source) => {
                let host = domain.rsplit_once(':').map_or(domain.as_str(), |(h, _)| h);
                if *source == tls::TlsSource::SelfSigned && !host.contains('.') {
                    tracing::warn!(
                        domain = %domain,
                        "TLS clients refuse a certificate for *.{host}: preview URLs will not \
                         verify; give a domain of two labels or more (--domain cove.{host})"
                    );
                }
                let (acceptor, ca) = tls::acceptor(source, &config.state_dir, host)?;
                (front.with_tls(acceptor), ca)
            }
            None => (front, None),
        };
        let (state, created_key) = AppState::open(&config, runtime, domain).await?;
        let front = front.count_refusals(state.lifecycle().metrics().connections_refused());
        tracing::info!(%addr, domain = %state.domain(), tls = config.operations.tls.is_some(), "cove serve ready");
        Ok(Self {
            state,
            listener,
            front,
            metrics_listener,
            local_ca,
            kill_on_exit: config.kill_on_exit,
            shutdown,
            created_key,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address of `--metrics-listen`, when given.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The domain sandbox hosts are built from.
    pub fn domain(&self) -> &str {
        self.state.domain()
    }

    /// Serves until SIGTERM/SIGINT. Sandboxes keep running unless `kill_on_exit`.
    pub async fn run(self) -> Result<(), ServerError> {
        let lifecycle = self.state.lifecycle().clone();
        let reaper = tokio::spawn(lifecycle.clone().run_reaper(REAP_PERIOD));
        let heartbeats = self.state.membership().map(|membership| {
            let (counted, max) = (lifecycle.clone(), self.state.0.max_sandboxes);
            tokio::spawn(cluster::run_heartbeats(
                membership.clone(),
                self.state.0.store.clone(),
                move || {
                    cluster::capacity_now(counted.all().len(), max, counted.templates().cached())
                },
            ))
        });
        // Snapshots deleted through other nodes leave this one's catalogue.
        let snapshot_watch = self.state.membership().map(|_| {
            tokio::spawn(
                lifecycle
                    .clone()
                    .watch_deleted_snapshots(lifecycle::metrics_history::SAMPLE_PERIOD),
            )
        });
        // With an object store, deletions through other nodes leave things there: collected
        // hourly (by every node: each collection is whole on its own).
        let shared_collection = lifecycle.templates().depot().map(|_| {
            tokio::spawn(
                self.state
                    .builder()
                    .clone()
                    .collect_every(SHARED_COLLECTION_PERIOD),
            )
        });
        let hangups = tokio::spawn(say_nothing_to_reload());
        lifecycle.warm_up();
        let app = router(self.state.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let metrics = self.metrics_listener.map(|listener| {
            let app = telemetry::endpoint::router(self.state.clone());
            tokio::spawn(
                self.front
                    .plain()
                    .serve(listener, app, stop.clone().cancelled_owned()),
            )
        });
        let shutdown = self.shutdown.received();
        self.front
            .serve(self.listener, app, async {
                shutdown.await;
                stop.cancel();
            })
            .await;
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        reaper.abort();
        hangups.abort();
        if let Some(heartbeats) = heartbeats {
            heartbeats.abort();
        }
        if let Some(watch) = snapshot_watch {
            watch.abort();
        }
        if let Some(collection) = shared_collection {
            collection.abort();
        }
        lifecycle.settle().await;
        if self.kill_on_exit {
            tracing::info!("killing every sandbox before exiting");
            lifecycle.kill_all().await;
        }
        lifecycle.shutdown();
        lifecycle.volumes().shutdown(lifecycle.all().is_empty());
        if let Some(membership) = self.state.membership() {
            membership.leave(self.state.store());
        }
        Ok(())
    }
}

/// The domain of sandbox hosts when none is given: `localhost:<port>`, or with TLS
/// `cove.localhost:<port>` — TLS clients (OpenSSL, so Python) refuse a wildcard right under a
/// top-level name such as `*.localhost`, and `*.cove.localhost` resolves the same way.
fn default_domain(port: u16, tls: bool) -> String {
    if tls {
        format!("cove.localhost:{port}")
    } else {
        format!("localhost:{port}")
    }
}

/// Answers SIGHUP, which by default would end the server (`systemctl reload`, `kill -HUP`
/// out of habit): there is nothing to reload. API keys and team limits are read from the
/// state database as they change (`cove keys`, `cove teams` work on a running server), and
/// everything else is set at start.
async fn say_nothing_to_reload() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot catch SIGHUP: one would stop the server");
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::info!(
            "SIGHUP: nothing to reload; keys and team limits take effect as they change, \
             other settings need a restart"
        );
    }
}

/// SIGTERM and SIGINT, caught from the moment the server starts.
pub(crate) struct ShutdownSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    pub(crate) fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first of them (also one that came before this is called).
    pub(crate) async fn received(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        tracing::info!("shutting down");
    }
}
