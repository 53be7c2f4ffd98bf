//! Pausing, resuming, snapshots and forks in the control plane, through `router(state)`
//! without a socket, over a fake runtime: the state machine (pause, connect 200/201,
//! reboots, auto-pause on timeout, auto-resume by traffic), its races (two resumes, a
//! connect during an auto-pause, a kill during a pause), adoption of paused sandboxes after
//! a restart, snapshots as templates of their team, forks, listing filters and logs. Real
//! sandboxes are tested in crates/cove-cli/tests/pause.rs and tests/compat.
#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use axum::{Router, body::Body};
use cove_runtime::PauseMode;
use cove_server::{AppState, ServerConfig, router};
use cove_test_util::FakeRuntime;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const KEY: &str = "cove_test_pause";

struct App {
    state: AppState,
    runtime: Arc<FakeRuntime>,
    config: ServerConfig,
    dir: tempfile::TempDir,
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

async fn app() -> App {
    app_with(|_| {}).await
}

async fn app_with(change: impl FnOnce(&mut ServerConfig)) -> App {
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
        dir,
    }
}

impl App {
    fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// The same server started again (a restart) over the same runtime and state.
    async fn restart(&mut self) {
        let (state, _) =
            AppState::open(&self.config, self.runtime.clone(), "localhost:3000".into())
                .await
                .unwrap();
        self.state = state;
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let response = self.router().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, parts.headers, value)
    }

    async fn call_as(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("x-api-key", key);
        let body = match body {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).unwrap()).await
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (status, _, body) = self.call_as(KEY, method, path, body).await;
        (status, body)
    }

    async fn created(&self, body: Value) -> String {
        let (status, body) = self.call(Method::POST, "/v2/sandboxes", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["sandboxID"].as_str().unwrap().to_owned()
    }

    async fn info(&self, id: &str) -> Value {
        let (status, body) = self
            .call(Method::GET, &format!("/sandboxes/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn pause(&self, id: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, &format!("/sandboxes/{id}/pause"), Some(body))
            .await
    }

    async fn connect(&self, id: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/v2/sandboxes/{id}/connect"),
            Some(body),
        )
        .await
    }

    async fn listed(&self, query: &str) -> Vec<String> {
        let (status, body) = self
            .call(Method::GET, &format!("/v2/sandboxes{query}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array()
            .unwrap()
            .iter()
            .map(|s| s["sandboxID"].as_str().unwrap().to_owned())
            .collect()
    }

    /// A request through the proxy to port `port` of sandbox `id`.
    async fn traffic(&self, id: &str, port: u16, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .uri("/anything")
            .header("e2b-sandbox-id", id)
            .header("e2b-sandbox-port", port.to_string());
        if let Some(token) = token {
            request = request.header("x-access-token", token);
        }
        let (status, _, body) = self.send(request.body(Body::empty()).unwrap()).await;
        (status, body)
    }
}

#[tokio::test]
async fn pause_and_connect_follow_e2b() {
    let app = app().await;
    let id = app.created(json!({})).await;
    let token = app.info(&id).await["envdAccessToken"].clone();

    let (status, body) = app.pause(&id, json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(app.runtime.paused(), vec![id.clone()]);
    let info = app.info(&id).await;
    assert_eq!(info["state"], "paused");
    assert_eq!(info["pauseMode"], "full");
    assert_eq!(
        info["lifecycle"],
        json!({"autoResume": false, "onTimeout": "kill"})
    );
    let (status, body) = app.pause(&id, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["message"].as_str().unwrap().contains("already paused"));

    assert_eq!(app.listed("?state=paused").await, vec![id.clone()]);
    assert!(app.listed("?state=running").await.is_empty());
    assert_eq!(
        app.listed("").await,
        vec![id.clone()],
        "both states by default"
    );
    // The older listing shows running sandboxes only.
    let (_, old) = app.call(Method::GET, "/sandboxes", None).await;
    assert_eq!(old, json!([]));

    let (status, body) = app.connect(&id, json!({"timeout": 120})).await;
    assert_eq!(status, StatusCode::CREATED, "resumed: {body}");
    assert_eq!(body["sandboxID"], id);
    assert_eq!(body["envdAccessToken"], token, "same token");
    assert_eq!(app.runtime.running(), vec![id.clone()]);
    let info = app.info(&id).await;
    assert_eq!(info["state"], "running");
    assert!(info.get("pauseMode").is_none());
    let (status, _) = app.connect(&id, json!({})).await;
    assert_eq!(status, StatusCode::OK, "already running");

    // The deprecated resume: 409 while running, 201 when paused.
    let resume = format!("/sandboxes/{id}/resume");
    let (status, _) = app.call(Method::POST, &resume, Some(json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    app.pause(&id, json!({"memory": true})).await;
    let (status, body) = app
        .call(Method::POST, &resume, Some(json!({"timeout": 60})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let (status, _) = app.pause("missing", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.connect("missing", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_pause_without_memory_restarts_and_a_reboot_drops_memory() {
    let app = app().await;
    let id = app.created(json!({})).await;
    let (status, _) = app.pause(&id, json!({"memory": false})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.info(&id).await["pauseMode"], "filesystem");
    let (status, _) = app.connect(&id, json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app.runtime.sandbox(&id).unwrap().starts, 2, "started again");

    // A memory pause resumed with memory: false starts again from the files.
    app.pause(&id, json!({})).await;
    let (status, _) = app.connect(&id, json!({"memory": false})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app.runtime.sandbox(&id).unwrap().starts, 3);
    assert_eq!(app.runtime.running(), vec![id]);
}

#[tokio::test]
async fn a_backend_that_cannot_pause_with_memory_says_so_and_the_sandbox_runs_on() {
    let app = app().await;
    app.runtime.refuse_memory_pauses();
    let id = app.created(json!({})).await;
    let (status, body) = app.pause(&id, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("cannot pause"),
        "{body}"
    );
    assert_eq!(app.info(&id).await["state"], "running");
    let (status, _) = app.pause(&id, json!({"memory": false})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_paused_sandbox_has_no_timeout_and_auto_pause_pauses_instead_of_killing() {
    let app = app().await;
    let paused = app.created(json!({"timeout": 0})).await;
    app.pause(&paused, json!({})).await;
    let memory = app.created(json!({"timeout": 0, "autoPause": true})).await;
    let files = app
        .created(json!({"timeout": 0, "autoPause": true, "autoPauseMemory": false}))
        .await;
    let killed = app.created(json!({"timeout": 0, "autoPause": false})).await;
    app.state.lifecycle().reap().await;

    assert_eq!(
        app.info(&paused).await["state"],
        "paused",
        "not killed while paused"
    );
    assert_eq!(app.info(&memory).await["pauseMode"], "full");
    assert_eq!(app.info(&memory).await["lifecycle"]["onTimeout"], "pause");
    assert_eq!(app.info(&files).await["pauseMode"], "filesystem");
    let (status, _) = app
        .call(Method::GET, &format!("/sandboxes/{killed}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Reaped again: nothing changes for paused sandboxes.
    app.state.lifecycle().reap().await;
    assert_eq!(app.runtime.paused().len(), 3);

    // Resumed for the connect's timeout; then the next timeout pauses it again.
    let (status, _) = app.connect(&memory, json!({"timeout": 0})).await;
    assert_eq!(status, StatusCode::CREATED);
    app.state.lifecycle().reap().await;
    assert_eq!(app.info(&memory).await["state"], "paused");

    for bad in [
        json!({"autoResume": {"enabled": true}}),
        json!({"autoPause": true, "autoPauseMemory": false, "autoResume": {"enabled": true}}),
    ] {
        let (status, body) = app
            .call(Method::POST, "/v2/sandboxes", Some(bad.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("autoResume"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn traffic_resumes_only_what_asked_for_it_and_only_for_its_own_clients() {
    let app = app().await;
    let auto = app
        .created(json!({"timeout": 0, "autoPause": true, "autoResume": {"enabled": true}}))
        .await;
    let manual = app.created(json!({"timeout": 0, "autoPause": true})).await;
    app.state.lifecycle().reap().await;
    assert_eq!(app.runtime.paused().len(), 2);

    // Without autoResume: refused, still paused.
    let (status, body) = app.traffic(&manual, 8080, None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["message"], "The sandbox is paused");
    assert_eq!(app.info(&manual).await["state"], "paused");
    // The agent's port without the sandbox's token does not wake it either.
    let (status, _) = app.traffic(&auto, 49983, Some("wrong")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(app.info(&auto).await["state"], "paused");

    // A request to one of its ports resumes it (the fake has nothing listening, so the
    // request itself then fails; the sandbox runs).
    app.traffic(&auto, 8080, None).await;
    let info = app.info(&auto).await;
    assert_eq!(info["state"], "running");
    assert_eq!(
        info["lifecycle"],
        json!({"autoResume": true, "onTimeout": "pause"})
    );

    // Paused without memory, it is not resumed behind the client's back.
    app.pause(&auto, json!({"memory": false})).await;
    let (status, _) = app.traffic(&auto, 8080, None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(app.info(&auto).await["state"], "paused");
}

/// The reaper looks at every running sandbox at once, then acts on what it saw: a sandbox
/// paused without its memory in between (its processes ended by the pause) was ended as
/// "its agent exited" (a CI run caught it with the Rust SDK's pause test).
#[tokio::test(flavor = "multi_thread")]
async fn the_reaper_does_not_end_what_was_paused_while_it_looked() {
    let app = app().await;
    let id = app.created(json!({})).await;
    app.runtime.slow_liveness(Duration::from_millis(500));
    let lifecycle = app.state.lifecycle().clone();
    let reaping = tokio::spawn(async move { lifecycle.reap().await });
    cove_test_util::wait_until("the reaper to look", Duration::from_secs(60), || async {
        (app.runtime.looks_under_way() > 0).then_some(())
    })
    .await;
    let (status, body) = app.pause(&id, json!({"memory": false})).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    reaping.await.unwrap();

    assert_eq!(app.info(&id).await["state"], "paused");
    let (status, _) = app.connect(&id, json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app.runtime.running(), vec![id]);
}

/// Waits until the runtime is in the middle of a pause, resume or snapshot.
async fn under_way(app: &App) {
    cove_test_util::wait_until(
        "a transition to be under way",
        Duration::from_secs(60),
        || async { (app.runtime.transitions_under_way() > 0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_transitions_end_in_one_clear_state() {
    let app = app().await;
    app.runtime.slow_transitions(Duration::from_millis(200));

    // Two resumes at once: one resumes, the other finds it running.
    let id = app.created(json!({})).await;
    app.pause(&id, json!({})).await;
    let (a, b) = tokio::join!(app.connect(&id, json!({})), app.connect(&id, json!({})));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CREATED]);
    assert_eq!(app.runtime.running(), vec![id.clone()]);

    // A connect during an auto-pause waits for it, then resumes.
    let auto = app.created(json!({"timeout": 0, "autoPause": true})).await;
    let lifecycle = app.state.lifecycle().clone();
    let reaping = tokio::spawn(async move { lifecycle.reap().await });
    under_way(&app).await;
    let (status, _) = app.connect(&auto, json!({"timeout": 60})).await;
    reaping.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "resumed after the pause");
    assert_eq!(app.info(&auto).await["state"], "running");

    // A kill during a pause: the pause finishes, then the kill ends the paused sandbox.
    let killed = app.created(json!({})).await;
    let (paused, gone) = tokio::join!(app.pause(&killed, json!({})), async {
        under_way(&app).await;
        app.call(Method::DELETE, &format!("/sandboxes/{killed}"), None)
            .await
    });
    assert_eq!(paused.0, StatusCode::NO_CONTENT);
    assert_eq!(gone.0, StatusCode::NO_CONTENT);
    assert!(app.runtime.sandbox(&killed).unwrap().killed);
    let (status, body) = app
        .call(Method::GET, &format!("/sandboxes/{killed}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["message"].as_str().unwrap().contains("killed"),
        "{body}"
    );

    // A paused sandbox is killed like a running one.
    app.pause(&id, json!({"memory": false})).await;
    let (status, _) = app
        .call(Method::DELETE, &format!("/sandboxes/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(app.runtime.sandbox(&id).unwrap().killed);
    assert!(
        app.state
            .store()
            .sandboxes()
            .unwrap()
            .iter()
            .all(|r| r.id == auto)
    );
}

#[tokio::test]
async fn paused_sandboxes_are_taken_over_after_a_restart_as_the_runtime_finds_them() {
    let mut app = app().await;
    let memory = app.created(json!({})).await;
    let files = app.created(json!({})).await;
    let cut_short = app.created(json!({})).await;
    app.pause(&memory, json!({})).await;
    app.pause(&files, json!({"memory": false})).await;
    // The server died after the runtime paused it, before it recorded so.
    app.runtime.set_paused(&cut_short, Some(PauseMode::Memory));

    app.restart().await;
    assert_eq!(app.info(&memory).await["pauseMode"], "full");
    assert_eq!(app.info(&files).await["pauseMode"], "filesystem");
    assert_eq!(app.info(&cut_short).await["state"], "paused");
    let (status, _) = app.connect(&files, json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let stored = app.state.store().sandboxes().unwrap();
    assert_eq!(
        stored.iter().filter(|r| r.paused.is_some()).count(),
        2,
        "the store follows"
    );
}

#[tokio::test]
async fn snapshots_are_templates_of_their_team() {
    let mut app = app().await;
    let id = app.created(json!({"metadata": {"k": "v"}})).await;
    let (status, unnamed) = app
        .call(
            Method::POST,
            &format!("/sandboxes/{id}/snapshots"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{unnamed}");
    let unnamed_id = unnamed["snapshotID"].as_str().unwrap().to_owned();
    assert!(unnamed_id.ends_with(":default"), "{unnamed}");
    assert_eq!(unnamed["names"], json!([]));
    assert_eq!(unnamed["mode"], "filesystem");
    let (status, named) = app
        .call(
            Method::POST,
            &format!("/sandboxes/{id}/snapshots"),
            Some(json!({"name": "my-snap"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(named["snapshotID"], "default/my-snap:default");
    assert_eq!(named["names"], json!(["default/my-snap:default"]));
    assert_eq!(
        app.info(&id).await["state"],
        "running",
        "the source runs on"
    );
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/sandboxes/{id}/snapshots"),
            Some(json!({"memory": true})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (_, all) = app.call(Method::GET, "/snapshots", None).await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, of) = app
        .call(Method::GET, &format!("/snapshots?sandboxID={id}"), None)
        .await;
    assert_eq!(of.as_array().unwrap().len(), 2);
    let (_, by_name) = app.call(Method::GET, "/snapshots?name=my-snap", None).await;
    assert_eq!(by_name, json!([named.clone()]));
    let (_, headers, first) = app
        .call_as(KEY, Method::GET, "/snapshots?limit=1", None)
        .await;
    let token = headers["x-next-token"].to_str().unwrap().to_owned();
    let (_, second) = app
        .call(
            Method::GET,
            &format!("/snapshots?limit=1&nextToken={token}"),
            None,
        )
        .await;
    assert_ne!(first, second);

    // Snapshots are host root's alone, like the rest of the state directory.
    use std::os::unix::fs::PermissionsExt;
    for dir in [app.dir.path().to_owned(), app.dir.path().join("snapshots")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
    }

    // A sandbox from the snapshot starts on its layer; it outlives the snapshot's deletion.
    let copy = app.created(json!({"templateID": unnamed_id})).await;
    let layers = app.runtime.sandbox(&copy).unwrap().template.unwrap().layers;
    let layer = layers[0].path.clone();
    assert!(
        layer.starts_with(app.dir.path().join("snapshots")),
        "{layer:?}"
    );
    let from_name = app
        .created(json!({"templateID": "default/my-snap:default"}))
        .await;
    let other = app.state.store().create_key("other", "k").unwrap().1;
    let (status, _, _) = app
        .call_as(
            &other,
            Method::POST,
            "/v2/sandboxes",
            Some(json!({"templateID": unnamed_id})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another team's snapshot");
    let (_, _, theirs) = app.call_as(&other, Method::GET, "/snapshots", None).await;
    assert_eq!(theirs, json!([]));

    // Snapshots come back after a restart.
    app.restart().await;
    let (_, all) = app.call(Method::GET, "/snapshots", None).await;
    assert_eq!(all.as_array().unwrap().len(), 2);

    let encoded = unnamed_id.replace(':', "%3A");
    let (status, _) = app
        .call(Method::DELETE, &format!("/templates/{encoded}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .call(Method::DELETE, &format!("/templates/{encoded}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(layer.exists(), "kept while a sandbox uses it");
    app.call(Method::DELETE, &format!("/sandboxes/{copy}"), None)
        .await;
    assert!(!layer.exists(), "gone with its last sandbox");
    let (status, body) = app.call(Method::DELETE, "/templates/base", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = app
        .call(
            Method::DELETE,
            "/templates/default%2Fmy-snap%3Adefault",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.call(Method::DELETE, &format!("/sandboxes/{from_name}"), None)
        .await;
    assert_eq!(
        std::fs::read_dir(app.dir.path().join("snapshots"))
            .unwrap()
            .count(),
        0,
        "no layer is left"
    );
}

#[tokio::test]
async fn forks_start_from_a_copy_of_the_files_and_the_source_runs_on() {
    let app = app().await;
    let id = app.created(json!({"envVars": {"A": "1"}})).await;
    let (status, forks) = app
        .call(
            Method::POST,
            &format!("/sandboxes/{id}/fork"),
            Some(json!({"count": 2, "timeout": 60})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{forks}");
    let forks = forks.as_array().unwrap();
    assert_eq!(forks.len(), 2);
    let ids: Vec<String> = forks
        .iter()
        .map(|f| {
            assert_eq!(f["mode"], "filesystem");
            f["sandbox"]["sandboxID"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
    assert_ne!(
        forks[0]["sandbox"]["envdAccessToken"],
        forks[1]["sandbox"]["envdAccessToken"]
    );
    assert_eq!(
        app.runtime.sandbox(&id).unwrap().snapshots,
        1,
        "one snapshot for all"
    );
    assert_eq!(app.runtime.running().len(), 3);
    assert_eq!(app.info(&id).await["state"], "running");
    let layer = app
        .runtime
        .sandbox(&ids[0])
        .unwrap()
        .template
        .unwrap()
        .layers[0]
        .path
        .clone();
    for bad in [json!({"count": 0}), json!({"count": 21})] {
        let (status, _) = app
            .call(Method::POST, &format!("/sandboxes/{id}/fork"), Some(bad))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    // The fork's layer is no template; it goes with the last fork.
    for fork in &ids {
        assert!(layer.exists());
        app.call(Method::DELETE, &format!("/sandboxes/{fork}"), None)
            .await;
    }
    assert!(!layer.exists());
    // One fork that cannot start fails alone.
    app.runtime.fail_next_creates(1);
    let (status, forks) = app
        .call(
            Method::POST,
            &format!("/sandboxes/{id}/fork"),
            Some(json!({"count": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let errors: Vec<&Value> = forks
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f.get("error").is_some())
        .collect();
    assert_eq!(errors.len(), 1, "{forks}");
    assert_eq!(errors[0]["error"]["code"], 500);
}

#[tokio::test]
async fn listings_filter_sort_and_page_over_running_and_paused() {
    let app = app().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.created(json!({"metadata": {"n": n.to_string()}})).await);
        // Distinct start times (milliseconds).
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    app.pause(&ids[1], json!({})).await;
    app.pause(&ids[3], json!({"memory": false})).await;

    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(app.listed("").await, newest_first);
    assert_eq!(app.listed("?order=asc").await, ids);
    assert_eq!(
        app.listed("?state=paused&order=asc").await,
        vec![ids[1].clone(), ids[3].clone()]
    );
    assert_eq!(app.listed("?state=running,paused").await.len(), 5);
    let third = app.info(&ids[2]).await["startedAt"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.listed(&format!(
            "?order=asc&startedAfter={}",
            third.replace('+', "%2B")
        ))
        .await,
        ids[2..].to_vec()
    );
    assert_eq!(app.listed("?template=base").await.len(), 5);
    assert!(app.listed("?template=other").await.is_empty());

    // Pages of two, ascending, across both states.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let (_, headers, page) = app
            .call_as(
                KEY,
                Method::GET,
                &format!("/v2/sandboxes?order=asc&limit=2{token}"),
                None,
            )
            .await;
        seen.extend(
            page.as_array()
                .unwrap()
                .iter()
                .map(|s| s["sandboxID"].as_str().unwrap().to_owned()),
        );
        match headers.get("x-next-token") {
            Some(next) => token = format!("&nextToken={}", next.to_str().unwrap()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    for bad in ["?state=gone", "?order=sideways", "?startedAfter=soon"] {
        let (status, _) = app
            .call(Method::GET, &format!("/v2/sandboxes{bad}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn logs_are_json_lines_for_e2b_clients() {
    let app = app().await;
    let id = app.created(json!({})).await;
    let (status, logs) = app
        .call(Method::GET, &format!("/sandboxes/{id}/logs"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let line: Value = serde_json::from_str(logs["logs"][0]["line"].as_str().unwrap()).unwrap();
    assert_eq!(line["level"], "info");
    assert!(
        line["message"].as_str().unwrap().contains("fake sandbox"),
        "{line}"
    );
    let (status, v2) = app
        .call(
            Method::GET,
            &format!("/v2/sandboxes/{id}/logs?level=info&direction=backward"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        v2["logs"][0]["message"]
            .as_str()
            .unwrap()
            .contains("fake sandbox")
    );
    let (_, none) = app
        .call(
            Method::GET,
            &format!("/v2/sandboxes/{id}/logs?level=error"),
            None,
        )
        .await;
    assert_eq!(none["logs"], json!([]));
    // Paused, its log is still there.
    app.pause(&id, json!({})).await;
    let (status, _) = app
        .call(Method::GET, &format!("/v2/sandboxes/{id}/logs"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claimed_warm_sandbox_pauses_and_resumes_like_any_other() {
    let app = app_with(|c| c.warm = 1).await;
    app.state.lifecycle().warm_up();
    cove_test_util::wait_until("a warm sandbox", Duration::from_secs(60), || async {
        (app.runtime.running().len() == 2).then_some(())
    })
    .await;
    let warm: Vec<String> = app.runtime.running();
    // (No environment: the fake has no agent to hand it to.)
    let id = app.created(json!({})).await;
    assert!(warm.contains(&id), "a warm sandbox was handed out");
    let (status, _) = app.pause(&id, json!({"memory": false})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.connect(&id, json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    // Started again from the template it was made of.
    let started = app.runtime.sandbox(&id).unwrap();
    assert_eq!(started.starts, 2);
    assert_eq!(started.template.unwrap().name, "base");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_takes_a_warm_sandbox_of_its_source_template_and_gives_it_its_files() {
    let app = app_with(|c| c.warm = 1).await;
    app.state.lifecycle().warm_up();
    let both_warm = || async { (app.runtime.running().len() == 2).then_some(()) };
    cove_test_util::wait_until("the warm sandboxes", Duration::from_secs(60), both_warm).await;
    let source = app.created(json!({})).await;
    // The pool fills again behind the claim.
    cove_test_util::wait_until("the pool refilled", Duration::from_secs(60), || async {
        (app.runtime.running().len() == 3).then_some(())
    })
    .await;
    let warm: Vec<String> = app
        .runtime
        .running()
        .into_iter()
        .filter(|id| *id != source)
        .collect();
    let (status, forks) = app
        .call(
            Method::POST,
            &format!("/sandboxes/{source}/fork"),
            Some(json!({"count": 2, "timeout": 60})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{forks}");
    let ids: Vec<String> = forks
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["sandbox"]["sandboxID"].as_str().unwrap().to_owned())
        .collect();
    // One fork had the warm sandbox of its kind; the other the one started behind it, or
    // a sandbox of its own when none was under way yet.
    let taken: Vec<&String> = ids.iter().filter(|id| warm.contains(id)).collect();
    assert_eq!(taken.len(), 1, "{ids:?} against {warm:?}");
    let rerooted = app.runtime.sandbox(taken[0]).unwrap();
    assert_eq!((rerooted.reroots, rerooted.starts), (1, 1));
    let other = app
        .runtime
        .sandbox(ids.iter().find(|id| *id != taken[0]).unwrap())
        .unwrap();
    assert_eq!(other.starts, 1);
    // Both run on the snapshot's layer, over the template's.
    assert_eq!(rerooted.template, other.template);
    let under = app
        .runtime
        .sandbox(&source)
        .unwrap()
        .template
        .unwrap()
        .layers;
    let layers = rerooted.template.unwrap().layers;
    assert_eq!(layers.len(), under.len() + 1);
    assert_eq!(layers[1..], under[..]);
    for fork in &ids {
        let info = app.info(fork).await;
        assert_eq!(info["state"], "running");
        assert_eq!(info["templateID"], "base");
    }
    // A sandbox made from a snapshot forks anew: a snapshot's template has no warm pool.
    let (_, snapshot) = app
        .call(
            Method::POST,
            &format!("/sandboxes/{source}/snapshots"),
            Some(json!({})),
        )
        .await;
    let from_snapshot = app
        .created(json!({"templateID": snapshot["snapshotID"]}))
        .await;
    let (status, forks) = app
        .call(
            Method::POST,
            &format!("/sandboxes/{from_snapshot}/fork"),
            Some(json!({"count": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{forks}");
    let fork = app
        .runtime
        .sandbox(forks[0]["sandbox"]["sandboxID"].as_str().unwrap())
        .unwrap();
    assert_eq!((fork.reroots, fork.starts), (0, 1));
    // And no warm sandbox of the snapshot was started for it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let layers = app.runtime.sandbox(&from_snapshot).unwrap().template;
    let alike = app
        .runtime
        .running()
        .iter()
        .filter(|id| app.runtime.sandbox(id).unwrap().template == layers)
        .count();
    assert_eq!(alike, 1);
}
