//! Connections to one sandbox's agent, kept open between requests.
//!
//! Opening one costs a connect and an accept, the socket's checks (pinned, made by the
//! server's user) and a task on both sides: about as much as a small request itself. A
//! connection whose exchange ended cleanly goes back to its sandbox's [`Links`] and carries
//! the next request; one that broke, was upgraded, or belongs to an agent that has since
//! been replaced (pause, resume) is closed instead. Every request still carries its own
//! access token: the agent checks each one, whatever connection it came on.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll, ready},
};

use axum::body::Body;
use bytes::Bytes;
use cove_runtime::AgentEndpoint;
use http_body::{Body as _, Frame, SizeHint};
use hyper::{body::Incoming, client::conn::http1::SendRequest};
use prometheus_client::metrics::counter::Counter;

use super::{LinkError, connect};
use crate::telemetry::Counted;

/// Idle connections kept per sandbox; more are closed when their exchange ends. Enough for
/// a client's few parallel calls (a command's stream beside a file upload).
const MOST_IDLE: usize = 4;

/// A connection that carried more than this either way is closed when its exchange ends:
/// its buffers grew with the transfer (on both sides), and a transfer that large pays for
/// its own connect many times over.
const MOST_CARRIED: u64 = 256 << 10;

/// The idle connections to one sandbox's agent.
#[derive(Debug, Clone)]
pub struct Links {
    shared: Arc<Mutex<Idle>>,
}

#[derive(Debug)]
struct Idle {
    /// Where the agent is now.
    endpoint: AgentEndpoint,
    /// Counts the agents the sandbox had: a connection made to an earlier one is not kept.
    generation: u64,
    senders: Vec<SendRequest<Body>>,
}

impl Links {
    pub fn new(endpoint: AgentEndpoint) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Idle {
                endpoint,
                generation: 0,
                senders: Vec::new(),
            })),
        }
    }

    /// The sandbox's agent is reached at `endpoint` from now on (it started again): the
    /// connections to the one before are closed, now and when their exchanges end.
    pub fn renew(&self, endpoint: AgentEndpoint) {
        let mut idle = lock(&self.shared);
        idle.endpoint = endpoint;
        idle.generation += 1;
        idle.senders.clear();
    }

    /// Opens a connection ahead of the first request, when none is idle: a sandbox about
    /// to be handed out then answers its first call without a connect.
    pub async fn open_ahead(&self) -> Result<(), LinkError> {
        let (endpoint, generation) = {
            let idle = lock(&self.shared);
            if !idle.senders.is_empty() {
                return Ok(());
            }
            (idle.endpoint.clone(), idle.generation)
        };
        let sender = connect(&endpoint).await?;
        keep(&self.shared, generation, sender);
        Ok(())
    }

    /// Sends `request` on an idle connection, or on a new one; the connection goes back to
    /// the idle ones once the answer's body has been read to its end. A request that an
    /// idle connection could not take (the agent closed it meanwhile) goes on a new one.
    pub async fn send(
        &self,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<Body>, LinkError> {
        loop {
            let (endpoint, generation, idle) = {
                let mut idle = lock(&self.shared);
                (idle.endpoint.clone(), idle.generation, idle.senders.pop())
            };
            let reused = idle.is_some();
            let mut sender = match idle {
                Some(mut sender) => {
                    if sender.ready().await.is_err() {
                        continue;
                    }
                    sender
                }
                None => connect(&endpoint).await?,
            };
            let sent = Counter::default();
            let counted = request.map(|inner| Body::new(Counted::new(inner, sent.clone())));
            match sender.try_send_request(counted).await {
                Ok(response) if response.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                    // The connection is the upgraded stream's now.
                    return Ok(response.map(Body::new));
                }
                Ok(response) => {
                    let back = Back {
                        sender,
                        generation,
                        shared: Arc::downgrade(&self.shared),
                    };
                    return Ok(response.map(|inner| {
                        Body::new(Returning {
                            inner,
                            back: Some(back),
                            sent,
                            received: 0,
                        })
                    }));
                }
                Err(mut err) => match err.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(LinkError::Http(err.into_error())),
                },
            }
        }
    }

    /// How many connections are idle (for tests).
    #[cfg(test)]
    fn idle(&self) -> usize {
        lock(&self.shared).senders.len()
    }
}

fn lock(shared: &Mutex<Idle>) -> std::sync::MutexGuard<'_, Idle> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps an idle `sender` made in `generation`, unless the agent changed since or enough
/// are idle (it closes then).
fn keep(shared: &Mutex<Idle>, generation: u64, sender: SendRequest<Body>) {
    let mut idle = lock(shared);
    if idle.generation == generation && idle.senders.len() < MOST_IDLE {
        idle.senders.push(sender);
    }
}

/// A connection waiting for its exchange to end, and where it goes back to.
struct Back {
    sender: SendRequest<Body>,
    generation: u64,
    shared: Weak<Mutex<Idle>>,
}

impl Back {
    /// Keeps the connection once it can take another request; closes it if it cannot, if
    /// the sandbox is gone or has another agent, or if enough are idle.
    fn give_back(self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Back {
            mut sender,
            generation,
            shared,
        } = self;
        let keep_ready = move |sender| {
            if let Some(shared) = shared.upgrade() {
                keep(&shared, generation, sender);
            }
        };
        // Mostly the connection is ready again by the time its answer's end was read.
        if sender.is_ready() {
            keep_ready(sender);
            return;
        }
        runtime.spawn(async move {
            if sender.ready().await.is_ok() {
                keep_ready(sender);
            }
        });
    }
}

/// An answer's body that gives its connection back once read to the end.
struct Returning {
    inner: Incoming,
    back: Option<Back>,
    /// What the request's body carried, and what this one did so far.
    sent: Counter,
    received: u64,
}

impl Returning {
    /// The exchange ended cleanly: its connection goes back, unless it carried much.
    fn ended(&mut self) {
        if let Some(back) = self.back.take()
            && self.received <= MOST_CARRIED
            && self.sent.get() <= MOST_CARRIED
        {
            back.give_back();
        }
    }
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.ended(),
            // A broken exchange: its connection closes with it.
            Some(Err(_)) => self.back = None,
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                self.received = self.received.saturating_add(len as u64);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // A body nobody had to read (empty from the start) also ended cleanly; one dropped
        // half-read closes its connection.
        if self.inner.is_end_stream() {
            self.ended();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::Path,
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use http_body_util::BodyExt;
    use hyper::{server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;
    use tokio::net::UnixListener;

    use super::*;

    /// An agent stand-in on a Unix socket: answers every request with `body`, counts the
    /// connections it accepted, and keeps them open between requests when `keep_alive`.
    fn agent(path: &Path, body: &'static [u8], keep_alive: bool) -> Arc<AtomicUsize> {
        let listener = UnixListener::bind(path).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(move |request: http::Request<Incoming>| async move {
                        request.into_body().collect().await?;
                        Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                            Bytes::from_static(body),
                        )))
                    });
                    let _ = http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        accepted
    }

    fn get() -> http::Request<Body> {
        http::Request::get("/health")
            .header(http::header::HOST, "agent")
            .body(Body::empty())
            .unwrap()
    }

    async fn read(links: &Links) -> Bytes {
        let response = links.send(get()).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    }

    /// Waits until `links` holds `n` idle connections (they go back from a task).
    async fn idle_becomes(links: &Links, n: usize) {
        for _ in 0..500 {
            if links.idle() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("{} idle connections, not {n}", links.idle());
    }

    /// An agent stand-in on a Unix socket answering every request with a chunked body of
    /// `pieces`, all written at once, behind one another.
    fn chunked_agent(path: &Path, pieces: &'static [&'static [u8]]) {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = service_fn(move |request: http::Request<Incoming>| async move {
                        request.into_body().collect().await?;
                        let frames: Vec<Result<_, hyper::Error>> = pieces
                            .iter()
                            .map(|piece| Ok(Frame::data(Bytes::from_static(piece))))
                            .collect();
                        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                        Ok::<_, hyper::Error>(http::Response::new(body))
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }

    #[tokio::test]
    async fn a_connection_is_back_as_soon_as_its_chunked_answer_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        chunked_agent(&socket, &[b"first", b"last"]);
        let links = Links::new(AgentEndpoint::Unix(socket));
        for _ in 0..20 {
            let body = links.send(get()).await.unwrap().into_body();
            assert_eq!(body.collect().await.unwrap().to_bytes(), "firstlast");
            // Ready for the next request already: kept right away, without a task.
            assert_eq!(links.idle(), 1);
        }
    }

    #[tokio::test]
    async fn a_connection_carries_the_next_request_once_its_answer_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let accepted = agent(&socket, b"ok", true);
        let links = Links::new(AgentEndpoint::Unix(socket));
        for _ in 0..5 {
            assert_eq!(read(&links).await, "ok");
            idle_becomes(&links, 1).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_dropped_half_read_closes_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let accepted = agent(&socket, &[7; 1 << 20], true);
        let links = Links::new(AgentEndpoint::Unix(socket));
        let mut body = links.send(get()).await.unwrap().into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(links.idle(), 0);
        assert_eq!(read(&links).await.len(), 1 << 20);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_renewed_sandbox_gets_new_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (
            dir.path().join("first.sock"),
            dir.path().join("second.sock"),
        );
        let before = agent(&first, b"first", true);
        let after = agent(&second, b"second", true);
        let links = Links::new(AgentEndpoint::Unix(first));
        assert_eq!(read(&links).await, "first");
        idle_becomes(&links, 1).await;
        // An exchange still under way (on that connection) while the agent is replaced:
        // its connection is not kept either.
        let pending = links.send(get()).await.unwrap();
        links.renew(AgentEndpoint::Unix(second));
        assert_eq!(links.idle(), 0);
        pending.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(links.idle(), 0);
        assert_eq!(read(&links).await, "second");
        assert_eq!(before.load(Ordering::SeqCst), 1);
        assert_eq!(after.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_agent_closed_is_not_used_again() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let accepted = agent(&socket, b"ok", false);
        let links = Links::new(AgentEndpoint::Unix(socket));
        for _ in 0..3 {
            assert_eq!(read(&links).await, "ok");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(links.idle(), 0);
    }

    #[tokio::test]
    async fn a_connection_opened_ahead_carries_the_first_request() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let accepted = agent(&socket, b"ok", true);
        let links = Links::new(AgentEndpoint::Unix(socket));
        links.open_ahead().await.unwrap();
        links.open_ahead().await.unwrap();
        assert_eq!(links.idle(), 1);
        assert_eq!(read(&links).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_that_carried_much_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (large, small) = (dir.path().join("large.sock"), dir.path().join("small.sock"));
        let answered_much = agent(&large, &[7; 1 << 20], true);
        let links = Links::new(AgentEndpoint::Unix(large));
        for _ in 0..2 {
            assert_eq!(read(&links).await.len(), 1 << 20);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!((answered_much.load(Ordering::SeqCst), links.idle()), (2, 0));

        let received_much = agent(&small, b"ok", true);
        let links = Links::new(AgentEndpoint::Unix(small));
        for _ in 0..2 {
            let upload = http::Request::post("/files")
                .header(http::header::HOST, "agent")
                .body(Body::from(vec![7u8; 1 << 20]))
                .unwrap();
            let response = links.send(upload).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!((received_much.load(Ordering::SeqCst), links.idle()), (2, 0));
        // Small exchanges on the same sandbox are kept again.
        assert_eq!(read(&links).await, "ok");
        idle_becomes(&links, 1).await;
    }

    #[tokio::test]
    async fn no_more_than_a_few_stay_idle() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        agent(&socket, b"ok", true);
        let links = Links::new(AgentEndpoint::Unix(socket));
        let answers =
            futures::future::join_all((0..MOST_IDLE + 3).map(|_| links.send(get()))).await;
        for answer in answers {
            answer.unwrap().into_body().collect().await.unwrap();
        }
        idle_becomes(&links, MOST_IDLE).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(links.idle(), MOST_IDLE);
    }
}
