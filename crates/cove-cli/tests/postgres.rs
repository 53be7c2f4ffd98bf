//! `cove serve --database postgres://…` as a user runs it: the real binary with its state in a
//! real PostgreSQL (Debian's server, a cluster of the test's own on a free port) instead of the
//! SQLite file. Sandboxes, keys and volumes live there: `cove keys` with the same `--database`
//! makes a key the running server takes, a server restarted on the database finds its
//! sandboxes, and while the database is down running sandboxes keep working and creates are
//! refused with a 503 that says why, until it is back; a second server on the same database is
//! refused. Skipped (with a message) where
//! PostgreSQL is not installed; `scripts/setup` installs it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use assert_cmd::Command;
use common::cluster::{echo, offline};
use cove_sdk::{ConnectionConfig, Error, Sandbox};
use cove_test_util::{TestPostgres, TestServer, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn a_server_keeps_its_state_in_postgresql() {
    if !TestPostgres::installed() {
        eprintln!("SKIPPED: PostgreSQL is not installed (Debian package postgresql)");
        return;
    }
    let mut postgres = TestPostgres::start();
    let url = postgres.url();
    let mut server = TestServer::launch(
        common::cove(),
        true,
        &["--warm-pool", "0", "--database", &url],
    )
    .await;
    assert!(
        !server.state_dir().join("state.db").exists(),
        "no SQLite file beside PostgreSQL"
    );
    let config = server.config();
    let sandbox = Sandbox::create(&config, offline()).await.unwrap();
    echo(&sandbox, "first").await;
    let store = cove_server::open_store(server.state_dir(), Some(&url)).unwrap();
    let stored: Vec<String> = store
        .sandboxes()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(stored, [sandbox.id().to_owned()]);

    // A second server on the same database is refused: it would take the first one's
    // sandboxes for its own.
    let other_state = tempfile::tempdir().unwrap();
    let second = Command::new(common::cove())
        .args(["serve", "--warm-pool", "0", "--database", &url, "--listen"])
        .arg("127.0.0.1:0")
        .arg("--state-dir")
        .arg(other_state.path())
        .env("COVE_LOG", "warn")
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{said}");
    assert!(
        said.contains("another cove serve uses this database"),
        "{said}"
    );

    // A key made by `cove keys` on the same database counts on the running server.
    let made = Command::new(common::cove())
        .args([
            "keys",
            "create",
            "--team",
            "other",
            "--database",
            &url,
            "--state-dir",
        ])
        .arg(server.state_dir())
        .env("COVE_LOG", "warn")
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let secret = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    let theirs = ConnectionConfig::new(&server.url(), &secret).unwrap();
    wait_until("the new key to count", Duration::from_secs(10), || {
        let theirs = theirs.clone();
        async move { Sandbox::list(&theirs).await.ok() }
    })
    .await;
    assert!(
        Sandbox::list(&theirs).await.unwrap().is_empty(),
        "another team sees none of this team's sandboxes"
    );

    // A server restarted on the database finds its sandbox there.
    server.crash_and_restart().await;
    let found = Sandbox::connect(&config, sandbox.id(), None).await.unwrap();
    echo(&found, "after-restart").await;

    // The database goes away: running sandboxes go on; creates are refused, clearly.
    postgres.kill();
    echo(&found, "without-database").await;
    let refused = Sandbox::create(&config, offline()).await.unwrap_err();
    match &refused {
        Error::Api { status, message } => {
            assert_eq!(*status, 503, "{message}");
            assert!(
                message.contains("state database cannot be reached"),
                "{message}"
            );
        }
        other => panic!("a create without the database: {other:?}"),
    }
    // It comes back: the server uses it again, without a restart.
    postgres.restart();
    let second = wait_until("creates to work again", Duration::from_secs(30), || {
        let config = config.clone();
        async move { Sandbox::create(&config, offline()).await.ok() }
    })
    .await;
    echo(&second, "second").await;
    let mut ids: Vec<String> = Sandbox::list(&config)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.sandbox_id)
        .collect();
    ids.sort();
    let mut expected = vec![sandbox.id().to_owned(), second.id().to_owned()];
    expected.sort();
    assert_eq!(
        ids, expected,
        "nothing half made while the database was down"
    );
    second.kill().await.unwrap();
    found.kill().await.unwrap();
    server.stop();
}
