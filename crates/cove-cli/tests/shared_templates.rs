//! Templates shared by the nodes of a cluster through an object store (`--object-store`):
//! a template built on one node starts sandboxes on another, which fetches its layers on
//! first use; a node without the object store says why it cannot, and the api's placement
//! passes the create on to a node that can. Real parts: PostgreSQL, Debian's registry seeded
//! with the test image, real builds and sandboxes, an object store that is a directory here
//! (the S3 path is tested against a real S3 server in cove-depot). Skipped (with a message)
//! where PostgreSQL is not installed.
#![allow(clippy::unwrap_used)]

mod common;

use std::{path::Path, time::Duration};

use assert_cmd::Command;
use common::cluster::{api, edge, node_with};
use cove_sdk::{ConnectionConfig, CreateOptions, Error, Sandbox};
use cove_test_util::{TestPostgres, TestServer, seeded_mirror, wait_until};

const DOCKERFILE: &str = "FROM debian:bookworm\nRUN echo built on node a > /built.txt\n";

/// `cove template build` of `context` through `server`, as `name`.
fn build(server: &TestServer, context: &Path, name: &str) -> String {
    let output = Command::new(common::cove())
        .env("COVE_API_URL", server.url())
        .env("COVE_API_KEY", &server.api_key)
        .env("COVE_LOG", "warn")
        .timeout(Duration::from_secs(600))
        .args([
            "template",
            "build",
            context.to_str().unwrap(),
            "--name",
            name,
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{log}");
    log
}

fn from(template: &str) -> CreateOptions {
    CreateOptions {
        template: Some(template.into()),
        allow_internet_access: Some(false),
        ..Default::default()
    }
}

/// `node`'s config for a create that first fetches its template's layers from the object
/// store: an image's hundreds of MiB can take longer than the SDK's 60 s default on a
/// machine busy with the other suites.
fn fetching(node: &TestServer) -> ConnectionConfig {
    node.config().with_request_timeout(Duration::from_secs(300))
}

/// The layers in a node's layer store.
fn layers(node: &TestServer) -> usize {
    std::fs::read_dir(node.state_dir().join("images/layers/sha256"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_built_on_one_node_starts_sandboxes_on_another() {
    if !TestPostgres::installed() {
        eprintln!("SKIPPED: PostgreSQL is not installed (Debian package postgresql)");
        return;
    }
    let postgres = TestPostgres::start();
    let url = postgres.url();
    let registry = seeded_mirror().await;
    let mirror = format!("docker.io={}", registry.url());
    let objects = tempfile::tempdir().unwrap();
    let depot = format!("file://{}", objects.path().display());
    let (_edge, domain) = edge(&url).await;
    let shared = [
        "--object-store",
        depot.as_str(),
        "--registry-mirror",
        mirror.as_str(),
    ];
    let a = node_with("node-a", &url, &domain, &shared).await;
    let b = node_with("node-b", &url, &domain, &shared).await;

    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("Dockerfile"), DOCKERFILE).unwrap();
    let log = build(&a, context.path(), "shared-app");
    assert!(log.contains("in the object store"), "{log}");
    let stored = std::fs::read_dir(objects.path().join("layers/sha256"))
        .unwrap()
        .count();
    assert!(stored >= 4, "an archive and a record per layer: {stored}");
    assert_eq!(layers(&b), 0, "node b has nothing of it yet");

    // Node b's own REST API: it fetches the layers, then starts the sandbox.
    let sandbox = Sandbox::create(&fetching(&b), from("shared-app"))
        .await
        .unwrap();
    let out = sandbox.commands().run("cat /built.txt").await.unwrap();
    assert_eq!(out.stdout.trim(), "built on node a");
    assert_eq!(layers(&b), stored / 2, "node b keeps the layers it fetched");
    // The second create finds them there.
    let again = Sandbox::create(&b.config(), from("shared-app"))
        .await
        .unwrap();
    assert!(again.kill().await.unwrap());
    assert!(sandbox.kill().await.unwrap());

    // A node without the object store cannot, and says why: 503, so the api tries another.
    let c = node_with("node-c", &url, &domain, &[]).await;
    let err = Sandbox::create(&c.config(), from("shared-app"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("built on another node") && text.contains("--object-store"),
        "{text}"
    );
    assert!(matches!(err, Error::Api { status: 503, .. }), "{err:?}");

    drop(c);

    // Through the api, creates of it go to the nodes that have its layers (they report
    // them), not to an empty node that would have to fetch them first.
    let d = node_with("node-d", &url, &domain, &shared).await;
    let store = cove_server::open_store(a.state_dir(), Some(&url)).unwrap();
    wait_until(
        "nodes a and b to report the template",
        Duration::from_secs(10),
        || {
            let mut with: Vec<String> = cove_server::cluster::Nodes(store.db())
                .list()
                .unwrap()
                .into_iter()
                .filter(|n| !n.capacity.templates.is_empty())
                .map(|n| n.id)
                .collect();
            with.sort();
            async move { (with == ["node-a", "node-b"]).then_some(()) }
        },
    )
    .await;
    let api = api(&url).await;
    let config = ConnectionConfig::new(&api.url(), &a.api_key).unwrap();
    let mut made = Vec::new();
    for _ in 0..4 {
        made.push(Sandbox::create(&config, from("shared-app")).await.unwrap());
    }
    assert_eq!(layers(&d), 0, "no create of it went to node d");
    for sandbox in made {
        assert!(sandbox.kill().await.unwrap());
    }
}

/// Which node runs sandbox `id`, by the database's records.
fn node_of(store: &cove_server::store::Store, id: &str) -> String {
    store.placed(Some(id)).unwrap().remove(0).1.id
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshots_sandboxes_start_on_the_node_that_has_it() {
    if !TestPostgres::installed() {
        eprintln!("SKIPPED: PostgreSQL is not installed (Debian package postgresql)");
        return;
    }
    let postgres = TestPostgres::start();
    let url = postgres.url();
    let (edge, domain) = edge(&url).await;
    let a = node_with("node-a", &url, &domain, &[]).await;
    let _b = node_with("node-b", &url, &domain, &[]).await;
    let api = api(&url).await;
    let config = ConnectionConfig::new(&api.url(), &a.api_key)
        .unwrap()
        .with_sandbox_url(&edge.url());
    let store = cove_server::open_store(a.state_dir(), Some(&url)).unwrap();

    let source = Sandbox::create(&config, from("base")).await.unwrap();
    source
        .files()
        .write("/home/user/kept.txt", b"from the source".to_vec())
        .await
        .unwrap();
    let home = node_of(&store, source.id());
    let snapshot = source.snapshot(Some("kept")).await.unwrap();

    // Every create from it goes to its node, whichever node the draw would have picked.
    let mut made = Vec::new();
    for _ in 0..4 {
        let sandbox = Sandbox::create(&config, from(&snapshot.snapshot_id))
            .await
            .unwrap();
        assert_eq!(node_of(&store, sandbox.id()), home);
        let out = sandbox
            .commands()
            .run("cat /home/user/kept.txt")
            .await
            .unwrap();
        assert_eq!(out.stdout, "from the source");
        made.push(sandbox);
    }

    // Listed through the api, and deleted through it (on its node).
    let http = reqwest::Client::new();
    let listed: Vec<serde_json::Value> = http
        .get(format!("{}/snapshots", api.url()))
        .header("x-api-key", &a.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["snapshotID"], snapshot.snapshot_id.as_str());
    assert!(
        Sandbox::delete_snapshot(&config, &snapshot.snapshot_id)
            .await
            .unwrap()
    );
    let err = Sandbox::create(&config, from(&snapshot.snapshot_id))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    for sandbox in made.into_iter().chain([source]) {
        assert!(sandbox.kill().await.unwrap());
    }
}

/// The snapshot directories a node keeps.
fn snapshot_dirs(node: &TestServer) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(node.state_dir().join("snapshots"))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// A snapshot named `first` taken on `node` of a sandbox whose `first.txt` says `says`; its
/// id.
async fn again_and_again(node: &TestServer, says: &str) -> String {
    let source = Sandbox::create(&node.config(), from("base")).await.unwrap();
    source
        .files()
        .write("/home/user/first.txt", says.as_bytes().to_vec())
        .await
        .unwrap();
    let taken = source.snapshot(Some("first")).await.unwrap();
    assert!(source.kill().await.unwrap());
    taken.snapshot_id
}

/// What `first.txt` says in `sandbox`.
async fn first_says(sandbox: &Sandbox) -> String {
    let out = sandbox
        .commands()
        .run("cat /home/user/first.txt")
        .await
        .unwrap();
    out.stdout
}

/// A sandbox of snapshot `first` started through `node` reads `says` in its `first.txt`.
async fn starts_first_saying(node: &TestServer, says: &str) {
    let sandbox = Sandbox::create(&node.config(), from("first"))
        .await
        .unwrap();
    assert_eq!(first_says(&sandbox).await, says);
    assert!(sandbox.kill().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_in_the_object_store_starts_sandboxes_on_every_node() {
    if !TestPostgres::installed() {
        eprintln!("SKIPPED: PostgreSQL is not installed (Debian package postgresql)");
        return;
    }
    let postgres = TestPostgres::start();
    let url = postgres.url();
    let objects = tempfile::tempdir().unwrap();
    let depot = format!("file://{}", objects.path().display());
    let shared = ["--object-store", depot.as_str()];
    let (edge, domain) = edge(&url).await;
    let mut a = node_with("node-a", &url, &domain, &shared).await;
    let b = node_with("node-b", &url, &domain, &shared).await;

    // On node a: a snapshot, and a snapshot of a sandbox made from it (layers on layers).
    let source = Sandbox::create(&a.config(), from("base")).await.unwrap();
    source
        .files()
        .write("/home/user/first.txt", b"first layer".to_vec())
        .await
        .unwrap();
    let first = source.snapshot(Some("first")).await.unwrap();
    let middle = Sandbox::create(&a.config(), from("first")).await.unwrap();
    middle
        .files()
        .write("/home/user/second.txt", b"second layer".to_vec())
        .await
        .unwrap();
    let chain = middle.snapshot(Some("chain")).await.unwrap();
    let stored = std::fs::read_dir(objects.path().join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(stored, 4, "an archive and a record per snapshot directory");
    assert!(
        snapshot_dirs(&b).is_empty(),
        "node b has nothing of them yet"
    );

    // Node b's own REST API: it finds the snapshot in the database, fetches both
    // directories, and starts the sandbox with both layers.
    let there = Sandbox::create(&fetching(&b), from("chain")).await.unwrap();
    let out = there
        .commands()
        .run("cat /home/user/first.txt /home/user/second.txt")
        .await
        .unwrap();
    assert_eq!(out.stdout, "first layersecond layer");
    assert_eq!(snapshot_dirs(&b).len(), 2, "{:?}", snapshot_dirs(&b));
    assert!(there.kill().await.unwrap());

    // Deleted through node a: gone on node b at once, which lets go of it and its files.
    assert!(
        Sandbox::delete_snapshot(&a.config(), &chain.snapshot_id)
            .await
            .unwrap()
    );
    let err = Sandbox::create(&b.config(), from("chain"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert!(
        !Sandbox::delete_snapshot(&b.config(), &chain.snapshot_id)
            .await
            .unwrap(),
        "deleted already"
    );
    wait_until(
        "node b to drop the deleted snapshot's files",
        Duration::from_secs(20),
        || {
            let left = snapshot_dirs(&b);
            async move { left.is_empty().then_some(()) }
        },
    )
    .await;

    // Taken again under its name on node b: node a, which knew the old one, starts the new.
    let retaken = again_and_again(&b, "taken again on b").await;
    assert_eq!(retaken, first.snapshot_id, "one snapshot by that name");
    starts_first_saying(&a, "taken again on b").await;
    // Deleted and another snapshot made under the name: node a starts that one.
    assert!(
        Sandbox::delete_snapshot(&b.config(), &first.snapshot_id)
            .await
            .unwrap()
    );
    again_and_again(&b, "a new first").await;
    starts_first_saying(&a, "a new first").await;

    // Node a is lost (its sandboxes with it): through the api, snapshots still start
    // sandboxes (on node b), are listed, and can be deleted.
    a.crash();
    let store = cove_server::open_store(b.state_dir(), Some(&url)).unwrap();
    wait_until("node a to count as down", Duration::from_secs(10), || {
        let down = cove_server::cluster::Nodes(store.db())
            .list()
            .unwrap()
            .into_iter()
            .any(|n| n.id == "node-a" && n.state.as_str() == "down");
        async move { down.then_some(()) }
    })
    .await;
    let api = api(&url).await;
    let config = ConnectionConfig::new(&api.url(), &b.api_key)
        .unwrap()
        .with_sandbox_url(&edge.url());
    let sandbox = wait_until(
        "the api to start a sandbox of the snapshot",
        Duration::from_secs(15),
        || {
            let config = config.clone();
            async move { Sandbox::create(&config, from("first")).await.ok() }
        },
    )
    .await;
    assert_eq!(node_of(&store, sandbox.id()), "node-b");
    assert_eq!(first_says(&sandbox).await, "a new first");
    assert!(sandbox.kill().await.unwrap());
    let http = reqwest::Client::new();
    let listed: Vec<serde_json::Value> = http
        .get(format!("{}/snapshots", api.url()))
        .header("x-api-key", &b.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["names"][0], "default/first:default");
    assert!(Sandbox::delete_snapshot(&config, "first").await.unwrap());
    let err = Sandbox::create(&config, from("first")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");

    // Node a comes back (and, dropped, ends its sandboxes).
    a.start_again().await;
    for sandbox in [middle, source] {
        assert!(sandbox.kill().await.unwrap());
    }
}

/// What the counting process of a memory snapshot's sandbox has written last (0 before its
/// first count: the file appears with it, and a `cat` may come first).
async fn counted(sandbox: &Sandbox) -> u64 {
    let out = sandbox
        .commands()
        .run("cat /tmp/count 2>/dev/null || true")
        .await
        .unwrap();
    out.stdout.trim().parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_snapshot_in_the_object_store_restores_its_processes_on_another_node() {
    if !TestPostgres::installed() || !Path::new("/usr/bin/runsc").exists() {
        eprintln!("SKIPPED: needs PostgreSQL and runsc (Debian packages postgresql, runsc)");
        return;
    }
    let postgres = TestPostgres::start();
    let url = postgres.url();
    let objects = tempfile::tempdir().unwrap();
    let depot = format!("file://{}", objects.path().display());
    let shared = ["--object-store", depot.as_str()];
    let (_edge, domain) = edge(&url).await;
    let a = node_with("node-a", &url, &domain, &shared).await;
    let b = node_with("node-b", &url, &domain, &shared).await;

    let gvisor = CreateOptions {
        metadata: [("cove.runtime".to_owned(), "gvisor".to_owned())].into(),
        ..from("base")
    };
    let source = Sandbox::create(&a.config(), gvisor).await.unwrap();
    source
        .commands()
        // Written aside and renamed, so that a read never finds the file emptied by `>`.
        .run("nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.1; done' >/dev/null 2>&1 &")
        .await
        .unwrap();
    wait_until("the process to count", Duration::from_secs(10), || async {
        (counted(&source).await > 2).then_some(())
    })
    .await;
    let snapshot = source.snapshot(Some("counting")).await.unwrap();
    assert_eq!(snapshot.mode.as_deref(), Some("full"), "memory kept");
    let memory_images = std::fs::read_dir(a.state_dir().join("snapshots"))
        .unwrap()
        .flatten()
        .filter(|dir| dir.path().join("memory").is_dir())
        .count();
    assert_eq!(memory_images, 1);
    let at_snapshot = counted(&source).await;

    // Node b restores it from the object store: the process counts on from where it was.
    let copy = Sandbox::create(&fetching(&b), from("counting"))
        .await
        .unwrap();
    let first = counted(&copy).await;
    assert!(first >= 2, "the count was kept: {first}");
    assert_eq!(snapshot_dirs(&b).len(), 1, "fetched with its memory image");
    wait_until(
        "the copy's process to count on",
        Duration::from_secs(10),
        || async { (counted(&copy).await > first).then_some(()) },
    )
    .await;
    assert!(at_snapshot > 0);
    assert!(
        copy.commands()
            .run("ps -eo args")
            .await
            .unwrap()
            .stdout
            .contains("while :")
    );
    for sandbox in [copy, source] {
        assert!(sandbox.kill().await.unwrap());
    }
    assert!(
        Sandbox::delete_snapshot(&a.config(), &snapshot.snapshot_id)
            .await
            .unwrap()
    );
}

/// The layers and snapshot directories in an object store (each is an archive and a record).
fn in_object_store(objects: &Path) -> (usize, usize) {
    let count = |dir: &str| {
        std::fs::read_dir(objects.join(dir))
            .map(|d| d.count() / 2)
            .unwrap_or(0)
    };
    (count("layers/sha256"), count("snapshots"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_object_store_keeps_what_templates_and_snapshots_use_and_collects_the_rest() {
    if !TestPostgres::installed() {
        eprintln!("SKIPPED: PostgreSQL is not installed (Debian package postgresql)");
        return;
    }
    let postgres = TestPostgres::start();
    let url = postgres.url();
    let registry = seeded_mirror().await;
    let mirror = format!("docker.io={}", registry.url());
    let objects = tempfile::tempdir().unwrap();
    let depot = format!("file://{}", objects.path().display());
    let (_edge, domain) = edge(&url).await;
    // Nothing waits before it may go: every collection takes all that nothing uses.
    let shared = [
        "--object-store",
        depot.as_str(),
        "--object-store-keep-for",
        "1ms",
        "--registry-mirror",
        mirror.as_str(),
    ];
    let a = node_with("node-a", &url, &domain, &shared).await;

    for (name, says) in [("app-one", "one"), ("app-two", "two")] {
        let context = tempfile::tempdir().unwrap();
        let dockerfile = format!("FROM debian:bookworm\nRUN echo {says} > /built.txt\n");
        std::fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
        build(&a, context.path(), name);
    }
    let source = Sandbox::create(&a.config(), from("app-one")).await.unwrap();
    source
        .files()
        .write("/home/user/note.txt", b"noted".to_vec())
        .await
        .unwrap();
    let snapshot = source.snapshot(Some("noted")).await.unwrap();
    assert!(source.kill().await.unwrap());
    let (layers, dirs) = in_object_store(objects.path());
    assert_eq!(dirs, 1);

    // app-one deleted: its layers stay, the snapshot taken of its sandbox needs them.
    cove_sdk::templates::delete(&a.config(), "app-one")
        .await
        .unwrap();
    let collected = cove_sdk::templates::collect(&a.config()).await.unwrap();
    assert_eq!(collected.shared_removed, 0, "{collected:?}");
    assert_eq!(in_object_store(objects.path()), (layers, 1));

    // The snapshot deleted too: app-one's own layers and the snapshot's directory go.
    assert!(
        Sandbox::delete_snapshot(&a.config(), &snapshot.snapshot_id)
            .await
            .unwrap()
    );
    let collected = cove_sdk::templates::collect(&a.config()).await.unwrap();
    assert!(collected.shared_removed >= 2, "{collected:?}");
    assert!(collected.shared_freed_bytes > 0);
    let (left, dirs) = in_object_store(objects.path());
    assert_eq!(dirs, 0);
    assert_eq!(left + collected.shared_removed - 1, layers);

    // What app-two needs is all there: a node that has nothing of it starts its sandboxes.
    let b = node_with("node-b", &url, &domain, &shared).await;
    let sandbox = Sandbox::create(&fetching(&b), from("app-two"))
        .await
        .unwrap();
    let out = sandbox.commands().run("cat /built.txt").await.unwrap();
    assert_eq!(out.stdout.trim(), "two");
    assert!(sandbox.kill().await.unwrap());
}
