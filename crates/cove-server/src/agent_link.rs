//! Talking to a sandbox's agent over its Unix socket: connections for the proxy, and the
//! few calls the server makes itself (`/init` when a sandbox is handed out, `/metrics`).

use std::path::Path;

use axum::body::Body;
use http::{StatusCode, header};
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to the agent")]
    Connect(#[source] std::io::Error),
    #[error("HTTP exchange with the agent failed")]
    Http(#[from] hyper::Error),
    #[error("the agent answered {0}")]
    Status(StatusCode),
    #[error("the agent's answer is unreadable: {0}")]
    Body(String),
}

/// An HTTP/1.1 connection to the agent listening on `socket` (upgrades allowed).
pub async fn connect(socket: &Path) -> Result<SendRequest<Body>, LinkError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(LinkError::Connect)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(?err, "agent connection ended with an error");
        }
    });
    Ok(sender)
}

async fn call(socket: &Path, request: http::Request<Body>) -> Result<bytes::Bytes, LinkError> {
    let mut sender = connect(socket).await?;
    let response = sender.send_request(request).await?;
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
    socket: &Path,
    path: &str,
    token: Option<&str>,
) -> Result<T, LinkError> {
    let body = call(
        socket,
        request(http::Method::GET, path, token, Body::empty())?,
    )
    .await?;
    serde_json::from_slice(&body).map_err(|e| LinkError::Body(e.to_string()))
}

/// `POST path` with a JSON body.
pub async fn post_json<T: Serialize>(
    socket: &Path,
    path: &str,
    token: Option<&str>,
    body: &T,
) -> Result<(), LinkError> {
    let body = serde_json::to_vec(body).map_err(|e| LinkError::Body(e.to_string()))?;
    call(
        socket,
        request(http::Method::POST, path, token, Body::from(body))?,
    )
    .await
    .map(drop)
}
