//! A sandbox's own log (what its setup and agent wrote, JSON lines), as E2B serves it:
//! `GET /sandboxes/{id}/logs` (each `line` a JSON object, which E2B's CLI parses, with the
//! same entries in `logEntries`) and `GET /v2/sandboxes/{id}/logs` (entries only, with a
//! `cursor`, a `direction`, a minimum `level` and a `search`).

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use cove_proto::rest::{SandboxLog, SandboxLogEntry, SandboxLogs, SandboxLogsV2};
use serde::Deserialize;
use serde_json::Value;

use super::{ApiError, ApiQuery, Team};
use crate::{AppState, clock};

/// The most entries one call returns.
const MAX_LIMIT: usize = 1000;

/// One entry of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// Unix milliseconds.
    at: i64,
    level: Level,
    message: String,
    /// Where in Cove it comes from (the tracing target), when known.
    logger: Option<String>,
    fields: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn parse(raw: &str) -> Option<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "trace" | "debug" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warn" | "warning" => Some(Level::Warn),
            "error" => Some(Level::Error),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// The entries of a log, oldest first. A line that is not one of Cove's JSON lines (the
/// network helper writes plain text) is an `info` entry of its own, dated like the line
/// before it (or `started_at`).
fn parse(text: &str, started_at: i64) -> Vec<Entry> {
    let mut last = started_at;
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let entry = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(mut object)) => {
                let at = object
                    .get("timestamp")
                    .and_then(Value::as_str)
                    .and_then(clock::parse_rfc3339)
                    .unwrap_or(last);
                let level = object
                    .get("level")
                    .and_then(Value::as_str)
                    .and_then(Level::parse)
                    .unwrap_or(Level::Info);
                let logger = object
                    .get("target")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let mut fields = match object.remove("fields") {
                    Some(Value::Object(fields)) => fields,
                    _ => serde_json::Map::new(),
                };
                let message = match fields.remove("message") {
                    Some(Value::String(message)) => message,
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                Entry {
                    at,
                    level,
                    message,
                    logger,
                    fields: fields
                        .into_iter()
                        .map(|(k, v)| match v {
                            Value::String(s) => (k, s),
                            other => (k, other.to_string()),
                        })
                        .collect(),
                }
            }
            _ => Entry {
                at: last,
                level: Level::Info,
                message: line.to_owned(),
                logger: None,
                fields: BTreeMap::new(),
            },
        };
        last = entry.at;
        entries.push(entry);
    }
    entries
}

impl Entry {
    fn api_entry(&self) -> SandboxLogEntry {
        let mut fields = self.fields.clone();
        if let Some(logger) = &self.logger {
            fields.insert("logger".to_owned(), logger.clone());
        }
        SandboxLogEntry {
            timestamp: clock::rfc3339(self.at),
            level: self.level.name().to_owned(),
            message: self.message.clone(),
            fields,
        }
    }

    /// The line as E2B's CLI reads it: one JSON object with `level`, `message`, `logger`
    /// and the entry's fields.
    fn json_line(&self) -> String {
        let mut object = serde_json::Map::new();
        for (key, value) in &self.fields {
            object.insert(key.clone(), Value::String(value.clone()));
        }
        object.insert("level".into(), Value::String(self.level.name().into()));
        object.insert("message".into(), Value::String(self.message.clone()));
        object.insert(
            "logger".into(),
            Value::String(self.logger.clone().unwrap_or_default()),
        );
        Value::Object(object).to_string()
    }
}

async fn entries(state: &AppState, team: &Team, id: &str) -> Result<Vec<Entry>, ApiError> {
    let live = state.lifecycle().get(&team.0, id)?;
    let text = state.lifecycle().log(&live).await.map_err(|err| {
        tracing::warn!(?err, sandbox_id = %id, "cannot read a sandbox's log");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the sandbox's log",
        )
    })?;
    Ok(parse(&text, live.read(|r| r.started_at)))
}

/// Query of `GET /sandboxes/{id}/logs`.
#[derive(Debug, Default, Deserialize)]
pub struct LogsQuery {
    /// Unix milliseconds: only entries from then on.
    start: Option<i64>,
    limit: Option<usize>,
}

pub async fn logs(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Json<SandboxLogs>, ApiError> {
    let since = query.start.unwrap_or(0);
    let limit = query.limit.unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
    let mut logs = SandboxLogs::default();
    for entry in entries(&state, &team, &id)
        .await?
        .into_iter()
        .filter(|e| e.at >= since)
        .take(limit)
    {
        logs.logs.push(SandboxLog {
            timestamp: clock::rfc3339(entry.at),
            line: entry.json_line(),
        });
        logs.log_entries.push(entry.api_entry());
    }
    Ok(Json(logs))
}

/// Query of `GET /v2/sandboxes/{id}/logs`.
#[derive(Debug, Default, Deserialize)]
pub struct LogsV2Query {
    /// Unix milliseconds: where to start (going forward or backward from there).
    cursor: Option<i64>,
    limit: Option<usize>,
    direction: Option<String>,
    level: Option<String>,
    search: Option<String>,
}

pub async fn logs_v2(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<LogsV2Query>,
) -> Result<Json<SandboxLogsV2>, ApiError> {
    let backward = match query.direction.as_deref() {
        None | Some("forward") => false,
        Some("backward") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown direction {other:?}: use forward or backward"
            )));
        }
    };
    let min_level = match query.level.as_deref() {
        None => Level::Debug,
        Some(raw) => Level::parse(raw).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown level {raw:?}: use debug, info, warn or error"
            ))
        })?,
    };
    if query.search.as_ref().is_some_and(|s| s.len() > 256) {
        return Err(ApiError::bad_request("search is longer than 256 bytes"));
    }
    let limit = query.limit.unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
    let mut found: Vec<Entry> = entries(&state, &team, &id)
        .await?
        .into_iter()
        .filter(|e| e.level >= min_level)
        .filter(|e| {
            query
                .search
                .as_deref()
                .is_none_or(|s| e.message.contains(s))
        })
        .filter(|e| match query.cursor {
            None => true,
            Some(cursor) if backward => e.at <= cursor,
            Some(cursor) => e.at >= cursor,
        })
        .collect();
    if backward {
        found.reverse();
    }
    found.truncate(limit);
    Ok(Json(SandboxLogsV2 {
        logs: found.iter().map(Entry::api_entry).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_become_entries_and_plain_lines_follow_them() {
        let log = concat!(
            r#"{"timestamp":"2026-01-01T00:00:01.000000Z","level":"INFO","fields":{"message":"agent listening","port":49983},"target":"cove_agent"}"#,
            "\n",
            "sent tapfd=5 for tap0\n",
            r#"{"timestamp":"2026-01-01T00:00:02Z","level":"WARN","fields":{"message":"slow"},"target":"cove_agent::x"}"#,
            "\n",
        );
        let entries = parse(log, 0);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].message, "agent listening");
        assert_eq!(entries[0].fields["port"], "49983");
        assert_eq!(entries[0].level, Level::Info);
        assert_eq!(entries[1].message, "sent tapfd=5 for tap0");
        assert_eq!(
            entries[1].at, entries[0].at,
            "a plain line takes the time before it"
        );
        assert_eq!(entries[2].level, Level::Warn);
        let line: Value = serde_json::from_str(&entries[0].json_line()).unwrap();
        assert_eq!(line["level"], "info");
        assert_eq!(line["message"], "agent listening");
        assert_eq!(line["logger"], "cove_agent");
        assert_eq!(line["port"], "49983");
        let api = entries[2].api_entry();
        assert_eq!(api.fields["logger"], "cove_agent::x");
        assert_eq!(api.timestamp, "2026-01-01T00:00:02.000Z");
    }
}
