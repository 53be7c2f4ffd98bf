//! A real OCI registry for tests: Debian's `docker-registry` (CNCF distribution) on a free
//! loopback port with its own storage, optionally behind htpasswd Basic auth, and `skopeo`
//! to push OCI layouts into it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::wait_until;

/// A running `docker-registry`; stopped (by its pid) and its storage removed on drop.
pub struct TestRegistry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    credentials: Option<(String, String)>,
    token_service: Option<TokenService>,
}

/// How the registry wants clients to authenticate.
enum Auth {
    None,
    Basic,
    Token(TokenService),
}

impl TestRegistry {
    /// An open registry.
    pub async fn start() -> Self {
        Self::launch(None, Auth::None).await
    }

    /// A registry that wants `username` / `password` (htpasswd, bcrypt) for every request.
    pub async fn start_with_basic_auth(username: &str, password: &str) -> Self {
        Self::launch(
            Some((username.to_owned(), password.to_owned())),
            Auth::Basic,
        )
        .await
    }

    /// A registry behind token auth, as Docker Hub and GHCR are: requests without a token
    /// get a `Bearer` challenge naming a token service (run here, on another free port),
    /// which signs JWTs the registry verifies. Anyone may pull repositories under `public/`;
    /// `username` / `password` may pull and push everything.
    pub async fn start_with_token_auth(username: &str, password: &str) -> Self {
        let credentials = (username.to_owned(), password.to_owned());
        let service = TokenService::start(credentials.clone());
        Self::launch(Some(credentials), Auth::Token(service)).await
    }

    async fn launch(credentials: Option<(String, String)>, auth: Auth) -> Self {
        let binary = Path::new("/usr/bin/docker-registry");
        assert!(
            binary.exists(),
            "the docker-registry Debian package is missing (scripts/setup installs it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("cove-registry-test-")
            .tempdir()
            .expect("a temporary registry directory");
        // Any free port: the registry logs (at level info) which it got.
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:0\n  secret: cove-test-registry\n",
            storage = dir.path().join("storage").display(),
        );
        if let (Auth::Basic, Some((username, password))) = (&auth, &credentials) {
            let htpasswd = dir.path().join("htpasswd");
            let output = Command::new("htpasswd")
                .args(["-Bbn", username, password])
                .output()
                .expect("htpasswd runs (apache2-utils; scripts/setup installs it)");
            assert!(output.status.success(), "htpasswd failed");
            std::fs::write(&htpasswd, output.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: cove-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let token_service = match auth {
            Auth::Token(service) => {
                config.push_str(&service.registry_config());
                Some(service)
            }
            _ => None,
        };
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write the registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        // Made first, so that its drop stops the registry should it never say its port.
        let mut registry = Self {
            child: Some(child),
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            credentials,
            token_service,
        };
        let log_path = registry.dir.path().join("registry.log");
        let child = registry.child.as_mut().expect("just started");
        registry.addr = wait_until(
            "docker-registry to say where it listens",
            Duration::from_secs(30),
            || {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("docker-registry exited ({status}) before it listened:\n{log}");
                }
                async move { listening_address(&log) }
            },
        )
        .await;
        let url = format!("{}/v2/", registry.url());
        let http = reqwest::Client::new();
        wait_until(
            "docker-registry to answer /v2/",
            Duration::from_secs(30),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let status = http.get(&url).send().await.ok()?.status();
                    (status.is_success() || status.as_u16() == 401).then_some(())
                }
            },
        )
        .await;
        registry
    }

    /// `127.0.0.1:PORT`, as image references name it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the registry logged (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes the image tagged `tag` in the OCI layout `layout` to `name` (`repo:tag`) in
    /// this registry with skopeo; an index is pushed whole (every platform in it).
    pub fn push_layout(&self, layout: &Path, tag: &str, name: &str) {
        let mut command = Command::new("skopeo");
        command.args([
            "copy",
            "--quiet",
            "--all",
            "--dest-tls-verify=false",
            "--preserve-digests",
        ]);
        if let Some((username, password)) = &self.credentials {
            command.arg(format!("--dest-creds={username}:{password}"));
        }
        let output = command
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}", self.host()))
            .stdin(Stdio::null())
            .output()
            .expect("skopeo runs (scripts/setup installs it)");
        assert!(
            output.status.success(),
            "skopeo copy to {name} failed: {}\nregistry log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }

    /// The registry's storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Tokens the token service handed out, by scope asked (token-auth registries only).
    pub fn tokens_issued(&self) -> Vec<String> {
        self.token_service
            .as_ref()
            .map(|s| s.issued.lock().expect("issued").clone())
            .unwrap_or_default()
    }

    /// Stops the registry (SIGTERM, then SIGKILL), waiting for it to exit.
    pub fn stop(&mut self) {
        if let Some(service) = &mut self.token_service {
            service.stop();
        }
        if let Some(child) = self.child.take() {
            crate::wait::terminate(child, Duration::from_secs(10));
        }
    }
}

/// The address in docker-registry's `msg="listening on 127.0.0.1:PORT"` log line.
fn listening_address(log: &str) -> Option<SocketAddr> {
    let (_, rest) = log.split_once("msg=\"listening on ")?;
    rest.split('"').next()?.parse().ok()
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A token service as Docker Hub's `auth.docker.io`: answers `GET /token?service=&scope=`
/// with a JWT (RS256, signed by `openssl` with a key whose self-signed certificate the
/// registry trusts) granting what the caller may have.
struct TokenService {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    issued: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

const TOKEN_SERVICE: &str = "cove-test-registry";
const TOKEN_ISSUER: &str = "cove-test-token-service";

impl TokenService {
    fn start(credentials: (String, String)) -> Self {
        use base64::Engine as _;
        let dir = tempfile::Builder::new()
            .prefix("cove-registry-token-")
            .tempdir()
            .expect("a temporary key directory");
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=cove-test-token-service", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl could not make a key");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("openssl runs");
        assert!(der.status.success());
        let x5c = base64::engine::general_purpose::STANDARD.encode(der.stdout);
        // Its own thread and runtime: the tests call skopeo synchronously, which must not
        // stall the token service skopeo is talking to.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("address");
        let issued = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let state = TokenState {
            key,
            x5c,
            credentials,
            issued: issued.clone(),
        };
        let app = axum::Router::new()
            .route("/token", axum::routing::get(issue_token))
            .with_state(std::sync::Arc::new(state));
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            addr,
            dir,
            shutdown: Some(shutdown),
            thread: Some(thread),
            issued,
        }
    }

    fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn registry_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            self.addr,
            self.dir.path().join("cert.pem").display()
        )
    }
}

struct TokenState {
    key: PathBuf,
    x5c: String,
    credentials: (String, String),
    issued: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

async fn issue_token(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<TokenState>>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let authenticated = match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        None => false,
        Some(value) => {
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", state.credentials.0, state.credentials.1))
            );
            if value != expected {
                return (axum::http::StatusCode::UNAUTHORIZED, "bad credentials").into_response();
            }
            true
        }
    };
    let scope = query.get("scope").cloned().unwrap_or_default();
    let access: Vec<serde_json::Value> = scope
        .split(' ')
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let granted: Vec<&str> = actions
                .split(',')
                .filter(|a| authenticated || (*a == "pull" && name.starts_with("public/")))
                .collect();
            Some(serde_json::json!({"type": kind, "name": name, "actions": granted}))
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [state.x5c]});
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": if authenticated { state.credentials.0.as_str() } else { "" },
        "aud": TOKEN_SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", state.issued.lock().expect("issued").len()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let key = state.key.clone();
    let input = signing_input.clone();
    let signature = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("sign input");
        let output = child.wait_with_output().expect("openssl signs");
        assert!(output.status.success(), "openssl could not sign");
        output.stdout
    })
    .await
    .expect("signing");
    let token = format!("{signing_input}.{}", b64.encode(signature));
    state.issued.lock().expect("issued").push(scope);
    axum::Json(serde_json::json!({"token": token, "access_token": token})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_read_from_the_registrys_log() {
        let log = "time=\"2026-12-01T22:41:29Z\" level=info msg=\"redis not configured\"\n\
                   time=\"2026-12-01T22:41:29Z\" level=info msg=\"listening on 127.0.0.1:46149\" go.version=go1.19.8\n";
        assert_eq!(listening_address(log), Some(([127, 0, 0, 1], 46149).into()));
        assert_eq!(listening_address("level=info msg=\"starting\"\n"), None);
    }
}
