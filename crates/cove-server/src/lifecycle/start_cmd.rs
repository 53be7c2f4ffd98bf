//! A template's start command: started in the background when one of its sandboxes starts,
//! and the sandbox handed out only once the template's ready command succeeds (polled).

use std::{collections::HashMap, time::Duration};

use cove_runtime::AgentEndpoint;

use super::templates::StartCommand;
use crate::{agent_exec, store::SandboxDefaults};

/// How long a sandbox may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one run of the ready command may take.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two runs of the ready command.
const READY_POLL: Duration = Duration::from_millis(50);

/// Starts `start`'s command in the sandbox behind `agent` and waits (up to `timeout`) until
/// its ready command succeeds; the ready command's output goes to `on_line`. The error says
/// what went wrong, with the ready command's last output.
pub async fn start_and_wait(
    agent: &AgentEndpoint,
    token: &str,
    defaults: &SandboxDefaults,
    shell: &str,
    start: &StartCommand,
    timeout: Duration,
    on_line: &mut (dyn FnMut(agent_exec::Stream, &str) + Send),
) -> Result<(), String> {
    let command = |line: &str, timeout: Option<Duration>| agent_exec::Command {
        line: line.to_owned(),
        shell: shell.to_owned(),
        user: defaults.user.clone(),
        cwd: defaults.workdir.clone(),
        env: HashMap::new(),
        timeout,
    };
    if let Some(start_cmd) = &start.start_cmd {
        agent_exec::spawn(agent, token, &command(start_cmd, None))
            .await
            .map_err(|err| format!("cannot start {start_cmd:?}: {err}"))?;
    }
    let Some(ready_cmd) = &start.ready_cmd else {
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let check = command(ready_cmd, Some(READY_CHECK_TIMEOUT));
    loop {
        let mut last = Vec::new();
        let exit = agent_exec::run(agent, token, &check, &mut |stream, line| {
            if last.len() == 10 {
                last.remove(0);
            }
            last.push(line.to_owned());
            on_line(stream, line);
        })
        .await
        .map_err(|err| format!("cannot run the ready command {ready_cmd:?}: {err}"))?;
        if exit.success() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let output = if last.is_empty() {
                String::new()
            } else {
                format!("; its last output: {}", last.join(" | "))
            };
            return Err(format!(
                "the ready command {ready_cmd:?} did not succeed within {} s ({}){output}",
                timeout.as_secs(),
                exit.status
            ));
        }
        tokio::time::sleep(READY_POLL).await;
    }
}
