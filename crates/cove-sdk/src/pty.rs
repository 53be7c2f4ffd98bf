//! Interactive terminals in a sandbox: a login shell on a pseudo-terminal, driven by keystrokes
//! and resized like a window.

use std::collections::HashMap;

use bytes::Bytes;

use crate::{
    agent::AgentClient,
    commands::{Command, CommandHandle},
    error::Result,
};

/// The shell and terminal to start.
#[derive(Clone, Debug)]
pub struct PtyOptions {
    pub cols: u32,
    pub rows: u32,
    /// Working directory (default: the user's home).
    pub cwd: Option<String>,
    /// More environment variables (`TERM` is `xterm-256color` unless set here).
    pub envs: HashMap<String, String>,
}

impl Default for PtyOptions {
    fn default() -> Self {
        Self {
            cols: 80,
            rows: 24,
            cwd: None,
            envs: HashMap::new(),
        }
    }
}

/// The terminals API of one sandbox.
///
/// ```
/// # use cove_sdk::{CreateOptions, Output, PtyOptions, Sandbox};
/// # use futures::StreamExt;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> cove_sdk::Result<()> {
/// # let server = cove_test_util::TestServer::for_doctest().await;
/// # let sandbox = Sandbox::create(&server.config(), CreateOptions::default()).await?;
/// let mut terminal = sandbox.pty().create(PtyOptions::default()).await?;
/// terminal.resize(100, 30).await?;
/// terminal.send_pty("stty size; exit\n").await?;
/// let mut screen = Vec::new();
/// while let Some(output) = terminal.next().await {
///     if let Output::Pty(bytes) = output? {
///         screen.extend_from_slice(&bytes);
///     }
/// }
/// let screen = String::from_utf8_lossy(&screen);
/// assert!(screen.contains("30 100"), "the terminal showed: {screen:?}");
/// # sandbox.kill().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Pty<'a> {
    agent: &'a AgentClient,
}

impl<'a> Pty<'a> {
    pub(crate) fn new(agent: &'a AgentClient) -> Self {
        Self { agent }
    }

    /// Starts an interactive login shell (`bash -i -l`) on a new terminal.
    pub async fn create(&self, options: PtyOptions) -> Result<CommandHandle> {
        let mut command = Command::new("/bin/bash")
            .args(["-i", "-l"])
            .pty(options.cols, options.rows)
            .env("TERM", "xterm-256color")
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8");
        for (key, value) in options.envs {
            command = command.env(key, value);
        }
        if let Some(cwd) = options.cwd {
            command = command.cwd(cwd);
        }
        self.agent.commands().spawn(command).await
    }

    /// Re-attaches to a terminal's output by its shell's pid.
    pub async fn connect(&self, pid: u32) -> Result<CommandHandle> {
        self.agent.commands().connect(pid).await
    }

    /// Types into the terminal of `pid`.
    pub async fn send_input(&self, pid: u32, data: impl Into<Bytes>) -> Result<()> {
        self.agent.commands().send_pty(pid, data).await
    }

    /// Resizes the terminal of `pid`.
    pub async fn resize(&self, pid: u32, cols: u32, rows: u32) -> Result<()> {
        self.agent.commands().resize(pid, cols, rows).await
    }

    /// Kills the terminal's shell; `false` when it was already gone.
    pub async fn kill(&self, pid: u32) -> Result<bool> {
        self.agent.commands().kill(pid).await
    }
}
