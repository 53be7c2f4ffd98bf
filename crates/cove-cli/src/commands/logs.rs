//! `cove logs SANDBOX`: the sandbox's own log (its setup and its agent).

use std::process::ExitCode;

use anyhow::Context;
use cove_sdk::Sandbox;

use super::connection::{Connection, block_on, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: Connection,
    /// The sandbox.
    sandbox: String,
    /// Print JSON (E2B's `logs` and `logEntries`).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let config = args.connection.config()?;
        let logs = Sandbox::logs_by_id(&config, &args.sandbox)
            .await
            .with_context(|| format!("cannot get the log of sandbox {}", args.sandbox))?;
        if args.json {
            print_json(&logs)?;
        } else {
            for entry in &logs.log_entries {
                let fields: String = entry
                    .fields
                    .iter()
                    .map(|(k, v)| format!(" {k}={v}"))
                    .collect();
                println!(
                    "{} {:<5} {}{fields}",
                    entry.timestamp,
                    entry.level.to_uppercase(),
                    entry.message
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
