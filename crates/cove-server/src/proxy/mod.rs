//! Sandbox traffic: requests that name a sandbox (by `E2b-Sandbox-Id`/`E2b-Sandbox-Port`
//! headers, a `{port}-{id}.{domain}` host, or a signed `/files` URL) are streamed to that
//! sandbox's agent over its Unix socket; other ports go through an agent tunnel to the
//! server listening inside the sandbox. A request allowed to reach a paused sandbox that
//! asked for `autoResume` resumes it first; other paused sandboxes answer 502 "paused".

mod file_upgrade;
mod file_upload;
mod route;

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use cove_proto::envd::{CODE_INTERPRETER_PORT, INTERPRETER_PREFIX, PORT as AGENT_PORT};
use hyper_util::rt::TokioIo;

pub use self::route::{Route, SignedFiles, classify};
use crate::{
    AppState, agent_link,
    front::RawSend,
    lifecycle::{LifecycleError, Live},
    telemetry::{AgentOp, Counted, Metrics, ProxyTarget},
};

/// Middleware in front of the API: sandbox traffic is proxied, everything else goes on.
pub async fn intercept(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match route::classify(&request, state.domain()) {
        None => next.run(request).await,
        Some(Err(message)) => (StatusCode::BAD_REQUEST, message).into_response(),
        Some(Ok(Route::Sandbox { id, port })) => match state.lifecycle().route(&id) {
            None => sandbox_not_found(&id),
            Some(live) => {
                let may_wake = may_wake(&live, port, &request);
                reach(&state, &live, port, may_wake, request).await
            }
        },
        Some(Ok(Route::Signed(signed))) => {
            let found = state
                .lifecycle()
                .all()
                .into_iter()
                .find(|live| signed.is_signed_by(&live.access_token()));
            match found {
                // A signature made with the sandbox's access token shows the token as its
                // header does, so the link may wake the sandbox (its agent still checks the
                // expiry and the user).
                Some(live) => reach(&state, &live, AGENT_PORT, true, request).await,
                // E2B routes such a link by its host, and envd refuses a signature its
                // sandbox did not make in these words.
                None => json_error(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({"code": 401, "message": "invalid signature"}),
                ),
            }
        }
    }
}

/// Forwards `request` to `live`; a paused sandbox is resumed first when `may_wake` and it
/// asked for `autoResume`, and answers 502 "paused" otherwise. A sandbox whose end has begun
/// is no longer routed at all (its kill or timeout takes it out of routing before its
/// processes die), so from then on its traffic is 502 "not found", which the SDKs read as
/// "killed or reached its end of life".
async fn reach(
    state: &AppState,
    live: &Arc<Live>,
    port: u16,
    may_wake: bool,
    request: Request,
) -> Response {
    if live.paused().is_none() {
        return forward(state, live, port, request).await;
    }
    let id = live.id();
    if !may_wake {
        return sandbox_paused(&id);
    }
    match state.lifecycle().wake(live).await {
        Ok(()) => forward(state, live, port, request).await,
        Err(LifecycleError::NotFound(_) | LifecycleError::Ended { .. }) => sandbox_not_found(&id),
        Err(LifecycleError::Paused(_)) => sandbox_paused(&id),
        Err(err) => {
            tracing::warn!(?err, sandbox_id = %id, team = %live.team(), "cannot resume the sandbox for a request");
            json_error(
                StatusCode::BAD_GATEWAY,
                serde_json::json!({"sandboxId": id, "message": "The sandbox is paused and could not be resumed", "code": 502}),
            )
        }
    }
}

/// Whether `request` may resume a paused sandbox: it carries the sandbox's access token
/// (its agent's port) or, for its other ports, the traffic token when it has one. Someone
/// who only knows a sandbox's id cannot wake it.
fn may_wake(live: &Live, port: u16, request: &Request) -> bool {
    let shown = |header: &str, expected: &str| {
        request.headers().get(header).is_some_and(|v| {
            cove_proto::signing::constant_time_eq(v.as_bytes(), expected.as_bytes())
        })
    };
    if port == AGENT_PORT {
        return shown("x-access-token", &live.access_token());
    }
    match live.traffic_token() {
        Some(token) => shown(TRAFFIC_TOKEN_HEADER, &token),
        None => true,
    }
}

/// The answer for a paused sandbox that does not resume by itself.
fn sandbox_paused(id: &str) -> Response {
    json_error(
        StatusCode::BAD_GATEWAY,
        serde_json::json!({"sandboxId": id, "message": "The sandbox is paused", "code": 502}),
    )
}

/// E2B's answer for a sandbox that does not exist (any more).
fn sandbox_not_found(id: &str) -> Response {
    json_error(
        StatusCode::BAD_GATEWAY,
        serde_json::json!({"sandboxId": id, "message": "The sandbox was not found", "code": 502}),
    )
}

fn port_not_open(id: &str, port: u16) -> Response {
    json_error(
        StatusCode::BAD_GATEWAY,
        serde_json::json!({
            "sandboxId": id,
            "message": "The sandbox is running but port is not open",
            "port": port,
            "code": 502,
        }),
    )
}

fn json_error(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    // 502s are retried by the E2B SDKs unless told otherwise; a missing sandbox stays missing.
    response.headers_mut().insert(
        HeaderName::from_static("should-retry"),
        HeaderValue::from_static("false"),
    );
    response
}

/// Connection-level headers that must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// The request as it goes to the sandbox: origin-form URI, a Host header, no hop-by-hop
/// headers (but an upgrade is passed on).
fn outbound(mut request: Request) -> Request {
    let upgrade = request.headers().contains_key(header::UPGRADE);
    let authority = request
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    if let (false, Some(authority)) = (request.headers().contains_key(header::HOST), authority) {
        request.headers_mut().insert(header::HOST, authority);
    }
    strip_hop_by_hop(request.headers_mut(), upgrade);
    if upgrade {
        request
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    *request.uri_mut() = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
    *request.version_mut() = http::Version::HTTP_11;
    request
}

/// The header clients of a non-public sandbox's ports carry its traffic token in.
const TRAFFIC_TOKEN_HEADER: &str = "e2b-traffic-access-token";

/// E2B's answer when a non-public sandbox's port is called without the right token.
fn traffic_token_refused(id: &str, given: bool) -> Response {
    let message = if given {
        format!(
            "Sandbox is secured with traffic access token. Provided token in header '{TRAFFIC_TOKEN_HEADER}' is invalid"
        )
    } else {
        format!(
            "Sandbox is secured with traffic access token. Token header '{TRAFFIC_TOKEN_HEADER}' is missing"
        )
    };
    json_error(
        StatusCode::FORBIDDEN,
        serde_json::json!({"sandboxId": id, "message": message, "code": 403}),
    )
}

/// Forwards `request` to `live`'s `port`, its traffic counted in the server's metrics.
async fn forward(state: &AppState, live: &Arc<Live>, port: u16, request: Request) -> Response {
    let metrics = state.lifecycle().metrics();
    let received = metrics.bytes_received();
    let request = request.map(|body| Body::new(Counted::new(body, received)));
    let response = forward_counted(metrics, live, port, request).await;
    let target = if port == AGENT_PORT {
        ProxyTarget::Agent
    } else {
        ProxyTarget::Port
    };
    metrics.proxied(target, response.status());
    let sent = metrics.bytes_sent();
    response.map(|body| Body::new(Counted::new(body, sent)))
}

async fn forward_counted(
    metrics: &Metrics,
    live: &Arc<Live>,
    port: u16,
    request: Request,
) -> Response {
    let id = live.id();
    if let (false, Some(expected)) = (port == AGENT_PORT, live.traffic_token()) {
        let given = request
            .headers()
            .get(TRAFFIC_TOKEN_HEADER)
            .map(|v| v.as_bytes().to_vec());
        let valid = given
            .as_deref()
            .is_some_and(|g| cove_proto::signing::constant_time_eq(g, expected.as_bytes()));
        if !valid {
            return traffic_token_refused(&id, given.is_some());
        }
    }
    let result = if port == AGENT_PORT {
        to_agent(metrics, live, request).await
    } else if port == CODE_INTERPRETER_PORT && !request.headers().contains_key(header::UPGRADE) {
        to_interpreter(live, request).await
    } else {
        to_port(metrics, live, port, request).await
    };
    match result {
        Ok(response) => response,
        Err(ProxyError::PortClosed) => port_not_open(&id, port),
        Err(err) => {
            // The client's fault, not the sandbox's: its body stopped coming.
            if let Some(limit) = crate::front::stalled(&err) {
                return json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    serde_json::json!({
                        "code": 408,
                        "message": format!("the request body delivered nothing for {limit:?}"),
                    }),
                );
            }
            if let ProxyError::FileUpload(upload) = &err {
                if upload.is_clients() {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({"code": 400, "message": error_chain(upload)}),
                    );
                }
                if upload.is_shortage() {
                    tracing::warn!(?err, sandbox_id = %id, "an upload found no descriptor to spare");
                    return json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({"code": 503, "message": error_chain(upload)}),
                    );
                }
            }
            metrics.agent_error(AgentOp::Proxy);
            tracing::warn!(?err, sandbox_id = %id, team = %live.team(), port, "cannot reach the sandbox");
            sandbox_not_found(&id)
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error(transparent)]
    Link(#[from] agent_link::LinkError),
    #[error("HTTP exchange with the sandbox failed")]
    Http(#[from] hyper::Error),
    #[error("the agent refused the tunnel: {0}")]
    Tunnel(StatusCode),
    #[error("nothing listens on the port")]
    PortClosed,
    #[error(transparent)]
    FileUpgrade(#[from] file_upgrade::FileUpgradeError),
    #[error("an upload through the file upgrade failed")]
    FileUpload(#[from] file_upload::UploadError),
}

/// An error and its causes, for a message.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        message.push_str(": ");
        message.push_str(&err.to_string());
        cause = err.source();
    }
    message
}

/// An HTTP/1.1 connection to the sandbox's agent.
async fn agent_connection(
    live: &Live,
) -> Result<hyper::client::conn::http1::SendRequest<Body>, ProxyError> {
    Ok(agent_link::connect(&live.agent()).await?)
}

/// Streams the request to the agent and its answer back, on a connection kept open
/// between requests unless the client asks for an upgrade (which takes the connection).
/// Large downloads and raw uploads go through the file upgrade.
async fn to_agent(
    metrics: &Metrics,
    live: &Live,
    request: Request,
) -> Result<Response, ProxyError> {
    let mut request = outbound(request);
    if request.headers().contains_key(header::UPGRADE) {
        let mut sender = agent_connection(live).await?;
        let response = sender.send_request(request).await?;
        return Ok(response_back(response.map(Body::new)));
    }
    if let Some(length) = file_upload::eligible(&request) {
        let response = file_upload::send(live, request, length, metrics.bytes_received()).await?;
        return Ok(response_back(response));
    }
    file_upgrade::ask(&mut request);
    let raw_send = request.extensions_mut().remove::<RawSend>();
    let response = live.links().send(request).await?;
    if file_upgrade::taken(&response) {
        return Ok(response_back(
            file_upgrade::answer(response, raw_send).await?,
        ));
    }
    Ok(response_back(response))
}

/// Streams a request for the code interpreter's port to the agent, which serves the same
/// routes on its own socket: one connection, where a tunnel would take two and a relay.
async fn to_interpreter(live: &Live, request: Request) -> Result<Response, ProxyError> {
    let mut request = outbound(request);
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = format!("{INTERPRETER_PREFIX}{path}")
        .parse()
        .map_err(|_| ProxyError::Tunnel(StatusCode::BAD_REQUEST))?;
    // The agent's socket asks for its access token, which the server holds; whoever may
    // reach this port (its traffic token, checked above) may reach the interpreter.
    let token = HeaderValue::from_str(&live.access_token())
        .map_err(|_| ProxyError::Tunnel(StatusCode::INTERNAL_SERVER_ERROR))?;
    request.headers_mut().insert("x-access-token", token);
    Ok(response_back(live.links().send(request).await?))
}

fn response_back(response: http::Response<Body>) -> Response {
    let (mut parts, body) = response.into_parts();
    let upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    Response::from_parts(parts, body)
}

/// Opens a tunnel through the agent to `127.0.0.1:port` inside the sandbox and sends the
/// request over it; an upgrade (WebSocket, …) is relayed both ways afterwards.
async fn to_port(
    metrics: &Metrics,
    live: &Live,
    port: u16,
    mut request: Request,
) -> Result<Response, ProxyError> {
    let mut sender = agent_connection(live).await?;
    let token = HeaderValue::from_str(&live.access_token())
        .map_err(|_| ProxyError::Tunnel(StatusCode::INTERNAL_SERVER_ERROR))?;
    let open = http::Request::get(format!("/_cove/tunnel/{port}"))
        .header(header::HOST, "agent")
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "cove-tunnel")
        .header("x-access-token", token)
        .body(Body::empty())
        .map_err(|_| ProxyError::Tunnel(StatusCode::INTERNAL_SERVER_ERROR))?;
    let opened = sender.send_request(open).await?;
    match opened.status() {
        StatusCode::SWITCHING_PROTOCOLS => {}
        StatusCode::BAD_GATEWAY => return Err(ProxyError::PortClosed),
        other => return Err(ProxyError::Tunnel(other)),
    }
    let stream = hyper::upgrade::on(opened).await?;
    let (mut inner, connection) = hyper::client::conn::http1::handshake(stream).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(?err, "tunnelled connection ended with an error");
        }
    });

    let client_upgrade = request
        .headers()
        .contains_key(header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut request));
    if let Some(mask) = live.mask_request_host() {
        let host = crate::lifecycle::mask::host_for(&mask, port);
        // Checked when the sandbox was created: always a valid header value.
        if let Ok(value) = HeaderValue::from_str(&host) {
            request.headers_mut().insert(header::HOST, value);
        }
    }
    let mut response = inner.send_request(outbound(request)).await?;
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(client_upgrade)) =
        (response.status(), client_upgrade)
    {
        let server_upgrade = hyper::upgrade::on(&mut response);
        let (received, sent) = (metrics.bytes_received(), metrics.bytes_sent());
        tokio::spawn(async move {
            if let (Ok(client), Ok(server)) = (client_upgrade.await, server_upgrade.await) {
                let copied = tokio::io::copy_bidirectional(
                    &mut TokioIo::new(client),
                    &mut TokioIo::new(server),
                )
                .await;
                if let Ok((up, down)) = copied {
                    received.inc_by(up);
                    sent.inc_by(down);
                }
            }
        });
    }
    Ok(response_back(response.map(Body::new)))
}
