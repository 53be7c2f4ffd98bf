//! The container runtime users would pick instead of Cove: Debian's `crun` running an OCI
//! bundle over the `base` template's layers (its root layer, the host's `/usr` bound
//! read-only), with crun's default spec (pid, network, ipc, uts and mount namespaces, a
//! cgroup of its own), timed from the start of `crun run` until `echo`'s output arrives.
//!
//! crun 1.8 refuses to start on a host whose cgroup2 hierarchy holds a controller beside v1
//! ones (a "hybrid" host, as this one is: `hugetlb` sits on cgroup2). There each run goes
//! through `unshare --mount`, which hides the cgroup2 mount from crun alone (nothing on the
//! host changes); that step is timed by itself too, running `true`, and reported beside.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::Context;
use cove_test_util::TestServer;

use crate::measure::{Figure, latency};

/// Where a hybrid host mounts cgroup2.
const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// crun's start, and what hiding cgroup2 from it cost alone (on a hybrid host).
pub struct CrunStart {
    pub start: Figure,
    pub hiding: Option<Figure>,
}

/// `n` runs of `crun run` over the `base` template's layers, each until `ready` is read.
pub async fn start_to_output(cove: &Path, n: usize) -> anyhow::Result<CrunStart> {
    let version = Command::new("crun")
        .arg("--version")
        .output()
        .context("crun is not installed (apt-get install -y crun)")?;
    anyhow::ensure!(version.status.success(), "crun --version failed");
    // A server of its own builds the base template; its layers are read while it runs.
    let server = TestServer::start_with_args(cove, &["--warm-pool", "0"]).await;
    let root = base_root(server.state_dir())?;
    let bundle = tempfile::Builder::new()
        .prefix("cove-bench-crun-")
        .tempdir()
        .context("cannot make the bundle's directory")?;
    write_config(bundle.path(), &root)?;
    let hybrid = is_hybrid();
    let bundle_path = bundle.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let id = |i: usize| format!("cove-bench-crun-{}-{i}", std::process::id());
        // The first run fills the caches, as the servers' first sandboxes do: not counted.
        run_once(&bundle_path, hybrid, &id(0))?;
        let mut samples = Vec::with_capacity(n);
        for i in 1..=n {
            samples.push(run_once(&bundle_path, hybrid, &id(i))?);
        }
        let hiding = if hybrid { Some(hiding_alone(n)?) } else { None };
        Ok(CrunStart {
            start: latency(samples),
            hiding,
        })
    })
    .await?
}

/// The root layer of the base template the server built under `state`.
fn base_root(state: &Path) -> anyhow::Result<PathBuf> {
    let base = state.join("templates/base");
    for version in fs::read_dir(&base).with_context(|| format!("no {}", base.display()))? {
        let dir = version?.path();
        if dir.join("complete").exists() {
            return Ok(dir.join("root"));
        }
    }
    anyhow::bail!("no complete base template under {}", base.display())
}

/// crun's default spec (`crun spec`), with the base template's root read-only, the host's
/// `/usr` bound read-only, and `echo ready` as its process.
fn write_config(bundle: &Path, root: &Path) -> anyhow::Result<()> {
    let spec = Command::new("crun")
        .arg("spec")
        .current_dir(bundle)
        .status()
        .context("cannot run crun spec")?;
    anyhow::ensure!(spec.success(), "crun spec failed");
    let path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&fs::read(&path)?)?;
    config["root"] = serde_json::json!({"path": root, "readonly": true});
    config["process"]["args"] = serde_json::json!(["/bin/echo", "ready"]);
    config["process"]["terminal"] = serde_json::json!(false);
    config["mounts"]
        .as_array_mut()
        .context("crun's spec has no mounts")?
        .push(serde_json::json!({
            "destination": "/usr",
            "type": "bind",
            "source": "/usr",
            "options": ["rbind", "ro"],
        }));
    fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

/// Whether cgroup2 holds a controller while v1 hierarchies are mounted too.
fn is_hybrid() -> bool {
    fs::read_to_string(Path::new(UNIFIED).join("cgroup.controllers"))
        .is_ok_and(|controllers| !controllers.trim().is_empty())
}

/// `program args…`, through `unshare --mount` with cgroup2 unmounted on a hybrid host.
fn command(hybrid: bool, program: &str, args: &[&str]) -> Command {
    if !hybrid {
        let mut command = Command::new(program);
        command.args(args);
        return command;
    }
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!("umount {UNIFIED} && exec \"$0\" \"$@\""))
        .arg(program)
        .args(args);
    command
}

/// One `crun run`: the time until its output's first line.
fn run_once(bundle: &Path, hybrid: bool, id: &str) -> anyhow::Result<std::time::Duration> {
    let bundle = bundle.to_str().context("the bundle's path is not UTF-8")?;
    let started = Instant::now();
    let mut child = command(hybrid, "crun", &["run", "--bundle", bundle, id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run crun")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("crun's stdout")?).read_line(&mut line)?;
    let elapsed = started.elapsed();
    let out = child.wait_with_output()?;
    if !out.status.success() || line != "ready\n" {
        // crun removes a container it ran when the container ends; one that failed to
        // start may be left: remove it by its id.
        let _ = command(hybrid, "crun", &["delete", "--force", id]).output();
        anyhow::bail!(
            "crun run failed ({}), printed {line:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(elapsed)
}

/// `n` runs of the step that hides cgroup2, running `true`.
fn hiding_alone(n: usize) -> anyhow::Result<Figure> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let status = command(true, "true", &[]).status()?;
        samples.push(started.elapsed());
        anyhow::ensure!(status.success(), "unshare --mount failed");
    }
    Ok(latency(samples))
}
