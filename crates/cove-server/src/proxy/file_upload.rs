//! Large raw uploads handed to the agent through the file upgrade
//! ([`cove_proto::envd::FILE_UPGRADE`]): the proxy sends a `POST /files` of a raw body of
//! at least [`FILE_UPGRADE_MIN_BYTES`] as the same request without its body. An agent that
//! takes it answers `101` once the file is ready; then the body goes down the raw
//! connection, and the agent's answer comes back on it.
//!
//! On a plain HTTP/1.1 connection the body goes past hyper ([`RawBody`]): what hyper had
//! read ahead goes through the request's body, the rest with `splice`, from the client's
//! socket into a pipe and from the pipe into the agent's socket, without being copied
//! through the server. Other connections (TLS, HTTP/2), and gVisor's agents (see
//! `AgentEndpoint::reads_deep_queues`), get the body's frames as they come.
//!
//! Nothing is taken on trust from the client or the agent: the body is exactly its
//! `Content-Length` (a client that stops before it is an error, one that stalls fails after
//! the body read timeout), and the agent's answer is bounded and must have its form.

use std::{io, time::Duration};

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderValue, Method, StatusCode, header},
    response::Response,
};
use cove_proto::envd::{
    FILE_LENGTH_HEADER, FILE_UPGRADE, FILE_UPGRADE_MIN_BYTES, UPLOAD_ANSWER_MAX_BYTES,
    parse_upload_answer,
};
use futures::FutureExt;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{TcpStream, UnixStream},
};

use crate::{
    front::{BodyError, Hold, RawBody},
    lifecycle::Live,
    splice::Pipe,
};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the agent's file upgrade failed")]
    Upgrade(#[from] hyper::Error),
    #[error("the agent's upgraded connection is not a Unix socket")]
    NotUnix,
    #[error("the upload's body could not be read")]
    Body(#[source] axum::Error),
    #[error("the upload stalled")]
    Stalled(#[source] BodyError),
    #[error("the client stopped {0} bytes before the upload's Content-Length")]
    Ended(u64),
    #[error("cannot read the upload from the client's socket")]
    Client(#[source] io::Error),
    #[error("the server has no descriptor to spare for an upload")]
    Resources(#[source] io::Error),
    #[error("the agent's connection failed during an upload")]
    Agent(#[source] io::Error),
    #[error("the agent's answer to an upload is not one")]
    Answer,
}

impl UploadError {
    /// Whether the client, not the sandbox, ended the upload (its answer is a 400).
    pub fn is_clients(&self) -> bool {
        matches!(self, Self::Body(_) | Self::Ended(_) | Self::Client(_))
    }

    /// Whether the server ran short of descriptors (its answer is a 503).
    pub fn is_shortage(&self) -> bool {
        matches!(self, Self::Resources(_))
    }
}

/// The length of `request`'s body when it is an upload to send through the upgrade: a
/// `POST /files` of a raw body (no content coding) of at least [`FILE_UPGRADE_MIN_BYTES`].
pub fn eligible(request: &Request) -> Option<u64> {
    let headers = request.headers();
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let raw = text(header::CONTENT_TYPE).is_none_or(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("application/octet-stream")
    });
    let plain = text(header::CONTENT_ENCODING)
        .is_none_or(|ce| ce.is_empty() || ce.eq_ignore_ascii_case("identity"));
    if request.method() != Method::POST
        || request.uri().path() != "/files"
        || headers.contains_key(header::UPGRADE)
        || !raw
        || !plain
    {
        return None;
    }
    text(header::CONTENT_LENGTH)
        .and_then(|v| v.parse().ok())
        .filter(|&length| length >= FILE_UPGRADE_MIN_BYTES)
}

/// Sends the upload `request` of `length` bytes to `live`'s agent through the upgrade; the
/// agent's refusal as it is, or its answer once it has the file. `received` counts the
/// bytes taken past the request's body.
pub async fn send(
    live: &Live,
    request: Request,
    length: u64,
    received: Counter,
) -> Result<Response, UploadError> {
    let (mut parts, body) = request.into_parts();
    let raw = parts.extensions.remove::<RawBody>();
    // Pages spliced into a gVisor agent's socket are never read there.
    let raw = raw.filter(|_| live.agent().reads_deep_queues());
    let headers = &mut parts.headers;
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    // The body is not asked for over this request: nothing to wait for.
    headers.remove(header::EXPECT);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(FILE_UPGRADE));
    headers.insert(FILE_LENGTH_HEADER, HeaderValue::from(length));
    let mut response = live
        .links()
        .send(Request::from_parts(parts, Body::empty()))
        .await
        .map_err(|err| UploadError::Agent(io::Error::other(err)))?;
    if !super::file_upgrade::taken(&response) {
        // A refusal: the client's body is left unread, for the front to drain or close.
        return Ok(response);
    }
    let upgraded = hyper::upgrade::on(&mut response).await?;
    let parts = upgraded
        .downcast::<TokioIo<UnixStream>>()
        .map_err(|_| UploadError::NotUnix)?;
    // The agent writes nothing before the whole body (its answer comes after).
    if !parts.read_buf.is_empty() {
        return Err(UploadError::Answer);
    }
    let mut agent = parts.io.into_inner();
    let carried = carry(raw, body, &mut agent, length, received).await;
    match carried {
        Ok(()) => {}
        // The agent stopped taking the body: its answer says why.
        Err(UploadError::Agent(err)) => {
            return answer(&mut agent)
                .await
                .map_err(|_| UploadError::Agent(err));
        }
        Err(err) => return Err(err),
    }
    answer(&mut agent).await
}

/// Moves the body's `length` bytes to `agent`: past hyper when `raw` allows it.
async fn carry(
    raw: Option<RawBody>,
    mut body: Body,
    agent: &mut UnixStream,
    length: u64,
    received: Counter,
) -> Result<(), UploadError> {
    let Some(raw) = raw else {
        let sent = forward_frames(&mut body, agent, None).await?;
        return ensure_whole(sent, length);
    };
    let mut hold = raw.hold();
    let sent = forward_frames(&mut body, agent, Some(&hold)).await?;
    if sent >= length {
        return ensure_whole(sent, length);
    }
    let client = hold.socket().map_err(UploadError::Resources)?;
    let client =
        TcpStream::from_std(std::net::TcpStream::from(client)).map_err(UploadError::Resources)?;
    splice(
        &client,
        agent,
        length - sent,
        &mut hold,
        raw.stall_limit(),
        &received,
    )
    .await
}

fn ensure_whole(sent: u64, length: u64) -> Result<(), UploadError> {
    if sent < length {
        return Err(UploadError::Ended(length - sent));
    }
    Ok(())
}

/// Writes `body`'s frames to `agent`: all of them, or with `hold`, those hyper had read
/// before it was held. How many bytes they had.
async fn forward_frames(
    body: &mut Body,
    agent: &mut UnixStream,
    hold: Option<&Hold>,
) -> Result<u64, UploadError> {
    let mut sent = 0u64;
    let held = async {
        match hold {
            Some(hold) => hold.hyper_waiting().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(held);
    let mut hyper_waits = false;
    loop {
        // Once hyper waits for the socket, only the frame it may have left is taken.
        let frame = if hyper_waits {
            match body.frame().now_or_never() {
                Some(frame) => frame,
                None => return Ok(sent),
            }
        } else {
            tokio::select! {
                biased;
                frame = body.frame() => frame,
                () = &mut held => {
                    hyper_waits = true;
                    continue;
                }
            }
        };
        let Some(frame) = frame else {
            return Ok(sent);
        };
        let frame = frame.map_err(UploadError::Body)?;
        if let Ok(data) = frame.into_data() {
            agent.write_all(&data).await.map_err(UploadError::Agent)?;
            sent += data.len() as u64;
        }
    }
}

/// Moves `rest` bytes from `client` to `agent` through a pipe, in rounds: what the client's
/// socket has (up to the pipe's size) goes into the pipe, then all of it into the agent's
/// socket. Stops early, with [`UploadError::Agent`], when the agent answers or fails first.
async fn splice(
    client: &TcpStream,
    agent: &UnixStream,
    mut rest: u64,
    hold: &mut Hold,
    stall: Option<Duration>,
    received: &Counter,
) -> Result<(), UploadError> {
    let pipe = Pipe::new().map_err(UploadError::Resources)?;
    while rest > 0 {
        let want = usize::try_from(rest).unwrap_or(usize::MAX).min(pipe.room);
        // The pipe is empty here, so a splice that cannot go on waits for the client.
        let taken = client.try_io(Interest::READABLE, || {
            crate::splice::splice(client, &pipe.to, want)
        });
        let mut in_pipe = match taken {
            Ok(0) => return Err(UploadError::Ended(rest)),
            Ok(taken) => taken,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                await_client(client, agent, stall).await?;
                continue;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(UploadError::Client(err)),
        };
        rest -= in_pipe as u64;
        hold.took(in_pipe as u64);
        received.inc_by(in_pipe as u64);
        while in_pipe > 0 {
            let given = agent.try_io(Interest::WRITABLE, || {
                crate::splice::splice(&pipe.from, agent, in_pipe)
            });
            match given {
                Ok(given) => in_pipe -= given,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    await_agent(agent).await?;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(UploadError::Agent(err)),
            }
        }
    }
    Ok(())
}

/// Waits until the client's socket has bytes; fails after `stall` without any, or when the
/// agent answers meanwhile (it gave up on the upload).
async fn await_client(
    client: &TcpStream,
    agent: &UnixStream,
    stall: Option<Duration>,
) -> Result<(), UploadError> {
    let silence = async {
        match stall {
            Some(limit) => {
                tokio::time::sleep(limit).await;
                limit
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        ready = client.readable() => ready.map_err(UploadError::Client),
        _ = agent.readable() => Err(gave_up()),
        limit = silence => Err(UploadError::Stalled(BodyError::Stalled(limit))),
    }
}

/// Waits until the agent's socket takes bytes again, or the agent answers meanwhile.
async fn await_agent(agent: &UnixStream) -> Result<(), UploadError> {
    tokio::select! {
        ready = agent.writable() => ready.map_err(UploadError::Agent),
        _ = agent.readable() => Err(gave_up()),
    }
}

fn gave_up() -> UploadError {
    UploadError::Agent(io::Error::other(
        "the agent answered before the upload's end",
    ))
}

/// The agent's answer on `agent`, as the client's response.
async fn answer(agent: &mut UnixStream) -> Result<Response, UploadError> {
    let mut answer = Vec::new();
    let limit = u64::try_from(UPLOAD_ANSWER_MAX_BYTES + 1).unwrap_or(u64::MAX);
    (&mut *agent)
        .take(limit)
        .read_to_end(&mut answer)
        .await
        .map_err(UploadError::Agent)?;
    if answer.len() > UPLOAD_ANSWER_MAX_BYTES {
        return Err(UploadError::Answer);
    }
    let (status, json) = parse_upload_answer(&answer).ok_or(UploadError::Answer)?;
    // A final answer: an informational one would read to the client as something else.
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(|status| !status.is_informational())
        .ok_or(UploadError::Answer)?;
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json.to_vec()))
        .map_err(|_| UploadError::Answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_raw_uploads_go_through_the_upgrade() {
        let big = FILE_UPGRADE_MIN_BYTES.to_string();
        let small = (FILE_UPGRADE_MIN_BYTES - 1).to_string();
        let request = |method: Method, uri: &str, headers: &[(&str, &str)]| {
            let mut request = Request::builder().method(method).uri(uri);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.body(Body::empty()).unwrap()
        };
        let raw = [
            ("content-type", "application/octet-stream"),
            ("content-length", big.as_str()),
        ];
        assert_eq!(
            eligible(&request(Method::POST, "/files?path=/a", &raw)),
            Some(FILE_UPGRADE_MIN_BYTES)
        );
        assert_eq!(
            eligible(&request(
                Method::POST,
                "/files?path=/a",
                &[("content-length", big.as_str())]
            )),
            Some(FILE_UPGRADE_MIN_BYTES),
            "the agent reads a body without a type as raw"
        );
        for (method, uri, headers) in [
            (Method::PUT, "/files?path=/a", raw.to_vec()),
            (Method::POST, "/filesystem", raw.to_vec()),
            (
                Method::POST,
                "/files?path=/a",
                vec![
                    ("content-type", "application/octet-stream"),
                    ("content-length", small.as_str()),
                ],
            ),
            (
                Method::POST,
                "/files?path=/a",
                vec![
                    ("content-type", "multipart/form-data; boundary=x"),
                    ("content-length", big.as_str()),
                ],
            ),
            (
                Method::POST,
                "/files?path=/a",
                [raw.as_slice(), &[("content-encoding", "gzip")]].concat(),
            ),
            (
                Method::POST,
                "/files?path=/a",
                [raw.as_slice(), &[("upgrade", "websocket")]].concat(),
            ),
            (
                Method::POST,
                "/files?path=/a",
                vec![("content-type", "application/octet-stream")],
            ),
        ] {
            assert_eq!(
                eligible(&request(method.clone(), uri, &headers)),
                None,
                "{method} {uri} {headers:?}"
            );
        }
    }
}
