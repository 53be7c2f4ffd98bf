//! `cove shell SANDBOX`: an interactive login shell in a sandbox, on this terminal (raw mode,
//! resized with the window; the shell's end — `exit`, Ctrl-D — ends the session).

use std::{
    io::{IsTerminal, Stdin},
    process::ExitCode,
};

use anyhow::Context;
use cove_sdk::{AgentClient, PtyOptions};
use futures::StreamExt;
use rustix::termios::{self, OptionalActions, Termios};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    signal::unix::{SignalKind, signal},
};

use super::{
    connection::{Connection, agent_of, block_on},
    exec::exit_code,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: Connection,
    /// Log in as this user (`root`, `user`, …) instead of the sandbox's default.
    #[arg(long, short)]
    user: Option<String>,
    /// Working directory inside the sandbox.
    #[arg(long, short = 'w')]
    cwd: Option<String>,
    /// The sandbox.
    sandbox: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!(
            "cove shell needs a terminal on stdin; `cove exec {} -- PROGRAM` runs without one",
            args.sandbox
        );
    }
    block_on(async move {
        let config = args.connection.config()?;
        let agent = agent_of(&config, &args.sandbox, args.user.as_deref()).await?;
        let (cols, rows) = window_size(&stdin);
        let mut terminal = agent
            .pty()
            .create(PtyOptions {
                cols,
                rows,
                cwd: args.cwd,
                ..PtyOptions::default()
            })
            .await
            .context("cannot start a shell")?;
        let pid = terminal.pid();

        let raw = RawMode::enter(&stdin)?;
        let keys = tokio::spawn(forward_keys(agent.clone(), pid));
        let mut window_changes =
            signal(SignalKind::window_change()).context("cannot watch the window's size")?;
        let resizer = tokio::spawn({
            let agent = agent.clone();
            async move {
                while window_changes.recv().await.is_some() {
                    let (cols, rows) = window_size(&std::io::stdin());
                    if let Err(err) = agent.pty().resize(pid, cols, rows).await {
                        tracing::debug!(?err, pid, "cannot resize the terminal");
                    }
                }
            }
        });

        let mut stdout = tokio::io::stdout();
        let mut result = Ok(());
        while let Some(output) = terminal.next().await {
            match output {
                Ok(output) => {
                    let (cove_sdk::Output::Pty(bytes)
                    | cove_sdk::Output::Stdout(bytes)
                    | cove_sdk::Output::Stderr(bytes)) = output;
                    stdout.write_all(&bytes).await?;
                    stdout.flush().await?;
                }
                Err(err) => {
                    result = Err(err).context("lost the terminal");
                    break;
                }
            }
        }
        keys.abort();
        resizer.abort();
        drop(raw);
        result?;
        let code = terminal.exit_code().unwrap_or(-1);
        Ok(exit_code(code, terminal.exit_error()))
    })
}

/// Sends every keystroke as it comes, Ctrl-C and Ctrl-D included: they mean something to the
/// shell, not to us.
async fn forward_keys(agent: AgentClient, pid: u32) {
    let mut stdin = tokio::io::stdin();
    let mut buffer = vec![0u8; 4096];
    loop {
        match stdin.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Err(err) = agent.pty().send_input(pid, buffer[..n].to_vec()).await {
                    tracing::debug!(?err, pid, "cannot type into the terminal");
                    return;
                }
            }
        }
    }
}

/// The terminal's size in columns and rows (80×24 when it does not say).
fn window_size(tty: &Stdin) -> (u32, u32) {
    match termios::tcgetwinsize(tty) {
        Ok(size) if size.ws_col > 0 && size.ws_row > 0 => {
            (u32::from(size.ws_col), u32::from(size.ws_row))
        }
        _ => (80, 24),
    }
}

/// The terminal in raw mode (keys unprocessed, no local echo) until dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter(tty: &Stdin) -> anyhow::Result<Self> {
        let saved = termios::tcgetattr(tty).context("cannot read the terminal's settings")?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(tty, OptionalActions::Now, &raw)
            .context("cannot put the terminal in raw mode")?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Err(err) = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved) {
            tracing::warn!(?err, "cannot restore the terminal's settings");
        }
    }
}
