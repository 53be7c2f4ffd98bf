//! What `cove serve` tells Prometheus: sandboxes by state and by team, creates and kills with
//! their latency, the warm pool's hits and misses, proxied requests and bytes, failed calls to
//! agents, and refused requests and connections. Counters are kept as things happen; the
//! gauges of sandboxes are counted from the registry when scraped.
//!
//! Who may read it is decided in [`endpoint`]: the numbers name every team, so they are
//! served on an operator's own listener (`--metrics-listen`) or behind a token of their own
//! (`--metrics-token`), never to an API key.

mod counted;
pub mod endpoint;

use std::{
    sync::{
        Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

pub use self::counted::Counted;

/// Latency buckets of creates and kills: 1 ms to about 16 s, doubling (a warm create takes a
/// few milliseconds, a cold one tens, a create that waits for a turn seconds).
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamStateLabels {
    team: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamResultLabels {
    team: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyLabels {
    target: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EgressLabels {
    by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    code: &'static str,
    by: &'static str,
}

/// How a create got its sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateSource {
    /// A warm sandbox was handed over.
    Warm,
    /// A sandbox was started for it.
    Cold,
}

/// How a create or kill ended, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Over a limit or the server busy (429, 503, 507).
    Refused,
    /// The request was wrong (4xx).
    Invalid,
    /// The server or the sandbox failed (5xx).
    Failed,
}

impl Outcome {
    /// The outcome a request answered with `status` had.
    pub fn of(status: http::StatusCode) -> Self {
        if refusal_code(status).is_some() {
            Self::Refused
        } else if status.is_client_error() {
            Self::Invalid
        } else if status.is_server_error() {
            Self::Failed
        } else {
            Self::Ok
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Invalid => "invalid",
            Self::Failed => "failed",
        }
    }
}

/// Which part of the server a failed call to an agent came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentOp {
    /// Forwarding a client's request.
    Proxy,
    /// Handing a warm sandbox its environment.
    Init,
    /// Sampling its resource use.
    Metrics,
}

/// Where proxied traffic went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyTarget {
    /// The agent's own port (files, processes).
    Agent,
    /// A port a program in the sandbox listens on.
    Port,
}

/// Every metric of one server.
pub struct Metrics {
    registry: Registry,
    /// Serialises scrapes: the gauges are cleared and filled again for each.
    scrape: Mutex<()>,
    sandboxes: Family<StateLabels, Gauge>,
    team_sandboxes: Family<TeamStateLabels, Gauge>,
    starting: AtomicI64,
    creates: Family<TeamResultLabels, Counter>,
    create_seconds: Family<SourceLabels, Histogram>,
    kills: Family<TeamResultLabels, Counter>,
    kill_seconds: Histogram,
    warm_pool: Family<ResultLabels, Counter>,
    proxy_requests: Family<ProxyLabels, Counter>,
    proxy_bytes: Family<DirectionLabels, Counter>,
    agent_errors: Family<OpLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    egress_refused: Family<EgressLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The sandboxes of the server as counted at a scrape.
#[derive(Clone, Debug, Default)]
pub struct Census {
    /// (team, paused) of every running or paused sandbox.
    pub sandboxes: Vec<(String, bool)>,
    /// Warm sandboxes ready to be handed out.
    pub warm_ready: usize,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cove");
        let sandboxes = Family::<StateLabels, Gauge>::default();
        registry.register(
            "sandboxes",
            "Sandboxes by state: running, paused, starting (being created), warm (ready in the pool)",
            sandboxes.clone(),
        );
        let team_sandboxes = Family::<TeamStateLabels, Gauge>::default();
        registry.register(
            "team_sandboxes",
            "Running and paused sandboxes of each team",
            team_sandboxes.clone(),
        );
        let creates = Family::<TeamResultLabels, Counter>::default();
        registry.register(
            "sandbox_creates",
            "Creates asked for, by team and result (ok, refused, invalid, failed)",
            creates.clone(),
        );
        let create_seconds = Family::<SourceLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "sandbox_create_seconds",
            "Time of successful creates, by source (warm: from the pool, cold: started for it)",
            create_seconds.clone(),
        );
        let kills = Family::<TeamResultLabels, Counter>::default();
        registry.register(
            "sandbox_kills",
            "Kills asked for, by team and result",
            kills.clone(),
        );
        let kill_seconds = Histogram::new(latency_buckets());
        registry.register(
            "sandbox_kill_seconds",
            "Time of successful kills",
            kill_seconds.clone(),
        );
        let warm_pool = Family::<ResultLabels, Counter>::default();
        registry.register(
            "warm_pool",
            "Creates that could take a warm sandbox: hit (took one), miss (started their own)",
            warm_pool.clone(),
        );
        let proxy_requests = Family::<ProxyLabels, Counter>::default();
        registry.register(
            "proxy_requests",
            "Requests proxied to sandboxes, by target (agent, port) and status class",
            proxy_requests.clone(),
        );
        let proxy_bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "proxy_bytes",
            "Body bytes proxied: received (from clients to sandboxes) and sent (back)",
            proxy_bytes.clone(),
        );
        let agent_errors = Family::<OpLabels, Counter>::default();
        registry.register(
            "agent_errors",
            "Calls to sandboxes' agents that failed, by operation (proxy, init, metrics)",
            agent_errors.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refusals",
            "Requests and connections refused for lack of room, by status code and by what \
             refused them (api: limits on sandboxes, connections: the front door)",
            refusals.clone(),
        );
        let egress_refused = Family::<EgressLabels, Counter>::default();
        registry.register(
            "egress_refused_connections",
            "Connections and datagrams of sandboxes with their own egress rules that the egress \
             filter refused, by what refused them (server: the host and private ranges, which \
             no sandbox opens; policy: the sandbox's denyOut)",
            egress_refused.clone(),
        );
        // Series a dashboard shows from the start, at zero until something happens.
        for by in ["server", "policy"] {
            drop(egress_refused.get_or_create(&EgressLabels { by }));
        }
        for result in ["hit", "miss"] {
            drop(warm_pool.get_or_create(&ResultLabels { result }));
        }
        for direction in ["received", "sent"] {
            drop(proxy_bytes.get_or_create(&DirectionLabels { direction }));
        }
        for code in ["429", "503", "507"] {
            drop(refusals.get_or_create(&RefusalLabels { code, by: "api" }));
        }
        Self {
            registry,
            scrape: Mutex::new(()),
            sandboxes,
            team_sandboxes,
            starting: AtomicI64::new(0),
            creates,
            create_seconds,
            kills,
            kill_seconds,
            warm_pool,
            proxy_requests,
            proxy_bytes,
            agent_errors,
            refusals,
            egress_refused,
        }
    }

    /// Counts `count` connections of a sandbox refused by its egress filter: by the
    /// server's rules (`server`) or by its own `denyOut` (`policy`).
    pub fn egress_refused(&self, by_server: bool, count: u64) {
        let by = if by_server { "server" } else { "policy" };
        self.egress_refused
            .get_or_create(&EgressLabels { by })
            .inc_by(count);
    }

    /// Counts a create of `team` that ended as `outcome`.
    pub fn created(&self, team: &str, outcome: Outcome) {
        self.creates
            .get_or_create(&TeamResultLabels {
                team: team.to_owned(),
                result: outcome.label(),
            })
            .inc();
    }

    /// Times a successful create.
    pub fn create_took(&self, source: CreateSource, took: Duration) {
        let source = match source {
            CreateSource::Warm => "warm",
            CreateSource::Cold => "cold",
        };
        self.create_seconds
            .get_or_create(&SourceLabels { source })
            .observe(took.as_secs_f64());
    }

    /// Counts a kill of `team`'s sandbox; times it when it worked.
    pub fn killed(&self, team: &str, outcome: Outcome, took: Duration) {
        self.kills
            .get_or_create(&TeamResultLabels {
                team: team.to_owned(),
                result: outcome.label(),
            })
            .inc();
        if outcome == Outcome::Ok {
            self.kill_seconds.observe(took.as_secs_f64());
        }
    }

    /// Counts a create that could use the warm pool.
    pub fn warm_pool(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.warm_pool.get_or_create(&ResultLabels { result }).inc();
    }

    /// A sandbox is being started for a create until the guard is dropped.
    pub fn starting(&self) -> StartingGuard<'_> {
        self.starting.fetch_add(1, Ordering::Relaxed);
        StartingGuard(self)
    }

    /// Counts a proxied request by its answer's status.
    pub fn proxied(&self, target: ProxyTarget, status: http::StatusCode) {
        let target = match target {
            ProxyTarget::Agent => "agent",
            ProxyTarget::Port => "port",
        };
        let code = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.proxy_requests
            .get_or_create(&ProxyLabels { target, code })
            .inc();
    }

    /// The counter of proxied body bytes received from clients.
    pub fn bytes_received(&self) -> Counter {
        self.proxy_bytes.get_or_create_owned(&DirectionLabels {
            direction: "received",
        })
    }

    /// The counter of proxied body bytes sent to clients.
    pub fn bytes_sent(&self) -> Counter {
        self.proxy_bytes
            .get_or_create_owned(&DirectionLabels { direction: "sent" })
    }

    /// Counts a failed call to an agent.
    pub fn agent_error(&self, op: AgentOp) {
        let op = match op {
            AgentOp::Proxy => "proxy",
            AgentOp::Init => "init",
            AgentOp::Metrics => "metrics",
        };
        self.agent_errors.get_or_create(&OpLabels { op }).inc();
    }

    /// Counts a request the API refused with `status` (429, 503, 507).
    pub fn api_refused(&self, status: http::StatusCode) {
        if let Some(code) = refusal_code(status) {
            self.refusals
                .get_or_create(&RefusalLabels { code, by: "api" })
                .inc();
        }
    }

    /// The counter of connections the front door refused (answered 503).
    pub fn connections_refused(&self) -> Counter {
        self.refusals.get_or_create_owned(&RefusalLabels {
            code: "503",
            by: "connections",
        })
    }

    /// The metrics in the OpenMetrics text format (which Prometheus reads), with the
    /// sandboxes counted as `census` says.
    pub fn render(&self, census: &Census) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let (mut running, mut paused) = (0i64, 0i64);
        self.team_sandboxes.clear();
        for (team, is_paused) in &census.sandboxes {
            let state = if *is_paused {
                paused += 1;
                "paused"
            } else {
                running += 1;
                "running"
            };
            self.team_sandboxes
                .get_or_create(&TeamStateLabels {
                    team: team.clone(),
                    state,
                })
                .inc();
        }
        let starting = self.starting.load(Ordering::Relaxed).max(0);
        let warm = i64::try_from(census.warm_ready).unwrap_or(i64::MAX);
        for (state, count) in [
            ("running", running),
            ("paused", paused),
            ("starting", starting),
            ("warm", warm),
        ] {
            self.sandboxes
                .get_or_create(&StateLabels { state })
                .set(count);
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The status codes counted as refusals for lack of room.
fn refusal_code(status: http::StatusCode) -> Option<&'static str> {
    match status.as_u16() {
        429 => Some("429"),
        503 => Some("503"),
        507 => Some("507"),
        _ => None,
    }
}

/// Counts a sandbox as starting while it lives.
#[derive(Debug)]
pub struct StartingGuard<'a>(&'a Metrics);

impl Drop for StartingGuard<'_> {
    fn drop(&mut self) {
        self.0.starting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_sandboxes_by_state_and_team() {
        let metrics = Metrics::new();
        let _starting = metrics.starting();
        metrics.created("team-a", Outcome::Ok);
        metrics.create_took(CreateSource::Warm, Duration::from_millis(3));
        metrics.api_refused(http::StatusCode::TOO_MANY_REQUESTS);
        metrics.api_refused(http::StatusCode::NOT_FOUND);
        let census = Census {
            sandboxes: vec![
                ("team-a".into(), false),
                ("team-a".into(), true),
                ("team-b".into(), false),
            ],
            warm_ready: 2,
        };
        let text = metrics.render(&census);
        for line in [
            "cove_sandboxes{state=\"running\"} 2",
            "cove_sandboxes{state=\"paused\"} 1",
            "cove_sandboxes{state=\"starting\"} 1",
            "cove_sandboxes{state=\"warm\"} 2",
            "cove_team_sandboxes{team=\"team-a\",state=\"paused\"} 1",
            "cove_team_sandboxes{team=\"team-b\",state=\"running\"} 1",
            "cove_sandbox_creates_total{team=\"team-a\",result=\"ok\"} 1",
            "cove_sandbox_create_seconds_count{source=\"warm\"} 1",
            "cove_refusals_total{code=\"429\",by=\"api\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(!text.contains("code=\"404\""));
        // A team gone since is not reported any more.
        let text = metrics.render(&Census::default());
        assert!(!text.contains("team=\"team-b\",state"), "{text}");
    }
}
