//! `/sandboxes`, `/v2/sandboxes` and `/templates`.

use std::collections::BTreeMap;

use axum::{
    Json,
    body::Bytes,
    extract::{
        Path, Query, State,
        rejection::{BytesRejection, JsonRejection},
    },
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use cove_proto::{
    envd::VERSION as ENVD_VERSION,
    rest::{
        ConnectSandbox, ListedSandbox, NewSandbox, Sandbox, SandboxDetail, SandboxLog,
        SandboxLogEntry, SandboxLogs, SandboxMetric, SandboxState, SetTimeout,
    },
};
use serde::Deserialize;

use super::{ApiError, Team};
use crate::{
    AppState, clock,
    lifecycle::{ApiVersion, LifecycleError, Live},
    query::percent_decode,
    store::SandboxRecord,
};

/// `clientID` is required by the Python SDK; E2B puts a node id there.
const CLIENT_ID: &str = "cove";
/// Page size of `GET /v2/sandboxes` when the client names none (E2B's default and maximum).
const MAX_PAGE: usize = 100;

/// A JSON body, with E2B-shaped errors instead of axum's plain-text rejections.
fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload
        .map(|Json(value)| value)
        .map_err(|rejection| body_error(rejection.status(), &rejection, rejection.body_text()))
}

/// A raw body, its rejection E2B-shaped.
fn raw_body(payload: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
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
fn optional_body<T: Default + serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(raw)
        .map_err(|err| ApiError::bad_request(format!("invalid request body: {err}")))
}

fn sandbox_answer(state: &AppState, live: &Live) -> Sandbox {
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

fn listed(record: SandboxRecord) -> ListedSandbox {
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
        state: SandboxState::Running,
        envd_version: ENVD_VERSION.to_owned(),
    }
}

async fn create(
    state: AppState,
    team: Team,
    request: NewSandbox,
    version: ApiVersion,
) -> Result<Response, ApiError> {
    let live = state.lifecycle().create(&team.0, request, version).await?;
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

pub async fn connect(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Sandbox>, ApiError> {
    let request: ConnectSandbox = optional_body(&raw_body(raw)?)?;
    let live = state.lifecycle().connect(&team.0, &id, request.timeout)?;
    Ok(Json(sandbox_answer(&state, &live)))
}

/// Query of `GET /v2/sandboxes`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    metadata: Option<String>,
    state: Option<String>,
    limit: Option<i64>,
    next_token: Option<String>,
}

pub async fn list_v2(
    State(state): State<AppState>,
    team: Team,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let filter = MetadataFilter::parse(query.metadata.as_deref())?;
    let wants_running = match &query.state {
        None => true,
        Some(states) => {
            let mut running = false;
            for s in states.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match s {
                    "running" => running = true,
                    "paused" => {}
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "unknown sandbox state {other:?}: use running or paused"
                        )));
                    }
                }
            }
            running
        }
    };
    let limit = query
        .limit
        .unwrap_or(MAX_PAGE as i64)
        .clamp(1, MAX_PAGE as i64) as usize;
    let after = query
        .next_token
        .as_deref()
        .map(Cursor::decode)
        .transpose()?;

    let mut matching: Vec<SandboxRecord> = if wants_running {
        state.lifecycle().list(&team.0)
    } else {
        Vec::new()
    };
    matching.retain(|r| filter.matches(&r.metadata));
    if let Some(after) = &after {
        matching.retain(|r| after.is_before(r));
    }
    let more = matching.len() > limit;
    matching.truncate(limit);
    let next = more.then(|| matching.last().map(Cursor::after)).flatten();
    let mut response = Json(matching.into_iter().map(listed).collect::<Vec<_>>()).into_response();
    if let Some(next) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert("x-next-token", next);
    }
    Ok(response)
}

pub async fn list_v1(
    State(state): State<AppState>,
    team: Team,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<ListedSandbox>>, ApiError> {
    let filter = MetadataFilter::parse(query.metadata.as_deref())?;
    Ok(Json(
        state
            .lifecycle()
            .list(&team.0)
            .into_iter()
            .filter(|r| filter.matches(&r.metadata))
            .map(listed)
            .collect(),
    ))
}

/// Position in the newest-first listing: after the sandbox started at `started_at` with `id`.
struct Cursor {
    started_at: i64,
    id: String,
}

impl Cursor {
    fn after(record: &SandboxRecord) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{}:{}", record.started_at, record.id))
    }

    fn decode(token: &str) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::bad_request("invalid nextToken: pass the X-Next-Token of the previous page")
        };
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (started_at, id) = raw.split_once(':').ok_or_else(bad)?;
        Ok(Self {
            started_at: started_at.parse().map_err(|_| bad())?,
            id: id.to_owned(),
        })
    }

    /// Whether `record` comes after the cursor in newest-first order.
    fn is_before(&self, record: &SandboxRecord) -> bool {
        record.started_at < self.started_at
            || (record.started_at == self.started_at && record.id > self.id)
    }
}

/// `metadata=k%3Dv%26k2%3Dv2`: every pair must match.
struct MetadataFilter(Vec<(String, String)>);

impl MetadataFilter {
    fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return Ok(Self(Vec::new()));
        };
        let bad = || {
            ApiError::bad_request(format!(
                "invalid metadata filter {raw:?}: expected key=value pairs joined by &"
            ))
        };
        let decoded = percent_decode(raw).ok_or_else(bad)?;
        let mut pairs = Vec::new();
        for pair in decoded.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(bad)?;
            pairs.push((
                percent_decode(key).ok_or_else(bad)?,
                percent_decode(value).ok_or_else(bad)?,
            ));
        }
        Ok(Self(pairs))
    }

    fn matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| metadata.get(k) == Some(v))
    }
}

pub async fn info(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
) -> Result<Json<SandboxDetail>, ApiError> {
    let record = state.lifecycle().get(&team.0, &id)?.record();
    let token = record.envd_access_token.clone();
    let allow_internet = record.allow_internet_access;
    Ok(Json(SandboxDetail {
        listed: listed(record),
        envd_access_token: Some(token),
        domain: Some(state.domain().to_owned()),
        allow_internet_access: Some(allow_internet),
    }))
}

pub async fn kill(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.lifecycle().kill(&team.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
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

/// The sandbox's resource use now, measured by its agent.
pub async fn metrics(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
) -> Result<Json<Vec<SandboxMetric>>, ApiError> {
    let live = state.lifecycle().get(&team.0, &id)?;
    // Disk use is what the sandbox itself sees; CPU and memory come from its cgroup.
    let disk = match crate::proxy::agent_metrics(&live).await {
        Ok(sample) => sample,
        // Killed while we asked: as gone as it will be a moment later.
        Err(_) if state.lifecycle().route(&id).is_none() => {
            return Err(LifecycleError::NotFound(id).into());
        }
        Err(err) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the sandbox's metrics: {err}"),
            ));
        }
    };
    let record = live.record();
    let (mem_used, mem_cache, cpu_used_pct) = match state.lifecycle().usage(&live).await {
        Some((usage, cpu_pct)) => (usage.memory_bytes, usage.cache_bytes, cpu_pct),
        None => (disk.mem_used, disk.mem_cache, disk.cpu_used_pct),
    };
    let now = clock::now_ms();
    Ok(Json(vec![SandboxMetric {
        timestamp: clock::rfc3339(now),
        timestamp_unix: now / 1000,
        cpu_count: record.cpu_count,
        cpu_used_pct,
        mem_used,
        mem_total: record.memory_mb << 20,
        mem_cache,
        disk_used: disk.disk_used,
        disk_total: disk.disk_total,
    }]))
}

/// Query of the logs endpoint.
#[derive(Debug, Default, Deserialize)]
pub struct LogsQuery {
    /// Unix milliseconds: only lines from then on.
    start: Option<i64>,
    limit: Option<usize>,
}

/// The sandbox's own log: what its setup and agent wrote.
pub async fn logs(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Json<SandboxLogs>, ApiError> {
    let live = state.lifecycle().get(&team.0, &id)?;
    let text = state.lifecycle().log(&live).await.map_err(|err| {
        tracing::warn!(?err, sandbox_id = %id, "cannot read a sandbox's log");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the sandbox's log",
        )
    })?;
    let since = query.start.unwrap_or(0);
    let limit = query.limit.unwrap_or(1000).min(10_000);
    let mut logs = SandboxLogs::default();
    // A line with no time of its own (a continuation) belongs to the one before.
    let mut last = live.record().started_at;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (timestamp, rest) = line.split_once(' ').unwrap_or(("", line));
        let at = humantime::parse_rfc3339_weak(timestamp.trim_end_matches('Z'))
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64);
        if at.is_some_and(|at| at < since) {
            continue;
        }
        let at = at.unwrap_or(last);
        last = at;
        let timestamp = clock::rfc3339(at);
        let rest = rest.trim_start();
        let (level, message) = rest.split_once(' ').unwrap_or(("INFO", rest));
        logs.logs.push(SandboxLog {
            timestamp: timestamp.clone(),
            line: line.to_owned(),
        });
        logs.log_entries.push(SandboxLogEntry {
            timestamp,
            level: match level {
                "ERROR" => "error",
                "WARN" => "warn",
                "DEBUG" | "TRACE" => "debug",
                _ => "info",
            }
            .to_owned(),
            message: message.trim().to_owned(),
            fields: BTreeMap::new(),
        });
        if logs.logs.len() >= limit {
            break;
        }
    }
    Ok(Json(logs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filter_decodes_like_e2b() {
        // {"user id": "a&b"} as the Python SDK sends it, after normal query decoding.
        let filter = MetadataFilter::parse(Some("user%2520id=a%2526b")).unwrap();
        assert_eq!(filter.0, vec![("user id".to_owned(), "a&b".to_owned())]);
        let filter = MetadataFilter::parse(Some("a%3Db%26c%3Dd")).unwrap();
        assert!(filter.matches(&BTreeMap::from([
            ("a".into(), "b".into()),
            ("c".into(), "d".into())
        ])));
        assert!(!filter.matches(&BTreeMap::from([("a".into(), "b".into())])));
        assert!(MetadataFilter::parse(Some("novalue")).is_err());
    }
}
