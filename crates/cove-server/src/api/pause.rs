//! Pausing and resuming: `POST /sandboxes/{id}/pause`, `POST /v2/sandboxes/{id}/connect`
//! (200 when it was running, 201 when it was resumed) and the older
//! `POST /sandboxes/{id}/resume`.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use cove_proto::rest::{ConnectSandbox, PauseSandbox};
use cove_runtime::PauseMode;

use super::{
    ApiError, Team,
    sandboxes::{optional_body, raw_body, sandbox_answer},
};
use crate::{AppState, lifecycle::Connected};

pub async fn pause(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let request: PauseSandbox = optional_body(&raw_body(raw)?)?;
    let mode = if request.memory.unwrap_or(true) {
        PauseMode::Memory
    } else {
        PauseMode::Filesystem
    };
    if request.require_healthy_guest == Some(true) {
        let live = state.lifecycle().get(&team.0, &id)?;
        if live.paused().is_none()
            && crate::lifecycle::metrics_history::agent_metrics(&live)
                .await
                .is_err()
        {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("sandbox {id}'s agent does not answer; it was not paused"),
            )
            .retry_after(1));
        }
    }
    state.lifecycle().pause(&team.0, &id, mode).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn connect(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ConnectSandbox = optional_body(&raw_body(raw)?)?;
    let (status, live) = match state
        .lifecycle()
        .connect(&team.0, &id, request.timeout, request.memory)
        .await?
    {
        Connected::Running(live) => (StatusCode::OK, live),
        Connected::Resumed(live) => (StatusCode::CREATED, live),
    };
    Ok((status, Json(sandbox_answer(&state, &live))).into_response())
}

/// The deprecated resume: 201 with the sandbox, 409 when it runs.
pub async fn resume(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ConnectSandbox = optional_body(&raw_body(raw)?)?;
    let live = state
        .lifecycle()
        .resume(&team.0, &id, request.timeout)
        .await?;
    Ok((StatusCode::CREATED, Json(sandbox_answer(&state, &live))).into_response())
}
