//! `cove-bench`: measures Cove beside baselines taken in the same run (the machines are
//! shared and noisy, so only ratios mean much) and writes `docs/BENCHMARKS.md`.
//!
//!     cargo build --release -p cove-bench -p cove-cli
//!     target/release/cove-bench --out docs/BENCHMARKS.md

mod clients;
mod cluster;
mod code;
mod commands;
mod concurrency;
mod create;
mod crun;
mod dashboard;
mod density;
mod egress;
mod gvisor;
mod measure;
mod pause;
mod plain;
mod profile;
mod python;
mod report;
mod templates;
mod transfer;

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks Cove against same-run baselines")]
struct Args {
    /// The `cove` binary (default: next to this one, i.e. the same build profile).
    #[arg(long)]
    cove: Option<PathBuf>,
    /// Write the Markdown report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Sandboxes created for the create-latency figure.
    #[arg(long, default_value_t = 200)]
    sandboxes: usize,
    /// Repetitions of each small operation.
    #[arg(long, default_value_t = 500)]
    iterations: usize,
    /// Size of the transfer test, in MiB.
    #[arg(long, default_value_t = 256)]
    transfer_mib: usize,
    /// Idle sandboxes kept for the memory figure.
    #[arg(long, default_value_t = 20)]
    idle: usize,
    /// The most live sandboxes the density group tries to hold.
    #[arg(long, default_value_t = 1000)]
    max_live: usize,
    /// Clients (each with its own sandbox) of the concurrency group.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Create+run+kill cycles timed through each SDK in the python group.
    #[arg(long, default_value_t = 50)]
    sdk_cycles: usize,
    /// A Python with the official `e2b` package (tests/compat/requirements.txt).
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// Where the official JavaScript SDK is installed (`npm ci` there puts it in node_modules).
    #[arg(long, default_value = "tests/compat/js")]
    js_dir: PathBuf,
    /// Run one group only (the report then holds only its figures).
    #[arg(long, value_parser = measure::GROUPS)]
    only: Option<String>,
    /// Record the whole machine with `perf` while Cove's side of the create, burst, round
    /// trip and large transfer rows runs, and draw each as a flame graph `DIR/<row>.svg`
    /// (the figures of such a run are slowed by the sampling).
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cove = match args.cove {
        Some(path) => path,
        None => std::env::current_exe()
            .context("cannot find this binary")?
            .with_file_name("cove"),
    };
    anyhow::ensure!(
        cove.exists(),
        "no cove binary at {} (build it, or pass --cove)",
        cove.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("cove-bench")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let settings = measure::Settings {
        cove,
        sandboxes: args.sandboxes,
        iterations: args.iterations,
        transfer_bytes: args.transfer_mib << 20,
        idle: args.idle,
        max_live: args.max_live,
        clients: args.clients,
        sdk_cycles: args.sdk_cycles,
        python: args.python,
        js_dir: args.js_dir,
        only: args.only,
        profiler: args
            .profile
            .as_deref()
            .map(profile::Profiler::new)
            .transpose()?,
    };
    // What a build just before wrote (a few hundred MB of binaries) is still being written
    // back for half a minute: out first, so that it does not run beside the first groups
    // (the round trip measured 1.31 ms that way, 1.03 ms on a machine at rest).
    let synced = std::process::Command::new("sync").status();
    anyhow::ensure!(
        synced.as_ref().is_ok_and(|s| s.success()),
        "cannot run sync: {synced:?}"
    );
    let started = std::time::Instant::now();
    // Stopped by a signal, the run is dropped where it stands: its servers and test hosts
    // end through their drops, as at the end of a group, instead of outliving the bench.
    let results = runtime.block_on(async {
        tokio::select! {
            results = measure::all(&settings) => results,
            signal = interrupted() => Err(anyhow::anyhow!("stopped by {signal}: the run was dropped, its servers ended")),
        }
    })?;
    let markdown = report::markdown(&settings, &results, started.elapsed());
    if let Some(profiler) = settings.profiler {
        for drawn in profiler.finish()? {
            eprintln!("drew {}", drawn.display());
        }
    }
    println!("{}", report::table(&results));
    if let Some(out) = args.out {
        std::fs::write(&out, markdown)
            .with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    anyhow::ensure!(
        results.failed.is_empty(),
        "{} group(s) failed: {}",
        results.failed.len(),
        results.failed.join("; ")
    );
    Ok(())
}

/// Which of SIGINT and SIGTERM came first.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the signals keep their default: the bench ends at once.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
