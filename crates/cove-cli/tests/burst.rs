//! Concurrency is normal load: bursts of creates and kills, with and without internet
//! access, past the warm pool, each answered as asked and nothing left behind.
#![allow(clippy::unwrap_used)]

mod common;

use common::{cove, loop_devices_under};
use cove_sdk::{CreateOptions, Sandbox};
use cove_test_util::TestServer;
use futures::{StreamExt, stream};

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
    assert_eq!(loop_devices_under(server.state_dir()).len(), SANDBOXES);

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
    // Nothing is left: disks, cgroups, directories.
    assert!(
        loop_devices_under(server.state_dir()).is_empty(),
        "{:?}",
        loop_devices_under(server.state_dir())
    );
    for id in &ids {
        for hierarchy in ["memory", "pids", "unified"] {
            let cgroup = format!("/sys/fs/cgroup/{hierarchy}/cove/{id}");
            assert!(!std::path::Path::new(&cgroup).exists(), "{cgroup} is left");
        }
    }
    let left: Vec<_> = std::fs::read_dir(server.state_dir().join("sandboxes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "sandbox directories left: {left:?}");
}
