//! What one connection is doing, and so how long it may stay silent: waiting for its first
//! request's headers, serving requests, idle between them, or upgraded (a WebSocket relayed to
//! a sandbox). The connection's socket reports its reads and writes here, its requests their
//! start and end.

use std::{
    os::fd::AsFd,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Notify,
    time::{Instant, Sleep},
};

use super::{
    Timeouts,
    admission::Permit,
    raw_body::Gate,
    raw_send::{Outlet, Write},
};

/// The state of one connection, shared by its socket, its requests and its watchdog.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    phase: Mutex<Phase>,
    /// Set while nothing is in flight and no byte of a next request has come: the one state
    /// in which a read has something to record (so other reads skip the lock).
    waiting: AtomicBool,
    upgraded: AtomicBool,
    /// Milliseconds after `born` of the last byte read or written.
    last_io: AtomicU64,
    /// Rings when the phase changes, for the watchdog to look again.
    pub changed: Notify,
}

#[derive(Debug)]
struct Phase {
    in_flight: usize,
    served: bool,
    http2: bool,
    /// When the last request in flight ended (or the connection was accepted).
    idle_since: Instant,
    /// When the first byte after `idle_since` came: a next request has begun.
    next_request_since: Option<Instant>,
}

/// What a connection's silence has run into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// A request's headers did not arrive in time: close at once.
    Headers,
    /// No request for too long: close gracefully (HTTP/2 says goodbye first).
    Idle,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            born: now,
            phase: Mutex::new(Phase {
                in_flight: 0,
                served: false,
                http2: false,
                idle_since: now,
                next_request_since: None,
            }),
            waiting: AtomicBool::new(true),
            upgraded: AtomicBool::new(false),
            last_io: AtomicU64::new(0),
            changed: Notify::new(),
        })
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn since_born(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.born).as_millis()).unwrap_or(u64::MAX)
    }

    fn read_some(&self) {
        let now = Instant::now();
        self.last_io.store(self.since_born(now), Ordering::Relaxed);
        if self.waiting.load(Ordering::Relaxed) {
            let mut phase = self.phase();
            if phase.in_flight == 0 && phase.next_request_since.is_none() {
                phase.next_request_since = Some(now);
            }
            self.waiting.store(false, Ordering::Relaxed);
            drop(phase);
            self.changed.notify_one();
        }
    }

    fn wrote_some(&self) {
        self.last_io
            .store(self.since_born(Instant::now()), Ordering::Relaxed);
    }

    /// When the connection last moved a byte either way.
    fn last_io(&self) -> Instant {
        self.born + Duration::from_millis(self.last_io.load(Ordering::Relaxed))
    }

    /// A request's headers have arrived; the guard ends it when dropped (with its response).
    pub fn request_started(self: &Arc<Self>, version: http::Version) -> RequestGuard {
        let mut phase = self.phase();
        phase.in_flight += 1;
        phase.served = true;
        phase.http2 |= version >= http::Version::HTTP_2;
        phase.next_request_since = None;
        self.waiting.store(false, Ordering::Relaxed);
        drop(phase);
        self.changed.notify_one();
        RequestGuard {
            activity: self.clone(),
        }
    }

    fn request_ended(&self) {
        let mut phase = self.phase();
        phase.in_flight = phase.in_flight.saturating_sub(1);
        if phase.in_flight == 0 {
            phase.idle_since = Instant::now();
            phase.next_request_since = None;
            self.waiting.store(true, Ordering::Relaxed);
        }
        drop(phase);
        self.changed.notify_one();
    }

    /// The connection switched protocols: from now on only its silence in both directions
    /// counts (see [`Watched`]).
    pub fn upgrade(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
        self.changed.notify_one();
    }

    pub fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Relaxed)
    }

    /// When the connection's silence runs out, and what that means; `None` while a request is
    /// in flight (its body has a timeout of its own) or once the connection is upgraded.
    ///
    /// - Before its first request, a connection has the header-read timeout from its accept.
    /// - Idle between requests, it has the idle timeout; once a byte of a next HTTP/1.1
    ///   request comes, the header-read timeout from that byte instead. (HTTP/2 sends pings
    ///   and settings between requests, so only the idle timeout applies to it.)
    pub fn deadline(&self, timeouts: &Timeouts) -> Option<(Instant, Expiry)> {
        if self.is_upgraded() {
            return None;
        }
        let phase = self.phase();
        if phase.in_flight > 0 {
            return None;
        }
        if !phase.served {
            return Some((self.born + timeouts.header_read, Expiry::Headers));
        }
        match phase.next_request_since {
            Some(since) if !phase.http2 => Some((since + timeouts.header_read, Expiry::Headers)),
            _ => Some((phase.idle_since + timeouts.idle, Expiry::Idle)),
        }
    }
}

/// One request in flight.
#[derive(Debug)]
pub struct RequestGuard {
    activity: Arc<Activity>,
}

impl RequestGuard {
    /// The response switches protocols.
    pub fn upgrade(&self) {
        self.activity.upgrade();
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.activity.request_ended();
    }
}

/// A client's socket that reports its traffic to the connection's [`Activity`], holds the
/// connection's place in the limits until it closes, and, once upgraded, fails with
/// `TimedOut` after the upgrade idle timeout without a byte either way. (An upgraded socket
/// has left the HTTP connection for whatever relays it; this timer goes with it.)
#[derive(Debug)]
pub struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// Lets a handler take its request's body past hyper
    /// ([`RawBody`](super::raw_body::RawBody)).
    gate: Arc<Gate>,
    /// Lets a handler send its response's body past hyper
    /// ([`RawSend`](super::raw_send::RawSend)).
    outlet: Arc<Outlet>,
    upgrade_idle: Duration,
    upgrade_timer: Option<Pin<Box<Sleep>>>,
    _permit: Permit,
}

/// A plain connection's ways past hyper to its socket.
#[derive(Clone, Debug)]
pub struct PastHyper {
    pub gate: Arc<Gate>,
    pub outlet: Arc<Outlet>,
}

impl Watched {
    pub fn new(
        stream: TcpStream,
        activity: Arc<Activity>,
        upgrade_idle: Duration,
        permit: Permit,
    ) -> Self {
        Self {
            stream,
            activity,
            gate: Gate::new(),
            outlet: Outlet::new(),
            upgrade_idle,
            upgrade_timer: None,
            _permit: permit,
        }
    }

    /// The ways past hyper for this connection's requests and responses (plain HTTP/1.1
    /// only: see [`RawBody`](super::raw_body::RawBody) and
    /// [`RawSend`](super::raw_send::RawSend)).
    pub fn past_hyper(&self) -> PastHyper {
        PastHyper {
            gate: self.gate.clone(),
            outlet: self.outlet.clone(),
        }
    }

    /// Notes a write's outcome: bytes written count as activity, a write that has to wait
    /// runs into the upgraded connection's silence.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.activity.wrote_some();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => self.poll_upgrade_silence(cx).map(Err),
            failed => failed,
        }
    }

    /// Called when the socket has nothing to give or take: an upgraded connection's silence
    /// ends in an error after the upgrade idle timeout. The timer is moved only when it fires
    /// (to the last byte's time plus the timeout), not on every byte.
    fn poll_upgrade_silence(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        if !self.activity.is_upgraded() {
            return Poll::Pending;
        }
        let limit = self.upgrade_idle;
        loop {
            let deadline = self.activity.last_io() + limit;
            let timer = self
                .upgrade_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= deadline {
                return Poll::Ready(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the upgraded connection was silent for {limit:?}"),
                ));
            }
            timer.as_mut().reset(deadline);
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(polled) = this.gate.poll_read(cx, buf, this.stream.as_fd()) {
            return polled;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.read_some();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.poll_upgrade_silence(cx).map(Err),
            failed => failed,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(refused) = this.outlet.poll_write() {
            return refused;
        }
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = match this.outlet.poll_write_vectored(cx, bufs, &this.stream) {
            Write::All => Pin::new(&mut this.stream).poll_write_vectored(cx, bufs),
            Write::First(n) => Pin::new(&mut this.stream).poll_write_vectored(cx, &bufs[..n]),
            Write::Done(polled) => polled,
        };
        this.wrote(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(100),
            body_read: Duration::from_secs(1),
            upgrade_idle: Duration::from_secs(1000),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_runs_through_its_phases() {
        let t = timeouts();
        let activity = Activity::new();
        let born = Instant::now();
        // New: the first request's headers are due from the accept, whatever trickles in.
        assert_eq!(
            activity.deadline(&t),
            Some((born + t.header_read, Expiry::Headers))
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.read_some();
        assert_eq!(
            activity.deadline(&t),
            Some((born + t.header_read, Expiry::Headers))
        );

        let request = activity.request_started(http::Version::HTTP_11);
        assert_eq!(activity.deadline(&t), None);
        tokio::time::advance(Duration::from_secs(500)).await;
        drop(request);
        let idle_since = Instant::now();
        assert_eq!(
            activity.deadline(&t),
            Some((idle_since + t.idle, Expiry::Idle))
        );

        // The first byte of a next request starts its header timeout.
        tokio::time::advance(Duration::from_secs(50)).await;
        activity.read_some();
        let first_byte = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        activity.read_some();
        assert_eq!(
            activity.deadline(&t),
            Some((first_byte + t.header_read, Expiry::Headers))
        );

        let request = activity.request_started(http::Version::HTTP_11);
        request.upgrade();
        drop(request);
        assert_eq!(activity.deadline(&t), None);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_connections_have_only_the_idle_timeout_between_requests() {
        let t = timeouts();
        let activity = Activity::new();
        let first = activity.request_started(http::Version::HTTP_2);
        let second = activity.request_started(http::Version::HTTP_2);
        drop(first);
        assert_eq!(activity.deadline(&t), None);
        drop(second);
        let idle_since = Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await;
        // A ping is no request.
        activity.read_some();
        assert_eq!(
            activity.deadline(&t),
            Some((idle_since + t.idle, Expiry::Idle))
        );
    }
}
