//! The gVisor backend beside the namespace backend, both in one `cove serve` in the same
//! run (sandboxes pick theirs with the create metadata `cove.runtime`): create → first
//! output, a command's round trip, pause with memory and resume (idle, and holding 200 MiB),
//! a fork with memory, create → first `run_code` result from a memory snapshot and of a
//! code-interpreter sandbox from its kernel image, an idle sandbox's memory, and what
//! internet access (a link of its own) adds to a create.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use cove_sdk::{CreateOptions, Sandbox, snapshots::PauseMode};
use cove_test_util::TestServer;

use crate::measure::{Figure, Report, Result, Settings, Target, latency};

const RUNSC: &str = "/usr/bin/runsc";
/// What a sandbox holds in memory for the large pause figure: random bytes, which a
/// checkpoint cannot compress.
const HELD_MIB: usize = 200;

fn options(runtime: &str) -> CreateOptions {
    CreateOptions {
        metadata: [("cove.runtime".to_owned(), runtime.to_owned())].into(),
        // Without: most rows compare the backends' own costs (one row adds the link's).
        allow_internet_access: Some(false),
        timeout: Some(Duration::from_secs(600)),
        ..CreateOptions::default()
    }
}

pub async fn all(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    if !Path::new(RUNSC).exists() {
        report.skip(format!(
            "gvisor: {RUNSC} is not installed (Debian package runsc)"
        ));
        return Ok(());
    }
    let server = TestServer::start(&settings.cove).await;
    let config = server.config();
    // The warm sandboxes of a server that just started are still being made.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = settings.iterations.clamp(3, 20);

    // Create → first output, each killed after it is timed.
    let mut creates = Vec::new();
    for runtime in ["gvisor", "namespace"] {
        let mut took = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            let sandbox = Sandbox::create(&config, options(runtime)).await?;
            let out = sandbox.commands().run("echo up").await?;
            took.push(started.elapsed());
            anyhow::ensure!(out.stdout == "up\n", "unexpected output {:?}", out.stdout);
            sandbox.kill().await?;
        }
        creates.push(latency(took));
    }
    report.results.push(beside(
        "gVisor: create → first command output",
        &creates,
        "namespace backend, same server (warm pool)",
    ));
    let mut online = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let options = CreateOptions {
            allow_internet_access: Some(true),
            ..options("gvisor")
        };
        let sandbox = Sandbox::create(&config, options).await?;
        let out = sandbox.commands().run("echo up").await?;
        online.push(started.elapsed());
        anyhow::ensure!(out.stdout == "up\n", "unexpected output {:?}", out.stdout);
        sandbox.kill().await?;
    }
    report.results.push(Result {
        name: "gVisor with internet access (a link: holder, slirp4netns, netstack): create → first command output".into(),
        figure: latency(online),
        baseline_name: "gVisor without internet access".into(),
        baseline: creates[0],
        target: None,
    });

    let gvisor = Sandbox::create(&config, options("gvisor")).await?;
    let namespace = Sandbox::create(&config, options("namespace")).await?;
    let mut trips = Vec::new();
    for sandbox in [&gvisor, &namespace] {
        sandbox.commands().run("true").await?;
        let mut took = Vec::with_capacity(settings.iterations);
        for _ in 0..settings.iterations.min(200) {
            let started = Instant::now();
            sandbox.commands().run("true").await?;
            took.push(started.elapsed());
        }
        trips.push(latency(took));
    }
    report.results.push(beside(
        "gVisor: command round trip (`true`)",
        &trips,
        "namespace backend",
    ));

    // Idle memory, after a moment of quiet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let of_gvisor = gvisor_cgroup(gvisor.id())
        .and_then(|name| crate::density::memory_of_cgroup(&name, 2))
        .context("the gVisor sandbox's memory")?;
    // The agent alone: no network helper without internet access.
    let of_namespace = crate::density::memory_of_cgroup(namespace.id(), 1)?;
    let figure = |(rss, pss, cgroup): (u64, u64, u64)| Figure::Memory {
        rss,
        pss,
        cgroup: Some(cgroup),
    };
    report.results.push(Result {
        name: "gVisor: memory of an idle sandbox (agent, sentry, gofer)".into(),
        figure: figure(of_gvisor),
        baseline_name: "namespace backend (agent)".into(),
        baseline: figure(of_namespace),
        target: None,
    });

    // Pause with memory and resume, idle and holding 200 MiB.
    let holder = format!(
        "python3 -c \"import os, time; held = os.urandom({HELD_MIB} << 20); open('/tmp/holding', 'w').close(); time.sleep(1e9)\""
    );
    for held in [false, true] {
        if held {
            for sandbox in [&gvisor, &namespace] {
                sandbox
                    .commands()
                    .spawn(cove_sdk::Command::shell(holder.clone()))
                    .await?;
                wait_for_file(sandbox, "/tmp/holding").await?;
            }
        }
        let what = if held {
            format!("holding {HELD_MIB} MiB")
        } else {
            "idle".to_owned()
        };
        let mut pauses = Vec::new();
        let mut resumes = Vec::new();
        for sandbox in [&gvisor, &namespace] {
            let (mut p, mut r) = (Vec::new(), Vec::new());
            for _ in 0..n.min(5) {
                let started = Instant::now();
                anyhow::ensure!(sandbox.pause(PauseMode::Memory).await?, "not paused");
                p.push(started.elapsed());
                let started = Instant::now();
                let resumed = Sandbox::connect(&config, sandbox.id(), None).await?;
                resumed.commands().run("true").await?;
                r.push(started.elapsed());
            }
            pauses.push(latency(p));
            resumes.push(latency(r));
        }
        report.results.push(beside(
            format!("gVisor: pause with memory (checkpoint to disk), {what}"),
            &pauses,
            "namespace backend (cgroup frozen, memory stays)",
        ));
        report.results.push(beside(
            format!("gVisor: resume with memory (restore) → first output, {what}"),
            &resumes,
            "namespace backend (thawed)",
        ));
    }

    // Forks: the source's processes and memory (gVisor) against its files (namespace).
    let mut forks = Vec::new();
    for sandbox in [&gvisor, &namespace] {
        let mut took = Vec::new();
        for _ in 0..n.min(5) {
            let started = Instant::now();
            let fork = sandbox
                .fork(1, Some(Duration::from_secs(120)))
                .await?
                .pop()
                .context("no fork")??;
            fork.commands().run("true").await?;
            took.push(started.elapsed());
            fork.kill().await?;
        }
        forks.push(latency(took));
    }
    report.results.push(beside(
        format!("gVisor: fork with memory ({HELD_MIB} MiB held) → first output"),
        &forks,
        "namespace backend: fork of the files",
    ));
    gvisor.kill().await?;
    namespace.kill().await?;

    // A code interpreter sandbox from a memory snapshot taken with its kernel running,
    // against a create whose kernel starts on first use.
    let source = Sandbox::create(&config, options("gvisor")).await?;
    source.run_code("import json, math\nx = 41").await?;
    let snapshot = source.snapshot(None).await?;
    source.kill().await?;
    let mut from_snapshot = Vec::new();
    let mut cold = Vec::new();
    for _ in 0..n.min(10) {
        let from_it = CreateOptions {
            template: Some(snapshot.snapshot_id.clone()),
            metadata: Default::default(),
            ..options("gvisor")
        };
        from_snapshot.push(first_run_code(&config, from_it, "x + 1", "42").await?);
        cold.push(first_run_code(&config, options("namespace"), "1 + 1", "2").await?);
    }
    report.results.push(Result {
        name: "gVisor: create from a memory snapshot → first run_code result".into(),
        figure: latency(from_snapshot),
        baseline_name: COLD_KERNEL.into(),
        baseline: latency(cold.clone()),
        target: None,
    });
    Sandbox::delete_snapshot(&config, &snapshot.snapshot_id).await?;

    // A code-interpreter sandbox on gVisor: restored from its template's kernel image, ahead
    // of demand (the pool refills between creates, as between a user's).
    let interpreter = || CreateOptions {
        template: Some("code-interpreter-v1".to_owned()),
        ..options("gvisor")
    };
    let first = Sandbox::create(&config, interpreter()).await?;
    first.kill().await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        // Made from the image once a fresh one has its kernel running before any code.
        let sandbox = Sandbox::create(&config, interpreter()).await?;
        let listing = sandbox.commands().run("ps -eo args").await?.stdout;
        sandbox.kill().await?;
        if listing.contains("ipykernel") {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no kernel image after 3 minutes");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut from_image = Vec::new();
    for _ in 0..n.min(10) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        from_image.push(first_run_code(&config, interpreter(), "1 + 1", "2").await?);
    }
    report.results.push(Result {
        name: "gVisor: code-interpreter create → first run_code result (restored from the kernel image ahead of demand)".into(),
        figure: latency(from_image),
        baseline_name: COLD_KERNEL.into(),
        baseline: latency(cold),
        target: Some(Target::LatencyBelow(Duration::from_millis(300))),
    });
    Ok(())
}

/// The baseline of the `run_code` rows.
const COLD_KERNEL: &str = "namespace backend: create → first run_code, kernel started on first use";

/// Create → the first `run_code` result of `code`, which must be `expected`; the sandbox is
/// killed after it is timed.
async fn first_run_code(
    config: &cove_sdk::ConnectionConfig,
    options: CreateOptions,
    code: &str,
    expected: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let sandbox = Sandbox::create(config, options).await?;
    let execution = sandbox.run_code(code).await?;
    let took = started.elapsed();
    let text = execution.text();
    anyhow::ensure!(text == Some(expected), "{code} gave {text:?}");
    sandbox.kill().await?;
    Ok(took)
}

/// A row: gVisor's figure (`figures[0]`) beside the namespace backend's (`figures[1]`).
fn beside(name: impl Into<String>, figures: &[Figure], baseline_name: &str) -> Result {
    Result {
        name: name.into(),
        figure: figures[0],
        baseline_name: baseline_name.into(),
        baseline: figures[1],
        target: None,
    }
}

/// The cgroup runsc made for sandbox `id`'s container (`cove-<id>-<hash>`, below `cove`).
fn gvisor_cgroup(id: &str) -> anyhow::Result<String> {
    let prefix = format!("cove-{id}-");
    std::fs::read_dir("/sys/fs/cgroup/memory/cove")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with(&prefix))
        .with_context(|| format!("no cgroup of gVisor sandbox {id}"))
}

async fn wait_for_file(sandbox: &Sandbox, path: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let out = sandbox
            .commands()
            .run(format!("test -e {path} && echo yes || true").as_str())
            .await?;
        if out.stdout == "yes\n" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{path} did not appear in sandbox {}", sandbox.id())
}
