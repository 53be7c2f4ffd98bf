//! `PUT /sandboxes/{id}/network`: replaces a sandbox's egress rules (`allowOut`, `denyOut`),
//! answered 204 as E2B does; its next connection is decided by them.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
};
use cove_proto::rest::SandboxNetworkUpdate;

use super::{ApiError, Team, sandboxes::body};
use crate::AppState;

pub async fn update(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
    payload: Result<Json<SandboxNetworkUpdate>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let update = body(payload)?;
    state
        .lifecycle()
        .update_network(&team.0, &id, update)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
