//! A cluster on this one machine (docs/CLUSTER.md): an api and an edge in front of nodes on a
//! PostgreSQL of the benchmark's own, beside a single `cove serve` in the same run. What the
//! two extra hops cost a create and a command, and creates per second with three nodes
//! against one. Every process shares this machine's CPUs, so more nodes add no capacity
//! here: the three-node figure shows what placement and the hops cost, not how a cluster of
//! machines scales.

use std::time::{Duration, Instant};

use cove_sdk::{ConnectionConfig, CreateOptions, Sandbox};
use cove_test_util::{TestPostgres, TestServer};

use crate::{
    concurrency::burst,
    measure::{Report, Result, Settings, latency},
};

/// Clients creating at once in the creates-per-second rows, each this many creates.
const CLIENTS: usize = 10;
const PER_CLIENT: usize = 4;

/// A cluster: the database, its api and edge, and `nodes` nodes.
struct Cluster {
    _postgres: TestPostgres,
    api: TestServer,
    edge: TestServer,
    nodes: Vec<TestServer>,
}

impl Cluster {
    async fn start(cove: &std::path::Path, nodes: usize) -> Self {
        let postgres = TestPostgres::start();
        let url = postgres.url();
        let edge = TestServer::launch(cove, false, &["--role", "edge", "--database", &url]).await;
        let domain = edge
            .url()
            .trim_start_matches("http://")
            .replace("127.0.0.1", "localhost");
        let mut started = Vec::new();
        for n in 0..nodes {
            let id = format!("bench-{n}");
            started.push(
                TestServer::launch(
                    cove,
                    true,
                    &[
                        "--warm-pool",
                        "0",
                        "--domain",
                        &domain,
                        "--database",
                        &url,
                        "--role",
                        "node",
                        "--node-id",
                        &id,
                        "--heartbeat",
                        "500ms",
                    ],
                )
                .await,
            );
        }
        let api = TestServer::launch(cove, false, &["--role", "api", "--database", &url]).await;
        Self {
            _postgres: postgres,
            api,
            edge,
            nodes: started,
        }
    }

    /// What a client of the cluster sets: the api for REST, the edge for sandboxes.
    fn config(&self) -> ConnectionConfig {
        ConnectionConfig::new(&self.api.url(), &self.nodes[0].api_key)
            .expect("a valid configuration")
            .with_sandbox_url(&self.edge.url())
    }

    fn stop(mut self) {
        self.api.stop();
        for node in &mut self.nodes {
            node.stop();
        }
        self.edge.stop();
    }
}

fn options() -> CreateOptions {
    CreateOptions {
        allow_internet_access: Some(false),
        ..Default::default()
    }
}

/// Create → first output, `samples` times one after the other (each sandbox killed before the
/// next create).
async fn create_to_output(
    config: &ConnectionConfig,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        let began = Instant::now();
        let sandbox = Sandbox::create(config, options()).await?;
        sandbox.commands().run("echo ready").await?;
        took.push(began.elapsed());
        sandbox.kill().await?;
    }
    Ok(took)
}

/// `samples` round trips of `true` on one sandbox.
async fn round_trips(sandbox: &Sandbox, samples: usize) -> anyhow::Result<Vec<Duration>> {
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        let began = Instant::now();
        sandbox.commands().run("true").await?;
        took.push(began.elapsed());
    }
    Ok(took)
}

pub async fn all(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    if !TestPostgres::installed() {
        report.skip("cluster: PostgreSQL is not installed (Debian package postgresql)".into());
        return Ok(());
    }
    let samples = (settings.iterations / 10).clamp(20, 100);
    let single = TestServer::start_with_args(&settings.cove, &["--warm-pool", "0"]).await;
    let direct = single.config();
    let one = Cluster::start(&settings.cove, 1).await;
    let through = one.config();

    let baseline = latency(create_to_output(&direct, samples).await?);
    let figure = latency(create_to_output(&through, samples).await?);
    report.results.push(Result {
        name: "cluster: create → first output through the api and the edge (1 node, no warm pool)"
            .into(),
        figure,
        baseline_name: "a single cove serve, no warm pool".into(),
        baseline,
        target: None,
    });

    let on_single = Sandbox::create(&direct, options()).await?;
    let on_cluster = Sandbox::create(&through, options()).await?;
    let trips = samples * 5;
    let baseline = latency(round_trips(&on_single, trips).await?);
    let figure = latency(round_trips(&on_cluster, trips).await?);
    on_single.kill().await?;
    on_cluster.kill().await?;
    report.results.push(Result {
        name: "cluster: command round trip (`true`) through the edge".into(),
        figure,
        baseline_name: "a single cove serve".into(),
        baseline,
        target: None,
    });

    let one_node = burst(&through, CLIENTS, PER_CLIENT, false).await?;
    one.stop();
    let three = Cluster::start(&settings.cove, 3).await;
    let three_nodes = burst(&three.config(), CLIENTS, PER_CLIENT, false).await?;
    three.stop();
    report.results.push(Result {
        name: format!(
            "cluster: creates per second, {CLIENTS} clients × {PER_CLIENT} through the api, 3 nodes on this one machine"
        ),
        figure: three_nodes,
        baseline_name: "the same through the api with 1 node".into(),
        baseline: one_node,
        target: None,
    });
    report.note(
        "cluster: all nodes, the api, the edge and PostgreSQL share this machine's 2 CPUs, so three nodes here add no capacity: the creates-per-second row shows what placement over three costs, not how machines scale".into(),
    );
    Ok(())
}
