//! Snapshots and forks: `POST /sandboxes/{id}/snapshots` (201 `{snapshotID, names}`),
//! `GET /snapshots` (deleted by `DELETE /templates/{id}`, see [`super::templates`]), and `POST /sandboxes/{id}/fork` (201, one
//! `{sandbox}` or `{error}` per fork). `mode` says what they kept: `full` (processes and
//! memory too, where the sandbox's backend can) or `filesystem`.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use cove_proto::rest::{ForkResult, ForkSandbox, NewSnapshot, SnapshotInfo};
use serde::Deserialize;

use super::{
    ApiError, ApiQuery, Team,
    sandboxes::{optional_body, raw_body, sandbox_answer},
};
use crate::{AppState, lifecycle::TemplateEntry};

/// What a snapshot or fork kept: files only, or processes and memory too.
const FILESYSTEM: &str = "filesystem";
const FULL: &str = "full";

fn mode(memory: bool) -> String {
    (if memory { FULL } else { FILESYSTEM }).to_owned()
}
/// Page size of `GET /snapshots` when the client names none.
const MAX_PAGE: usize = 100;

fn info(entry: &TemplateEntry) -> SnapshotInfo {
    SnapshotInfo {
        snapshot_id: entry.tagged_id(),
        names: entry.names.iter().map(|n| format!("{n}:default")).collect(),
        mode: Some(mode(entry.template.memory.is_some())),
    }
}

pub async fn create(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: NewSnapshot = optional_body(&raw_body(raw)?)?;
    let entry = state
        .lifecycle()
        .create_snapshot(&team.0, &id, request.name, request.memory)
        .await?;
    Ok((StatusCode::CREATED, Json(info(&entry))).into_response())
}

/// Query of `GET /snapshots`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    #[serde(rename = "sandboxID")]
    sandbox_id: Option<String>,
    name: Option<String>,
    limit: Option<i64>,
    next_token: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    team: Team,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let found = state.lifecycle().snapshots(
        &team.0,
        query.sandbox_id.as_deref().filter(|s| !s.is_empty()),
        query.name.as_deref().filter(|s| !s.is_empty()),
    );
    page(found, &query)
}

/// `GET /snapshots` of `team` over `entries` (every snapshot of the team, wherever it is):
/// the ones `query` asks for, a page of them.
pub fn list_of(
    entries: Vec<TemplateEntry>,
    team: &str,
    query: &ListQuery,
) -> Result<Response, ApiError> {
    let found = crate::lifecycle::select_snapshots(
        entries,
        team,
        query.sandbox_id.as_deref().filter(|s| !s.is_empty()),
        query.name.as_deref().filter(|s| !s.is_empty()),
    );
    page(found, query)
}

fn page(mut found: Vec<TemplateEntry>, query: &ListQuery) -> Result<Response, ApiError> {
    let limit = query
        .limit
        .unwrap_or(MAX_PAGE as i64)
        .clamp(1, MAX_PAGE as i64) as usize;
    if let Some(token) = &query.next_token {
        let after = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid nextToken: pass the X-Next-Token of the previous page",
                )
            })?;
        // Deleted since: the listing starts over rather than skipping what follows it.
        if let Some(at) = found.iter().position(|e| e.id == after) {
            found.drain(..=at);
        }
    }
    let more = found.len() > limit;
    found.truncate(limit);
    let next = more
        .then(|| found.last())
        .flatten()
        .map(|e| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&e.id));
    let mut response = Json(found.iter().map(info).collect::<Vec<_>>()).into_response();
    if let Some(next) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert("x-next-token", next);
    }
    Ok(response)
}

pub async fn fork(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ForkSandbox = optional_body(&raw_body(raw)?)?;
    super::sandboxes::refuse_if_draining(&state)?;
    let forked = state
        .lifecycle()
        .fork(&team.0, &id, request.timeout, request.count, request.memory)
        .await?;
    let results: Vec<ForkResult> = forked
        .outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Ok(live) => ForkResult {
                sandbox: Some(sandbox_answer(&state, &live)),
                error: None,
                mode: Some(mode(forked.memory)),
            },
            Err(err) => {
                let err = ApiError::from(err);
                ForkResult {
                    sandbox: None,
                    error: Some(cove_proto::rest::ApiError {
                        code: err.status().as_u16(),
                        message: err.message().to_owned(),
                    }),
                    mode: None,
                }
            }
        })
        .collect();
    Ok((StatusCode::CREATED, Json(results)).into_response())
}
