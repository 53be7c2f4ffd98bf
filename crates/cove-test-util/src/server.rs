//! A real `cove serve` on a free port with its own state directory.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use cove_sdk::ConnectionConfig;

use crate::{free_port, wait_until};

/// A running server; on drop it is stopped with SIGTERM and `--kill-on-exit`, so its
/// sandboxes go with it, and its state directory is removed.
pub struct TestServer {
    child: Option<Child>,
    kill_on_exit: bool,
    extra_args: Vec<String>,
    cove: PathBuf,
    state: tempfile::TempDir,
    pub addr: SocketAddr,
    pub api_key: String,
}

impl TestServer {
    /// Starts `cove serve` from the binary at `cove`.
    pub async fn start(cove: &Path) -> Self {
        Self::start_with(cove, true).await
    }

    /// Starts `cove serve`; without `kill_on_exit` its sandboxes outlive a SIGTERM (the
    /// harness still kills them all when it is dropped).
    pub async fn start_with(cove: &Path, kill_on_exit: bool) -> Self {
        Self::launch(cove, kill_on_exit, &[]).await
    }

    /// Starts `cove serve` with more arguments (`--sandbox-disk-mb 64`, …).
    pub async fn start_with_args(cove: &Path, args: &[&str]) -> Self {
        Self::launch(cove, true, args).await
    }

    /// Starts `cove serve` with more arguments, `--kill-on-exit` only if asked.
    pub async fn launch(cove: &Path, kill_on_exit: bool, args: &[&str]) -> Self {
        let state = tempfile::Builder::new()
            .prefix("cove-server-test-")
            .tempdir()
            .expect("a temporary state directory");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let api_key = format!("cove_test_{}", addr.port());
        let mut server = Self {
            child: None,
            kill_on_exit,
            extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
            cove: cove.to_owned(),
            state,
            addr,
            api_key,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        self.spawn_process();
        let url = format!("http://{}/health", self.addr);
        let http = reqwest::Client::new();
        wait_until(
            "cove serve to answer /health",
            Duration::from_secs(30),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    http.get(&url)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                }
            },
        )
        .await;
    }

    fn spawn_process(&mut self) {
        let mut command = Command::new(&self.cove);
        command
            .args(["serve", "--listen"])
            .arg(self.addr.to_string());
        if self.kill_on_exit {
            command.arg("--kill-on-exit");
        }
        command.args(&self.extra_args);
        let child = command
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("--api-key")
            .arg(&self.api_key)
            .env(
                "COVE_LOG",
                std::env::var("COVE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("cove serve starts");
        self.child = Some(child);
    }

    /// Kills the server with SIGKILL (its sandboxes keep running) and starts it again on
    /// the same port and state directory.
    pub async fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn().await;
    }

    /// Stops the server with SIGTERM and starts it again on the same port and state.
    pub async fn terminate_and_restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// A configuration for the SDK pointing at this server.
    pub fn config(&self) -> ConnectionConfig {
        ConnectionConfig::new(&self.url(), &self.api_key).expect("a valid configuration")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Stops the server the way an operator would (SIGTERM), waiting for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if !self.kill_on_exit && self.child.is_some() {
            // Leave nothing behind: one last run that kills every sandbox on its way out. It
            // listens only once it has re-adopted them.
            self.stop();
            self.kill_on_exit = true;
            self.spawn_process();
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(self.addr).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.stop();
    }
}
