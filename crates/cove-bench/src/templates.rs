//! Custom templates through `cove serve`, each beside the same work done another way in the
//! same run: a cold build of a python + pandas template beside the same `pip install` run in
//! a sandbox of its image by hand, the unchanged rebuild (from the cache) beside the cold
//! build, creates from the built template beside creates from `base`, and a create from a
//! template whose start command serves HTTP, until that server answers.

use std::time::{Duration, Instant};

use anyhow::Context;
use cove_proto::templates::{BuildStart, BuildStatus, NewTemplate, Step};
use cove_sdk::{ConnectionConfig, CreateOptions, Sandbox, templates};
use cove_test_util::{TestServer, seeded_mirror};

use crate::measure::{Report, Result, Settings, Target, latency};

/// Creates timed from each template.
const CREATES: usize = 20;
/// What the python + pandas template installs.
const PANDAS: &str = "pip install --no-cache-dir pandas";
/// The start command of the HTTP template, and its readiness check.
const SERVE: &str = "python3 -m http.server 8000";
const READY: &str =
    "python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000')\"";

fn step(kind: &str, args: &[&str]) -> Step {
    Step {
        kind: kind.to_owned(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        files_hash: None,
        force: false,
    }
}

/// Builds template `name` from the mirrored `python:3.12` with `steps`; returns how long it
/// took from the request until it was ready.
async fn build(
    config: &ConnectionConfig,
    name: &str,
    steps: Vec<Step>,
    start: Option<(&str, &str)>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let requested = templates::request_build(
        config,
        &NewTemplate {
            name: Some(name.to_owned()),
            ..Default::default()
        },
    )
    .await?;
    let body = BuildStart {
        from_image: Some("python:3.12".into()),
        steps,
        start_cmd: start.map(|(s, _)| s.to_owned()),
        ready_cmd: start.map(|(_, r)| r.to_owned()),
        ..Default::default()
    };
    templates::start_build(config, &requested.template_id, &requested.build_id, &body).await?;
    loop {
        let info =
            templates::build_status(config, &requested.template_id, &requested.build_id, 0).await?;
        match info.status {
            BuildStatus::Ready => return Ok(started.elapsed()),
            BuildStatus::Error => anyhow::bail!("the build of {name} failed: {:?}", info.reason),
            BuildStatus::Waiting | BuildStatus::Building => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// `n` creates from `template`, each until its first command output.
async fn creates(
    config: &ConnectionConfig,
    template: &str,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let sandbox = Sandbox::create(
            config,
            CreateOptions {
                template: Some(template.to_owned()),
                ..Default::default()
            },
        )
        .await?;
        sandbox.commands().run("true").await?;
        samples.push(started.elapsed());
        sandbox.kill().await?;
        // The warm sandbox that replaces it starts before the next create.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(samples)
}

pub async fn all(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let registry = seeded_mirror().await;
    let mirror = format!("docker.io={}", registry.url());
    let server = TestServer::start_with_args(&settings.cove, &["--registry-mirror", &mirror]).await;
    let config = server.config();

    // The image alone (its pull is not part of the figures below).
    build(&config, "bench-python", vec![step("USER", &["root"])], None).await?;
    let by_hand = {
        let sandbox = Sandbox::create(
            &config,
            CreateOptions {
                template: Some("bench-python".into()),
                ..Default::default()
            },
        )
        .await?;
        let started = Instant::now();
        let root = sandbox.agent().clone().as_user("root");
        let out = root
            .commands()
            .run_command(cove_sdk::Command::shell(PANDAS))
            .await?;
        let took = started.elapsed();
        sandbox.kill().await?;
        anyhow::ensure!(out.exit_code == 0, "pip install failed: {}", out.stderr);
        took
    };
    let pandas_steps = || vec![step("USER", &["root"]), step("RUN", &[PANDAS, "root"])];
    let cold = build(&config, "bench-pandas", pandas_steps(), None).await?;
    report.results.push(Result {
        name: "cold build: python:3.12 + `pip install pandas` (request → ready)".into(),
        figure: latency(vec![cold]),
        baseline_name: "the same `pip install` in a sandbox of the image, by hand".into(),
        baseline: latency(vec![by_hand]),
        target: None,
    });
    let mut cached = Vec::new();
    for _ in 0..5 {
        cached.push(build(&config, "bench-pandas", pandas_steps(), None).await?);
    }
    report.results.push(Result {
        name: "the same build again, unchanged (every step from the cache)".into(),
        figure: latency(cached),
        baseline_name: "the cold build".into(),
        baseline: latency(vec![cold]),
        target: Some(Target::LatencyBelow(Duration::from_secs(1))),
    });

    // A create from each first: the template counts as used lately, its warm pool fills.
    creates(&config, "bench-pandas", 1).await?;
    creates(&config, "base", 1).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let built = creates(&config, "bench-pandas", CREATES).await?;
    let base = creates(&config, "base", CREATES).await?;
    report.results.push(Result {
        name: "create → first command output, built template (python + pandas)".into(),
        figure: latency(built),
        baseline_name: "create → first command output, `base`".into(),
        baseline: latency(base.clone()),
        target: Some(Target::RatioBelow(1.2)),
    });

    build(
        &config,
        "bench-http",
        vec![step("USER", &["root"])],
        Some((SERVE, READY)),
    )
    .await?;
    creates(&config, "bench-http", 1).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ready = Vec::with_capacity(CREATES);
    for _ in 0..CREATES {
        let started = Instant::now();
        let sandbox = Sandbox::create(
            &config,
            CreateOptions {
                template: Some("bench-http".into()),
                ..Default::default()
            },
        )
        .await?;
        // Its server answers from inside: the create returned once it was ready.
        let out = sandbox.commands().run(READY).await?;
        ready.push(started.elapsed());
        anyhow::ensure!(out.exit_code == 0, "the server did not answer");
        sandbox.kill().await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    report.results.push(Result {
        name: "create → its start command's HTTP server answers (template with startCmd)".into(),
        figure: latency(ready),
        baseline_name: "create → first command output, `base`".into(),
        baseline: latency(base),
        target: Some(Target::RatioBelow(1.2)),
    });
    for name in ["bench-http", "bench-pandas", "bench-python"] {
        templates::delete(&config, name)
            .await
            .with_context(|| format!("cannot delete {name}"))?;
    }
    Ok(())
}
