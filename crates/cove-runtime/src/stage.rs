//! Stages the server runs for one job on a sandbox's files (a snapshot's copy, a reroot):
//! a fresh `cove __sandbox-init <flag>` process, host root, single-threaded, that reads a
//! JSON spec on stdin and answers with one JSON report line on stdout.
//!
//! A stage answers as soon as its job is done ([`answer`]) and may tidy up after: its exit
//! (the teardown of its private mount namespace, say) is nobody's wait. The caller takes
//! the report and leaves the process to a thread that reaps it and logs what it wrote to
//! stderr.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    path::Path,
    process::{Child, Command, Stdio},
};

use serde::{Serialize, de::DeserializeOwned};

use crate::namespace::init;

/// `PATH` of a stage: the host's system directories only.
const HOST_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs the stage `flag` of the `cove` binary at `exe` on `spec` and returns its report.
pub fn run<S: Serialize, R: DeserializeOwned>(exe: &Path, flag: &str, spec: &S) -> io::Result<R> {
    let mut child = Command::new(exe)
        .args([init::SUBCOMMAND, flag])
        .env_clear()
        .env("PATH", HOST_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let json = serde_json::to_vec(spec).map_err(io::Error::other)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A stage that died early closed the pipe; its stderr tells why.
        let _ = stdin.write_all(&json);
    }
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    match serde_json::from_str::<R>(line.trim()) {
        Ok(report) => {
            reap_later(child, flag.to_owned());
            Ok(report)
        }
        Err(_) => {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            let status = child.wait()?;
            Err(io::Error::other(format!(
                "the stage {flag} exited with {status} without a report: {}",
                stderr.trim()
            )))
        }
    }
}

/// Waits for a stage that has answered, on a thread of its own.
fn reap_later(mut child: Child, flag: String) {
    let reap = move || {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        let status = child.wait();
        if !stderr.trim().is_empty() || !status.as_ref().is_ok_and(|s| s.success()) {
            tracing::warn!(stage = %flag, ?status, stderr = %stderr.trim(), "a stage had trouble after its report");
        }
    };
    if let Err(err) = std::thread::Builder::new()
        .name("cove-stage-reaper".into())
        .spawn(reap)
    {
        tracing::warn!(%err, "cannot start a thread to reap a stage; it stays a zombie");
    }
}

/// In a stage: writes `report` as its answer and lets go of stdout, so the caller has it
/// before the stage is done tidying up and exiting.
pub fn answer<R: Serialize>(report: &R) -> io::Result<()> {
    let mut out = io::stdout();
    serde_json::to_writer(&mut out, report).map_err(io::Error::other)?;
    writeln!(out)?;
    out.flush()?;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    rustix::stdio::dup2_stdout(&null)?;
    Ok(())
}

/// Puts `what` in front of an error of a stage's step.
pub fn context(what: &'static str) -> impl FnOnce(io::Error) -> io::Error {
    move |err| io::Error::new(err.kind(), format!("{what}: {err}"))
}
