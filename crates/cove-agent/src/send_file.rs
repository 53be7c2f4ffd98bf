//! Large downloads handed to the kernel ([`cove_proto::envd::FILE_UPGRADE`]).
//!
//! Sent as an HTTP body, every byte of a download is copied twice in the agent: from the
//! page cache into a buffer, and from that buffer into the socket. That was a quarter of
//! both CPUs during a 256 MiB download through `cove serve` (docs/profiles/download.svg).
//! When the server asks for the upgrade, the agent answers `101` instead and then calls
//! `sendfile` on the raw connection: the kernel hands the file's pages to the Unix socket
//! without copying them, and the server reads them from there.
//!
//! `sendfile` needs the connection's descriptor, which the upgraded stream does not give
//! (hyper wraps it in a type of its own): the listener hands every request a duplicate of
//! its connection's descriptor ([`Socket`]), and the upgraded stream is held, untouched,
//! while the bytes go out through that duplicate.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    sync::Arc,
};

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use cove_proto::envd::{FILE_LENGTH_HEADER, FILE_UPGRADE, FILE_UPGRADE_MIN_BYTES};
use futures::StreamExt;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::UnixStream,
};

/// Most bytes one `sendfile` call is asked for: the socket takes at most its send buffer
/// (4 MiB, `listener`) per call anyway.
const MOST_PER_CALL: usize = 8 << 20;

/// A duplicate of the descriptor of the connection a request came on, in every request's
/// extensions (as axum's `ConnectInfo`). `None` when it could not be duplicated (the process
/// is out of descriptors): downloads then go through the upgraded stream.
#[derive(Clone, Debug)]
pub struct Socket(Option<Arc<OwnedFd>>);

impl Socket {
    /// A duplicate of `stream`'s descriptor.
    pub fn of(stream: &impl AsFd) -> Self {
        Self(stream.as_fd().try_clone_to_owned().ok().map(Arc::new))
    }

    /// The duplicate, when there is one.
    pub(crate) fn descriptor(self) -> Option<Arc<OwnedFd>> {
        self.0
    }
}

/// Whether the request asks for the upgrade, for a file of `length` bytes that goes out as
/// it is (not compressed).
pub fn wanted(headers: &HeaderMap, length: u64) -> bool {
    length >= FILE_UPGRADE_MIN_BYTES
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(FILE_UPGRADE))
}

/// The `101` answer with the download's `headers`, and the task that sends `head` and then
/// `file` from where `head` ends, `length` bytes in all, once the connection is the raw
/// stream. A file that shrank meanwhile ends the stream short, and the server cuts its
/// client's answer off; one that grew goes out as long as it was.
pub fn respond(
    on_upgrade: OnUpgrade,
    socket: Option<Socket>,
    mut headers: HeaderMap,
    head: Bytes,
    file: std::fs::File,
    length: u64,
) -> Response {
    tokio::spawn(async move {
        let sent = match on_upgrade.await {
            Ok(upgraded) => match socket.and_then(|s| s.0) {
                Some(socket) => send(socket, upgraded, head, file, length).await,
                None => copy(upgraded, head, file, length).await,
            },
            Err(err) => Err(io::Error::other(err)),
        };
        if let Err(err) = sent {
            tracing::debug!(%err, "a download through the file upgrade ended early");
        }
    });
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(FILE_UPGRADE));
    headers.insert(FILE_LENGTH_HEADER, HeaderValue::from(length));
    (StatusCode::SWITCHING_PROTOCOLS, headers).into_response()
}

/// Sends `head`, then `file` from where `head` ends with `sendfile`, `length` bytes in all,
/// through `socket`: the descriptor of the connection `upgraded` holds, which stays
/// untouched (and open) until the end.
async fn send(
    socket: Arc<OwnedFd>,
    upgraded: Upgraded,
    head: Bytes,
    file: std::fs::File,
    length: u64,
) -> io::Result<()> {
    let mut rest = rest_after(&head, length)?;
    // Its own duplicate, registered with the runtime for readiness (the connection's
    // description is non-blocking already).
    let mut socket = UnixStream::from_std(std::os::unix::net::UnixStream::from(
        socket.as_fd().try_clone_to_owned()?,
    ))?;
    socket.write_all(&head).await?;
    let mut offset = head.len() as u64;
    while rest > 0 {
        let want = usize::try_from(rest)
            .unwrap_or(usize::MAX)
            .min(MOST_PER_CALL);
        socket.writable().await?;
        // A page the cache does not hold yet is read in this call, on this thread: at most
        // one socket buffer's worth per call.
        let sent = socket.try_io(Interest::WRITABLE, || {
            Ok(rustix::fs::sendfile(
                &socket,
                &file,
                Some(&mut offset),
                want,
            )?)
        });
        match sent {
            Ok(0) => return Err(shrank()),
            Ok(sent) => rest -= (sent as u64).min(rest),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    rustix::net::shutdown(&socket, rustix::net::Shutdown::Write)?;
    drop(upgraded);
    Ok(())
}

/// [`send`] without the connection's descriptor: through the upgraded stream, the file
/// read as an ordinary download reads it.
async fn copy(upgraded: Upgraded, head: Bytes, file: std::fs::File, length: u64) -> io::Result<()> {
    let mut rest = rest_after(&head, length)?;
    let mut upgraded = TokioIo::new(upgraded);
    upgraded.write_all(&head).await?;
    let mut pieces = std::pin::pin!(crate::files::read_ahead(Bytes::new(), file, rest));
    while let Some(piece) = pieces.next().await {
        let piece = piece?;
        rest -= (piece.len() as u64).min(rest);
        upgraded.write_all(&piece).await?;
    }
    if rest > 0 {
        return Err(shrank());
    }
    upgraded.shutdown().await
}

/// What is left to send of a file of `length` bytes after `head`.
fn rest_after(head: &Bytes, length: u64) -> io::Result<u64> {
    length
        .checked_sub(head.len() as u64)
        .ok_or_else(|| io::Error::other("the head is longer than the file"))
}

fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the file shrank during its download",
    )
}
