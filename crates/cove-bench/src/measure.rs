//! What every group of measurements shares: the settings, a figure beside its baseline, the
//! goal it is held to, and the dispatcher that runs the groups asked for.

use std::{path::PathBuf, time::Duration};

#[derive(Debug)]
pub struct Settings {
    pub cove: PathBuf,
    pub sandboxes: usize,
    pub iterations: usize,
    pub transfer_bytes: usize,
    pub idle: usize,
    /// The most live sandboxes the density group tries to hold.
    pub max_live: usize,
    /// Clients (and sandboxes) of the concurrency group.
    pub clients: usize,
    /// Create+run+kill cycles timed through each SDK.
    pub sdk_cycles: usize,
    /// The Python with the official `e2b` SDK.
    pub python: PathBuf,
    /// Where the official JavaScript SDK is installed (`node_modules/e2b`).
    pub js_dir: PathBuf,
    /// Run only this group of measurements.
    pub only: Option<String>,
}

/// The groups, in the order they run; `--only` takes one of these.
pub const GROUPS: [&str; 17] = [
    "commands",
    "transfers",
    "egress",
    "clients",
    "create",
    "pause",
    "gvisor",
    "hog",
    "code",
    "memory",
    "density",
    "concurrency",
    "burst",
    "python",
    "templates",
    "dashboard",
    "cluster",
];

/// One figure and its baseline.
#[derive(Debug)]
pub struct Result {
    pub name: String,
    pub figure: Figure,
    pub baseline_name: String,
    pub baseline: Figure,
    /// The goal, in the figure's unit, and whether lower is better.
    pub target: Option<Target>,
}

/// Everything a run found: its figures, the measurements it had to skip (and why), and
/// observations that belong beside the table.
#[derive(Debug, Default)]
pub struct Report {
    pub results: Vec<Result>,
    pub skipped: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn skip(&mut self, why: String) {
        eprintln!("skipped: {why}");
        self.skipped.push(why);
    }

    pub fn note(&mut self, note: String) {
        eprintln!("note: {note}");
        self.notes.push(note);
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Figure {
    /// Latencies: p50 and p99.
    Latency { p50: Duration, p99: Duration },
    /// Bytes per second.
    Throughput(f64),
    /// Operations per second, with the p99 latency of one operation.
    Rate { per_second: f64, p99: Duration },
    /// Bytes per sandbox: resident and proportional (shared pages split) set of its
    /// processes, and what its cgroup counts (page cache included).
    Memory {
        rss: u64,
        pss: u64,
        cgroup: Option<u64>,
    },
    /// A number of things (live sandboxes).
    Count(u64),
}

impl Figure {
    /// The p99 of a latency or rate figure.
    pub fn p99(self) -> Option<Duration> {
        match self {
            Figure::Latency { p99, .. } | Figure::Rate { p99, .. } => Some(p99),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Target {
    LatencyBelow(Duration),
    /// The figure within this many times the baseline: a latency's p50, or (baseline over
    /// figure) a throughput.
    RatioBelow(f64),
    ThroughputAbove(f64),
    MemoryBelow(u64),
    CountAtLeast(u64),
}

impl Target {
    pub fn met(self, figure: Figure, baseline: Figure) -> bool {
        match (self, figure) {
            (Target::RatioBelow(limit), Figure::Latency { p50, .. }) => match baseline {
                Figure::Latency { p50: base, .. } => p50.as_secs_f64() < limit * base.as_secs_f64(),
                _ => false,
            },
            (Target::RatioBelow(limit), Figure::Throughput(rate)) => match baseline {
                Figure::Throughput(base) => base < limit * rate,
                _ => false,
            },
            (Target::LatencyBelow(limit), Figure::Latency { p50, .. }) => p50 < limit,
            (Target::ThroughputAbove(limit), Figure::Throughput(rate)) => rate > limit,
            (Target::MemoryBelow(limit), Figure::Memory { pss, .. }) => pss < limit,
            (Target::CountAtLeast(limit), Figure::Count(n)) => n >= limit,
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

pub fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Runs the groups `settings` asks for, one server per measurement, in [`GROUPS`] order.
pub async fn all(settings: &Settings) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let wanted = |group: &str| settings.only.as_deref().is_none_or(|only| group == only);
    if wanted("commands") {
        eprintln!("commands: round trip through cove serve and over the agent socket");
        report
            .results
            .push(crate::commands::proxy_round_trip(settings).await?);
        report
            .results
            .push(crate::commands::agent_round_trip(settings).await?);
    }
    if wanted("transfers") {
        eprintln!("transfers: 1 KiB files and one large file through cove serve");
        report
            .results
            .extend(crate::transfer::small_files(settings).await?);
        report
            .results
            .extend(crate::transfer::large_file(settings).await?);
    }
    if wanted("egress") {
        eprintln!("egress: HTTP from sandboxes with and without rules to a test host");
        crate::egress::all(settings, &mut report).await?;
    }
    if wanted("clients") {
        eprintln!("clients: transfers through the official SDKs, requests and curl");
        crate::clients::all(settings, &mut report).await?;
    }
    if wanted("create") {
        eprintln!("create: create → first command output");
        crate::create::all(settings, &mut report).await?;
    }
    if wanted("pause") {
        eprintln!("pause: pause and resume per mode, snapshots, forks");
        crate::pause::all(settings, &mut report).await?;
    }
    if wanted("templates") {
        eprintln!("templates: builds, the build cache, creates from built templates");
        crate::templates::all(settings, &mut report).await?;
    }
    if wanted("gvisor") {
        eprintln!("gvisor: the gVisor backend beside the namespace backend");
        crate::gvisor::all(settings, &mut report).await?;
    }
    if wanted("hog") {
        eprintln!("hog: command latency beside a CPU hog");
        report
            .results
            .push(crate::commands::latency_beside_a_hog(settings).await?);
    }
    if wanted("code") {
        eprintln!("code: run_code round trip");
        report
            .results
            .push(crate::code::run_code_round_trip(settings).await?);
        eprintln!("code: create → first run_code result");
        report
            .results
            .push(crate::code::create_to_first_result(settings).await?);
        for settle in crate::code::WARM_KERNEL_SETTLE {
            eprintln!("code: create → first run_code result from the warm pool ({settle:?} idle)");
            report
                .results
                .push(crate::code::warm_create_to_first_result(settings, settle).await?);
        }
    }
    if wanted("memory") {
        eprintln!("memory: idle sandboxes");
        report
            .results
            .push(crate::density::idle_memory(settings).await?);
    }
    if wanted("density") {
        eprintln!("density: 1 → {} live sandboxes", settings.max_live);
        crate::density::growth(settings, &mut report).await?;
    }
    if wanted("concurrency") {
        eprintln!("concurrency: {} clients at once", settings.clients);
        report
            .results
            .push(crate::concurrency::commands(settings).await?);
    }
    if wanted("burst") {
        for network in [false, true] {
            eprintln!(
                "burst: {} clients creating at once (network {network})",
                crate::concurrency::BURST_CLIENTS
            );
            report
                .results
                .push(crate::concurrency::creates(settings, network).await?);
        }
    }
    if wanted("python") {
        eprintln!("python: the official e2b SDK against ours");
        crate::python::sdk_overhead(settings, &mut report).await?;
    }
    if wanted("dashboard") {
        eprintln!(
            "dashboard: the sandbox list with {} live in Chromium",
            settings.max_live
        );
        crate::dashboard::list_render(settings, &mut report).await?;
    }
    if wanted("cluster") {
        eprintln!("cluster: an api, an edge and nodes on PostgreSQL, beside a single server");
        crate::cluster::all(settings, &mut report).await?;
    }
    Ok(report)
}
