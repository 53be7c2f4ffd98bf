//! One running Jupyter kernel: its process (in a process group of its own, as the context's
//! user) and the ZeroMQ client that talks to it. Its connection file (which holds the
//! signing key) lives only until the kernel answers: the sandbox's `/tmp` is the user's.

use std::{
    collections::BTreeMap,
    io::Write,
    net::Ipv4Addr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use cove_jupyter::{ConnectionInfo, KernelClient};
use rustix::process::{Pid, Signal};
use tokio::sync::watch;

use super::kernelspec::{self, KernelSpec};
use crate::{
    process::{self, StartSpec},
    reaper::{Exit, Reaper},
    users::User,
};

/// How long a kernel gets to start and answer (IPython takes about a second).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait before connecting again to a kernel that is not listening yet.
const CONNECT_RETRY: Duration = Duration::from_millis(200);

/// How much of a kernel's stderr is kept to explain why it failed.
const STDERR_TAIL: usize = 2048;

/// Why a kernel could not be started.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot write the kernel's connection file {path}")]
    ConnectionFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the {name} kernel: {message}")]
    Spawn { name: String, message: String },
    #[error("the {name} kernel exited ({exit}) while starting{stderr}")]
    Exited {
        name: String,
        exit: String,
        stderr: String,
    },
    #[error(
        "the {name} kernel did not answer within {timeout:?}{}",
        because(source)
    )]
    NoAnswer {
        name: String,
        timeout: Duration,
        #[source]
        source: Option<cove_jupyter::ClientError>,
    },
}

/// ": why" for a message, when there is a why.
fn because(source: &Option<cove_jupyter::ClientError>) -> String {
    match source {
        Some(source) => {
            let mut text = format!(": {source}");
            let mut cause = std::error::Error::source(source);
            while let Some(err) = cause {
                text.push_str(&format!(": {err}"));
                cause = err.source();
            }
            text
        }
        None => String::new(),
    }
}

/// What a kernel is started with.
pub struct Launch<'a> {
    pub spec: &'a KernelSpec,
    pub user: User,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub reaper: &'a Reaper,
    /// An ipykernel kernel listens on Unix sockets (ZeroMQ `ipc`) rather than TCP ports.
    pub unix_sockets: bool,
}

/// A running kernel. Dropping it kills the kernel's process group.
pub struct Kernel {
    name: String,
    pid: Pid,
    interrupt_by_message: bool,
    client: KernelClient,
    exit: watch::Receiver<Option<Exit>>,
    /// The sandbox-wide variables the kernel's environment holds (it was started with them,
    /// or was told them since).
    sandbox_env: BTreeMap<String, String>,
    /// Its Unix sockets, removed when it goes.
    socket_files: Vec<PathBuf>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Kernel {
    /// Starts the kernel and waits until it answers.
    pub async fn start(launch: Launch<'_>) -> Result<Self, KernelError> {
        let spec = launch.spec;
        let name = format!(".cove-kernel-{}", uuid::Uuid::new_v4().simple());
        let prefix = std::env::temp_dir().join(&name);
        // `python -m ipykernel_launcher …` becomes `python -c UNIX_LAUNCHER …`.
        let unix_argv = launch
            .unix_sockets
            .then(|| unix_launcher_argv(&spec.argv))
            .flatten();
        let info = if unix_argv.is_some() {
            ConnectionInfo::on_unix_sockets(&prefix, &spec.name)
        } else {
            ConnectionInfo::on_free_ports(Ipv4Addr::LOCALHOST, &spec.name).map_err(|err| {
                KernelError::Spawn {
                    name: spec.name.clone(),
                    message: format!("no free ports: {err}"),
                }
            })?
        };
        let connection_file = std::env::temp_dir().join(format!("{name}.json"));
        write_private(&connection_file, &info.to_json(), &launch.user).map_err(|source| {
            KernelError::ConnectionFile {
                path: connection_file.clone(),
                source,
            }
        })?;
        let file_arg = connection_file.to_string_lossy().into_owned();
        let cmd = spec
            .program(&kernelspec::search_path(&launch.env))
            .to_string_lossy()
            .into_owned();
        let mut args: Vec<String> = unix_argv
            .as_ref()
            .unwrap_or(&spec.argv)
            .iter()
            .skip(1)
            .map(|a| a.replace("{connection_file}", &file_arg))
            .collect();
        if spec.is_ipykernel() {
            args.extend(
                cove_jupyter::IPYKERNEL_OPTIONS
                    .iter()
                    .map(|o| (*o).to_owned()),
            );
        }
        let sandbox_env = launch.env.clone();
        let mut env = launch.env;
        env.extend(spec.env.clone());
        let pipe = pipe_socket(&prefix);
        if unix_argv.is_some() {
            env.insert(
                "COVE_KERNEL_PIPE".to_owned(),
                pipe.to_string_lossy().into_owned(),
            );
        }
        let socket_files: Vec<PathBuf> = info
            .socket_files()
            .into_iter()
            .chain(unix_argv.is_some().then_some(pipe))
            .collect();
        // debugpy (in ipykernel) warns on every start about frozen modules.
        env.entry("PYDEVD_DISABLE_FILE_VALIDATION".to_owned())
            .or_insert_with(|| "1".to_owned());
        let started = StartSpec {
            cmd,
            args,
            user: launch.user,
            cwd: launch.cwd,
            env,
            pty: None,
            stdin: false,
        }
        .spawn(launch.reaper);
        let started = match started {
            Ok(started) => started,
            Err(err) => {
                let _ = std::fs::remove_file(&connection_file);
                return Err(KernelError::Spawn {
                    name: spec.name.clone(),
                    message: err.message,
                });
            }
        };
        let pid = Pid::from_raw(started.pid as i32).expect("a started process has a pid");
        let stderr = Arc::new(Mutex::new(String::new()));
        if let process::Output::Pipes {
            stdout,
            stderr: err,
        } = started.output
        {
            tokio::spawn(drain(stdout, None));
            tokio::spawn(drain(err, Some(stderr.clone())));
        }
        let (exit_tx, exit) = watch::channel(None);
        let exit_rx = started.exit;
        tokio::spawn(async move {
            if let Ok(status) = exit_rx.await {
                let _ = exit_tx.send(Some(status));
            }
        });

        let client = connect(&info, exit.clone(), &spec.name, &stderr).await;
        // The kernel has read it (or never will).
        let _ = std::fs::remove_file(&connection_file);
        let client = match client {
            Ok(client) => client,
            Err(err) => {
                kill_group(pid, Signal::KILL);
                for file in &socket_files {
                    let _ = std::fs::remove_file(file);
                }
                return Err(err);
            }
        };
        Ok(Kernel {
            name: spec.name.clone(),
            pid,
            interrupt_by_message: spec.interrupt_by_message,
            client,
            exit,
            sandbox_env,
            socket_files,
        })
    }

    /// The sandbox-wide variables the kernel's environment holds.
    pub fn sandbox_env(&self) -> &BTreeMap<String, String> {
        &self.sandbox_env
    }

    /// Notes that the kernel's environment now holds `env`.
    pub fn set_sandbox_env(&mut self, env: BTreeMap<String, String>) {
        self.sandbox_env = env;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel's pid, which leads its process group.
    pub fn process_group(&self) -> Pid {
        self.pid
    }

    pub fn client(&self) -> &KernelClient {
        &self.client
    }

    /// How the kernel ended, once it has.
    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Resolves when the kernel process ends.
    pub async fn wait_exit(&self) -> Exit {
        exit_of(self.exit.clone()).await
    }

    /// Interrupts what the kernel runs, as Jupyter does: SIGINT to its process group, or
    /// an `interrupt_request` for kernels that ask for one.
    pub async fn interrupt(&self) {
        if self.interrupt_by_message {
            let request = self
                .client
                .request(
                    cove_jupyter::Channel::Control,
                    "interrupt_request",
                    serde_json::json!({}),
                )
                .await;
            if let Err(err) = request {
                tracing::warn!(?err, kernel = %self.name, "cannot interrupt the kernel");
            }
        } else {
            kill_group(self.pid, Signal::INT);
        }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if self.exited().is_none() {
            kill_group(self.pid, Signal::KILL);
        }
        for file in &self.socket_files {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Describes an exit for a message.
pub fn describe(exit: Exit) -> String {
    match exit {
        Exit::Code(code) => format!("exit code {code}"),
        Exit::Signal(signal) => format!("signal {signal}"),
    }
}

/// Resolves when the process behind `exit` ends.
async fn exit_of(mut exit: watch::Receiver<Option<Exit>>) -> Exit {
    loop {
        if let Some(status) = *exit.borrow_and_update() {
            return status;
        }
        if exit.changed().await.is_err() {
            // The reaper went away: the agent is ending.
            return std::future::pending().await;
        }
    }
}

/// What starts an ipykernel on Unix sockets only (see the file).
const UNIX_LAUNCHER: &str = include_str!("unix_launcher.py");

/// `argv` (a kernelspec's, `python -m ipykernel_launcher …`) starting the kernel through
/// [`UNIX_LAUNCHER`] instead; `None` when it is not started that way.
fn unix_launcher_argv(argv: &[String]) -> Option<Vec<String>> {
    let at = argv
        .windows(2)
        .position(|w| w[0] == "-m" && w[1] == "ipykernel_launcher")?;
    let mut rewritten = argv.to_vec();
    rewritten.splice(at..at + 2, ["-c".to_owned(), UNIX_LAUNCHER.to_owned()]);
    Some(rewritten)
}

/// The socket of the pipe that carries forked subprocesses' output, beside the kernel's.
fn pipe_socket(prefix: &Path) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push("-pipe");
    PathBuf::from(name)
}

fn kill_group(pid: Pid, signal: Signal) {
    if rustix::process::kill_process_group(pid, signal).is_err() {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Connects to the kernel and waits until it answers; fails early when it exits.
async fn connect(
    info: &ConnectionInfo,
    exit: watch::Receiver<Option<Exit>>,
    name: &str,
    stderr: &Mutex<String>,
) -> Result<KernelClient, KernelError> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let ready = async {
        // A kernel slow to listen (a loaded host) outlasts one connect's own patience.
        let client = loop {
            match KernelClient::connect(info).await {
                Ok(client) => break client,
                Err(cove_jupyter::ClientError::Connect { .. })
                    if tokio::time::Instant::now() + CONNECT_RETRY < deadline =>
                {
                    tokio::time::sleep(CONNECT_RETRY).await;
                }
                Err(err) => return Err(err),
            }
        };
        client
            .wait_ready(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await?;
        Ok::<_, cove_jupyter::ClientError>(client)
    };
    tokio::select! {
        ready = tokio::time::timeout(START_TIMEOUT, ready) => match ready {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source)) => Err(KernelError::NoAnswer {
                name: name.to_owned(),
                timeout: START_TIMEOUT,
                source: Some(source),
            }),
            Err(_) => Err(KernelError::NoAnswer {
                name: name.to_owned(),
                timeout: START_TIMEOUT,
                source: None,
            }),
        },
        status = exit_of(exit) => {
            // Let the last of its stderr arrive.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let tail = stderr.lock().unwrap_or_else(|e| e.into_inner()).trim().to_owned();
            Err(KernelError::Exited {
                name: name.to_owned(),
                exit: describe(status),
                stderr: if tail.is_empty() { String::new() } else { format!(": {tail}") },
            })
        }
    }
}

/// Reads a kernel's output pipe to its end, keeping the last bytes when asked to.
async fn drain(pipe: tokio::net::unix::pipe::Receiver, keep: Option<Arc<Mutex<String>>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        if pipe.readable().await.is_err() {
            return;
        }
        match pipe.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if let Some(keep) = &keep {
                    let mut tail = keep.lock().unwrap_or_else(|e| e.into_inner());
                    tail.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if tail.len() > STDERR_TAIL {
                        let mut cut = tail.len() - STDERR_TAIL;
                        while !tail.is_char_boundary(cut) {
                            cut += 1;
                        }
                        tail.drain(..cut);
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
    }
}

/// Writes a file only `user` can read (the connection file holds the signing key). A file
/// that could not be written whole (a full disk) is removed again.
fn write_private(path: &Path, contents: &str, user: &User) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // By descriptor: the path could be swapped once the file is the user's.
    let written = std::os::unix::fs::fchown(&file, Some(user.uid), Some(user.gid))
        .and_then(|()| file.write_all(contents.as_bytes()));
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}
