//! The measurements, each with the baseline it is compared to.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use cove_sdk::{CreateOptions, Sandbox};
use cove_test_util::{TestAgent, TestServer};
use futures::StreamExt;

#[derive(Debug)]
pub struct Settings {
    pub cove: PathBuf,
    pub sandboxes: usize,
    pub iterations: usize,
    pub transfer_bytes: usize,
    pub idle: usize,
    /// Run only this group of measurements.
    pub only: Option<String>,
}

/// One figure and its baseline.
#[derive(Debug)]
pub struct Result {
    pub name: &'static str,
    pub figure: Figure,
    pub baseline_name: &'static str,
    pub baseline: Figure,
    /// The goal, in the figure's unit, and whether lower is better.
    pub target: Option<Target>,
}

#[derive(Debug, Clone, Copy)]
pub enum Figure {
    /// Latencies: p50 and p99.
    Latency { p50: Duration, p99: Duration },
    /// Bytes per second.
    Throughput(f64),
    /// Bytes per sandbox: resident and proportional (shared pages split) set of its
    /// processes, and what its cgroup counts (page cache included).
    Memory {
        rss: u64,
        pss: u64,
        cgroup: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy)]
pub enum Target {
    LatencyBelow(Duration),
    /// The figure's p50 within this many times the baseline's.
    RatioBelow(f64),
    ThroughputAbove(f64),
    MemoryBelow(u64),
}

impl Target {
    pub fn met(self, figure: Figure, baseline: Figure) -> bool {
        match (self, figure) {
            (Target::RatioBelow(limit), Figure::Latency { p50, .. }) => match baseline {
                Figure::Latency { p50: base, .. } => p50.as_secs_f64() < limit * base.as_secs_f64(),
                _ => false,
            },
            (Target::LatencyBelow(limit), Figure::Latency { p50, .. }) => p50 < limit,
            (Target::ThroughputAbove(limit), Figure::Throughput(rate)) => rate > limit,
            (Target::MemoryBelow(limit), Figure::Memory { pss, .. }) => pss < limit,
            _ => false,
        }
    }
}

pub fn latency(mut samples: Vec<Duration>) -> Figure {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Figure::Latency {
        p50: at(0.50),
        p99: at(0.99),
    }
}

pub async fn all(settings: &Settings) -> anyhow::Result<Vec<Result>> {
    let mut results = Vec::new();
    let wanted = |group: &str| settings.only.as_deref().is_none_or(|only| group == only);
    if wanted("commands") {
        eprintln!("agent: process round trip");
        results.push(process_round_trip(settings).await?);
    }
    if wanted("transfers") {
        eprintln!("agent: transfers");
        results.extend(transfers(settings).await?);
    }
    if wanted("create") {
        eprintln!("server: create → first output");
        for case in &CREATE_CASES {
            results.push(create_latency(settings, case).await?);
        }
    }
    if wanted("hog") {
        eprintln!("server: command latency beside a CPU hog");
        results.push(latency_beside_a_hog(settings).await?);
    }
    if wanted("code") {
        eprintln!("server: run_code round trip");
        results.push(crate::code::run_code_round_trip(settings).await?);
        eprintln!("server: create → first run_code result");
        results.push(crate::code::create_to_first_result(settings).await?);
    }
    if wanted("memory") {
        eprintln!("server: idle memory");
        results.push(idle_memory(settings).await?);
    }
    Ok(results)
}

/// `Process/Start` of `true` to its end event over the agent's Unix socket, against
/// fork+exec of `true` on the host.
async fn process_round_trip(settings: &Settings) -> anyhow::Result<Result> {
    let agent = TestAgent::start(&settings.cove).await;
    let client = agent.client();
    let commands = client.commands();
    for _ in 0..20 {
        commands
            .spawn(cove_sdk::Command::new("true"))
            .await?
            .wait()
            .await?;
    }
    let mut samples = Vec::with_capacity(settings.iterations);
    for _ in 0..settings.iterations {
        let started = Instant::now();
        commands
            .spawn(cove_sdk::Command::new("true"))
            .await?
            .wait()
            .await?;
        samples.push(started.elapsed());
    }
    let mut baseline = Vec::with_capacity(settings.iterations);
    for _ in 0..settings.iterations {
        let started = Instant::now();
        Command::new("true").status().context("cannot run true")?;
        baseline.push(started.elapsed());
    }
    Ok(Result {
        name: "command round trip (`true`, agent socket)",
        figure: latency(samples),
        baseline_name: "fork+exec of `true` on the host",
        baseline: latency(baseline),
        target: Some(Target::LatencyBelow(Duration::from_millis(2))),
    })
}

/// Upload and download of one large file over the agent's socket, against writing and
/// `cat`-ing the same bytes locally. Both sides use tmpfs (`/dev/shm`), so the figures are
/// about the transfer, not about this machine's disk.
async fn transfers(settings: &Settings) -> anyhow::Result<Vec<Result>> {
    let agent = TestAgent::start(&settings.cove).await;
    let client = agent.client();
    let files = client.files();
    let data = Bytes::from(
        (0..settings.transfer_bytes)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    );
    let size = data.len() as f64;
    let local = PathBuf::from(format!("/dev/shm/cove-bench-local-{}", std::process::id()));
    let (mut upload, mut download, mut local_write, mut local_read) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..TRANSFER_RUNS {
        let started = Instant::now();
        files.write(TRANSFER_FILE, data.clone()).await?;
        upload.push(size / started.elapsed().as_secs_f64());

        let started = Instant::now();
        let mut stream = Box::pin(files.read_stream(TRANSFER_FILE).await?);
        let mut received = 0usize;
        while let Some(chunk) = stream.next().await {
            received += chunk?.len();
        }
        download.push(size / started.elapsed().as_secs_f64());
        anyhow::ensure!(
            received == data.len(),
            "downloaded {received} of {} bytes",
            data.len()
        );
        files.remove(TRANSFER_FILE).await?;

        let started = Instant::now();
        std::fs::write(&local, &data)?;
        local_write.push(size / started.elapsed().as_secs_f64());
        let started = Instant::now();
        let status = Command::new("cat")
            .arg(&local)
            .stdout(Stdio::null())
            .status()?;
        local_read.push(size / started.elapsed().as_secs_f64());
        anyhow::ensure!(status.success(), "cat failed");
        std::fs::remove_file(&local)?;
    }
    let (upload, download) = (median(upload), median(download));
    let (local_write, local_read) = (median(local_write), median(local_read));

    let gib = 1024.0 * 1024.0 * 1024.0;
    Ok(vec![
        Result {
            name: "upload (POST /files, octet-stream)",
            figure: Figure::Throughput(upload),
            baseline_name: "writing the bytes to a local file",
            baseline: Figure::Throughput(local_write),
            target: Some(Target::ThroughputAbove(gib)),
        },
        Result {
            name: "download (GET /files)",
            figure: Figure::Throughput(download),
            baseline_name: "`cat` of the file to /dev/null",
            baseline: Figure::Throughput(local_read),
            target: Some(Target::ThroughputAbove(gib)),
        },
    ])
}

/// Transfers of each kind; the median counts.
pub const TRANSFER_RUNS: usize = 5;

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Where the transfer test writes inside the agent's view (the host's tmpfs).
const TRANSFER_FILE: &str = "/dev/shm/cove-bench-transfer.bin";

/// One way of creating sandboxes one after the other.
struct CreateCase {
    name: &'static str,
    network: bool,
    /// `cove serve` arguments.
    server_args: &'static [&'static str],
    /// Time between one sandbox's kill and the next create.
    pause: Duration,
    target: Option<Target>,
}

const CREATE_CASES: [CreateCase; 3] = [
    CreateCase {
        name: "create → first command output, no network",
        network: false,
        server_args: &[],
        pause: Duration::from_millis(50),
        target: Some(Target::LatencyBelow(Duration::from_millis(15))),
    },
    CreateCase {
        name: "create → first command output, with internet access",
        network: true,
        server_args: &[],
        pause: Duration::from_millis(50),
        target: Some(Target::LatencyBelow(Duration::from_millis(40))),
    },
    CreateCase {
        name: "create → first command output, no network, without warm sandboxes, back to back",
        network: false,
        server_args: &["--warm-pool", "0"],
        pause: Duration::ZERO,
        target: None,
    },
];

/// `POST /v2/sandboxes` until the first command's output arrives through the proxy,
/// against `unshare` of the same namespaces running `true`.
async fn create_latency(settings: &Settings, case: &CreateCase) -> anyhow::Result<Result> {
    let server = TestServer::start_with_args(&settings.cove, case.server_args).await;
    let config = server.config();
    let options = CreateOptions {
        allow_internet_access: Some(case.network),
        ..CreateOptions::default()
    };
    // The warm sandboxes of a server that just started are still being made.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut samples = Vec::with_capacity(settings.sandboxes);
    for _ in 0..settings.sandboxes {
        tokio::time::sleep(case.pause).await;
        let started = Instant::now();
        let sandbox = Sandbox::create(&config, options.clone()).await?;
        let out = sandbox.commands().run("echo ready").await?;
        samples.push(started.elapsed());
        anyhow::ensure!(
            out.stdout == "ready\n",
            "unexpected output {:?}",
            out.stdout
        );
        sandbox.kill().await?;
    }
    let mut baseline = Vec::with_capacity(settings.sandboxes);
    for _ in 0..settings.sandboxes {
        let started = Instant::now();
        let status = Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "--pid",
                "--fork",
                "--ipc",
                "--uts",
                "--net",
                "--cgroup",
                "true",
            ])
            .status()
            .context("cannot run unshare")?;
        baseline.push(started.elapsed());
        anyhow::ensure!(status.success(), "unshare failed");
    }
    Ok(Result {
        name: case.name,
        figure: latency(samples),
        baseline_name: "`unshare` of the same namespaces running `true`",
        baseline: latency(baseline),
        target: case.target,
    })
}

/// A command's round trip through the proxy in one sandbox while another spins on more
/// CPUs than it may use, against the same without the hog.
async fn latency_beside_a_hog(settings: &Settings) -> anyhow::Result<Result> {
    let server = TestServer::start(&settings.cove).await;
    let config = server.config();
    let quiet = Sandbox::create(&config, CreateOptions::default()).await?;
    let round_trips = |n: usize| {
        let quiet = quiet.clone();
        async move {
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let started = Instant::now();
                quiet
                    .commands()
                    .spawn(cove_sdk::Command::new("true"))
                    .await?
                    .wait()
                    .await?;
                samples.push(started.elapsed());
            }
            anyhow::Ok(latency(samples))
        }
    };
    let n = settings.iterations.min(200);
    let alone = round_trips(n).await?;
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
    let beside = round_trips(n).await?;
    hog.kill().await?;
    quiet.kill().await?;
    Ok(Result {
        name: "command round trip beside a CPU hog (4 spinners, 1-CPU quota)",
        figure: beside,
        baseline_name: "the same with no hog",
        baseline: alone,
        target: Some(Target::RatioBelow(2.0)),
    })
}

/// Memory of idle sandboxes with internet access (agent and network helper): the
/// proportional and resident set of the processes in their cgroups, and the cgroups' own
/// memory figure, against an idle `sleep` process on the host.
async fn idle_memory(settings: &Settings) -> anyhow::Result<Result> {
    let server = TestServer::start(&settings.cove).await;
    let config = server.config();
    let mut sandboxes = Vec::new();
    for _ in 0..settings.idle {
        let sandbox = Sandbox::create(&config, CreateOptions::default()).await?;
        sandbox.commands().run("true").await?;
        sandboxes.push(sandbox);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut rss, mut pss, mut cgroup) = (0, 0, 0);
    for sandbox in &sandboxes {
        let pids = cgroup_file(sandbox.id(), &["pids/cove", "cove"], "cgroup.procs")?;
        anyhow::ensure!(
            pids.lines().count() >= 2,
            "sandbox {} runs {:?}",
            sandbox.id(),
            pids
        );
        for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            let (r, p) = memory_of(pid);
            rss += r;
            pss += p;
        }
        let usage = cgroup_file(sandbox.id(), &["memory/cove"], "memory.usage_in_bytes")
            .or_else(|_| cgroup_file(sandbox.id(), &["cove"], "memory.current"))?;
        cgroup += usage.trim().parse::<u64>().unwrap_or(0);
    }
    let n = settings.idle as u64;

    let mut sleeper = Command::new("sleep").arg("30").spawn()?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (base_rss, base_pss) = memory_of(sleeper.id());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    for sandbox in sandboxes {
        sandbox.kill().await?;
    }
    Ok(Result {
        name: "memory per idle sandbox with internet access (agent + network helper)",
        figure: Figure::Memory {
            rss: rss / n,
            pss: pss / n,
            cgroup: Some(cgroup / n),
        },
        baseline_name: "an idle `sleep` process",
        baseline: Figure::Memory {
            rss: base_rss,
            pss: base_pss,
            cgroup: None,
        },
        target: Some(Target::MemoryBelow(8 << 20)),
    })
}

/// A file of sandbox `id`'s cgroup, under the first of `parents` (below /sys/fs/cgroup)
/// that has it.
fn cgroup_file(id: &str, parents: &[&str], file: &str) -> anyhow::Result<String> {
    parents
        .iter()
        .find_map(|parent| {
            std::fs::read_to_string(format!("/sys/fs/cgroup/{parent}/{id}/{file}")).ok()
        })
        .with_context(|| format!("no {file} for sandbox {id}"))
}

/// (RSS, PSS) in bytes, from `/proc/PID/smaps_rollup`.
fn memory_of(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("Rss:"), field("Pss:"))
}
