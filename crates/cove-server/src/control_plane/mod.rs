//! The cluster's control plane (`cove serve --role api`): the one REST address of a cluster.
//! It keeps no state of its own — keys, nodes and sandboxes are read from the cluster's
//! database — so any number can serve one cluster.
//!
//! - A create is placed on a node at once ([`placement`]) and passed to it; a node that
//!   cannot be reached or refuses for lack of room (503) passes it to the next candidate.
//! - A request about one sandbox (`/sandboxes/{id}…`, `/v2/sandboxes/{id}…`) goes to the
//!   node that runs it; one of a node that is down is answered 404 "lost".
//! - Listings are read from the database: every node's sandboxes of the team, but those of
//!   nodes that are down.
//! - The rest (templates, snapshots, volumes) goes to a node that is up.
//!
//! Nodes check the API key again as they do for their own clients. The edge may share its
//! process and listener ([`crate::gateway`]).

mod placement;

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{
    ServerError,
    api::{
        ApiError, ApiQuery,
        listing::{ListQuery, page_v1, page_v2},
    },
    catalog::{Catalog, Owner},
    cluster::{NodeRow, NodeState, Nodes, forward::Forwarder},
    keyring::KeyRing,
    query::percent_decode,
    store::Store,
};

/// The largest create body passed on (E2B's are a few KiB of JSON).
const MAX_CREATE_BODY: usize = 1 << 20;
/// Nodes a create is offered to before it is refused.
const CREATE_TRIES: usize = 3;

struct Plane {
    store: Store,
    keys: KeyRing,
    /// Templates by name, to prefer the nodes that have a create's template.
    catalog: Catalog,
    forwarder: Arc<Forwarder>,
    /// Creates sent to each node since its last report.
    sent: placement::Sent,
}

/// The control plane's HTTP app on the cluster's database (PostgreSQL).
pub fn open(database: &str, forwarder: Arc<Forwarder>) -> Result<Router, ServerError> {
    let location = cove_db::Location::parse(database);
    let plane = Arc::new(Plane {
        store: Store::open(&location)?,
        keys: KeyRing::open(&location)?,
        catalog: Catalog::open(&location).map_err(crate::templates_setup::SetupError::from)?,
        forwarder,
        sent: placement::Sent::default(),
    });
    Ok(router(plane))
}

fn router(plane: Arc<Plane>) -> Router {
    Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/sandboxes", get(list_v1).post(create))
        .route("/v2/sandboxes", get(list_v2).post(create))
        .route("/snapshots", get(list_snapshots))
        .fallback(pass_on)
        .with_state(plane)
}

impl Plane {
    /// The team of the request's API key.
    fn team(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing API key: send it in the X-API-KEY header",
            ));
        };
        match tokio::task::block_in_place(|| self.keys.team_for_key(key.trim())) {
            Ok(Some(team)) => Ok(team),
            Ok(None) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid API key")),
            Err(err) if err.is_unavailable() => Err(crate::api::database_unavailable(&err)),
            Err(err) => {
                tracing::error!(?err, "cannot check an API key");
                Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot check the API key",
                ))
            }
        }
    }

    /// Every node, as last reported.
    fn nodes(&self) -> Result<Vec<NodeRow>, ApiError> {
        tokio::task::block_in_place(|| Nodes(self.store.db()).list()).map_err(store_error)
    }
}

fn store_error(err: crate::store::StoreError) -> ApiError {
    if err.is_unavailable() {
        return crate::api::database_unavailable(&err);
    }
    tracing::error!(?err, "the cluster's database failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the cluster's database failed",
    )
}

async fn list_v2(
    State(plane): State<Arc<Plane>>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let team = plane.team(&headers)?;
    let records = tokio::task::block_in_place(|| plane.store.cluster_sandboxes(&team))
        .map_err(store_error)?;
    page_v2(records, &query)
}

async fn list_v1(
    State(plane): State<Arc<Plane>>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let team = plane.team(&headers)?;
    let records = tokio::task::block_in_place(|| plane.store.cluster_sandboxes(&team))
        .map_err(store_error)?;
    Ok(page_v1(records, &query)?.into_response())
}

/// `team`'s snapshots on every node of the cluster, with the node each is on (none: one
/// made before the server joined a cluster).
fn snapshots(
    plane: &Plane,
    team: &str,
) -> Result<Vec<(crate::lifecycle::TemplateEntry, Option<String>)>, ApiError> {
    tokio::task::block_in_place(|| plane.store.cluster_templates(team)).map_err(store_error)
}

async fn list_snapshots(
    State(plane): State<Arc<Plane>>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<crate::api::snapshots::ListQuery>,
) -> Result<Response, ApiError> {
    let team = plane.team(&headers)?;
    let nodes = plane.nodes()?;
    // Those of nodes that are down are left out (their sandboxes cannot start now), unless
    // they are in the object store.
    let down = |id: &String| {
        nodes
            .iter()
            .any(|n| &n.id == id && n.state == NodeState::Down)
    };
    let entries = snapshots(&plane, &team)?
        .into_iter()
        .filter(|(e, node)| e.shared.is_some() || !node.as_ref().is_some_and(down))
        .map(|(e, _)| e)
        .collect();
    crate::api::snapshots::list_of(entries, &team, &query)
}

/// Where a create must or should go, by the template its body names (`templateID`, with
/// or without a `:tag`).
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    /// Any node (a built-in template, an unknown name, a body the node will refuse anyway).
    Anywhere,
    /// Preferably a node that has this template's layers (a built template, or a snapshot
    /// in the object store).
    Template(String),
    /// The node a snapshot's layers are on (one not in the object store): only there.
    Node { node: String, snapshot: String },
}

fn wanted(plane: &Plane, team: &str, body: &[u8]) -> Result<Wanted, ApiError> {
    let Some(name) = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|r| r.get("templateID")?.as_str().map(str::to_owned))
    else {
        return Ok(Wanted::Anywhere);
    };
    if let Some((entry, node)) = snapshots(plane, team)?
        .into_iter()
        .find(|(e, _)| e.answers_to(&name))
    {
        return Ok(match node {
            _ if entry.shared.is_some() => Wanted::Template(entry.id),
            Some(node) => Wanted::Node {
                node,
                snapshot: entry.alias,
            },
            None => Wanted::Anywhere,
        });
    }
    let bare = name.split(':').next().unwrap_or(&name);
    Ok(
        match tokio::task::block_in_place(|| plane.catalog.find(team, bare)) {
            Ok(Owner::Team(row)) => Wanted::Template(row.id),
            Ok(_) => Wanted::Anywhere,
            Err(err) if err.is_unavailable() => {
                return Err(crate::api::database_unavailable(&err));
            }
            Err(err) => {
                tracing::warn!(
                    ?err,
                    "cannot look up a create's template; placing it by room alone"
                );
                Wanted::Anywhere
            }
        },
    )
}

/// A create, placed and passed on.
async fn create(State(plane): State<Arc<Plane>>, request: Request) -> Result<Response, ApiError> {
    let team = plane.team(request.headers())?;
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_CREATE_BODY)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the create request is too large",
            )
        })?;
    let nodes = plane.sent.counted(plane.nodes()?);
    let up = nodes.iter().filter(|n| n.state == NodeState::Up).count();
    let candidates = match wanted(&plane, &team, &body)? {
        Wanted::Anywhere => placement::candidates(nodes, None, placement::draw),
        Wanted::Template(id) => placement::candidates(nodes, Some(&id), placement::draw),
        Wanted::Node { node, snapshot } => {
            let there: Vec<NodeRow> = nodes.into_iter().filter(|n| n.id == node).collect();
            let open = placement::candidates(there.clone(), None, placement::draw);
            if open.is_empty() {
                let state = match there.first() {
                    Some(n) if n.state == NodeState::Up => "full",
                    Some(n) => n.state.as_str(),
                    None => "gone",
                };
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "snapshot {snapshot:?} is on node {node}, which cannot take sandboxes now ({state}); its sandboxes start only there"
                    ),
                )
                .retry_after(5));
            }
            open
        }
    };
    let mut refused = None;
    for node in candidates.into_iter().take(CREATE_TRIES) {
        let offer = Request::from_parts(parts.clone(), Body::from(body.clone()));
        match plane.forwarder.send(&node.address, offer).await {
            Ok(answer) if answer.status() == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::info!(node = %node.id, "a node had no room for a create; offering it to the next");
                refused = Some(answer);
            }
            Ok(answer) => {
                if answer.status().is_success() {
                    plane.sent.note(&node);
                }
                return Ok(answer);
            }
            Err(_) => tracing::warn!(node = %node.id, "a node could not be reached for a create"),
        }
    }
    match refused {
        Some(answer) => Ok(answer),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no node can take a sandbox now ({up} up and not drained, none with room that answered)"),
        )
        .retry_after(5)),
    }
}

/// The template a path is about: `/templates/{id}…` (`DELETE /templates/{id}` deletes a
/// snapshot, which lives on one node).
fn template_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/templates/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

/// The sandbox a path is about: `/sandboxes/{id}…` or `/v2/sandboxes/{id}…`.
fn sandbox_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2").unwrap_or(path);
    let rest = rest.strip_prefix("/sandboxes/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

/// Any other request: to the node of its sandbox, or to a node that is up.
async fn pass_on(State(plane): State<Arc<Plane>>, request: Request) -> Result<Response, ApiError> {
    let team = plane.team(request.headers())?;
    let snapshot_node = match template_of(request.uri().path()).and_then(percent_decode) {
        // A snapshot in the object store is any node's once its own is down.
        Some(id) => snapshots(&plane, &team)?
            .into_iter()
            .find(|(e, _)| e.answers_to(&id))
            .and_then(|(e, node)| Some((e.shared.is_some(), node?)))
            .and_then(|(shared, node)| {
                plane
                    .nodes()
                    .ok()?
                    .into_iter()
                    .find(|n| n.id == node && !(shared && n.state == NodeState::Down))
            }),
        None => None,
    };
    let address = match sandbox_of(request.uri().path()) {
        _ if let Some(node) = snapshot_node => node.address,
        Some(id) => {
            let placed = tokio::task::block_in_place(|| plane.store.placed(Some(id)))
                .map_err(store_error)?;
            match placed.into_iter().next() {
                Some((record, node)) if record.team == team => match node.state {
                    NodeState::Down => {
                        return Err(ApiError::new(
                            StatusCode::NOT_FOUND,
                            format!(
                                "sandbox {id} is lost: its node {} stopped answering (last heard from at {})",
                                node.id,
                                crate::clock::rfc3339(node.heartbeat_at)
                            ),
                        ));
                    }
                    NodeState::Up | NodeState::Draining => node.address,
                },
                _ => {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("sandbox {id} not found"),
                    ));
                }
            }
        }
        None => plane
            .nodes()?
            .into_iter()
            .find(|n| n.state != NodeState::Down)
            .map(|n| n.address)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no node of the cluster is up",
                )
                .retry_after(5)
            })?,
    };
    plane.forwarder.send(&address, request).await.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "the node that answers for this cannot be reached",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_paths_name_their_sandbox() {
        assert_eq!(sandbox_of("/sandboxes/abc"), Some("abc"));
        assert_eq!(sandbox_of("/v2/sandboxes/abc/connect"), Some("abc"));
        assert_eq!(sandbox_of("/sandboxes/abc/timeout"), Some("abc"));
        assert_eq!(sandbox_of("/sandboxes"), None);
        assert_eq!(sandbox_of("/sandboxes/"), None);
        assert_eq!(sandbox_of("/templates/x"), None);
    }
}
