//! Template builds through the real server, from a real registry seeded with the test image
//! (Debian's docker-registry as docker.io's mirror): a template with a start command is
//! handed out from a warm sandbox already started and ready; an image for another
//! architecture is refused with a clear 400; a build cut short by a SIGKILLed server is
//! marked failed with a reason by the next one, its build sandbox gone.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{cove, loop_devices_under};
use cove_proto::templates::{BuildInfo, BuildStart, BuildStatus, NewTemplate, Step};
use cove_sdk::{ConnectionConfig, CreateOptions, Error, Sandbox, templates};
use cove_test_util::{
    TestServer,
    image::{LayerBuilder, TestImage, TestLayer, write_image, write_layout_index},
    seeded_mirror, wait_until,
};

/// One scrape of the server's metrics, parsed.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    async fn of(url: &str) -> Self {
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        let lines = text.lines().map(|l| Ok(l.to_owned())).collect::<Vec<_>>();
        Self(prometheus_parse::Scrape::parse(lines.into_iter()).unwrap())
    }

    /// The sample `metric` with `labels` (0 when there is none).
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("{metric} is not a single number"),
            })
            .next()
            .unwrap_or(0.0)
    }
}

fn step(kind: &str, args: &[&str]) -> Step {
    Step {
        kind: kind.to_owned(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        files_hash: None,
        force: false,
    }
}

/// Asks for template `name` and starts its build from `body`; returns (template, build).
async fn start_build(config: &ConnectionConfig, name: &str, body: &BuildStart) -> (String, String) {
    let requested = templates::request_build(
        config,
        &NewTemplate {
            name: Some(name.to_owned()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    templates::start_build(config, &requested.template_id, &requested.build_id, body)
        .await
        .unwrap();
    (requested.template_id, requested.build_id)
}

/// Polls the build until it is no longer waiting or building.
async fn finished(config: &ConnectionConfig, template: &str, build: &str) -> BuildInfo {
    wait_until("the build to end", Duration::from_secs(300), || async {
        let info = templates::build_status(config, template, build, 0)
            .await
            .unwrap();
        matches!(info.status, BuildStatus::Ready | BuildStatus::Error).then_some(info)
    })
    .await
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The start command notes when it began (the sandbox's clock is the host's), then serves.
const START: &str =
    "date +%s%N > /tmp/started && echo $$ > /tmp/server.pid && exec python3 -m http.server 8000";
/// Ready once the server answers; each check is counted.
const READY: &str = "echo check >> /tmp/ready-checks && \
    python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000')\"";

#[tokio::test(flavor = "multi_thread")]
async fn a_start_command_template_is_handed_out_already_started_and_ready() {
    let registry = seeded_mirror().await;
    let mirror = format!("docker.io={}", registry.url());
    let server = TestServer::start_with_args(
        cove(),
        &[
            "--warm-pool",
            "1",
            "--registry-mirror",
            &mirror,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let metrics = format!(
        "http://{}/metrics",
        server.metrics_addr.expect("the metrics listener")
    );
    let config = server.config();
    let body = BuildStart {
        from_image: Some("python:3.12".into()),
        steps: vec![step("USER", &["user"])],
        start_cmd: Some(START.into()),
        ready_cmd: Some(READY.into()),
        ..Default::default()
    };
    let (template, build) = start_build(&config, "served", &body).await;
    let info = finished(&config, &template, &build).await;
    assert_eq!(info.status, BuildStatus::Ready, "{:?}", info.reason);

    // A finished build warms its template: base's two warm sandboxes (with and without
    // internet access) and this template's one, started and ready.
    wait_until(
        "the template's warm sandbox to be ready",
        Duration::from_secs(120),
        || async {
            let scrape = Scrape::of(&metrics).await;
            (scrape.value("cove_sandboxes", &[("state", "warm")]) >= 3.0).then_some(())
        },
    )
    .await;
    let before = Scrape::of(&metrics).await;
    let asked_at = unix_nanos();
    let sandbox = Sandbox::create(
        &config,
        CreateOptions {
            template: Some("served".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let after = Scrape::of(&metrics).await;
    let moved = |metric: &str, labels: &[(&str, &str)]| {
        after.value(metric, labels) - before.value(metric, labels)
    };
    assert_eq!(moved("cove_warm_pool_total", &[("result", "hit")]), 1.0);
    assert_eq!(
        moved("cove_sandbox_create_seconds_count", &[("source", "warm")]),
        1.0
    );
    assert_eq!(
        moved("cove_sandbox_create_seconds_count", &[("source", "cold")]),
        0.0
    );

    // Its start command ran before the create was asked for, and not again for it.
    let started: u128 = sandbox
        .files()
        .read_to_string("/tmp/started")
        .await
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        started < asked_at,
        "the start command began at {started}, after the create was asked for at {asked_at}"
    );
    let out = sandbox
        .commands()
        .run("tr '\\0' ' ' < /proc/$(cat /tmp/server.pid)/cmdline; echo; wc -l < /tmp/ready-checks")
        .await
        .unwrap();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0].trim(),
        "python3 -m http.server 8000",
        "{}",
        out.stdout
    );
    let checks_then: usize = lines[1].trim().parse().unwrap();
    assert!(checks_then >= 1);

    // Its server answers straight away, through the server's proxy, as users reach it.
    let answer = reqwest::Client::new()
        .get(format!("{}/", server.url()))
        .header("host", sandbox.host(8000))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // Nothing polls the ready command any more once the sandbox is handed out.
    let checks_now: usize = sandbox
        .files()
        .read_to_string("/tmp/ready-checks")
        .await
        .unwrap()
        .lines()
        .count();
    assert_eq!(checks_now, checks_then);
    sandbox.kill().await.unwrap();
    templates::delete(&config, "served").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_for_another_architecture_is_refused_with_a_clear_400() {
    let registry = cove_test_util::TestRegistry::start().await;
    let seed = tempfile::tempdir().unwrap();
    let layer = LayerBuilder::default()
        .dir("bin/")
        .file("bin/hello", b"#!/bin/sh\necho arm\n")
        .finish();
    let mut arm = TestImage::amd64(
        vec![TestLayer::gzip(layer)],
        serde_json::json!({"Cmd": ["/bin/hello"]}),
    );
    arm.architecture = "arm64".to_owned();
    let written = write_image(seed.path(), &arm);
    write_layout_index(seed.path(), &[("1", &written)]);
    registry.push_layout(seed.path(), "1", "armonly/app:1");

    let server = TestServer::start_with_args(cove(), &["--warm-pool", "0"]).await;
    let config = server.config();
    let requested = templates::request_build(
        &config,
        &NewTemplate {
            name: Some("arm".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let image = format!("{}/armonly/app:1", registry.host());
    let refused = templates::start_build(
        &config,
        &requested.template_id,
        &requested.build_id,
        &BuildStart {
            from_image: Some(image.clone()),
            steps: vec![step("RUN", &["true"])],
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    match refused {
        Error::InvalidArgument(message) => assert_eq!(
            message,
            format!(
                "cannot use image {image}: {image} has no linux/amd64 image; it has: linux/arm64"
            )
        ),
        other => panic!("not a 400: {other:?}"),
    }
    // Nothing was pulled for it.
    let collected = templates::collect(&config).await.unwrap();
    assert_eq!(collected.removed_layers, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_cut_short_by_a_killed_server_is_failed_by_the_next_and_leaves_nothing() {
    let registry = seeded_mirror().await;
    let mirror = format!("docker.io={}", registry.url());
    let mut server =
        TestServer::start_with_args(cove(), &["--warm-pool", "0", "--registry-mirror", &mirror])
            .await;
    let config = server.config();
    let body = BuildStart {
        from_image: Some("python:3.12".into()),
        steps: vec![step(
            "RUN",
            &["echo the step began; exec sleep 3600", "root"],
        )],
        ..Default::default()
    };
    let (template, build) = start_build(&config, "cut-short", &body).await;
    wait_until("the step to run", Duration::from_secs(300), || async {
        let info = templates::build_status(&config, &template, &build, 0)
            .await
            .unwrap();
        assert!(
            !matches!(info.status, BuildStatus::Ready | BuildStatus::Error),
            "{info:?}"
        );
        info.log_entries
            .iter()
            .any(|e| e.message == "the step began")
            .then_some(())
    })
    .await;
    let store = cove_server::open_store(server.state_dir(), None).unwrap();
    let builders: Vec<_> = store
        .sandboxes()
        .unwrap()
        .into_iter()
        .filter(|r| r.template_id.starts_with("build:"))
        .collect();
    assert_eq!(builders.len(), 1, "one build sandbox: {builders:?}");
    let builder = &builders[0];
    let pid = builder.handle.as_ref().unwrap().state["pid"]
        .as_i64()
        .unwrap();
    let dir = server.state_dir().join("sandboxes").join(&builder.id);
    assert!(dir.is_dir() && std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(
        loop_devices_under(&server.state_dir().join("sandboxes")).len(),
        1
    );

    server.crash_and_restart().await;
    let info = templates::build_status(&config, &template, &build, 0)
        .await
        .unwrap();
    assert_eq!(info.status, BuildStatus::Error, "{info:?}");
    let reason = info.reason.unwrap();
    assert!(
        reason.message.contains("interrupted") && reason.message.contains("server stopped"),
        "{}",
        reason.message
    );
    // Its sandbox was ended by the new server: processes, directory, disk and record.
    wait_until(
        "the build sandbox to be gone",
        Duration::from_secs(30),
        || async {
            let running = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !stat.rsplit(") ").next().unwrap_or("").starts_with('Z'));
            (!running && !dir.exists()).then_some(())
        },
    )
    .await;
    assert!(loop_devices_under(&server.state_dir().join("sandboxes")).is_empty());
    assert!(store.sandboxes().unwrap().is_empty());
    // The template can be built again.
    let (template, build) = start_build(
        &config,
        "cut-short",
        &BuildStart {
            from_image: Some("python:3.12".into()),
            steps: vec![step("RUN", &["echo again", "root"])],
            ..Default::default()
        },
    )
    .await;
    let info = finished(&config, &template, &build).await;
    assert_eq!(info.status, BuildStatus::Ready, "{:?}", info.reason);
}
