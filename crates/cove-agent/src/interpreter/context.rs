//! A context: one kernel for one language and working directory, running one execution at
//! a time. An execution streams its output lines; when its client goes away the kernel is
//! interrupted and the context stays usable.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use cove_jupyter::{Channel, Message, Replies};
use rustix::process::{Pid, Signal};
use serde_json::json;
use tokio::sync::{OwnedMutexGuard, mpsc};

use super::{
    kernel::{Kernel, KernelError, describe},
    kernelspec::KernelSpec,
    output::{OutputLine, Tracker},
};

/// How often an execution that prints nothing tells its client it is still running.
const KEEPALIVE: Duration = Duration::from_secs(1);

/// How long an interrupted execution gets to stop before its kernel is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);

/// How often an interrupt is sent again while the code has not stopped.
const INTERRUPT_REPEAT: Duration = Duration::from_secs(1);

/// How often an execution the kernel has not begun yet is checked before interrupting it.
const INTERRUPT_POLL: Duration = Duration::from_millis(50);

/// How long the silent bookkeeping runs (environment variables) may take.
const SILENT_TIMEOUT: Duration = Duration::from_secs(30);

/// One execution's request.
#[derive(Debug, Default)]
pub struct Run {
    pub code: String,
    /// Variables set for this execution only.
    pub env_vars: BTreeMap<String, String>,
    /// The sandbox-wide variables, which those replace while the code runs.
    pub sandbox_env: BTreeMap<String, String>,
}

/// The kernel slot of a context, held for the length of one execution.
pub type KernelSlot = OwnedMutexGuard<Option<Kernel>>;

pub struct Context {
    pub id: String,
    pub language: String,
    pub cwd: PathBuf,
    pub spec: KernelSpec,
    kernel: Arc<tokio::sync::Mutex<Option<Kernel>>>,
    /// The running kernel's pid, to kill it without waiting for an execution to end.
    pid: Mutex<Option<Pid>>,
    /// Set while a restart or removal is killing the kernel on purpose.
    restarting: AtomicBool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.id)
            .field("language", &self.language)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(language: String, cwd: PathBuf, spec: KernelSpec) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            language,
            cwd,
            spec,
            kernel: Arc::default(),
            pid: Mutex::new(None),
            restarting: AtomicBool::new(false),
        }
    }

    /// Waits for the context to be free and returns its kernel slot (possibly empty).
    pub async fn slot(&self) -> KernelSlot {
        self.kernel.clone().lock_owned().await
    }

    /// Puts a freshly started kernel into the slot.
    pub fn install(&self, slot: &mut KernelSlot, kernel: Kernel, pid: Pid) {
        **slot = Some(kernel);
        *self.pid.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
        self.restarting.store(false, Ordering::SeqCst);
    }

    /// Kills the kernel now, even mid-execution (which then ends with an error).
    pub fn kill_kernel(&self) {
        let pid = self.pid.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(pid) = pid {
            self.restarting.store(true, Ordering::SeqCst);
            if rustix::process::kill_process_group(pid, Signal::KILL).is_err() {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
    }

    /// Runs `run` on the slot's kernel, sending output lines to `out` and ending with
    /// `end_of_execution`. The slot is released when the kernel is idle again.
    pub async fn execute(&self, mut slot: KernelSlot, run: Run, out: mpsc::Sender<OutputLine>) {
        let mut client = Client { out, gone: false };
        let result = self.execute_in(&mut slot, &run, &mut client).await;
        if let Err(line) = result {
            client.send(line).await;
        }
        client.send(OutputLine::EndOfExecution).await;
    }

    async fn execute_in(
        &self,
        slot: &mut KernelSlot,
        run: &Run,
        client: &mut Client,
    ) -> Result<(), OutputLine> {
        let Some(kernel) = slot.as_ref() else {
            return Err(OutputLine::error(
                "KernelError",
                "the context has no kernel",
            ));
        };
        if let Some(exit) = kernel.exited() {
            **slot = None;
            return Err(self.died(exit, "since the last run"));
        }
        self.catch_up_env(slot, &run.sandbox_env).await?;
        if !run.env_vars.is_empty() {
            let set = env_code(&self.language, &run.env_vars, &[]);
            self.silent(slot, &set).await?;
        }
        let request = Message::request(
            slot.as_ref().map_or("", |k| k.client().session()),
            "execute_request",
            json!({
                "code": run.code,
                "silent": false,
                "store_history": true,
                "user_expressions": {},
                "allow_stdin": false,
                // Executions of a context never queue in the kernel (one at a time), so
                // this would only abort the next one when it comes right after an error,
                // as after an interrupted run (ipykernel aborts what arrives meanwhile).
                "stop_on_error": false,
            }),
        );
        let result = self.follow(slot, request, client).await;
        if result.is_ok() && !run.env_vars.is_empty() && slot.is_some() {
            // Back to the sandbox's values; variables it does not have go away.
            let (back, remove): (Vec<_>, Vec<_>) = run
                .env_vars
                .keys()
                .partition(|k| run.sandbox_env.contains_key(*k));
            let back: BTreeMap<String, String> = back
                .into_iter()
                .map(|k| (k.clone(), run.sandbox_env[k].clone()))
                .collect();
            let remove: Vec<String> = remove.into_iter().cloned().collect();
            let restore = env_code(&self.language, &back, &remove);
            self.silent(slot, &restore).await?;
        }
        result
    }

    /// Sends the request and relays its output until the kernel is idle again.
    async fn follow(
        &self,
        slot: &mut KernelSlot,
        request: Message,
        client: &mut Client,
    ) -> Result<(), OutputLine> {
        let kernel = slot.as_ref().expect("checked by the caller");
        let mut replies = send(kernel, request).await?;
        let mut tracker = Tracker::default();
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        // Once the client has gone: when the kernel is killed if it has not stopped, and when
        // to interrupt it (again). A kernel ignores SIGINT until it has begun the execution,
        // so the interrupt waits for that and repeats until the code has been stopped.
        let mut grace: Option<tokio::time::Instant> = None;
        let mut interrupt_at: Option<tokio::time::Instant> = None;
        while !tracker.done {
            let deadline = at(grace);
            let interrupt_due = at(interrupt_at);
            tokio::select! {
                incoming = replies.next() => {
                    let Some(incoming) = incoming else {
                        **slot = None;
                        return Err(OutputLine::error("KernelError", "the connection to the kernel was lost; it restarts on the next run"));
                    };
                    for line in tracker.on(&incoming) {
                        client.send(line).await;
                    }
                }
                exit = kernel.wait_exit() => {
                    **slot = None;
                    return Err(self.died(exit, "while running this code"));
                }
                _ = keepalive.tick() => client.send(OutputLine::Keepalive).await,
                _ = interrupt_due => {
                    let now = tokio::time::Instant::now();
                    interrupt_at = if tracker.errored() {
                        None
                    } else if tracker.started || grace.is_some_and(|g| g - now < INTERRUPT_GRACE / 2) {
                        // (A kernel that never reports the start is interrupted all the same.)
                        kernel.interrupt().await;
                        Some(now + INTERRUPT_REPEAT)
                    } else {
                        Some(now + INTERRUPT_POLL)
                    };
                }
                _ = deadline => {
                    tracing::warn!(context = %self.id, "the kernel ignored an interrupt; killing it");
                    **slot = None;
                    return Err(OutputLine::error("KernelError", "the kernel did not stop when interrupted and was killed"));
                }
            }
            if client.gone && grace.is_none() {
                tracing::info!(context = %self.id, "client went away; interrupting the kernel");
                let now = tokio::time::Instant::now();
                grace = Some(now + INTERRUPT_GRACE);
                interrupt_at = Some(now);
            }
        }
        Ok(())
    }

    /// Brings the kernel's environment up to the sandbox's: a kernel started before the
    /// sandbox was handed out (a warm one) or before `/init` set more variables has not seen
    /// them, and E2B's kernels see every sandbox-wide variable.
    async fn catch_up_env(
        &self,
        slot: &mut KernelSlot,
        sandbox_env: &BTreeMap<String, String>,
    ) -> Result<(), OutputLine> {
        let Some(kernel) = slot.as_ref() else {
            return Ok(());
        };
        if kernel.sandbox_env() == sandbox_env {
            return Ok(());
        }
        let takes = |key: &str| check_env_key(&self.language, key).is_ok();
        let assign: BTreeMap<String, String> = sandbox_env
            .iter()
            .filter(|(k, v)| kernel.sandbox_env().get(*k) != Some(*v) && takes(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let remove: Vec<String> = kernel
            .sandbox_env()
            .keys()
            .filter(|k| !sandbox_env.contains_key(*k) && takes(k))
            .cloned()
            .collect();
        let mut code = env_code(&self.language, &assign, &remove);
        // A kernel that ran in another sandbox first (restored from a kernel image or a
        // memory snapshot, as every copy of it is) draws from a random sequence of its own.
        let elsewhere = kernel
            .sandbox_env()
            .get(SANDBOX_ID)
            .is_some_and(|id| sandbox_env.get(SANDBOX_ID) != Some(id));
        if elsewhere && self.language == "python" {
            code.push_str("\n__import__('random').seed()");
        }
        if !code.is_empty() {
            self.silent(slot, &code).await?;
        }
        if let Some(kernel) = slot.as_mut() {
            kernel.set_sandbox_env(sandbox_env.clone());
        }
        Ok(())
    }

    /// Runs bookkeeping code that neither counts nor shows.
    pub(super) async fn silent(&self, slot: &mut KernelSlot, code: &str) -> Result<(), OutputLine> {
        self.unseen(slot, code, true).await
    }

    /// Takes a kernel through one whole execution nobody sees (not silent, so the display
    /// hook runs too; kept out of the history, so it does not count): what a kernel does
    /// the first time costs more than later, and a warm kernel pays it before it is used.
    pub(super) async fn prime(&self, slot: &mut KernelSlot) -> Result<(), OutputLine> {
        self.unseen(slot, "None", false).await
    }

    async fn unseen(
        &self,
        slot: &mut KernelSlot,
        code: &str,
        silent: bool,
    ) -> Result<(), OutputLine> {
        let kernel = slot.as_ref().expect("checked by the caller");
        let request = Message::request(
            kernel.client().session(),
            "execute_request",
            json!({"code": code, "silent": silent, "store_history": false,
                   "user_expressions": {}, "allow_stdin": false, "stop_on_error": false}),
        );
        let mut replies = send(kernel, request).await?;
        let mut tracker = Tracker::default();
        let mut error = None;
        let mut exited = None;
        let waited = tokio::time::timeout(SILENT_TIMEOUT, async {
            while !tracker.done {
                let incoming = tokio::select! {
                    incoming = replies.next() => incoming,
                    exit = kernel.wait_exit() => {
                        exited = Some(exit);
                        None
                    }
                };
                let Some(incoming) = incoming else {
                    return;
                };
                for line in tracker.on(&incoming) {
                    if matches!(line, OutputLine::Error { .. }) {
                        error = Some(line);
                    }
                }
            }
        })
        .await;
        if let Some(exit) = exited {
            **slot = None;
            return Err(self.died(exit, "while setting environment variables"));
        }
        match (waited, error) {
            (Ok(()), None) if tracker.done => Ok(()),
            (_, Some(OutputLine::Error { name, value, .. })) => Err(OutputLine::error(
                "EnvVarsError",
                format!("cannot set the environment variables: {name}: {value}"),
            )),
            _ => {
                **slot = None;
                Err(OutputLine::error(
                    "KernelError",
                    "the kernel did not answer while setting environment variables; it restarts on the next run",
                ))
            }
        }
    }

    /// What the execution reports when its kernel died: E2B's words, whether it was killed on
    /// purpose (restart, removal) or died (E2B's Jupyter restarts a dead kernel and reports
    /// it restarting). Here the fresh kernel starts on the next run; why it died goes to the
    /// log.
    fn died(&self, exit: crate::reaper::Exit, when: &str) -> OutputLine {
        *self.pid.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if !self.restarting.load(Ordering::SeqCst) {
            tracing::warn!(
                context = %self.id,
                kernel = %self.spec.name,
                exit = %describe(exit),
                "the kernel died {when}; it starts again on the next run"
            );
        }
        OutputLine::error("ContextRestarting", "Context was restarted")
    }
}

async fn send(kernel: &Kernel, request: Message) -> Result<Replies, OutputLine> {
    kernel
        .client()
        .send(Channel::Shell, request)
        .await
        .map_err(|err| OutputLine::error("KernelError", format!("cannot reach the kernel: {err}")))
}

/// Resolves at `when`, or never.
async fn at(when: Option<tokio::time::Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}

/// Where output goes; notices when the client has gone.
struct Client {
    out: mpsc::Sender<OutputLine>,
    gone: bool,
}

impl Client {
    async fn send(&mut self, line: OutputLine) {
        if !self.gone && self.out.send(line).await.is_err() {
            self.gone = true;
        }
    }
}

/// The variable that names the sandbox a process runs in.
const SANDBOX_ID: &str = "E2B_SANDBOX_ID";

/// Code that sets `assign` in the kernel's environment and removes `remove` from it.
fn env_code(language: &str, assign: &BTreeMap<String, String>, remove: &[String]) -> String {
    let assign_json = serde_json::to_string(&assign).expect("strings serialize");
    let remove_json = serde_json::to_string(&remove).expect("strings serialize");
    match language {
        "python" => format!(
            "__import__('os').environ.update({assign_json})\n[__import__('os').environ.pop(k, None) for k in {remove_json}]"
        ),
        "javascript" | "typescript" => format!(
            "Object.assign(process.env, {assign_json}); for (const k of {remove_json}) delete process.env[k];"
        ),
        "bash" => {
            let mut code = String::new();
            for (key, value) in assign {
                code.push_str(&format!(
                    "export {key}='{}'\n",
                    value.replace('\'', r"'\''")
                ));
            }
            for key in remove {
                code.push_str(&format!("unset {key}\n"));
            }
            code
        }
        _ => String::new(),
    }
}

/// Whether per-execution variables can be set in `language`, and the key is one it takes.
pub fn check_env_key(language: &str, key: &str) -> Result<(), String> {
    let supported = matches!(language, "python" | "javascript" | "typescript" | "bash");
    if !supported {
        return Err(format!("env_vars are not supported for {language} code"));
    }
    let identifier = key
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if key.is_empty() || !identifier {
        return Err(format!(
            "environment variable name {key:?} must be letters, digits and underscores, not starting with a digit"
        ));
    }
    Ok(())
}

impl From<KernelError> for OutputLine {
    fn from(err: KernelError) -> Self {
        OutputLine::error("KernelError", err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_code_sets_and_restores() {
        let set = BTreeMap::from([("A".to_owned(), "it's \"x\"".to_owned())]);
        assert_eq!(
            env_code("python", &set, &[]),
            "__import__('os').environ.update({\"A\":\"it's \\\"x\\\"\"})\n[__import__('os').environ.pop(k, None) for k in []]"
        );
        assert_eq!(env_code("bash", &set, &[]), "export A='it'\\''s \"x\"'\n");
        let back = BTreeMap::from([("B".to_owned(), "1".to_owned())]);
        assert_eq!(
            env_code("bash", &back, &["A".to_owned()]),
            "export B='1'\nunset A\n"
        );
        assert_eq!(
            env_code("javascript", &back, &["A".to_owned()]),
            "Object.assign(process.env, {\"B\":\"1\"}); for (const k of [\"A\"]) delete process.env[k];"
        );
    }

    #[test]
    fn environment_keys_are_checked() {
        assert!(check_env_key("python", "MY_VAR1").is_ok());
        assert!(check_env_key("python", "1X").is_err());
        assert!(check_env_key("bash", "A B").is_err());
        assert!(check_env_key("r", "A").is_err());
    }
}
