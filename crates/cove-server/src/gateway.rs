//! The stateless roles of a cluster — the api ([`crate::control_plane`]) and the edge
//! ([`crate::edge`]) — served by one process, each alone or both on one listener
//! (`cove serve --role api,edge`): sandbox traffic (by its headers, host or signature) goes
//! to the edge, everything else to the api. Both keep no state: any number of such processes
//! serve one cluster. A node may share the process (`--role node,api,edge`), on a listener
//! of its own: the api and the edge reach every node at its address.

use std::{net::SocketAddr, sync::Arc};

use axum::Router;
use tokio::net::TcpListener;

use crate::{
    ServerError, ShutdownSignal,
    cluster::forward::{Forwarder, NodeTrust},
    control_plane, edge,
    front::{self, FrontConfig},
    store::Store,
    tls::{self, TlsSource},
};

/// A stateless process's settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// The cluster's database (PostgreSQL).
    pub database: String,
    /// Serve the cluster's REST API.
    pub api: bool,
    /// Route sandbox traffic, for sandbox hosts under this domain (the nodes' `--domain`;
    /// default `localhost:<port>`).
    pub edge: Option<Option<String>>,
    pub front: FrontConfig,
    /// TLS from certificate files (a self-signed CA would differ per process).
    pub tls: Option<TlsSource>,
    /// The CAs (PEM) certificates of nodes at `https://` addresses chain to (none: the
    /// system's).
    pub node_ca: Option<std::path::PathBuf>,
}

/// A stateless process's listener, bound before anything else is set up: beside a node
/// (`--role node,api,edge`) the node's sandbox hosts are named after its port, and the node
/// starts (and stores its first key) before the api reads the keys.
pub struct Listening {
    listener: TcpListener,
    shutdown: ShutdownSignal,
    config: GatewayConfig,
}

impl Listening {
    /// The address it listens on (the port it got, for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Opens the database and sets up the roles; serves nothing before [`Gateway::run`].
    pub fn open(self) -> Result<Gateway, ServerError> {
        let Self {
            listener,
            shutdown,
            config,
        } = self;
        let mut front = front::Front::prepare(&config.front);
        let port = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?
            .port();
        let domain = config
            .edge
            .clone()
            .map(|domain| domain.unwrap_or_else(|| format!("localhost:{port}")));
        if let Some(source) = &config.tls {
            let host = domain
                .as_deref()
                .map_or("localhost", |d| d.rsplit_once(':').map_or(d, |(h, _)| h));
            // Certificate files need no state directory.
            let (acceptor, _) = tls::acceptor(source, std::path::Path::new("/nonexistent"), host)?;
            front = front.with_tls(acceptor);
        }
        let forwarder = Arc::new(Forwarder::new(&NodeTrust::load(config.node_ca.as_deref())?));
        let api = config
            .api
            .then(|| control_plane::open(&config.database, forwarder.clone()))
            .transpose()?;
        let app = match domain.clone() {
            Some(domain) => {
                let store = Store::open(&cove_db::Location::parse(&config.database))?;
                edge::router(edge::Edge::new(Arc::new(store), domain, api, forwarder))
            }
            None => api.expect("a gateway has the api, the edge or both"),
        }
        .layer(axum::middleware::from_fn(crate::unread::close_if_unread));
        tracing::info!(listen = %config.listen, port, api = config.api, edge = ?domain, tls = config.tls.is_some(), "ready");
        Ok(Gateway {
            listener,
            front,
            app,
            shutdown,
            tls: config.tls.is_some(),
        })
    }
}

/// A stateless process ready to serve: the address it prints is the one it holds (also
/// for `--listen 127.0.0.1:0`).
pub struct Gateway {
    listener: TcpListener,
    front: front::Front,
    app: Router,
    shutdown: ShutdownSignal,
    tls: bool,
}

impl Gateway {
    /// Listens on the configured address; nothing else yet.
    pub fn listen(config: GatewayConfig) -> Result<Listening, ServerError> {
        let shutdown = ShutdownSignal::install().map_err(ServerError::Signals)?;
        let listener = front::listen(config.listen).map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
        Ok(Listening {
            listener,
            shutdown,
            config,
        })
    }

    /// Listens, opens the database and sets up the roles; serves nothing before
    /// [`Gateway::run`].
    pub fn bind(config: GatewayConfig) -> Result<Self, ServerError> {
        Self::listen(config)?.open()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where clients reach it: `http(s)://` and the address it listens on.
    pub fn url(&self) -> std::io::Result<String> {
        let scheme = if self.tls { "https" } else { "http" };
        Ok(format!("{scheme}://{}", self.local_addr()?))
    }

    /// Serves until SIGTERM/SIGINT.
    pub async fn run(self) -> Result<(), ServerError> {
        self.front
            .serve(self.listener, self.app, self.shutdown.received())
            .await;
        Ok(())
    }
}
