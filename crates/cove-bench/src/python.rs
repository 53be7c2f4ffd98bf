//! What the official E2B Python SDK (`e2b`, the version `tests/compat` pins) costs beside
//! our Rust SDK, both against the same `cove serve`: create → `echo ready` → kill cycles,
//! and `commands.run("true")` on a live sandbox.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use cove_sdk::{CreateOptions, Sandbox};
use cove_test_util::TestServer;

use crate::measure::{Report, Result, Settings, latency};

/// The Python side, run from a temporary file.
const SCRIPT: &str = include_str!("sdk_cycles.py");

/// Time between cycles, so the warm pool refills as it would between an agent's steps.
const PAUSE: Duration = Duration::from_millis(50);

pub async fn sdk_overhead(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let python = &settings.python;
    let has_e2b = tokio::process::Command::new(python)
        .args(["-c", "import e2b"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if !has_e2b {
        report.skip(format!(
            "Python SDK overhead: no Python with the `e2b` package at {} (make one with \
             `python3 -m venv .venv && .venv/bin/pip install -r tests/compat/requirements.txt`, \
             or pass --python)",
            python.display()
        ));
        return Ok(());
    }
    let server = TestServer::start(&settings.cove).await;
    let config = server.config();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let commands = settings.iterations.min(200);

    let mut cycles = Vec::with_capacity(settings.sdk_cycles);
    for _ in 0..settings.sdk_cycles {
        tokio::time::sleep(PAUSE).await;
        let started = Instant::now();
        let sandbox = Sandbox::create(&config, CreateOptions::default()).await?;
        let out = sandbox.commands().run("echo ready").await?;
        sandbox.kill().await?;
        cycles.push(started.elapsed());
        anyhow::ensure!(
            out.stdout == "ready\n",
            "unexpected output {:?}",
            out.stdout
        );
    }
    let sandbox = Sandbox::create(&config, CreateOptions::default()).await?;
    let mut runs = Vec::with_capacity(commands);
    for _ in 0..commands {
        let started = Instant::now();
        sandbox.commands().run("true").await?;
        runs.push(started.elapsed());
    }
    sandbox.kill().await?;

    let script = tempfile::Builder::new()
        .prefix("cove-bench-")
        .suffix(".py")
        .tempfile()?;
    std::fs::write(script.path(), SCRIPT)?;
    let out = tokio::process::Command::new(python)
        .arg(script.path())
        .arg(settings.sdk_cycles.to_string())
        .arg(commands.to_string())
        .arg(PAUSE.as_secs_f64().to_string())
        .env("E2B_API_URL", server.url())
        .env("E2B_SANDBOX_URL", server.url())
        .env("E2B_API_KEY", &server.api_key)
        .env_remove("E2B_DEBUG")
        .env_remove("E2B_DOMAIN")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", python.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "the Python SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let samples: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("the Python script printed no JSON")?;
    let seconds = |key: &str| -> anyhow::Result<Vec<Duration>> {
        samples[key]
            .as_array()
            .with_context(|| format!("no {key} in the Python script's output"))?
            .iter()
            .map(|s| {
                s.as_f64()
                    .map(Duration::from_secs_f64)
                    .with_context(|| format!("a sample of {key} is not a number: {s}"))
            })
            .collect()
    };
    report.results.push(Result {
        name: "create → `echo ready` → kill, official Python SDK (e2b 2.63.0)".into(),
        figure: latency(seconds("cycles")?),
        baseline_name: "the same through our Rust SDK".into(),
        baseline: latency(cycles),
        target: None,
    });
    report.results.push(Result {
        name: "`commands.run(\"true\")` on a live sandbox, official Python SDK".into(),
        figure: latency(seconds("commands")?),
        baseline_name: "the same through our Rust SDK".into(),
        baseline: latency(runs),
        target: None,
    });
    Ok(())
}
