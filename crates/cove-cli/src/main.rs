//! `cove`: one binary for the server, the in-sandbox agent and the client commands.
#![forbid(unsafe_code)]

mod commands;
mod logging;

use clap::{Parser, Subcommand};

/// Cove: self-hosted sandboxes for untrusted code, speaking E2B's API.
#[derive(Debug, Parser)]
#[command(name = "cove", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: E2B-compatible API, sandbox proxy and sandboxes.
    Serve(commands::serve::Args),
    /// Manage API keys.
    Keys(commands::keys::Args),
    /// Run the in-sandbox agent (started by `cove serve` inside each sandbox).
    #[command(hide = true)]
    Agent(commands::agent::Args),
    /// Build a sandbox (run by `cove serve`, never by hand).
    #[command(name = "__sandbox-init", hide = true)]
    SandboxInit(commands::sandbox_init::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init();
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(args),
        Command::Keys(args) => commands::keys::run(args),
        Command::Agent(args) => commands::agent::run(args),
        Command::SandboxInit(args) => commands::sandbox_init::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("cove: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
