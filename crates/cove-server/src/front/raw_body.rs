//! Request bodies moved past hyper. A handler that moves a large body itself (an upload the
//! proxy splices into a sandbox's agent, `proxy::file_upload`) finds a [`RawBody`] in its
//! request. It holds hyper's reads of the connection's socket, takes what hyper had already
//! read through the request's body, and reads the rest from a duplicate of the socket (made
//! by the first read hyper tries while held, which has the socket at hand). When
//! it lets go, hyper reads as many zeros as the handler took from the socket, then the
//! socket again: its count of the body's bytes comes out right, and the connection can
//! carry a next request (the front's `close_if_unread` either drains those zeros or closes
//! the connection, as for any body a handler left unread).
//!
//! Only plain HTTP/1.1 connections offer it: under TLS the socket carries records, not the
//! body, and an HTTP/2 connection interleaves other streams with it.

use std::{
    io,
    os::fd::{BorrowedFd, OwnedFd},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::{io::ReadBuf, sync::Notify};

/// The connection's side: consulted by each read of its socket.
#[derive(Debug)]
pub struct Gate {
    /// Set while a handler holds the reads or zeros are due: other reads skip the lock.
    engaged: AtomicBool,
    inner: Mutex<Inner>,
    /// Rings when hyper wants to read while its reads are held.
    hyper_waits: Notify,
}

#[derive(Debug)]
struct Inner {
    /// The duplicate of the socket made for the handler holding the reads.
    socket: Option<io::Result<OwnedFd>>,
    state: State,
    /// The read that waits while the reads are held.
    hyper: Option<Waker>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// hyper reads the socket.
    Open,
    /// hyper's reads wait; `waiting` once one has.
    Held { waiting: bool },
    /// hyper reads this many zeros before the socket again.
    Zeros(u64),
}

impl Gate {
    /// A gate that lets every read through.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            engaged: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                socket: None,
                state: State::Open,
                hyper: None,
            }),
            hyper_waits: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a read of `socket` gets instead of its bytes; `None`: its bytes.
    pub fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        socket: BorrowedFd<'_>,
    ) -> Option<Poll<io::Result<()>>> {
        if !self.engaged.load(Ordering::Acquire) {
            return None;
        }
        let mut inner = self.lock();
        match &mut inner.state {
            State::Open => None,
            State::Held { waiting } => {
                if !*waiting {
                    *waiting = true;
                    inner.socket = Some(socket.try_clone_to_owned());
                }
                inner.hyper = Some(cx.waker().clone());
                drop(inner);
                self.hyper_waits.notify_one();
                Some(Poll::Pending)
            }
            State::Zeros(due) => {
                let given = usize::try_from(*due)
                    .unwrap_or(usize::MAX)
                    .min(buf.remaining());
                buf.initialize_unfilled_to(given).fill(0);
                buf.advance(given);
                *due -= given as u64;
                if *due == 0 {
                    inner.state = State::Open;
                    self.engaged.store(false, Ordering::Release);
                }
                Some(Poll::Ready(Ok(())))
            }
        }
    }
}

/// A plain HTTP/1.1 request's way past hyper to its connection's socket, in its extensions.
#[derive(Clone, Debug)]
pub struct RawBody {
    gate: Arc<Gate>,
    stall: Option<Duration>,
}

impl RawBody {
    pub fn new(gate: Arc<Gate>, stall: Option<Duration>) -> Self {
        Self { gate, stall }
    }

    /// How long the body may deliver nothing (the front's body read timeout).
    pub fn stall_limit(&self) -> Option<Duration> {
        self.stall
    }

    /// Holds hyper's reads of the socket until the hold is dropped.
    pub fn hold(&self) -> Hold {
        let mut inner = self.gate.lock();
        inner.state = State::Held { waiting: false };
        self.gate.engaged.store(true, Ordering::Release);
        drop(inner);
        Hold {
            gate: self.gate.clone(),
            taken: 0,
        }
    }
}

/// hyper's reads held. Dropped, it lets them go on, the bytes taken from the socket meanwhile
/// ([`Hold::took`]) replaced by zeros.
#[derive(Debug)]
pub struct Hold {
    gate: Arc<Gate>,
    taken: u64,
}

impl Hold {
    /// Resolves once hyper wants to read the socket. By then everything it had read of the
    /// body is in the body's frames (hyper reads its socket only when its buffer is empty),
    /// and the rest of the body is still in the socket.
    pub async fn hyper_waiting(&self) {
        loop {
            let rang = self.gate.hyper_waits.notified();
            tokio::pin!(rang);
            rang.as_mut().enable();
            if self.gate.lock().state == (State::Held { waiting: true }) {
                return;
            }
            rang.await;
        }
    }

    /// A duplicate of the connection's socket, to read the rest of the body from, once
    /// [`Hold::hyper_waiting`] has resolved (hyper's read made it).
    pub fn socket(&self) -> io::Result<OwnedFd> {
        self.gate.lock().socket.take().unwrap_or_else(|| {
            Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "hyper has not read the socket while held",
            ))
        })
    }

    /// Records `bytes` of the body taken from the socket past hyper.
    pub fn took(&mut self, bytes: u64) {
        self.taken += bytes;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut inner = self.gate.lock();
        inner.socket = None;
        if self.taken == 0 {
            inner.state = State::Open;
            self.gate.engaged.store(false, Ordering::Release);
        } else {
            inner.state = State::Zeros(self.taken);
        }
        let hyper = inner.hyper.take();
        drop(inner);
        if let Some(hyper) = hyper {
            hyper.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{future::Future, os::fd::AsFd, pin::pin};

    use futures::task::noop_waker_ref;

    use super::*;

    fn read(gate: &Gate, room: usize) -> (Option<Poll<io::Result<()>>>, Vec<u8>) {
        let socket = std::io::stdin();
        let mut storage = vec![7u8; room];
        let mut buf = ReadBuf::new(&mut storage);
        let mut cx = Context::from_waker(noop_waker_ref());
        let polled = gate.poll_read(&mut cx, &mut buf, socket.as_fd());
        let filled = buf.filled().to_vec();
        (polled, filled)
    }

    fn waiting(hold: &Hold) -> bool {
        let mut cx = Context::from_waker(noop_waker_ref());
        pin!(hold.hyper_waiting()).as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn reads_wait_while_held_then_get_zeros_for_what_was_taken() {
        let gate = Gate::new();
        let raw = RawBody::new(gate.clone(), None);
        assert!(read(&gate, 8).0.is_none(), "an open gate reads the socket");

        let mut hold = raw.hold();
        assert!(hold.socket().is_err(), "no duplicate before hyper reads");
        assert!(matches!(read(&gate, 8).0, Some(Poll::Pending)));
        assert!(waiting(&hold), "hyper waited: the handler learns it");
        assert!(hold.socket().is_ok(), "hyper's read made the duplicate");
        hold.took(10);
        drop(hold);

        let (polled, filled) = read(&gate, 8);
        assert!(matches!(polled, Some(Poll::Ready(Ok(())))));
        assert_eq!(filled, vec![0; 8]);
        let (_, filled) = read(&gate, 8);
        assert_eq!(filled, vec![0; 2], "no more zeros than were taken");
        assert!(read(&gate, 8).0.is_none(), "then the socket again");
    }

    #[test]
    fn a_hold_that_took_nothing_gives_the_socket_back() {
        let gate = Gate::new();
        let hold = RawBody::new(gate.clone(), None).hold();
        assert!(!waiting(&hold), "hyper has not asked yet");
        drop(hold);
        assert!(read(&gate, 8).0.is_none());
    }
}
