//! `cove doctor`: checks this host for what sandboxes need and says how to fix what is
//! missing.

use std::process::ExitCode;

use cove_runtime::requirements::{self, Status};

use super::serve::StateDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    state: StateDir,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let checks = requirements::check(&args.state.resolve()?);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for check in &checks {
            let mark = match check.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            println!("{mark}  {:<16} {}", check.name, check.found);
            if let Some(fix) = &check.fix {
                println!("      {:<16} fix: {fix}", "");
            }
        }
    }
    // Warnings leave sandboxes running (without some feature); failures do not.
    Ok(if checks.iter().any(|c| c.status == Status::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
