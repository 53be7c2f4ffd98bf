//! Attacks on what the host opens, follows or connects to for a sandbox, made by root inside
//! it (and, for the server's own check, by an unprivileged user of the host): none of it may
//! lie where they can change it, and nothing a sandbox stores lands outside its quota.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::MetadataExt, process::CommandExt},
    process::{Command, Stdio},
};

use common::{allocated_bytes, cove, root, sandbox, sandbox_dir, sh};
use cove_sdk::{CreateOptions, Sandbox};
use cove_test_util::TestServer;

/// The attack of the finding: root inside replaces the agent's socket with a link to a host
/// socket (a container engine's, say) and waits for the server to forward requests there.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_socket_cannot_be_redirected() {
    let server = TestServer::start(cove()).await;
    let sbx = sandbox(&server, CreateOptions::default()).await;
    let bait_dir = tempfile::tempdir().unwrap();
    let bait = bait_dir.path().join("engine.sock");
    let engine = std::os::unix::net::UnixListener::bind(&bait).unwrap();
    engine.set_nonblocking(true).unwrap();

    let planted = sh(
        &root(&sbx),
        &format!(
            "mkdir -p /.cove/run && ln -sf {b} /.cove/run/agent.sock && ln -sf {b} /agent.sock \
             && ls -la /.cove/run && for s in $(find / -xdev -type s 2>/dev/null); do rm -f $s && ln -s {b} $s; done; \
             cat /proc/self/mountinfo",
            b = bait.display()
        ),
    )
    .await;
    assert!(planted.contains("agent.sock ->"), "{planted}");
    // Nothing inside names the host's state directory.
    let state = server.state_dir().to_str().unwrap();
    assert!(
        !planted.contains(state),
        "mountinfo shows {state}: {planted}"
    );

    // The sandbox is still driven through its own agent, and the host socket hears nothing.
    assert_eq!(sbx.commands().run("echo ok").await.unwrap().stdout, "ok\n");
    sbx.files().write("/tmp/x", "data").await.unwrap();
    assert_eq!(sbx.files().read_to_string("/tmp/x").await.unwrap(), "data");
    sbx.metrics().await.unwrap();
    assert_eq!(
        engine.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the host socket was connected to"
    );

    // Everything in the sandbox's host directory is host root's, and no link.
    let dir = sandbox_dir(&server, sbx.id());
    let mut pending = vec![dir.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.path().symlink_metadata().unwrap();
            assert_eq!(meta.uid(), 0, "{} is not root's", entry.path().display());
            assert!(!meta.is_symlink(), "{} is a link", entry.path().display());
            assert_eq!(
                meta.mode() & 0o022,
                0,
                "{} is writable by others",
                entry.path().display()
            );
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    let parent = std::fs::metadata(dir.parent().unwrap()).unwrap();
    assert_eq!(parent.mode() & 0o777, 0o700);
    sbx.kill().await.unwrap();
}

/// Were a socket made by anyone but the server's own user ever put in the agent's place,
/// the server refuses it rather than talk to it. A connection the server made to the real
/// agent before the swap (it keeps one open between requests) still reaches the agent; every
/// request that needs a new one fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_someone_else_made_is_refused() {
    let server = TestServer::start(cove()).await;
    let sbx = sandbox(&server, CreateOptions::default()).await;
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let imposter_path = scratch.path().join("imposter.sock");
    // An unprivileged host user listens and counts what it is sent until its stdin closes.
    let script = format!(
        "import socket, sys, threading\n\
         s = socket.socket(socket.AF_UNIX); s.bind({path:?}); s.listen(64)\n\
         got = [0]\n\
         def serve():\n\
         \x20   while True:\n\
         \x20       c, _ = s.accept()\n\
         \x20       c.settimeout(1)\n\
         \x20       try:\n\
         \x20           while (d := c.recv(65536)): got[0] += len(d)\n\
         \x20       except Exception: pass\n\
         threading.Thread(target=serve, daemon=True).start()\n\
         print('ready', flush=True)\n\
         sys.stdin.read()\n\
         print('received', got[0], flush=True)\n",
        path = imposter_path.to_str().unwrap()
    );
    let mut imposter = Command::new("python3")
        .args(["-c", &script])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(imposter.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    std::fs::rename(
        &imposter_path,
        sandbox_dir(&server, sbx.id()).join("agent.sock"),
    )
    .unwrap();

    // More at once than the server ever holds open (4 a sandbox): the others need new
    // connections.
    let runs = futures::future::join_all(
        (0..6).map(|_| async { sbx.commands().run("sleep 0.5; echo hi").await }),
    )
    .await;
    let refused = runs.iter().filter(|run| run.is_err()).count();
    assert!(refused >= 2, "{refused} of 6 refused: {runs:?}");
    for run in runs.iter().flatten() {
        assert_eq!(run.stdout, "hi\n", "answered by someone but the agent");
    }

    imposter.stdin.take().unwrap().write_all(b"").unwrap();
    let last = lines.next().unwrap().unwrap();
    let _ = imposter.wait();
    assert_eq!(last, "received 0", "the imposter was sent a request");
    sbx.kill().await.unwrap();
}

/// Root inside writes everywhere it can: the host's disk holds at most the quota's worth.
/// What it wrote is flushed before the host counts: until then part of it may still sit in
/// the sandbox's page cache (charged to its memory).
#[tokio::test(flavor = "multi_thread")]
async fn nothing_a_sandbox_stores_lands_outside_its_quota() {
    let server = TestServer::start_with_args(cove(), &["--sandbox-disk-mb", "64"]).await;
    let sbx = sandbox(&server, CreateOptions::default()).await;
    let before = allocated_bytes(server.state_dir());
    let out = sh(
        &root(&sbx),
        "for d in / /tmp /var/tmp /root /home/user /run /.cove /etc /usr/local /opt /var/log; do \
           mkdir -p $d; dd if=/dev/urandom of=$d/fill bs=1M count=100 2>/dev/null; done; \
         sync -f /; df -m / | tail -1",
    )
    .await;
    let grown = allocated_bytes(server.state_dir()).saturating_sub(before);
    eprintln!("state directory grew by {} KiB: {out}", grown >> 10);
    // The quota plus the filesystem's own metadata and the disk pool's refill.
    assert!(grown <= 72 << 20, "the host took {grown} bytes: {out}");
    assert!(grown >= 48 << 20, "the writes did not happen: {out}");
    sbx.kill().await.unwrap();
}

/// The agent's log is on the host's disk, so it stays under its cap however much the code
/// in the sandbox makes the agent log.
#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_log_stays_under_its_cap() {
    let server =
        TestServer::launch_with_agent_log(cove(), &["--sandbox-log-kb", "16"], "cove_agent=debug")
            .await;
    let sbx = sandbox(&server, CreateOptions::default()).await;
    let log = sandbox_dir(&server, sbx.id()).join("sandbox.log");
    for n in 0..300 {
        sbx.commands()
            .run(&format!("true {}", "x".repeat(n)))
            .await
            .unwrap();
    }
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size <= 16 << 10, "the log holds {size} bytes");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("process ended"), "{text}");
    // It still reads back through the API, starting at a whole line.
    assert!(!sbx.logs().await.unwrap().logs.is_empty());
    // Each line is one JSON object (the sandbox's stages log JSON lines).
    let first = text.lines().next().unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "a partial first line: {first}"
    );
    sbx.kill().await.unwrap();
}

/// Two servers on one host (two state directories) never run sandboxes as the same host
/// uids: per-uid limits (inotify watches, processes) would be shared.
#[tokio::test(flavor = "multi_thread")]
async fn two_servers_never_share_a_uid_range() {
    let a = TestServer::start(cove()).await;
    let b = TestServer::start(cove()).await;
    let mut bases = Vec::new();
    for server in [&a, &b, &a, &b] {
        let sbx: Sandbox = sandbox(server, CreateOptions::default()).await;
        let map = sh(sbx.agent(), "cat /proc/self/uid_map").await;
        let base: u64 = map.split_whitespace().nth(1).unwrap().parse().unwrap();
        bases.push((base, sbx));
    }
    let mut seen: Vec<u64> = bases.iter().map(|(b, _)| *b).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 4, "shared ranges: {seen:?}");
    // The leases are the host's: each running sandbox holds one.
    for (base, _) in &bases {
        let slot = (base - u64::from(cove_runtime::userns::FIRST_BASE))
            / u64::from(cove_runtime::userns::RANGE_SIZE);
        let lease =
            std::path::Path::new(cove_runtime::uid_ranges::LEASE_DIR).join(slot.to_string());
        assert!(
            cove_runtime::uid_ranges::Lease::take(lease.parent().unwrap(), slot as u32)
                .unwrap()
                .is_none(),
            "slot {slot} is not held"
        );
    }
    for (_, sbx) in bases {
        sbx.kill().await.unwrap();
    }
}
