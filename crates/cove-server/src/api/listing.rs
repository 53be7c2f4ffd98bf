//! `GET /v2/sandboxes` (and the older `GET /sandboxes`): a team's running and paused
//! sandboxes, filtered by `metadata`, `state`, `startedAfter` and `template`, sorted by
//! start time (`order`: `desc`, newest first, by default) and paged (`limit`, `nextToken`;
//! the next page's token comes in `X-Next-Token`).

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::State,
    http::HeaderValue,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use cove_proto::rest::ListedSandbox;
use serde::Deserialize;

use super::{ApiError, ApiQuery, Team, sandboxes::listed};
use crate::{AppState, clock, query::percent_decode, store::SandboxRecord};

/// Page size of `GET /v2/sandboxes` when the client names none (E2B's default and maximum).
const MAX_PAGE: usize = 100;

/// Query of `GET /v2/sandboxes`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    metadata: Option<String>,
    state: Option<String>,
    order: Option<String>,
    started_after: Option<String>,
    template: Option<String>,
    limit: Option<i64>,
    next_token: Option<String>,
}

/// What a listing asks for, checked.
struct Filter {
    metadata: MetadataFilter,
    running: bool,
    paused: bool,
    ascending: bool,
    started_after: Option<i64>,
    template: Option<String>,
}

impl Filter {
    fn parse(query: &ListQuery) -> Result<Self, ApiError> {
        let (mut running, mut paused) = (query.state.is_none(), query.state.is_none());
        for state in query
            .state
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match state {
                "running" => running = true,
                "paused" => paused = true,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown sandbox state {other:?}: use running or paused"
                    )));
                }
            }
        }
        let ascending = match query.order.as_deref() {
            None | Some("desc") => false,
            Some("asc") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "unknown order {other:?}: use asc or desc"
                )));
            }
        };
        let started_after = query
            .started_after
            .as_deref()
            .map(|t| {
                clock::parse_rfc3339(t).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "invalid startedAfter {t:?}: expected an RFC 3339 time such as 2026-01-31T12:00:00Z"
                    ))
                })
            })
            .transpose()?;
        Ok(Self {
            metadata: MetadataFilter::parse(query.metadata.as_deref())?,
            running,
            paused,
            ascending,
            started_after,
            template: query.template.clone().filter(|t| !t.is_empty()),
        })
    }

    fn matches(&self, record: &SandboxRecord) -> bool {
        let state_ok = if record.paused.is_some() {
            self.paused
        } else {
            self.running
        };
        let template_ok = self.template.as_deref().is_none_or(|t| {
            let t = t.split(':').next().unwrap_or(t);
            record.template_id == t || record.alias.as_deref() == Some(t)
        });
        state_ok
            && template_ok
            && self
                .started_after
                .is_none_or(|after| record.started_at >= after)
            && self.metadata.matches(&record.metadata)
    }

    /// Sorts `records` by start time in the asked order (ids break ties).
    fn sort(&self, records: &mut [SandboxRecord]) {
        records.sort_by(|a, b| {
            let by_time = a
                .started_at
                .cmp(&b.started_at)
                .then_with(|| a.id.cmp(&b.id));
            if self.ascending {
                by_time
            } else {
                b.started_at
                    .cmp(&a.started_at)
                    .then_with(|| a.id.cmp(&b.id))
            }
        });
    }
}

pub async fn list_v2(
    State(state): State<AppState>,
    team: Team,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    page_v2(state.lifecycle().list(&team.0), &query)
}

/// The page of `records` (a team's sandboxes) that `query` asks for, as `GET /v2/sandboxes`
/// answers it.
pub(crate) fn page_v2(
    mut matching: Vec<SandboxRecord>,
    query: &ListQuery,
) -> Result<Response, ApiError> {
    let filter = Filter::parse(query)?;
    let limit = query
        .limit
        .unwrap_or(MAX_PAGE as i64)
        .clamp(1, MAX_PAGE as i64) as usize;
    let after = query
        .next_token
        .as_deref()
        .map(Cursor::decode)
        .transpose()?;

    matching.retain(|r| filter.matches(r));
    filter.sort(&mut matching);
    if let Some(after) = &after {
        matching.retain(|r| after.is_before(r, filter.ascending));
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

/// The deprecated `GET /sandboxes`: running sandboxes only, one page.
pub async fn list_v1(
    State(state): State<AppState>,
    team: Team,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<ListedSandbox>>, ApiError> {
    page_v1(state.lifecycle().list(&team.0), &query)
}

/// What `GET /sandboxes` answers for `records` (a team's sandboxes, newest first).
pub(crate) fn page_v1(
    records: Vec<SandboxRecord>,
    query: &ListQuery,
) -> Result<Json<Vec<ListedSandbox>>, ApiError> {
    let filter = MetadataFilter::parse(query.metadata.as_deref())?;
    Ok(Json(
        records
            .into_iter()
            .filter(|r| r.paused.is_none() && filter.matches(&r.metadata))
            .map(listed)
            .collect(),
    ))
}

/// Position in a listing: after the sandbox started at `started_at` with `id`.
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

    /// Whether `record` comes after the cursor in the listing's order.
    fn is_before(&self, record: &SandboxRecord, ascending: bool) -> bool {
        let later_in_time = if ascending {
            record.started_at > self.started_at
        } else {
            record.started_at < self.started_at
        };
        later_in_time || (record.started_at == self.started_at && record.id > self.id)
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

#[cfg(test)]
mod tests {
    use axum::{extract::FromRequestParts, http::StatusCode};

    use super::*;

    /// Found by the `list_query` fuzz target: a query that does not parse (`limit=x`, a key
    /// given twice) was answered with axum's plain-text 400, which the E2B SDKs cannot read.
    #[tokio::test]
    async fn a_query_that_does_not_parse_is_an_e2b_error() {
        for uri in [
            "/v2/sandboxes?limit=1&limit=2",
            "/v2/sandboxes?limit=x",
            "/v2/sandboxes?limit=-99999999999999999999",
        ] {
            let (mut parts, ()) = axum::http::Request::get(uri).body(()).unwrap().into_parts();
            let err = ApiQuery::<ListQuery>::from_request_parts(&mut parts, &())
                .await
                .unwrap_err();
            let response = err.into_response();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(
                response.headers()["content-type"],
                "application/json",
                "{uri}"
            );
        }
    }

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

    #[test]
    fn filters_are_checked() {
        let query = |state: &str, order: &str, after: &str| ListQuery {
            state: Some(state.into()),
            order: Some(order.into()),
            started_after: Some(after.into()),
            ..ListQuery::default()
        };
        let filter = Filter::parse(&query("paused", "asc", "2026-01-01T00:00:00+01:00")).unwrap();
        assert!(filter.paused && !filter.running && filter.ascending);
        assert_eq!(filter.started_after, Some(1_767_222_000_000));
        assert!(Filter::parse(&query("stopped", "asc", "2026-01-01T00:00:00Z")).is_err());
        assert!(Filter::parse(&query("paused", "up", "2026-01-01T00:00:00Z")).is_err());
        assert!(Filter::parse(&query("paused", "asc", "yesterday")).is_err());
        let all = Filter::parse(&ListQuery::default()).unwrap();
        assert!(all.running && all.paused && !all.ascending);
    }
}
