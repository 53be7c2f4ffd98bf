//! The control plane's own logic, through `router(state)` without a socket, over a fake
//! runtime: authentication, errors and their status codes, admission (limits, turns), the
//! reaper, and adoption after a restart. Real sandboxes are tested in crates/cove-cli/tests.
#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use axum::{Router, body::Body};
use cove_runtime::EndReason;
use cove_server::{AppState, ServerConfig, router, store::TeamLimits};
use cove_test_util::FakeRuntime;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const KEY: &str = "cove_test_lifecycle";

struct App {
    state: AppState,
    runtime: Arc<FakeRuntime>,
    config: ServerConfig,
    _dir: tempfile::TempDir,
}

fn config(dir: &std::path::Path) -> ServerConfig {
    ServerConfig {
        runtime: Default::default(),
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: dir.to_owned(),
        database: None,
        node: None,
        domain: None,
        api_keys: vec![KEY.to_owned()],
        kill_on_exit: false,
        max_sandboxes: 100,
        max_sandbox_memory_mb: Some(2048),
        max_sandbox_cpus: Some(4),
        max_starting: None,
        max_waiting: None,
        no_new_privs: false,
        disk_mb: 1024,
        volume_mb: 64,
        log_kb: 4096,
        warm: 0,
        exe: "/nonexistent/cove".into(),
        egress: Default::default(),
        front: Default::default(),
        operations: Default::default(),
        templates: Default::default(),
    }
}

async fn app(change: impl FnOnce(&mut ServerConfig)) -> App {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    change(&mut config);
    let runtime = FakeRuntime::new();
    let (state, _) = AppState::open(&config, runtime.clone(), "localhost:3000".into())
        .await
        .unwrap();
    App {
        state,
        runtime,
        config,
        _dir: dir,
    }
}

impl App {
    fn router(&self) -> Router {
        router(self.state.clone())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let body = match body {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let response = self
            .router()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, parts.headers, value)
    }

    async fn create(&self, body: Value) -> (StatusCode, HeaderMap, Value) {
        self.call(Method::POST, "/v2/sandboxes", Some(KEY), Some(body))
            .await
    }

    async fn created(&self) -> String {
        let (status, _, body) = self.create(json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["sandboxID"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused() {
    let app = app(|_| {}).await;
    let (status, _, body) = app.call(Method::GET, "/v2/sandboxes", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], 401);
    let (status, _, _) = app
        .call(Method::GET, "/v2/sandboxes", Some("cove_wrong"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(app.runtime.running().is_empty());
}

#[tokio::test]
async fn a_killed_sandbox_is_gone_and_says_why() {
    let app = app(|_| {}).await;
    let id = app.created().await;
    assert_eq!(app.runtime.running(), vec![id.clone()]);
    let path = format!("/sandboxes/{id}");
    let (status, _, body) = app.call(Method::GET, &path, Some(KEY), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = app.call(Method::DELETE, &path, Some(KEY), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(app.runtime.running().is_empty());
    let (status, _, body) = app.call(Method::GET, &path, Some(KEY), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["message"].as_str().unwrap().contains("it was killed"),
        "{body}"
    );
    // Nobody else learns about it.
    let other = app.state.store().create_key("other", "k").unwrap().1;
    let (status, _, body) = app.call(Method::GET, &path, Some(&other), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!body["message"].as_str().unwrap().contains("killed"));
}

#[tokio::test]
async fn resources_are_capped_by_the_server() {
    let app = app(|_| {}).await;
    for (request, field) in [
        (json!({"memoryMB": 262144}), "memoryMB"),
        (json!({"memoryMB": 16}), "memoryMB"),
        (json!({"cpuCount": 64}), "cpuCount"),
        (json!({"cpuCount": 0}), "cpuCount"),
    ] {
        let (status, _, body) = app.create(request.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(field) && message.contains("on this server"),
            "{message}"
        );
    }
    let (status, _, _) = app.create(json!({"memoryMB": 2048, "cpuCount": 4})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(app.runtime.running().len() == 1);
}

#[tokio::test]
async fn limits_answer_429_with_retry_after() {
    let app = app(|c| c.max_sandboxes = 3).await;
    app.state
        .store()
        .set_team_limits(
            cove_server::DEFAULT_TEAM,
            TeamLimits {
                max_sandboxes: None,
                max_memory_mb: Some(1536),
                max_cpus: None,
            },
        )
        .unwrap();
    app.created().await;
    let (status, headers, body) = app.create(json!({"memoryMB": 1024})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        body["message"].as_str().unwrap().contains("1536 MiB"),
        "{body}"
    );
    let (status, _, body) = app.create(json!({"memoryMB": 512})).await;
    assert_eq!(status, StatusCode::CREATED, "what fits still does: {body}");
    app.state
        .store()
        .set_team_limits(cove_server::DEFAULT_TEAM, TeamLimits::default())
        .unwrap();
    app.created().await;
    let (status, headers, body) = app.create(json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(body["message"].as_str().unwrap().contains("maximum of 3"));
    assert_eq!(app.runtime.running().len(), 3);
}

#[tokio::test]
async fn the_reaper_ends_only_what_it_saw_die_or_expire() {
    let app = app(|_| {}).await;
    let blind = app.created().await;
    let dying = app.created().await;
    let (_, _, body) = app.create(json!({"timeout": 0})).await;
    let expired = body["sandboxID"].as_str().unwrap().to_owned();

    app.runtime.make_unobservable(&blind, true);
    app.runtime.end(&dying, EndReason::OutOfMemory);
    app.state.lifecycle().reap().await;

    assert_eq!(app.runtime.running(), vec![blind.clone()]);
    assert!(!app.runtime.sandbox(&blind).unwrap().killed);
    let (status, _, body) = app
        .call(Method::GET, &format!("/sandboxes/{dying}"), Some(KEY), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["message"].as_str().unwrap().contains("out of memory"),
        "{body}"
    );
    let (_, _, body) = app
        .call(
            Method::GET,
            &format!("/sandboxes/{expired}"),
            Some(KEY),
            None,
        )
        .await;
    assert!(
        body["message"].as_str().unwrap().contains("timeout ended"),
        "{body}"
    );
    // Seen again, and running: still left alone.
    app.runtime.make_unobservable(&blind, false);
    app.state.lifecycle().reap().await;
    assert_eq!(app.runtime.running(), vec![blind]);
}

#[tokio::test]
async fn a_failed_create_leaves_nothing_behind() {
    let app = app(|_| {}).await;
    app.runtime.fail_next_creates(1);
    let (status, _, body) = app.create(json!({})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body["message"].as_str().unwrap().contains("told to fail"),
        "{body}"
    );
    assert!(app.state.store().sandboxes().unwrap().is_empty());
    let (_, _, list) = app
        .call(Method::GET, "/v2/sandboxes", Some(KEY), None)
        .await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn a_restart_adopts_what_runs_and_forgets_what_ended() {
    let app = app(|_| {}).await;
    let kept = app.created().await;
    let ended = app.created().await;
    app.runtime.end(&ended, EndReason::AgentExited);
    let (state, _) = AppState::open(&app.config, app.runtime.clone(), "localhost:3000".into())
        .await
        .unwrap();
    let ids: Vec<String> = state
        .lifecycle()
        .list(cove_server::DEFAULT_TEAM)
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![kept]);
    assert_eq!(state.store().sandboxes().unwrap().len(), 1);
}

#[tokio::test]
async fn a_burst_past_the_waiting_room_is_busy_never_failed() {
    let app = app(|c| {
        c.max_starting = Some(1);
        c.max_waiting = Some(2);
    })
    .await;
    app.runtime.slow_creates(Duration::from_millis(300));
    let answers = futures::future::join_all((0..6).map(|_| app.create(json!({})))).await;
    let created = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::CREATED)
        .count();
    let busy: Vec<_> = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(created + busy.len(), 6, "{answers:?}");
    assert!(
        created >= 3,
        "one starting and two waiting get through: {answers:?}"
    );
    assert!(!busy.is_empty(), "{answers:?}");
    for (_, headers, body) in busy {
        assert_eq!(headers["retry-after"], "1");
        assert!(body["message"].as_str().unwrap().contains("busy"), "{body}");
    }
    assert_eq!(app.runtime.running().len(), created);
}

#[tokio::test]
async fn a_hundred_clients_creating_and_killing_see_no_error() {
    let app = app(|c| c.max_sandboxes = 1000).await;
    let answers = futures::future::join_all((0..100).map(|_| async {
        let (status, _, body) = app.create(json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["sandboxID"].as_str().unwrap().to_owned();
        let (status, _, body) = app
            .call(Method::DELETE, &format!("/sandboxes/{id}"), Some(KEY), None)
            .await;
        (status, body)
    }))
    .await;
    for (status, body) in answers {
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    assert!(app.runtime.running().is_empty());
    assert!(app.state.store().sandboxes().unwrap().is_empty());
}
