//! `cove`: one binary for the server, the in-sandbox agent and the client commands.
#![forbid(unsafe_code)]

mod commands;
mod logging;

use clap::{CommandFactory, Parser, Subcommand};

/// Cove: self-hosted sandboxes for untrusted code, speaking E2B's API.
#[derive(Debug, Parser)]
#[command(name = "cove", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written: `text`, or `json` (one object a line, with every field)
    #[arg(long, global = true, env = "COVE_LOG_FORMAT", value_enum, ignore_case = true, default_value_t = logging::Format::Text)]
    log_format: logging::Format,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: E2B-compatible API, sandbox proxy and sandboxes.
    Serve(Box<commands::serve::Args>),
    /// Manage API keys.
    Keys(commands::keys::Args),
    /// Limit what each team's sandboxes may use together.
    Teams(commands::teams::Args),
    /// The nodes of a cluster: list, drain, undrain.
    Nodes(commands::nodes::Args),
    /// Create, list, inspect, extend and kill sandboxes.
    #[command(alias = "sbx")]
    Sandbox(commands::sandbox::Args),
    /// Run a program in a sandbox, its output streamed live and its exit code returned.
    Exec(commands::exec::Args),
    /// Open an interactive shell in a sandbox.
    Shell(commands::shell::Args),
    /// Copy a file into or out of a sandbox.
    Cp(commands::cp::Args),
    /// Print a sandbox's log.
    Logs(commands::logs::Args),
    /// Templates: list, build (a Dockerfile), import, tags, rm, usage, gc.
    Template(commands::template::Args),
    /// Volumes that outlive sandboxes: create, ls, rm, cp.
    Volume(commands::volume::Args),
    /// Check this host for what sandboxes need, and say how to fix what is missing.
    Doctor(commands::doctor::Args),
    /// Print a shell completion script.
    Completions(commands::completions::Args),
    /// Run the in-sandbox agent (started by `cove serve` inside each sandbox).
    #[command(hide = true)]
    Agent(commands::agent::Args),
    /// Build a sandbox (run by `cove serve`, never by hand).
    #[command(name = "__sandbox-init", hide = true)]
    SandboxInit(commands::sandbox_init::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A sandbox's PID 1 logs to a file on the host that must stay bounded; every stage of a
    // sandbox writes to that log.
    logging::init(
        matches!(&cli.command, Command::SandboxInit(args) if args.is_pid1()),
        matches!(&cli.command, Command::SandboxInit(_)),
        cli.log_format,
    );
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(*args),
        Command::Keys(args) => commands::keys::run(args),
        Command::Teams(args) => commands::teams::run(args),
        Command::Nodes(args) => commands::nodes::run(args),
        Command::Sandbox(args) => commands::sandbox::run(args),
        Command::Exec(args) => commands::exec::run(args),
        Command::Shell(args) => commands::shell::run(args),
        Command::Cp(args) => commands::cp::run(args),
        Command::Logs(args) => commands::logs::run(args),
        Command::Template(args) => commands::template::run(args),
        Command::Volume(args) => commands::volume::run(args),
        Command::Doctor(args) => commands::doctor::run(args),
        Command::Completions(args) => commands::completions::run(args, Cli::command()),
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
