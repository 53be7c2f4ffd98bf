//! The results as a terminal table and as `docs/BENCHMARKS.md`.

use std::fmt::Write as _;

use crate::measure::{Figure, Result, Settings, Target};

fn show(figure: Figure) -> String {
    match figure {
        Figure::Latency { p50, p99 } => format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        ),
        Figure::Throughput(rate) => format!("{:.2} GiB/s", rate / (1u64 << 30) as f64),
        Figure::Memory { rss, pss, cgroup } => {
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            let cgroup = cgroup
                .map(|c| format!(", cgroup {:.1} MiB", mib(c)))
                .unwrap_or_default();
            format!("PSS {:.1} MiB (RSS {:.1} MiB{cgroup})", mib(pss), mib(rss))
        }
    }
}

/// How many times the baseline the figure is (for throughput: baseline over figure, so that
/// above 1 always means slower than the baseline).
fn ratio(figure: Figure, baseline: Figure) -> String {
    let r = match (figure, baseline) {
        (Figure::Latency { p50, .. }, Figure::Latency { p50: b, .. }) => {
            p50.as_secs_f64() / b.as_secs_f64()
        }
        (Figure::Throughput(f), Figure::Throughput(b)) => b / f,
        (Figure::Memory { pss, .. }, Figure::Memory { pss: b, .. }) => pss as f64 / b.max(1) as f64,
        _ => f64::NAN,
    };
    format!("{r:.1}×")
}

fn target(target: Option<Target>, figure: Figure, baseline: Figure) -> String {
    let Some(t) = target else {
        return "–".to_owned();
    };
    let goal = match t {
        Target::LatencyBelow(d) => format!("p50 < {} ms", d.as_millis()),
        Target::ThroughputAbove(r) => format!("> {:.0} GiB/s", r / (1u64 << 30) as f64),
        Target::MemoryBelow(b) => format!("< {} MiB", b >> 20),
        Target::RatioBelow(r) => format!("within {r}× of the baseline"),
    };
    let met = t.met(figure, baseline);
    format!("{goal}: {}", if met { "met" } else { "**missed**" })
}

pub fn table(results: &[Result]) -> String {
    let mut out = String::new();
    for r in results {
        let _ = writeln!(
            out,
            "{:<48} {:<34} | {:<44} {:<34} | {:>6} | {}",
            r.name,
            show(r.figure),
            r.baseline_name,
            show(r.baseline),
            ratio(r.figure, r.baseline),
            target(r.target, r.figure, r.baseline)
        );
    }
    out
}

pub fn markdown(settings: &Settings, results: &[Result]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Each figure stands beside a baseline measured in the same run on the same machine; the\n\
         ratio (figure ÷ baseline for times and memory, baseline ÷ figure for throughput) is what\n\
         to compare between runs, because the machines are shared and noisy.\n"
    );
    let _ = writeln!(
        out,
        "Reproduce: `cargo build --release && target/release/cove-bench --out docs/BENCHMARKS.md`\n"
    );
    let _ = writeln!(out, "- Machine: {}", machine());
    let _ = writeln!(out, "- Date: {}", date());
    let _ = writeln!(
        out,
        "- Runs: {} sandboxes for create latency, {} repetitions of small operations, the median of {} transfers of {} MiB each way, {} idle sandboxes\n",
        settings.sandboxes,
        settings.iterations,
        crate::measure::TRANSFER_RUNS,
        settings.transfer_bytes >> 20,
        settings.idle
    );
    let _ = writeln!(
        out,
        "| measurement | Cove | baseline | baseline figure | ratio | target |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.name,
            show(r.figure),
            r.baseline_name,
            show(r.baseline),
            ratio(r.figure, r.baseline),
            target(r.target, r.figure, r.baseline)
        );
    }
    let _ = writeln!(
        out,
        "\nHow to read the create figures: `cove serve` keeps sandboxes started ahead of demand\n\
         (`--warm-pool`, 2 of each kind by default), and a create takes one and hands it its\n\
         token, environment and limits. The first two rows create one sandbox at a time, 50 ms\n\
         apart, as an agent framework does; the third turns the pool off and creates back to\n\
         back, which is what a burst larger than the pool costs per sandbox. The pool costs the\n\
         idle memory above for each warm sandbox."
    );
    out
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "{cpus} × {model}, {} GiB, Linux {}",
        mem_kib >> 20,
        kernel.trim()
    )
}

fn date() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    out.ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
