//! File transfers the way users make them — the official Python SDK (`files.read` as bytes
//! and as a stream, `files.write`, `write_files`), `requests` and `curl` on signed URLs, the
//! official JavaScript SDK — each beside the same client against a plain server on the
//! loopback (`python3 -m http.server` for reads, an upload sink for writes) in the same run:
//! that client's own ceiling on this machine. Large transfers run by turns with their baseline
//! (A B A B …), so that the machine's load over the run weighs on both alike.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::Context;
use cove_test_util::TestServer;
use serde_json::Value;

use crate::{
    measure::{Figure, Report, Result, Settings, Target, latency, median, paired},
    plain::{FileServer, UploadSink},
    transfer::SMALL_FILES,
};

const PYTHON_SCRIPT: &str = include_str!("sdk_transfers.py");
const JS_SCRIPT: &str = include_str!("sdk_transfers.mjs");

/// Bytes of each small file.
const SMALL_FILE_BYTES: usize = 1024;

/// The goal of every official-client row: within this many times the client's own ceiling.
const WITHIN: f64 = 1.2;

/// Transfers of each large file (and of its baseline, by turns). More than our own SDK's
/// [`crate::transfer::TRANSFER_RUNS`]: these clients keep a core busy themselves, so on two
/// cores one transfer's rate swings by as much as the goal's margin.
pub const CLIENT_RUNS: usize = 11;

/// Runs the Python and JavaScript client transfers; skips what has no client installed.
pub async fn all(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let has_python = python_has(&settings.python, "import e2b, requests").await;
    let has_node = node_sdk(&settings.js_dir);
    if !has_python {
        report.skip(format!(
            "client transfers through the Python SDK, requests and curl: no Python with the \
             `e2b` and `requests` packages at {} (scripts/setup makes one; or pass --python)",
            settings.python.display()
        ));
    }
    if !has_node {
        report.skip(format!(
            "client transfers through the JavaScript SDK: no `node` or no npm `e2b` in {} \
             (scripts/setup installs it; or pass --js-dir)",
            settings.js_dir.display()
        ));
    }
    if !has_python && !has_node {
        return Ok(());
    }
    let data = tempfile::Builder::new()
        .prefix("cove-bench-clients-")
        .tempdir()
        .context("cannot make a temporary directory")?;
    write_data(data.path(), settings.transfer_bytes)?;
    let server = TestServer::start(&settings.cove).await;
    let files = FileServer::start(&settings.python, data.path()).await?;
    let sink = UploadSink::start().await?;
    let input = serde_json::json!({
        "dir": data.path(),
        "plain_get": files.url,
        "plain_post": sink.url,
        "runs": CLIENT_RUNS,
        "small": SMALL_FILES,
    })
    .to_string();
    let result = async {
        if has_python {
            eprintln!("transfers: the official Python SDK, requests and curl");
            let samples = run(
                tokio::process::Command::new(&settings.python)
                    .arg(script(None, "py", PYTHON_SCRIPT)?.path())
                    .arg(&input),
                &server,
            )
            .await
            .context("the Python client transfers failed")?;
            python_rows(settings, &samples, report)?;
        }
        if has_node {
            eprintln!("transfers: the official JavaScript SDK");
            // Node resolves `import 'e2b'` from the script's own directory.
            let file = script(Some(&settings.js_dir), "mjs", JS_SCRIPT)?;
            let samples = run(
                tokio::process::Command::new("node")
                    .arg(file.path())
                    .arg(&input)
                    .current_dir(&settings.js_dir),
                &server,
            )
            .await
            .context("the JavaScript SDK transfers failed")?;
            js_rows(settings, &samples, report)?;
        }
        anyhow::Ok(())
    }
    .await;
    files.stop().await;
    sink.stop();
    result
}

/// Whether `python` can run `code` (imports, say).
async fn python_has(python: &Path, code: &str) -> bool {
    tokio::process::Command::new(python)
        .args(["-c", code])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

fn node_sdk(js_dir: &Path) -> bool {
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    node && js_dir.join("node_modules/e2b").is_dir()
}

/// The script written to a temporary file (in `dir` when given).
fn script(dir: Option<&Path>, ext: &str, text: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    let suffix = format!(".{ext}");
    let mut builder = tempfile::Builder::new();
    builder.prefix(".cove-bench-").suffix(&suffix);
    let file = match dir {
        Some(dir) => builder.tempfile_in(dir),
        None => builder.tempfile(),
    }
    .context("cannot write the client script")?;
    std::fs::write(file.path(), text)?;
    Ok(file)
}

/// Runs a client script against `server`; its standard output is JSON samples.
async fn run(command: &mut tokio::process::Command, server: &TestServer) -> anyhow::Result<Value> {
    let out = command
        .env("E2B_API_URL", server.url())
        .env("E2B_SANDBOX_URL", server.url())
        .env("E2B_API_KEY", &server.api_key)
        .env_remove("E2B_DEBUG")
        .env_remove("E2B_DOMAIN")
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot start the client")?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&out.stdout).context("the client printed no JSON")
}

/// The transfer data: `random.bin` (incompressible), `text.txt` (log lines, which gzip
/// shrinks to about a quarter), both `bytes` long, and `small/0..` of 1 KiB each.
fn write_data(dir: &Path, bytes: usize) -> anyhow::Result<()> {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let random: Vec<u8> = (0..bytes.div_ceil(8))
        .flat_map(|_| rng.next().to_le_bytes())
        .take(bytes)
        .collect();
    std::fs::write(dir.join("random.bin"), &random)?;
    let mut text = String::with_capacity(bytes + 200);
    const PATHS: [&str; 6] = [
        "/api/v1/items",
        "/api/v1/users",
        "/healthz",
        "/api/v1/orders",
        "/static/app.js",
        "/api/v1/search",
    ];
    const LEVELS: [&str; 4] = ["INFO", "INFO", "WARN", "DEBUG"];
    while text.len() < bytes {
        let n = rng.next();
        text.push_str(&format!(
            "2026-11-25T{:02}:{:02}:{:02}.{:03}Z {:<5} worker-{} GET {}/{} {} {} ms user={:08x}\n",
            n % 24,
            (n >> 5) % 60,
            (n >> 11) % 60,
            (n >> 17) % 1000,
            LEVELS[(n >> 27) as usize % LEVELS.len()],
            (n >> 29) % 16,
            PATHS[(n >> 33) as usize % PATHS.len()],
            (n >> 36) % 100_000,
            [200, 200, 200, 404, 500][(n >> 53) as usize % 5],
            (n >> 56) % 250,
            (n >> 20) as u32,
        ));
    }
    text.truncate(bytes);
    std::fs::write(dir.join("text.txt"), text)?;
    let small = dir.join("small");
    std::fs::create_dir(&small)?;
    for i in 0..SMALL_FILES {
        let data: Vec<u8> = (0..SMALL_FILE_BYTES / 8)
            .flat_map(|_| rng.next().to_le_bytes())
            .collect();
        std::fs::write(small.join(i.to_string()), data)?;
    }
    Ok(())
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn rates(samples: &Value, key: &str) -> anyhow::Result<f64> {
    let values = numbers(samples, key)?;
    Ok(median(values))
}

fn seconds(samples: &Value, key: &str) -> anyhow::Result<Figure> {
    let values = numbers(samples, key)?;
    Ok(latency(
        values.into_iter().map(Duration::from_secs_f64).collect(),
    ))
}

fn numbers(samples: &Value, key: &str) -> anyhow::Result<Vec<f64>> {
    samples[key]
        .as_array()
        .with_context(|| format!("no {key} in the client's output"))?
        .iter()
        .map(|s| {
            s.as_f64()
                .with_context(|| format!("a sample of {key} is not a number: {s}"))
        })
        .collect()
}

/// A throughput row, held to [`WITHIN`] of its baseline (or reported only). A row with a
/// goal was timed by turns with its baseline, and its ratio is that of the turns
/// ([`paired`]).
fn throughput(
    samples: &Value,
    name: String,
    key: &str,
    baseline_name: &str,
    baseline_key: &str,
    target: bool,
) -> anyhow::Result<Result> {
    let figure = if target {
        paired(numbers(samples, key)?, &numbers(samples, baseline_key)?)
            .with_context(|| format!("{key} beside {baseline_key}"))?
    } else {
        Figure::Throughput(rates(samples, key)?)
    };
    Ok(Result {
        name,
        figure,
        baseline_name: baseline_name.to_owned(),
        baseline: Figure::Throughput(rates(samples, baseline_key)?),
        target: target.then_some(Target::RatioBelow(WITHIN)),
    })
}

fn small(
    samples: &Value,
    name: String,
    key: &str,
    baseline_name: &str,
    baseline_key: &str,
) -> anyhow::Result<Result> {
    Ok(Result {
        name,
        figure: seconds(samples, key)?,
        baseline_name: baseline_name.to_owned(),
        baseline: seconds(samples, baseline_key)?,
        target: None,
    })
}

fn python_rows(settings: &Settings, s: &Value, report: &mut Report) -> anyhow::Result<()> {
    let mib = settings.transfer_bytes >> 20;
    let n = SMALL_FILES;
    let reads = "the SDK's HTTP client reading it from `python3 -m http.server`";
    let writes = "the SDK's HTTP client posting the same body to a plain upload sink";
    let percent = |key: &str| -> anyhow::Result<String> {
        let share = s[format!("gzip_wire_{key}")]
            .as_f64()
            .with_context(|| format!("no gzip_wire_{key} in the Python output"))?;
        let coding = s[format!("gzip_encoding_{key}")].as_str().unwrap_or("?");
        Ok(format!(
            "{coding}, {:.0}% of the bytes on the wire",
            share * 100.0
        ))
    };
    let rows = vec![
        throughput(
            s,
            format!("download of {mib} MiB, official Python SDK `files.read(format=\"bytes\")`"),
            "sdk_read_bytes",
            reads,
            "plain_read_bytes",
            true,
        )?,
        throughput(
            s,
            format!("download of {mib} MiB, official Python SDK `files.read(format=\"stream\")`"),
            "sdk_read_stream",
            reads,
            "plain_read_stream",
            true,
        )?,
        throughput(
            s,
            format!("upload of {mib} MiB, official Python SDK `files.write` of bytes (multipart)"),
            "sdk_write",
            writes,
            "plain_write",
            true,
        )?,
        throughput(
            s,
            format!(
                "upload of {mib} MiB, official Python SDK `files.write` of a stream (octet-stream)"
            ),
            "sdk_write_stream",
            writes,
            "plain_write_stream",
            true,
        )?,
        throughput(
            s,
            format!(
                "download of {mib} MiB of text, official Python SDK `gzip=True` ({})",
                percent("text")?
            ),
            "sdk_read_gzip_text",
            reads,
            "plain_read_bytes",
            false,
        )?,
        throughput(
            s,
            format!(
                "download of {mib} MiB of random bytes, official Python SDK `gzip=True` ({})",
                percent("random")?
            ),
            "sdk_read_gzip_random",
            reads,
            "plain_read_bytes",
            false,
        )?,
        small(
            s,
            format!("upload of 1 KiB files, {n} one after the other, official Python SDK"),
            "sdk_small_write",
            writes,
            "plain_small_write",
        )?,
        small(
            s,
            format!("download of 1 KiB files, {n} one after the other, official Python SDK"),
            "sdk_small_read",
            reads,
            "plain_small_read",
        )?,
        throughput(
            s,
            format!("`write_files` of {n} files of 1 KiB in one call, official Python SDK"),
            "sdk_write_files",
            writes,
            "plain_write_files",
            false,
        )?,
        throughput(
            s,
            format!("download of {mib} MiB, `requests.get(download_url())`"),
            "requests_read",
            "`requests` reading it from `python3 -m http.server`",
            "requests_read_plain",
            true,
        )?,
        throughput(
            s,
            format!("upload of {mib} MiB, `requests.post(upload_url(), files=…)`"),
            "requests_write",
            "`requests` posting it to a plain upload sink",
            "requests_write_plain",
            true,
        )?,
        throughput(
            s,
            format!("download of {mib} MiB, `curl` of `download_url()`"),
            "curl_read",
            "`curl` reading it from `python3 -m http.server`",
            "curl_read_plain",
            false,
        )?,
        throughput(
            s,
            format!("upload of {mib} MiB, `curl --data-binary` to `upload_url()`"),
            "curl_write",
            "`curl` posting it to a plain upload sink",
            "curl_write_plain",
            false,
        )?,
    ];
    report.results.extend(rows);
    Ok(())
}

fn js_rows(settings: &Settings, s: &Value, report: &mut Report) -> anyhow::Result<()> {
    let mib = settings.transfer_bytes >> 20;
    let n = SMALL_FILES;
    let reads = "Node's `fetch` reading it from `python3 -m http.server`";
    let writes = "Node's `fetch` posting the same form to a plain upload sink";
    let rows = vec![
        throughput(
            s,
            format!("download of {mib} MiB, official JS SDK `files.read({{format: 'bytes'}})`"),
            "sdk_read_bytes",
            reads,
            "plain_read_bytes",
            true,
        )?,
        throughput(
            s,
            format!("download of {mib} MiB, official JS SDK `files.read({{format: 'stream'}})`"),
            "sdk_read_stream",
            reads,
            "plain_read_stream",
            true,
        )?,
        throughput(
            s,
            format!("upload of {mib} MiB, official JS SDK `files.write` (multipart)"),
            "sdk_write",
            writes,
            "plain_write",
            true,
        )?,
        small(
            s,
            format!("upload of 1 KiB files, {n} one after the other, official JS SDK"),
            "sdk_small_write",
            writes,
            "plain_small_write",
        )?,
        small(
            s,
            format!("download of 1 KiB files, {n} one after the other, official JS SDK"),
            "sdk_small_read",
            reads,
            "plain_small_read",
        )?,
    ];
    report.results.extend(rows);
    Ok(())
}
