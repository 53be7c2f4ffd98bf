//! The agent's small REST endpoints (`/health`, `/envs`, `/init`) and the JSON error shape
//! every REST endpoint answers with.

use std::{collections::BTreeMap, path::PathBuf};

use axum::{
    Json,
    extract::State,
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use crate::{AgentState, paths};

/// A REST failure: `{"code": <status>, "message": …}` with that status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestError {
    pub status: StatusCode,
    pub message: String,
}

impl RestError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let body = cove_proto::rest::ApiError {
            code: self.status.as_u16(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// `GET /health`: 204 while the agent is up.
pub async fn health() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::CACHE_CONTROL, "no-store")],
    )
        .into_response()
}

/// `GET /envs`: the sandbox-wide environment variables.
pub async fn envs(State(state): State<AgentState>) -> Json<BTreeMap<String, String>> {
    Json(state.defaults().env())
}

/// Body of `POST /init`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    default_user: Option<String>,
    #[serde(default)]
    default_workdir: Option<String>,
}

/// `POST /init`: sets sandbox-wide defaults. The access-token middleware has already
/// checked that a caller replacing an existing token knows it.
pub async fn init(
    State(state): State<AgentState>,
    body: axum::body::Bytes,
) -> Result<StatusCode, RestError> {
    apply_init(&state, &body)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Applies a `POST /init` body (also what a restore under a new identity leaves for the
/// agent, see [`crate::quiesce`]).
pub fn apply_init(state: &AgentState, body: &[u8]) -> Result<(), RestError> {
    let request: InitRequest = if body.iter().all(u8::is_ascii_whitespace) {
        InitRequest::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|err| RestError::bad_request(format!("invalid init request: {err}")))?
    };
    let defaults = state.defaults();
    if let Some(user) = request.default_user.filter(|u| !u.is_empty()) {
        state
            .accounts()
            .user(&user)
            .map_err(|err| RestError::bad_request(err.to_string()))?;
        defaults.set_user(user);
    }
    if let Some(workdir) = request.default_workdir.filter(|w| !w.is_empty()) {
        let workdir = PathBuf::from(workdir);
        if !workdir.is_absolute() {
            return Err(RestError::bad_request(format!(
                "default workdir {} must be absolute",
                workdir.display()
            )));
        }
        defaults.set_workdir(paths::clean(&workdir));
    }
    if let Some(vars) = request.env_vars {
        defaults.extend_env(vars);
    }
    if let Some(token) = request.access_token {
        defaults.set_access_token(Some(token));
    }
    Ok(())
}

/// Any other path.
pub async fn not_found(uri: Uri) -> RestError {
    RestError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}
