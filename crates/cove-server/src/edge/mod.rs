//! The edge (`cove serve --role edge`): one address for the sandbox traffic of a whole
//! cluster. It reads which node runs each sandbox from the cluster's database and passes each
//! request — by `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers, a `{port}-{id}.{domain}` host,
//! or a signed file URL — to that node, streamed both ways; the node checks the access
//! token as it does for its own clients. It keeps no state of its own: any number of edges
//! can serve one cluster, and one that restarts knows everything again at once.
//!
//! A sandbox whose node is down is answered 502 "lost"; one no node has, E2B's 502 "not
//! found". The REST API is not the edge's but the api role's ([`crate::control_plane`]),
//! which may share its process and listener ([`crate::gateway`]).

mod routes;

use std::sync::Arc;

use axum::{
    Router,
    extract::{Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};

use tower::ServiceExt;

use self::routes::{Found, Routes};
use crate::{
    cluster::forward::Forwarder,
    proxy::{Route, classify},
    store::Store,
};

/// The edge, ready to route.
pub struct Edge {
    routes: Routes,
    forwarder: Arc<Forwarder>,
    domain: String,
    /// What answers the requests that are not sandbox traffic, when the process has another
    /// role on the same listener (the api); else they are refused.
    rest: Option<Router>,
}

impl Edge {
    /// An edge on the cluster's `store` for sandbox hosts under `domain` (the one the
    /// nodes' answers name: their `--domain`), passing other requests to `rest`.
    pub fn new(
        store: Arc<Store>,
        domain: String,
        rest: Option<Router>,
        forwarder: Arc<Forwarder>,
    ) -> Arc<Self> {
        Arc::new(Self {
            routes: Routes::new(store),
            forwarder,
            domain,
            rest,
        })
    }
}

/// The edge's HTTP app.
pub fn router(edge: Arc<Edge>) -> Router {
    Router::new().fallback(handle).with_state(edge)
}

async fn handle(State(edge): State<Arc<Edge>>, request: Request) -> Response {
    let (id, found) = match classify(&request, &edge.domain) {
        None if let Some(rest) = &edge.rest => {
            let Ok(response) = rest.clone().oneshot(request).await;
            return response;
        }
        // Its own health, for load balancers and probes (a sandbox's `/health` names it).
        None if request.uri().path() == "/health" => return StatusCode::OK.into_response(),
        None => return not_sandbox_traffic(),
        Some(Err(message)) => return (StatusCode::BAD_REQUEST, message).into_response(),
        Some(Ok(Route::Sandbox { id, .. })) => {
            let routes = &edge.routes;
            let found = tokio::task::block_in_place(|| routes.find(&id));
            (id, found)
        }
        Some(Ok(Route::Signed(signed))) => {
            let routes = &edge.routes;
            match tokio::task::block_in_place(|| routes.signed(&signed)) {
                Some(found) => found,
                None => {
                    return (StatusCode::UNAUTHORIZED, "invalid signature").into_response();
                }
            }
        }
    };
    match found {
        Found::Node { address } => match edge.forwarder.send(&address, request).await {
            Ok(response) => response,
            Err(_) => gateway_error(&id, "The sandbox's node cannot be reached"),
        },
        Found::Lost { node, last_heard } => gateway_error(
            &id,
            &format!(
                "The sandbox is lost: its node {node} stopped answering (last heard from at {})",
                crate::clock::rfc3339(last_heard)
            ),
        ),
        Found::Unknown => gateway_error(&id, "The sandbox was not found"),
    }
}

/// E2B's answer for sandbox traffic that cannot be delivered.
fn gateway_error(id: &str, message: &str) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        axum::Json(serde_json::json!({"sandboxId": id, "message": message, "code": 502})),
    )
        .into_response()
}

fn not_sandbox_traffic() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({
            "code": 404,
            "message": "this is a Cove edge: it carries sandbox traffic only (E2b-Sandbox-Id and E2b-Sandbox-Port headers, {port}-{id}.{domain} hosts, signed file URLs); the REST API is the cluster's api (cove serve --role api)",
        })),
    )
        .into_response()
}
