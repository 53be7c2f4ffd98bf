//! Plain HTTP servers on the loopback, the baselines of the client transfer rows: a client
//! reading from `python3 -m http.server` or uploading to a sink that only stores the body
//! shows what that client itself can do on this machine, without Cove in the way.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{Json, Router, body::Body, extract::State, routing::post};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

/// How long a plain server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `python3 -m http.server` serving a directory; stopped when dropped.
pub struct FileServer {
    child: tokio::process::Child,
    pub url: String,
}

impl FileServer {
    /// Starts `python -m http.server` on a free loopback port, serving `dir`.
    pub async fn start(python: &Path, dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = tokio::process::Command::new(python)
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {} -m http.server", python.display()))?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        while tokio::net::TcpStream::connect(address).await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "python -m http.server did not listen on {address} within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            child,
            url: format!("http://{address}"),
        })
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// An upload sink: `POST /upload` stores the request body, whatever it is, in one file (in
/// writes of 1 MiB, as the agent writes uploads) and answers 200 with a JSON list.
pub struct UploadSink {
    task: tokio::task::JoinHandle<()>,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl UploadSink {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("cove-bench-sink-")
            .tempdir()
            .context("cannot make a temporary directory")?;
        let target = dir.path().join("upload");
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let app = Router::new()
            .route("/upload", post(store))
            .with_state(target);
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("the upload sink stopped: {err}");
            }
        });
        Ok(Self {
            task,
            url: format!("http://{address}"),
            _dir: dir,
        })
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

async fn store(
    State(target): State<PathBuf>,
    body: Body,
) -> Result<Json<serde_json::Value>, (axum::http::StatusCode, String)> {
    let fail = |err: std::io::Error| {
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            err.to_string(),
        )
    };
    let mut file = tokio::fs::File::create(&target).await.map_err(fail)?;
    let mut stream = body.into_data_stream();
    let mut chunk = Vec::with_capacity(1 << 20);
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|err| (axum::http::StatusCode::BAD_REQUEST, err.to_string()))?;
        chunk.extend_from_slice(&piece);
        if chunk.len() >= 1 << 20 {
            file.write_all(&chunk).await.map_err(fail)?;
            chunk.clear();
        }
    }
    file.write_all(&chunk).await.map_err(fail)?;
    file.flush().await.map_err(fail)?;
    Ok(Json(serde_json::json!([
        {"path": target.display().to_string(), "name": "upload", "type": "file"}
    ])))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
