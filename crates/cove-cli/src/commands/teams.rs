//! `cove teams`: what each team's sandboxes may use together (works whether or not the
//! server runs; a running server applies a change to its next create).

use anyhow::Context;
use cove_server::store::TeamLimits;

use super::serve::StateDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    state: StateDir,
    #[command(subcommand)]
    command: TeamsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TeamsCommand {
    /// List teams (those with keys or limits) and their limits.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set a team's limits; a limit left out is no limit. Creates past a limit are answered
    /// 429 with Retry-After.
    Set {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        team: String,
        /// Sandboxes running at once.
        #[arg(long)]
        max_sandboxes: Option<u32>,
        /// Memory of all its running sandboxes together, in MiB.
        #[arg(long)]
        max_memory_mb: Option<u64>,
        /// CPUs of all its running sandboxes together.
        #[arg(long)]
        max_cpus: Option<u32>,
    },
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let store = args.state.open_store()?;
    match args.command {
        TeamsCommand::List { json } => {
            let teams = store.teams().context("cannot list teams")?;
            if json {
                let teams: Vec<serde_json::Value> = teams
                    .iter()
                    .map(|(name, limits)| {
                        serde_json::json!({
                            "team": name,
                            "maxSandboxes": limits.max_sandboxes,
                            "maxMemoryMB": limits.max_memory_mb,
                            "maxCpus": limits.max_cpus,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&teams).context("cannot encode teams")?
                );
            } else {
                println!(
                    "{:<20} {:>13} {:>14} {:>9}",
                    "TEAM", "MAX SANDBOXES", "MAX MEMORY MB", "MAX CPUS"
                );
                let show = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
                for (name, limits) in teams {
                    println!(
                        "{:<20} {:>13} {:>14} {:>9}",
                        name,
                        show(limits.max_sandboxes.map(u64::from)),
                        show(limits.max_memory_mb),
                        show(limits.max_cpus.map(u64::from)),
                    );
                }
            }
        }
        TeamsCommand::Set {
            team,
            max_sandboxes,
            max_memory_mb,
            max_cpus,
        } => {
            let limits = TeamLimits {
                max_sandboxes,
                max_memory_mb,
                max_cpus,
            };
            store
                .set_team_limits(&team, limits)
                .context("cannot set the team's limits")?;
            eprintln!("limits of team {team} set");
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
