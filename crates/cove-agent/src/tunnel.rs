//! Port tunnels: `cove serve` reaches servers listening inside the sandbox (on its own
//! loopback) by upgrading a request to `/_cove/tunnel/{port}` into a raw byte stream.

use std::time::Duration;

use axum::{
    extract::{Path, Request},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::rest::RestError;

/// The protocol name of the upgrade.
pub const UPGRADE_PROTOCOL: &str = "cove-tunnel";

/// Pauses between connection attempts: a server that is just starting gets about a second.
const RETRY_PAUSES_MS: [u64; 4] = [100, 200, 300, 400];

/// Connects to `127.0.0.1:port` and, once that works, switches the request's connection to
/// a raw stream relayed to it. A port nobody listens on is a 502 before any upgrade.
pub async fn tunnel(Path(port): Path<u16>, mut request: Request) -> Response {
    let wants_upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE_PROTOCOL));
    if !wants_upgrade {
        return RestError::bad_request(format!("a tunnel needs `Upgrade: {UPGRADE_PROTOCOL}`"))
            .into_response();
    }
    let Some(stream) = connect(port).await else {
        return RestError::new(StatusCode::BAD_GATEWAY, format!("port {port} is not open"))
            .into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let mut stream = stream;
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut upgraded = TokioIo::new(upgraded);
                if let Err(err) = tokio::io::copy_bidirectional(&mut upgraded, &mut stream).await {
                    tracing::debug!(?err, port, "tunnel closed with an error");
                }
            }
            Err(err) => tracing::debug!(?err, port, "tunnel upgrade failed"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL)),
        ],
    )
        .into_response()
}

async fn connect(port: u16) -> Option<TcpStream> {
    for pause in RETRY_PAUSES_MS
        .iter()
        .map(|ms| Some(Duration::from_millis(*ms)))
        .chain([None])
    {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await {
            let _ = stream.set_nodelay(true);
            return Some(stream);
        }
        tokio::time::sleep(pause?).await;
    }
    None
}
