//! Downloads the agent sends with `sendfile` ([`cove_proto::envd::FILE_UPGRADE`]): the
//! proxy asks for the upgrade on every `GET /files`, and turns an agent's `101` back into
//! the `200` its client expects, with the raw stream's bytes as the body. On a plain
//! HTTP/1.1 connection those bytes go past hyper ([`RawSend`]): from the agent's socket into
//! the client's with `splice`, never copied through the server. Other connections (TLS,
//! HTTP/2) get them read ahead in pieces.
//!
//! The agent is not trusted here any more than elsewhere: its length must be a number, the
//! body ends after that many bytes whatever follows, and a stream that ends before them is
//! an error, so the client sees its answer cut off rather than complete.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use axum::{
    body::Body,
    http::{HeaderValue, Method, Request, Response, StatusCode, header},
};
use bytes::Bytes;
use cove_proto::envd::{FILE_LENGTH_HEADER, FILE_UPGRADE};
use futures::{Stream, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, ReadBuf},
    net::UnixStream,
};

use crate::front::RawSend;

/// Bytes read from the agent's stream per piece of the body. With [`AHEAD`], a download
/// holds at most about 1 MiB of the server's memory (two pieces waiting, one being read, one
/// being written), as much as hyper's buffers held for it before: the front door's bound on
/// memory per connection (`front::config`) stays what it was.
const PIECE: usize = 256 << 10;

/// Asks for the upgrade when `request` is a download the client did not ask to upgrade
/// itself.
pub fn ask(request: &mut Request<Body>) {
    if request.method() == Method::GET
        && request.uri().path() == "/files"
        && !request.headers().contains_key(header::UPGRADE)
    {
        let headers = request.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static(FILE_UPGRADE));
    }
}

/// Whether `response` is the agent taking the upgrade.
pub fn taken(response: &Response<Body>) -> bool {
    response.status() == StatusCode::SWITCHING_PROTOCOLS
        && response
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(FILE_UPGRADE))
}

#[derive(Debug, thiserror::Error)]
pub enum FileUpgradeError {
    #[error("the agent's file upgrade has no valid {FILE_LENGTH_HEADER}")]
    Length,
    #[error("the agent's file upgrade failed")]
    Upgrade(#[from] hyper::Error),
}

/// The client's `200` for the agent's `101` ([`taken`]): the agent's headers but its
/// length, a `Content-Length`, and the stream's next `length` bytes as the body, past hyper
/// when `raw` allows it.
pub async fn answer(
    mut response: Response<Body>,
    raw: Option<RawSend>,
) -> Result<Response<Body>, FileUpgradeError> {
    let length: u64 = response
        .headers()
        .get(FILE_LENGTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or(FileUpgradeError::Length)?;
    let upgraded = hyper::upgrade::on(&mut response).await?;
    // `Connection` and `Upgrade` go with the other hop-by-hop headers (`response_back`).
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(FILE_LENGTH_HEADER);
    parts.headers.insert(header::CONTENT_LENGTH, length.into());
    parts.status = StatusCode::OK;
    Ok(Response::from_parts(parts, body(upgraded, length, raw)))
}

/// The next `length` bytes of the agent's stream as a body.
fn body(upgraded: Upgraded, length: u64, raw: Option<RawSend>) -> Body {
    let Some(raw) = raw else {
        return read_ahead(Bounded::new(TokioIo::new(upgraded), length));
    };
    let parts = match upgraded.downcast::<TokioIo<UnixStream>>() {
        Ok(parts) => parts,
        Err(upgraded) => return read_ahead(Bounded::new(TokioIo::new(upgraded), length)),
    };
    match raw.body(parts.read_buf, parts.io.into_inner(), length) {
        Ok(body) => body,
        Err((err, ahead, agent)) => {
            tracing::debug!(%err, "no pipe for a download; its bytes go through the server");
            // `ahead` is at most `length` bytes here.
            let rest = length - ahead.len() as u64;
            let ahead = futures::stream::iter((!ahead.is_empty()).then_some(Ok(ahead)));
            read_ahead(ahead.chain(Bounded::new(agent, rest)))
        }
    }
}

/// Pieces read ahead of the client: up to this many wait while one is being sent.
const AHEAD: usize = 2;

/// A body of `pieces`, read by a task of their own: reading the agent's stream and writing
/// the client's socket are both copies, and one task doing both keeps one CPU busy while the
/// other waits. The task ends when the body is dropped (the client went away), also while
/// it waits for the agent (a frozen sandbox, say).
fn read_ahead(pieces: impl Stream<Item = io::Result<Bytes>> + Send + 'static) -> Body {
    let (sender, receiver) = tokio::sync::mpsc::channel(AHEAD);
    tokio::spawn(async move {
        let mut pieces = std::pin::pin!(pieces);
        loop {
            let piece = tokio::select! {
                piece = pieces.next() => piece,
                () = sender.closed() => break,
            };
            let Some(piece) = piece else { break };
            let failed = piece.is_err();
            if sender.send(piece).await.is_err() || failed {
                break;
            }
        }
    });
    Body::from_stream(futures::stream::unfold(receiver, |mut receiver| async {
        let piece = receiver.recv().await?;
        Some((piece, receiver))
    }))
}

/// The next `rest` bytes of `stream`, in pieces of up to [`PIECE`] bytes; an error if it
/// ends before them.
struct Bounded<S> {
    stream: S,
    rest: u64,
    buffers: Buffers,
    /// The buffer a read that has to wait will fill.
    waiting: Option<Vec<u8>>,
}

impl<S> Bounded<S> {
    fn new(stream: S, rest: u64) -> Self {
        Self {
            stream,
            rest,
            buffers: Buffers::default(),
            waiting: None,
        }
    }
}

impl<S: AsyncRead + Unpin> Stream for Bounded<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.rest == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(self.rest).unwrap_or(usize::MAX).min(PIECE);
        let mut buffer = match self.waiting.take() {
            Some(buffer) => buffer,
            None => self.buffers.take(),
        };
        let mut read = ReadBuf::new(&mut buffer[..want]);
        let polled = Pin::new(&mut self.stream).poll_read(cx, &mut read);
        let read = read.filled().len();
        let piece = match polled {
            Poll::Pending => {
                self.waiting = Some(buffer);
                return Poll::Pending;
            }
            Poll::Ready(Err(err)) => {
                self.rest = 0;
                Err(err)
            }
            Poll::Ready(Ok(())) if read == 0 => {
                self.rest = 0;
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the agent's stream ended before the file did",
                ))
            }
            Poll::Ready(Ok(())) => {
                self.rest -= read as u64;
                Ok(Bytes::from_owner(Piece {
                    buffer,
                    len: read,
                    back: self.buffers.clone(),
                }))
            }
        };
        Poll::Ready(Some(piece))
    }
}

/// The buffers of one download, each used again once the client's socket has taken its
/// bytes. A fresh buffer per piece would be fresh memory every time, and on the VM the
/// benchmarks ran on, first touching fresh memory ran at 1.3–1.7 GiB/s (docs/profiles): page
/// faults were 12 % of both CPUs during a download read into new buffers.
#[derive(Clone, Default)]
struct Buffers(Arc<Mutex<Vec<Vec<u8>>>>);

impl Buffers {
    fn take(&self) -> Vec<u8> {
        let spare = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        spare.unwrap_or_else(|| vec![0; PIECE])
    }

    fn give_back(&self, buffer: Vec<u8>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buffer);
    }
}

/// A piece of the body: the first `len` bytes of `buffer`, which goes back once sent.
struct Piece {
    buffer: Vec<u8>,
    len: usize,
    back: Buffers,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        self.back.give_back(std::mem::take(&mut self.buffer));
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn collect(
        stream: impl Stream<Item = io::Result<Bytes>>,
    ) -> (Vec<u8>, Option<io::Error>) {
        let mut stream = std::pin::pin!(stream);
        let mut got = Vec::new();
        while let Some(piece) = stream.next().await {
            match piece {
                Ok(piece) => got.extend_from_slice(&piece),
                Err(err) => return (got, Some(err)),
            }
        }
        (got, None)
    }

    #[tokio::test]
    async fn the_body_ends_after_the_length_whatever_follows() {
        let (mut agent, server) = tokio::io::duplex(1 << 16);
        agent.write_all(&[7u8; 3000]).await.unwrap();
        let (got, err) = collect(Bounded::new(server, 2500)).await;
        assert!(err.is_none());
        assert_eq!(got, vec![7u8; 2500]);
    }

    #[tokio::test]
    async fn a_stream_that_ends_early_is_an_error() {
        let (mut agent, server) = tokio::io::duplex(1 << 16);
        agent.write_all(&[7u8; 1000]).await.unwrap();
        drop(agent);
        let (got, err) = collect(Bounded::new(server, 2500)).await;
        assert_eq!(got.len(), 1000);
        assert_eq!(err.unwrap().kind(), io::ErrorKind::UnexpectedEof);
    }

    /// A client that goes away while the agent sends nothing (a frozen sandbox) does not
    /// leave the reading task waiting on the agent's stream.
    #[tokio::test]
    async fn the_reader_lets_go_when_the_client_goes_away() {
        use tokio::io::AsyncReadExt;
        let (mut agent, server) = tokio::io::duplex(1 << 16);
        let body = read_ahead(Bounded::new(server, 1 << 20));
        drop(body);
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), agent.read(&mut byte))
            .await
            .expect("the reading task let go of the agent's stream");
        assert_eq!(read.unwrap(), 0);
    }

    #[test]
    fn only_plain_downloads_ask_for_the_upgrade() {
        let asks = |method: Method, uri: &str, upgrade: Option<&str>| {
            let mut request = Request::builder().method(method).uri(uri);
            if let Some(upgrade) = upgrade {
                request = request.header(header::UPGRADE, upgrade);
            }
            let mut request = request.body(Body::empty()).unwrap();
            ask(&mut request);
            request.headers().get(header::UPGRADE).cloned()
        };
        assert_eq!(
            asks(Method::GET, "/files?path=/a", None).unwrap(),
            FILE_UPGRADE
        );
        assert!(asks(Method::POST, "/files?path=/a", None).is_none());
        assert!(asks(Method::GET, "/filesystem", None).is_none());
        assert_eq!(
            asks(Method::GET, "/files", Some("websocket")).unwrap(),
            "websocket"
        );
    }
}
