//! Serving the metrics, and who may read them. They name every team and how much it runs,
//! which no tenant should learn of another, so an API key never opens them. Two ways in:
//!
//! - `--metrics-listen ADDR`: a listener of their own that serves only `GET /metrics`, without
//!   authentication; the operator decides who reaches it (a loopback or private address, a
//!   firewall), as usual for Prometheus exporters.
//! - `--metrics-token TOKEN`: `GET /metrics` on the main port with `Authorization: Bearer
//!   TOKEN` (Prometheus' `authorization` setting of a scrape job).
//!
//! Without either, `/metrics` on the main port answers 404 and says how to turn it on.

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{AppState, api::ApiError};

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics` on the main port: only with the metrics token.
pub async fn scrape(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(token) = state.metrics_token() else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics are not served on this port: start cove serve with --metrics-listen ADDR \
             (a listener of their own) or --metrics-token TOKEN (then send `Authorization: \
             Bearer TOKEN`)",
        )
        .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given)
            if cove_proto::signing::constant_time_eq(given.trim().as_bytes(), token.as_bytes()) =>
        {
            render(&state)
        }
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "invalid metrics token").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing metrics token: send `Authorization: Bearer TOKEN` (--metrics-token)",
        )
        .into_response(),
    }
}

/// The application of `--metrics-listen`: `GET /metrics` and nothing else.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(open_scrape))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "this listener serves GET /metrics only",
            )
        })
        .with_state(state)
}

async fn open_scrape(State(state): State<AppState>) -> Response {
    render(&state)
}

fn render(state: &AppState) -> Response {
    let census = state.lifecycle().census();
    let text = state.lifecycle().metrics().render(&census);
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        text,
    )
        .into_response()
}

/// Middleware around the API: counts the requests it refuses for lack of room.
pub async fn count_refusals(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    state.lifecycle().metrics().api_refused(response.status());
    response
}
