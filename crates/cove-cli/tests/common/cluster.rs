//! What the cluster suites share (tests/cluster.rs, tests/control_plane.rs,
//! tests/postgres.rs): an edge and nodes on one database, `cove nodes`, and sandboxes
//! without internet access.

use std::time::Duration;

use assert_cmd::Command;
use cove_sdk::{CreateOptions, Sandbox};
use cove_test_util::TestServer;

use super::cove;

/// Nodes report themselves this often, and count as down after this long without a report.
pub const HEARTBEAT: &str = "200ms";
pub const DOWN_AFTER: Duration = Duration::from_secs(2);

/// An edge on `database`, and the domain of the sandbox hosts it routes (give it to the
/// nodes).
pub async fn edge(database: &str) -> (TestServer, String) {
    let edge = TestServer::launch(cove(), false, &["--role", "edge", "--database", database]).await;
    let domain = edge
        .url()
        .trim_start_matches("http://")
        .replace("127.0.0.1", "localhost");
    (edge, domain)
}

/// The cluster's REST API on `database`.
pub async fn api(database: &str) -> TestServer {
    TestServer::launch(cove(), false, &["--role", "api", "--database", database]).await
}

/// Node `id` on `database`, its sandbox hosts the edge's `domain`, no warm pool.
pub async fn node(id: &str, database: &str, domain: &str) -> TestServer {
    node_with(id, database, domain, &[]).await
}

/// [`node`] with more arguments.
pub async fn node_with(id: &str, database: &str, domain: &str, more: &[&str]) -> TestServer {
    let down_after = format!("{}s", DOWN_AFTER.as_secs());
    let mut args = vec![
        "--warm-pool",
        "0",
        "--domain",
        domain,
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
    ];
    args.extend_from_slice(more);
    TestServer::launch(cove(), true, &args).await
}

/// `cove nodes …` against `database`; its standard output.
pub fn nodes(database: &str, args: &[&str]) -> String {
    let state = tempfile::tempdir().unwrap();
    let output = Command::new(cove())
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

/// A sandbox without internet access.
pub fn offline() -> CreateOptions {
    CreateOptions {
        allow_internet_access: Some(false),
        ..Default::default()
    }
}

/// `echo word` in `sandbox` answers `word`.
pub async fn echo(sandbox: &Sandbox, word: &str) {
    let out = sandbox
        .commands()
        .run(&format!("echo {word}"))
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), word);
}
