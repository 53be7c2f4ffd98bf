//! Resource use: `GET /sandboxes/{id}/metrics` (its history, `start` and `end` in unix
//! seconds; a running sandbox is sampled when asked) and `GET /sandboxes/metrics` (the
//! latest sample of each sandbox named in `sandbox_ids`).

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use cove_proto::rest::{SandboxMetric, SandboxesWithMetrics};
use serde::Deserialize;

use super::{ApiError, ApiQuery, Team};
use crate::{
    AppState, clock,
    lifecycle::{LifecycleError, Live, metrics_history::Sample},
};

/// The most sandboxes one `GET /sandboxes/metrics` may name (E2B's limit).
const MAX_IDS: usize = 100;

fn metric(sample: Sample) -> SandboxMetric {
    SandboxMetric {
        timestamp: clock::rfc3339(sample.at),
        timestamp_unix: sample.at / 1000,
        cpu_count: sample.cpu_count,
        cpu_used_pct: sample.cpu_used_pct,
        mem_used: sample.mem_used,
        mem_total: sample.mem_total,
        mem_cache: sample.mem_cache,
        disk_used: sample.disk_used,
        disk_total: sample.disk_total,
    }
}

/// Query of `GET /sandboxes/{id}/metrics`.
#[derive(Debug, Default, Deserialize)]
pub struct RangeQuery {
    /// Unix seconds.
    start: Option<i64>,
    end: Option<i64>,
}

/// Samples a running sandbox now; a paused one is not sampled.
async fn sample(state: &AppState, live: &Live, id: &str) -> Result<(), ApiError> {
    if live.paused().is_some() {
        return Ok(());
    }
    match state.lifecycle().sample_now(live).await {
        Ok(_) => Ok(()),
        // Killed or paused while we asked: its history is all there is.
        Err(_) if state.lifecycle().route(id).is_none() => {
            Err(LifecycleError::NotFound(id.to_owned()).into())
        }
        Err(_) if live.paused().is_some() => Ok(()),
        Err(err) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the sandbox's metrics: {err}"),
        )),
    }
}

pub async fn metrics(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
    ApiQuery(range): ApiQuery<RangeQuery>,
) -> Result<Json<Vec<SandboxMetric>>, ApiError> {
    if let (Some(start), Some(end)) = (range.start, range.end)
        && start > end
    {
        return Err(ApiError::bad_request(format!(
            "start ({start}) is after end ({end})"
        )));
    }
    let live = state.lifecycle().get(&team.0, &id)?;
    sample(&state, &live, &id).await?;
    let samples = state.lifecycle().history(
        &live,
        range.start.map(|s| s.saturating_mul(1000)),
        range
            .end
            .map(|e| e.saturating_mul(1000).saturating_add(999)),
    );
    Ok(Json(samples.into_iter().map(metric).collect()))
}

/// Query of `GET /sandboxes/metrics`.
#[derive(Debug, Default, Deserialize)]
pub struct IdsQuery {
    sandbox_ids: Option<String>,
}

pub async fn latest(
    State(state): State<AppState>,
    team: Team,
    ApiQuery(query): ApiQuery<IdsQuery>,
) -> Result<Json<SandboxesWithMetrics>, ApiError> {
    let ids: Vec<&str> = query
        .sandbox_ids
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .collect();
    if ids.is_empty() || ids.len() > MAX_IDS {
        return Err(ApiError::bad_request(format!(
            "sandbox_ids must name 1 to {MAX_IDS} sandboxes, comma-separated"
        )));
    }
    let mut sandboxes = BTreeMap::new();
    for id in ids {
        // Sandboxes the team does not have are left out, as E2B does.
        let Ok(live) = state.lifecycle().get(&team.0, id) else {
            continue;
        };
        if state.lifecycle().latest_sample(&live).is_none() {
            let _ = sample(&state, &live, id).await;
        }
        if let Some(sample) = state.lifecycle().latest_sample(&live) {
            sandboxes.insert(id.to_owned(), metric(sample));
        }
    }
    Ok(Json(SandboxesWithMetrics { sandboxes }))
}
