//! A real `cove serve` on a free port with its own state directory.
//!
//! The server picks its port itself (`--listen 127.0.0.1:0`) and the harness reads it from
//! the line the server prints once it listens: a port chosen by the test and handed over
//! could be taken by another process before the server binds it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use cove_sdk::ConnectionConfig;

use crate::{repo_root, wait_until};

/// A running server; on drop it is stopped with SIGTERM and `--kill-on-exit`, so its
/// sandboxes go with it, and its state directory is removed.
pub struct TestServer {
    child: Option<Child>,
    kill_on_exit: bool,
    /// It was killed with SIGKILL ([`TestServer::crash`]) and not started again: its
    /// sandboxes still run.
    crashed: bool,
    extra_args: Vec<String>,
    /// What the sandboxes' agents log (`COVE_AGENT_LOG`), when not the default.
    agent_log: Option<String>,
    /// The file the server sees as `/etc/resolv.conf`, when not the host's: a copy of the
    /// test's, which lives as long as the server (whose last run may come after the test
    /// dropped its own).
    resolv_conf: Option<(tempfile::TempDir, PathBuf)>,
    cove: PathBuf,
    state: tempfile::TempDir,
    /// What the running server prints about its listeners.
    printed: Option<mpsc::Receiver<Printed>>,
    /// Where `--listen` is: chosen by the server at its first start (port 0 before), then
    /// given on every start again.
    pub addr: SocketAddr,
    /// Where `--metrics-listen` is, when given (`127.0.0.1:0` lets the server choose).
    pub metrics_addr: Option<SocketAddr>,
    /// Where the node of `--role node,api,edge` is (`--node-listen`).
    pub node_addr: Option<SocketAddr>,
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

    /// A server for documentation examples, from the `cove` binary the workspace built (see
    /// [`built_cove`]), without a warm pool.
    pub async fn for_doctest() -> Self {
        Self::launch(&built_cove(), true, &["--warm-pool", "0"]).await
    }

    /// Starts `cove serve` with more arguments (`--sandbox-disk-mb 64`, …).
    pub async fn start_with_args(cove: &Path, args: &[&str]) -> Self {
        Self::launch(cove, true, args).await
    }

    /// Starts `cove serve` with more arguments, `--kill-on-exit` only if asked.
    pub async fn launch(cove: &Path, kill_on_exit: bool, args: &[&str]) -> Self {
        Self::launch_full(cove, kill_on_exit, args, None, &std::env::temp_dir()).await
    }

    /// Starts `cove serve` as [`TestServer::launch`] does, in a mount namespace of its own
    /// where `resolv_conf` is `/etc/resolv.conf`: the host's name servers are then the test's
    /// own (the server, its sandboxes' network helpers and the `base` template it builds all
    /// read that file), so no DNS query of its sandboxes leaves the machine. See
    /// [`crate::name_server::NameServer::resolv_conf`].
    pub async fn launch_with_resolv_conf(
        cove: &Path,
        kill_on_exit: bool,
        args: &[&str],
        resolv_conf: &Path,
    ) -> Self {
        let mut server = Self::new(cove, kill_on_exit, args, None, &std::env::temp_dir());
        let dir = tempfile::Builder::new()
            .prefix("cove-server-test-resolv-")
            .tempdir()
            .expect("a temporary directory");
        let copy = dir.path().join("resolv.conf");
        std::fs::copy(resolv_conf, &copy).expect("copy the test's resolv.conf");
        server.resolv_conf = Some((dir, copy));
        server.spawn().await;
        server
    }

    /// Starts `cove serve` (with `--kill-on-exit`) whose sandboxes' agents log as `filter`
    /// says (`COVE_AGENT_LOG`).
    pub async fn launch_with_agent_log(cove: &Path, args: &[&str], filter: &str) -> Self {
        Self::launch_full(cove, true, args, Some(filter), &std::env::temp_dir()).await
    }

    /// Starts `cove serve` (with `--kill-on-exit`) whose state directory lies in `parent`
    /// (a filesystem of the test's own, say).
    pub async fn launch_in(cove: &Path, parent: &Path, args: &[&str]) -> Self {
        Self::launch_full(cove, true, args, None, parent).await
    }

    async fn launch_full(
        cove: &Path,
        kill_on_exit: bool,
        args: &[&str],
        agent_log: Option<&str>,
        parent: &Path,
    ) -> Self {
        let mut server = Self::new(cove, kill_on_exit, args, agent_log, parent);
        server.spawn().await;
        server
    }

    /// The server, not started yet.
    fn new(
        cove: &Path,
        kill_on_exit: bool,
        args: &[&str],
        agent_log: Option<&str>,
        parent: &Path,
    ) -> Self {
        let state = tempfile::Builder::new()
            .prefix("cove-server-test-")
            .tempdir_in(parent)
            .expect("a temporary state directory");
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let suffix = state.path().file_name().map_or_else(
            || "key".into(),
            |name| name.to_string_lossy().replace("cove-server-test-", ""),
        );
        let api_key = format!("cove_test_{suffix}");
        Self {
            child: None,
            kill_on_exit,
            crashed: false,
            extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
            agent_log: agent_log.map(str::to_owned),
            resolv_conf: None,
            cove: cove.to_owned(),
            state,
            printed: None,
            addr,
            metrics_addr: None,
            node_addr: None,
            api_key,
        }
    }

    async fn spawn(&mut self) {
        self.crashed = false;
        self.spawn_process();
        let addr = self.wait_for_listening().await;
        assert!(
            self.addr.port() == 0 || addr == self.addr,
            "cove serve started again on {addr}, not on {}",
            self.addr
        );
        self.addr = addr;
        if self.serves_tls() {
            // No TLS client here: a server that listens has made its state and its keys.
            let addr = self.addr;
            wait_until(
                "cove serve to listen (TLS)",
                Duration::from_secs(60),
                || async move { tokio::net::TcpStream::connect(addr).await.ok() },
            )
            .await;
            return;
        }
        let url = format!("http://{}/health", self.addr);
        let http = reqwest::Client::new();
        wait_until(
            "cove serve to answer /health",
            Duration::from_secs(60),
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

    /// The address the server says `--listen` is at, once it also said where the metrics
    /// are (when asked to serve them apart); panics when it exits first.
    async fn wait_for_listening(&mut self) -> SocketAddr {
        let metrics = self.extra_args.iter().any(|a| a == "--metrics-listen");
        let gateway = self.listens_as_gateway();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut pause = Duration::from_millis(2);
        let mut listening = None;
        loop {
            let printed = self.printed.as_ref().expect("the server was just started");
            while let Ok(line) = printed.try_recv() {
                match line {
                    Printed::Listening { gateway: g, addr } if g == gateway => {
                        listening = Some(addr)
                    }
                    Printed::Listening { addr, .. } => self.node_addr = Some(addr),
                    Printed::Metrics(addr) => self.metrics_addr = Some(addr),
                }
            }
            if let Some(addr) = listening
                && (!metrics || self.metrics_addr.is_some())
            {
                return addr;
            }
            let child = self.child.as_mut().expect("the server was just started");
            if let Ok(Some(status)) = child.try_wait() {
                panic!("cove serve exited ({status}) before it listened; its log is above");
            }
            assert!(
                Instant::now() < deadline,
                "cove serve did not listen within a minute"
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Whether `--listen` is the api's or the edge's (`--role api`, `--role node,edge`, …):
    /// the server then prints that listener as `Cove <roles> listening on …`.
    fn listens_as_gateway(&self) -> bool {
        self.extra_args.windows(2).any(|pair| {
            pair[0] == "--role" && (pair[1].contains("api") || pair[1].contains("edge"))
        })
    }

    fn spawn_process(&mut self) {
        let mut command = match &self.resolv_conf {
            None => Command::new(&self.cove),
            // `unshare` and `sh` exec what follows: the child is the server itself.
            Some((_, resolv_conf)) => {
                let mut command = Command::new("unshare");
                command
                    .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                    .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
                    .arg(resolv_conf)
                    .arg(&self.cove);
                command
            }
        };
        command
            .args(["serve", "--listen"])
            .arg(self.addr.to_string());
        if self.kill_on_exit {
            command.arg("--kill-on-exit");
        }
        command.args(&self.extra_args);
        let mut child = command
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("--api-key")
            .arg(&self.api_key)
            .env(
                "COVE_LOG",
                std::env::var("COVE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(
                self.agent_log
                    .iter()
                    .map(|filter| ("COVE_AGENT_LOG", filter)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cove serve starts");
        let (sender, receiver) = mpsc::channel();
        let stdout = child.stdout.take().expect("a piped standard output");
        // Reads to the end: a server whose output nobody reads fails on its next line.
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(printed) = Printed::parse(&line) {
                    let _ = sender.send(printed);
                }
            }
        });
        self.printed = Some(receiver);
        self.child = Some(child);
    }

    /// Kills the server with SIGKILL (its sandboxes keep running) and starts it again on
    /// the same port and state directory.
    pub async fn crash_and_restart(&mut self) {
        self.crash();
        self.spawn().await;
    }

    /// Kills the server with SIGKILL, as a machine that dies would stop it; its sandboxes
    /// keep running. [`TestServer::start_again`] brings it back.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.crashed = true;
        }
    }

    /// Starts a stopped or crashed server again on the same port and state directory.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server still runs");
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

    /// A `base` sandbox made through the API over plain HTTP: its id and its agent's access
    /// token, for requests the SDK would never send.
    pub async fn raw_sandbox(&self) -> (String, String) {
        let created: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/sandboxes", self.url()))
            .header("x-api-key", &self.api_key)
            .json(&serde_json::json!({"templateID": "base"}))
            .send()
            .await
            .expect("the server answers")
            .json()
            .await
            .expect("a sandbox as JSON");
        let field = |name: &str| {
            created[name]
                .as_str()
                .unwrap_or_else(|| panic!("no {name} in {created}"))
                .to_owned()
        };
        (field("sandboxID"), field("envdAccessToken"))
    }

    pub fn url(&self) -> String {
        let scheme = if self.serves_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Whether it was started with `--tls-cert`.
    fn serves_tls(&self) -> bool {
        self.extra_args.iter().any(|a| a == "--tls-cert")
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Stops the server the way an operator would (SIGTERM), waiting for it to exit.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::wait::terminate(child, Duration::from_secs(30));
        }
    }
}

/// A line of `cove serve` about one of its listeners.
#[derive(Debug, PartialEq)]
enum Printed {
    /// `Cove listening on http://…` (the sandbox server's), or with `gateway`
    /// `Cove api,edge listening on https://…` (the api's or the edge's).
    Listening { gateway: bool, addr: SocketAddr },
    /// `Metrics on http://…/metrics`.
    Metrics(SocketAddr),
}

impl Printed {
    fn parse(line: &str) -> Option<Self> {
        let addr = |url: &str| {
            let rest = url.split_once("://")?.1;
            rest.split('/').next()?.trim().parse().ok()
        };
        if let Some(url) = line.strip_prefix("Metrics on ") {
            return addr(url).map(Self::Metrics);
        }
        let (who, url) = line.strip_prefix("Cove ")?.split_once("listening on ")?;
        Some(Self::Listening {
            gateway: !who.is_empty(),
            addr: addr(url)?,
        })
    }
}

/// The `cove` binary for tests that cannot name it with `CARGO_BIN_EXE_cove` (doc tests of
/// other crates): `COVE_BIN`, else `$CARGO_TARGET_DIR/debug/cove`, else `target/debug/cove`.
/// Panics when it is missing or older than the workspace's sources, so an example never runs
/// against a stale server.
pub fn built_cove() -> PathBuf {
    let root = repo_root();
    let cove = std::env::var_os("COVE_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|dir| PathBuf::from(dir).join("debug/cove"))
        })
        .unwrap_or_else(|| root.join("target/debug/cove"));
    let built = std::fs::metadata(&cove)
        .and_then(|m| m.modified())
        .unwrap_or_else(|err| {
            panic!(
                "no cove binary at {} ({err}): run `cargo build -p cove-cli` first, or set COVE_BIN",
                cove.display()
            )
        });
    let crates = root.join("crates");
    let newest = binary_crates(&crates, "cove-cli")
        .iter()
        .filter_map(|name| newest_source(&crates.join(name)))
        .max_by_key(|(at, _)| *at);
    if let Some(newer) = newest.filter(|(at, _)| *at > built) {
        panic!(
            "{} is older than {}: run `cargo build -p cove-cli` first",
            cove.display(),
            newer.1.display()
        );
    }
    cove
}

/// The workspace crates (by directory name under `crates`) the crate `root` is built from:
/// itself and its `cove-*` dependencies, as their manifests' `[dependencies]` list them.
fn binary_crates(crates: &Path, root: &str) -> Vec<String> {
    let mut found = vec![root.to_owned()];
    let mut pending = vec![root.to_owned()];
    while let Some(name) = pending.pop() {
        let manifest =
            std::fs::read_to_string(crates.join(&name).join("Cargo.toml")).unwrap_or_default();
        let dependencies = manifest
            .split("\n[")
            .find(|section| section.starts_with("dependencies]"))
            .unwrap_or_default();
        for line in dependencies.lines() {
            let dependency = line.split(['.', ' ', '=']).next().unwrap_or_default();
            if dependency.starts_with("cove-") && !found.iter().any(|f| f == dependency) {
                found.push(dependency.to_owned());
                pending.push(dependency.to_owned());
            }
        }
    }
    found
}

/// The most recently modified `.rs`, `.proto` or `Cargo.toml` below `dir`.
fn newest_source(dir: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                // Tests and benches are not part of the binary.
                if !matches!(
                    path.file_name().and_then(|n| n.to_str()),
                    Some("tests" | "benches" | "target")
                ) {
                    pending.push(path);
                }
                continue;
            }
            let source = path
                .extension()
                .is_some_and(|ext| ext == "rs" || ext == "proto")
                || path.file_name().is_some_and(|n| n == "Cargo.toml");
            if let (true, Ok(at)) = (source, meta.modified())
                && newest.as_ref().is_none_or(|(t, _)| at > *t)
            {
                newest = Some((at, path));
            }
        }
    }
    newest
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A server that never said where it listens made no sandboxes to end.
        let listened = self.addr.port() != 0;
        if listened && ((!self.kill_on_exit && self.child.is_some()) || self.crashed) {
            // Leave nothing behind (also when a test fails after a crash it meant to undo):
            // one last run that kills every sandbox on its way out. It listens only once it
            // has re-adopted them.
            self.stop();
            self.kill_on_exit = true;
            self.spawn_process();
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(self.addr).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if std::net::TcpStream::connect(self.addr).is_err() {
                // Dropping cannot fail the test; say it where its output shows.
                eprintln!(
                    "the last run of cove serve at {} never answered: its sandboxes may be left behind",
                    self.addr
                );
            }
        }
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listeners_are_read_from_what_the_server_prints() {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(
            Printed::parse("Cove listening on http://127.0.0.1:4100"),
            Some(Printed::Listening {
                gateway: false,
                addr: at(4100)
            })
        );
        assert_eq!(
            Printed::parse("Cove api,edge listening on https://127.0.0.1:4200"),
            Some(Printed::Listening {
                gateway: true,
                addr: at(4200)
            })
        );
        assert_eq!(
            Printed::parse("Metrics on http://127.0.0.1:4300/metrics"),
            Some(Printed::Metrics(at(4300)))
        );
        assert_eq!(
            Printed::parse("  export E2B_API_URL=http://127.0.0.1:4100"),
            None
        );
        assert_eq!(
            Printed::parse("Cove listening on http://127.0.0.1:0x"),
            None
        );
    }

    #[test]
    fn the_binary_is_built_from_its_dependencies_only() {
        let crates = repo_root().join("crates");
        let built = binary_crates(&crates, "cove-cli");
        for name in [
            "cove-cli",
            "cove-server",
            "cove-runtime",
            "cove-agent",
            "cove-proto",
        ] {
            assert!(
                built.iter().any(|b| b == name),
                "{name} missing from {built:?}"
            );
        }
        assert!(
            !built
                .iter()
                .any(|b| b == "cove-test-util" || b == "cove-bench")
        );
    }
}
