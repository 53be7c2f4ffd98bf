//! Custom templates through `cove serve`, each beside the same work done another way in the
//! same run: a pull of the test image's layers into a layer store (fetched from a local
//! registry, verified, unpacked) beside `tar -x` of the same layer blobs from disk; a cold
//! build of a python + pandas template beside the same `pip install` run in a sandbox of its
//! image by hand, the unchanged rebuild (from the cache) beside the cold build, creates from
//! the built template beside creates from `base`, and a create from a template whose start
//! command serves HTTP, until that server answers through the proxy.
//!
//! Every create is made with the warm pool full (the bench waits for the server's count of
//! warm sandboxes to be back where it was): what is measured is a create served from it,
//! not how fast the pool refills after creates in a row.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;
use cove_image::{ClientConfig, Credentials, LayerStore, Reference, RegistryClient, StoreOptions};
use cove_proto::templates::{BuildStart, BuildStatus, NewTemplate, Step};
use cove_sdk::{ConnectionConfig, CreateOptions, Sandbox, templates};
use cove_test_util::{TestServer, free_port, image::debian_layout, seeded_mirror};

use crate::measure::{Figure, Report, Result, Settings, Target, latency, median};

/// Creates timed from each template.
const CREATES: usize = 20;
/// Pulls (and `tar -x` runs) of the image timed.
const PULLS: usize = 3;
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

/// The server's count of warm sandboxes ready to be handed out.
async fn warm_ready(metrics: &str) -> anyhow::Result<u64> {
    let text = reqwest::get(metrics).await?.text().await?;
    text.lines()
        .find_map(|line| line.strip_prefix("cove_sandboxes{state=\"warm\"} "))
        .context("no cove_sandboxes{state=\"warm\"} in the metrics")?
        .trim()
        .parse::<f64>()
        .map(|n| n as u64)
        .context("a count of warm sandboxes")
}

/// Waits until the warm pool holds `count` sandboxes again (or a minute: a pool that
/// shrank for good, a template gone idle, is said and the create made all the same).
async fn pool_refilled(metrics: &str, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = warm_ready(metrics).await.unwrap_or(0);
        if now >= count {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("note: the warm pool holds {now} sandboxes, not {count}; creating anyway");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The warm pool's size once it stops growing (every pool in use filled).
async fn settled_pool(metrics: &str) -> anyhow::Result<u64> {
    let mut last = warm_ready(metrics).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = warm_ready(metrics).await?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
}

/// `n` creates from `template`, each until `ready` says the sandbox answers, each with the
/// warm pool holding `full` sandboxes.
async fn creates_until<F, Fut>(
    config: &ConnectionConfig,
    metrics: &str,
    full: u64,
    template: &str,
    n: usize,
    ready: F,
) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(Sandbox) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Sandbox>>,
{
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        pool_refilled(metrics, full).await;
        let started = Instant::now();
        let sandbox = Sandbox::create(
            config,
            CreateOptions {
                template: Some(template.to_owned()),
                ..Default::default()
            },
        )
        .await?;
        let sandbox = ready(sandbox).await?;
        samples.push(started.elapsed());
        sandbox.kill().await?;
    }
    Ok(samples)
}

/// `n` creates from each of `templates`, by turns (one of each, then again), each until its
/// first command output: the machine's state drifts during a run (the build before leaves
/// its writeback behind), and by turns each template gets the same share of it.
async fn creates(
    config: &ConnectionConfig,
    metrics: &str,
    full: u64,
    templates: &[&str],
    n: usize,
) -> anyhow::Result<Vec<Vec<Duration>>> {
    let mut samples = vec![Vec::with_capacity(n); templates.len()];
    for _ in 0..n {
        for (template, samples) in templates.iter().zip(&mut samples) {
            let once = creates_until(config, metrics, full, template, 1, |sandbox| async move {
                sandbox.commands().run("true").await?;
                Ok(sandbox)
            })
            .await?;
            samples.extend(once);
        }
    }
    Ok(samples)
}

/// The layer blobs of the OCI layout `dir`'s first image, bottom first.
fn layout_blobs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let blob = |digest: &str| -> anyhow::Result<PathBuf> {
        let hex = digest.strip_prefix("sha256:").context("a sha256 digest")?;
        Ok(dir.join("blobs/sha256").join(hex))
    };
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let manifest = index["manifests"][0]["digest"]
        .as_str()
        .context("the layout's manifest")?;
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(manifest)?)?)?;
    manifest["layers"]
        .as_array()
        .context("the manifest's layers")?
        .iter()
        .map(|layer| blob(layer["digest"].as_str().context("a layer digest")?))
        .collect()
}

/// Bytes of the layers uncompressed (what both sides unpack).
fn unpacked_bytes(blobs: &[PathBuf]) -> anyhow::Result<u64> {
    let mut total = 0;
    for path in blobs {
        let mut gz = flate2::read::GzDecoder::new(std::fs::File::open(path)?);
        total += std::io::copy(&mut gz, &mut std::io::sink())?;
    }
    Ok(total)
}

/// Pull + unpack of the mirrored `python:3.12` (the test image) into an empty layer store,
/// beside `tar -xzf` of the same layer blobs, one after the other, into an empty directory.
async fn pull_throughput(mirror: &str, report: &mut Report) -> anyhow::Result<()> {
    let layout = tokio::task::spawn_blocking(debian_layout).await?;
    let blobs = layout_blobs(&layout)?;
    let bytes = unpacked_bytes(&blobs)? as f64;
    let client = RegistryClient::new(ClientConfig {
        mirrors: vec![mirror.parse()?],
        ..ClientConfig::default()
    })?;
    let reference = Reference::parse("python:3.12")?;
    let mut pulls = Vec::with_capacity(PULLS);
    let mut tars = Vec::with_capacity(PULLS);
    for _ in 0..PULLS {
        let dir = tempfile::Builder::new()
            .prefix("cove-bench-pull-")
            .tempdir()?;
        let store = LayerStore::open(dir.path().join("store"), StoreOptions::default())?;
        let started = Instant::now();
        // Driven on a blocking thread, as the server does (the pull's future is not `Send`).
        let (client, reference, runtime) = (
            client.clone(),
            reference.clone(),
            tokio::runtime::Handle::current(),
        );
        let image = tokio::task::spawn_blocking(move || {
            runtime.block_on(cove_image::pull(
                &client,
                &store,
                &reference,
                &Credentials::Anonymous,
                "bench",
                &|_| {},
            ))
        })
        .await??;
        pulls.push(bytes / started.elapsed().as_secs_f64());
        anyhow::ensure!(image.layers.len() == blobs.len(), "a pull of every layer");

        let into = dir.path().join("tar");
        std::fs::create_dir(&into)?;
        let started = Instant::now();
        for blob in &blobs {
            let status = tokio::process::Command::new("tar")
                .arg("-xzf")
                .arg(blob)
                .arg("-C")
                .arg(&into)
                .status()
                .await?;
            anyhow::ensure!(status.success(), "tar -x of {} failed", blob.display());
        }
        tars.push(bytes / started.elapsed().as_secs_f64());
    }
    let compressed: u64 = blobs
        .iter()
        .map(|blob| std::fs::metadata(blob).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()?;
    let (pull, tar) = (median(pulls.clone()), median(tars.clone()));
    report.note(format!(
        "pull + unpack: {:.0} MiB/s of unpacked bytes ({:.0} MiB compressed, {:.0} MiB unpacked), tar -xzf: {:.0} MiB/s",
        pull / f64::from(1 << 20),
        compressed as f64 / f64::from(1 << 20),
        bytes / f64::from(1 << 20),
        tar / f64::from(1 << 20),
    ));
    report.results.push(Result {
        name: format!(
            "pull + unpack of the test image ({} layers, {:.0} MiB unpacked) from a local registry into an empty layer store",
            blobs.len(),
            bytes / f64::from(1 << 20)
        ),
        figure: Figure::Throughput(median(pulls)),
        baseline_name: "`tar -xzf` of the same layer blobs from disk, one after the other".into(),
        baseline: Figure::Throughput(median(tars)),
        target: None,
    });
    Ok(())
}

pub async fn all(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let registry = seeded_mirror().await;
    let mirror = format!("docker.io={}", registry.url());
    pull_throughput(&mirror, report).await?;
    let metrics_listen = format!("127.0.0.1:{}", free_port());
    let server = TestServer::start_with_args(
        &settings.cove,
        &[
            "--registry-mirror",
            &mirror,
            "--metrics-listen",
            &metrics_listen,
        ],
    )
    .await;
    let metrics = format!("http://{metrics_listen}/metrics");
    let metrics = metrics.as_str();
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
    // As the SDKs' `pip_install` makes it: the install as root, the template's commands as
    // E2B's `user` (what `base` runs them as too).
    let pandas_steps = || vec![step("RUN", &[PANDAS, "root"])];
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
    creates(&config, metrics, 0, &["bench-pandas", "base"], 1).await?;
    let full = settled_pool(metrics).await?;
    let [built, base]: [Vec<Duration>; 2] =
        creates(&config, metrics, full, &["bench-pandas", "base"], CREATES)
            .await?
            .try_into()
            .expect("one list of samples per template");
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
    creates(&config, metrics, 0, &["bench-http"], 1).await?;
    let full = settled_pool(metrics).await?;
    let http = reqwest::Client::new();
    let answers = |sandbox: Sandbox| {
        let request = http
            .get(format!("{}/", server.url()))
            .header("host", sandbox.host(8000))
            .send();
        async move {
            let status = request.await?.status();
            anyhow::ensure!(status.is_success(), "the server answered {status}");
            Ok(sandbox)
        }
    };
    let ready = creates_until(&config, metrics, full, "bench-http", CREATES, answers).await?;
    report.results.push(Result {
        name: "create → its start command's HTTP server answers through the proxy (template with startCmd)".into(),
        figure: latency(ready),
        baseline_name: "create → first command output, `base`".into(),
        baseline: latency(base),
        target: Some(Target::RatioBelow(1.2)),
    });

    // Creates in a row, as fast as a client makes them: the pool refills one sandbox at a
    // time, so past its size a create waits for a warm one being started (for this
    // template: started, then its ready command polled until the server answers).
    let mut in_a_row = Vec::with_capacity(CREATES);
    let mut base_in_a_row = Vec::with_capacity(CREATES);
    for (template, samples) in [("bench-http", &mut in_a_row), ("base", &mut base_in_a_row)] {
        pool_refilled(metrics, full).await;
        for _ in 0..CREATES {
            let started = Instant::now();
            let sandbox = Sandbox::create(
                &config,
                CreateOptions {
                    template: Some(template.to_owned()),
                    ..Default::default()
                },
            )
            .await?;
            let sandbox = if template == "base" {
                sandbox.commands().run("true").await?;
                sandbox
            } else {
                answers(sandbox).await?
            };
            samples.push(started.elapsed());
            sandbox.kill().await?;
        }
    }
    report.results.push(Result {
        name: format!("{CREATES} creates in a row from the startCmd template → its server answers (the pool refilling)"),
        figure: latency(in_a_row),
        baseline_name: format!("{CREATES} creates in a row from `base` → first command output"),
        baseline: latency(base_in_a_row),
        target: None,
    });
    for name in ["bench-http", "bench-pandas", "bench-python"] {
        templates::delete(&config, name)
            .await
            .with_context(|| format!("cannot delete {name}"))?;
    }
    Ok(())
}
