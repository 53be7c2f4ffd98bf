//! A client for one sandbox's agent: its files and processes. Reached directly (Unix socket or
//! TCP) or through `cove serve`'s proxy (base URL plus the sandbox's routing headers).

use std::{path::PathBuf, time::Duration};

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::{
    commands::Commands,
    error::{Error, Result},
    files::Files,
    pty::Pty,
    rpc::Channel,
};

/// How long a call may take when the caller sets no timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client for one agent.
#[derive(Clone, Debug)]
pub struct AgentClient {
    pub(crate) channel: Channel,
    /// The user calls act as (`None`: the sandbox's default user).
    pub(crate) user: Option<String>,
    pub(crate) request_timeout: Duration,
}

impl AgentClient {
    /// An agent listening on a Unix socket.
    pub fn unix(path: impl Into<PathBuf>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .unix_socket(path.into())
            .build()
            .map_err(Error::Transport)?;
        Ok(Self::with_http(http, "http://agent".to_owned()))
    }

    /// An agent (or a proxy in front of it) at an HTTP base URL such as `http://127.0.0.1:49983`.
    pub fn http(base_url: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(Error::Transport)?;
        Ok(Self::with_http(
            http,
            base_url.trim_end_matches('/').to_owned(),
        ))
    }

    pub(crate) fn with_http(http: reqwest::Client, base: String) -> Self {
        Self {
            channel: Channel {
                http,
                base,
                headers: HeaderMap::new(),
            },
            user: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Sends the sandbox's access token with every request.
    pub fn with_access_token(self, token: &str) -> Result<Self> {
        self.with_header("x-access-token", token)
    }

    /// Adds a header to every request (for example the proxy's routing headers).
    pub fn with_header(mut self, name: &str, value: &str) -> Result<Self> {
        let name = HeaderName::try_from(name)
            .map_err(|err| Error::InvalidArgument(format!("header name {name:?}: {err}")))?;
        let value = HeaderValue::try_from(value)
            .map_err(|err| Error::InvalidArgument(format!("header {name}: {err}")))?;
        self.channel.headers.insert(name, value);
        Ok(self)
    }

    /// Acts as `user` (`root`, `user`, …) instead of the sandbox's default user.
    pub fn as_user(mut self, user: &str) -> Self {
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
        if let Ok(value) = HeaderValue::try_from(format!("Basic {credentials}")) {
            self.channel.headers.insert(header::AUTHORIZATION, value);
            self.user = Some(user.to_owned());
        }
        self
    }

    /// Bounds every call that has no timeout of its own.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The sandbox's files.
    pub fn files(&self) -> Files<'_> {
        Files::new(self)
    }

    /// The sandbox's processes.
    pub fn commands(&self) -> Commands<'_> {
        Commands::new(self)
    }

    /// The sandbox's interactive terminals.
    pub fn pty(&self) -> Pty<'_> {
        Pty::new(self)
    }

    /// A unary call of `service/method`, bounded by the request timeout.
    pub(crate) async fn call<Req: cove_proto::connect::Wire, Resp: cove_proto::connect::Wire>(
        &self,
        service: &str,
        method: &str,
        request: Req,
    ) -> Result<Resp> {
        self.channel
            .unary(
                &format!("{service}/{method}"),
                &request,
                Some(self.request_timeout),
            )
            .await
    }

    /// Whether the agent answers `GET /health`.
    pub async fn health(&self) -> Result<()> {
        let response = self
            .channel
            .http
            .get(format!("{}/health", self.channel.base))
            .headers(self.channel.headers.clone())
            .timeout(self.request_timeout)
            .send()
            .await?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let body = response.bytes().await?;
        Err(Error::from_http(status, &body))
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.channel.base
    }
}
