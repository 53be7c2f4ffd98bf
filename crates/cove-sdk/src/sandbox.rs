//! Sandboxes through the control plane: create, connect, list, kill, extend, inspect.

use std::{collections::BTreeMap, time::Duration};

use cove_proto::rest::{
    self, ConnectSandbox, ListedSandbox, NewSandbox, SandboxDetail, SandboxLogs, SandboxMetric,
    SetTimeout,
};
use http::StatusCode;

use crate::{
    agent::AgentClient,
    commands::Commands,
    config::ConnectionConfig,
    error::{Error, Result},
    files::Files,
    interpreter::{CODE_INTERPRETER_PORT, CodeInterpreter, Execution, RunCodeOptions},
    pty::Pty,
};

/// The agent's port inside every sandbox.
pub const AGENT_PORT: u16 = cove_proto::envd::PORT;

/// What to create.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Template id or alias (default `base`).
    pub template: Option<String>,
    /// Lifetime (default 300 s); the sandbox is killed when it ends.
    pub timeout: Option<Duration>,
    pub metadata: BTreeMap<String, String>,
    /// Environment variables of every process in the sandbox.
    pub envs: BTreeMap<String, String>,
    /// Egress to the internet (default on).
    pub allow_internet_access: Option<bool>,
    /// `Some(false)`: servers in the sandbox answer only requests that carry the sandbox's
    /// traffic token ([`Sandbox::traffic_access_token`]).
    pub allow_public_traffic: Option<bool>,
    /// CPUs the sandbox may use (default 2).
    pub cpu_count: Option<u32>,
    /// Memory limit in MiB (default 1024).
    pub memory_mb: Option<u64>,
    /// Volumes of the team mounted into the sandbox: (volume name, path inside).
    pub volume_mounts: Vec<(String, String)>,
    /// Destinations the sandbox may reach whatever `deny_out` says (IP addresses, CIDRs).
    pub allow_out: Option<Vec<String>>,
    /// Destinations the sandbox may not reach (IP addresses, CIDRs; `0.0.0.0/0`: all).
    pub deny_out: Option<Vec<String>>,
}

/// A running sandbox.
///
/// ```
/// # use std::time::Duration;
/// use cove_sdk::{CreateOptions, Sandbox};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> cove_sdk::Result<()> {
/// # let server = cove_test_util::TestServer::for_doctest().await;
/// // `ConnectionConfig::from_env()` reads E2B_API_URL / E2B_API_KEY (or COVE_*).
/// # let config = server.config();
/// let sandbox = Sandbox::create(&config, CreateOptions {
///     timeout: Some(Duration::from_secs(120)),
///     ..CreateOptions::default()
/// }).await?;
///
/// let listed = Sandbox::list(&config).await?;
/// assert!(listed.iter().any(|s| s.sandbox_id == sandbox.id()));
///
/// // Another process can attach to it by id.
/// let same = Sandbox::connect(&config, sandbox.id(), None).await?;
/// assert_eq!(same.commands().run("echo attached").await?.stdout, "attached\n");
///
/// sandbox.set_timeout(Duration::from_secs(600)).await?;
/// let info = sandbox.info().await?;
/// assert_eq!(info.listed.template_id, "base");
/// let metrics = sandbox.metrics().await?;
/// assert!(metrics[0].mem_total > 0);
///
/// assert!(sandbox.kill().await?);
/// assert!(!sandbox.kill().await?); // already gone
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Sandbox {
    info: rest::Sandbox,
    config: ConnectionConfig,
    agent: AgentClient,
    interpreter: CodeInterpreter,
}

impl Sandbox {
    /// Creates a sandbox and returns once it can run commands.
    pub async fn create(config: &ConnectionConfig, options: CreateOptions) -> Result<Self> {
        let body = NewSandbox {
            template_id: Some(options.template.unwrap_or_else(|| "base".to_owned())),
            timeout: options
                .timeout
                .map(|t| t.as_secs().try_into().unwrap_or(i64::MAX)),
            metadata: Some(options.metadata),
            env_vars: Some(options.envs),
            allow_internet_access: options.allow_internet_access,
            network: (options.allow_public_traffic.is_some()
                || options.allow_out.is_some()
                || options.deny_out.is_some())
            .then_some(rest::SandboxNetwork {
                allow_public_traffic: options.allow_public_traffic,
                allow_out: options.allow_out,
                deny_out: options.deny_out,
                ..rest::SandboxNetwork::default()
            }),
            cpu_count: options.cpu_count,
            memory_mb: options.memory_mb,
            volume_mounts: (!options.volume_mounts.is_empty()).then(|| {
                options
                    .volume_mounts
                    .into_iter()
                    .map(|(name, path)| rest::SandboxVolumeMount { name, path })
                    .collect()
            }),
            ..NewSandbox::default()
        };
        let info: rest::Sandbox = config
            .api(http::Method::POST, "/v2/sandboxes")
            .json(&body)
            .send_json()
            .await?;
        Self::from_info(config, info)
    }

    /// Attaches to a sandbox: a running one lives at least `timeout` more from now, a paused
    /// one is resumed (see [`Sandbox::pause`]).
    pub async fn connect(
        config: &ConnectionConfig,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<Self> {
        let body = ConnectSandbox {
            timeout: timeout.map(|t| t.as_secs().try_into().unwrap_or(i64::MAX)),
            memory: None,
        };
        let info: rest::Sandbox = config
            .api(http::Method::POST, &format!("/v2/sandboxes/{id}/connect"))
            .json(&body)
            .send_json()
            .await?;
        Self::from_info(config, info)
    }

    /// A handle on a running sandbox by id that leaves its timeout alone (unlike
    /// [`Sandbox::connect`]). [`Sandbox::traffic_access_token`] is not known this way.
    pub async fn get(config: &ConnectionConfig, id: &str) -> Result<Self> {
        let detail = Self::info_by_id(config, id).await?;
        let info = rest::Sandbox {
            template_id: detail.listed.template_id,
            sandbox_id: detail.listed.sandbox_id,
            alias: detail.listed.alias,
            client_id: detail.listed.client_id,
            envd_version: detail.listed.envd_version,
            envd_access_token: detail.envd_access_token,
            traffic_access_token: None,
            domain: detail.domain,
        };
        Self::from_info(config, info)
    }

    pub(crate) fn from_info(config: &ConnectionConfig, info: rest::Sandbox) -> Result<Self> {
        let mut agent =
            AgentClient::with_http(config.http.clone(), config.sandbox_url().to_owned())
                .with_request_timeout(config.request_timeout)
                .with_header("e2b-sandbox-id", &info.sandbox_id)?
                .with_header("e2b-sandbox-port", &AGENT_PORT.to_string())?;
        if let Some(token) = &info.envd_access_token {
            agent = agent.with_access_token(token)?;
        }
        let port = CODE_INTERPRETER_PORT.to_string();
        let mut headers = vec![
            ("e2b-sandbox-id", info.sandbox_id.as_str()),
            ("e2b-sandbox-port", port.as_str()),
        ];
        if let Some(token) = &info.envd_access_token {
            headers.push(("x-access-token", token));
        }
        if let Some(token) = &info.traffic_access_token {
            headers.push(("e2b-traffic-access-token", token));
        }
        let interpreter = CodeInterpreter::new(
            config.http.clone(),
            config.sandbox_url().to_owned(),
            &headers,
            config.request_timeout,
        )?;
        Ok(Self {
            info,
            config: config.clone(),
            agent,
            interpreter,
        })
    }

    /// Every running sandbox the key can see (all pages).
    pub async fn list(config: &ConnectionConfig) -> Result<Vec<ListedSandbox>> {
        let mut all = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut request = config.api(http::Method::GET, "/v2/sandboxes");
            if let Some(token) = &next {
                request = request.query(&[("nextToken", token)]);
            }
            let (page, headers): (Vec<ListedSandbox>, _) = request.send_json_with_headers().await?;
            all.extend(page);
            next = headers
                .get("x-next-token")
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned);
            if next.is_none() {
                return Ok(all);
            }
        }
    }

    /// Kills a sandbox by id; `false` when there is no such sandbox.
    pub async fn kill_by_id(config: &ConnectionConfig, id: &str) -> Result<bool> {
        crate::error::found(
            config
                .api(http::Method::DELETE, &format!("/sandboxes/{id}"))
                .send_empty()
                .await,
        )
    }

    pub fn id(&self) -> &str {
        &self.info.sandbox_id
    }

    pub(crate) fn config(&self) -> &ConnectionConfig {
        &self.config
    }

    pub fn template_id(&self) -> &str {
        &self.info.template_id
    }

    /// The token for `E2B-Traffic-Access-Token` when the sandbox is not public.
    pub fn traffic_access_token(&self) -> Option<&str> {
        self.info.traffic_access_token.as_deref()
    }

    /// Kills this sandbox; `false` when it was already gone.
    pub async fn kill(&self) -> Result<bool> {
        Self::kill_by_id(&self.config, self.id()).await
    }

    /// Sets the sandbox to end `timeout` from now (shorter or longer than before).
    pub async fn set_timeout(&self, timeout: Duration) -> Result<()> {
        Self::set_timeout_by_id(&self.config, self.id(), timeout).await
    }

    /// What the control plane knows about this sandbox.
    pub async fn info(&self) -> Result<SandboxDetail> {
        Self::info_by_id(&self.config, self.id()).await
    }

    /// What the control plane knows about the sandbox `id`.
    pub async fn info_by_id(config: &ConnectionConfig, id: &str) -> Result<SandboxDetail> {
        config
            .api(http::Method::GET, &format!("/sandboxes/{id}"))
            .send_json()
            .await
    }

    /// Replaces this sandbox's egress rules (`allowOut`, `denyOut`; omitted ones are
    /// cleared); its next connection is decided by them.
    pub async fn update_network(&self, update: &rest::SandboxNetworkUpdate) -> Result<()> {
        self.config
            .api(
                http::Method::PUT,
                &format!("/sandboxes/{}/network", self.id()),
            )
            .json(update)
            .send_empty()
            .await
    }

    /// Sets the sandbox `id` to end `timeout` from now.
    pub async fn set_timeout_by_id(
        config: &ConnectionConfig,
        id: &str,
        timeout: Duration,
    ) -> Result<()> {
        let body = SetTimeout {
            timeout: timeout.as_secs().try_into().unwrap_or(i64::MAX),
        };
        config
            .api(http::Method::POST, &format!("/sandboxes/{id}/timeout"))
            .json(&body)
            .send_empty()
            .await
    }

    /// CPU, memory and disk use, measured now.
    pub async fn metrics(&self) -> Result<Vec<SandboxMetric>> {
        Self::metrics_by_id(&self.config, self.id()).await
    }

    /// CPU, memory and disk use of the sandbox `id`, measured now.
    pub async fn metrics_by_id(config: &ConnectionConfig, id: &str) -> Result<Vec<SandboxMetric>> {
        config
            .api(http::Method::GET, &format!("/sandboxes/{id}/metrics"))
            .send_json()
            .await
    }

    /// The sandbox's own log (its setup and its agent).
    pub async fn logs(&self) -> Result<SandboxLogs> {
        Self::logs_by_id(&self.config, self.id()).await
    }

    /// The log of the sandbox `id`.
    pub async fn logs_by_id(config: &ConnectionConfig, id: &str) -> Result<SandboxLogs> {
        config
            .api(http::Method::GET, &format!("/sandboxes/{id}/logs"))
            .send_json()
            .await
    }

    /// Whether the sandbox still answers.
    pub async fn is_running(&self) -> Result<bool> {
        match self.agent.health().await {
            Ok(()) => Ok(true),
            Err(Error::SandboxGone(_)) => Ok(false),
            Err(Error::Api { status, .. }) if status == StatusCode::BAD_GATEWAY.as_u16() => {
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    /// The sandbox's agent (files and processes).
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    pub fn files(&self) -> Files<'_> {
        self.agent.files()
    }

    pub fn commands(&self) -> Commands<'_> {
        self.agent.commands()
    }

    /// The code interpreter: contexts, and code with its output streamed.
    pub fn code_interpreter(&self) -> &CodeInterpreter {
        &self.interpreter
    }

    /// Runs Python code in the default context, where state lives on between calls. An
    /// exception in the code is [`Execution::error`]; `Err` means it could not run.
    ///
    /// ```
    /// # use cove_sdk::{CreateOptions, RunCodeOptions, Sandbox};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> cove_sdk::Result<()> {
    /// # let server = cove_test_util::TestServer::for_doctest().await;
    /// # let sandbox = Sandbox::create(&server.config(), CreateOptions::default()).await?;
    /// sandbox.run_code("x = 41").await?;
    /// let execution = sandbox.run_code("print('adding'); x + 1").await?;
    /// assert_eq!(execution.text(), Some("42"));
    /// assert_eq!(execution.stdout, ["adding\n"]);
    ///
    /// let failed = sandbox.run_code("1 / 0").await?;
    /// assert_eq!(failed.error.expect("an exception").name, "ZeroDivisionError");
    ///
    /// // A context of its own: separate state, its own working directory.
    /// let code = sandbox.code_interpreter();
    /// let context = code.create_context(None, Some("/tmp")).await?;
    /// let options = RunCodeOptions { context: Some(context.id.clone()), ..Default::default() };
    /// let isolated = sandbox.run_code_with("import os; os.getcwd(), 'x' in globals()", options).await?;
    /// assert_eq!(isolated.text(), Some("('/tmp', False)"));
    /// code.remove_context(&context.id).await?;
    /// # sandbox.kill().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run_code(&self, code: &str) -> Result<Execution> {
        self.interpreter.run(code, RunCodeOptions::default()).await
    }

    /// Runs code in a chosen context or language, with extra environment or a time limit.
    pub async fn run_code_with(&self, code: &str, options: RunCodeOptions) -> Result<Execution> {
        self.interpreter.run(code, options).await
    }

    /// Interactive terminals.
    pub fn pty(&self) -> Pty<'_> {
        self.agent.pty()
    }

    /// `host:port` under which a server on `port` inside the sandbox is reachable.
    ///
    /// ```
    /// # use cove_sdk::{Command, CreateOptions, Sandbox};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> cove_sdk::Result<()> {
    /// # let server = cove_test_util::TestServer::for_doctest().await;
    /// # let config = server.config();
    /// # let sandbox = Sandbox::create(&config, CreateOptions::default()).await?;
    /// let server = sandbox
    ///     .commands()
    ///     .spawn(Command::shell("python3 -m http.server 8000 --directory /etc"))
    ///     .await?;
    /// let host = sandbox.host(8000); // "8000-<id>.localhost:3000"
    /// # let (http, url) = (reqwest::Client::new(), format!("{}/hostname", config.api_url()));
    /// # let page = cove_test_util::wait_until("the server", std::time::Duration::from_secs(10), || {
    /// #     let request = http.get(&url).header("host", &host).send();
    /// #     async move { request.await.ok().filter(|r| r.status().is_success()) }
    /// # }).await;
    /// // An HTTP client sends its requests to `http://{host}/`.
    /// assert_eq!(page.text().await?, "sandbox\n");
    /// server.kill().await?;
    /// # sandbox.kill().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn host(&self, port: u16) -> String {
        let domain = self
            .info
            .domain
            .clone()
            .unwrap_or_else(|| self.config.domain());
        format!("{port}-{}.{domain}", self.id())
    }
}
