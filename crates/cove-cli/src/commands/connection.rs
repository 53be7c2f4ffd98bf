//! How client commands reach a server: flags, else the variables the E2B SDKs read
//! (`E2B_API_URL`, `E2B_SANDBOX_URL`, `E2B_API_KEY`) or their `COVE_*` twins.

use std::{future::Future, process::ExitCode, time::Duration};

use anyhow::Context;
use cove_sdk::{AgentClient, ConnectionConfig, Sandbox};

#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// Server URL [default: $COVE_API_URL, $E2B_API_URL, http://127.0.0.1:3000].
    #[arg(long, global = true)]
    api_url: Option<String>,
    /// URL for sandbox traffic [default: $COVE_SANDBOX_URL, $E2B_SANDBOX_URL, the server URL].
    #[arg(long, global = true)]
    sandbox_url: Option<String>,
    /// API key [default: $COVE_API_KEY, $E2B_API_KEY].
    #[arg(long, global = true, hide_env_values = true)]
    api_key: Option<String>,
}

impl Connection {
    pub fn config(&self) -> anyhow::Result<ConnectionConfig> {
        let flags = [
            ("COVE_API_URL", &self.api_url),
            ("COVE_SANDBOX_URL", &self.sandbox_url),
            ("COVE_API_KEY", &self.api_key),
        ];
        ConnectionConfig::from_vars(|name| {
            flags
                .iter()
                .find(|(flag, _)| *flag == name)
                .and_then(|(_, value)| (*value).clone())
                .or_else(|| std::env::var(name).ok())
        })
        .context("no server to talk to: pass --api-key or set COVE_API_KEY / E2B_API_KEY")
    }
}

/// The agent of sandbox `id`, acting as `user` (or the sandbox's default user).
pub async fn agent_of(
    config: &ConnectionConfig,
    id: &str,
    user: Option<&str>,
) -> anyhow::Result<AgentClient> {
    let sandbox = Sandbox::get(config, id)
        .await
        .with_context(|| format!("cannot reach sandbox {id}"))?;
    Ok(match user {
        Some(user) => sandbox.agent().clone().as_user(user),
        None => sandbox.agent().clone(),
    })
}

/// Runs a client command on a runtime of its own. A terminal reader may still be blocked on
/// stdin when the command ends, so the runtime is not waited for.
pub fn block_on(
    command: impl Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(command);
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Parses `KEY=VALUE`.
pub fn key_value(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {raw:?}"))
}

/// Parses a duration: seconds (`300`) or with a unit (`5m`, `1h 30m`).
pub fn duration(raw: &str) -> Result<Duration, String> {
    match raw.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(raw).map_err(|err| err.to_string()),
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("cannot encode the answer as JSON")?
    );
    Ok(())
}
