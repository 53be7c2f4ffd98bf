//! Operating `cove serve`: its Prometheus metrics read with a Prometheus text parser after
//! real creates, kills, proxied commands and refusals; who may read them; its JSON log lines
//! about sandboxes carrying their id and team; keys and SIGHUP on a running server.
#![allow(clippy::unwrap_used)]

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use cove_sdk::{ConnectionConfig, CreateOptions, Error, Sandbox};
use cove_test_util::{TestServer, wait_until};

fn cove() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cove"))
}

/// One scrape, parsed.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    async fn of(url: &str) -> Self {
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        let lines = text.lines().map(|l| Ok(l.to_owned())).collect::<Vec<_>>();
        Self(prometheus_parse::Scrape::parse(lines.into_iter()).unwrap())
    }

    /// The value of the sample `metric` whose labels include `labels` (0 when there is none).
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .0
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("{metric} is not a single number"),
            })
            .collect();
        assert!(found.len() <= 1, "{metric} {labels:?} matches {found:?}");
        found.first().copied().unwrap_or(0.0)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_creates_kills_traffic_and_refusals() {
    let server = TestServer::start_with_args(
        cove(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-token",
            "scrape-secret",
            "--max-sandboxes",
            "2",
            "--warm-pool",
            "1",
        ],
    )
    .await;
    let metrics_listen = server.metrics_addr.expect("the metrics listener");
    let url = format!("http://{metrics_listen}/metrics");
    let before = Scrape::of(&url).await;
    assert_eq!(before.value("cove_sandboxes", &[("state", "running")]), 0.0);

    let config = server.config();
    let first = Sandbox::create(&config, CreateOptions::default())
        .await
        .unwrap();
    let second = Sandbox::create(&config, CreateOptions::default())
        .await
        .unwrap();
    let out = first
        .commands()
        .run("head -c 5000 /dev/zero | wc -c")
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "5000");
    let refused = Sandbox::create(&config, CreateOptions::default()).await;
    assert!(matches!(refused, Err(Error::RateLimit(_))), "{refused:?}");
    second.kill().await.unwrap();

    let after = Scrape::of(&url).await;
    let moved = |metric: &str, labels: &[(&str, &str)]| {
        after.value(metric, labels) - before.value(metric, labels)
    };
    let team = ("team", "default");
    assert_eq!(
        moved("cove_sandbox_creates_total", &[team, ("result", "ok")]),
        2.0
    );
    assert_eq!(
        moved("cove_sandbox_creates_total", &[team, ("result", "refused")]),
        1.0
    );
    assert_eq!(
        moved("cove_sandbox_kills_total", &[team, ("result", "ok")]),
        1.0
    );
    assert_eq!(
        moved("cove_refusals_total", &[("code", "429"), ("by", "api")]),
        1.0
    );
    assert_eq!(after.value("cove_sandboxes", &[("state", "running")]), 1.0);
    assert_eq!(
        after.value("cove_team_sandboxes", &[team, ("state", "running")]),
        1.0
    );
    let created = after.value("cove_sandbox_create_seconds_count", &[("source", "warm")])
        + after.value("cove_sandbox_create_seconds_count", &[("source", "cold")]);
    assert_eq!(created, 2.0);
    assert_eq!(after.value("cove_sandbox_kill_seconds_count", &[]), 1.0);
    let pool = after.value("cove_warm_pool_total", &[("result", "hit")])
        + after.value("cove_warm_pool_total", &[("result", "miss")]);
    assert_eq!(pool, 2.0);
    // The command's stream went through the proxy to the agent, and its 5000 bytes back.
    assert!(
        moved(
            "cove_proxy_requests_total",
            &[("target", "agent"), ("code", "2xx")]
        ) >= 1.0
    );
    assert!(moved("cove_proxy_bytes_total", &[("direction", "sent")]) >= 4.0);
    assert!(moved("cove_proxy_bytes_total", &[("direction", "received")]) > 0.0);

    // The main port: only with the metrics token, never with an API key.
    let http = reqwest::Client::new();
    let main = format!("{}/metrics", server.url());
    let with_key = http
        .get(&main)
        .header("x-api-key", &server.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), 401);
    let wrong = http.get(&main).bearer_auth("guess").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let right = http
        .get(&main)
        .bearer_auth("scrape-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert!(
        right
            .text()
            .await
            .unwrap()
            .contains("cove_team_sandboxes{team=\"default\"")
    );
    // The metrics listener serves nothing else.
    let other = reqwest::get(format!("http://{metrics_listen}/v2/sandboxes"))
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    first.kill().await.unwrap();
}

/// `cove serve --log-format json` with its stderr in a file, stopped with SIGTERM.
struct JsonLoggingServer {
    child: Option<std::process::Child>,
    log: std::path::PathBuf,
    url: String,
    key: String,
    _dir: tempfile::TempDir,
}

impl JsonLoggingServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let key = "cove_test_json".to_owned();
        let child = Command::new(cove())
            .args([
                "serve",
                "--kill-on-exit",
                "--warm-pool",
                "1",
                "--log-format",
                "json",
            ])
            .args(["--listen", "127.0.0.1:0", "--api-key", &key])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("COVE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // The port it chose, from its log.
        let addr = wait_until(
            "the server to log that it is ready",
            Duration::from_secs(60),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let addr = text
                    .lines()
                    .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                    .find(|line| line["fields"]["message"] == "cove serve ready")
                    .and_then(|line| line["fields"]["addr"].as_str().map(str::to_owned));
                async move { addr }
            },
        )
        .await;
        let url = format!("http://{addr}");
        let health = format!("{url}/health");
        wait_until("the server to answer", Duration::from_secs(30), || {
            let health = health.clone();
            async move {
                reqwest::get(&health)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        Self {
            child: Some(child),
            log,
            url,
            key,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
            })
            .collect()
    }
}

impl JsonLoggingServer {
    fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            cove_test_util::terminate(child, Duration::from_secs(30));
        }
    }
}

impl Drop for JsonLoggingServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_about_sandboxes_carry_id_and_team() {
    let mut server = JsonLoggingServer::start().await;
    let config = ConnectionConfig::new(&server.url, &server.key).unwrap();
    let sbx = Sandbox::create(&config, CreateOptions::default())
        .await
        .unwrap();
    sbx.commands().run("true").await.unwrap();
    let id = sbx.id().to_owned();
    sbx.kill().await.unwrap();
    // Without --metrics-listen or --metrics-token, /metrics is not served at all.
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 404);
    server.stop();

    let lines = server.lines();
    let mut about_sandboxes = 0;
    for line in &lines {
        let fields = &line["fields"];
        assert!(
            line["level"].is_string() && line["timestamp"].is_string(),
            "{line}"
        );
        if let Some(sandbox) = fields.get("sandbox_id") {
            about_sandboxes += 1;
            assert!(sandbox.is_string(), "{line}");
            assert!(
                fields["team"].is_string(),
                "a line about a sandbox without its team: {line}"
            );
        }
    }
    let said = |message: &str| {
        lines.iter().any(|l| {
            l["fields"]["message"] == message
                && l["fields"]["sandbox_id"] == id.as_str()
                && l["fields"]["team"] == "default"
        })
    };
    assert!(said("sandbox started"), "no start line of {id}");
    assert!(said("sandbox ended"), "no end line of {id}");
    assert!(about_sandboxes >= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_change_without_restart_and_sighup_reloads_nothing() {
    let server = TestServer::start_with_args(cove(), &["--warm-pool", "0"]).await;
    let created = Command::new(cove())
        .args(["keys", "create", "--team", "ops", "--state-dir"])
        .arg(server.state_dir())
        .output()
        .unwrap();
    assert!(created.status.success());
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let ops = ConnectionConfig::new(&server.url(), &key).unwrap();
    assert!(Sandbox::list(&ops).await.unwrap().is_empty());

    // SIGHUP (`systemctl reload`, habit) leaves the server serving, with the same keys.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(server.pid().unwrap()).unwrap()).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    wait_until(
        "the server to answer after SIGHUP",
        Duration::from_secs(60),
        || {
            let ops = ops.clone();
            async move { Sandbox::list(&ops).await.ok() }
        },
    )
    .await;
    assert!(server.pid().is_some());

    let listed = Command::new(cove())
        .args(["keys", "list", "--json", "--state-dir"])
        .arg(server.state_dir())
        .output()
        .unwrap();
    let keys: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["team"] == "ops")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = Command::new(cove())
        .args(["keys", "revoke", &id, "--state-dir"])
        .arg(server.state_dir())
        .status()
        .unwrap();
    assert!(revoked.success());
    assert!(matches!(Sandbox::list(&ops).await, Err(Error::Auth(_))));
    // The server's own key still works.
    assert!(Sandbox::list(&server.config()).await.is_ok());
}
