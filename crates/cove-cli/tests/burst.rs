//! Concurrency is normal load: bursts of creates, pauses, resumes and kills, with and
//! without internet access, past the warm pool, each answered as asked and nothing left
//! behind.
#![allow(clippy::unwrap_used)]

mod common;

use common::{cove, loop_devices_under};
use cove_sdk::{CreateOptions, Sandbox, snapshots::PauseMode};
use cove_test_util::{TestServer, wait_until};
use futures::{StreamExt, stream};
use std::time::Duration;

const SANDBOXES: usize = 100;
const AT_ONCE: usize = 25;

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_creates_then_kills_never_fails() {
    let server =
        TestServer::start_with_args(cove(), &["--warm-pool", "0", "--sandbox-disk-mb", "256"])
            .await;
    let config = server.config();
    let created: Vec<_> = stream::iter(0..SANDBOXES)
        .map(|n| {
            let config = config.clone();
            async move {
                let options = CreateOptions {
                    allow_internet_access: Some(n % 2 == 0),
                    ..CreateOptions::default()
                };
                let sbx = Sandbox::create(&config, options).await?;
                let out = sbx.commands().run("echo up").await?;
                Ok::<_, cove_sdk::Error>((sbx, out.stdout))
            }
        })
        .buffer_unordered(AT_ONCE)
        .collect()
        .await;
    let mut sandboxes = Vec::new();
    for result in created {
        let (sbx, out) = result.unwrap_or_else(|err| panic!("a create failed: {err}"));
        assert_eq!(out, "up\n");
        sandboxes.push(sbx);
    }
    assert_eq!(Sandbox::list(&config).await.unwrap().len(), SANDBOXES);
    assert_eq!(
        loop_devices_under(&server.state_dir().join("sandboxes")).len(),
        SANDBOXES
    );

    let ids: Vec<String> = sandboxes.iter().map(|s| s.id().to_owned()).collect();
    let killed: Vec<_> = stream::iter(sandboxes)
        .map(|sbx| async move { sbx.kill().await })
        .buffer_unordered(AT_ONCE)
        .collect()
        .await;
    for result in killed {
        assert!(result.unwrap_or_else(|err| panic!("a kill failed: {err}")));
    }
    assert!(Sandbox::list(&config).await.unwrap().is_empty());
    assert_nothing_left(&server, &ids).await;
    // No warm pool: no sandbox's disk or directory is left (the disk pool's images wait
    // attached, elsewhere in the state directory).
    let disks = loop_devices_under(&server.state_dir().join("sandboxes"));
    assert!(disks.is_empty(), "{disks:?}");
    let left: Vec<_> = std::fs::read_dir(server.state_dir().join("sandboxes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "sandbox directories left: {left:?}");
}

/// Clients create, pause (with memory or without), resume and kill all at once; a quarter
/// kill their sandbox while it is paused. Every call succeeds and the files survive.
#[tokio::test(flavor = "multi_thread")]
async fn creates_pauses_resumes_and_kills_at_once_never_fail() {
    const CLIENTS: usize = 40;
    let server =
        TestServer::start_with_args(cove(), &["--warm-pool", "2", "--sandbox-disk-mb", "256"])
            .await;
    let config = server.config();
    let runs: Vec<_> = stream::iter(0..CLIENTS)
        .map(|n| {
            let config = config.clone();
            async move {
                let options = CreateOptions {
                    allow_internet_access: Some(n % 2 == 0),
                    ..CreateOptions::default()
                };
                let sbx = Sandbox::create(&config, options).await?;
                let id = sbx.id().to_owned();
                sbx.files().write("mine.txt", format!("{n}")).await?;
                let mode = if n % 3 == 0 {
                    PauseMode::Filesystem
                } else {
                    PauseMode::Memory
                };
                assert!(sbx.pause(mode).await?, "{id} was not running");
                if n % 4 == 0 {
                    assert!(sbx.kill().await?, "{id}: the kill of a paused sandbox");
                    return Ok::<_, cove_sdk::Error>(id);
                }
                let resumed = Sandbox::connect(&config, &id, None).await?;
                let kept = resumed.files().read("mine.txt").await?;
                assert_eq!(kept, format!("{n}").as_bytes(), "{id}");
                assert_eq!(resumed.commands().run("echo up").await?.stdout, "up\n");
                assert!(resumed.kill().await?, "{id}");
                Ok(id)
            }
        })
        .buffer_unordered(AT_ONCE)
        .collect()
        .await;
    let ids: Vec<String> = runs
        .into_iter()
        .map(|run| run.unwrap_or_else(|err| panic!("a call failed: {err}")))
        .collect();
    assert_eq!(ids.len(), CLIENTS);
    let listed = Sandbox::list(&config).await.unwrap();
    // Only the warm pool's own sandboxes are left, and they are not listed.
    assert!(listed.is_empty(), "{listed:?}");
    assert_nothing_left(&server, &ids).await;
}

/// Nothing of sandboxes `ids` is left: disks, cgroups, directories (warm sandboxes aside).
/// The cgroups of one with internet access go just after its kill is answered, once its
/// network helper's exit is through.
async fn assert_nothing_left(server: &TestServer, ids: &[String]) {
    for id in ids {
        assert!(
            !loop_devices_under(&server.state_dir().join("sandboxes"))
                .iter()
                .any(|backing| backing.contains(id.as_str())),
            "{id}'s disk is left"
        );
        let dir = server.state_dir().join("sandboxes").join(id);
        assert!(!dir.exists(), "{} is left", dir.display());
        for hierarchy in ["memory", "pids", "unified", "freezer"] {
            let cgroup = format!("/sys/fs/cgroup/{hierarchy}/cove/{id}");
            wait_until(
                &format!("{cgroup} to be removed"),
                Duration::from_secs(30),
                || async { (!std::path::Path::new(&cgroup).exists()).then_some(()) },
            )
            .await;
        }
    }
}
