//! Response bodies moved past hyper. A handler that has a large body in a socket of its own
//! (a download the agent sends with `sendfile`, `proxy::file_upgrade`) finds a [`RawSend`] in
//! its request and answers with [`RawSend::body`]: a body of placeholders, pieces of one
//! static region that hyper queues like any other bytes, in order, after the response's
//! head. When the connection's socket is asked to write placeholders, its [`Outlet`] moves
//! that many bytes from the source into the socket instead, with `splice` (source → pipe →
//! socket): the server never copies them.
//!
//! hyper passes body frames to the socket as they are when the socket takes vectored writes
//! (its "queue" strategy, chosen for every connection the front serves). Were it ever to
//! copy them into its own buffer (its "flatten" strategy, which writes with `poll_write`),
//! the socket would be handed the region's bytes instead of the file's: a `poll_write` while
//! a passage is open fails the connection instead, and so do placeholders with no passage
//! open or beyond what it was opened for. A client sees a download cut off, never wrong.
//!
//! Only plain HTTP/1.1 connections offer it, for the reasons [`super::RawBody`] gives.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc, LazyLock, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::{
    io::Interest,
    net::{TcpStream, UnixStream},
};

use crate::splice::{Pipe, splice};

/// What placeholders are cut from. Only the addresses of its bytes are used, never their
/// values (they would reach a client only through a copy, which the outlet refuses). Zeroed
/// memory never touched: neither in the binary nor resident.
static PLACEHOLDER: LazyLock<&'static [u8]> = LazyLock::new(|| vec![0; 1 << 20].leak());

/// Whether `bytes` lie in [`PLACEHOLDER`].
fn is_placeholder(bytes: &[u8]) -> bool {
    let start = PLACEHOLDER.as_ptr() as usize;
    let at = bytes.as_ptr() as usize;
    !bytes.is_empty() && at >= start && at + bytes.len() <= start + PLACEHOLDER.len()
}

/// The connection's side: consulted by each write to its socket.
#[derive(Debug, Default)]
pub struct Outlet {
    /// Set while a passage is open: other writes skip the lock.
    open: AtomicBool,
    passage: Mutex<Option<Passage>>,
}

/// Where a body's placeholders get their bytes.
#[derive(Debug)]
struct Passage {
    source: UnixStream,
    pipe: Pipe,
    in_pipe: usize,
    /// Placeholder bytes still to write.
    due: u64,
}

/// What the socket does with a vectored write, as the [`Outlet`] says.
#[derive(Debug)]
pub enum Write {
    /// Writes every buffer.
    All,
    /// Writes this many buffers (real bytes ahead of placeholders).
    First(usize),
    /// Nothing: the outlet wrote placeholders' bytes (or failed).
    Done(Poll<io::Result<usize>>),
}

#[derive(Debug, thiserror::Error)]
enum OutletError {
    #[error("a response body's bytes were copied instead of passed on (hyper's write strategy)")]
    Copied,
    #[error("placeholders of a response body came with no passage open for them")]
    Unbacked,
    #[error("the source of a response body ended {0} bytes before its length")]
    Ended(u64),
}

impl From<OutletError> for io::Error {
    fn from(err: OutletError) -> Self {
        let kind = match err {
            OutletError::Ended(_) => io::ErrorKind::UnexpectedEof,
            OutletError::Copied | OutletError::Unbacked => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, err)
    }
}

impl Outlet {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Option<Passage>> {
        self.passage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens `passage`, unless one is open still: then it is given back. (hyper runs a next
    /// request's handler only once the answer before it has left its queue, so this should
    /// not happen; if it did, the old placeholders would take the new passage's bytes.)
    fn open(&self, passage: Passage) -> Result<(), Passage> {
        let mut guard = self.lock();
        if guard.is_some() {
            return Err(passage);
        }
        *guard = Some(passage);
        self.open.store(true, Ordering::Release);
        Ok(())
    }

    fn close(&self) {
        let closed = self.lock().take();
        self.open.store(false, Ordering::Release);
        drop(closed);
    }

    /// What a plain `poll_write` gets instead of writing: `None` writes it.
    pub fn poll_write(&self) -> Option<Poll<io::Result<usize>>> {
        self.open
            .load(Ordering::Acquire)
            .then(|| Poll::Ready(Err(OutletError::Copied.into())))
    }

    /// What a vectored write of `bufs` to `socket` does.
    pub fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
        socket: &TcpStream,
    ) -> Write {
        let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
            return Write::All;
        };
        if is_placeholder(&bufs[first]) {
            let asked = bufs[first..]
                .iter()
                .take_while(|b| b.is_empty() || is_placeholder(b))
                .map(|b| b.len() as u64)
                .sum();
            return Write::Done(self.poll_send(cx, asked, socket));
        }
        match bufs[first..].iter().position(|b| is_placeholder(b)) {
            None => Write::All,
            Some(real) => Write::First(first + real),
        }
    }

    /// Writes up to `asked` bytes from the passage to `socket`.
    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        asked: u64,
        socket: &TcpStream,
    ) -> Poll<io::Result<usize>> {
        let mut guard = self.lock();
        let Some(passage) = guard.as_mut().filter(|p| asked <= p.due) else {
            return Poll::Ready(Err(OutletError::Unbacked.into()));
        };
        let sent = ready!(passage.poll_send(cx, asked, socket))?;
        passage.due -= sent as u64;
        if passage.due == 0 {
            let done = guard.take();
            self.open.store(false, Ordering::Release);
            drop(guard);
            drop(done);
        }
        Poll::Ready(Ok(sent))
    }
}

impl Passage {
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        asked: u64,
        socket: &TcpStream,
    ) -> Poll<io::Result<usize>> {
        loop {
            // Keep the pipe topped up with what the source has (up to what is due), so the
            // socket gets long runs; wait for the source only when the pipe is empty.
            let space = self
                .pipe
                .room
                .min(usize::try_from(self.due).unwrap_or(usize::MAX))
                - self.in_pipe;
            if space > 0 {
                let taken = if self.in_pipe == 0 {
                    ready!(self.source.poll_read_ready(cx))?;
                    self.source.try_io(Interest::READABLE, || {
                        splice(&self.source, &self.pipe.to, space)
                    })
                } else {
                    // Not through the source's readiness: a pipe partly full may take less
                    // than `space` (its slots hold a piece each), and its "would block" says
                    // nothing of the source. The source's readiness stays as it was.
                    splice(&self.source, &self.pipe.to, space)
                };
                match taken {
                    Ok(0) => return Poll::Ready(Err(OutletError::Ended(self.due).into())),
                    Ok(taken) => {
                        self.in_pipe += taken;
                        continue;
                    }
                    Err(err) if retry(&err) && self.in_pipe == 0 => continue,
                    Err(err) if retry(&err) => {}
                    Err(err) => return Poll::Ready(Err(err)),
                }
            }
            ready!(socket.poll_write_ready(cx))?;
            let want = usize::try_from(asked)
                .unwrap_or(usize::MAX)
                .min(self.in_pipe);
            let given = socket.try_io(Interest::WRITABLE, || splice(&self.pipe.from, socket, want));
            match given {
                Ok(given) => {
                    self.in_pipe -= given;
                    return Poll::Ready(Ok(given));
                }
                Err(err) if retry(&err) => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

fn retry(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// A plain HTTP/1.1 request's way past hyper to its connection's socket for its response's
/// body, in its extensions.
#[derive(Clone, Debug)]
pub struct RawSend {
    outlet: Arc<Outlet>,
}

impl RawSend {
    pub fn new(outlet: Arc<Outlet>) -> Self {
        Self { outlet }
    }

    /// A body of `length` bytes: `ahead` (what was read of `source` already; beyond
    /// `length` it is cut), then the rest read from `source` and written to the client's
    /// socket without passing through the server. Its frames must reach hyper as they are
    /// (no layer may copy or change them). `Err` gives `ahead` and `source` back when the
    /// pipe cannot be made (the server is out of descriptors) or the connection's passage is
    /// taken still.
    pub fn body(
        &self,
        mut ahead: Bytes,
        source: UnixStream,
        length: u64,
    ) -> Result<Body, (io::Error, Bytes, UnixStream)> {
        ahead.truncate(usize::try_from(length).unwrap_or(usize::MAX));
        let due = length - ahead.len() as u64;
        if due > 0 {
            let pipe = match Pipe::new() {
                Ok(pipe) => pipe,
                Err(err) => return Err((err, ahead, source)),
            };
            let opened = self.outlet.open(Passage {
                source,
                pipe,
                in_pipe: 0,
                due,
            });
            if let Err(passage) = opened {
                let busy = io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "the connection's answer before is still being sent",
                );
                return Err((busy, ahead, passage.source));
            }
        }
        Ok(Body::new(Placeholders {
            ahead: (!ahead.is_empty()).then_some(ahead),
            rest: due,
            outlet: self.outlet.clone(),
        }))
    }
}

/// The body [`RawSend::body`] answers with.
struct Placeholders {
    ahead: Option<Bytes>,
    /// Placeholder bytes still to hand out.
    rest: u64,
    outlet: Arc<Outlet>,
}

impl http_body::Body for Placeholders {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(ahead) = this.ahead.take() {
            return Poll::Ready(Some(Ok(Frame::data(ahead))));
        }
        if this.rest == 0 {
            return Poll::Ready(None);
        }
        let piece = usize::try_from(this.rest)
            .unwrap_or(usize::MAX)
            .min(PLACEHOLDER.len());
        this.rest -= piece as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &PLACEHOLDER[..piece],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_none() && self.rest == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.ahead.as_ref().map_or(0, |a| a.len() as u64) + self.rest)
    }
}

impl Drop for Placeholders {
    /// A body dropped before its end (its connection failed) closes its passage: the
    /// source is let go at once, and placeholders hyper still had fail the connection.
    fn drop(&mut self) {
        if self.rest > 0 {
            self.outlet.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// Writes `body`'s frames to `socket` the way hyper's queue does: vectored, real bytes
    /// as they are, placeholders through the outlet.
    async fn write_body(outlet: &Outlet, socket: &TcpStream, mut body: Body) -> io::Result<()> {
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            let mut at = 0;
            while at < data.len() {
                let slice = [io::IoSlice::new(&data[at..])];
                let written = std::future::poll_fn(|cx| {
                    match outlet.poll_write_vectored(cx, &slice, socket) {
                        Write::Done(polled) => polled,
                        Write::All | Write::First(_) => {
                            let _ = ready!(socket.poll_write_ready(cx));
                            Poll::Ready(socket.try_write(&data[at..]))
                        }
                    }
                })
                .await?;
                at += written;
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn placeholders_become_the_sources_bytes_and_ahead_comes_first() {
        let (mut agent, source) = UnixStream::pair().unwrap();
        let (client, server) = tcp_pair().await;
        let file: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let outlet = Outlet::new();
        let raw = RawSend::new(outlet.clone());
        // 100 bytes were read ahead; the agent sends what follows, and more after the length.
        let length = file.len() as u64 - 1000;
        let body = raw
            .body(Bytes::copy_from_slice(&file[..100]), source, length)
            .map_err(|(err, ..)| err)
            .unwrap();
        let sender = {
            let rest = file[100..].to_vec();
            tokio::spawn(async move {
                agent.write_all(&rest).await.unwrap();
                agent
            })
        };
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut got = vec![0u8; length as usize];
            client.read_exact(&mut got).await.unwrap();
            got
        });
        write_body(&outlet, &server, body).await.unwrap();
        assert_eq!(reader.await.unwrap(), file[..length as usize]);
        assert!(
            !outlet.open.load(Ordering::Acquire),
            "the passage closed at its end"
        );
        assert!(outlet.lock().is_none());
        drop(sender.await.unwrap());
    }

    /// A source sent as the agent sends files (`sendfile`, pieces of the page cache), each
    /// piece from another page, fills the pipe's slots long before its bytes: a "would
    /// block" from a pipe partly full must not be taken for an empty source. Here the whole
    /// source is in its socket before the first byte is written, so no new byte would come
    /// to wake a download that lost the source's readiness: it would wait for ever.
    #[tokio::test]
    async fn a_source_of_scattered_pages_fills_the_pipe_and_still_flows() {
        const PIECE: usize = 1000;
        const PIECES: usize = 600;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        let file: Vec<u8> = (0..PIECES * 4096).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &file).unwrap();
        // The first PIECE bytes of every page: more pieces than the pipe has slots.
        let sent: Vec<u8> = file
            .chunks(4096)
            .flat_map(|p| &p[..PIECE])
            .copied()
            .collect();

        let (agent, source) = std::os::unix::net::UnixStream::pair().unwrap();
        // Room for all of it (as root; else the test cannot set it up).
        rustix::net::sockopt::set_socket_send_buffer_size_force(&agent, 16 << 20).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        for page in 0..PIECES {
            let mut offset = (page * 4096) as u64;
            let mut left = PIECE;
            while left > 0 {
                left -= rustix::fs::sendfile(&agent, &file, Some(&mut offset), left).unwrap();
            }
        }
        source.set_nonblocking(true).unwrap();
        let source = UnixStream::from_std(source).unwrap();
        let (client, server) = tcp_pair().await;
        let outlet = Outlet::new();
        let body = RawSend::new(outlet.clone())
            .body(Bytes::new(), source, sent.len() as u64)
            .map_err(|(err, ..)| err)
            .unwrap();
        let length = sent.len();
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut got = vec![0u8; length];
            client.read_exact(&mut got).await.unwrap();
            got
        });
        let written = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            write_body(&outlet, &server, body),
        )
        .await;
        written.expect("the download went on").unwrap();
        assert!(reader.await.unwrap() == sent);
        drop(agent);
    }

    #[tokio::test]
    async fn a_source_that_ends_early_fails_the_write() {
        let (mut agent, source) = UnixStream::pair().unwrap();
        let (_client, server) = tcp_pair().await;
        let outlet = Outlet::new();
        let body = RawSend::new(outlet.clone())
            .body(Bytes::new(), source, 5000)
            .map_err(|(err, ..)| err)
            .unwrap();
        agent.write_all(&[1u8; 1000]).await.unwrap();
        drop(agent);
        let err = write_body(&outlet, &server, body).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn copies_and_unbacked_placeholders_fail_instead_of_sending_the_region() {
        let (_agent, source) = UnixStream::pair().unwrap();
        let (_client, server) = tcp_pair().await;
        let outlet = Outlet::new();
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let placeholder = [io::IoSlice::new(&PLACEHOLDER[..10])];
        assert!(matches!(
            outlet.poll_write_vectored(&mut cx, &placeholder, &server),
            Write::Done(Poll::Ready(Err(_)))
        ));
        assert!(outlet.poll_write().is_none(), "no passage: writes go on");

        let body = RawSend::new(outlet.clone())
            .body(Bytes::new(), source, 10)
            .map_err(|(err, ..)| err)
            .unwrap();
        assert!(
            matches!(outlet.poll_write(), Some(Poll::Ready(Err(_)))),
            "a copy (hyper's flatten strategy) fails while a passage is open"
        );
        let too_many = [io::IoSlice::new(&PLACEHOLDER[..11])];
        assert!(matches!(
            outlet.poll_write_vectored(&mut cx, &too_many, &server),
            Write::Done(Poll::Ready(Err(_)))
        ));
        let real = b"head";
        let mixed = [
            io::IoSlice::new(&[]),
            io::IoSlice::new(real),
            io::IoSlice::new(&PLACEHOLDER[..10]),
        ];
        assert!(
            matches!(
                outlet.poll_write_vectored(&mut cx, &mixed, &server),
                Write::First(2)
            ),
            "real bytes ahead of placeholders are written first"
        );
        let (_agent2, source2) = UnixStream::pair().unwrap();
        let second = RawSend::new(outlet.clone()).body(Bytes::new(), source2, 10);
        assert!(
            matches!(&second, Err((err, ..)) if err.kind() == io::ErrorKind::ResourceBusy),
            "a passage open still is not replaced"
        );
        drop(body);
        assert!(
            outlet.lock().is_none(),
            "a body dropped early closes its passage"
        );
    }
}
