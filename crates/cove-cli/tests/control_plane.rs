//! The cluster's REST API as a client sees it: one `cove serve --role api` and one
//! `--role edge` in front of two `--role node` processes on one real PostgreSQL. Clients name
//! only the api (REST) and the edge (sandbox traffic). Creates are placed on the nodes by
//! what they report free and spread over both; listings show every node's sandboxes; calls
//! about a sandbox reach its node; a drained node gets no creates; a dead node's sandboxes
//! are reported lost while creates go to the other. Skipped (with a message) where
//! PostgreSQL is not installed.
#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::cluster::{DOWN_AFTER, HEARTBEAT, api, edge, node, node_with, nodes, offline};
use cove_sdk::{ConnectionConfig, Error, Sandbox};
use cove_test_util::{TestPostgres, TestServer, wait_until};

/// How many sandboxes each node runs, by the database's records.
fn per_node(store: &cove_server::store::Store) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, node) in store.placed(None).unwrap() {
        *counts.entry(node.id).or_insert(0) += 1;
    }
    counts
}

/// The nodes' own reports of how many sandboxes they run, once they match `counts`.
async fn reported(store: &cove_server::store::Store, total: usize) {
    wait_until(
        "the nodes to report their sandboxes",
        Duration::from_secs(10),
        || {
            let reported: usize = cove_server::cluster::Nodes(store.db())
                .list()
                .unwrap()
                .iter()
                .map(|n| n.capacity.sandboxes)
                .sum();
            async move { (reported == total).then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_api_and_one_edge_serve_the_whole_cluster() {
    if !TestPostgres::installed() {
        eprintln!("SKIPPED: PostgreSQL is not installed (Debian package postgresql)");
        return;
    }
    let postgres = TestPostgres::start();
    let url = postgres.url();
    let (mut edge, domain) = edge(&url).await;
    let mut a = node("node-a", &url, &domain).await;
    let mut b = node("node-b", &url, &domain).await;
    let mut api = api(&url).await;
    // The api takes the keys the nodes know (a node's `--api-key` is in the database).
    let config = ConnectionConfig::new(&api.url(), &a.api_key)
        .unwrap()
        .with_sandbox_url(&edge.url());
    let store = cove_server::open_store(a.state_dir(), Some(&url)).unwrap();

    // Creates go to the node with more room: one after the other, they alternate.
    let mut made = Vec::new();
    for n in 0..6 {
        let sandbox = Sandbox::create(&config, offline()).await.unwrap();
        let out = sandbox.commands().run(&format!("echo {n}")).await.unwrap();
        assert_eq!(out.stdout.trim(), n.to_string());
        made.push(sandbox);
        reported(&store, made.len()).await;
    }
    let spread = per_node(&store);
    assert_eq!(spread.get("node-a"), Some(&3), "{spread:?}");
    assert_eq!(spread.get("node-b"), Some(&3), "{spread:?}");

    // The listing is the cluster's, paged.
    let listed = Sandbox::list(&config).await.unwrap();
    assert_eq!(listed.len(), 6);
    let http = reqwest::Client::new();
    let page = http
        .get(format!("{}/v2/sandboxes?limit=4", api.url()))
        .header("x-api-key", &a.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let next = page.headers()["x-next-token"].to_str().unwrap().to_owned();
    assert_eq!(
        page.json::<Vec<serde_json::Value>>().await.unwrap().len(),
        4
    );
    let rest: Vec<serde_json::Value> = http
        .get(format!(
            "{}/v2/sandboxes?limit=4&nextToken={next}",
            api.url()
        ))
        .header("x-api-key", &a.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    let wrong = http
        .get(format!("{}/v2/sandboxes", api.url()))
        .header("x-api-key", "cove_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // Calls about one sandbox reach its node, whichever it is.
    for sandbox in &made {
        let info = Sandbox::info_by_id(&config, sandbox.id()).await.unwrap();
        assert_eq!(info.listed.sandbox_id, sandbox.id());
    }
    let gone = made.pop().unwrap();
    assert!(gone.kill().await.unwrap());
    assert!(matches!(
        Sandbox::info_by_id(&config, gone.id()).await.unwrap_err(),
        Error::NotFound(_)
    ));

    // Drained, node b gets no creates.
    nodes(&url, &["drain", "node-b"]);
    wait_until(
        "node-b to count as drained",
        Duration::from_secs(10),
        || {
            let nodes = cove_server::cluster::Nodes(store.db()).list().unwrap();
            async move {
                nodes
                    .iter()
                    .any(|n| {
                        n.id == "node-b" && n.state == cove_server::cluster::NodeState::Draining
                    })
                    .then_some(())
            }
        },
    )
    .await;
    let before = per_node(&store);
    for _ in 0..2 {
        made.push(Sandbox::create(&config, offline()).await.unwrap());
    }
    let after = per_node(&store);
    assert_eq!(after.get("node-b"), before.get("node-b"), "{after:?}");
    assert_eq!(
        after.get("node-a").copied(),
        before.get("node-a").map(|n| n + 2)
    );
    nodes(&url, &["undrain", "node-b"]);

    // Node a dies: its sandboxes are lost, the others work, and creates go to node b.
    let on_a: Vec<String> = store
        .placed(None)
        .unwrap()
        .into_iter()
        .filter(|(_, node)| node.id == "node-a")
        .map(|(record, _)| record.id)
        .collect();
    a.crash();
    wait_until("node-a to be marked down", Duration::from_secs(10), || {
        let nodes = cove_server::cluster::Nodes(store.db()).list().unwrap();
        async move {
            nodes
                .iter()
                .any(|n| n.id == "node-a" && n.state == cove_server::cluster::NodeState::Down)
                .then_some(())
        }
    })
    .await;
    let lost = Sandbox::info_by_id(&config, &on_a[0]).await.unwrap_err();
    assert!(format!("{lost:?}").contains("is lost"), "{lost:?}");
    assert_eq!(
        Sandbox::list(&config).await.unwrap().len(),
        made.len() - on_a.len(),
        "a lost sandbox is not listed"
    );
    let on_b = Sandbox::create(&config, offline()).await.unwrap();
    assert_eq!(
        store.placed(Some(on_b.id())).unwrap()[0].1.id,
        "node-b",
        "created where it can run"
    );
    on_b.kill().await.unwrap();

    // Node a comes back with its sandboxes; everything is killed through the api.
    a.start_again().await;
    for sandbox in &made {
        wait_until(
            "the sandbox to answer again",
            Duration::from_secs(10),
            || async { Sandbox::info_by_id(&config, sandbox.id()).await.ok() },
        )
        .await;
        assert!(sandbox.kill().await.unwrap());
    }
    assert!(Sandbox::list(&config).await.unwrap().is_empty());
    api.stop();
    a.stop();
    b.stop();
    edge.stop();
    drop(postgres);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_serves_beside_the_api_and_the_edge_in_one_process() {
    if !TestPostgres::installed() {
        eprintln!("SKIPPED: PostgreSQL is not installed (Debian package postgresql)");
        return;
    }
    let postgres = TestPostgres::start();
    let url = postgres.url();
    // One process: the api and the edge on its --listen, node-a on --node-listen.
    let down_after = format!("{}s", DOWN_AFTER.as_secs());
    let first = TestServer::launch(
        common::cove(),
        true,
        &[
            "--warm-pool",
            "0",
            "--database",
            &url,
            "--role",
            "node,api,edge",
            "--node-id",
            "node-a",
            "--node-listen",
            "127.0.0.1:0",
            "--heartbeat",
            HEARTBEAT,
            "--node-down-after",
            &down_after,
        ],
    )
    .await;
    let domain = first
        .url()
        .trim_start_matches("http://")
        .replace("127.0.0.1", "localhost");
    // Another machine's node joins: the api and the edge of the first process use it too.
    let _b = node("node-b", &url, &domain).await;
    let config = ConnectionConfig::new(&first.url(), &first.api_key)
        .unwrap()
        .with_sandbox_url(&first.url());
    let store = cove_server::open_store(first.state_dir(), Some(&url)).unwrap();
    let table = nodes(&url, &["list"]);
    let node_listen = first.node_addr.expect("the node's listener");
    assert!(table.contains(&format!("http://{node_listen}")), "{table}");

    let mut made = Vec::new();
    for n in 0..4 {
        let sandbox = Sandbox::create(&config, offline()).await.unwrap();
        let out = sandbox.commands().run(&format!("echo {n}")).await.unwrap();
        assert_eq!(out.stdout.trim(), n.to_string());
        made.push(sandbox);
        reported(&store, made.len()).await;
    }
    let spread = per_node(&store);
    assert_eq!(spread.get("node-a"), Some(&2), "{spread:?}");
    assert_eq!(spread.get("node-b"), Some(&2), "{spread:?}");
    for sandbox in made {
        assert!(sandbox.kill().await.unwrap());
    }
}

/// A CA (PEM) and a certificate it issued for 127.0.0.1 with its key, written to `dir`:
/// `(ca, cert, key)` paths.
fn issued_for_loopback(dir: &std::path::Path, name: &str) -> [String; 3] {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = ["ca.pem", "cert.pem", "key.pem"].map(|f| dir.join(format!("{name}-{f}")));
    std::fs::write(&paths[0], ca_cert.pem()).unwrap();
    std::fs::write(&paths[1], cert.pem()).unwrap();
    std::fs::write(&paths[2], key.serialize_pem()).unwrap();
    paths.map(|p| p.display().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_serving_tls_are_reached_over_tls_by_the_api_and_the_edge() {
    if !TestPostgres::installed() {
        eprintln!("SKIPPED: PostgreSQL is not installed (Debian package postgresql)");
        return;
    }
    let postgres = TestPostgres::start();
    let url = postgres.url();
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = issued_for_loopback(dir.path(), "nodes");
    let [other_ca, _, _] = issued_for_loopback(dir.path(), "other");
    let gateway = |node_ca: String| {
        let url = url.clone();
        async move {
            TestServer::launch(
                common::cove(),
                false,
                &[
                    "--role",
                    "api,edge",
                    "--database",
                    &url,
                    "--node-ca",
                    &node_ca,
                ],
            )
            .await
        }
    };
    let trusting = gateway(ca).await;
    let domain = trusting
        .url()
        .trim_start_matches("http://")
        .replace("127.0.0.1", "localhost");
    // The node serves TLS; its address (advertised by default) is https.
    let node = node_with(
        "node-tls",
        &url,
        &domain,
        &["--tls-cert", &cert, "--tls-key", &key],
    )
    .await;
    assert!(node.url().starts_with("https://"));
    wait_until(
        "the node to register its https address",
        Duration::from_secs(20),
        || {
            let table = nodes(&url, &["list"]);
            let url = node.url();
            async move { table.contains(&url).then_some(()) }
        },
    )
    .await;

    let config = ConnectionConfig::new(&trusting.url(), &node.api_key)
        .unwrap()
        .with_sandbox_url(&trusting.url());
    // The gateway started before the node made its key: it reads keys again periodically.
    wait_until(
        "the gateway to know the node's key",
        Duration::from_secs(20),
        || {
            let config = config.clone();
            async move { Sandbox::list(&config).await.ok() }
        },
    )
    .await;
    let sandbox = Sandbox::create(&config, offline()).await.unwrap();
    let out = sandbox.commands().run("echo over tls").await.unwrap();
    assert_eq!(out.stdout.trim(), "over tls");
    sandbox
        .files()
        .write("/home/user/t.txt", b"kept".to_vec())
        .await
        .unwrap();
    assert_eq!(
        sandbox.files().read("/home/user/t.txt").await.unwrap(),
        &b"kept"[..]
    );

    // A gateway that trusts another CA does not talk to the node: no create, no call.
    let doubting = gateway(other_ca).await;
    let config = ConnectionConfig::new(&doubting.url(), &node.api_key)
        .unwrap()
        .with_sandbox_url(&doubting.url());
    let err = Sandbox::create(&config, offline()).await.unwrap_err();
    assert!(matches!(err, Error::Api { status: 503, .. }), "{err:?}");
    let info = Sandbox::info_by_id(&config, sandbox.id()).await;
    assert!(info.is_err(), "the untrusted node was reached: {info:?}");
    assert!(sandbox.kill().await.unwrap());
}
