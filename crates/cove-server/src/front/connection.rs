//! Serving one connection: HTTP/1.1 or h2c (told apart by the HTTP/2 preface) with upgrades,
//! watched for silence, and shut down gracefully when the server stops.

use std::{net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    Timeouts,
    activity::{Activity, Expiry, Watched},
    config::{
        H2_MAX_CONCURRENT_STREAMS, H2_PING_INTERVAL, H2_PING_TIMEOUT, MAX_HEADER_BYTES, MAX_HEADERS,
    },
    service::ConnectionService,
};

/// How long a connection closed for idleness may take to say goodbye (HTTP/2's GOAWAY)
/// before it is dropped.
const GOODBYE_GRACE: Duration = Duration::from_secs(5);

/// The protocol settings every connection is served with.
pub fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Our watchdog times header reads (hyper's own timer would also cut idle kept-alive
        // connections at the header timeout).
        .header_read_timeout(None)
        // Bounds the buffer a request's head is read into: a longer head is answered 431.
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        // WebSockets over HTTP/2 (RFC 8441), as axum::serve offers them.
        .enable_connect_protocol();
    builder
}

/// Everything a connection needs from the server.
pub struct Shared {
    pub app: Router,
    pub builder: auto::Builder<TokioExecutor>,
    pub timeouts: Timeouts,
    pub shutdown: CancellationToken,
    /// Set when connections speak TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Counts connections refused over the limits.
    pub refused: Option<prometheus_client::metrics::counter::Counter>,
}

/// Serves a connection the accept loop admitted: over TLS when the server speaks it, the
/// handshake bounded by the header read timeout (a client that stalls in it holds a
/// connection no longer than one that stalls in its headers).
pub async fn serve_accepted(
    shared: Arc<Shared>,
    io: Watched,
    activity: Arc<Activity>,
    peer: SocketAddr,
) {
    let Some(acceptor) = shared.tls.clone() else {
        return serve(shared, io, activity, peer).await;
    };
    let handshake = tokio::time::timeout(shared.timeouts.header_read, acceptor.accept(io)).await;
    match handshake {
        Ok(Ok(tls)) => serve(shared, tls, activity, peer).await,
        Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake did not finish in time; closed"),
    }
}

/// Serves `io` until the connection ends, a timeout closes it, or the server stops (then
/// the requests in flight are finished first).
async fn serve<I>(shared: Arc<Shared>, io: I, activity: Arc<Activity>, peer: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timeouts = shared.timeouts;
    let service = ConnectionService::new(shared.app.clone(), activity.clone(), timeouts.body_read);
    let mut connection = pin!(
        shared
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
    );
    let mut stopping = false;
    let mut drop_at: Option<Instant> = None;
    loop {
        // Once told to go, the connection gets a grace period instead of its timeouts.
        let wake_at = drop_at.or_else(|| activity.deadline(&timeouts).map(|(at, _)| at));
        let timer = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(err) = served {
                    tracing::debug!(%peer, err = %err, "connection ended with an error");
                }
                return;
            }
            () = activity.changed.notified() => {}
            () = shared.shutdown.cancelled(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            () = timer => {
                let now = Instant::now();
                if let Some(at) = drop_at {
                    if at > now {
                        continue;
                    }
                    if activity.deadline(&timeouts).is_some() {
                        tracing::debug!(%peer, "connection did not close in time; dropped");
                        return;
                    }
                    // A request came in as the goodbye went out: it may finish, and the
                    // connection closes after it.
                    drop_at = None;
                    continue;
                }
                match activity.deadline(&timeouts) {
                    Some((at, Expiry::Headers)) if at <= now => {
                        tracing::debug!(%peer, "request headers did not arrive in time; closed");
                        return;
                    }
                    Some((at, Expiry::Idle)) if at <= now => {
                        tracing::debug!(%peer, "idle connection closed");
                        connection.as_mut().graceful_shutdown();
                        drop_at = Some(now + GOODBYE_GRACE);
                    }
                    _ => {}
                }
            }
        }
    }
}
