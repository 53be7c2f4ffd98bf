//! The results as a terminal table and as `docs/BENCHMARKS.md`.

use std::{fmt::Write as _, time::Duration};

use crate::{
    create::{PUBLISHED, READY},
    measure,
    measure::{Figure, Report, Settings, Target},
};

pub fn show(figure: Figure) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    match figure {
        Figure::Latency { p50, p99 } => {
            format!("p50 {} ms, p99 {} ms", fixed(ms(p50)), fixed(ms(p99)))
        }
        Figure::Throughput(rate) | Figure::PairedThroughput { rate, .. } => {
            format!("{:.2} GiB/s", rate / (1u64 << 30) as f64)
        }
        Figure::Rate { per_second, p99 } => format!("{per_second:.0}/s, p99 {:.2} ms", ms(p99)),
        Figure::Memory { rss, pss, cgroup } => {
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            let cgroup = cgroup
                .map(|c| format!(", cgroup {:.1} MiB", mib(c)))
                .unwrap_or_default();
            format!("PSS {:.1} MiB (RSS {:.1} MiB{cgroup})", mib(pss), mib(rss))
        }
        Figure::Count(n) => n.to_string(),
    }
}

/// How many times the baseline the figure is ([`Figure::ratio`]: above 1 always means worse
/// than the baseline); transfers made by turns show the quartiles of their turns' ratios too.
fn ratio(figure: Figure, baseline: Figure) -> String {
    let r = times(figure.ratio(baseline).unwrap_or(f64::NAN));
    match figure {
        Figure::PairedThroughput {
            quartiles: (low, high),
            ..
        } => format!("{r} (turns {}–{})", times(low), times(high)),
        _ => r,
    }
}

/// A ratio, with two decimals below 10× (goals lie near 1×).
fn times(r: f64) -> String {
    if r < 0.1 {
        format!("{r:.3}×")
    } else if r < 10.0 {
        format!("{r:.2}×")
    } else {
        format!("{r:.1}×")
    }
}

fn target(target: Option<Target>, figure: Figure, baseline: Figure) -> String {
    let Some(t) = target else {
        return "–".to_owned();
    };
    let goal = match t {
        Target::LatencyBelow(d) => format!("p50 ≤ {} ms", d.as_millis()),
        Target::ThroughputAbove(r) => format!("≥ {:.0} GiB/s", r / (1u64 << 30) as f64),
        Target::MemoryBelow(b) => format!("≤ {} MiB", b >> 20),
        Target::RatioBelow(r) => format!("within {r}× of the baseline"),
        Target::CountAtLeast(n) => format!("≥ {n}"),
        Target::RateAtLeast(n) => format!("≥ {n:.0}/s"),
    };
    if t.met(figure, baseline) {
        return format!("{goal}: met");
    }
    let off = match (t, figure) {
        (Target::LatencyBelow(d), Figure::Latency { p50, .. }) => {
            Some(p50.as_secs_f64() / d.as_secs_f64())
        }
        (Target::RatioBelow(r), _) => figure.ratio(baseline).map(|x| x / r),
        (Target::ThroughputAbove(r), _) => figure.throughput().map(|f| r / f),
        (Target::MemoryBelow(m), Figure::Memory { pss, .. }) => Some(pss as f64 / m as f64),
        (Target::CountAtLeast(n), Figure::Count(f)) => Some(n as f64 / f.max(1) as f64),
        (Target::RateAtLeast(n), Figure::Rate { per_second, .. }) => {
            Some(n / per_second.max(f64::MIN_POSITIVE))
        }
        _ => None,
    };
    let by = off.map_or_else(|| "?".to_owned(), |x| format!("{x:.1}×"));
    format!("{goal}: **missed**, {by} off")
}

/// A result's columns: name, figure, baseline's name and figure, ratio, target.
fn cells(r: &measure::Result) -> [String; 6] {
    [
        r.name.to_string(),
        show(r.figure),
        r.baseline_name.to_string(),
        show(r.baseline),
        ratio(r.figure, r.baseline),
        target(r.target, r.figure, r.baseline),
    ]
}

pub fn table(report: &Report) -> String {
    let mut out = String::new();
    for r in &report.results {
        let [name, figure, baseline_name, baseline, ratio, target] = cells(r);
        let _ = writeln!(
            out,
            "{name:<60} {figure:<34} | {baseline_name:<48} {baseline:<34} | {ratio:>6} | {target}"
        );
    }
    for skipped in &report.skipped {
        let _ = writeln!(out, "skipped: {skipped}");
    }
    for failed in &report.failed {
        let _ = writeln!(out, "failed: {failed}");
    }
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

pub fn markdown(settings: &Settings, report: &Report, took: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Each figure stands beside a baseline measured in the same run on the same machine; the\n\
         ratio (figure ÷ baseline for times and memory, baseline ÷ figure for throughput, rates\n\
         and counts, so above 1 is always worse than the baseline) is what to compare between\n\
         runs, because the machines are shared and noisy.\n"
    );
    let _ = writeln!(
        out,
        "Reproduce: `cargo build --release -p cove-bench -p cove-cli && target/release/cove-bench --out docs/BENCHMARKS.md`\n"
    );
    let _ = writeln!(
        out,
        "- Machine: {} (shared with other work during the run)",
        machine()
    );
    let _ = writeln!(out, "- Date: {}", date());
    let _ = writeln!(out, "- Whole run: {:.0} s", took.as_secs_f64());
    if settings.profiler.is_some() {
        let _ = writeln!(
            out,
            "- Profiled with `perf` (`--profile`): the figures are slowed by the sampling, not for comparison"
        );
    }
    let _ = writeln!(
        out,
        "- Runs: {} sandboxes for create latency, {} repetitions of small operations, {} files of 1 KiB each way, the median of {} transfers of {} MiB each way ({} through the official clients, by turns with their baselines, the ratio being the median of the turns' ratios), {} idle sandboxes, up to {} live sandboxes, {} concurrent clients, {} SDK cycles{}\n",
        settings.sandboxes,
        settings.iterations,
        crate::transfer::SMALL_FILES,
        crate::transfer::TRANSFER_RUNS,
        settings.transfer_bytes >> 20,
        crate::clients::CLIENT_RUNS,
        settings.idle,
        settings.max_live,
        settings.clients,
        settings.sdk_cycles,
        settings
            .only
            .as_deref()
            .map(|g| format!(" (only the `{g}` group)"))
            .unwrap_or_default(),
    );
    let _ = writeln!(
        out,
        "| measurement | Cove | baseline | baseline figure | ratio | target |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for r in &report.results {
        let _ = writeln!(out, "| {} |", cells(r).join(" | "));
    }
    if !report.failed.is_empty() {
        let _ = writeln!(
            out,
            "\nFailed in this run (each group stopped at its error; the rows it measured before stand above):\n"
        );
        for failed in &report.failed {
            let _ = writeln!(out, "- {failed}");
        }
    }
    if !report.skipped.is_empty() {
        let _ = writeln!(out, "\nSkipped in this run:\n");
        for skipped in &report.skipped {
            let _ = writeln!(out, "- {skipped}");
        }
    }
    if !report.notes.is_empty() {
        let _ = writeln!(out);
        for note in &report.notes {
            let _ = writeln!(out, "{note}\n");
        }
    }
    if let Some(ready) = report.results.iter().find(|r| r.name == READY)
        && let Figure::Latency { p50, .. } = ready.figure
    {
        let ours = p50.as_secs_f64() * 1e3;
        let _ = writeln!(
            out,
            "\n## Published figures (quoted, not measured)\n\n\
             There is no internet access on the bench machine, so these are quoted as the\n\
             projects publish them; they come from other hardware and measure slightly\n\
             different things. \"× ours\" is their figure over this run's create → first\n\
             command output p50 ({ours:.2} ms)."
        );
        let e2b = PUBLISHED[0].millis / ours;
        let _ = writeln!(
            out,
            "\nTarget: ten times faster than E2B's published figure: {} ({e2b:.1}×).\n",
            if e2b >= 10.0 { "met" } else { "**missed**" }
        );
        let _ = writeln!(
            out,
            "| who | what | figure | × ours | source |\n|---|---|---|---|---|"
        );
        for p in &PUBLISHED {
            let _ = writeln!(
                out,
                "| {} | {} | {} ms | {:.1}× | {} |",
                p.who,
                p.what,
                p.millis,
                p.millis / ours,
                p.source
            );
        }
    }
    // What each group's figures mean and what was found, kept by hand (the whole file is
    // what `--out docs/BENCHMARKS.md` writes).
    let _ = writeln!(out, "\n{}", include_str!("groups.md").trim_end());
    let _ = writeln!(out, "\n{}", include_str!("reading.md").trim_end());
    let _ = writeln!(out, "\n{}", include_str!("findings.md").trim_end());
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
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|o| {
            o.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|n| n.trim_matches('"').to_owned())
        })
        .unwrap_or_default();
    format!(
        "{cpus} × {model}, {} GiB, {os}, Linux {}, cgroups {}",
        mem_kib >> 20,
        kernel.trim(),
        if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            "v2"
        } else {
            "v1"
        }
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

/// Milliseconds with two decimals, or three below 0.1 ms (local file operations).
fn fixed(ms: f64) -> String {
    if ms < 0.1 {
        format!("{ms:.3}")
    } else {
        format!("{ms:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_target_says_how_far_it_was_missed() {
        let rate = |per_second| Figure::Rate {
            per_second,
            p99: Duration::from_millis(300),
        };
        let goal = Some(Target::RateAtLeast(200.0));
        assert_eq!(target(goal, rate(250.0), rate(600.0)), "≥ 200/s: met");
        assert_eq!(
            target(goal, rate(80.0), rate(600.0)),
            "≥ 200/s: **missed**, 2.5× off"
        );
    }
}
