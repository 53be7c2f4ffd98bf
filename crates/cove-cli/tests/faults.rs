//! Faults: an agent that dies, a server killed in the middle of a burst, the host's state
//! disk running full. Each ends in one clear state, with clear errors, and nothing left
//! behind.
#![allow(clippy::unwrap_used)]

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::{cove, loop_devices_under, root, sandbox, sandbox_dir};
use cove_sdk::{CreateOptions, Error, Sandbox};
use cove_test_util::{TestServer, wait_until};
use futures::{StreamExt, stream};

/// Waits until the server reports sandbox `id` gone, and returns what it says.
async fn gone(server: &TestServer, id: &str) -> String {
    wait_until(
        "the sandbox to be reported gone",
        Duration::from_secs(60),
        || async {
            match Sandbox::info_by_id(&server.config(), id).await {
                Err(Error::NotFound(message)) => Some(message),
                _ => None,
            }
        },
    )
    .await
}

/// The host pid of sandbox `id`'s PID 1, from the server's state.
fn pid1(server: &TestServer, id: &str) -> i32 {
    let store = cove_server::open_store(server.state_dir(), None).unwrap();
    let record = store
        .sandboxes()
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap();
    record.handle.unwrap().state["pid"].as_i64().unwrap() as i32
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_dies_is_reported_with_why_and_nothing_hangs() {
    let server = TestServer::start(cove()).await;

    // Stopped from inside, while a command streams.
    let stopped = sandbox(&server, CreateOptions::default()).await;
    let waiting = stopped
        .commands()
        .spawn(cove_sdk::Command::shell("sleep 600"))
        .await
        .unwrap();
    let _ = root(&stopped).commands().run("kill -TERM 1").await;
    let ended = tokio::time::timeout(Duration::from_secs(30), waiting.wait())
        .await
        .expect("a command of a dead sandbox hangs");
    assert!(ended.is_err(), "{ended:?}");
    let message = gone(&server, stopped.id()).await;
    assert!(message.contains("its agent exited"), "{message}");
    assert!(stopped.commands().run("true").await.is_err());

    // Killed from the host.
    let killed = sandbox(&server, CreateOptions::default()).await;
    let pid = rustix::process::Pid::from_raw(pid1(&server, killed.id())).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let message = gone(&server, killed.id()).await;
    assert!(message.contains("its agent exited"), "{message}");
    let dir = sandbox_dir(&server, killed.id());
    wait_until(
        "its files to be removed",
        Duration::from_secs(60),
        || async { (!dir.exists() && loop_devices_under(&dir).is_empty()).then_some(()) },
    )
    .await;
}

/// `cove serve` SIGKILLed while creates and uploads are under way: after a restart every
/// acknowledged sandbox and upload is there, and nothing half made is left.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_mid_burst_leaves_whole_sandboxes_or_none() {
    let mut server = TestServer::launch(cove(), false, &["--warm-pool", "0"]).await;
    let config = server.config();
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let burst = tokio::spawn(async move {
        stream::iter(0..16)
            .map(|n| {
                let (config, acked) = (config.clone(), acked_tx.clone());
                async move {
                    let sbx = Sandbox::create(&config, CreateOptions::default()).await?;
                    let content = format!("upload {n}");
                    sbx.files()
                        .write("/home/user/upload.txt", content.clone())
                        .await?;
                    let _ = acked.send((sbx.id().to_owned(), content));
                    Ok::<_, Error>(())
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await
    });
    // Some are done, others under way.
    let mut acked = Vec::new();
    while acked.len() < 4 {
        acked.push(acked_rx.recv().await.unwrap());
    }
    server.crash_and_restart().await;
    let _ = burst.await;
    while let Ok(more) = acked_rx.try_recv() {
        acked.push(more);
    }

    let config = server.config();
    let listed: Vec<String> = Sandbox::list(&config)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.sandbox_id)
        .collect();
    for (id, content) in &acked {
        assert!(listed.contains(id), "acknowledged sandbox {id} is gone");
        let sbx = Sandbox::connect(&config, id, None).await.unwrap();
        assert_eq!(
            &sbx.files()
                .read_to_string("/home/user/upload.txt")
                .await
                .unwrap(),
            content
        );
    }
    for id in &listed {
        let sbx = Sandbox::connect(&config, id, None).await.unwrap();
        assert_eq!(
            sbx.commands().run("echo whole").await.unwrap().stdout,
            "whole\n"
        );
    }
    // Nothing half made: one disk and one directory per listed sandbox.
    assert_eq!(
        loop_devices_under(&server.state_dir().join("sandboxes")).len(),
        listed.len()
    );
    let mut dirs: Vec<String> = std::fs::read_dir(server.state_dir().join("sandboxes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut expected = listed.clone();
    expected.sort();
    assert_eq!(dirs, expected);
    eprintln!(
        "{} acknowledged, {} running after the crash",
        acked.len(),
        listed.len()
    );
}

/// A filesystem of the test's own, mounted from an image; unmounted (and its loop device
/// freed) when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(mib: u64) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cove-small-disk-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("disk.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        run(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                mount.to_str().unwrap(),
            ],
        );
        Self { dir }
    }

    fn mount(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt")
    }

    fn free_bytes(&self) -> u64 {
        let stat = rustix::fs::statvfs(self.mount()).unwrap();
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount()).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?} failed");
}

/// The host's state disk runs full: creates are refused with 507 and Retry-After, running
/// sandboxes and the server stay up, and everything works again once space returns.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_state_disk_gives_clear_errors_and_recovers() {
    let disk = SmallDisk::new(512);
    let server = TestServer::launch_in(
        cove(),
        &disk.mount(),
        &["--warm-pool", "0", "--sandbox-disk-mb", "64"],
    )
    .await;
    let config = server.config();
    let running = sandbox(&server, CreateOptions::default()).await;

    let filler = disk.mount().join("filler");
    let leave = 16u64 << 20;
    run(
        "fallocate",
        &[
            "-l",
            &(disk.free_bytes() - leave).to_string(),
            filler.to_str().unwrap(),
        ],
    );
    let http = reqwest::Client::new();
    let refused = http
        .post(format!("{}/v2/sandboxes", server.url()))
        .header("x-api-key", &server.api_key)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 507);
    assert_eq!(refused.headers()["retry-after"], "30");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("disk is full"),
        "{body}"
    );
    // The server and the sandbox that runs are still there.
    assert_eq!(
        running.commands().run("echo alive").await.unwrap().stdout,
        "alive\n"
    );
    assert!(
        http.get(format!("{}/health", server.url()))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );

    std::fs::remove_file(&filler).unwrap();
    let after = sandbox(&server, CreateOptions::default()).await;
    assert_eq!(
        after.commands().run("echo back").await.unwrap().stdout,
        "back\n"
    );
    assert_eq!(Sandbox::list(&config).await.unwrap().len(), 2);
    running.kill().await.unwrap();
    after.kill().await.unwrap();
    drop(server);
    assert!(!Path::new(&disk.mount().join("filler")).exists());
}
