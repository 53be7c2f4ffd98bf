//! Serving one connection: HTTP/1.1 or h2c (told apart by the HTTP/2 preface) with upgrades,
//! watched for silence, and shut down gracefully when the server stops.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    Timeouts,
    activity::{Activity, Expiry, PastHyper, Watched},
    protocol::Protocols,
    service::ConnectionService,
};

/// How long a connection closed for idleness may take to say goodbye (HTTP/2's GOAWAY)
/// before it is dropped.
const GOODBYE_GRACE: Duration = Duration::from_secs(5);

/// Everything a connection needs from the server.
pub struct Shared {
    pub app: Router,
    pub protocols: Protocols,
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
        let past_hyper = io.past_hyper();
        return serve(shared, io, activity, peer, Some(past_hyper)).await;
    };
    let handshake = tokio::time::timeout(shared.timeouts.header_read, acceptor.accept(io)).await;
    match handshake {
        // Under TLS the socket carries records: no body is taken past hyper.
        Ok(Ok(tls)) => serve(shared, tls, activity, peer, None).await,
        Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake did not finish in time; closed"),
    }
}

/// Serves `io` until the connection ends, a timeout closes it, or the server stops (then
/// the requests in flight are finished first). `past_hyper`: `io`'s ways past hyper to its
/// socket.
async fn serve<I>(
    shared: Arc<Shared>,
    io: I,
    activity: Arc<Activity>,
    peer: SocketAddr,
    past_hyper: Option<PastHyper>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timeouts = shared.timeouts;
    let service = ConnectionService::new(
        shared.app.clone(),
        activity.clone(),
        timeouts.body_read,
        past_hyper,
    );
    // The first bytes are read to tell the protocol: they count as the first request's head,
    // under its timeout.
    let first_head_due = activity.deadline(&timeouts).map(|(at, _)| at);
    let mut connection = tokio::select! {
        started = shared.protocols.serve(io, service) => match started {
            Ok(connection) => connection,
            Err(err) => {
                tracing::debug!(%peer, %err, "connection ended before its first request");
                return;
            }
        },
        () = sleep_until(first_head_due) => {
            tracing::debug!(%peer, "request headers did not arrive in time; closed");
            return;
        }
        () = shared.shutdown.cancelled() => return,
    };
    let mut stopping = false;
    let mut drop_at: Option<Instant> = None;
    loop {
        // Once told to go, the connection gets a grace period instead of its timeouts.
        let wake_at = drop_at.or_else(|| activity.deadline(&timeouts).map(|(at, _)| at));
        tokio::select! {
            served = &mut connection => {
                if let Err(err) = served {
                    tracing::debug!(%peer, err = %err, "connection ended with an error");
                }
                return;
            }
            () = activity.changed.notified() => {}
            () = shared.shutdown.cancelled(), if !stopping => {
                stopping = true;
                connection.graceful_shutdown();
            }
            () = sleep_until(wake_at) => {
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
                        connection.graceful_shutdown();
                        drop_at = Some(now + GOODBYE_GRACE);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
