//! Nodes of a cluster as an operator runs them: two real `cove serve --role node` processes
//! on one real PostgreSQL (Debian's server, a cluster of the test's own), each with its own
//! state directory and port. They register and report themselves (`cove nodes list`); each
//! knows where the other's sandboxes are; a node killed with SIGKILL is marked down within
//! the heartbeat bound and its sandboxes are reported lost, never moved, until it comes back
//! and takes them over; a drained node takes no new sandboxes until undrained; a second
//! process claiming a running node's id is refused. Skipped (with a message) where
//! PostgreSQL is not installed.
#![allow(clippy::unwrap_used)]

use std::{
    path::Path,
    time::{Duration, Instant},
};

use assert_cmd::Command;
use cove_sdk::{CreateOptions, Error, Sandbox};
use cove_test_util::{TestPostgres, TestServer, wait_until};

fn cove_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cove"))
}

/// Heartbeats this often, and a node is down after this long without one (the bound the
/// test waits within is the second plus one heartbeat).
const HEARTBEAT: &str = "200ms";
const DOWN_AFTER: Duration = Duration::from_secs(2);

async fn node(id: &str, database: &str) -> TestServer {
    let down_after = format!("{}s", DOWN_AFTER.as_secs());
    TestServer::launch(
        cove_bin(),
        true,
        &[
            "--warm-pool",
            "0",
            "--database",
            database,
            "--role",
            "node",
            "--node-id",
            id,
            "--heartbeat",
            HEARTBEAT,
            "--node-down-after",
            &down_after,
        ],
    )
    .await
}

/// `cove nodes …` against the cluster's database; its standard output.
fn nodes(database: &str, args: &[&str]) -> String {
    let state = tempfile::tempdir().unwrap();
    let output = Command::new(cove_bin())
        .arg("nodes")
        .args(args)
        .args(["--database", database, "--state-dir"])
        .arg(state.path())
        .env("COVE_LOG", "warn")
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cove nodes {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Each node's state, by id.
fn states(database: &str) -> Vec<(String, String)> {
    let listed: serde_json::Value =
        serde_json::from_str(&nodes(database, &["list", "--json"])).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_owned(),
                n["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn options() -> CreateOptions {
    CreateOptions {
        allow_internet_access: Some(false),
        ..Default::default()
    }
}

async fn echo(sandbox: &Sandbox, word: &str) {
    let out = sandbox
        .commands()
        .run(&format!("echo {word}"))
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), word);
}

/// The message of a REST error of `status`.
fn api_error(err: Error, status: u16) -> String {
    match err {
        Error::Api {
            status: got,
            message,
        } if got == status => message,
        Error::NotFound(message) if status == 404 => message,
        other => panic!("wanted a {status}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_report_themselves_and_a_dead_one_loses_its_sandboxes_until_it_returns() {
    if !TestPostgres::installed() {
        eprintln!("SKIPPED: PostgreSQL is not installed (Debian package postgresql)");
        return;
    }
    let postgres = TestPostgres::start();
    let url = postgres.url();
    let mut a = node("node-a", &url).await;
    let mut b = node("node-b", &url).await;
    assert_eq!(
        states(&url),
        [
            ("node-a".into(), "up".into()),
            ("node-b".into(), "up".into())
        ]
    );
    let listed: serde_json::Value =
        serde_json::from_str(&nodes(&url, &["list", "--json"])).unwrap();
    assert_eq!(listed[0]["address"], format!("{}", a.url()));
    assert!(listed[0]["capacity"]["cpus"].as_u64().unwrap() >= 1);
    assert!(listed[0]["capacity"]["memory_free_mb"].as_u64().unwrap() > 0);
    let table = nodes(&url, &["list"]);
    assert!(table.contains("node-b") && table.contains("up"), "{table}");

    // A second process with a running node's id is refused.
    let other_state = tempfile::tempdir().unwrap();
    let twin = Command::new(cove_bin())
        .args([
            "serve",
            "--warm-pool",
            "0",
            "--database",
            &url,
            "--role",
            "node",
        ])
        .args(["--node-id", "node-a", "--listen"])
        .arg(format!("127.0.0.1:{}", cove_test_util::free_port()))
        .arg("--state-dir")
        .arg(other_state.path())
        .env("COVE_LOG", "warn")
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&twin.stderr);
    assert!(!twin.status.success(), "{said}");
    assert!(
        said.contains("another cove serve runs node node-a on this database"),
        "{said}"
    );

    // Each node runs its own sandboxes and knows where the other's are.
    let on_a = Sandbox::create(&a.config(), options()).await.unwrap();
    let on_b = Sandbox::create(&b.config(), options()).await.unwrap();
    echo(&on_a, "a").await;
    echo(&on_b, "b").await;
    let elsewhere = api_error(Sandbox::get(&b.config(), on_a.id()).await.unwrap_err(), 404);
    assert!(elsewhere.contains("runs on node node-a"), "{elsewhere}");

    // Node a dies: within the bound it is down, and its sandbox is reported lost.
    a.crash();
    let died = Instant::now();
    wait_until("node-a to be marked down", DOWN_AFTER * 3, || {
        let url = url.clone();
        async move {
            states(&url)
                .contains(&("node-a".into(), "down".into()))
                .then_some(())
        }
    })
    .await;
    let noticed = died.elapsed();
    eprintln!(
        "node-a marked down {} ms after it died",
        noticed.as_millis()
    );
    let lost = api_error(Sandbox::get(&b.config(), on_a.id()).await.unwrap_err(), 404);
    assert!(
        lost.contains("is lost: its node node-a stopped answering"),
        "{lost}"
    );
    echo(&on_b, "b-goes-on").await;

    // It comes back: up again, and its sandbox (which ran on) is its own again.
    a.start_again().await;
    assert!(states(&url).contains(&("node-a".into(), "up".into())));
    let back = Sandbox::connect(&a.config(), on_a.id(), None)
        .await
        .unwrap();
    echo(&back, "a-again").await;
    let ids_on_a: Vec<String> = Sandbox::list(&a.config())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.sandbox_id)
        .collect();
    assert_eq!(
        ids_on_a,
        [on_a.id().to_owned()],
        "node-a took over only its own"
    );

    // Drained, node b takes no new sandboxes (its own run on); undrained, it does again.
    nodes(&url, &["drain", "node-b"]);
    wait_until("node-b to refuse creates", Duration::from_secs(10), || {
        let config = b.config();
        async move {
            match Sandbox::create(&config, options()).await {
                Err(Error::Api {
                    status: 503,
                    message,
                }) => Some(message),
                Ok(made) => {
                    made.kill().await.unwrap();
                    None
                }
                Err(other) => panic!("a create on a draining node: {other:?}"),
            }
        }
    })
    .await;
    assert!(states(&url).contains(&("node-b".into(), "draining".into())));
    echo(&on_b, "b-while-draining").await;
    nodes(&url, &["undrain", "node-b"]);
    let again = wait_until(
        "node-b to take creates again",
        Duration::from_secs(10),
        || {
            let config = b.config();
            async move { Sandbox::create(&config, options()).await.ok() }
        },
    )
    .await;
    again.kill().await.unwrap();

    // A node stopped by its operator says it is down at once.
    back.kill().await.unwrap();
    a.stop();
    assert!(states(&url).contains(&("node-a".into(), "down".into())));
    on_b.kill().await.unwrap();
    b.stop();
    drop(postgres);
}
