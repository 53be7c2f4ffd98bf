//! `cove serve`: the control plane, proxy and sandboxes on one port.

use std::{net::SocketAddr, num::NonZeroUsize, path::PathBuf, time::Duration};

use anyhow::Context;
use cove_runtime::egress::{Cidr, EgressConfig, Rules, RulesError};
use cove_server::{
    OperationsConfig, Server, ServerConfig,
    front::{FrontConfig, Timeouts},
    gateway::{Gateway, GatewayConfig},
    tls::TlsSource,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0: any free port; the line `Cove listening on …` says
    /// which)
    #[arg(long, env = "COVE_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    #[command(flatten)]
    state: StateDir,
    /// Domain of sandbox hosts, `{port}-{sandboxID}.{domain}` (default: localhost:<port>).
    #[arg(long, env = "COVE_DOMAIN")]
    domain: Option<String>,
    /// An API key to accept (for scripts and tests); repeatable.
    #[arg(
        long = "api-key",
        env = "COVE_API_KEY",
        hide_env_values = true,
        value_delimiter = ','
    )]
    api_keys: Vec<String>,
    /// Kill all sandboxes when the server stops (default: they keep running).
    #[arg(long)]
    kill_on_exit: bool,
    /// Most sandboxes this server runs at once.
    #[arg(long, env = "COVE_MAX_SANDBOXES", default_value_t = 1000)]
    max_sandboxes: usize,
    /// The most memory one sandbox may ask for, in MiB (default: the host's memory).
    #[arg(long, env = "COVE_MAX_SANDBOX_MEMORY_MB", value_parser = clap::value_parser!(u64).range(64..))]
    max_sandbox_memory_mb: Option<u64>,
    /// The most CPUs one sandbox may ask for (default: the host's CPUs).
    #[arg(long, env = "COVE_MAX_SANDBOX_CPUS", value_parser = clap::value_parser!(u32).range(1..))]
    max_sandbox_cpus: Option<u32>,
    /// Sandboxes started at once; more creates wait for a turn (default: twice the host's
    /// CPUs, at least 4).
    #[arg(long, env = "COVE_MAX_STARTING", value_parser = clap::value_parser!(u32).range(1..))]
    max_starting: Option<u32>,
    /// Creates that may wait for a turn; more are answered 503 with Retry-After.
    #[arg(long, env = "COVE_MAX_WAITING_CREATES")]
    max_waiting_creates: Option<u32>,
    /// Each sandbox's disk quota (its writable layer), in MiB.
    #[arg(long, env = "COVE_SANDBOX_DISK_MB", default_value_t = 4096)]
    sandbox_disk_mb: u64,
    /// The quota of a new volume that names none, in MiB.
    #[arg(long, env = "COVE_VOLUME_MB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(8..))]
    volume_mb: u64,
    /// The size each sandbox's log (what its agent writes) is kept under, in KiB: past it,
    /// the older half is dropped.
    #[arg(long, env = "COVE_SANDBOX_LOG_KB", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(16..))]
    sandbox_log_kb: u64,
    /// Set no_new_privs in every sandbox: nothing gains privileges on exec, so setuid
    /// programs such as `sudo` stop working (run commands as `root` directly instead).
    #[arg(long, env = "COVE_NO_NEW_PRIVILEGES")]
    no_new_privileges: bool,
    /// Sandboxes kept started ahead of demand, of each kind (with and without internet
    /// access): a create that finds one takes a few milliseconds less, and its first
    /// `run_code` finds the Python kernel running. 0 turns this off.
    #[arg(long, env = "COVE_WARM_POOL", default_value_t = 2)]
    warm_pool: usize,
    /// The backend sandboxes run on unless their create metadata names another
    /// (`cove.runtime`): `namespace` (Linux namespaces around the host's kernel) or `gvisor`
    /// (gVisor's user-space kernel, runsc: stronger isolation, memory kept through pauses,
    /// docs/SECURITY.md). With runsc installed, both are
    /// available side by side whichever is the default.
    #[arg(long, env = "COVE_RUNTIME", value_enum, default_value_t = RuntimeArg::Namespace)]
    runtime: RuntimeArg,
    /// Opens a private address range (CIDR, e.g. 10.20.0.0/16) to sandboxes with internet
    /// access; repeatable. Private ranges (RFC 1918, CGNAT 100.64/10, link-local, IPv6
    /// unique local) are closed by default. Loopback and the host's own addresses can never
    /// be opened: they stay refused whatever is given here.
    #[arg(
        long = "allow-private-egress",
        env = "COVE_ALLOW_PRIVATE_EGRESS",
        value_name = "CIDR",
        value_delimiter = ',',
        value_parser = openable_range
    )]
    allow_private_egress: Vec<Option<Cidr>>,
    /// The name server (IP:PORT) Cove's egress proxy asks for the addresses of names that
    /// sandboxes with domain rules (`allowOut: ["pypi.org"]`) connect to; repeatable, tried
    /// in order. By default the host's name servers, from /etc/resolv.conf.
    #[arg(
        long = "egress-resolver",
        env = "COVE_EGRESS_RESOLVER",
        value_name = "IP:PORT",
        value_delimiter = ','
    )]
    egress_resolver: Vec<std::net::SocketAddr>,
    /// A PEM file of CA certificates trusted, besides the host's, for the destinations of
    /// HTTPS requests that sandboxes' `rules` set headers on (Cove's egress proxy connects
    /// to them itself); repeatable.
    #[arg(
        long = "egress-ca-file",
        env = "COVE_EGRESS_CA_FILE",
        value_name = "PEM",
        value_delimiter = ','
    )]
    egress_ca_file: Vec<PathBuf>,
    #[command(flatten)]
    front: FrontArgs,
    #[command(flatten)]
    operations: OperationsArgs,
    #[command(flatten)]
    templates: TemplateArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Taking part in a cluster (docs/CLUSTER.md).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Cluster")]
struct ClusterArgs {
    /// What this process is in a cluster sharing `--database` (PostgreSQL): `node` runs
    /// sandboxes on this machine, registers itself and reports every `--heartbeat`; `edge`
    /// passes sandbox traffic to the node that runs each sandbox (give the nodes its
    /// `--domain`); `api` serves the cluster's REST API, placing creates on nodes; `api,edge`
    /// both on one listener; `node,api,edge` (or `node,api`, `node,edge`) a node beside them
    /// in one process, on `--node-listen`. Without it, a server on its own.
    #[arg(long, env = "COVE_ROLE", value_enum, value_delimiter = ',')]
    role: Vec<RoleArg>,
    /// With `--role node` and `api` or `edge` in one process: where the node's own API
    /// listens (the api and the edge of every process reach it there; give its address with
    /// `--advertise` unless it is a specific one); `--listen` is the api's and edge's.
    #[arg(long, env = "COVE_NODE_LISTEN", value_name = "ADDR", requires = "role")]
    node_listen: Option<SocketAddr>,
    /// For the api and the edge: the CA certificates (PEM) that nodes advertised at
    /// `https://` addresses (nodes serving --tls-cert) have their certificates from
    /// (default: the system's CAs)
    #[arg(long, env = "COVE_NODE_CA", value_name = "PEM", requires = "role")]
    node_ca: Option<PathBuf>,
    /// This node's name in the cluster (default: the host's name).
    #[arg(long, env = "COVE_NODE_ID", requires = "role")]
    node_id: Option<String>,
    /// Where the rest of the cluster reaches this node (default: `http://<--listen>`).
    #[arg(long, env = "COVE_ADVERTISE", requires = "role")]
    advertise: Option<String>,
    /// How often this node reports itself.
    #[arg(long, env = "COVE_HEARTBEAT", value_parser = duration, default_value = "2s", requires = "role")]
    heartbeat: Duration,
    /// How long without a report before a node counts as down (its sandboxes lost until it
    /// comes back).
    #[arg(long, env = "COVE_NODE_DOWN_AFTER", value_parser = duration, default_value = "10s", requires = "role")]
    node_down_after: Duration,
}

/// Whether `address` is `http://HOST:PORT` or `https://HOST:PORT` (or without the port), with
/// nothing after it but a slash.
fn valid_address(address: &str) -> bool {
    let Some(rest) = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let port_ok = || {
        authority
            .rsplit_once(':')
            .is_none_or(|(_, port)| port.parse::<u16>().is_ok())
    };
    !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@', ' '])
        && (authority.parse::<SocketAddr>().is_ok() || port_ok())
}

/// The cluster's database, which `role` needs: a PostgreSQL one.
fn shared_database<'a>(role: &str, database: Option<&'a str>) -> anyhow::Result<&'a str> {
    database
        .filter(|d| matches!(cove_db::Location::parse(d), cove_db::Location::Postgres(_)))
        .with_context(|| {
            format!("--role {role} needs --database postgres://…: the parts of a cluster share their state there")
        })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RoleArg {
    /// Runs sandboxes on this machine.
    Node,
    /// Routes sandbox traffic to the nodes.
    Edge,
    /// The cluster's REST API: places creates on nodes, passes the rest to them.
    Api,
}

/// What one `cove serve` process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// A server on its own, or a node: sandboxes on this machine.
    Server,
    /// The api, the edge or both: no sandboxes here.
    Gateway { api: bool, edge: bool },
    /// A node on `node_listen`, and the api, the edge or both on `--listen`.
    NodeBeside {
        api: bool,
        edge: bool,
        node_listen: SocketAddr,
    },
}

impl ClusterArgs {
    /// What this process runs, as its roles say; checked.
    fn plan(&self, listen: SocketAddr) -> anyhow::Result<Plan> {
        let (api, edge) = (
            self.role.contains(&RoleArg::Api),
            self.role.contains(&RoleArg::Edge),
        );
        let node = self.role.contains(&RoleArg::Node);
        match (node, api || edge, self.node_listen) {
            (_, false, Some(_)) | (false, _, Some(_)) => anyhow::bail!(
                "--node-listen is for a node beside the api or the edge in one process (--role node,api,edge)"
            ),
            (true, true, None) => anyhow::bail!(
                "--role {} serves the api or the edge on --listen and the node on another address: give it with --node-listen ADDR",
                self.role_names()
            ),
            (true, true, Some(node_listen)) => {
                // Port 0 is any free port: two of them differ.
                anyhow::ensure!(
                    node_listen != listen || listen.port() == 0,
                    "--node-listen must differ from --listen ({listen}): the node and the api/edge have a listener each"
                );
                Ok(Plan::NodeBeside {
                    api,
                    edge,
                    node_listen,
                })
            }
            (false, true, None) => Ok(Plan::Gateway { api, edge }),
            (_, false, None) => Ok(Plan::Server),
        }
    }

    fn role_names(&self) -> String {
        self.role
            .iter()
            .map(|r| match r {
                RoleArg::Node => "node",
                RoleArg::Edge => "edge",
                RoleArg::Api => "api",
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// This process's node settings, checked against the rest of the configuration.
    fn node(
        &self,
        database: Option<&str>,
        listen: SocketAddr,
        tls: bool,
    ) -> anyhow::Result<Option<cove_server::cluster::NodeConfig>> {
        if !self.role.contains(&RoleArg::Node) {
            return Ok(None);
        }
        shared_database("node", database)?;
        anyhow::ensure!(
            self.node_down_after > self.heartbeat * 2,
            "--node-down-after must be more than twice --heartbeat, or a node that is only slow counts as down"
        );
        let id = match &self.node_id {
            Some(id) => id.clone(),
            None => rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
        };
        anyhow::ensure!(
            !id.is_empty()
                && id.len() <= 63
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
            "--node-id {id:?}: use 1 to 63 letters, digits, '-', '_' or '.'"
        );
        anyhow::ensure!(
            self.advertise.is_some() || !listen.ip().is_unspecified(),
            "--role node listening on {listen} needs --advertise http://ADDRESS:{}: the address the rest of the cluster reaches this node at",
            listen.port()
        );
        if let Some(advertise) = &self.advertise {
            let valid = valid_address(advertise);
            anyhow::ensure!(
                valid,
                "--advertise {advertise:?}: give the node's address as http://HOST:PORT (https://HOST:PORT when it serves --tls-cert)"
            );
        }
        Ok(Some(cove_server::cluster::NodeConfig {
            id,
            address: self.advertise.clone().unwrap_or_else(|| {
                let scheme = if tls { "https" } else { "http" };
                format!("{scheme}://{listen}")
            }),
            heartbeat: self.heartbeat,
            down_after: self.node_down_after,
        }))
    }
}

/// Metrics and TLS (docs/OPERATIONS.md).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Operations")]
struct OperationsArgs {
    /// Serve `GET /metrics` (Prometheus) on a listener of its own, without authentication:
    /// give an address only the monitoring can reach (e.g. 127.0.0.1:9464)
    #[arg(long, env = "COVE_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve `GET /metrics` on the main port to requests with `Authorization: Bearer TOKEN`
    /// (without it or --metrics-listen, /metrics answers 404: the metrics name every team)
    #[arg(
        long,
        env = "COVE_METRICS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    metrics_token: Option<String>,
    /// Serve HTTPS: `self-signed` makes a local CA once in the state directory (tls/ca.pem,
    /// to be trusted by clients) and a certificate for the domain and every name under it
    #[arg(long, env = "COVE_TLS", value_name = "MODE", value_parser = ["self-signed"],
          conflicts_with_all = ["tls_cert", "tls_key"])]
    tls: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key
    #[arg(long, env = "COVE_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, env = "COVE_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl OperationsArgs {
    fn config(&self) -> OperationsConfig {
        let tls = match (&self.tls, &self.tls_cert, &self.tls_key) {
            (Some(_), _, _) => Some(TlsSource::SelfSigned),
            (None, Some(cert), Some(key)) => Some(TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        OperationsConfig {
            metrics_listen: self.metrics_listen,
            metrics_token: self.metrics_token.clone().filter(|t| !t.is_empty()),
            tls,
        }
    }
}

/// Template builds and the warm sandboxes of templates.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Templates")]
struct TemplateArgs {
    /// A mirror of a registry, tried before it when pulling the images templates are built
    /// from, as Docker and containerd have them: `docker.io=http://127.0.0.1:5000`
    /// (REGISTRY=URL); repeatable, tried in order
    #[arg(
        long = "registry-mirror",
        env = "COVE_REGISTRY_MIRROR",
        value_name = "REGISTRY=URL",
        value_delimiter = ','
    )]
    registry_mirrors: Vec<cove_image::Mirror>,
    /// Warm sandboxes kept in all, over every template (each template used lately keeps
    /// --warm-pool of each kind, within this)
    #[arg(long, env = "COVE_WARM_POOL_TOTAL", default_value_t = 8)]
    warm_pool_total: usize,
    /// Which warm sandboxes start their Python kernel before they are handed out, so that
    /// their first run_code answers at once (each costs about 1 s of CPU to start and
    /// 60 MiB kept); creates of the code-interpreter template are what E2B's
    /// code-interpreter SDKs make
    #[arg(long, env = "COVE_WARM_KERNELS", value_enum, value_name = "WHICH",
          default_value_t = WarmKernelsArg::CodeInterpreter,
          num_args = 0..=1, default_missing_value = "always")]
    warm_kernels: WarmKernelsArg,
    /// Template builds that run at once; more wait for their turn
    #[arg(long, env = "COVE_CONCURRENT_BUILDS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    concurrent_builds: u32,
    /// The largest upload of build files or of an image archive, in MiB
    #[arg(long, env = "COVE_MAX_UPLOAD_MB", default_value_t = 8192)]
    max_upload_mb: u64,
    /// Certificates built templates trust besides their image's own (a PEM file, or a
    /// directory of *.crt files): the CA of a TLS-intercepting egress proxy, as the host trusts
    /// it. Default: the host's locally added CAs (Debian's place for them); "" for none
    #[arg(
        long,
        env = "COVE_TEMPLATE_CA_CERTS",
        default_value = "/usr/local/share/ca-certificates"
    )]
    template_ca_certs: PathBuf,
    /// Where built templates' layers are stored once for every node of a cluster, which
    /// fetch and keep them on first use: s3://BUCKET/PREFIX (S3 or a compatible server;
    /// credentials, region and endpoint from the AWS_* variables: AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT, AWS_ALLOW_HTTP=true), or a directory
    /// (file:///PATH, or a path) shared by the nodes
    #[arg(long, env = "COVE_OBJECT_STORE", value_name = "URL")]
    object_store: Option<String>,
    /// How long layers and snapshots no template or snapshot needs any more stay in the
    /// object store before the hourly collection (or `cove template gc`) removes them
    #[arg(long, env = "COVE_OBJECT_STORE_KEEP_FOR", value_parser = duration, default_value = "1h", requires = "object_store")]
    object_store_keep_for: Duration,
}

/// A range `--allow-private-egress` may open (none for an empty value: an empty variable).
fn openable_range(text: &str) -> Result<Option<Cidr>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let cidr: Cidr = text.parse().map_err(|e: RulesError| e.to_string())?;
    Rules::new(&[cidr]).map_err(|e| e.to_string())?;
    Ok(Some(cidr))
}

/// Connection limits and timeouts (docs/SECURITY.md, "Overload").
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Connections")]
struct FrontArgs {
    /// Client connections open at once; more are refused with 503 [default: from the
    /// open-files limit: half of what its reserve leaves, at most 16384]
    #[arg(long, env = "COVE_MAX_CONNECTIONS")]
    max_connections: Option<NonZeroUsize>,
    /// Client connections open at once from one address (IPv6: one /64) [default: half of
    /// --max-connections]
    #[arg(long, env = "COVE_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<NonZeroUsize>,
    /// The open-files limit (RLIMIT_NOFILE) the server sets for itself [default: its hard
    /// limit, raised to 1048576 when running as root]
    #[arg(long, env = "COVE_MAX_OPEN_FILES", value_parser = clap::value_parser!(u64).range(64..))]
    max_open_files: Option<u64>,
    /// A request's headers must arrive within this (from the connection's start, or from the
    /// first byte of a next request)
    #[arg(long, env = "COVE_HEADER_READ_TIMEOUT", value_parser = duration,
          default_value = "20s")]
    header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this
    #[arg(long, env = "COVE_IDLE_TIMEOUT", value_parser = duration,
          default_value = "2m")]
    idle_timeout: Duration,
    /// A request body that sends nothing for this long (while it is being read) is aborted
    #[arg(long, env = "COVE_BODY_READ_TIMEOUT", value_parser = duration,
          default_value = "1m")]
    body_read_timeout: Duration,
    /// An upgraded connection (WebSocket) that moves no byte either way for this long is closed
    #[arg(long, env = "COVE_UPGRADE_IDLE_TIMEOUT", value_parser = duration,
          default_value = "15m")]
    upgrade_idle_timeout: Duration,
}

impl FrontArgs {
    fn config(&self) -> FrontConfig {
        FrontConfig {
            max_connections: self.max_connections.map(NonZeroUsize::get),
            max_connections_per_ip: self.max_connections_per_ip.map(NonZeroUsize::get),
            max_open_files: self.max_open_files,
            timeouts: Timeouts {
                header_read: self.header_read_timeout,
                idle: self.idle_timeout,
                body_read: self.body_read_timeout,
                upgrade_idle: self.upgrade_idle_timeout,
            },
        }
    }
}

/// A timeout: `20s`, `2m`, `1h30m`; not zero.
fn duration(raw: &str) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(raw).map_err(|err| err.to_string())?;
    if parsed.is_zero() {
        return Err("a timeout must be longer than zero".into());
    }
    Ok(parsed)
}

/// `--state-dir` and `--database`, shared by the commands that use the server's state.
#[derive(Debug, clap::Args)]
pub struct StateDir {
    /// Where state lives: the SQLite database, templates, sandboxes' writable layers.
    #[arg(long = "state-dir", env = "COVE_STATE_DIR", global = true)]
    path: Option<PathBuf>,
    /// The state database, when not the SQLite file in the state directory: a PostgreSQL
    /// server (`postgres://user:password@host:port/database`) that several Cove processes
    /// share.
    #[arg(long = "database", env = "COVE_DATABASE", global = true)]
    pub database: Option<String>,
}

impl StateDir {
    /// Opens the state database these name.
    pub fn open_store(&self) -> anyhow::Result<cove_server::store::Store> {
        let dir = self.resolve()?;
        let location = cove_server::database(&dir, self.database.as_deref());
        cove_server::open_store(&dir, self.database.as_deref())
            .with_context(|| format!("cannot open the state in {}", location.redacted()))
    }

    /// The given directory, else `$XDG_DATA_HOME/cove`, else `~/.local/share/cove`.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.path {
            return Ok(path.clone());
        }
        if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(data).join("cove"));
        }
        let home = std::env::var_os("HOME").context("no --state-dir given and $HOME is not set")?;
        Ok(PathBuf::from(home).join(".local/share/cove"))
    }
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let plan = args.cluster.plan(args.listen)?;
    if let Plan::Gateway { api, edge } = plan {
        return run_gateway(args, api, edge);
    }
    // Named, so that `top -H` and profiles tell the server's threads from its agents'.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("cove-serve")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Beside a node, the api or the edge listens first: the node's sandbox hosts are named
    // after its port (the one it got, for --listen 127.0.0.1:0). It reads the keys only
    // once the node has started and stored its own.
    let beside = match plan {
        Plan::NodeBeside {
            api,
            edge,
            node_listen,
        } => {
            let roles = gateway_roles(api, edge);
            let _entered = runtime.enter();
            let gateway = Gateway::listen(gateway_config(&args, api, edge)?)
                .with_context(|| format!("cannot start the {roles}"))?;
            Some((gateway, roles, node_listen))
        }
        _ => None,
    };
    for file in &args.egress_ca_file {
        std::fs::File::open(file)
            .with_context(|| format!("cannot read --egress-ca-file {}", file.display()))?;
    }
    // Beside the api or the edge, the node listens on its own address, without TLS (that
    // is the api's and edge's), its sandbox hosts under their domain.
    let listen = beside.as_ref().map_or(args.listen, |(_, _, at)| *at);
    let mut operations = args.operations.config();
    let mut domain = args.domain.clone();
    if let Some((gateway, _, _)) = &beside {
        operations.tls = None;
        let port = gateway
            .local_addr()
            .context("cannot read the listen address")?
            .port();
        domain = domain.or_else(|| Some(format!("localhost:{port}")));
    }
    let node = args.cluster.node(
        args.state.database.as_deref(),
        listen,
        operations.tls.is_some(),
    )?;
    let config = ServerConfig {
        listen,
        state_dir: args.state.resolve()?,
        database: args.state.database.clone(),
        node,
        domain,
        api_keys: args
            .api_keys
            .into_iter()
            .filter(|k| !k.is_empty())
            .collect(),
        kill_on_exit: args.kill_on_exit,
        max_sandboxes: args.max_sandboxes,
        max_sandbox_memory_mb: args.max_sandbox_memory_mb,
        max_sandbox_cpus: args.max_sandbox_cpus,
        max_starting: args.max_starting.map(|n| n as usize),
        max_waiting: args.max_waiting_creates.map(|n| n as usize),
        no_new_privs: args.no_new_privileges,
        disk_mb: args.sandbox_disk_mb,
        volume_mb: args.volume_mb,
        log_kb: args.sandbox_log_kb,
        warm: args.warm_pool,
        runtime: match args.runtime {
            RuntimeArg::Namespace => cove_server::RuntimeKind::Namespace,
            RuntimeArg::Gvisor => cove_server::RuntimeKind::Gvisor,
        },
        exe: std::env::current_exe().context("cannot find the cove binary")?,
        egress: EgressConfig {
            allow_private: args.allow_private_egress.into_iter().flatten().collect(),
            resolvers: args.egress_resolver,
            upstream_roots: args.egress_ca_file,
            ..EgressConfig::default()
        },
        front: args.front.config(),
        operations,
        templates: cove_server::TemplatesConfig {
            registry_mirrors: args.templates.registry_mirrors,
            warm_total: args.templates.warm_pool_total,
            warm_kernels: match args.templates.warm_kernels {
                WarmKernelsArg::Never => cove_server::WarmKernels::Never,
                WarmKernelsArg::CodeInterpreter => cove_server::WarmKernels::CodeInterpreter,
                WarmKernelsArg::Always => cove_server::WarmKernels::Always,
            },
            concurrent_builds: args.templates.concurrent_builds as usize,
            max_upload_mb: args.templates.max_upload_mb,
            ca_certs: Some(args.templates.template_ca_certs).filter(|p| !p.as_os_str().is_empty()),
            object_store: args.templates.object_store,
            object_store_keep_for: args.templates.object_store_keep_for,
        },
    };
    let tls = config.operations.tls.is_some();
    runtime.block_on(async {
        let server = Server::bind(config)
            .await
            .context("cannot start the server")?;
        let addr = server
            .local_addr()
            .context("cannot read the listen address")?;
        if let Some(key) = &server.created_key {
            println!("Created the first API key (shown only now; `cove keys create` makes more):");
            println!("  E2B_API_KEY={key}");
        }
        let scheme = if tls { "https" } else { "http" };
        println!("Cove listening on {scheme}://{addr}");
        println!("  export E2B_API_URL={scheme}://{addr} E2B_SANDBOX_URL={scheme}://{addr}");
        if let Some(metrics) = server.metrics_addr() {
            println!("Metrics on http://{metrics}/metrics");
        }
        if let Some(ca) = &server.local_ca {
            print_trust(ca, server.domain());
        }
        let Some((gateway, roles, _)) = beside else {
            return server.run().await.context("the server failed");
        };
        let gateway = gateway
            .open()
            .with_context(|| format!("cannot start the {roles}"))?;
        let url = gateway.url().context("cannot read the listen address")?;
        println!("Cove {roles} listening on {url}");
        let gateway = tokio::spawn(gateway.run());
        // Both stop on SIGTERM/SIGINT; the node ends first if the gateway fails.
        let served = server.run().await.context("the server failed");
        let gateway = gateway
            .await
            .context("the gateway stopped unexpectedly")?
            .with_context(|| format!("the {roles} failed"));
        served.and(gateway)
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// `--role api`, `--role edge` or both: no sandboxes here.
fn run_gateway(args: Args, api: bool, edge: bool) -> anyhow::Result<std::process::ExitCode> {
    let config = gateway_config(&args, api, edge)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("cove-gateway")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let roles = gateway_roles(api, edge);
    runtime.block_on(async {
        let gateway = Gateway::bind(config).with_context(|| format!("cannot start the {roles}"))?;
        let url = gateway.url().context("cannot read the listen address")?;
        println!("Cove {roles} listening on {url}");
        gateway
            .run()
            .await
            .with_context(|| format!("the {roles} failed"))
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn gateway_roles(api: bool, edge: bool) -> &'static str {
    match (api, edge) {
        (true, true) => "api,edge",
        (true, false) => "api",
        _ => "edge",
    }
}

/// The settings of the api, the edge or both, as `args` give them.
fn gateway_config(args: &Args, api: bool, edge: bool) -> anyhow::Result<GatewayConfig> {
    let roles = gateway_roles(api, edge);
    let tls = args.operations.config().tls;
    anyhow::ensure!(
        !matches!(tls, Some(TlsSource::SelfSigned)),
        "--role {roles} serves TLS from --tls-cert and --tls-key: a self-signed CA would differ in each process"
    );
    Ok(GatewayConfig {
        listen: args.listen,
        database: shared_database(roles, args.state.database.as_deref())?.to_owned(),
        api,
        edge: edge.then(|| args.domain.clone()),
        front: args.front.config(),
        tls,
        node_ca: args.cluster.node_ca.clone(),
    })
}

/// Says where the local CA is and how clients come to trust it.
fn print_trust(ca: &cove_server::tls::LocalCa, domain: &str) {
    let path = ca.cert_path.display();
    let made = if ca.created {
        "Made a local CA"
    } else {
        "Using the local CA"
    };
    println!("{made} for https://*.{domain}: {path}");
    println!("  trust it system-wide (curl, Python's ssl, most programs):");
    println!(
        "    cp {path} /usr/local/share/ca-certificates/cove-local-ca.crt && update-ca-certificates"
    );
    println!(
        "  or per program: SSL_CERT_FILE={path} (Python httpx, the E2B SDK), NODE_EXTRA_CA_CERTS={path} (Node)"
    );
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn node_addresses_are_http_host_and_port() {
        for good in [
            "http://10.0.0.1:3000",
            "http://node-1.internal:3000/",
            "http://[::1]:3000",
            "http://n",
            "https://node-1.internal:3443",
        ] {
            assert!(valid_address(good), "{good}");
        }
        for bad in [
            "ftp://x",
            "http://x:abc",
            "http://",
            "http://a/b",
            "https://",
            "a:1",
        ] {
            assert!(!valid_address(bad), "{bad}");
        }
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        front: FrontArgs,
    }

    #[test]
    fn timeouts_default_to_the_servers_defaults() {
        let parsed = Cli::try_parse_from(["serve"]).unwrap().front.config();
        assert_eq!(parsed.timeouts, Timeouts::default());
        assert_eq!(parsed.max_connections, None);
        assert_eq!(parsed.max_connections_per_ip, None);
    }

    #[test]
    fn zero_limits_and_timeouts_are_refused() {
        for args in [
            &["serve", "--idle-timeout", "0s"][..],
            &["serve", "--max-connections", "0"],
            &["serve", "--max-connections-per-ip", "0"],
            &["serve", "--header-read-timeout", "soon"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
        let parsed = Cli::try_parse_from(["serve", "--header-read-timeout", "1500ms"])
            .unwrap()
            .front
            .config();
        assert_eq!(parsed.timeouts.header_read, Duration::from_millis(1500));
    }

    #[derive(Parser)]
    struct Roles {
        #[command(flatten)]
        cluster: ClusterArgs,
    }

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let listen: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        Roles::try_parse_from(["serve"].iter().chain(args))
            .unwrap()
            .cluster
            .plan(listen)
    }

    #[test]
    fn the_api_and_the_edge_share_a_process_and_a_node_joins_them_on_its_own_listener() {
        let gateway = |api, edge| Ok::<_, ()>(Plan::Gateway { api, edge });
        assert_eq!(
            plan(&["--role", "api,edge"]).map_err(drop),
            gateway(true, true)
        );
        assert_eq!(
            plan(&["--role", "edge,api"]).map_err(drop),
            gateway(true, true)
        );
        assert_eq!(
            plan(&["--role", "edge"]).map_err(drop),
            gateway(false, true)
        );
        assert_eq!(plan(&["--role", "node"]).unwrap(), Plan::Server);
        assert_eq!(plan(&[]).unwrap(), Plan::Server);
        let node_listen: SocketAddr = "10.0.0.5:3100".parse().unwrap();
        assert_eq!(
            plan(&["--role", "node,api,edge", "--node-listen", "10.0.0.5:3100"]).unwrap(),
            Plan::NodeBeside {
                api: true,
                edge: true,
                node_listen
            }
        );
        for (args, says) in [
            (&["--role", "node,edge"][..], "--node-listen ADDR"),
            (&["--role", "api,node"], "--node-listen ADDR"),
            (
                &["--role", "node,api", "--node-listen", "127.0.0.1:3000"],
                "must differ",
            ),
            (
                &["--role", "node", "--node-listen", "10.0.0.5:3100"],
                "beside",
            ),
            (
                &["--role", "api", "--node-listen", "10.0.0.5:3100"],
                "beside",
            ),
        ] {
            let err = plan(args).unwrap_err().to_string();
            assert!(err.contains(says), "{args:?}: {err}");
        }
        assert!(Roles::try_parse_from(["serve", "--role", "api,proxy"]).is_err());
    }
}

/// `--warm-kernels`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum WarmKernelsArg {
    /// No warm sandbox (also `false`, as the flag's old boolean form)
    #[value(alias = "false")]
    Never,
    /// Those kept for creates of the code-interpreter template
    CodeInterpreter,
    /// Every warm sandbox (also `true`, and the flag alone)
    #[value(alias = "true")]
    Always,
}

/// `--runtime`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RuntimeArg {
    Namespace,
    Gvisor,
}
