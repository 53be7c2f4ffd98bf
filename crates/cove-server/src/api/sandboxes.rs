//! Creating sandboxes, their details, kill and timeout, and `/templates`.

use axum::{
    Json,
    body::Bytes,
    extract::{
        Path, State,
        rejection::{BytesRejection, JsonRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
};
use cove_proto::{
    envd::VERSION as ENVD_VERSION,
    rest::{
        ListedSandbox, NewSandbox, Sandbox, SandboxDetail, SandboxLifecycle, SandboxNetwork,
        SandboxState, SetTimeout,
    },
};
use cove_runtime::PauseMode;

use super::{ApiError, Team};
use crate::{
    AppState, clock,
    lifecycle::{ApiVersion, Live},
    store::SandboxRecord,
    telemetry::Outcome,
};

/// `clientID` is required by the Python SDK; E2B puts a node id there.
const CLIENT_ID: &str = "cove";

/// A JSON body, with E2B-shaped errors instead of axum's plain-text rejections.
pub(super) fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload
        .map(|Json(value)| value)
        .map_err(|rejection| body_error(rejection.status(), &rejection, rejection.body_text()))
}

/// A raw body, its rejection E2B-shaped.
pub(super) fn raw_body(payload: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    payload.map_err(|rejection| body_error(rejection.status(), &rejection, rejection.body_text()))
}

/// 413 for a body over the limit, 408 for one that stopped coming, 400 for the rest.
fn body_error(
    status: StatusCode,
    rejection: &(dyn std::error::Error + 'static),
    text: String,
) -> ApiError {
    let status = if crate::front::stalled(rejection).is_some() {
        StatusCode::REQUEST_TIMEOUT
    } else if status == StatusCode::PAYLOAD_TOO_LARGE {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        StatusCode::BAD_REQUEST
    };
    ApiError::new(status, format!("invalid request body: {text}"))
}

/// An optional JSON body: an empty body is the default value.
pub(super) fn optional_body<T: Default + serde::de::DeserializeOwned>(
    raw: &[u8],
) -> Result<T, ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(raw)
        .map_err(|err| ApiError::bad_request(format!("invalid request body: {err}")))
}

pub(super) fn sandbox_answer(state: &AppState, live: &Live) -> Sandbox {
    let record = live.record();
    Sandbox {
        template_id: record.template_id,
        sandbox_id: record.id,
        alias: record.alias,
        client_id: CLIENT_ID.to_owned(),
        envd_version: ENVD_VERSION.to_owned(),
        envd_access_token: Some(record.envd_access_token),
        traffic_access_token: record.traffic_access_token,
        domain: Some(state.domain().to_owned()),
    }
}

/// How a pause mode is named on the wire: E2B's `full` (memory kept) or `filesystem`.
pub(super) fn pause_mode_name(mode: PauseMode) -> &'static str {
    match mode {
        PauseMode::Memory => "full",
        PauseMode::Filesystem => "filesystem",
    }
}

pub(super) fn listed(record: SandboxRecord) -> ListedSandbox {
    ListedSandbox {
        template_id: record.template_id,
        alias: record.alias,
        sandbox_id: record.id,
        client_id: CLIENT_ID.to_owned(),
        started_at: clock::rfc3339(record.started_at),
        end_at: clock::rfc3339(record.end_at),
        cpu_count: record.cpu_count,
        memory_mb: record.memory_mb,
        disk_size_mb: record.disk_mb,
        metadata: record.metadata,
        state: if record.paused.is_some() {
            SandboxState::Paused
        } else {
            SandboxState::Running
        },
        envd_version: ENVD_VERSION.to_owned(),
    }
}

/// A node being drained takes no new sandboxes (creates, forks): 503, saying so.
pub fn refuse_if_draining(state: &AppState) -> Result<(), ApiError> {
    match state.membership().filter(|m| m.draining()) {
        Some(membership) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "node {} is being drained: it takes no new sandboxes (create them on another node)",
                membership.config.id
            ),
        )),
        None => Ok(()),
    }
}

async fn create(
    state: AppState,
    team: Team,
    request: NewSandbox,
    version: ApiVersion,
) -> Result<Response, ApiError> {
    refuse_if_draining(&state)?;
    let created = state.lifecycle().create(&team.0, request, version).await;
    let created = created.map_err(ApiError::from);
    let status = created
        .as_ref()
        .map_or_else(ApiError::status, |_| StatusCode::CREATED);
    let metrics = state.lifecycle().metrics();
    metrics.created(&team.0, Outcome::of(status));
    let live = created?;
    Ok((StatusCode::CREATED, Json(sandbox_answer(&state, &live))).into_response())
}

pub async fn create_v2(
    State(state): State<AppState>,
    team: Team,
    payload: Result<Json<NewSandbox>, JsonRejection>,
) -> Result<Response, ApiError> {
    create(state, team, body(payload)?, ApiVersion::V2).await
}

pub async fn create_v1(
    State(state): State<AppState>,
    team: Team,
    payload: Result<Json<NewSandbox>, JsonRejection>,
) -> Result<Response, ApiError> {
    create(state, team, body(payload)?, ApiVersion::V1).await
}

pub async fn info(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
) -> Result<Json<SandboxDetail>, ApiError> {
    let record = state.lifecycle().get(&team.0, &id)?.record();
    let token = record.envd_access_token.clone();
    let allow_internet = record.allow_internet_access;
    let lifecycle = SandboxLifecycle {
        auto_resume: record.lifecycle.auto_resume,
        on_timeout: if record.lifecycle.auto_pause.is_some() {
            "pause"
        } else {
            "kill"
        }
        .to_owned(),
    };
    let pause_mode = record.paused.map(|m| pause_mode_name(m).to_owned());
    let network = SandboxNetwork {
        allow_public_traffic: Some(record.traffic_access_token.is_none()),
        allow_out: record.egress.as_ref().map(|e| e.allow_out.clone()),
        deny_out: record.egress.as_ref().map(|e| e.deny_out.clone()),
        mask_request_host: record.mask_request_host.clone(),
        dns_servers: record
            .egress
            .as_ref()
            .filter(|e| !e.dns_servers.is_empty())
            .map(|e| e.dns_servers.clone()),
        rules: record
            .egress
            .as_ref()
            .filter(|e| !e.rules.is_empty())
            .map(|e| crate::lifecycle::rules_json(&e.rules)),
        ..SandboxNetwork::default()
    };
    Ok(Json(SandboxDetail {
        listed: listed(record),
        envd_access_token: Some(token),
        domain: Some(state.domain().to_owned()),
        allow_internet_access: Some(allow_internet),
        lifecycle: Some(lifecycle),
        pause_mode,
        network: Some(network),
    }))
}

pub async fn kill(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let began = std::time::Instant::now();
    let killed = state
        .lifecycle()
        .kill(&team.0, &id)
        .await
        .map_err(ApiError::from);
    let status = killed
        .as_ref()
        .map_or_else(ApiError::status, |()| StatusCode::NO_CONTENT);
    let metrics = state.lifecycle().metrics();
    metrics.killed(&team.0, Outcome::of(status), began.elapsed());
    killed.map(|()| StatusCode::NO_CONTENT)
}

pub async fn set_timeout(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
    payload: Result<Json<SetTimeout>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let request = body(payload)?;
    state
        .lifecycle()
        .set_timeout(&team.0, &id, request.timeout.max(0))?;
    Ok(StatusCode::NO_CONTENT)
}
