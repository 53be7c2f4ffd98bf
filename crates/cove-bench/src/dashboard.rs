//! The dashboard (`/ui`): how long its sandbox list takes to show every row with many live
//! sandboxes, in Debian's Chromium driven by tests/ui/bench.mjs, beside the same browser
//! showing a plain table of as many rows.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::Context;
use cove_sdk::{CreateOptions, Sandbox};
use cove_test_util::TestServer;
use futures::StreamExt;

use crate::measure::{Report, Result, Settings, Target, latency};

/// Creates at once while filling the server.
const CREATES_AT_ONCE: usize = 8;
/// Page loads timed.
const RUNS: usize = 5;
/// The goal of issue 17.
const WITHIN: Duration = Duration::from_secs(1);
const CHROMIUM: &str = "/usr/bin/chromium";

pub async fn list_render(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let ui = Path::new("tests/ui");
    if !Path::new(CHROMIUM).exists() || !ui.join("node_modules/playwright-core").is_dir() {
        report.skip(format!(
            "the dashboard's list in Chromium: no {CHROMIUM} or no playwright-core in {} \
             (scripts/setup installs both)",
            ui.display()
        ));
        return Ok(());
    }
    let wanted = settings.max_live;
    let max_sandboxes = (wanted + 30).to_string();
    let server = TestServer::start_with_args(
        &settings.cove,
        &["--warm-pool", "0", "--max-sandboxes", &max_sandboxes],
    )
    .await;
    let config = server.config();
    let created: Vec<anyhow::Result<Sandbox>> = futures::stream::iter(0..wanted)
        .map(|n| {
            let config = config.clone();
            async move {
                let options = CreateOptions {
                    timeout: Some(Duration::from_secs(3600)),
                    allow_internet_access: Some(false),
                    metadata: BTreeMap::from([
                        ("bench".to_owned(), "dashboard".to_owned()),
                        ("n".to_owned(), n.to_string()),
                    ]),
                    ..CreateOptions::default()
                };
                Ok(Sandbox::create(&config, options).await?)
            }
        })
        .buffer_unordered(CREATES_AT_ONCE)
        .collect()
        .await;
    let mut sandboxes = Vec::with_capacity(wanted);
    let mut failed = None;
    for outcome in created {
        match outcome {
            Ok(sandbox) => sandboxes.push(sandbox),
            Err(err) => failed = failed.or(Some(err)),
        }
    }
    let live = sandboxes.len();
    if let Some(err) = failed {
        report.note(format!(
            "dashboard: {live} of {wanted} sandboxes could be created and were measured; the \
             first failure: {err:#}"
        ));
    }
    eprintln!("  {live} live sandboxes; loading the list {RUNS} times");
    let output = tokio::process::Command::new("node")
        .arg("bench.mjs")
        .current_dir(ui)
        .env("COVE_UI_URL", server.url())
        .env("COVE_UI_KEY", &server.api_key)
        .env("COVE_UI_ROWS", live.to_string())
        .env("COVE_UI_RUNS", RUNS.to_string())
        .output()
        .await
        .context("cannot run node tests/ui/bench.mjs")?;
    crate::density::kill_all(sandboxes).await?;
    anyhow::ensure!(
        output.status.success(),
        "tests/ui/bench.mjs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found: BTreeMap<String, Vec<f64>> =
        serde_json::from_slice(&output.stdout).context("tests/ui/bench.mjs printed no figures")?;
    let millis = |name: &str| -> Vec<Duration> {
        found
            .get(name)
            .into_iter()
            .flatten()
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
            .collect()
    };
    let (dashboard, plain) = (millis("dashboard"), millis("plain"));
    anyhow::ensure!(
        !dashboard.is_empty() && !plain.is_empty(),
        "tests/ui/bench.mjs measured nothing"
    );
    report.results.push(Result {
        name: format!(
            "dashboard sandbox list in Chromium with {live} live sandboxes, page load → every row shown and laid out"
        ),
        figure: latency(dashboard),
        baseline_name: format!("the same Chromium showing a plain table of {live} such rows"),
        baseline: latency(plain),
        target: Some(Target::LatencyBelow(WITHIN)),
    });
    Ok(())
}
