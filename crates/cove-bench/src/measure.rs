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
    /// Flame graphs of Cove's side of some rows (`--profile`).
    pub profiler: Option<crate::profile::Profiler>,
}

impl Settings {
    /// Profiles the machine as `name` while the answer lives, when `--profile` was given.
    pub fn profile(
        &self,
        name: &'static str,
    ) -> anyhow::Result<Option<crate::profile::Window<'_>>> {
        self.profiler
            .as_ref()
            .map(|profiler| profiler.window(name))
            .transpose()
    }
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
    /// Groups that stopped on an error, with it: the rest of the run goes on, and the
    /// report says so.
    pub failed: Vec<String>,
}

impl Report {
    /// Notes how group `name` ended: a failure is said and kept, not the end of the run.
    pub fn settle(&mut self, name: &str, result: anyhow::Result<()>) {
        if let Err(err) = result {
            let failure = format!("{name}: {err:#}");
            eprintln!("failed: {failure}");
            self.failed.push(failure);
        }
    }

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
    /// Bytes per second, the median of transfers made by turns with the baseline's (A B A B
    /// …), and the median over those turns of the baseline's rate over this one's, with
    /// their lower and upper quartiles: each transfer is weighed against the baseline's made
    /// beside it, so that a machine whose speed drifts during the run weighs on both alike.
    PairedThroughput {
        rate: f64,
        ratio: f64,
        quartiles: (f64, f64),
    },
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

    /// Bytes per second, paired or not.
    pub fn throughput(self) -> Option<f64> {
        match self {
            Figure::Throughput(rate) | Figure::PairedThroughput { rate, .. } => Some(rate),
            _ => None,
        }
    }

    /// How many times the baseline this figure is, so that above 1 always means worse than
    /// the baseline: a latency's p50 over the baseline's, a throughput's, rate's or count's
    /// baseline over the figure, memory's PSS over the baseline's.
    pub fn ratio(self, baseline: Figure) -> Option<f64> {
        match (self, baseline) {
            (Figure::Latency { p50, .. }, Figure::Latency { p50: b, .. }) => {
                Some(p50.as_secs_f64() / b.as_secs_f64())
            }
            (Figure::PairedThroughput { ratio, .. }, _) => Some(ratio),
            (Figure::Throughput(f), b) => Some(b.throughput()? / f),
            (Figure::Rate { per_second: f, .. }, Figure::Rate { per_second: b, .. }) => Some(b / f),
            (Figure::Memory { pss, .. }, Figure::Memory { pss: b, .. }) => {
                Some(pss as f64 / b.max(1) as f64)
            }
            (Figure::Count(f), Figure::Count(b)) => Some(b as f64 / f.max(1) as f64),
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
    /// Operations per second, at least.
    RateAtLeast(f64),
}

impl Target {
    pub fn met(self, figure: Figure, baseline: Figure) -> bool {
        match (self, figure) {
            (Target::RatioBelow(limit), _) => figure.ratio(baseline).is_some_and(|r| r < limit),
            (Target::LatencyBelow(limit), Figure::Latency { p50, .. }) => p50 < limit,
            (Target::ThroughputAbove(limit), _) => figure.throughput().is_some_and(|r| r > limit),
            (Target::MemoryBelow(limit), Figure::Memory { pss, .. }) => pss < limit,
            (Target::CountAtLeast(limit), Figure::Count(n)) => n >= limit,
            (Target::RateAtLeast(limit), Figure::Rate { per_second, .. }) => per_second >= limit,
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

pub fn median(rates: Vec<f64>) -> f64 {
    quantile(rates, 0.5)
}

/// The value `q` of the way up `values` (0.5: the median), nearest rank.
fn quantile(mut values: Vec<f64>, q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// Transfers made by turns with a baseline's, `rates[i]` beside `baseline[i]` (bytes per
/// second): the median of each side and the median of the turns' ratios.
pub fn paired(rates: Vec<f64>, baseline: &[f64]) -> anyhow::Result<Figure> {
    anyhow::ensure!(
        !rates.is_empty() && rates.len() == baseline.len(),
        "{} transfers cannot be paired with the baseline's {}",
        rates.len(),
        baseline.len()
    );
    let ratios: Vec<f64> = rates.iter().zip(baseline).map(|(r, b)| b / r).collect();
    Ok(Figure::PairedThroughput {
        rate: median(rates),
        ratio: median(ratios.clone()),
        quartiles: (quantile(ratios.clone(), 0.25), quantile(ratios, 0.75)),
    })
}

/// Runs group `$name`'s body (which may use `?`) when `$wanted` asks for it, and settles
/// it in `$report`: a failure is kept and said, and the run goes on.
macro_rules! group {
    ($report:ident, $wanted:ident, $name:literal, { $($body:tt)* }) => {
        if $wanted($name) {
            let result: anyhow::Result<()> = async {
                $($body)*
                Ok(())
            }
            .await;
            $report.settle($name, result);
        }
    };
}

/// Runs the groups `settings` asks for, one server per measurement, in [`GROUPS`] order.
pub async fn all(settings: &Settings) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let wanted = |group: &str| settings.only.as_deref().is_none_or(|only| group == only);
    group!(report, wanted, "commands", {
        eprintln!("commands: round trip through cove serve and over the agent socket");
        report
            .results
            .push(crate::commands::proxy_round_trip(settings).await?);
        report
            .results
            .push(crate::commands::agent_round_trip(settings).await?);
    });
    group!(report, wanted, "transfers", {
        eprintln!("transfers: 1 KiB files and one large file through cove serve");
        report
            .results
            .extend(crate::transfer::small_files(settings).await?);
        report
            .results
            .extend(crate::transfer::large_file(settings).await?);
    });
    group!(report, wanted, "egress", {
        eprintln!("egress: HTTP from sandboxes with and without rules to a test host");
        crate::egress::all(settings, &mut report).await?;
    });
    group!(report, wanted, "clients", {
        eprintln!("clients: transfers through the official SDKs, requests and curl");
        crate::clients::all(settings, &mut report).await?;
    });
    group!(report, wanted, "create", {
        eprintln!("create: create → first command output");
        crate::create::all(settings, &mut report).await?;
    });
    group!(report, wanted, "pause", {
        eprintln!("pause: pause and resume per mode, snapshots, forks");
        crate::pause::all(settings, &mut report).await?;
    });
    group!(report, wanted, "templates", {
        eprintln!("templates: builds, the build cache, creates from built templates");
        crate::templates::all(settings, &mut report).await?;
    });
    group!(report, wanted, "gvisor", {
        eprintln!("gvisor: the gVisor backend beside the namespace backend");
        crate::gvisor::all(settings, &mut report).await?;
    });
    group!(report, wanted, "hog", {
        eprintln!("hog: command latency beside a CPU hog");
        report
            .results
            .push(crate::commands::latency_beside_a_hog(settings).await?);
    });
    group!(report, wanted, "code", {
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
    });
    group!(report, wanted, "memory", {
        eprintln!("memory: idle sandboxes");
        report
            .results
            .push(crate::density::idle_memory(settings).await?);
    });
    group!(report, wanted, "density", {
        eprintln!("density: 1 → {} live sandboxes", settings.max_live);
        crate::density::growth(settings, &mut report).await?;
    });
    group!(report, wanted, "concurrency", {
        eprintln!("concurrency: {} clients at once", settings.clients);
        report
            .results
            .push(crate::concurrency::commands(settings).await?);
    });
    group!(report, wanted, "burst", {
        for network in [false, true] {
            eprintln!(
                "burst: {} clients creating at once (network {network})",
                crate::concurrency::BURST_CLIENTS
            );
            report
                .results
                .push(crate::concurrency::creates(settings, network).await?);
        }
    });
    group!(report, wanted, "python", {
        eprintln!("python: the official e2b SDK against ours");
        crate::python::sdk_overhead(settings, &mut report).await?;
    });
    group!(report, wanted, "dashboard", {
        eprintln!(
            "dashboard: the sandbox list with {} live in Chromium",
            settings.max_live
        );
        crate::dashboard::list_render(settings, &mut report).await?;
    });
    group!(report, wanted, "cluster", {
        eprintln!("cluster: an api, an edge and nodes on PostgreSQL, beside a single server");
        crate::cluster::all(settings, &mut report).await?;
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paired_ratio_weighs_each_transfer_against_its_own_turn() {
        // The machine halves its speed during the second turn, after the plain transfer:
        // the medians of each side (45 and 100) would make Cove 2.2× the baseline; each turn
        // weighed on its own makes it 1.1× in two turns out of three.
        let cove = vec![90.0, 45.0, 45.0];
        let plain = [100.0, 100.0, 50.0];
        let Figure::PairedThroughput {
            rate,
            ratio,
            quartiles,
        } = paired(cove, &plain).unwrap()
        else {
            panic!("not a paired figure");
        };
        assert_eq!(rate, 45.0);
        assert!((ratio - 100.0 / 90.0).abs() < 1e-9);
        assert!((quartiles.0 - ratio).abs() < 1e-9);
        assert!((quartiles.1 - 100.0 / 45.0).abs() < 1e-9);
        assert!(Target::RatioBelow(1.2).met(
            paired(vec![90.0], &[100.0]).unwrap(),
            Figure::Throughput(100.0)
        ));
        assert!(!Target::RatioBelow(1.2).met(
            paired(vec![80.0], &[100.0]).unwrap(),
            Figure::Throughput(100.0)
        ));
    }

    #[test]
    fn a_rate_target_counts_operations_per_second() {
        let rate = |per_second| Figure::Rate {
            per_second,
            p99: Duration::from_millis(1),
        };
        let baseline = rate(500.0);
        assert!(Target::RateAtLeast(200.0).met(rate(200.0), baseline));
        assert!(!Target::RateAtLeast(200.0).met(rate(199.0), baseline));
        // Not a rate: never met.
        assert!(!Target::RateAtLeast(200.0).met(Figure::Count(1000), baseline));
    }

    #[tokio::test]
    async fn a_failed_group_is_kept_and_the_next_one_runs() {
        let mut report = Report::default();
        let wanted = |_: &str| true;
        group!(report, wanted, "first", {
            Err::<(), _>(anyhow::anyhow!("it broke"))?;
            report.notes.push("after the error".into());
        });
        group!(report, wanted, "second", {
            report.notes.push("ran".into());
        });
        assert_eq!(report.failed, ["first: it broke"]);
        assert_eq!(report.notes, ["ran"]);
        assert!(crate::report::table(&report).contains("failed: first: it broke"));
    }

    #[test]
    fn turns_that_do_not_pair_are_refused() {
        assert!(paired(vec![1.0, 2.0], &[1.0]).is_err());
        assert!(paired(Vec::new(), &[]).is_err());
    }
}
