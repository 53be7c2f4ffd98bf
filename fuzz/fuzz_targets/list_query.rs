//! Query strings of the control plane (`cove_server::router` over the fake runtime): the list
//! of sandboxes with its metadata filter (URL-encoded twice, as the SDKs send it), states,
//! limit and `nextToken` cursor, the legacy list, and a sandbox's logs.
//!
//! Input: the route on the first line (`GET /v2/sandboxes`, `GET /sandboxes`,
//! `GET /sandboxes/{id}/logs`), the query string after it (bytes a URI cannot hold are
//! percent-encoded). Five sandboxes with different metadata run.
//! Properties: no query gets a 5xx; answers are JSON (errors in E2B's shape); following
//! `X-Next-Token` from any first page visits each sandbox at most once, in pages no longer
//! than the limit, ends, and (when it lists any) finds exactly what the unpaginated legacy list
//! finds with the same filter.
#![no_main]

use std::{collections::BTreeSet, sync::OnceLock};

use cove_fuzz::{Answer, Server, block_on, exchange, pick, query_text};
use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

const ROUTES: &[&str] = &[
    "GET /v2/sandboxes",
    "GET /sandboxes",
    "GET /sandboxes/{id}/logs",
];

struct Fixture {
    server: Server,
    ids: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = Server::new(50);
        let metadata = [
            json!({}),
            json!({"user": "alice"}),
            json!({"user": "bob", "k": "v"}),
            json!({"user id": "a&b", "x": "1=2"}),
            json!({"user": "alice", "k": "v"}),
        ];
        let ids = metadata
            .into_iter()
            .map(|m| {
                let created = block_on(server.create(json!({"timeout": 3600, "metadata": m})));
                created["sandboxID"].as_str().expect("an id").to_owned()
            })
            .collect();
        Fixture { server, ids }
    })
}

async fn get(fixture: &Fixture, uri: &str) -> Option<Answer> {
    // A query the URI grammar refuses never reaches a server.
    http::Uri::try_from(uri).ok()?;
    let request = fixture.server.request("GET", uri, Vec::new());
    let answer = exchange(&fixture.server.app, request).await;
    assert!(!answer.status.is_server_error(), "{uri}: {answer:?}");
    if answer.status != StatusCode::OK {
        answer.assert_rest_error(uri);
    }
    Some(answer)
}

fn ids_of(answer: &Answer) -> Vec<String> {
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(&answer.body).expect("a JSON list of sandboxes");
    list.iter()
        .map(|s| s["sandboxID"].as_str().expect("a sandboxID").to_owned())
        .collect()
}

/// The query's pairs, decoded as forms are (`+` is a space, `%XX` a byte).
fn pairs(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let escaped = bytes
                .get(i + 1..i + 3)
                .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok());
            match (bytes[i], escaped) {
                (b'+', _) => out.push(b' '),
                (b'%', Some(byte)) => {
                    out.push(byte);
                    i += 2;
                }
                (byte, _) => out.push(byte),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The page size the query asks for (the maximum when it asks for none).
fn limit_of(pairs: &[(String, String)]) -> usize {
    pairs
        .iter()
        .find(|(k, _)| k == "limit")
        .and_then(|(_, v)| v.parse::<i64>().ok())
        .map_or(100, |l| l.clamp(1, 100) as usize)
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let route = pick(&String::from_utf8_lossy(&data[..split]), ROUTES)
        .replace("{id}", &fixture.ids[data.len() % fixture.ids.len()]);
    let query = query_text(data.get(split + 1..).unwrap_or_default());
    let path = route.trim_start_matches("GET ");
    let uri = format!("{path}?{query}");

    block_on(async {
        let Some(first) = get(fixture, &uri).await else {
            return;
        };
        if first.status != StatusCode::OK || path != "/v2/sandboxes" {
            return;
        }
        let pairs = pairs(&query);
        if pairs.iter().any(|(k, _)| k == "nextToken") {
            // A walk that starts past some sandboxes: nothing to compare it with.
            return;
        }
        let limit = limit_of(&pairs);
        let mut seen = BTreeSet::new();
        let mut page = first;
        for _ in 0..=fixture.ids.len() {
            let ids = ids_of(&page);
            assert!(
                ids.len() <= limit,
                "{uri}: a page of {} over the limit {limit}",
                ids.len()
            );
            for id in ids {
                assert!(seen.insert(id.clone()), "{uri}: {id} listed twice");
            }
            let Some(token) = page.headers.get("x-next-token") else {
                break;
            };
            let token = token.to_str().expect("an ASCII token");
            let next = format!(
                "{uri}&nextToken={}",
                cove_fuzz::percent_encode(token.as_bytes())
            );
            page = get(fixture, &next).await.expect("our own URI is valid");
            assert_eq!(page.status, StatusCode::OK, "{next}: {page:?}");
        }
        assert!(
            page.headers.get("x-next-token").is_none(),
            "{uri}: the pages never end"
        );
        if !seen.is_empty() {
            let legacy = get(fixture, &format!("/sandboxes?{query}"))
                .await
                .expect("the same query parses on the legacy route");
            let all: BTreeSet<String> = ids_of(&legacy).into_iter().collect();
            assert_eq!(seen, all, "{uri}: the pages and the legacy list differ");
        }
    });
});
