//! The `cove` client commands as a user runs them: the real binary against a real server, and
//! `cove shell` in a real terminal (tmux).
#![allow(clippy::unwrap_used)]

use std::{
    path::Path,
    process::{Command as StdCommand, Output},
    time::Duration,
};

use assert_cmd::Command;
use cove_test_util::{TestServer, wait_until};
use sha2::{Digest, Sha256};

fn cove_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cove"))
}

async fn server() -> TestServer {
    TestServer::start_with_args(cove_bin(), &["--warm-pool", "0"]).await
}

/// `cove ARGS…` pointed at `server` through the COVE_* variables.
fn cove(server: &TestServer) -> Command {
    let mut command = Command::new(cove_bin());
    command
        .env("COVE_API_URL", server.url())
        .env("COVE_API_KEY", &server.api_key)
        .env_remove("E2B_API_URL")
        .env_remove("E2B_SANDBOX_URL")
        .env_remove("E2B_API_KEY")
        .env("COVE_LOG", "warn")
        .timeout(Duration::from_secs(60));
    command
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `cove ARGS…` and returns its stdout, asserting success.
fn ok(server: &TestServer, args: &[&str]) -> String {
    let output = cove(server).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "cove {args:?} failed: {}",
        stderr(&output)
    );
    stdout(&output)
}

/// Runs `cove ARGS…`, asserting it fails, and returns its exit code and stderr.
fn fails(server: &TestServer, args: &[&str]) -> (i32, String) {
    let output = cove(server).args(args).output().unwrap();
    assert!(
        !output.status.success(),
        "cove {args:?} succeeded: {}",
        stdout(&output)
    );
    (output.status.code().unwrap(), stderr(&output))
}

fn create(server: &TestServer, args: &[&str]) -> String {
    let id = ok(server, &[&["sandbox", "create"], args].concat());
    let id = id.trim().to_owned();
    assert_eq!(id.len(), 20, "{id}");
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_subcommands() {
    let server = server().await;
    let id = create(&server, &["--metadata", "who=cli-test", "--timeout", "2m"]);

    let table = ok(&server, &["sandbox", "list"]);
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("who=cli-test")),
        "{table}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&server, &["sandbox", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["sandboxID"], id.as_str());
    assert_eq!(listed[0]["metadata"]["who"], "cli-test");

    let info = ok(&server, &["sandbox", "info", &id]);
    assert!(info.contains(&format!("id        {id}")), "{info}");
    assert!(info.contains("template  base"), "{info}");
    let info: serde_json::Value =
        serde_json::from_str(&ok(&server, &["sandbox", "info", &id, "--json"])).unwrap();
    let end_before = info["endAt"].as_str().unwrap().to_owned();

    ok(&server, &["sandbox", "timeout", &id, "20m"]);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&server, &["sandbox", "info", &id, "--json"])).unwrap();
    let end_after = info["endAt"].as_str().unwrap();
    assert!(
        humantime::parse_rfc3339(end_after).unwrap()
            >= humantime::parse_rfc3339(&end_before).unwrap() + Duration::from_secs(17 * 60),
        "{end_before} -> {end_after}"
    );

    let metrics: serde_json::Value =
        serde_json::from_str(&ok(&server, &["sandbox", "metrics", &id, "--json"])).unwrap();
    assert!(metrics[0]["memTotal"].as_u64().unwrap() > 0);
    assert!(ok(&server, &["sandbox", "metrics", &id]).contains("MEM TOTAL"));

    let logs = ok(&server, &["logs", &id]);
    assert!(logs.contains("agent listening"), "{logs}");
    let logs: serde_json::Value =
        serde_json::from_str(&ok(&server, &["logs", &id, "--json"])).unwrap();
    assert!(!logs["logEntries"].as_array().unwrap().is_empty());

    let created: serde_json::Value = serde_json::from_str(&ok(
        &server,
        &["sandbox", "create", "--json", "--no-internet", "-e", "A=1"],
    ))
    .unwrap();
    let second = created["sandboxID"].as_str().unwrap().to_owned();
    assert_eq!(created["allowInternetAccess"], false);

    ok(&server, &["sandbox", "kill", &id]);
    let (code, message) = fails(&server, &["sandbox", "kill", &id]);
    assert_eq!(code, 1);
    assert!(
        message.contains(&format!("no such sandbox: {id}")),
        "{message}"
    );
    let (_, message) = fails(&server, &["sandbox", "info", &id]);
    assert!(
        message.contains(&format!("cannot get sandbox {id}: not found")),
        "{message}"
    );
    ok(&server, &["sandbox", "kill", "--all"]);
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&server, &["sandbox", "list", "--json"])).unwrap();
    assert_eq!(listed, serde_json::json!([]), "{second} still listed");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_streams_output_and_returns_the_exit_code() {
    let server = server().await;
    let id = create(&server, &[]);

    let output = cove(&server)
        .args([
            "exec",
            &id,
            "--",
            "bash",
            "-c",
            "echo out; echo err >&2; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(7));
    assert_eq!(stdout(&output), "out\n");
    assert_eq!(stderr(&output), "err\n");

    // Options, piped stdin, and a program killed by a signal.
    let output = cove(&server)
        .args(["exec", "-w", "/tmp", "-e", "X=y", "-u", "root", &id, "--"])
        .args(["bash", "-c", "echo $X $(pwd) $(id -un); wc -c"])
        .write_stdin(vec![b'z'; 100_000])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "y /tmp root\n100000\n");
    let killed = cove(&server)
        .args(["exec", &id, "--", "bash", "-c", "kill -9 $$"])
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), Some(137));
    assert!(
        stderr(&killed).contains("signal: killed"),
        "{}",
        stderr(&killed)
    );
    let (code, message) = fails(
        &server,
        &["exec", "--timeout", "1", &id, "--", "sleep", "30"],
    );
    assert_eq!(code, 1);
    assert!(message.contains("timed out"), "{message}");

    // Output arrives while the program still runs: the first line shows before the file that
    // lets the program finish exists.
    let mut child = StdCommand::new(cove_bin())
        .env("COVE_API_URL", server.url())
        .env("COVE_API_KEY", &server.api_key)
        .args(["exec", &id, "--", "bash", "-c"])
        .arg("echo started; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo finished")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut line = [0u8; 8];
        out.read_exact(&mut line).unwrap();
        (line, out)
    });
    let (line, mut out) = tokio::time::timeout(Duration::from_secs(60), first)
        .await
        .expect("the first line arrives before the program ends")
        .unwrap();
    assert_eq!(&line, b"started\n");
    ok(&server, &["exec", &id, "--", "touch", "/tmp/go"]);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "finished\n");
    assert!(child.wait().unwrap().success());

    let (_, message) = fails(&server, &["exec", &id, "--", "/no/such/program"]);
    assert!(
        message.contains("cannot start /no/such/program: not found"),
        "{message}"
    );
    let (_, message) = fails(&server, &["exec", "nosuchsandbox", "--", "true"]);
    assert!(
        message.contains("cannot reach sandbox nosuchsandbox: not found"),
        "{message}"
    );
    ok(&server, &["sandbox", "kill", &id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cp_copies_both_ways() {
    let server = server().await;
    let id = create(&server, &[]);
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    let data: Vec<u8> = (0..5u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&big, &data).unwrap();

    // Into a directory (named by a trailing slash), then back to a new name.
    let target = format!("{id}:/home/user/in/");
    let copied = cove(&server)
        .args(["cp", big.to_str().unwrap(), &target])
        .output()
        .unwrap();
    assert!(copied.status.success(), "{}", stderr(&copied));
    assert_eq!(
        stderr(&copied),
        format!("copied {} to {id}:/home/user/in/big.bin\n", big.display())
    );
    let remote_sum = ok(
        &server,
        &["exec", &id, "--", "sha256sum", "/home/user/in/big.bin"],
    );
    let local_sum = hex::encode(Sha256::digest(&data));
    assert!(
        remote_sum.starts_with(&local_sum),
        "{remote_sum} vs {local_sum}"
    );

    let back = dir.path().join("back.bin");
    ok(
        &server,
        &[
            "cp",
            &format!("{id}:/home/user/in/big.bin"),
            back.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(&back).unwrap() == data);
    // Into an existing local directory, under the file's own name.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    ok(
        &server,
        &[
            "exec",
            &id,
            "--",
            "bash",
            "-c",
            "echo small > /tmp/small.txt",
        ],
    );
    ok(
        &server,
        &["cp", &format!("{id}:/tmp/small.txt"), sub.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(sub.join("small.txt")).unwrap(),
        "small\n"
    );

    let (_, message) = fails(
        &server,
        &["cp", &format!("{id}:/nope"), sub.to_str().unwrap()],
    );
    assert!(
        message.contains("cannot read /nope: not found"),
        "{message}"
    );
    let (_, message) = fails(
        &server,
        &["cp", "/definitely/missing", &format!("{id}:/tmp/")],
    );
    assert!(
        message.contains("cannot read /definitely/missing"),
        "{message}"
    );
    let (_, message) = fails(
        &server,
        &["cp", dir.path().to_str().unwrap(), &format!("{id}:/tmp/")],
    );
    assert!(message.contains("is not a file"), "{message}");
    let (_, message) = fails(&server, &["cp", "a", "b"]);
    assert!(
        message.contains("neither side is in a sandbox"),
        "{message}"
    );
    ok(&server, &["sandbox", "kill", &id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_completions_and_errors() {
    let server = server().await;
    let table = ok(&server, &["template", "list"]);
    assert!(table.lines().any(|l| l.starts_with("base ")), "{table}");
    let templates: serde_json::Value =
        serde_json::from_str(&ok(&server, &["template", "list", "--json"])).unwrap();
    assert!(
        templates
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["templateID"] == "base")
    );
    let empty = tempfile::tempdir().unwrap();
    let (code, message) = fails(
        &server,
        &[
            "template",
            "build",
            empty.path().to_str().unwrap(),
            "--name",
            "mine",
        ],
    );
    assert_eq!(code, 1);
    assert!(message.contains("holds no Dockerfile"), "{message}");

    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef cove"),
        ("fish", "complete -c cove"),
    ] {
        let script = ok(&server, &["completions", shell]);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("exec") && script.contains("sandbox"),
            "{shell}"
        );
    }

    // A wrong key, no key, no server: a clear message and a non-zero exit.
    let output = cove(&server)
        .env("COVE_API_KEY", "cove_wrong")
        .args(["sandbox", "list"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with("cove: cannot list sandboxes: not authenticated:"),
        "{}",
        stderr(&output)
    );
    let output = cove(&server)
        .env_remove("COVE_API_KEY")
        .args(["sandbox", "list"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("set COVE_API_KEY or E2B_API_KEY"),
        "{}",
        stderr(&output)
    );
    // The E2B variables work as well, and flags win over both.
    let output = Command::new(cove_bin())
        .env_remove("COVE_API_URL")
        .env_remove("COVE_API_KEY")
        .env("E2B_API_URL", server.url())
        .env("E2B_API_KEY", &server.api_key)
        .args(["sandbox", "list", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let output = cove(&server)
        .env("COVE_API_KEY", "cove_wrong")
        .args(["sandbox", "list", "--api-key", &server.api_key])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));

    let (_, message) = fails(&server, &["shell", "nosuchsandbox"]);
    assert!(message.contains("cove shell needs a terminal"), "{message}");
}

/// A tmux server of its own, its socket in a directory of the test's (not in the host's
/// `/tmp/tmux-0`), killed when the test ends.
struct Tmux {
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let output = StdCommand::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux is installed (scripts/setup)");
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "cove"])
    }

    /// Waits for `text` to appear; the panic shows the screen as it was.
    async fn shows(&self, text: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{text:?} never showed; the terminal:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = StdCommand::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_in_a_real_terminal() {
    let server = server().await;
    let id = create(&server, &[]);
    let dir = tempfile::Builder::new()
        .prefix("cove-tmux-")
        .tempdir()
        .unwrap();
    let tmux = Tmux {
        socket: dir.path().join("socket"),
        _dir: dir,
    };
    // After the shell ends, `cat` keeps the pane open so its last lines can be read.
    let command = format!(
        "env COVE_API_URL={} COVE_API_KEY={} COVE_LOG=warn {} shell {id}; echo shell-exit=$?; exec cat",
        server.url(),
        server.api_key,
        cove_bin().display()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "cove",
        "-x",
        "100",
        "-y",
        "30",
        &command,
    ]);
    tmux.shows("user@sandbox:~$").await;

    tmux.run(&[
        "send-keys",
        "-t",
        "cove",
        "echo typed-$((6 * 7)); stty size",
        "Enter",
    ]);
    tmux.shows("typed-42").await;
    tmux.shows("30 100").await;

    tmux.run(&["resize-window", "-t", "cove", "-x", "120", "-y", "40"]);
    // The resize reaches the sandbox asynchronously (SIGWINCH, then an RPC): ask until it shows.
    // One question at a time: each waits for its own answer, so a loaded machine does not
    // find a queue of typed-ahead commands in front of the next step.
    let mut attempt = 0;
    loop {
        attempt += 1;
        tmux.run(&[
            "send-keys",
            "-t",
            "cove",
            // The answer reads `size3= 40 120`; the typed line `size$((0 + 3))=` never does.
            &format!("clear; echo size$((0 + {attempt}))= $(stty size)"),
            "Enter",
        ]);
        let screen = tmux.shows(&format!("size{attempt}= ")).await;
        if screen.contains(&format!("size{attempt}= 40 120")) {
            break;
        }
        assert!(
            attempt < 30,
            "the new size never reached the sandbox:\n{screen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Keys the local terminal would act on go to the shell: Ctrl-C interrupts a remote sleep.
    tmux.run(&["send-keys", "-t", "cove", "clear; sleep 300", "Enter"]);
    // Only once `sleep` runs: a Ctrl-C before that reaches the shell, not the sleep.
    wait_until("the sleep to start", Duration::from_secs(60), || {
        let output = cove(&server)
            .args(["exec", &id, "--", "pgrep", "-x", "sleep"])
            .output();
        async move { output.ok()?.status.success().then_some(()) }
    })
    .await;
    tmux.run(&["send-keys", "-t", "cove", "C-c"]);
    tmux.run(&["send-keys", "-t", "cove", "echo after-$((1 + 1))", "Enter"]);
    tmux.shows("after-2").await;

    tmux.run(&["send-keys", "-t", "cove", "C-d"]);
    let screen = tmux.shows("shell-exit=0").await;
    assert!(screen.contains("logout"), "{screen}");
    let listed = ok(&server, &["exec", &id, "--", "ps", "-eo", "comm"]);
    assert!(!listed.lines().any(|l| l == "sleep"), "{listed}");
    ok(&server, &["sandbox", "kill", &id]);
}

#[test]
fn doctor_checks_the_host_and_says_how_to_fix_what_is_missing() {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(cove_bin())
        .args(["doctor", "--json", "--state-dir"])
        .arg(state.path())
        .output()
        .unwrap();
    // This machine runs sandboxes: nothing fails (warnings may be).
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for name in [
        "kernel",
        "cgroups",
        "loop devices",
        "slirp4netns",
        "disk space",
    ] {
        assert!(checks.iter().any(|c| c["name"] == name), "no {name} check");
    }
    for check in &checks {
        assert_ne!(check["status"], "fail", "{check}");
        assert_eq!(
            check["status"] == "ok",
            check.get("fix").is_none(),
            "{check}"
        );
    }
    // cove-init is built beside cove.
    let init = checks.iter().find(|c| c["name"] == "cove-init").unwrap();
    assert_eq!(init["status"], "ok", "{init}");
    // With runsc, what gVisor sandboxes cannot do on it is found by asking it.
    if std::path::Path::new("/usr/bin/runsc").exists() {
        let statx = checks
            .iter()
            .find(|c| c["name"] == "gvisor-statx")
            .expect("no gvisor-statx check");
        let found = statx["found"].as_str().unwrap();
        assert!(found.contains("GNU ls and stat"), "{statx}");
        assert!(checks.iter().any(|c| c["name"] == "gvisor-backend"));
    }
    let text = Command::new(cove_bin())
        .args(["doctor", "--state-dir"])
        .arg(state.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("ok    kernel"));
}
