//! Drives a real ipykernel (the host's `/usr/bin/python3`, as `scripts/setup` installs it)
//! over ZeroMQ: readiness, an execution's broadcasts, an error, and an interrupt.
#![allow(clippy::unwrap_used)]

use std::{net::Ipv4Addr, process::Stdio, time::Duration};

use cove_jupyter::{Channel, ConnectionInfo, Incoming, KernelClient, Replies};
use serde_json::{Value, json};

struct Kernel {
    child: tokio::process::Child,
    client: KernelClient,
    _dir: tempfile::TempDir,
}

impl Drop for Kernel {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start() -> Kernel {
    start_with(&["-m", "ipykernel_launcher"]).await
}

/// A kernel started by `python3 <args> -f <connection file>`.
async fn start_with(args: &[&str]) -> Kernel {
    let dir = tempfile::tempdir().unwrap();
    let info = ConnectionInfo::on_free_ports(Ipv4Addr::LOCALHOST, "python3").unwrap();
    let file = dir.path().join("kernel.json");
    std::fs::write(&file, info.to_json()).unwrap();
    let child = tokio::process::Command::new("/usr/bin/python3")
        .args(args)
        .arg("-f")
        .arg(&file)
        .env("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 with ipykernel (scripts/setup installs it)");
    let client = tokio::time::timeout(Duration::from_secs(60), KernelClient::connect(&info))
        .await
        .expect("kernel listens")
        .unwrap();
    client.wait_ready(Duration::from_secs(60)).await.unwrap();
    Kernel {
        child,
        client,
        _dir: dir,
    }
}

/// Sends `code` to run. Without `stop_on_error` (as the agent sends it): with it, an error
/// makes ipykernel abort the requests that reach it in the moment after, and on a loaded
/// host the test's next request was among them (aborted, no output, the kernel idle).
async fn execute(client: &KernelClient, code: &str) -> Replies {
    client
        .request(
            Channel::Shell,
            "execute_request",
            json!({"code": code, "silent": false, "store_history": true,
                   "user_expressions": {}, "allow_stdin": false, "stop_on_error": false}),
        )
        .await
        .unwrap()
}

/// Every IOPub message of the execution up to its `idle` status.
async fn broadcasts(replies: &mut Replies) -> Vec<Incoming> {
    let mut seen = Vec::new();
    loop {
        let incoming = tokio::time::timeout(Duration::from_secs(60), replies.next())
            .await
            .expect("the kernel goes idle")
            .expect("the connection stays open");
        if incoming.channel != Channel::IoPub {
            continue;
        }
        let idle = incoming.message.msg_type() == "status"
            && incoming.message.content["execution_state"] == "idle";
        seen.push(incoming);
        if idle {
            return seen;
        }
    }
}

fn of_type<'a>(seen: &'a [Incoming], msg_type: &str) -> Vec<&'a Value> {
    seen.iter()
        .filter(|i| i.message.msg_type() == msg_type)
        .map(|i| &i.message.content)
        .collect()
}

#[tokio::test]
async fn executes_code_and_keeps_state() {
    let kernel = start().await;
    let mut replies = execute(&kernel.client, "x = 40\nprint('hello')\nx + 2").await;
    let seen = broadcasts(&mut replies).await;
    assert_eq!(of_type(&seen, "stream")[0]["text"], "hello\n");
    assert_eq!(
        of_type(&seen, "execute_result")[0]["data"]["text/plain"],
        "42"
    );
    assert_eq!(of_type(&seen, "execute_input").len(), 1);

    let mut replies = execute(&kernel.client, "x * 2").await;
    let seen = broadcasts(&mut replies).await;
    assert_eq!(
        of_type(&seen, "execute_result")[0]["data"]["text/plain"],
        "80"
    );
}

/// An ipykernel that takes 0.4 s over every `kernel_info_request`, as one on a loaded host
/// does: waiting for it must not send requests faster than it answers them, or each answer
/// would arrive behind a growing queue and it would never be found ready.
const SLOW_KERNEL: &str = "
import time
from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp

class Slow(IPythonKernel):
    async def kernel_info_request(self, stream, ident, parent):
        time.sleep(0.4)
        await super().kernel_info_request(stream, ident, parent)

IPKernelApp.launch_instance(kernel_class=Slow)
";

#[tokio::test]
async fn a_kernel_slow_to_answer_is_found_ready() {
    let kernel = start_with(&["-c", SLOW_KERNEL]).await;
    let mut replies = execute(&kernel.client, "6 * 7").await;
    let seen = broadcasts(&mut replies).await;
    assert_eq!(
        of_type(&seen, "execute_result")[0]["data"]["text/plain"],
        "42"
    );
}

#[tokio::test]
async fn reports_errors_and_can_be_interrupted() {
    let mut kernel = start().await;
    let mut replies = execute(&kernel.client, "1/0").await;
    let seen = broadcasts(&mut replies).await;
    assert_eq!(of_type(&seen, "error")[0]["ename"], "ZeroDivisionError");

    let mut replies = execute(
        &kernel.client,
        "import time\nprint('start', flush=True)\ntime.sleep(60)",
    )
    .await;
    // Interrupt once the code runs (its first line is out) and sleeps: a signal that lands
    // while the kernel is still busy with the print's output may be taken by the kernel's
    // own code, as it was on a loaded machine.
    loop {
        let incoming = tokio::time::timeout(Duration::from_secs(60), replies.next())
            .await
            .expect("the code prints")
            .expect("the connection stays open");
        if incoming.message.msg_type() == "stream" {
            break;
        }
        assert!(
            incoming.message.content["execution_state"] != "idle",
            "the kernel went idle before the code printed: {:?}",
            incoming.message
        );
    }
    let pid = kernel.child.id().unwrap();
    until_asleep(pid).await;
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let seen = broadcasts(&mut replies).await;
    assert_eq!(of_type(&seen, "error")[0]["ename"], "KeyboardInterrupt");
    let mut replies = execute(&kernel.client, "'still here'").await;
    let seen = broadcasts(&mut replies).await;
    assert_eq!(
        of_type(&seen, "execute_result")[0]["data"]["text/plain"],
        "'still here'"
    );
    kernel.child.kill().await.unwrap();
}

/// Waits until the main thread of process `pid` sleeps in `clock_nanosleep` (Python's
/// `time.sleep`), as `/proc/<pid>/task/<pid>/syscall` says.
async fn until_asleep(pid: u32) {
    // x86_64's number of clock_nanosleep; elsewhere, only the print is waited for.
    const CLOCK_NANOSLEEP: &str = "230";
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let path = format!("/proc/{pid}/task/{pid}/syscall");
    for _ in 0..3000 {
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if now.split_whitespace().next() == Some(CLOCK_NANOSLEEP) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the kernel's main thread never went to sleep: {path}");
}
