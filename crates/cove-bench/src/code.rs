//! The code interpreter's figures: `run_code("1+1")` on a warm context, and a new sandbox's
//! first result (from the warm pool, whose sandboxes start their kernel ahead of use, and
//! past it), each beside a bare ipykernel driven over ZeroMQ from the host.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use cove_jupyter::{Channel, ConnectionInfo, KernelClient};
use cove_sdk::{CreateOptions, ExecutionEvent, RunCodeOptions, Sandbox};
use cove_test_util::TestServer;
use futures::TryStreamExt;

use crate::measure::{Result, Settings, Target, latency};

/// Sandboxes (and bare kernels) started for the first-result figure: each takes a second.
const FIRST_RESULT_SAMPLES: usize = 10;

/// Sandboxes taken from the warm pool for the warm first-result figure (each waits for the
/// pool to have a kernel ready again, about a second).
const WARM_FIRST_RESULT_SAMPLES: usize = 20;

/// How long a warm sandbox's kernel has been ready, at least, before the warm figure takes
/// it: at once (a busy server's pool, refilled as creates come), and after half a second
/// (a user's create does not come the moment the pool is refilled). On an idle machine, a
/// process that slept runs slower for a while (see docs/BENCHMARKS.md); each figure's
/// baseline idles as long.
pub const WARM_KERNEL_SETTLE: [Duration; 2] = [Duration::ZERO, Duration::from_millis(500)];

/// What a sandbox's log says once its agent has started the kernel ahead of use.
const WARM_KERNEL_LINE: &str = "warm kernel ready";

/// Runs `code` through the SDK (`/execute` on port 49999, through the proxy) and returns
/// when its first result arrived, and that result's text.
async fn first_result(sandbox: &Sandbox, code: &str) -> anyhow::Result<(Instant, String)> {
    let mut events = sandbox
        .code_interpreter()
        .run_stream(code, RunCodeOptions::default())
        .await?;
    let mut first = None;
    while let Some(event) = events.try_next().await? {
        match event {
            ExecutionEvent::Result(result) if first.is_none() => {
                first = Some((Instant::now(), result.text.unwrap_or_default()));
            }
            ExecutionEvent::Error(error) => anyhow::bail!("{code:?} failed: {error:?}"),
            _ => {}
        }
    }
    first.with_context(|| format!("no result from {code:?}"))
}

/// A bare ipykernel on the host, with the options Cove gives it.
struct BareKernel {
    child: tokio::process::Child,
    client: KernelClient,
    _dir: tempfile::TempDir,
}

impl BareKernel {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let info = ConnectionInfo::on_free_ports(Ipv4Addr::LOCALHOST, "python3")?;
        let file = dir.path().join("kernel.json");
        std::fs::write(&file, info.to_json())?;
        let child = tokio::process::Command::new("/usr/bin/python3")
            .args(["-m", "ipykernel_launcher", "-f"])
            .arg(&file)
            .args(cove_jupyter::IPYKERNEL_OPTIONS)
            .env("PYDEVD_DISABLE_FILE_VALIDATION", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start ipykernel (scripts/setup installs python3-ipykernel)")?;
        let client = tokio::time::timeout(Duration::from_secs(60), KernelClient::connect(&info))
            .await
            .context("the kernel did not listen")??;
        client.wait_ready(Duration::from_secs(60)).await?;
        Ok(Self {
            child,
            client,
            _dir: dir,
        })
    }

    /// Executes `code`; returns when its result arrived (and waits for idle after).
    async fn run(&self, code: &str) -> anyhow::Result<Instant> {
        self.execute(code, true)
            .await?
            .context("the kernel sent no result")
    }

    /// Takes the kernel through one execution that does not count, as a warm sandbox's
    /// agent does before the sandbox is handed out.
    async fn prime(&self) -> anyhow::Result<()> {
        self.execute("None", false).await.map(drop)
    }

    async fn execute(&self, code: &str, store_history: bool) -> anyhow::Result<Option<Instant>> {
        let mut replies = self
            .client
            .request(
                Channel::Shell,
                "execute_request",
                serde_json::json!({"code": code, "silent": false, "store_history": store_history,
                                   "user_expressions": {}, "allow_stdin": false}),
            )
            .await?;
        let mut result = None;
        while let Some(incoming) = replies.next().await {
            let message = &incoming.message;
            match message.msg_type() {
                "execute_result" => result = Some(Instant::now()),
                "status" if message.content["execution_state"] == "idle" => break,
                _ => {}
            }
        }
        Ok(result)
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `run_code("1+1")` on a warm context through the proxy, against an `execute_request` to a
/// bare ipykernel over ZeroMQ on the host.
pub async fn run_code_round_trip(settings: &Settings) -> anyhow::Result<Result> {
    let server = TestServer::start(&settings.cove).await;
    let sandbox = Sandbox::create(&server.config(), CreateOptions::default()).await?;
    for _ in 0..20 {
        first_result(&sandbox, "1+1").await?;
    }
    let mut samples = Vec::with_capacity(settings.iterations);
    for _ in 0..settings.iterations {
        let started = Instant::now();
        let (_, text) = first_result(&sandbox, "1+1").await?;
        samples.push(started.elapsed());
        anyhow::ensure!(text == "2", "unexpected answer {text:?}");
    }
    sandbox.kill().await?;

    let kernel = BareKernel::start().await?;
    for _ in 0..20 {
        kernel.run("1+1").await?;
    }
    let mut baseline = Vec::with_capacity(settings.iterations);
    for _ in 0..settings.iterations {
        let started = Instant::now();
        kernel.run("1+1").await?;
        baseline.push(started.elapsed());
    }
    kernel.stop().await;
    Ok(Result {
        name: "run_code(\"1+1\") on a warm context (HTTP through the proxy)".into(),
        figure: latency(samples),
        baseline_name: "`execute_request` to a bare ipykernel over ZeroMQ".into(),
        baseline: latency(baseline),
        target: Some(Target::LatencyBelow(Duration::from_millis(5))),
    })
}

/// A new sandbox's first `run_code("1+1")` result (its kernel starts on that call), against
/// starting a bare ipykernel on the host and executing the same.
pub async fn create_to_first_result(settings: &Settings) -> anyhow::Result<Result> {
    let server = TestServer::start(&settings.cove).await;
    // The warm sandboxes of a server that just started are still being made.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut samples = Vec::with_capacity(FIRST_RESULT_SAMPLES);
    for _ in 0..FIRST_RESULT_SAMPLES {
        let started = Instant::now();
        let sandbox = Sandbox::create(&server.config(), CreateOptions::default()).await?;
        let (arrived, _) = first_result(&sandbox, "1+1").await?;
        samples.push(arrived - started);
        sandbox.kill().await?;
    }
    let mut baseline = Vec::with_capacity(FIRST_RESULT_SAMPLES);
    for _ in 0..FIRST_RESULT_SAMPLES {
        let started = Instant::now();
        let kernel = BareKernel::start().await?;
        let result = kernel.run("1+1").await?;
        baseline.push(result - started);
        kernel.stop().await;
    }
    Ok(Result {
        name: "create → first run_code result, past the pool (kernel started on first use)".into(),
        figure: latency(samples),
        baseline_name: "start a bare ipykernel and execute on the host".into(),
        baseline: latency(baseline),
        target: None,
    })
}

/// Warm sandboxes in `state_dir` whose kernel is running, by id, with when their log said so.
fn warm_kernels(state_dir: &std::path::Path) -> BTreeMap<String, SystemTime> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("sandboxes")) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let log = std::fs::read_to_string(entry.path().join("sandbox.log")).ok()?;
            let line = log.lines().find(|line| line.contains(WARM_KERNEL_LINE))?;
            let line: serde_json::Value = serde_json::from_str(line).ok()?;
            let ready = humantime::parse_rfc3339(line["timestamp"].as_str()?).ok()?;
            Some((entry.file_name().to_string_lossy().into_owned(), ready))
        })
        .collect()
}

/// A new sandbox's first `run_code("1+1")` result when the create takes a warm sandbox whose
/// kernel is already running, against the first counted `execute_request` to a bare
/// ipykernel on the host that was primed the same way and then left idle as long as that
/// sandbox's kernel was (the floor: the same kernel work, no sandbox, no HTTP; a kernel's
/// first execution after it idled is slower the busier the machine is).
pub async fn warm_create_to_first_result(
    settings: &Settings,
    settle: Duration,
) -> anyhow::Result<Result> {
    // The server's defaults: code-interpreter creates take warm sandboxes whose kernels
    // started ahead, kept in a pool of their own once such a create came.
    let server = TestServer::start_with_args(&settings.cove, &["--warm-pool", "1"]).await;
    let code_interpreter = || CreateOptions {
        template: Some("code-interpreter-v1".into()),
        ..CreateOptions::default()
    };
    Sandbox::create(&server.config(), code_interpreter())
        .await?
        .kill()
        .await?;
    let mut samples = Vec::with_capacity(WARM_FIRST_RESULT_SAMPLES);
    let mut idled = Vec::with_capacity(WARM_FIRST_RESULT_SAMPLES);
    let mut taken = BTreeSet::new();
    for _ in 0..WARM_FIRST_RESULT_SAMPLES {
        // A warm sandbox of the kind the create takes (with internet access), its kernel
        // running and settled: a create at a pace the pool keeps up with, as a user's
        // would come.
        let deadline = Instant::now() + Duration::from_secs(120);
        let settled = |ready: &SystemTime| ready.elapsed().is_ok_and(|idle| idle >= settle);
        while warm_kernels(server.state_dir())
            .iter()
            .filter(|(id, ready)| !taken.contains(*id) && settled(ready))
            .count()
            < 1
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the warm pool's kernels were not ready within two minutes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (started, started_at) = (Instant::now(), SystemTime::now());
        let sandbox = Sandbox::create(&server.config(), code_interpreter()).await?;
        let (arrived, text) = first_result(&sandbox, "1+1").await?;
        samples.push(arrived - started);
        anyhow::ensure!(text == "2", "unexpected answer {text:?}");
        let ready = warm_kernels(server.state_dir()).get(sandbox.id()).copied();
        let ready = ready.with_context(|| {
            format!(
                "sandbox {} did not come from the warm pool with its kernel running",
                sandbox.id()
            )
        })?;
        idled.push(started_at.duration_since(ready).unwrap_or_default());
        taken.insert(sandbox.id().to_owned());
        sandbox.kill().await?;
    }
    let mut baseline = Vec::with_capacity(WARM_FIRST_RESULT_SAMPLES);
    for idle in &idled {
        let kernel = BareKernel::start().await?;
        kernel.prime().await?;
        tokio::time::sleep(*idle).await;
        let started = Instant::now();
        let result = kernel.run("1+1").await?;
        baseline.push(result - started);
        kernel.stop().await;
    }
    idled.sort();
    let idle_p50 = idled.get(idled.len() / 2).copied().unwrap_or_default();
    Ok(Result {
        name: format!(
            "create → first run_code(\"1+1\") result, warm pool (kernel started ahead, idle ≥ {} ms)",
            settle.as_millis()
        ),
        figure: latency(samples),
        baseline_name: format!(
            "first `execute_request` to a bare ipykernel, primed and idle as long (p50 {:.0} ms)",
            idle_p50.as_secs_f64() * 1000.0
        ),
        baseline: latency(baseline),
        target: Some(Target::LatencyBelow(Duration::from_millis(30))),
    })
}
