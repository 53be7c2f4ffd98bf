//! The code interpreter of a sandbox (port 49999): stateful code on Jupyter kernels, in
//! contexts of their own, with results in every format the kernel renders.

use std::{collections::BTreeMap, time::Duration};

use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt, stream::BoxStream};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The code interpreter's port inside every sandbox.
pub const CODE_INTERPRETER_PORT: u16 = cove_proto::envd::CODE_INTERPRETER_PORT;

/// How long an execution may take when the caller sets no timeout (as the E2B SDKs).
pub const DEFAULT_EXECUTION_TIMEOUT: Duration = Duration::from_secs(300);

/// A context: a kernel with its own state (variables, imports, working directory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeContext {
    pub id: String,
    pub language: String,
    pub cwd: String,
}

/// Where and how to run code.
#[derive(Clone, Debug, Default)]
pub struct RunCodeOptions {
    /// The context to run in (default: the language's default context).
    pub context: Option<String>,
    /// `python` (default), `bash`, … — only without `context`.
    pub language: Option<String>,
    /// Environment variables for this execution only.
    pub envs: BTreeMap<String, String>,
    /// Bounds the whole execution (default 300 s); past it the call fails with
    /// [`Error::Timeout`] and the kernel is interrupted, its state kept.
    pub timeout: Option<Duration>,
}

/// A value the code displayed or evaluated to, in each format the kernel rendered it in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CodeResult {
    pub text: Option<String>,
    pub html: Option<String>,
    pub markdown: Option<String>,
    pub svg: Option<String>,
    /// Base64.
    pub png: Option<String>,
    /// Base64.
    pub jpeg: Option<String>,
    pub pdf: Option<String>,
    pub latex: Option<String>,
    pub json: Option<Value>,
    pub javascript: Option<String>,
    /// A table's columns (E2B's `e2b/data`).
    pub data: Option<Value>,
    /// A chart's data (E2B's `e2b/chart`).
    pub chart: Option<Value>,
    /// Other formats, by MIME type.
    #[serde(default)]
    pub extra: Map<String, Value>,
    /// The value of the code's last expression (not a `display` call).
    #[serde(default)]
    pub is_main_result: bool,
}

/// An exception the code raised; the execution still counts as done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionError {
    pub name: String,
    pub value: String,
    pub traceback: String,
}

/// One piece of an execution, as it happens.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecutionEvent {
    /// The execution's number in its context (`In [n]`).
    Count(i64),
    Stdout(String),
    Stderr(String),
    Result(Box<CodeResult>),
    Error(ExecutionError),
}

/// What an execution left.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Execution {
    pub results: Vec<CodeResult>,
    /// Output in the pieces the kernel sent it.
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub error: Option<ExecutionError>,
    pub execution_count: Option<i64>,
}

impl Execution {
    /// The text of the main result (the last expression's value), if there is one.
    pub fn text(&self) -> Option<&str> {
        self.results
            .iter()
            .find(|r| r.is_main_result)
            .and_then(|r| r.text.as_deref())
    }

    fn push(&mut self, event: ExecutionEvent) {
        match event {
            ExecutionEvent::Count(n) => self.execution_count = Some(n),
            ExecutionEvent::Stdout(text) => self.stdout.push(text),
            ExecutionEvent::Stderr(text) => self.stderr.push(text),
            ExecutionEvent::Result(result) => self.results.push(*result),
            ExecutionEvent::Error(error) => self.error = Some(error),
        }
    }
}

/// One line of `/execute`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    NumberOfExecutions {
        execution_count: i64,
    },
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    Result(Box<CodeResult>),
    Error {
        name: String,
        value: String,
        #[serde(default)]
        traceback: String,
    },
    Keepalive,
    EndOfExecution,
    #[serde(other)]
    Unknown,
}

#[derive(Serialize)]
struct ExecuteRequest<'a> {
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    context_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    language: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env_vars: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct CreateContextRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    language: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cwd: Option<&'a str>,
}

/// The code interpreter of one sandbox.
#[derive(Clone, Debug)]
pub struct CodeInterpreter {
    http: reqwest::Client,
    base: String,
    headers: HeaderMap,
    request_timeout: Duration,
}

impl CodeInterpreter {
    pub(crate) fn new(
        http: reqwest::Client,
        base: String,
        headers: &[(&str, &str)],
        request_timeout: Duration,
    ) -> Result<Self> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::try_from(*name)
                .map_err(|err| Error::InvalidArgument(format!("header name {name:?}: {err}")))?;
            let value = HeaderValue::try_from(*value)
                .map_err(|err| Error::InvalidArgument(format!("header {name}: {err}")))?;
            map.insert(name, value);
        }
        Ok(Self {
            http,
            base,
            headers: map,
            request_timeout,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .headers(self.headers.clone())
    }

    async fn send(request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = request.send().await?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let body = response.bytes().await?;
        Err(Error::from_http(status, &body))
    }

    /// Runs `code` to the end and gathers what it produced. An exception in the code is
    /// [`Execution::error`], not an `Err`: `Err` means the execution could not run.
    pub async fn run(&self, code: &str, options: RunCodeOptions) -> Result<Execution> {
        let mut events = self.run_stream(code, options).await?;
        let mut execution = Execution::default();
        while let Some(event) = events.try_next().await? {
            execution.push(event);
        }
        Ok(execution)
    }

    /// Runs `code`, yielding its output and results as they come.
    pub async fn run_stream(
        &self,
        code: &str,
        options: RunCodeOptions,
    ) -> Result<BoxStream<'static, Result<ExecutionEvent>>> {
        let body = ExecuteRequest {
            code,
            context_id: options.context.as_deref(),
            language: options.language.as_deref(),
            env_vars: &options.envs,
        };
        let response = Self::send(
            self.request(reqwest::Method::POST, "/execute")
                .json(&body)
                .timeout(options.timeout.unwrap_or(DEFAULT_EXECUTION_TIMEOUT)),
        )
        .await?;
        Ok(events(response.bytes_stream()).boxed())
    }

    /// Starts a new context (a fresh kernel) for `language` (default python) in `cwd`
    /// (default the user's home).
    pub async fn create_context(
        &self,
        language: Option<&str>,
        cwd: Option<&str>,
    ) -> Result<CodeContext> {
        let response = Self::send(
            self.request(reqwest::Method::POST, "/contexts")
                .json(&CreateContextRequest { language, cwd })
                .timeout(self.request_timeout),
        )
        .await?;
        json(response).await
    }

    /// Every context of the sandbox.
    pub async fn list_contexts(&self) -> Result<Vec<CodeContext>> {
        let response = Self::send(
            self.request(reqwest::Method::GET, "/contexts")
                .timeout(self.request_timeout),
        )
        .await?;
        json(response).await
    }

    /// Restarts a context's kernel: its state is lost, the context stays.
    pub async fn restart_context(&self, id: &str) -> Result<()> {
        Self::send(
            self.request(reqwest::Method::POST, &format!("/contexts/{id}/restart"))
                .timeout(self.request_timeout),
        )
        .await
        .map(drop)
    }

    /// Removes a context and stops its kernel.
    pub async fn remove_context(&self, id: &str) -> Result<()> {
        Self::send(
            self.request(reqwest::Method::DELETE, &format!("/contexts/{id}"))
                .timeout(self.request_timeout),
        )
        .await
        .map(drop)
    }
}

async fn json<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T> {
    let body = response.bytes().await?;
    serde_json::from_slice(&body)
        .map_err(|err| Error::Protocol(format!("invalid interpreter answer: {err}")))
}

/// The events of a JSON-lines body, until `end_of_execution`.
fn events(
    body: impl Stream<Item = reqwest::Result<bytes::Bytes>> + Send + 'static,
) -> impl Stream<Item = Result<ExecutionEvent>> + Send {
    let state = (body.boxed(), BytesMut::new(), false);
    futures::stream::unfold(state, |(mut body, mut buffer, done)| async move {
        if done {
            return None;
        }
        loop {
            if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line = buffer.split_to(end + 1);
                let line = &line[..end];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let event = match serde_json::from_slice::<Line>(line) {
                    Err(err) => Err(Error::Protocol(format!("invalid execution line: {err}"))),
                    Ok(Line::EndOfExecution) => {
                        crate::rpc::read_to_end(body).await;
                        return None;
                    }
                    Ok(Line::Keepalive | Line::Unknown) => continue,
                    Ok(Line::NumberOfExecutions { execution_count }) => {
                        Ok(ExecutionEvent::Count(execution_count))
                    }
                    Ok(Line::Stdout { text }) => Ok(ExecutionEvent::Stdout(text)),
                    Ok(Line::Stderr { text }) => Ok(ExecutionEvent::Stderr(text)),
                    Ok(Line::Result(result)) => Ok(ExecutionEvent::Result(result)),
                    Ok(Line::Error {
                        name,
                        value,
                        traceback,
                    }) => Ok(ExecutionEvent::Error(ExecutionError {
                        name,
                        value,
                        traceback,
                    })),
                };
                let failed = event.is_err();
                return Some((event, (body, buffer, failed)));
            }
            match body.next().await {
                Some(Ok(chunk)) => buffer.extend_from_slice(chunk.chunk()),
                Some(Err(err)) => return Some((Err(err.into()), (body, buffer, true))),
                None => {
                    let err =
                        Error::Protocol("the execution ended without end_of_execution".to_owned());
                    return Some((Err(err), (body, buffer, true)));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Vec<Result<ExecutionEvent>> {
        let chunks: Vec<reqwest::Result<bytes::Bytes>> = lines
            .iter()
            .map(|l| Ok(bytes::Bytes::from(l.to_string())))
            .collect();
        // The end of a body is awaited with tokio's clock, as under every client.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(events(futures::stream::iter(chunks)).collect())
    }

    #[test]
    fn lines_split_anywhere_become_events() {
        let events = parse(&[
            "{\"type\":\"number_of_executions\",\"execution_count\":3}\n{\"type\":\"std",
            "out\",\"text\":\"hi\\n\",\"timestamp\":\"t\"}\n{\"type\":\"keepalive\"}\n",
            "{\"type\":\"result\",\"text\":\"42\",\"extra\":{},\"is_main_result\":true}\n",
            "{\"type\":\"end_of_execution\"}\n{\"type\":\"stdout\",\"text\":\"after\"}\n",
        ]);
        let events: Vec<_> = events.into_iter().map(|e| e.unwrap()).collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0], ExecutionEvent::Count(3));
        assert_eq!(events[1], ExecutionEvent::Stdout("hi\n".into()));
        let ExecutionEvent::Result(result) = &events[2] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (result.text.as_deref(), result.is_main_result),
            (Some("42"), true)
        );
    }

    #[test]
    fn a_cut_stream_is_an_error() {
        let events = parse(&["{\"type\":\"stdout\",\"text\":\"x\"}\n"]);
        assert!(matches!(events.last(), Some(Err(Error::Protocol(_)))));
    }
}
