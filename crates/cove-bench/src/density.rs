//! Density: what an idle sandbox costs in memory, and how create and command latency grow
//! with the number of live sandboxes, up to how many this machine holds while each still
//! answers a command quickly.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;
use cove_sdk::{CreateOptions, Sandbox};
use cove_test_util::TestServer;
use futures::{StreamExt, TryStreamExt};

use crate::{
    commands::round_trip,
    measure::{Figure, Report, Result, Settings, Target, latency},
};

/// The live-sandbox counts where the cost is measured (those up to `--max-live`, then
/// `--max-live` itself).
const STEPS: [usize; 6] = [1, 10, 100, 250, 500, 750];

/// Creates timed at each step (each killed again, so the count stays put).
const CREATES_PER_STEP: usize = 20;

/// Commands timed at each step, at least.
const COMMANDS_PER_STEP: usize = 50;

/// A sandbox "still answers" while the p99 of one command's round trip, over all live
/// sandboxes, stays below this.
const ANSWER_WITHIN: Duration = Duration::from_millis(100);

/// Sandboxes killed at once when tearing down.
const KILLS_AT_ONCE: usize = 8;

/// Memory of idle sandboxes with internet access (agent and network helper): the
/// proportional and resident set of the processes in their cgroups, and the cgroups' own
/// memory figure, against an idle `sleep` process on the host.
pub async fn idle_memory(settings: &Settings) -> anyhow::Result<Result> {
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
        // The agent and the network helper.
        let (r, p, c) = memory_of_cgroup(sandbox.id(), 2)?;
        rss += r;
        pss += p;
        cgroup += c;
    }
    let n = settings.idle as u64;

    let mut sleeper = Command::new("sleep").arg("30").spawn()?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (base_rss, base_pss) = memory_of(sleeper.id());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    kill_all(sandboxes).await?;
    Ok(Result {
        name: "memory per idle sandbox with internet access (agent + network helper)".into(),
        figure: Figure::Memory {
            rss: rss / n,
            pss: pss / n,
            cgroup: Some(cgroup / n),
        },
        baseline_name: "an idle `sleep` process".into(),
        baseline: Figure::Memory {
            rss: base_rss,
            pss: base_pss,
            cgroup: None,
        },
        target: Some(Target::MemoryBelow(8 << 20)),
    })
}

/// What was measured with `live` sandboxes running.
struct Step {
    live: usize,
    create: Figure,
    command: Figure,
    slowest_command: Duration,
}

/// Adds sandboxes (with internet access, the default) step by step up to
/// `settings.max_live`; at each step times [`CREATES_PER_STEP`] create → first output (each
/// killed again) and one command in every live sandbox. Stops early when a create fails or
/// the commands' p99 passes [`ANSWER_WITHIN`]. The server runs without a warm pool, so every
/// create pays for a whole sandbox, and with `--max-sandboxes` above the ceiling, so what
/// stops the count is this machine, not a setting.
pub async fn growth(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let max_sandboxes = (settings.max_live + CREATES_PER_STEP + 10).to_string();
    let server = TestServer::start_with_args(
        &settings.cove,
        &["--warm-pool", "0", "--max-sandboxes", &max_sandboxes],
    )
    .await;
    let config = server.config();
    let mut steps: Vec<usize> = STEPS
        .into_iter()
        .filter(|&n| n < settings.max_live)
        .collect();
    steps.push(settings.max_live);

    let mut live: Vec<Sandbox> = Vec::with_capacity(settings.max_live);
    let mut measured: Vec<Step> = Vec::new();
    let mut held = 0;
    let mut stopped_by = None;
    let started = Instant::now();
    'steps: for &target in &steps {
        while live.len() < target {
            match create_ready(&config).await {
                Ok((sandbox, _)) => live.push(sandbox),
                Err(err) => {
                    stopped_by = Some(format!(
                        "creating sandbox {} failed: {err:#}",
                        live.len() + 1
                    ));
                    break 'steps;
                }
            }
        }
        let mut creates = Vec::with_capacity(CREATES_PER_STEP);
        for _ in 0..CREATES_PER_STEP {
            match create_ready(&config).await {
                Ok((sandbox, took)) => {
                    creates.push(took);
                    sandbox.kill().await?;
                }
                Err(err) => {
                    stopped_by = Some(format!("a create with {} live failed: {err:#}", live.len()));
                    break 'steps;
                }
            }
        }
        // One command in every live sandbox, and at least COMMANDS_PER_STEP in all (going
        // round again), so that the first steps have a p50 too.
        let rounds = live.len().max(COMMANDS_PER_STEP);
        let mut commands = Vec::with_capacity(rounds);
        for sandbox in live.iter().cycle().take(rounds) {
            commands.push(round_trip(sandbox).await?);
        }
        let slowest_command = commands.iter().max().copied().unwrap_or_default();
        let command = latency(commands);
        eprintln!(
            "  {} live: create {}, command {}, slowest {:.1} ms, {} s so far, {} MiB available",
            live.len(),
            crate::report::show(latency(creates.clone())),
            crate::report::show(command),
            slowest_command.as_secs_f64() * 1e3,
            started.elapsed().as_secs(),
            available_memory() >> 20,
        );
        measured.push(Step {
            live: live.len(),
            create: latency(creates),
            command,
            slowest_command,
        });
        let p99 = command.p99().unwrap_or_default();
        if p99 > ANSWER_WITHIN {
            stopped_by = Some(format!(
                "with {} live, the p99 of a command was {:.0} ms",
                live.len(),
                p99.as_secs_f64() * 1e3
            ));
            break;
        }
        held = live.len();
    }

    let memory: u64 = live.iter().map(|s| cgroup_memory(s.id())).sum();
    let count = live.len().max(1) as u64;
    report.note(format!(
        "Density: {held} live sandboxes held (tried up to {}), {}; with {} live their cgroups \
         counted {:.1} MiB each ({:.0} MiB in all), {} MiB of the host's memory still \
         available. Every create paid for a whole sandbox (`--warm-pool 0`); \
         `--max-sandboxes` was set to {max_sandboxes} (its default is 1000) so that the \
         machine, not the setting, decides.",
        settings.max_live,
        stopped_by
            .as_deref()
            .map(|why| format!("stopped because {why}"))
            .unwrap_or_else(|| "nothing stopped it before the ceiling".to_owned()),
        live.len(),
        memory as f64 / count as f64 / (1u64 << 20) as f64,
        memory as f64 / (1u64 << 20) as f64,
        available_memory() >> 20,
    ));
    eprintln!("  killing {} sandboxes", live.len());
    kill_all(live).await?;
    drop(server);

    report.results.push(Result {
        name: format!(
            "live sandboxes held, each answering `true` (p99 < {} ms)",
            ANSWER_WITHIN.as_millis()
        ),
        figure: Figure::Count(held as u64),
        baseline_name: "sandboxes tried (`--max-live`)".into(),
        baseline: Figure::Count(settings.max_live as u64),
        target: Some(Target::CountAtLeast(500)),
    });
    let Some(first) = measured.first() else {
        return Ok(());
    };
    for step in measured.iter().skip(1) {
        report.results.push(Result {
            name: format!("create → first command output with {} live", step.live),
            figure: step.create,
            baseline_name: format!("the same with {} live", first.live),
            baseline: first.create,
            target: None,
        });
        report.results.push(Result {
            name: format!(
                "command round trip with {} live (at least one in each; slowest {:.1} ms)",
                step.live,
                step.slowest_command.as_secs_f64() * 1e3
            ),
            figure: step.command,
            baseline_name: format!("the same with {} live", first.live),
            baseline: first.command,
            target: None,
        });
    }
    Ok(())
}

/// Creates a sandbox and waits for its first command's output: the sandbox and how long.
async fn create_ready(config: &cove_sdk::ConnectionConfig) -> anyhow::Result<(Sandbox, Duration)> {
    let started = Instant::now();
    let sandbox = Sandbox::create(config, CreateOptions::default()).await?;
    let out = sandbox.commands().run("echo ready").await?;
    let took = started.elapsed();
    anyhow::ensure!(
        out.stdout == "ready\n",
        "unexpected output {:?}",
        out.stdout
    );
    Ok((sandbox, took))
}

/// Kills every sandbox, a few at a time.
pub async fn kill_all(sandboxes: Vec<Sandbox>) -> anyhow::Result<()> {
    futures::stream::iter(sandboxes)
        .map(|sandbox| async move { sandbox.kill().await })
        .buffer_unordered(KILLS_AT_ONCE)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// RSS and PSS of the processes in cgroup `name` (a sandbox's, below `cove`), at least
/// `processes` of them, and what the cgroup itself counts (page cache included).
pub fn memory_of_cgroup(name: &str, processes: usize) -> anyhow::Result<(u64, u64, u64)> {
    let pids = cgroup_file(name, &["pids/cove", "cove"], "cgroup.procs")?;
    anyhow::ensure!(
        pids.lines().count() >= processes,
        "sandbox {name} runs {pids:?}"
    );
    let (mut rss, mut pss) = (0, 0);
    for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        let (r, p) = memory_of(pid);
        rss += r;
        pss += p;
    }
    Ok((rss, pss, cgroup_memory(name)))
}

/// What the memory cgroup of sandbox `id` counts (page cache included); 0 if unreadable.
fn cgroup_memory(id: &str) -> u64 {
    cgroup_file(id, &["memory/cove"], "memory.usage_in_bytes")
        .or_else(|_| cgroup_file(id, &["cove"], "memory.current"))
        .ok()
        .and_then(|usage| usage.trim().parse().ok())
        .unwrap_or(0)
}

/// `MemAvailable` of the host, in bytes.
fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
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
pub fn memory_of(pid: u32) -> (u64, u64) {
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
