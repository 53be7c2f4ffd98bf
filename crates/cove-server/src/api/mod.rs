//! The E2B-compatible REST control plane.

mod cove_templates;
pub(crate) mod listing;
mod logs;
mod metrics;
mod network;
mod pause;
mod sandboxes;
pub mod snapshots;
mod templates;
mod volume_content;
mod volumes;

use axum::{
    Json, Router,
    extract::FromRequestParts,
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
};
use cove_proto::rest;

use crate::{AppState, lifecycle::LifecycleError};

/// The API's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route(
            "/v2/sandboxes",
            post(sandboxes::create_v2).get(listing::list_v2),
        )
        .route(
            "/sandboxes",
            post(sandboxes::create_v1).get(listing::list_v1),
        )
        .route("/v2/sandboxes/{id}/connect", post(pause::connect))
        .route("/sandboxes/{id}/connect", post(pause::connect))
        .route("/sandboxes/{id}/pause", post(pause::pause))
        .route("/sandboxes/{id}/resume", post(pause::resume))
        .route("/sandboxes/{id}", get(sandboxes::info))
        .route("/sandboxes/{id}", delete(sandboxes::kill))
        .route("/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
        .route("/sandboxes/{id}/network", put(network::update))
        .route("/sandboxes/metrics", get(metrics::latest))
        .route("/sandboxes/{id}/metrics", get(metrics::metrics))
        .route("/sandboxes/{id}/logs", get(logs::logs))
        .route("/v2/sandboxes/{id}/logs", get(logs::logs_v2))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create))
        .route("/sandboxes/{id}/fork", post(snapshots::fork))
        .route("/snapshots", get(snapshots::list))
        // Templates (api/templates.rs, api/cove_templates.rs).
        .route("/templates", get(templates::list))
        .route("/v3/templates", post(templates::request_build))
        .route(
            "/templates/{id}/files/{hash}",
            get(templates::file_upload_link).put(templates::upload_files),
        )
        .route(
            "/v2/templates/{id}/builds/{build}",
            post(templates::start_build),
        )
        .route(
            "/templates/{id}/builds/{build}/status",
            get(templates::build_status),
        )
        .route("/templates/aliases/{alias}", get(templates::alias))
        .route("/templates/{id}", delete(templates::delete))
        .route(
            "/templates/tags",
            post(templates::assign_tags).delete(templates::delete_tags),
        )
        .route("/templates/{id}/tags", get(templates::tags))
        .route("/cove/templates/import", post(cove_templates::import))
        .route("/cove/templates/usage", get(cove_templates::usage))
        .route("/cove/templates/gc", post(cove_templates::collect))
        // Volumes (api/volumes.rs) and their content (api/volume_content.rs).
        .route("/volumes", post(volumes::create).get(volumes::list))
        .route("/volumes/{id}", get(volumes::info).delete(volumes::delete))
        .route(
            "/volumecontent/{id}/path",
            get(volume_content::stat)
                .patch(volume_content::set_metadata)
                .delete(volume_content::remove),
        )
        .route(
            "/volumecontent/{id}/dir",
            get(volume_content::list).post(volume_content::make_dir),
        )
        .route(
            "/volumecontent/{id}/file",
            get(volume_content::read).put(volume_content::write),
        )
        // The web dashboard and its terminal (ui/).
        .merge(crate::ui::routes())
        .fallback(not_found)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// The OpenAPI document of this API.
const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

/// An error of the REST API: `{"code": status, "message": …}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds after which trying again may work (`Retry-After`).
    retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Says when trying again may work.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = rest::ApiError {
            code: self.status.as_u16(),
            message: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        match self.retry_after {
            Some(seconds) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            // The E2B SDKs retry 429 and 5xx answers unless told not to; these are not
            // transient.
            None if self.status.is_server_error()
                || self.status == StatusCode::TOO_MANY_REQUESTS =>
            {
                response
                    .headers_mut()
                    .insert("should-retry", HeaderValue::from_static("false"));
            }
            None => {}
        }
        response
    }
}

/// How long a client over a limit should wait before trying again, in seconds.
const RETRY_LIMIT_SECS: u32 = 5;
/// How long a client should wait when the server is busy starting sandboxes, in seconds.
const RETRY_BUSY_SECS: u32 = 1;
/// How long a client should wait when the server's disk is full, in seconds.
const RETRY_DISK_SECS: u32 = 30;

impl From<LifecycleError> for ApiError {
    fn from(err: LifecycleError) -> Self {
        let (status, retry_after) = match &err {
            LifecycleError::NotFound(_)
            | LifecycleError::Lost { .. }
            | LifecycleError::OnOtherNode { .. }
            | LifecycleError::Ended { .. }
            | LifecycleError::TemplateNotFound(_)
            | LifecycleError::SnapshotNotFound(_)
            | LifecycleError::TemplateNotReady(_) => (StatusCode::NOT_FOUND, None),
            LifecycleError::BadTimeout(_)
            | LifecycleError::BadResources(_)
            | LifecycleError::BadRequest(_)
            | LifecycleError::BadEnvVar(_)
            | LifecycleError::Transition {
                source: cove_runtime::RuntimeError::Unsupported { .. },
                ..
            }
            | LifecycleError::Start {
                source: cove_runtime::RuntimeError::Unsupported { .. },
                ..
            }
            // A conflict, but the SDKs read a 409 on pause as "paused already".
            | LifecycleError::Transition {
                source: cove_runtime::RuntimeError::NotNow { .. },
                ..
            } => (StatusCode::BAD_REQUEST, None),
            LifecycleError::AlreadyPaused(_)
            | LifecycleError::AlreadyRunning(_)
            | LifecycleError::NameTaken(_)
            | LifecycleError::Conflict(_) => (StatusCode::CONFLICT, None),
            LifecycleError::Paused(_) => (StatusCode::CONFLICT, None),
            LifecycleError::TooMany(_) | LifecycleError::TeamLimit(_) => {
                (StatusCode::TOO_MANY_REQUESTS, Some(RETRY_LIMIT_SECS))
            }
            LifecycleError::LayersUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, Some(RETRY_LIMIT_SECS))
            }
            LifecycleError::Busy
            | LifecycleError::Start {
                source: cove_runtime::RuntimeError::NoUidRange,
                ..
            } => (StatusCode::SERVICE_UNAVAILABLE, Some(RETRY_BUSY_SECS)),
            LifecycleError::Start {
                source: cove_runtime::RuntimeError::HostDiskFull { .. },
                ..
            } => (StatusCode::INSUFFICIENT_STORAGE, Some(RETRY_DISK_SECS)),
            LifecycleError::Store(store) if store.is_disk_full() => {
                (StatusCode::INSUFFICIENT_STORAGE, Some(RETRY_DISK_SECS))
            }
            LifecycleError::Store(store) if store.is_unavailable() => {
                return database_unavailable(&err);
            }
            LifecycleError::Catalog(catalog) if catalog.is_unavailable() => {
                return database_unavailable(&err);
            }
            LifecycleError::Volume(err) => (volume_status(err), None),
            LifecycleError::Catalog(catalog) if catalog.is_disk_full() => {
                (StatusCode::INSUFFICIENT_STORAGE, Some(RETRY_DISK_SECS))
            }
            LifecycleError::Start { .. }
            | LifecycleError::Kill { .. }
            | LifecycleError::Transition { .. }
            | LifecycleError::Crashed(_)
            | LifecycleError::StartCommand(_)
            | LifecycleError::Catalog(_)
            | LifecycleError::Store(_) => {
                tracing::error!(err = %format!("{:#}", ErrorChain(&err)), "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
        };
        let message = match &err {
            // The cause chain helps whoever runs the server; it names no secrets.
            LifecycleError::Start { .. }
            | LifecycleError::Transition { .. }
            | LifecycleError::StartCommand(_) => {
                format!("{}", ErrorChain(&err))
            }
            _ => err.to_string(),
        };
        let error = ApiError::new(status, message);
        match retry_after {
            Some(seconds) => error.retry_after(seconds),
            None => error,
        }
    }
}

/// How long a client waits before trying again while the state database is unreachable.
const RETRY_DATABASE_SECS: u32 = 5;

/// The answer while the state database (a PostgreSQL server) cannot be reached: nothing was
/// changed, and the request may be made again.
pub fn database_unavailable(err: &(dyn std::error::Error + 'static)) -> ApiError {
    tracing::error!(err = %format!("{:#}", ErrorChain(err)), "the state database cannot be reached");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server's state database cannot be reached: try again shortly (running sandboxes keep working)",
    )
    .retry_after(RETRY_DATABASE_SECS)
}

/// The status of a volume error: at a create, a volume that is not the team's is a bad
/// request (as E2B answers it); the server's own failures are 500.
fn volume_status(err: &crate::volumes::VolumeError) -> StatusCode {
    use crate::volumes::VolumeError;
    match err {
        VolumeError::BadName(_)
        | VolumeError::BadMount(_)
        | VolumeError::BadSize(_)
        | VolumeError::NotFound(_) => StatusCode::BAD_REQUEST,
        VolumeError::NameTaken(_) | VolumeError::InUse { .. } => StatusCode::CONFLICT,
        VolumeError::Store(store) if store.is_disk_full() => StatusCode::INSUFFICIENT_STORAGE,
        VolumeError::Store(store) if store.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
        VolumeError::Store(_) | VolumeError::Io { .. } => {
            tracing::error!(err = %format!("{:#}", ErrorChain(err)), "volume request failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// Displays an error with its causes, `a: b: c`.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

/// A query string, with E2B-shaped errors instead of axum's plain-text rejections (a query
/// that does not parse, such as `limit=x` or a key given twice, is a JSON 400 the SDKs read).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection| {
                ApiError::bad_request(format!("invalid query: {}", rejection.body_text()))
            })
    }
}

/// The team of the caller, from its `X-API-KEY`.
#[derive(Clone, Debug)]
pub struct Team(pub String);

impl FromRequestParts<AppState> for Team {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(key) = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing API key: send it in the X-API-KEY header",
            ));
        };
        team_of_key(state, key.trim())
    }
}

/// The team of the API key `key` (also for routes that get the key another way).
pub(crate) fn team_of_key(state: &AppState, key: &str) -> Result<Team, ApiError> {
    match state.keys().team_for_key(key) {
        Ok(Some(team)) => Ok(Team(team)),
        Ok(None) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid API key")),
        Err(err) => {
            tracing::error!(?err, "cannot check an API key");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot check the API key",
            ))
        }
    }
}
