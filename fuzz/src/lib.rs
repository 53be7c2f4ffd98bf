//! What the fuzz targets share: one tokio runtime, the real agent and control-plane apps over
//! temporary state, HTTP exchanges with them without sockets, and the small text format most
//! targets read their input in (a first line, `name: value` header lines, a blank line, a
//! body), so that seed files stay readable.
//!
//! Temporary state goes under `$TMPDIR` (`scripts/fuzz` points it at a directory it removes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{Router, body::Body};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Longest an exchange with an app may take before the target calls it a hang: far above
/// what any takes (milliseconds), so that a host loaded by other test suites is no hang.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(30);

/// The one runtime of a fuzz process (single-threaded, so runs are repeatable).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        // libFuzzer's `main` is not Rust's, which ignores SIGPIPE: a write to the stdin of a
        // process that has just ended (the agent's EPIPE) would kill the fuzzer instead. A
        // handler of tokio's, kept for the process's life, takes the signal's default away.
        let pipe = runtime.block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe())
                .expect("a SIGPIPE handler")
        });
        // The stream is not needed: tokio never uninstalls a handler it installed.
        drop(pipe);
        runtime
    })
}

pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// A temporary directory that lives as long as the fuzz process.
pub fn temp_dir(prefix: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("a temporary directory")
        .keep()
}

// ---------------------------------------------------------------------------------------------
// The input format.

/// An input read as `first line \n (name: value \n)* \n body`. Lines end at `\n`; a missing
/// blank line means an empty body.
#[derive(Debug)]
pub struct Input<'a> {
    pub first: &'a str,
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    pub body: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn parse(data: &'a [u8]) -> Self {
        let (first, mut rest) = split_line(data);
        let first = std::str::from_utf8(first).unwrap_or("");
        let mut headers = Vec::new();
        let body = loop {
            if rest.is_empty() {
                break rest;
            }
            let (line, after) = split_line(rest);
            rest = after;
            if line.is_empty() {
                break rest;
            }
            match line.iter().position(|b| *b == b':') {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    let value = value.strip_prefix(b" ").unwrap_or(value);
                    headers.push((&line[..colon], value));
                }
                None => headers.push((line, &b""[..])),
            }
        };
        Self {
            first,
            headers,
            body,
        }
    }

    /// The headers that are valid HTTP (the others could not reach a server either).
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                map.append(name, value);
            }
        }
        map
    }
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(end) => (&data[..end], &data[end + 1..]),
        None => (data, &[]),
    }
}

/// Picks one of `choices` by name, or by a hash of the name when it names none (so mutated
/// names still reach every choice).
pub fn pick<'c>(name: &str, choices: &[&'c str]) -> &'c str {
    if let Some(found) = choices.iter().find(|c| **c == name) {
        return found;
    }
    let hash = name
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    choices[hash % choices.len()]
}

/// `bytes` as a URI query: bytes a request's URI cannot carry (as the `http` crate, and so
/// the server, parses it) are percent-encoded, the rest kept, so the fuzzer's own escapes,
/// `&` and `=` reach the parsers as a client would send them.
pub fn query_text(bytes: &[u8]) -> String {
    static ALLOWED: OnceLock<[bool; 256]> = OnceLock::new();
    let allowed = ALLOWED.get_or_init(|| {
        let mut table = [false; 256];
        for (byte, ok) in table.iter_mut().enumerate() {
            let c = byte as u8;
            *ok = c.is_ascii_graphic()
                && c != b'#'
                && http::Uri::try_from(format!("/?a{}b", c as char)).is_ok();
        }
        table
    });
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if allowed[b as usize] {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes every byte but unreserved ones (a value inside a query).
pub fn percent_encode(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP exchanges without sockets.

/// A whole answer of an app.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Panics unless the answer is E2B's error shape: JSON `{code: <status>, message}`.
    pub fn assert_rest_error(&self, context: &str) {
        let json = self.json().unwrap_or_else(|| {
            panic!(
                "{context}: {} answered with a body that is not JSON: {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        });
        assert_eq!(
            json["code"].as_u64(),
            Some(u64::from(self.status.as_u16())),
            "{context}: error body {json} does not repeat the status {}",
            self.status
        );
        assert!(
            json["message"].is_string(),
            "{context}: error body {json} has no message"
        );
    }
}

/// Sends `request` to `app` and reads the whole answer (a hang past [`EXCHANGE_LIMIT`]
/// panics, so libFuzzer reports it with its input).
pub async fn exchange(app: &Router, request: Request<Body>) -> Answer {
    let work = async {
        let response = app
            .clone()
            .oneshot(request)
            .await
            .expect("routers are infallible");
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(EXCHANGE_LIMIT, work)
        .await
        .expect("the app answered within the limit")
}

/// Sends `request` and reads the answer's body only until `enough` says so or it ends (for
/// streams that stay open, such as a running process's events).
pub async fn exchange_until(
    app: &Router,
    request: Request<Body>,
    mut enough: impl FnMut(&[u8]) -> bool,
) -> Answer {
    let work = async {
        let response = app
            .clone()
            .oneshot(request)
            .await
            .expect("routers are infallible");
        let (parts, mut body) = response.into_parts();
        let mut read = Vec::new();
        while !enough(&read) {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        read.extend_from_slice(data);
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: Bytes::from(read),
        }
    };
    tokio::time::timeout(EXCHANGE_LIMIT, work)
        .await
        .expect("the app answered within the limit")
}

// ---------------------------------------------------------------------------------------------
// The agent.

/// A real agent app over a temporary root: account files name one user, `user`, whose home
/// is `<root>/home/user` and whose ids are the fuzz process's own (so `chown` works unprivileged).
pub struct Agent {
    pub state: cove_agent::AgentState,
    pub app: Router,
    pub root: PathBuf,
    pub home: PathBuf,
    pub token: Option<String>,
}

impl Agent {
    pub fn new(token: Option<&str>) -> Self {
        let root = temp_dir("cove-fuzz-agent-");
        let home = root.join("home/user");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let (uid, gid) = process_ids();
        std::fs::write(
            root.join("etc/passwd"),
            format!("user:x:{uid}:{gid}::{}:/bin/sh\n", home.display()),
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), format!("user:x:{gid}:\n")).unwrap();
        let config = cove_agent::AgentConfig {
            access_token: token.map(str::to_owned),
            default_user: "user".to_owned(),
            accounts: cove_agent::users::AccountFiles::under(&root),
            ..Default::default()
        };
        let state =
            block_on(async { cove_agent::AgentState::new(&config) }).expect("the agent's state");
        let app = cove_agent::router(state.clone(), None);
        Self {
            state,
            app,
            root,
            home,
            token: token.map(str::to_owned),
        }
    }

    /// Empties the user's home (targets that write files call it now and then).
    pub fn reset_home(&self) {
        let _ = std::fs::remove_dir_all(&self.home);
        std::fs::create_dir_all(&self.home).unwrap();
    }
}

/// The fuzz process's uid and gid, read from `/proc` (this crate does no `unsafe`).
fn process_ids() -> (u32, u32) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Uid:"), field("Gid:"))
}

// ---------------------------------------------------------------------------------------------
// The control plane.

/// The API key the control plane's targets authenticate with.
pub const API_KEY: &str = "cove_fuzz_key";
/// The sandbox domain of the control plane's targets.
pub const DOMAIN: &str = "localhost:3000";

/// The real control plane (`cove_server::router`) over a temporary state directory and the
/// fake runtime of `cove-test-util` (no sandboxes run; everything above the runtime is real).
pub struct Server {
    pub state: cove_server::AppState,
    pub runtime: Arc<cove_test_util::FakeRuntime>,
    pub app: Router,
}

impl Server {
    pub fn new(max_sandboxes: usize) -> Self {
        let dir = temp_dir("cove-fuzz-server-");
        let config = server_config(&dir, max_sandboxes);
        let runtime = cove_test_util::FakeRuntime::new();
        let (state, _) = block_on(cove_server::AppState::open(
            &config,
            runtime.clone(),
            DOMAIN.to_owned(),
        ))
        .expect("the control plane's state");
        let app = cove_server::router(state.clone());
        Self {
            state,
            runtime,
            app,
        }
    }

    /// A request to the API with the key.
    pub fn request(&self, method: &str, uri: &str, body: Vec<u8>) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("x-api-key", API_KEY)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("a valid request")
    }

    /// Creates a sandbox through the API; its JSON answer.
    pub async fn create(&self, body: serde_json::Value) -> serde_json::Value {
        let request = self.request("POST", "/v2/sandboxes", body.to_string().into_bytes());
        let answer = exchange(&self.app, request).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        answer.json().expect("a JSON sandbox")
    }

    /// Kills a sandbox through the API.
    pub async fn kill(&self, id: &str) {
        let request = self.request("DELETE", &format!("/sandboxes/{id}"), Vec::new());
        let answer = exchange(&self.app, request).await;
        assert!(
            answer.status == StatusCode::NO_CONTENT || answer.status == StatusCode::NOT_FOUND,
            "killing {id}: {answer:?}"
        );
    }
}

fn server_config(dir: &Path, max_sandboxes: usize) -> cove_server::ServerConfig {
    cove_server::ServerConfig {
        runtime: Default::default(),
        listen: "127.0.0.1:0".parse().expect("an address"),
        state_dir: dir.to_owned(),
        database: None,
        node: None,
        domain: Some(DOMAIN.to_owned()),
        api_keys: vec![API_KEY.to_owned()],
        kill_on_exit: false,
        max_sandboxes,
        max_sandbox_memory_mb: Some(4096),
        max_sandbox_cpus: Some(4),
        max_starting: None,
        max_waiting: None,
        no_new_privs: false,
        disk_mb: 1024,
        volume_mb: 64,
        warm: 0,
        exe: "/nonexistent/cove".into(),
        egress: Default::default(),
        log_kb: 4096,
        front: Default::default(),
        templates: Default::default(),
        operations: Default::default(),
    }
}

// ---------------------------------------------------------------------------------------------
// JSON comparison.

/// Whether two JSON values are equal, numbers within a relative 1e-9 (serde_json's default
/// float parser may round a printed float to a neighbouring one).
pub fn json_close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w)))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------------
// The envd-compatible messages.

/// Something to do with one message type, chosen at run time.
pub trait MessageVisitor {
    fn visit<M>(self, name: &'static str)
    where
        M: cove_proto::connect::Wire + PartialEq + std::fmt::Debug;
}

macro_rules! messages {
    ($($module:ident :: $name:ident),* $(,)?) => {
        /// Names of every request and response message of the two services.
        pub const MESSAGES: &[&str] = &[$(stringify!($name)),*];

        /// Calls `visitor` with the message type named `name` (see [`pick`]).
        pub fn visit_message(name: &str, visitor: impl MessageVisitor) {
            match pick(name, MESSAGES) {
                $(stringify!($name) => visitor.visit::<cove_proto::$module::$name>(stringify!($name)),)*
                _ => unreachable!("pick returns one of MESSAGES"),
            }
        }
    };
}

messages!(
    process::ListRequest,
    process::ListResponse,
    process::StartRequest,
    process::StartResponse,
    process::ConnectRequest,
    process::ConnectResponse,
    process::UpdateRequest,
    process::UpdateResponse,
    process::StreamInputRequest,
    process::StreamInputResponse,
    process::SendInputRequest,
    process::SendInputResponse,
    process::SendSignalRequest,
    process::SendSignalResponse,
    process::CloseStdinRequest,
    process::CloseStdinResponse,
    filesystem::StatRequest,
    filesystem::StatResponse,
    filesystem::MakeDirRequest,
    filesystem::MakeDirResponse,
    filesystem::MoveRequest,
    filesystem::MoveResponse,
    filesystem::ListDirRequest,
    filesystem::ListDirResponse,
    filesystem::RemoveRequest,
    filesystem::RemoveResponse,
    filesystem::WatchDirRequest,
    filesystem::WatchDirResponse,
    filesystem::CreateWatcherRequest,
    filesystem::CreateWatcherResponse,
    filesystem::GetWatcherEventsRequest,
    filesystem::GetWatcherEventsResponse,
    filesystem::RemoveWatcherRequest,
    filesystem::RemoveWatcherResponse,
);

/// Whether `err`, from serialising a message to JSON, is one the proto3 JSON mapping cannot
/// avoid for a message that came from the binary codec: an enum number no variant has, or a
/// timestamp outside RFC 3339's years 1–9999 (or with nanoseconds out of range).
pub fn unrepresentable_in_json(err: &serde_json::Error) -> bool {
    let text = err.to_string();
    text.contains("Invalid variant")
        || text.contains("out-of-range datetime")
        || text.contains("out of range integral type conversion")
}

/// Whether the JSON holds a timestamp outside years 0–9999 (`+11476-…`, `-0249-…`): the proto3
/// JSON mapping has no form for those, and what pbjson writes for them does not parse again.
/// (The agent clamps the times it sends into range: `filesystem/entry.rs`.)
pub fn has_unparseable_timestamp(json: &[u8]) -> bool {
    fn walk(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(s) => {
                let mut chars = s.chars();
                matches!(chars.next(), Some('+' | '-'))
                    && chars.next().is_some_and(|c| c.is_ascii_digit())
                    && s.contains('T')
            }
            serde_json::Value::Array(items) => items.iter().any(walk),
            serde_json::Value::Object(map) => map.values().any(walk),
            _ => false,
        }
    }
    serde_json::from_slice(json).is_ok_and(|v| walk(&v))
}
