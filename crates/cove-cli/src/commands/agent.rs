//! `cove agent`: the daemon inside a sandbox.

use std::path::PathBuf;

use cove_agent::{AgentConfig, ListenAddr};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to listen: `unix:/path/to.sock` or `host:port` (repeatable).
    #[arg(long = "listen", required = true, value_name = "ADDR")]
    listen: Vec<ListenAddr>,
    /// Access token every request must carry in `X-Access-Token`.
    #[arg(long, env = "COVE_ACCESS_TOKEN", hide_env_values = true)]
    access_token: Option<String>,
    /// User that calls run as when they name none.
    #[arg(long, default_value = "user")]
    default_user: String,
    /// Working directory of processes that name none (default: the user's home).
    #[arg(long)]
    default_workdir: Option<PathBuf>,
    /// Serve the code interpreter (Jupyter kernels, E2B's port 49999) on this address.
    #[arg(long, value_name = "HOST:PORT")]
    code_interpreter: Option<std::net::SocketAddr>,
    /// An environment variable every process gets (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
}

fn parse_env(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{raw:?} is not KEY=VALUE")),
    }
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let config = AgentConfig {
        listen: args.listen,
        access_token: args.access_token.filter(|t| !t.is_empty()),
        default_user: args.default_user,
        default_workdir: args.default_workdir,
        env: args.env.into_iter().collect(),
        code_interpreter: args.code_interpreter,
        ..AgentConfig::default()
    };
    cove_init::serve_agent(config, Vec::new())?;
    Ok(std::process::ExitCode::SUCCESS)
}
