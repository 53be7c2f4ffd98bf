//! `GET /cove/sandboxes/{id}/terminal`: a WebSocket bridged to a shell on a pseudo-terminal
//! in the sandbox (the dashboard's xterm.js).
//!
//! The key is checked and the sandbox must be the key's team's, as for the REST API, before
//! the upgrade. A browser cannot set headers on a WebSocket and a key must never be in a
//! URL, so it comes as a subprotocol: the client offers `cove.terminal.v1` and
//! `cove.key.<the key in unpadded base64url>`, and the answer selects only the first. Other
//! clients may send `X-API-KEY` instead.
//!
//! Messages: binary from the client is typed into the terminal; text from the client is a
//! JSON command (`{"type":"resize","cols":…,"rows":…}`); binary from the server is the
//! terminal's output. When the shell ends the server closes with code 1000 and its exit
//! status as the reason; when the client goes, the shell is killed.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{
        Path, Query, State,
        ws::{
            CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code,
            rejection::WebSocketUpgradeRejection,
        },
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use serde::Deserialize;

use super::pty::{Event, Pty, Size};
use crate::{
    AppState,
    api::{ApiError, team_of_key},
    lifecycle::Live,
};

/// The subprotocol of this bridge.
pub const PROTOCOL: &str = "cove.terminal.v1";
/// The prefix of the subprotocol that carries the key.
const KEY_PROTOCOL: &str = "cove.key.";
/// How often the server pings an idle terminal, so that the front door's idle limit for
/// upgraded connections does not close a tab left open.
const PING_EVERY: Duration = Duration::from_secs(30);
/// The longest close reason a WebSocket frame carries, in bytes.
const MAX_REASON: usize = 123;

/// The terminal's first size.
#[derive(Debug, Deserialize)]
pub struct SizeQuery {
    cols: Option<u32>,
    rows: Option<u32>,
}

/// A command the client sends as text.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Command {
    Resize { cols: u32, rows: u32 },
}

/// The key from `X-API-KEY`, or from the `cove.key.` subprotocol.
fn key_of(headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Ok(key.trim().to_owned());
    }
    let offered = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for protocol in offered {
        if let Some(encoded) = protocol.strip_prefix(KEY_PROTOCOL) {
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            return decoded.ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid API key: the cove.key. subprotocol must carry it in unpadded base64url",
                )
            });
        }
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing API key: offer the subprotocol cove.key.<base64url of the key> (or send X-API-KEY)",
    ))
}

pub async fn open(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(size): Query<SizeQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let team = team_of_key(&state, &key_of(&headers)?)?;
    let live = state.lifecycle().get(&team.0, &id)?;
    if live.paused().is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is paused: resume it to open a terminal"),
        ));
    }
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::bad_request(format!(
            "this route opens a WebSocket: {}",
            rejection.body_text()
        ))
    })?;
    let size = Size {
        cols: size.cols.unwrap_or(80),
        rows: size.rows.unwrap_or(24),
    };
    Ok(upgrade
        .protocols([PROTOCOL])
        .on_upgrade(move |socket| bridge(socket, live, size))
        .into_response())
}

/// Relays between the socket and a new shell until either ends.
async fn bridge(mut socket: WebSocket, live: Arc<Live>, size: Size) {
    let (id, team) = (live.id(), live.team());
    let mut pty = match Pty::start(live.agent(), live.access_token(), size).await {
        Ok(pty) => pty,
        Err(err) => {
            tracing::warn!(?err, sandbox_id = %id, %team, "cannot start a terminal");
            close(
                &mut socket,
                close_code::ERROR,
                &format!("cannot start a shell: {err}"),
            )
            .await;
            return;
        }
    };
    tracing::info!(sandbox_id = %id, %team, "terminal opened");
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let ending = loop {
        tokio::select! {
            event = pty.next() => match event {
                Ok(Some(Event::Output(bytes))) => {
                    if socket.send(Message::Binary(bytes)).await.is_err() {
                        break None;
                    }
                }
                Ok(Some(Event::Exited(how))) => break Some((close_code::NORMAL, how)),
                Ok(None) => break Some((close_code::NORMAL, "ended".to_owned())),
                Err(err) => break Some((close_code::ERROR, err.to_string())),
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    if let Err(err) = pty.input(bytes).await {
                        break Some((close_code::ERROR, err.to_string()));
                    }
                }
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Command>(&text) {
                    Ok(Command::Resize { cols, rows }) => {
                        if let Err(err) = pty.resize(Size { cols, rows }).await {
                            break Some((close_code::ERROR, err.to_string()));
                        }
                    }
                    Err(err) => {
                        break Some((close_code::INVALID, format!("unknown command: {err}")));
                    }
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
            }
        }
    };
    if let Err(err) = pty.kill().await {
        tracing::debug!(?err, sandbox_id = %id, "cannot kill the terminal's shell");
    }
    if let Some((code, reason)) = ending {
        close(&mut socket, code, &reason).await;
    }
    tracing::info!(sandbox_id = %id, %team, "terminal closed");
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: reason[..end].into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_comes_from_the_subprotocol_or_the_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            key_of(&headers).unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("cove_secret+/=");
        headers.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            format!("{PROTOCOL}, {KEY_PROTOCOL}{encoded}")
                .parse()
                .unwrap(),
        );
        assert_eq!(key_of(&headers).unwrap(), "cove_secret+/=");
        headers.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            format!("{PROTOCOL}, {KEY_PROTOCOL}***").parse().unwrap(),
        );
        assert!(
            key_of(&headers)
                .unwrap_err()
                .message()
                .contains("base64url")
        );
        headers.insert("x-api-key", " from-header ".parse().unwrap());
        assert_eq!(key_of(&headers).unwrap(), "from-header");
    }

    #[test]
    fn commands_parse() {
        let Command::Resize { cols, rows } =
            serde_json::from_str(r#"{"type":"resize","cols":120,"rows":40}"#).unwrap();
        assert_eq!((cols, rows), (120, 40));
        assert!(serde_json::from_str::<Command>(r#"{"type":"explode"}"#).is_err());
    }
}
