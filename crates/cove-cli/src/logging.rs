//! The tracing subscriber: `COVE_LOG` filter (default `info`), `COVE_LOG_FORMAT=json` for
//! structured output.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

pub fn init() {
    let filter = EnvFilter::try_from_env("COVE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("COVE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // Colours only on a terminal: a sandbox's log file is parsed by `cove serve`.
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
