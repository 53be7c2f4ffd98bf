//! A real `cove agent`, running as PID 1 of its own PID and mount namespaces with test
//! accounts (see `tests/support/agent-in-namespace.sh`).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use cove_sdk::AgentClient;

use crate::{free_port, repo_root, wait_until};

/// How to start the agent.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Also listen on a free TCP port.
    pub tcp: bool,
    /// Require this access token.
    pub access_token: Option<String>,
}

/// A running agent; killed (with everything it started) when dropped.
pub struct TestAgent {
    child: Child,
    dir: tempfile::TempDir,
    /// The agent's Unix socket.
    pub socket: PathBuf,
    /// The agent's TCP port, when it has one.
    pub port: Option<u16>,
}

impl TestAgent {
    /// Starts an agent from the `cove` binary at `cove`, listening on a Unix socket.
    pub async fn start(cove: &Path) -> Self {
        Self::start_with(cove, AgentOptions::default()).await
    }

    pub async fn start_with(cove: &Path, options: AgentOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cove-agent-test-")
            .tempdir()
            .expect("a temporary directory");
        let socket = dir.path().join("agent.sock");
        let mut command = Command::new(repo_root().join("tests/support/agent-in-namespace.sh"));
        command
            .arg(cove)
            .arg(dir.path())
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .env("COVE_LOG", "warn")
            .stdin(Stdio::null());
        let port = options.tcp.then(free_port);
        if let Some(port) = port {
            command.arg("--listen").arg(format!("127.0.0.1:{port}"));
        }
        if let Some(token) = &options.access_token {
            command.arg("--access-token").arg(token);
        }
        let child = command.spawn().expect("the agent starts");
        let agent = Self {
            child,
            dir,
            socket,
            port,
        };
        let probe = agent.client();
        wait_until(
            "the agent to answer /health",
            Duration::from_secs(60),
            || {
                let probe = probe.clone();
                async move { probe.health().await.ok() }
            },
        )
        .await;
        agent
    }

    /// A client over the Unix socket (with the access token, when one is required).
    pub fn client(&self) -> AgentClient {
        AgentClient::unix(&self.socket).expect("a client for a Unix socket")
    }

    /// A client over TCP.
    pub fn tcp_client(&self) -> AgentClient {
        let port = self.port.expect("the agent was started with tcp: true");
        AgentClient::http(&format!("http://127.0.0.1:{port}")).expect("a client for a TCP address")
    }

    /// The agent's working directory on the host (fixtures, socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        // SIGKILL to unshare (it ignores SIGTERM); its death kills the agent, PID 1 of the
        // namespace, and with it every process the test started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
