//! A Unix listener the agent can let go of on request, so that its sandbox can be
//! checkpointed (gVisor's `runsc checkpoint` refuses a socket bound on the host, and the
//! connections through it are host descriptors that do not survive a restore).
//!
//! - **SIGUSR1**: stop accepting, close the listener and every connection accepted through
//!   it, then write the marker file (the acknowledgement the host waits for).
//! - **SIGUSR2**: listen again on the same path (the host has removed the old socket file,
//!   which a gVisor sandbox cannot unlink itself). A sandbox restored under a new identity
//!   (a fork, or one made from a memory snapshot) finds the renewal file beside the socket
//!   first: its new access token and environment, in the body format of `POST /init`, taken
//!   before anyone can connect, then removed.
//!
//! Processes the agent started keep running throughout; only the connections end.

use std::{
    io,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
};

use axum::Router;
use futures::task::AtomicWaker;
use rustix::process::Signal;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{UnixListener, UnixStream},
};

use crate::signals::Heard;

/// Where a quiescible listener listens and acknowledges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quiescible {
    /// The socket to listen on.
    pub socket: PathBuf,
    /// The file written once the listener and its connections are closed.
    pub marker: PathBuf,
    /// The file a restore under a new identity leaves for the agent (see the module).
    pub renewal: PathBuf,
}

/// Applies a renewal file's contents to the agent; what was wrong with them.
pub type Renew = dyn Fn(&[u8]) -> Result<(), String> + Send + Sync;

/// Applies a renewal file's contents to the agent.
#[derive(Clone)]
pub struct Renewer(pub Arc<Renew>);

impl std::fmt::Debug for Renewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Renewer")
    }
}

/// The most a renewal file may hold.
const RENEWAL_LIMIT: u64 = 1 << 20;

/// What the marker file holds.
pub const MARKER_CONTENT: &str = "quiesced\n";

/// Serves `app` on `quiescible.socket`, letting go of it on SIGUSR1 and listening again on
/// SIGUSR2 (renewed first when told so), until the task is dropped.
pub async fn serve(quiescible: Quiescible, app: Router, renewer: Renewer) -> io::Result<()> {
    // Handlers first: the default action of SIGUSR1 would end the agent. Heard on a timer
    // too: after a restore, the notification of a signal can be lost.
    let backstop = Some(crate::signals::BACKSTOP);
    let mut quiesce = Heard::new(Signal::USR1, "SIGUSR1", backstop)?;
    let mut listen = Heard::new(Signal::USR2, "SIGUSR2", backstop)?;
    let mut first = true;
    loop {
        let _ = std::fs::remove_file(&quiescible.marker);
        if !first {
            renew(&quiescible.renewal, &renewer);
        }
        let listener = match UnixListener::bind(&quiescible.socket) {
            Ok(listener) => listener,
            // At start a failure is the agent's end; later the host sees no socket and says so.
            Err(err) if first => return Err(err),
            Err(err) => {
                tracing::error!(%err, socket = %quiescible.socket.display(), "cannot listen again; waiting for the next SIGUSR2");
                listen.recv().await;
                continue;
            }
        };
        first = false;
        tracing::info!(socket = %quiescible.socket.display(), "agent listening (quiescible)");
        let connections = Connections::default();
        let tracked = Tracked {
            listener,
            connections: connections.clone(),
        };
        {
            let serving = axum::serve(tracked, app.clone()).into_future();
            tokio::pin!(serving);
            loop {
                tokio::select! {
                    result = &mut serving => return result,
                    _ = quiesce.recv() => {}
                }
                // This runsc cannot checkpoint a listening TCP socket, and a failed
                // checkpoint stops the sandbox: refuse instead, and serve on.
                let ports = listening_tcp_ports();
                if ports.is_empty() {
                    break;
                }
                tracing::info!(?ports, "not quiescing: TCP ports listen");
                write_whole(&quiescible.marker, &refusal(&ports))?;
            }
        }
        // The serve future and with it the listener are gone: no new connection.
        let closed = connections.close_all();
        write_marker(&quiescible)?;
        tracing::info!(
            closed,
            "agent quiesced: listener and its connections closed"
        );
        loop {
            tokio::select! {
                _ = listen.recv() => break,
                // Asked again: still quiet, say so again.
                _ = quiesce.recv() => write_marker(&quiescible)?,
            }
        }
    }
}

/// What the marker holds when the agent refuses to quiesce.
pub const REFUSED_PREFIX: &str = "refused: ";

fn refusal(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "{REFUSED_PREFIX}processes in the sandbox listen on TCP port(s) {}, which this gVisor \
         cannot checkpoint; stop them, or pause without memory\n",
        ports.join(", ")
    )
}

/// The TCP ports something in the sandbox listens on (its kernel's `/proc/net/tcp{,6}`).
fn listening_tcp_ports() -> Vec<u16> {
    let tables: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .collect();
    listening_ports_in(&tables)
}

/// The local ports of the sockets in state LISTEN (`st` 0A) of `/proc/net/tcp` tables.
fn listening_ports_in(tables: &[String]) -> Vec<u16> {
    let mut ports: Vec<u16> = tables
        .iter()
        .flat_map(|table| table.lines().skip(1))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            (fields.nth(1)? == "0A").then_some(())?;
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Takes the renewal file at `path`, if there is one: applied, then removed. One that
/// cannot be read or applied is logged; the agent listens on as it was.
fn renew(path: &std::path::Path, renewer: &Renewer) {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path);
    let mut raw = Vec::new();
    let read = match file {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return,
        Err(err) => Err(err.to_string()),
        Ok(file) => file
            .take(RENEWAL_LIMIT)
            .read_to_end(&mut raw)
            .map_err(|e| e.to_string()),
    };
    let _ = std::fs::remove_file(path);
    match read.and_then(|_| (renewer.0)(&raw)) {
        Ok(()) => tracing::info!("agent renewed: new access token and environment"),
        Err(err) => tracing::error!(%err, "cannot take the renewal file; the agent is as it was"),
    }
}

fn write_marker(quiescible: &Quiescible) -> io::Result<()> {
    write_whole(&quiescible.marker, MARKER_CONTENT)
}

/// Writes `content` to `path` so that it appears whole or not at all: the host takes the
/// marker's appearance for the answer, and an empty marker read between its creation and
/// its write once passed for an acknowledgement where the agent was refusing.
fn write_whole(path: &std::path::Path, content: &str) -> io::Result<()> {
    let mut staged = path.as_os_str().to_owned();
    staged.push(".new");
    std::fs::write(&staged, content)?;
    std::fs::rename(&staged, path)
}

/// The connections accepted through one listener, to close them all at once.
#[derive(Clone, Default)]
struct Connections(Arc<Mutex<Vec<Weak<Slot>>>>);

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Slot>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn track(&self, stream: UnixStream) -> Conn {
        let slot = Arc::new(Slot {
            stream: Mutex::new(Some(stream)),
            read: AtomicWaker::new(),
            write: AtomicWaker::new(),
        });
        let mut all = self.lock();
        all.retain(|s| s.strong_count() > 0);
        all.push(Arc::downgrade(&slot));
        Conn(slot)
    }

    /// Closes every connection still open (their descriptors go now, whoever holds them)
    /// and wakes whoever waits on them; how many there were.
    fn close_all(&self) -> usize {
        let slots: Vec<Arc<Slot>> = self.lock().drain(..).filter_map(|s| s.upgrade()).collect();
        let mut closed = 0;
        for slot in slots {
            let stream = slot.stream.lock().unwrap_or_else(|e| e.into_inner()).take();
            if stream.is_some() {
                closed += 1;
            }
            drop(stream);
            slot.read.wake();
            slot.write.wake();
        }
        closed
    }
}

struct Slot {
    stream: Mutex<Option<UnixStream>>,
    read: AtomicWaker,
    write: AtomicWaker,
}

/// One accepted connection; fails every call once closed by [`Connections::close_all`].
struct Conn(Arc<Slot>);

impl Conn {
    fn with<T>(
        &self,
        waker: &AtomicWaker,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut UnixStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        // Registered before looking, so a close in between still wakes this task.
        waker.register(cx.waker());
        let mut stream = self.0.stream.lock().unwrap_or_else(|e| e.into_inner());
        match stream.as_mut() {
            Some(stream) => op(Pin::new(stream), cx),
            None => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the agent quiesced for a checkpoint",
            ))),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(&self.0.read, cx, |s, cx| s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(&self.0.write, cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(&self.0.write, cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(&self.0.write, cx, |s, cx| s.poll_shutdown(cx))
    }
}

/// A Unix listener whose connections are tracked.
struct Tracked {
    listener: UnixListener,
    connections: Connections,
}

impl axum::serve::Listener for Tracked {
    type Io = Conn;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        crate::listener::widen_send_buffer(&stream);
        (self.connections.track(stream), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_listening_sockets_count() {
        // gVisor's table, as `cat /proc/net/tcp` showed it: a server on 8000 listening, a
        // connection on 49983 established.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                  11: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0       12 2 0 0 0 0 0 -1\n\
                  12: 0100007F:C2FF 0100007F:D3A1 01 00000000:00000000 00:00000000 00000000  1000        0       13 2 0 0 0 0 0 -1\n";
        let v6 = "  sl  local_address                         remote_address                        st\n\
                  0: 00000000000000000000000000000000:1F40 00000000000000000000000000000000:0000 0A 0 0\n";
        assert_eq!(listening_ports_in(&[v4.to_owned(), v6.to_owned()]), [8000]);
        assert!(listening_ports_in(&[]).is_empty());
    }

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_marker_is_replaced_whole_and_nothing_staged_stays() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("quiesced");
        write_whole(&marker, &refusal(&[8123])).unwrap();
        assert!(
            std::fs::read_to_string(&marker)
                .unwrap()
                .starts_with(REFUSED_PREFIX)
        );
        write_whole(&marker, MARKER_CONTENT).unwrap();
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), MARKER_CONTENT);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["quiesced"]);
    }

    #[tokio::test]
    async fn closing_all_ends_idle_and_busy_connections_and_later_ones_still_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let connections = Connections::default();
        let client = UnixStream::connect(&path).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut conn = connections.track(server);
        // A reader parked on the connection is woken by the close.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            conn.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        assert_eq!(connections.close_all(), 1);
        let read = reader.await.unwrap();
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        // The descriptor is closed: the peer sees the end.
        let mut client = client;
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);

        let client2 = UnixStream::connect(&path).await;
        let (server2, _) = listener.accept().await.unwrap();
        let mut conn2 = Connections::default().track(server2);
        conn2.write_all(b"x").await.unwrap();
        let mut client2 = client2.unwrap();
        client2.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"x");
    }
}
