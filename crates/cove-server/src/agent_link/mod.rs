//! Talking to a sandbox's agent at the endpoint its runtime gave: connections for the proxy,
//! and the few calls the server makes itself (`/init` when a sandbox is handed out,
//! `/metrics`).
//!
//! The endpoint lies where nothing inside a sandbox can change it (see the runtime), and the
//! server checks whom it reached: the socket must have been made by the server's own user
//! (host root), as every sandbox's is, so a socket put there by anyone else is refused. An
//! endpoint in a directory the sandbox can write ([`AgentEndpoint::UnixInSandbox`]) is never
//! connected to by name (see `cove_runtime::endpoint`).

use axum::body::Body;
use cove_runtime::AgentEndpoint;
use http::{StatusCode, header};
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;

mod links;

pub use links::Links;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to the agent")]
    Connect(#[source] std::io::Error),
    #[error("the agent's socket was made by uid {0}, not by the server's user; refusing it")]
    Impostor(u32),
    #[error("HTTP exchange with the agent failed")]
    Http(#[from] hyper::Error),
    #[error("the agent answered {0}")]
    Status(StatusCode),
    #[error("the agent's answer is unreadable: {0}")]
    Body(String),
}

/// An HTTP/1.1 connection to the agent at `endpoint` (upgrades allowed).
pub async fn connect(endpoint: &AgentEndpoint) -> Result<SendRequest<Body>, LinkError> {
    // A socket in a directory the sandbox can write is pinned (no symlink followed, a
    // socket and nothing else) and connected to through that descriptor.
    let target = endpoint.resolve().map_err(LinkError::Connect)?;
    let stream = UnixStream::connect(target.path())
        .await
        .map_err(LinkError::Connect)?;
    drop(target);
    // The credentials of whoever made the listening socket: the runtime, as this server's
    // own user. Under gVisor the listening socket on the host is made by the sandbox's
    // gofer (runsc's file proxy, host root) on behalf of the agent, so it is the gofer's.
    let peer = stream.peer_cred().map_err(LinkError::Connect)?;
    if peer.uid() != rustix::process::geteuid().as_raw() {
        return Err(LinkError::Impostor(peer.uid()));
    }
    if endpoint.reads_deep_queues() {
        widen_send_buffer(&stream);
    }
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(?err, "agent connection ended with an error");
        }
    });
    Ok(sender)
}

/// What the server may have sent to an agent that it has not read yet. A Unix stream socket
/// holds only what its sender's buffer allows (212,992 bytes by default): an upload then
/// moves in steps of that size, every one waiting for the agent to be scheduled. With 4 MiB
/// the official Python SDK's 256 MiB upload went from 0.50 to 0.57–0.65 GiB/s
/// (docs/BENCHMARKS.md). Kernel memory, used only while the agent lags behind. Not for a
/// gVisor agent, whose reads stall on such a queue (`AgentEndpoint::reads_deep_queues`).
const AGENT_SEND_BUFFER: usize = 4 << 20;

/// Gives `stream` a send buffer of [`AGENT_SEND_BUFFER`]: past the host's `wmem_max` where
/// the server may (it runs as root), else as much as that allows.
fn widen_send_buffer(stream: &UnixStream) {
    use rustix::net::sockopt;
    let widened = sockopt::set_socket_send_buffer_size_force(stream, AGENT_SEND_BUFFER)
        .or_else(|_| sockopt::set_socket_send_buffer_size(stream, AGENT_SEND_BUFFER));
    if let Err(err) = widened {
        tracing::debug!(?err, "the agent link keeps its default send buffer");
    }
}

async fn call(links: &Links, request: http::Request<Body>) -> Result<bytes::Bytes, LinkError> {
    let response = links.send(request).await?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| LinkError::Body(e.to_string()))?
        .to_bytes();
    if status.is_success() {
        Ok(body)
    } else {
        Err(LinkError::Status(status))
    }
}

fn request(
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: Body,
) -> Result<http::Request<Body>, LinkError> {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "agent")
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        builder = builder.header("x-access-token", token);
    }
    builder
        .body(body)
        .map_err(|e| LinkError::Body(e.to_string()))
}

/// `GET path` with the sandbox's token, answer decoded from JSON.
pub async fn get_json<T: DeserializeOwned>(
    links: &Links,
    path: &str,
    token: Option<&str>,
) -> Result<T, LinkError> {
    let body = call(
        links,
        request(http::Method::GET, path, token, Body::empty())?,
    )
    .await?;
    serde_json::from_slice(&body).map_err(|e| LinkError::Body(e.to_string()))
}

/// `POST path` with a JSON body.
pub async fn post_json<T: Serialize>(
    links: &Links,
    path: &str,
    token: Option<&str>,
    body: &T,
) -> Result<(), LinkError> {
    let body = serde_json::to_vec(body).map_err(|e| LinkError::Body(e.to_string()))?;
    call(
        links,
        request(http::Method::POST, path, token, Body::from(body))?,
    )
    .await
    .map(drop)
}
