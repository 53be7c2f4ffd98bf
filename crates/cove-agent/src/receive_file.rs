//! Large raw uploads taken from the socket ([`cove_proto::envd::FILE_UPGRADE`] on
//! `POST /files`).
//!
//! Received as an HTTP body, every byte of an upload is copied three times in the agent:
//! from the socket into hyper's buffer, from there into a write buffer, and from that into
//! the page cache. When the server asks for the upgrade, the agent checks the upload and
//! makes its file ready first (a refusal is the ordinary answer), answers `101`, and then
//! moves the bytes with `splice`: the socket's pages go into a pipe without a copy, and
//! from the pipe into the file's page cache with one. Its answer follows on the same
//! connection ([`cove_proto::envd::upload_answer`]).
//!
//! As for downloads ([`crate::send_file`]), the descriptor comes from the duplicate the
//! listener puts into every request; a connection without one (gVisor's listener, TCP) gets
//! its bytes through the upgraded stream.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use cove_proto::envd::{FILE_LENGTH_HEADER, FILE_UPGRADE, upload_answer};
use futures::StreamExt;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use rustix::{
    event::{PollFd, PollFlags},
    io::Errno,
    pipe::{PipeFlags, SpliceFlags},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::{
    files::{self, CopyError, Target},
    rest::RestError,
    send_file::Socket,
};

/// The pipe between the socket and the file: as much as one `splice` moves.
const PIPE_BYTES: usize = 1 << 20;

/// How long the socket may stay silent before the upload is given up. The server cuts a
/// client that stalls long before this, and closes the connection when it gives up.
const SILENCE: Duration = Duration::from_secs(300);

/// The length of the raw body the request asks to send through the upgrade; `None` when it
/// does not ask; a 400 when it asks without a valid length.
pub(crate) fn wanted(headers: &HeaderMap) -> Option<Result<u64, RestError>> {
    let asks = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(FILE_UPGRADE));
    if !asks {
        return None;
    }
    Some(
        headers
            .get(FILE_LENGTH_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                RestError::bad_request(format!(
                    "an upload through the {FILE_UPGRADE} upgrade needs {FILE_LENGTH_HEADER}"
                ))
            }),
    )
}

/// The `101` answer, and the task that receives `length` bytes into `target` once the
/// connection is the raw stream, then answers there.
pub(crate) fn respond(
    on_upgrade: OnUpgrade,
    socket: Option<Socket>,
    target: Target,
    metadata: BTreeMap<String, String>,
    length: u64,
) -> Response {
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(%err, "an upload through the file upgrade never started");
                return;
            }
        };
        let mut upgraded = TokioIo::new(upgraded);
        let socket = socket.and_then(|s| s.descriptor());
        let outcome = receive(&mut upgraded, socket, target, metadata, length).await;
        let answer = match outcome {
            Ok(written) => upload_answer(200, &serde_json::to_vec(&written).unwrap_or_default()),
            Err(err) => {
                let body = cove_proto::rest::ApiError {
                    code: err.status.as_u16(),
                    message: err.message,
                };
                upload_answer(
                    err.status.as_u16(),
                    &serde_json::to_vec(&body).unwrap_or_default(),
                )
            }
        };
        let sent = async {
            upgraded.write_all(&answer).await?;
            upgraded.shutdown().await
        };
        if let Err(err) = sent.await {
            tracing::debug!(%err, "the answer to an upload through the file upgrade was lost");
        }
    });
    let mut headers = HeaderMap::new();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(FILE_UPGRADE));
    (StatusCode::SWITCHING_PROTOCOLS, headers).into_response()
}

/// Receives the upload into `target` and puts the file in place: what the answer reports.
async fn receive(
    upgraded: &mut TokioIo<Upgraded>,
    socket: Option<Arc<OwnedFd>>,
    mut target: Target,
    metadata: BTreeMap<String, String>,
    length: u64,
) -> Result<Vec<files::WrittenEntry>, RestError> {
    let path = target.path().to_path_buf();
    let file = target
        .file()
        .try_clone()
        .map_err(|err| files::write_failed(&path, "open", &err))?;
    let copied = match socket {
        Some(socket) => {
            tokio::task::spawn_blocking(move || splice_in(socket.as_fd(), &file, length))
                .await
                .unwrap_or_else(|err| Err(CopyError::Write(io::Error::other(err))))
        }
        None => copy_in(upgraded, file, length).await,
    };
    copied.map_err(|err| files::copy_failed(&path, err))?;
    target.finish_async(&metadata).await?;
    Ok(vec![files::describe(&path)])
}

/// [`splice_in`] without the connection's descriptor: the upgraded stream's bytes written
/// as an ordinary upload's body is.
async fn copy_in(
    upgraded: &mut TokioIo<Upgraded>,
    file: std::fs::File,
    length: u64,
) -> Result<(), CopyError> {
    let mut received = 0u64;
    let body = ReaderStream::with_capacity(upgraded.take(length), PIPE_BYTES).inspect(|piece| {
        if let Ok(piece) = piece {
            received += piece.len() as u64;
        }
    });
    files::copy_in_chunks(body, file).await?;
    if received < length {
        return Err(ended_early());
    }
    Ok(())
}

/// Moves `length` bytes from `socket` into `file` through a pipe, blocking. When the file
/// fails (a full disk), the rest is read and thrown away for up to
/// [`files::ERROR_DRAIN_TIME`] (so that the server is not left writing into a socket nobody
/// reads), and the file's error is what comes back.
fn splice_in(socket: BorrowedFd<'_>, file: &std::fs::File, length: u64) -> Result<(), CopyError> {
    let (from_pipe, to_pipe) =
        rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(|err| CopyError::Write(err.into()))?;
    // Without a larger pipe (a lower `pipe-max-size`), pieces are the default 64 KiB.
    let room = rustix::pipe::fcntl_setpipe_size(&to_pipe, PIPE_BYTES)
        .or_else(|_| rustix::pipe::fcntl_getpipe_size(&to_pipe))
        .map_err(|err| CopyError::Write(err.into()))?;
    let mut rest = length;
    let mut failed: Option<(io::Error, Instant)> = None;
    while rest > 0 {
        let want = usize::try_from(rest).unwrap_or(usize::MAX).min(room);
        // The pipe is empty here: each piece is moved on before the next is taken.
        let moved = match rustix::pipe::splice(
            socket,
            None,
            &to_pipe,
            None,
            want,
            SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
        ) {
            Ok(0) => return Err(ended_early()),
            Ok(moved) => moved,
            Err(Errno::AGAIN) => {
                await_bytes(socket)?;
                continue;
            }
            Err(Errno::INTR) => continue,
            Err(err) => return Err(CopyError::Read(err.into())),
        };
        rest -= moved as u64;
        match &failed {
            None => {
                if let Err(err) = drain_pipe(&from_pipe, file, moved) {
                    failed = Some((err, Instant::now() + files::ERROR_DRAIN_TIME));
                    discard(&from_pipe)?;
                }
            }
            Some((_, until)) => {
                discard(&from_pipe)?;
                if Instant::now() >= *until {
                    break;
                }
            }
        }
    }
    match failed {
        Some((err, _)) => Err(CopyError::Write(err)),
        None => Ok(()),
    }
}

/// Moves `len` bytes from the pipe into `file`.
fn drain_pipe(pipe: &OwnedFd, file: &std::fs::File, mut len: usize) -> io::Result<()> {
    while len > 0 {
        match rustix::pipe::splice(pipe, None, file, None, len, SpliceFlags::MOVE) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(written) => len -= written,
            Err(Errno::INTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Reads what is left in the pipe and throws it away.
fn discard(pipe: &OwnedFd) -> Result<(), CopyError> {
    let mut buffer = [0u8; 64 << 10];
    loop {
        // The pipe is blocking: ask only for what it holds.
        let held = rustix::io::ioctl_fionread(pipe).map_err(|err| CopyError::Read(err.into()))?;
        if held == 0 {
            return Ok(());
        }
        let want = usize::try_from(held)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        match rustix::io::read(pipe, &mut buffer[..want]) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(err) => return Err(CopyError::Read(err.into())),
        }
    }
}

/// Waits until `socket` has bytes (or has ended), for at most [`SILENCE`].
fn await_bytes(socket: BorrowedFd<'_>) -> Result<(), CopyError> {
    let timeout = rustix::event::Timespec {
        tv_sec: SILENCE.as_secs() as _,
        tv_nsec: 0,
    };
    let mut fds = [PollFd::new(&socket, PollFlags::IN)];
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(0) => Err(CopyError::Read(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no byte of the upload came for {SILENCE:?}"),
        ))),
        Ok(_) | Err(Errno::INTR) => Ok(()),
        Err(err) => Err(CopyError::Read(err.into())),
    }
}

fn ended_early() -> CopyError {
    CopyError::Read(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the upload ended before its length",
    ))
}

#[cfg(test)]
mod tests {
    use std::{io::Write, os::unix::net::UnixStream};

    use super::*;

    /// A connected pair: the far end written by a thread, the near end non-blocking (as the
    /// agent's connections are).
    fn sent(bytes: Vec<u8>) -> (UnixStream, std::thread::JoinHandle<()>) {
        let (mut far, near) = UnixStream::pair().unwrap();
        near.set_nonblocking(true).unwrap();
        let writer = std::thread::spawn(move || {
            far.write_all(&bytes).unwrap();
        });
        (near, writer)
    }

    #[test]
    fn every_byte_arrives_in_order() {
        let content: Vec<u8> = (0..(3 << 20) + 777).map(|i| (i % 253) as u8).collect();
        let (near, writer) = sent(content.clone());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::File::create(&path).unwrap();
        splice_in(near.as_fd(), &file, content.len() as u64).unwrap();
        writer.join().unwrap();
        assert!(std::fs::read(&path).unwrap() == content);
    }

    #[test]
    fn a_stream_that_ends_early_is_the_uploads_fault() {
        let (near, writer) = sent(vec![1; 1 << 20]);
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        let err = splice_in(near.as_fd(), &file, 2 << 20).unwrap_err();
        writer.join().unwrap();
        assert!(
            matches!(&err, CopyError::Read(e) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{err:?}"
        );
    }

    /// A file that fails is the file's fault, and the rest is still read: the sender is
    /// not left blocked on a socket nobody reads.
    #[test]
    fn after_the_file_fails_the_rest_is_read() {
        let (near, writer) = sent(vec![2; 3 << 20]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        let read_only = std::fs::File::open(&path).unwrap();
        let err = splice_in(near.as_fd(), &read_only, 3 << 20).unwrap_err();
        assert!(matches!(err, CopyError::Write(_)), "{err:?}");
        writer.join().unwrap();
    }
}
