//! What the attack and fault suites share: the server binary, sandboxes, root inside, and
//! looks at the host.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

pub mod cluster;
pub mod refusals;

use cove_sdk::{AgentClient, CreateOptions, Error, Sandbox};
use cove_test_util::TestServer;

pub fn cove() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cove"))
}

pub async fn sandbox(server: &TestServer, options: CreateOptions) -> Sandbox {
    Sandbox::create(&server.config(), options).await.unwrap()
}

/// The sandbox's agent, as root inside.
pub fn root(sbx: &Sandbox) -> AgentClient {
    sbx.agent().clone().as_user("root")
}

/// Runs a shell command as `agent`'s user; its stdout and stderr, and `exit N` when it
/// failed.
pub async fn sh(agent: &AgentClient, script: &str) -> String {
    match agent.commands().run(script).await {
        Ok(out) => format!("{}{}", out.stdout, out.stderr),
        Err(Error::CommandExit(exit)) => {
            format!("{}{}exit {}", exit.stdout, exit.stderr, exit.exit_code)
        }
        Err(err) => panic!("the command did not run: {err}"),
    }
}

/// Runs a Python snippet as `agent`'s user; its stdout and stderr, and `exit N` when it
/// failed.
pub async fn python(agent: &AgentClient, code: &str) -> String {
    let out = agent
        .commands()
        .spawn(cove_sdk::Command::new("python3").args(["-c", code]))
        .await
        .unwrap()
        .wait()
        .await;
    match out {
        Ok(out) => format!("{}{}", out.stdout, out.stderr),
        Err(Error::CommandExit(exit)) => {
            format!("{}{}exit {}", exit.stdout, exit.stderr, exit.exit_code)
        }
        Err(err) => panic!("python did not run: {err}"),
    }
}

/// A raw system call from Python; prints `errno N` or `ok`.
pub fn syscall_probe(nr: i64, args: &str) -> String {
    format!(
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nr = libc.syscall({nr}{args})\nprint('ok' if r >= 0 else f'errno {{ctypes.get_errno()}}')"
    )
}

/// The host directory of sandbox `id` (the namespace backend's).
pub fn sandbox_dir(server: &TestServer, id: &str) -> PathBuf {
    server.state_dir().join("sandboxes").join(id)
}

/// Bytes the host's disk holds for everything below `dir` (allocated, not apparent).
pub fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

/// Loop devices whose backing file lies below `dir` (every running sandbox has one, and so
/// does each image the disk pool keeps mounted ahead).
pub fn loop_devices_under(dir: &Path) -> Vec<String> {
    let out = std::process::Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(dir.to_str().unwrap()))
        .map(str::to_owned)
        .collect()
}
