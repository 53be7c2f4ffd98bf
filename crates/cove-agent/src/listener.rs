//! Where the agent listens: Unix sockets (how `cove serve` reaches it) and TCP (the port
//! E2B clients expect, 49983). Each listener speaks HTTP/1.1 and h2c.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

use axum::{
    Router,
    extract::connect_info::{Connected, IntoMakeServiceWithConnectInfo},
    serve::{IncomingStream, ListenerExt},
};
use tokio::net::{TcpListener, UnixListener, UnixStream};

use crate::{AgentError, send_file::Socket};

/// One address to listen on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path".to_owned());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("{s:?} is neither unix:/path nor host:port"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// Where to serve: an address to bind, or a socket someone else made and handed over (a
/// sandbox's PID 1 gets its listening socket from the host this way).
#[derive(Debug)]
pub enum Listener {
    Bind(ListenAddr),
    Listening(std::os::unix::net::UnixListener),
    /// A Unix socket closed and opened again on signals (see [`crate::quiesce`]).
    Quiescible(crate::quiesce::Quiescible, crate::quiesce::Renewer),
}

/// Binds every address first (so a bad one fails fast), then serves each one's app until
/// SIGTERM/SIGINT.
pub async fn serve_all(
    apps: Vec<(Listener, Router)>,
    ready: impl FnOnce(),
) -> Result<(), AgentError> {
    if apps.is_empty() {
        return Err(AgentError::NoListener);
    }
    let mut servers = tokio::task::JoinSet::new();
    for (listener, app) in apps {
        let addr = match listener {
            Listener::Bind(addr) => addr,
            Listener::Listening(listening) => {
                let listener =
                    UnixListener::from_std(listening).map_err(|source| AgentError::Listen {
                        addr: "the socket handed over".to_owned(),
                        source,
                    })?;
                servers
                    .spawn(async move { axum::serve(Widened(listener), with_socket(app)).await });
                tracing::info!("agent listening on the socket handed over");
                continue;
            }
            Listener::Quiescible(quiescible, renewer) => {
                servers.spawn(crate::quiesce::serve(quiescible, app, renewer));
                continue;
            }
        };
        let listen_err = |source| AgentError::Listen {
            addr: addr.to_string(),
            source,
        };
        match &addr {
            ListenAddr::Unix(path) => {
                // A socket left by an earlier agent would make bind fail.
                if path.exists() {
                    std::fs::remove_file(path).map_err(listen_err)?;
                }
                let listener = Widened(UnixListener::bind(path).map_err(listen_err)?);
                servers.spawn(async move { axum::serve(listener, with_socket(app)).await });
            }
            ListenAddr::Tcp(socket) => {
                // Small frames must leave at once (see Nagle's algorithm).
                let listener =
                    TcpListener::bind(socket)
                        .await
                        .map_err(listen_err)?
                        .tap_io(|stream| {
                            let _ = stream.set_nodelay(true);
                        });
                servers.spawn(async move { axum::serve(listener, app).await });
            }
        }
        tracing::info!(%addr, "agent listening");
    }
    ready();
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("agent stopping"),
        Some(result) = servers.join_next() => {
            if let Ok(Err(err)) = result {
                tracing::error!(?err, "listener failed");
            }
        }
    }
    Ok(())
}

/// A Unix listener whose connections get a send buffer of [`SEND_BUFFER`] bytes.
struct Widened(UnixListener);

impl axum::serve::Listener for Widened {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (UnixStream, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        widen_send_buffer(&stream);
        (stream, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, Widened>> for Socket {
    fn connect_info(stream: IncomingStream<'_, Widened>) -> Self {
        Socket::of(stream.io())
    }
}

/// `app`, its requests carrying their connection's descriptor (for downloads sent with
/// `sendfile`, [`crate::send_file`]).
fn with_socket(app: Router) -> IntoMakeServiceWithConnectInfo<Router, Socket> {
    app.into_make_service_with_connect_info::<Socket>()
}

/// What the agent may have sent to `cove serve` that it has not read yet. A Unix stream
/// socket holds only what its sender's buffer allows (212,992 bytes by default), so a
/// download would move in steps of that size, each waiting for the server to be scheduled.
/// Capped by the host's `net.core.wmem_max`; kernel memory, used only while the server lags.
const SEND_BUFFER: usize = 4 << 20;

pub(crate) fn widen_send_buffer(stream: &tokio::net::UnixStream) {
    if let Err(err) = rustix::net::sockopt::set_socket_send_buffer_size(stream, SEND_BUFFER) {
        tracing::debug!(?err, "a connection keeps its default send buffer");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            "unix:/run/a.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/a.sock".into())
        );
        assert_eq!(
            "127.0.0.1:49983".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:49983".parse().unwrap())
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("nonsense".parse::<ListenAddr>().is_err());
    }
}
