//! Many clients at once: each drives its own sandbox with `true` after `true`, all through
//! the one `cove serve`, beside as many host tasks each forking `true`; and bursts of
//! creates from many clients, beside as many host tasks each unsharing the same namespaces.

use std::time::{Duration, Instant};

use anyhow::Context;
use cove_sdk::{CreateOptions, Sandbox};
use cove_test_util::TestServer;

use crate::{
    commands::round_trip,
    create::UNSHARE_TRUE,
    density::kill_all,
    measure::{Figure, Result, Settings, Target},
};

/// Clients creating at once in a burst.
pub const BURST_CLIENTS: usize = 25;
/// Creates each client of a burst makes.
const BURST_PER_CLIENT: usize = 4;

/// A burst: [`BURST_CLIENTS`] clients each creating [`BURST_PER_CLIENT`] sandboxes one after
/// the other (create → first command output), with or without internet access; every
/// create must succeed. Beside as many host tasks each running `unshare … true` as often.
pub async fn creates(settings: &Settings, network: bool) -> anyhow::Result<Result> {
    let server = TestServer::start(&settings.cove).await;
    let window = settings.profile(if network { "burst-internet" } else { "burst" })?;
    let figure = burst(&server.config(), BURST_CLIENTS, BURST_PER_CLIENT, network).await?;
    drop(window);

    let started = Instant::now();
    let tasks = (0..BURST_CLIENTS).map(|_| {
        tokio::spawn(async move {
            let mut samples = Vec::with_capacity(BURST_PER_CLIENT);
            for _ in 0..BURST_PER_CLIENT {
                let began = Instant::now();
                let status = tokio::process::Command::new("unshare")
                    .args(UNSHARE_TRUE)
                    .status()
                    .await?;
                anyhow::ensure!(status.success(), "unshare failed");
                samples.push(began.elapsed());
            }
            anyhow::Ok(samples)
        })
    });
    let mut host = Vec::new();
    for task in futures::future::join_all(tasks).await {
        host.extend(task??);
    }
    let baseline = rate(host, started.elapsed());
    let kind = if network {
        "with internet access"
    } else {
        "no network"
    };
    Ok(Result {
        name: format!(
            "burst: {BURST_CLIENTS} clients at once, {} creates ({kind}), create → first output, none failed",
            BURST_CLIENTS * BURST_PER_CLIENT
        ),
        figure,
        baseline_name: format!(
            "{BURST_CLIENTS} host tasks at once, each `unshare` of the same namespaces running `true` {BURST_PER_CLIENT} times"
        ),
        baseline,
        // Issue 18: at least 200 creates a second on this 2-core machine.
        target: Some(Target::RateAtLeast(200.0)),
    })
}

/// `clients` clients at once, each creating `per_client` sandboxes one after the other
/// through `config` (create → first command output; every create must succeed): the rate
/// and p99. The sandboxes are killed afterwards, untimed.
pub async fn burst(
    config: &cove_sdk::ConnectionConfig,
    clients: usize,
    per_client: usize,
    network: bool,
) -> anyhow::Result<Figure> {
    let started = Instant::now();
    let tasks = (0..clients).map(|_| {
        let config = config.clone();
        tokio::spawn(async move {
            let mut made = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let began = Instant::now();
                let options = CreateOptions {
                    allow_internet_access: Some(network),
                    ..CreateOptions::default()
                };
                let sandbox = Sandbox::create(&config, options)
                    .await
                    .context("a create of the burst failed")?;
                sandbox.commands().run("echo ready").await?;
                made.push((began.elapsed(), sandbox));
            }
            anyhow::Ok(made)
        })
    });
    let mut samples = Vec::new();
    let mut sandboxes = Vec::new();
    for client in futures::future::join_all(tasks).await {
        for (took, sandbox) in client?? {
            samples.push(took);
            sandboxes.push(sandbox);
        }
    }
    let figure = rate(samples, started.elapsed());
    kill_all(sandboxes).await?;
    Ok(figure)
}

/// Commands each client runs, timed.
fn per_client(settings: &Settings) -> usize {
    (settings.iterations / 10).max(10)
}

pub async fn commands(settings: &Settings) -> anyhow::Result<Result> {
    let server = TestServer::start(&settings.cove).await;
    let config = server.config();
    let mut sandboxes = Vec::with_capacity(settings.clients);
    for _ in 0..settings.clients {
        let sandbox = Sandbox::create(&config, CreateOptions::default()).await?;
        round_trip(&sandbox).await?;
        sandboxes.push(sandbox);
    }
    let n = per_client(settings);
    let started = Instant::now();
    let clients = sandboxes.iter().cloned().map(|sandbox| {
        tokio::spawn(async move {
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                samples.push(round_trip(&sandbox).await?);
            }
            anyhow::Ok(samples)
        })
    });
    let mut samples = Vec::with_capacity(n * settings.clients);
    for client in futures::future::join_all(clients).await {
        samples.extend(client??);
    }
    let figure = rate(samples, started.elapsed());
    kill_all(sandboxes).await?;

    let started = Instant::now();
    let tasks = (0..settings.clients).map(|_| {
        tokio::spawn(async move {
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let started = Instant::now();
                let status = tokio::process::Command::new("true").status().await?;
                samples.push(started.elapsed());
                anyhow::ensure!(status.success(), "true failed");
            }
            anyhow::Ok(samples)
        })
    });
    let mut host = Vec::with_capacity(n * settings.clients);
    for task in futures::future::join_all(tasks).await {
        host.extend(task??);
    }
    let baseline = rate(host, started.elapsed());
    Ok(Result {
        name: format!(
            "{} clients at once, each running `true` {n} times in its own sandbox",
            settings.clients
        ),
        figure,
        baseline_name: format!(
            "{} host tasks at once, each fork+exec of `true` {n} times",
            settings.clients
        ),
        baseline,
        target: None,
    })
}

fn rate(mut samples: Vec<Duration>, took: Duration) -> Figure {
    samples.sort();
    let p99 = samples[((samples.len() as f64 - 1.0) * 0.99).round() as usize];
    Figure::Rate {
        per_second: samples.len() as f64 / took.as_secs_f64(),
        p99,
    }
}
