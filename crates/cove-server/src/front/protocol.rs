//! Which HTTP a connection speaks, and the hyper connection that serves it: HTTP/2 when its
//! first bytes are HTTP/2's connection preface (h2c with prior knowledge, or h2 chosen over
//! TLS), HTTP/1.1 with upgrades otherwise.
//!
//! Cove tells the two apart itself rather than through hyper-util's `auto` builder because
//! that builder does not pass on HTTP/1.1's `max_header_size`: without it, hyper bounds a
//! request's head only by its read buffer, and a read buffer as small as a head bound makes
//! every upload move in head-sized pieces.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::{
    config::{
        H2_MAX_CONCURRENT_STREAMS, H2_PING_INTERVAL, H2_PING_TIMEOUT, MAX_HEADER_BYTES,
        MAX_HEADERS, MAX_READ_BUFFER,
    },
    service::ConnectionService,
};

/// What an HTTP/2 client sends before anything else (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol settings every connection is served with.
pub struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    pub fn new() -> Self {
        let mut http1 = http1::Builder::new();
        http1
            // Our watchdog times header reads (hyper's own timer would also cut idle
            // kept-alive connections at the header timeout).
            .header_read_timeout(None)
            // A longer head is answered 431, and no more of it is buffered.
            .max_header_size(MAX_HEADER_BYTES)
            .max_headers(MAX_HEADERS)
            .max_buf_size(MAX_READ_BUFFER);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT)
            // WebSockets over HTTP/2 (RFC 8441), as axum::serve offers them.
            .enable_connect_protocol();
        Self { http1, http2 }
    }

    /// Reads as much of `io`'s first bytes as tells whether they are HTTP/2's preface, then
    /// serves the connection in that protocol (the bytes read are served too). Returns
    /// when the first bytes are in, or with the error that ended the connection before.
    pub async fn serve<I>(&self, mut io: I, service: ConnectionService) -> io::Result<Connection<I>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut first = [0; PREFACE.len()];
        let mut filled = 0;
        let http2 = loop {
            if filled == PREFACE.len() {
                break true;
            }
            let n = io.read(&mut first[filled..]).await?;
            filled += n;
            // A difference, or the end of the stream: HTTP/1.1 (whose parser says what is
            // wrong with it).
            if n == 0 || first[..filled] != PREFACE[..filled] {
                break false;
            }
        };
        let io = TokioIo::new(Rewind {
            first,
            next: 0,
            filled,
            io,
        });
        Ok(if http2 {
            Connection::Http2(Box::pin(self.http2.serve_connection(io, service)))
        } else {
            Connection::Http1(Box::pin(
                self.http1.serve_connection(io, service).with_upgrades(),
            ))
        })
    }
}

type Http1<I> = http1::UpgradeableConnection<TokioIo<Rewind<I>>, ConnectionService>;
type Http2<I> = http2::Connection<TokioIo<Rewind<I>>, ConnectionService, TokioExecutor>;

/// A connection being served; resolves when it ends.
pub enum Connection<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Http1(Pin<Box<Http1<I>>>),
    Http2(Pin<Box<Http2<I>>>),
}

impl<I> Connection<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Finishes the requests in flight, takes no new ones (HTTP/2 says goodbye), then ends.
    pub fn graceful_shutdown(&mut self) {
        match self {
            Self::Http1(connection) => connection.as_mut().graceful_shutdown(),
            Self::Http2(connection) => connection.as_mut().graceful_shutdown(),
        }
    }
}

impl<I> Future for Connection<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Self::Http1(connection) => connection.as_mut().poll(cx),
            Self::Http2(connection) => connection.as_mut().poll(cx),
        }
    }
}

/// A connection's stream with the bytes read to tell its protocol put back in front.
pub struct Rewind<I> {
    first: [u8; PREFACE.len()],
    /// `first[next..filled]` is still to be read.
    next: usize,
    filled: usize,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.next < this.filled {
            let n = (this.filled - this.next).min(buf.remaining());
            buf.put_slice(&this.first[this.next..this.next + n]);
            this.next += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Reads everything `Rewind` gives, in reads of at most `chunk` bytes.
    async fn read_all(mut rewind: Rewind<tokio::io::DuplexStream>, chunk: usize) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            let n = rewind.read(&mut buf).await.unwrap();
            if n == 0 {
                return all;
            }
            all.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn the_bytes_read_to_tell_the_protocol_are_read_again_first() {
        for chunk in [1, 5, 64] {
            let (mut client, server) = tokio::io::duplex(64);
            let mut first = [0; PREFACE.len()];
            first[..4].copy_from_slice(b"GET ");
            let rewind = Rewind {
                first,
                next: 0,
                filled: 4,
                io: server,
            };
            client.write_all(b"/ HTTP/1.1\r\n\r\n").await.unwrap();
            drop(client);
            assert_eq!(read_all(rewind, chunk).await, b"GET / HTTP/1.1\r\n\r\n");
        }
    }
}
