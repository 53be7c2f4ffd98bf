//! Where the control plane and sandboxes are, and the key to use: from the same variables
//! the E2B SDKs read (`E2B_API_URL`, `E2B_SANDBOX_URL`, `E2B_API_KEY`), or their `COVE_*`
//! equivalents, or set explicitly.

use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    agent::DEFAULT_REQUEST_TIMEOUT,
    error::{Error, Result},
};

/// How to reach a Cove server.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    api_url: String,
    sandbox_url: Option<String>,
    api_key: String,
    pub(crate) request_timeout: Duration,
    pub(crate) http: reqwest::Client,
}

impl ConnectionConfig {
    /// A server at `api_url` (for example `http://127.0.0.1:3000`) with `api_key`.
    pub fn new(api_url: &str, api_key: &str) -> Result<Self> {
        Ok(Self {
            api_url: api_url.trim_end_matches('/').to_owned(),
            sandbox_url: None,
            api_key: api_key.to_owned(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            http: reqwest::Client::builder()
                .build()
                .map_err(Error::Transport)?,
        })
    }

    /// From the environment: `COVE_API_URL` or `E2B_API_URL` (default
    /// `http://127.0.0.1:3000`), `COVE_SANDBOX_URL` or `E2B_SANDBOX_URL` (default: the API
    /// URL), `COVE_API_KEY` or `E2B_API_KEY` (required). A `COVE_*` variable wins over its
    /// `E2B_*` twin; empty variables count as unset.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`ConnectionConfig::from_env`], with the variables looked up by `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|name| var(name).filter(|v| !v.is_empty()))
        };
        let api_url = var(["COVE_API_URL", "E2B_API_URL"])
            .unwrap_or_else(|| "http://127.0.0.1:3000".to_owned());
        let api_key = var(["COVE_API_KEY", "E2B_API_KEY"])
            .ok_or_else(|| Error::Auth("no API key: set COVE_API_KEY or E2B_API_KEY".to_owned()))?;
        let mut config = Self::new(&api_url, &api_key)?;
        config.sandbox_url = var(["COVE_SANDBOX_URL", "E2B_SANDBOX_URL"])
            .map(|u| u.trim_end_matches('/').to_owned());
        Ok(config)
    }

    /// Sends sandbox traffic to `url` instead of the API URL.
    pub fn with_sandbox_url(mut self, url: &str) -> Self {
        self.sandbox_url = Some(url.trim_end_matches('/').to_owned());
        self
    }

    /// Bounds each call (default 60 s).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// Where sandbox traffic goes.
    pub fn sandbox_url(&self) -> &str {
        self.sandbox_url.as_deref().unwrap_or(&self.api_url)
    }

    /// The host (and port) of the API, the default domain of sandbox hosts.
    pub(crate) fn domain(&self) -> String {
        self.api_url
            .split("://")
            .nth(1)
            .unwrap_or(&self.api_url)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// A request to a full URL the server gave (one that carries its own credential).
    pub(crate) fn raw(&self, method: http::Method, url: &str) -> ApiRequest {
        ApiRequest(self.http.request(method, url).timeout(self.request_timeout))
    }

    pub(crate) fn api(&self, method: http::Method, path: &str) -> ApiRequest {
        ApiRequest(
            self.http
                .request(method, format!("{}{path}", self.api_url))
                .header("x-api-key", &self.api_key)
                .timeout(self.request_timeout),
        )
    }
}

/// A control-plane request whose errors become [`Error`]s.
pub(crate) struct ApiRequest(reqwest::RequestBuilder);

impl ApiRequest {
    pub fn body(self, body: impl Into<reqwest::Body>) -> Self {
        Self(self.0.body(body))
    }

    pub fn json<T: Serialize>(self, body: &T) -> Self {
        Self(self.0.json(body))
    }

    pub fn query<T: Serialize + ?Sized>(self, query: &T) -> Self {
        Self(self.0.query(query))
    }

    pub fn bearer(self, token: &str) -> Self {
        Self(self.0.bearer_auth(token))
    }

    pub async fn send_bytes(self) -> Result<bytes::Bytes> {
        Ok(self.send().await?.bytes().await?)
    }

    async fn send(self) -> Result<reqwest::Response> {
        let response = self.0.send().await?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let body = response.bytes().await?;
        Err(Error::from_http(status, &body))
    }

    pub async fn send_json<T: DeserializeOwned>(self) -> Result<T> {
        let response = self.send().await?;
        let body = response.bytes().await?;
        serde_json::from_slice(&body)
            .map_err(|err| Error::Protocol(format!("invalid answer: {err}")))
    }

    pub async fn send_json_with_headers<T: DeserializeOwned>(self) -> Result<(T, http::HeaderMap)> {
        let response = self.send().await?;
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        let value = serde_json::from_slice(&body)
            .map_err(|err| Error::Protocol(format!("invalid answer: {err}")))?;
        Ok((value, headers))
    }

    pub async fn send_empty(self) -> Result<()> {
        self.send().await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<ConnectionConfig> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ConnectionConfig::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn e2b_variables_are_read() {
        let config = from(&[
            ("E2B_API_URL", "http://api.example:3000/"),
            ("E2B_SANDBOX_URL", "http://sbx.example:3000"),
            ("E2B_API_KEY", "e2b_key"),
        ])
        .unwrap();
        assert_eq!(config.api_url(), "http://api.example:3000");
        assert_eq!(config.sandbox_url(), "http://sbx.example:3000");
        assert_eq!(config.api_key, "e2b_key");
        assert_eq!(config.domain(), "api.example:3000");
    }

    #[test]
    fn cove_variables_win_and_empty_ones_do_not_count() {
        let config = from(&[
            ("E2B_API_URL", "http://e2b:1"),
            ("COVE_API_URL", "http://cove:2"),
            ("E2B_API_KEY", "e2b_key"),
            ("COVE_API_KEY", ""),
        ])
        .unwrap();
        assert_eq!(config.api_url(), "http://cove:2");
        assert_eq!(config.sandbox_url(), "http://cove:2");
        assert_eq!(config.api_key, "e2b_key");
    }

    #[test]
    fn defaults_and_a_missing_key() {
        let config = from(&[("COVE_API_KEY", "k")]).unwrap();
        assert_eq!(config.api_url(), "http://127.0.0.1:3000");
        assert!(matches!(from(&[]), Err(Error::Auth(_))));
    }
}
