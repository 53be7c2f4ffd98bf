//! Command round trips: `Process/Start` of `true` to its end event, through `cove serve`'s
//! proxy (what an SDK user gets) and over a bare agent's Unix socket, beside fork+exec of
//! `true` on the host.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;
use cove_sdk::{CreateOptions, Sandbox};
use cove_test_util::{TestAgent, TestServer};

use crate::measure::{Figure, Result, Settings, Target, latency};

/// Round trips before the timed ones (connections, page cache).
const WARM_UP: usize = 20;

/// `true` through the proxy of `cove serve` in a live sandbox.
pub async fn proxy_round_trip(settings: &Settings) -> anyhow::Result<Result> {
    let server = TestServer::start(&settings.cove).await;
    let sandbox = Sandbox::create(&server.config(), CreateOptions::default()).await?;
    round_trips(&sandbox, WARM_UP).await?;
    let window = settings.profile("round-trip")?;
    let figure = round_trips(&sandbox, settings.iterations).await?;
    drop(window);
    sandbox.kill().await?;
    Ok(Result {
        name: "command round trip (`true`, SDK → cove serve proxy → agent)".into(),
        figure,
        baseline_name: "fork+exec of `true` on the host".into(),
        baseline: host_true(settings.iterations)?,
        // Issue 18 (the first round asked for p50 ≤ 2 ms).
        target: Some(Target::RatioBelow(2.0)),
    })
}

/// `true` over the agent's Unix socket, no server in between: what the proxy adds is the
/// difference to [`proxy_round_trip`].
pub async fn agent_round_trip(settings: &Settings) -> anyhow::Result<Result> {
    let agent = TestAgent::start(&settings.cove).await;
    let client = agent.client();
    let commands = client.commands();
    let mut samples = Vec::with_capacity(settings.iterations);
    for i in 0..WARM_UP + settings.iterations {
        let started = Instant::now();
        commands
            .spawn(cove_sdk::Command::new("true"))
            .await?
            .wait()
            .await?;
        if i >= WARM_UP {
            samples.push(started.elapsed());
        }
    }
    Ok(Result {
        name: "command round trip (`true`, agent socket, no proxy)".into(),
        figure: latency(samples),
        baseline_name: "fork+exec of `true` on the host".into(),
        baseline: host_true(settings.iterations)?,
        target: None,
    })
}

/// `n` round trips of `true` in `sandbox`, one after the other.
pub async fn round_trips(sandbox: &Sandbox, n: usize) -> anyhow::Result<Figure> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        samples.push(round_trip(sandbox).await?);
    }
    Ok(latency(samples))
}

/// One `true` in `sandbox`, from the request to its end event.
pub async fn round_trip(sandbox: &Sandbox) -> anyhow::Result<Duration> {
    let started = Instant::now();
    sandbox
        .commands()
        .spawn(cove_sdk::Command::new("true"))
        .await?
        .wait()
        .await?;
    Ok(started.elapsed())
}

/// fork+exec+wait of `true` on the host, `n` times.
pub fn host_true(n: usize) -> anyhow::Result<Figure> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let status = Command::new("true").status().context("cannot run true")?;
        samples.push(started.elapsed());
        anyhow::ensure!(status.success(), "true failed");
    }
    Ok(latency(samples))
}

/// A command's round trip through the proxy in one sandbox while another spins on more
/// CPUs than it may use, against the same without the hog.
pub async fn latency_beside_a_hog(settings: &Settings) -> anyhow::Result<Result> {
    let server = TestServer::start(&settings.cove).await;
    let config = server.config();
    let quiet = Sandbox::create(&config, CreateOptions::default()).await?;
    let n = settings.iterations.min(200);
    let alone = round_trips(&quiet, n).await?;
    let hog = Sandbox::create(
        &config,
        CreateOptions {
            cpu_count: Some(1),
            ..CreateOptions::default()
        },
    )
    .await?;
    hog.commands()
        .spawn(cove_sdk::Command::shell(
            "for i in 1 2 3 4; do (while :; do :; done) & done; wait",
        ))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let beside = round_trips(&quiet, n).await?;
    hog.kill().await?;
    quiet.kill().await?;
    Ok(Result {
        name: "command round trip beside a CPU hog (4 spinners, 1-CPU quota)".into(),
        figure: beside,
        baseline_name: "the same with no hog".into(),
        baseline: alone,
        target: Some(Target::RatioBelow(2.0)),
    })
}
