//! The HTTP front door of `cove serve`: the accept loop, connection limits and timeouts, so
//! that no client — least of all one without an API key — can take the server's descriptors,
//! memory or attention from everyone else.
//!
//! - Descriptors: the server raises its own limit at start and stops accepting while open
//!   descriptors near it, keeping a reserve for its own files and sandboxes' sockets.
//! - Connections: at most so many in all and per client address; more are refused at once
//!   with a 503.
//! - Silence: a request's headers must arrive in time, an idle connection is closed, a
//!   stalled request body fails, an upgraded connection silent for long is closed.
//! - Size: a request's head is bounded (431 beyond it), HTTP/2 streams per connection too.
//!
//! Every limit is in [`config`] with its reason, and in docs/SECURITY.md ("Overload").

mod accept;
mod activity;
mod admission;
mod body;
pub mod config;
mod connection;
mod open_files;
mod protocol;
mod raw_body;
mod raw_send;
mod service;

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::Router;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use self::{
    body::{BodyError, stalled},
    config::{FrontConfig, Limits, Timeouts},
    raw_body::{Hold, RawBody},
    raw_send::RawSend,
};

/// Connections the kernel completes and queues for us to accept (capped by
/// `net.core.somaxconn`). Rust's default of 128 overflows in a burst of connections while the
/// server is busy: then new clients' handshakes are dropped and retried a second later.
const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr`.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The front door, set up: descriptor limit raised, limits derived.
#[derive(Clone)]
pub struct Front {
    limits: Limits,
    timeouts: Timeouts,
    /// Connections speak TLS (handshake within the header read timeout).
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Counts the connections refused over the limits (metrics).
    refused: Option<prometheus_client::metrics::counter::Counter>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("limits", &self.limits)
            .field("timeouts", &self.timeouts)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Front {
    /// Raises the descriptor limit as `config` asks (or as far as allowed) and derives the
    /// limits it leaves open. Call it at start, before the server opens much.
    pub fn prepare(config: &FrontConfig) -> Self {
        let open_files = open_files::raise_limit(config.max_open_files);
        let limits = Limits::derive(config, open_files);
        tracing::info!(
            max_connections = limits.max_connections,
            max_connections_per_ip = limits.max_connections_per_ip,
            open_files = limits.open_files,
            fd_reserve = limits.fd_reserve,
            header_read_timeout = ?config.timeouts.header_read,
            idle_timeout = ?config.timeouts.idle,
            body_read_timeout = ?config.timeouts.body_read,
            upgrade_idle_timeout = ?config.timeouts.upgrade_idle,
            "connection limits"
        );
        Self {
            limits,
            timeouts: config.timeouts,
            tls: None,
            refused: None,
        }
    }

    /// The same limits for another listener, in plain HTTP, its refusals not counted.
    pub fn plain(&self) -> Self {
        Self {
            tls: None,
            refused: None,
            ..self.clone()
        }
    }

    /// Serves TLS through `acceptor`.
    pub fn with_tls(mut self, acceptor: tokio_rustls::TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Counts refused connections on `counter`.
    pub fn count_refusals(mut self, counter: prometheus_client::metrics::counter::Counter) -> Self {
        self.refused = Some(counter);
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets
    /// every connection finish what it is doing, and returns when they have.
    pub async fn serve(
        self,
        listener: TcpListener,
        app: Router,
        shutdown: impl Future<Output = ()>,
    ) {
        let stop = CancellationToken::new();
        let shared = Arc::new(connection::Shared {
            app,
            protocols: protocol::Protocols::new(),
            timeouts: self.timeouts,
            shutdown: stop.clone(),
            tls: self.tls,
            refused: self.refused,
        });
        let tracker = TaskTracker::new();
        tokio::select! {
            () = accept::run(listener, shared, self.limits, tracker.clone()) => {}
            () = shutdown => {}
        }
        // The listener is closed now (the accept loop, its owner, is gone).
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
