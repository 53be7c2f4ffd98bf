//! The tracing subscriber: `COVE_LOG` filter (default `info`), `--log-format json` (or
//! `COVE_LOG_FORMAT=json`) for structured output, one JSON object a line. The stages that build a sandbox always write JSON lines: their stderr
//! is the sandbox's log, which `cove serve` hands to clients entry by entry.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the subscriber. `capped`: stderr is a sandbox's log file, kept under a size
/// (see [`cove_init::log`]). `sandbox_log`: stderr is a sandbox's log (JSON lines whatever
/// `COVE_LOG_FORMAT` says).
pub fn init(capped: bool, sandbox_log: bool, format: Format) {
    if capped {
        cove_init::log::install();
        return;
    }
    let filter = EnvFilter::try_from_env("COVE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = sandbox_log || format == Format::Json;
    // Colours only on a terminal: a sandbox's log file is parsed by `cove serve`.
    let ansi = std::io::stderr().is_terminal();
    let builder = fmt().with_env_filter(filter).with_ansi(ansi);
    if json {
        builder.json().with_writer(std::io::stderr).init();
    } else {
        builder.with_writer(std::io::stderr).init();
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people: one line per event, fields as `key=value`.
    Text,
    /// For log collectors: one JSON object per line with `timestamp`, `level`, `fields`
    /// (the message and every field: `sandbox_id`, `team`, …) and `target`.
    Json,
}
