//! `cove exec SANDBOX -- PROGRAM ARGS…`: runs a program in a sandbox with its output streamed
//! live; the program's exit code becomes ours.

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use anyhow::Context;
use cove_sdk::{Command, Output};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connection::{Connection, agent_of, block_on, duration, key_value};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: Connection,
    /// Working directory inside the sandbox.
    #[arg(long, short = 'w')]
    cwd: Option<String>,
    /// Environment variable `KEY=VALUE` (repeatable).
    #[arg(long = "env", short, value_parser = key_value)]
    envs: Vec<(String, String)>,
    /// Run as this user (`root`, `user`, …) instead of the sandbox's default.
    #[arg(long, short)]
    user: Option<String>,
    /// Kill the program after this long (seconds or `10m`).
    #[arg(long, value_parser = duration)]
    timeout: Option<Duration>,
    /// The sandbox.
    sandbox: String,
    /// The program and its arguments (run directly; use `bash -c '…'` for a shell line).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let config = args.connection.config()?;
        let agent = agent_of(&config, &args.sandbox, args.user.as_deref()).await?;
        let (program, rest) = args.command.split_first().context("no program to run")?;
        // Piped input goes to the program; a terminal's does not (this is no terminal
        // session: `cove shell` is).
        let forward_stdin = !std::io::stdin().is_terminal();
        let mut command = Command::new(program)
            .args(rest.iter().cloned())
            .stdin(forward_stdin);
        for (key, value) in args.envs {
            command = command.env(key, value);
        }
        if let Some(cwd) = args.cwd {
            command = command.cwd(cwd);
        }
        if let Some(timeout) = args.timeout {
            command = command.timeout(timeout);
        }
        let mut handle = agent
            .commands()
            .spawn(command)
            .await
            .with_context(|| format!("cannot start {program}"))?;

        let pid = handle.pid();
        let input = forward_stdin.then(|| {
            let agent = agent.clone();
            tokio::spawn(async move {
                if let Err(err) = pump_stdin(&agent, pid).await {
                    tracing::debug!(?err, pid, "stopped forwarding stdin");
                }
            })
        });

        let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
        while let Some(output) = handle.next().await {
            match output.context("lost the program's output")? {
                Output::Stdout(bytes) | Output::Pty(bytes) => {
                    stdout.write_all(&bytes).await?;
                    stdout.flush().await?;
                }
                Output::Stderr(bytes) => {
                    stderr.write_all(&bytes).await?;
                    stderr.flush().await?;
                }
            }
        }
        if let Some(input) = input {
            input.abort();
        }
        let code = handle
            .exit_code()
            .context("the program's end was not reported")?;
        if let Some(error) = handle.exit_error().filter(|_| code < 0) {
            eprintln!("cove: {program}: {error}");
        }
        Ok(exit_code(code, handle.exit_error()))
    })
}

/// Copies our stdin to the process's, closing it at our end of input.
async fn pump_stdin(agent: &cove_sdk::AgentClient, pid: u32) -> anyhow::Result<()> {
    let mut stdin = tokio::io::stdin();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = stdin.read(&mut buffer).await?;
        if n == 0 {
            agent.commands().close_stdin(pid).await?;
            return Ok(());
        }
        agent
            .commands()
            .send_stdin(pid, buffer[..n].to_vec())
            .await?;
    }
}

/// The exit code a shell would report: the program's, or 128 + the signal that killed it.
pub fn exit_code(code: i32, error: Option<&str>) -> ExitCode {
    if let Ok(code) = u8::try_from(code) {
        return ExitCode::from(code);
    }
    // The agent names the signal as Go does (`signal: killed`).
    let signal = match error.and_then(|e| e.strip_prefix("signal: ")) {
        Some("hangup") => 1,
        Some("interrupt") => 2,
        Some("quit") => 3,
        Some("aborted") => 6,
        Some("killed") => 9,
        Some("segmentation fault") => 11,
        Some("broken pipe") => 13,
        Some("terminated") => 15,
        _ => return ExitCode::FAILURE,
    };
    ExitCode::from(128 + signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_as_a_shell_reports_them() {
        assert_eq!(exit_code(0, None), ExitCode::SUCCESS);
        assert_eq!(exit_code(3, Some("exit status 3")), ExitCode::from(3));
        assert_eq!(exit_code(-1, Some("signal: killed")), ExitCode::from(137));
        assert_eq!(
            exit_code(-1, Some("signal: terminated")),
            ExitCode::from(143)
        );
        assert_eq!(
            exit_code(-1, Some("the process's exit status was lost")),
            ExitCode::FAILURE
        );
    }
}
