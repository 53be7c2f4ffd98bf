//! The accept loop: takes connections while descriptors and the limits allow, refuses the
//! ones beyond the limits at once, and backs off when the kernel has no descriptor to give.

use std::{
    io::ErrorKind,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use rustix::io::Errno;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use super::{
    Limits,
    activity::{Activity, Watched},
    admission::{Admission, Refusal},
    connection::{self, Shared},
    open_files::FdGauge,
};

/// The first pause after accept fails for lack of resources (or the descriptor reserve is
/// reached); it doubles up to [`MAX_PAUSE`] while that lasts.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// The least time between two log lines about refused connections or a lack of descriptors.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` until the server stops, each served by a task on
/// `tracker`.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, limits: Limits, tracker: TaskTracker) {
    let admission = Admission::new(limits.max_connections, limits.max_connections_per_ip);
    let mut fds = FdGauge::new(limits.open_files, limits.fd_reserve);
    let mut pause = Pause::default();
    let mut refused = Tally::default();
    loop {
        if !fds.has_room() {
            pause
                .log_and_wait("descriptors are running out (the reserve is reached); not accepting")
                .await;
            continue;
        }
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) if is_lack_of_resources(&err) => {
                pause.log_and_wait_for(&err).await;
                continue;
            }
            // The peer gave up before we got to it, or a signal: nothing to wait for.
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::ConnectionAborted
                        | ErrorKind::ConnectionReset
                        | ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(err) => {
                // Unknown trouble: never spin on it.
                pause.log_and_wait_for(&err).await;
                continue;
            }
        };
        pause.reset();
        match admission.admit(peer.ip()) {
            Ok(permit) => {
                fds.taken();
                // Streams write one small frame at a time: Nagle's algorithm would hold each
                // back until the peer's delayed ACK, about 40 ms.
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(?err, "cannot set TCP_NODELAY");
                }
                let activity = Activity::new();
                let io = Watched::new(
                    stream,
                    activity.clone(),
                    shared.timeouts.upgrade_idle,
                    permit,
                );
                tracker.spawn(connection::serve_accepted(
                    shared.clone(),
                    io,
                    activity,
                    peer,
                ));
            }
            Err(refusal) => {
                refuse(stream, refusal);
                if let Some(counter) = &shared.refused {
                    counter.inc();
                }
                refused.add(refusal, peer, &admission);
            }
        }
    }
}

/// Answers a refused connection with what fits in its send buffer right away, and closes it.
/// Nothing of the request is read.
fn refuse(stream: TcpStream, refusal: Refusal) {
    let _ = stream.try_write(refusal.answer());
    drop(stream);
}

fn is_lack_of_resources(err: &std::io::Error) -> bool {
    matches!(
        Errno::from_io_error(err),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

/// The growing pause of a loop that cannot accept, and its rate-limited log.
#[derive(Default)]
struct Pause {
    next: Option<Duration>,
    logged: Option<Instant>,
}

impl Pause {
    fn reset(&mut self) {
        self.next = None;
    }

    async fn log_and_wait_for(&mut self, err: &std::io::Error) {
        if self.should_log() {
            tracing::warn!(?err, "cannot accept connections; pausing");
        }
        self.wait().await;
    }

    async fn log_and_wait(&mut self, why: &str) {
        if self.should_log() {
            tracing::warn!(open = super::open_files::open_count(), "{why}");
        }
        self.wait().await;
    }

    fn should_log(&mut self) -> bool {
        let due = self.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY);
        if due {
            self.logged = Some(Instant::now());
        }
        due
    }

    async fn wait(&mut self) {
        let pause = self.next.unwrap_or(FIRST_PAUSE);
        self.next = Some((pause * 2).min(MAX_PAUSE));
        tokio::time::sleep(pause).await;
    }
}

/// Refused connections, logged at most every [`LOG_EVERY`].
#[derive(Default)]
struct Tally {
    count: u64,
    logged: Option<Instant>,
}

impl Tally {
    fn add(&mut self, refusal: Refusal, peer: SocketAddr, admission: &Admission) {
        self.count += 1;
        if self.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            tracing::warn!(
                refused = self.count,
                last = %peer,
                reason = ?refusal,
                open = admission.open(),
                "refusing connections over the limits"
            );
            self.count = 0;
            self.logged = Some(Instant::now());
        }
    }
}
