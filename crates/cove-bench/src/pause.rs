//! Pause, resume, snapshots and forks through `cove serve`, each beside what it is built
//! from, measured in the same run: a cgroup frozen and thawed by hand (pauses with memory),
//! a cold create (resumes from the files), `cp --reflink=auto --sparse=always` of the same
//! sandbox's disk image (snapshots), and creates from the template (forks).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use cove_sdk::{CreateOptions, Sandbox, snapshots::PauseMode};
use cove_test_util::TestServer;

use crate::measure::{Figure, Report, Result, Settings, Target, latency};

/// Data written in the sandbox before its snapshot.
const SNAPSHOT_MIB: usize = 100;
/// Snapshots timed (each copies [`SNAPSHOT_MIB`]).
const SNAPSHOTS: usize = 5;
/// Forks of one sandbox timed, and batches of ten.
const FORKS: usize = 20;
const FORK_BATCHES: usize = 5;

pub async fn all(settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let server = TestServer::start(&settings.cove).await;
    let config = server.config();
    // The warm sandboxes of a server that just started are still being made.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = settings.iterations.min(100);

    let (freeze, thaw) = match by_hand(n) {
        Ok(figures) => figures,
        Err(why) => {
            report.skip(format!("pause baseline (a cgroup frozen by hand): {why:#}"));
            return Ok(());
        }
    };
    let sandbox = Sandbox::create(&config, CreateOptions::default()).await?;
    sandbox
        .commands()
        .spawn(cove_sdk::Command::shell("while :; do sleep 0.1; done"))
        .await?;
    let (mut pauses, mut resumes) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let started = Instant::now();
        anyhow::ensure!(sandbox.pause(PauseMode::Memory).await?, "not paused");
        pauses.push(started.elapsed());
        let started = Instant::now();
        Sandbox::connect(&config, sandbox.id(), None).await?;
        resumes.push(started.elapsed());
    }
    report.results.push(Result {
        name: "pause with memory (cgroup frozen), API call".into(),
        figure: latency(pauses),
        baseline_name: "a cgroup frozen by hand (FROZEN, polled)".into(),
        baseline: freeze,
        target: Some(Target::LatencyBelow(Duration::from_millis(5))),
    });
    report.results.push(Result {
        name: "resume with memory (connect → 201), API call".into(),
        figure: latency(resumes),
        baseline_name: "a cgroup thawed by hand".into(),
        baseline: thaw,
        target: Some(Target::LatencyBelow(Duration::from_millis(5))),
    });

    let m = n.min(30);
    let (mut pauses, mut resumes) = (Vec::with_capacity(m), Vec::with_capacity(m));
    for _ in 0..m {
        let started = Instant::now();
        anyhow::ensure!(sandbox.pause(PauseMode::Filesystem).await?, "not paused");
        pauses.push(started.elapsed());
        let started = Instant::now();
        let resumed = Sandbox::connect(&config, sandbox.id(), None).await?;
        let out = resumed.commands().run("echo up").await?;
        resumes.push(started.elapsed());
        anyhow::ensure!(out.stdout == "up\n", "unexpected output {:?}", out.stdout);
    }
    let cold = cold_creates(settings, m).await?;
    report.results.push(Result {
        name: "pause without memory (processes end, files kept), API call".into(),
        figure: latency(pauses),
        baseline_name: "a cold create → first command output".into(),
        baseline: cold,
        target: None,
    });
    report.results.push(Result {
        name: "resume without memory → first command output".into(),
        figure: latency(resumes),
        baseline_name: "a cold create → first command output".into(),
        baseline: cold,
        target: None,
    });
    sandbox.kill().await?;

    report.results.push(snapshot(&server, 0, true).await?);
    report
        .results
        .push(snapshot(&server, SNAPSHOT_MIB, true).await?);
    report
        .results
        .push(snapshot(&server, SNAPSHOT_MIB, false).await?);
    report.results.extend(forks(&server, cold).await?);
    Ok(())
}

/// `n` freezes and thaws of a cgroup holding one sleeping process, polled until done.
fn by_hand(n: usize) -> anyhow::Result<(Figure, Figure)> {
    let (dir, state, frozen, thawed) = if Path::new("/sys/fs/cgroup/freezer/tasks").exists() {
        let dir = PathBuf::from(format!(
            "/sys/fs/cgroup/freezer/cove-bench-{}",
            std::process::id()
        ));
        (dir.clone(), dir.join("freezer.state"), "FROZEN", "THAWED")
    } else {
        let dir = PathBuf::from(format!("/sys/fs/cgroup/cove-bench-{}", std::process::id()));
        (dir.clone(), dir.join("cgroup.freeze"), "1", "0")
    };
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut sleeper = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()?;
    let measured = (|| -> anyhow::Result<(Figure, Figure)> {
        std::fs::write(dir.join("cgroup.procs"), sleeper.id().to_string())?;
        let is = |want: &str| -> anyhow::Result<bool> {
            if state.ends_with("cgroup.freeze") {
                let events = std::fs::read_to_string(dir.join("cgroup.events"))?;
                Ok(events.contains(&format!("frozen {want}")))
            } else {
                Ok(std::fs::read_to_string(&state)?.trim() == want)
            }
        };
        let (mut freezes, mut thaws) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            for (value, samples) in [(frozen, &mut freezes), (thawed, &mut thaws)] {
                let started = Instant::now();
                std::fs::write(&state, value)?;
                while !is(value)? {
                    std::thread::sleep(Duration::from_micros(100));
                }
                samples.push(started.elapsed());
            }
        }
        Ok((latency(freezes), latency(thaws)))
    })();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = std::fs::remove_dir(&dir);
    measured
}

/// Creates on a server without warm sandboxes, each until its first output.
async fn cold_creates(settings: &Settings, n: usize) -> anyhow::Result<Figure> {
    let server = TestServer::start_with_args(&settings.cove, &["--warm-pool", "0"]).await;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let sandbox = Sandbox::create(&server.config(), CreateOptions::default()).await?;
        sandbox.commands().run("true").await?;
        samples.push(started.elapsed());
        sandbox.kill().await?;
    }
    Ok(latency(samples))
}

/// A snapshot of a sandbox that wrote `mib` of new data (and deleted it again unless
/// `kept`), beside a copy of its disk image with `cp --reflink=auto --sparse=always` (what a
/// snapshot of the whole image would cost: deleted data stays in the image's blocks).
async fn snapshot(server: &TestServer, mib: usize, kept: bool) -> anyhow::Result<Result> {
    let config = server.config();
    let sandbox = Sandbox::create(&config, CreateOptions::default()).await?;
    let delete = if kept { "" } else { " && rm ~/data && sync" };
    sandbox
        .commands()
        .run(&format!(
            "head -c {mib}M /dev/urandom > ~/data && sync{delete}"
        ))
        .await?;
    let (mut ours, mut copies) = (Vec::new(), Vec::new());
    let image = server
        .state_dir()
        .join("sandboxes")
        .join(sandbox.id())
        .join("disk.img");
    let scratch = tempfile::Builder::new()
        .prefix("cove-bench-image-")
        .tempdir_in(server.state_dir())?;
    for _ in 0..SNAPSHOTS {
        let started = Instant::now();
        let info = sandbox.snapshot(None).await?;
        ours.push(started.elapsed());
        Sandbox::delete_snapshot(&config, &info.snapshot_id).await?;

        let copy = scratch.path().join("copy.img");
        let started = Instant::now();
        let status = Command::new("cp")
            .args(["--reflink=auto", "--sparse=always"])
            .arg(&image)
            .arg(&copy)
            .status()?;
        copies.push(started.elapsed());
        anyhow::ensure!(status.success(), "cp of the image failed");
        std::fs::remove_file(&copy)?;
    }
    sandbox.kill().await?;
    Ok(Result {
        name: if kept {
            format!(
                "snapshot of a sandbox holding {mib} MiB written (frozen, its writable layer copied)"
            )
        } else {
            format!("snapshot of a sandbox that wrote {mib} MiB and deleted it")
        },
        figure: latency(ours),
        baseline_name: "`cp --reflink=auto --sparse=always` of the same sandbox's disk image"
            .into(),
        baseline: latency(copies),
        target: None,
    })
}

/// Fork → the fork's first command output, for one fork and for ten at once, beside creates
/// from the template (warm pool) to their first output.
async fn forks(server: &TestServer, cold: Figure) -> anyhow::Result<Vec<Result>> {
    let config = server.config();
    let source = Sandbox::create(&config, CreateOptions::default()).await?;
    source.files().write("state.txt", "prepared").await?;
    // Forks first, then the creates they are compared with: a create takes a warm sandbox,
    // whose replacement would start beside the next fork.
    let mut one = Vec::with_capacity(FORKS);
    for _ in 0..FORKS {
        let started = Instant::now();
        let mut forks = source.fork(1, Some(Duration::from_secs(60))).await?;
        let fork = forks.pop().context("no fork")??;
        let out = fork.commands().run("cat ~/state.txt").await?;
        one.push(started.elapsed());
        anyhow::ensure!(
            out.stdout == "prepared",
            "unexpected output {:?}",
            out.stdout
        );
        fork.kill().await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut creates = Vec::with_capacity(FORKS);
    for _ in 0..FORKS {
        let started = Instant::now();
        let sandbox = Sandbox::create(&config, CreateOptions::default()).await?;
        sandbox.commands().run("true").await?;
        creates.push(started.elapsed());
        sandbox.kill().await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut ten, mut ten_creates) = (Vec::new(), Vec::new());
    for _ in 0..FORK_BATCHES {
        let started = Instant::now();
        let forks = source.fork(10, Some(Duration::from_secs(60))).await?;
        let forks: Vec<Sandbox> = forks.into_iter().collect::<cove_sdk::Result<_>>()?;
        futures::future::try_join_all(
            forks
                .iter()
                .map(|f| async move { f.commands().run("cat ~/state.txt").await }),
        )
        .await?;
        ten.push(started.elapsed());
        for fork in forks {
            fork.kill().await?;
        }

        let started = Instant::now();
        let sandboxes = futures::future::try_join_all(
            (0..10).map(|_| Sandbox::create(&config, CreateOptions::default())),
        )
        .await?;
        futures::future::try_join_all(
            sandboxes
                .iter()
                .map(|s| async move { s.commands().run("true").await }),
        )
        .await?;
        ten_creates.push(started.elapsed());
        for sandbox in sandboxes {
            sandbox.kill().await?;
        }
    }
    source.kill().await?;
    let one = latency(one);
    Ok(vec![
        Result {
            name: "fork count=1 → the fork's first command output".into(),
            figure: one,
            baseline_name: "create → first command output (same server, warm pool)".into(),
            baseline: latency(creates),
            target: Some(Target::LatencyBelow(Duration::from_millis(30))),
        },
        Result {
            name: "fork count=1 → the fork's first command output, against a cold create".into(),
            figure: one,
            baseline_name: "a cold create → first command output (what every fork pays)".into(),
            baseline: cold,
            target: None,
        },
        Result {
            name: "fork count=10 → every fork's first command output".into(),
            figure: latency(ten),
            baseline_name: "10 creates at once → every first command output".into(),
            baseline: latency(ten_creates),
            target: None,
        },
    ])
}
