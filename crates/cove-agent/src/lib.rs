//! The Cove agent: the daemon inside every sandbox. It serves the sandbox's files and
//! processes over E2B envd's wire protocol (Connect RPC + a few REST endpoints), so the
//! official E2B SDKs can drive it unchanged.
#![forbid(unsafe_code)]

pub mod atomic;
pub mod auth;
pub mod defaults;
pub mod encoding;
pub mod files;
pub mod filesystem;
pub mod interpreter;
pub mod listener;
pub mod metrics;
pub mod paths;
pub mod process;
pub mod quiesce;
pub mod reaper;
pub mod receive_file;
pub mod rest;
pub mod rpc;
pub mod send_file;
pub mod signals;
pub mod tunnel;
pub mod users;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use axum::{
    Router,
    http::HeaderMap,
    routing::{get, post},
};
use cove_proto::connect::{Code, RpcError};

pub use crate::listener::ListenAddr;
use crate::{
    auth::Caller,
    defaults::Defaults,
    filesystem::watch::Watchers,
    process::ProcessTable,
    reaper::Reaper,
    users::{AccountFiles, User},
};

/// Start-up configuration of the agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Where to listen (Unix sockets and/or TCP addresses).
    pub listen: Vec<ListenAddr>,
    /// Access token every request must carry (until `/init` sets another).
    pub access_token: Option<String>,
    /// User calls run as when they name none.
    pub default_user: String,
    /// Working directory of processes that name none (else the user's home).
    pub default_workdir: Option<PathBuf>,
    /// Where the sandbox's account database lives (its root, normally `/`).
    pub accounts: AccountFiles,
    /// Environment variables of every process (besides `E2B_SANDBOX=true`).
    pub env: BTreeMap<String, String>,
    /// Where the code interpreter listens (E2B's port 49999), if it runs.
    pub code_interpreter: Option<std::net::SocketAddr>,
    /// Start the code interpreter's default Python kernel at once (a warm sandbox's), so
    /// that the first `run_code` finds it running.
    pub warm_kernel: bool,
    /// A Unix socket to also listen on that is let go of for checkpoints (gVisor sandboxes);
    /// with it, the code interpreter opens no TCP port of its own.
    pub quiescible: Option<quiesce::Quiescible>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            access_token: None,
            default_user: "user".to_owned(),
            default_workdir: None,
            accounts: AccountFiles::default(),
            env: BTreeMap::new(),
            code_interpreter: None,
            warm_kernel: false,
            quiescible: None,
        }
    }
}

/// Everything the request handlers share.
#[derive(Clone)]
pub struct AgentState(Arc<Inner>);

struct Inner {
    accounts: AccountFiles,
    defaults: Defaults,
    processes: ProcessTable,
    watchers: Watchers,
    started: std::time::Instant,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState").finish_non_exhaustive()
    }
}

impl AgentState {
    /// Builds the state; starts the child reaper, so call it inside a tokio runtime.
    pub fn new(config: &AgentConfig) -> std::io::Result<Self> {
        // A gVisor sandbox's agent (the quiescible one) can lose a notification on restore.
        let backstop = config.quiescible.as_ref().map(|_| crate::signals::BACKSTOP);
        let reaper = Reaper::start(backstop)?;
        Ok(Self(Arc::new(Inner {
            accounts: config.accounts.clone(),
            defaults: {
                let defaults = Defaults::new(
                    config.default_user.clone(),
                    config.default_workdir.clone(),
                    config.access_token.clone(),
                );
                // What envd tells every process: it runs in a sandbox.
                defaults.extend_env([("E2B_SANDBOX".to_owned(), "true".to_owned())]);
                defaults.extend_env(config.env.clone());
                defaults
            },
            processes: ProcessTable::new(reaper),
            watchers: Watchers::default(),
            started: std::time::Instant::now(),
        })))
    }

    pub fn accounts(&self) -> &AccountFiles {
        &self.0.accounts
    }

    pub fn defaults(&self) -> &Defaults {
        &self.0.defaults
    }

    pub fn processes(&self) -> &ProcessTable {
        &self.0.processes
    }

    pub fn watchers(&self) -> &Watchers {
        &self.0.watchers
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.0.started.elapsed()
    }

    pub fn access_token(&self) -> Option<String> {
        self.0.defaults.access_token()
    }

    /// The user named, or the default user, looked up in the sandbox's accounts.
    pub fn user(&self, name: Option<&str>) -> Result<User, users::UserError> {
        let default = self.0.defaults.user();
        self.0.accounts.user(name.unwrap_or(&default))
    }

    /// The caller of an RPC, from its `Authorization` header.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, RpcError> {
        let name = auth::basic_user(headers)?;
        let user = self.user(name.as_deref()).map_err(|err| match err {
            users::UserError::Unknown(_) => RpcError::new(Code::Unauthenticated, err.to_string()),
            users::UserError::Database { .. } => RpcError::internal(err.to_string()),
        })?;
        Ok(Caller { user })
    }
}

/// The agent's HTTP application: Connect services, `/files`, the REST endpoints, and the
/// code interpreter (the routes of its port, 49999) under
/// [`cove_proto::envd::INTERPRETER_PREFIX`] when the sandbox has one.
pub fn router(state: AgentState, interpreter: Option<interpreter::Interpreter>) -> Router {
    let routes = match interpreter {
        Some(interpreter) => Router::new().nest(
            cove_proto::envd::INTERPRETER_PREFIX,
            interpreter::router(interpreter),
        ),
        None => Router::new(),
    };
    routes
        .merge(filesystem::routes())
        .merge(process::routes())
        .route("/files", get(files::download).post(files::upload))
        .route("/health", get(rest::health))
        .route("/envs", get(rest::envs))
        .route("/init", post(rest::init))
        .route("/metrics", get(metrics::metrics))
        .route("/_cove/tunnel/{port}", get(tunnel::tunnel))
        .fallback(rest::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_access_token,
        ))
        .with_state(state)
}

/// Runs the agent until it is told to stop (SIGTERM / SIGINT).
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    serve(config, Vec::new(), || {}).await
}

/// Runs the agent on `config`'s addresses and on sockets already `listening`; `ready` is
/// called once every listener is bound.
pub async fn serve(
    config: AgentConfig,
    listening: Vec<std::os::unix::net::UnixListener>,
    ready: impl FnOnce(),
) -> Result<(), AgentError> {
    let state = AgentState::new(&config).map_err(AgentError::Start)?;
    let interpreter = config.code_interpreter.map(|addr| {
        let unix_kernels = config.quiescible.is_some();
        (
            addr,
            interpreter::Interpreter::new(state.clone(), unix_kernels),
        )
    });
    let renewer = {
        let state = state.clone();
        quiesce::Renewer(Arc::new(move |body: &[u8]| {
            rest::apply_init(&state, body).map_err(|e| e.message)
        }))
    };
    let app = router(state, interpreter.as_ref().map(|(_, i)| i.clone()));
    let mut apps: Vec<(listener::Listener, Router)> = config
        .listen
        .iter()
        .map(|addr| (listener::Listener::Bind(addr.clone()), app.clone()))
        .chain(
            listening
                .into_iter()
                .map(|socket| (listener::Listener::Listening(socket), app.clone())),
        )
        .chain(config.quiescible.iter().map(|q| {
            (
                listener::Listener::Quiescible(q.clone(), renewer.clone()),
                app.clone(),
            )
        }))
        .collect();
    if let Some((addr, interpreter)) = interpreter {
        if config.warm_kernel {
            tokio::spawn(interpreter.clone().prewarm());
        }
        // A sandbox that is checkpointed (gVisor) gets no listening TCP socket: this runsc
        // refuses to checkpoint one. Its interpreter is reached through the agent's socket
        // (the server's proxy does so for port 49999), not from inside the sandbox.
        if config.quiescible.is_none() {
            apps.push((
                listener::Listener::Bind(ListenAddr::Tcp(addr)),
                interpreter::router(interpreter),
            ));
        }
    }
    listener::serve_all(apps, ready).await
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot start the agent")]
    Start(#[source] std::io::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no listen address given")]
    NoListener,
}
