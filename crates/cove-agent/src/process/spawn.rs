//! Starting a process: command line, user, environment, working directory, and either
//! pipes or a pseudo-terminal for its standard streams.

use std::{
    collections::BTreeMap,
    os::{fd::OwnedFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

use cove_proto::connect::{Code, RpcError};
use tokio::net::unix::pipe;

use crate::{reaper::Exit, users::User};

/// `PATH` for processes when the agent itself has none.
const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything needed to start one process.
#[derive(Debug)]
pub struct StartSpec {
    pub cmd: String,
    pub args: Vec<String>,
    pub user: User,
    /// Resolved, existing working directory.
    pub cwd: PathBuf,
    /// Sandbox-wide variables, then the request's (later ones win).
    pub env: BTreeMap<String, String>,
    /// Terminal size (cols, rows) when the process gets a PTY.
    pub pty: Option<(u16, u16)>,
    /// Whether a pipe-backed process keeps stdin open for input.
    pub stdin: bool,
}

/// Where input for a process goes.
pub enum Input {
    /// Pipe to stdin; `None` once closed or when not requested.
    Pipe(Mutex<Option<Arc<pipe::Sender>>>),
    Pty(Arc<Pty>),
}

/// Where a process's output comes from.
pub enum Output {
    Pipes {
        stdout: pipe::Receiver,
        stderr: pipe::Receiver,
    },
    Pty(Arc<Pty>),
}

/// The controller side of a pseudo-terminal, non-blocking. Reads and writes go through
/// tokio's pipe types, which work on any pollable descriptor.
pub struct Pty {
    reader: pipe::Receiver,
    writer: pipe::Sender,
    control: OwnedFd,
}

impl Pty {
    fn new(fd: OwnedFd) -> std::io::Result<Self> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        Ok(Self {
            reader: pipe::Receiver::from_owned_fd_unchecked(fd.try_clone()?)?,
            writer: pipe::Sender::from_owned_fd_unchecked(fd.try_clone()?)?,
            control: fd,
        })
    }

    /// Reads what the terminal has; `Ok(0)` once every process on it has gone.
    pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            self.reader.readable().await?;
            match self.try_read(buf) {
                Some(result) => return result,
                None => continue,
            }
        }
    }

    /// Reads without waiting; `None` when nothing is buffered.
    pub fn try_read(&self, buf: &mut [u8]) -> Option<std::io::Result<usize>> {
        match self.reader.try_read(buf) {
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => None,
            // A terminal whose last user has gone reports EIO; that is its end of file.
            Err(err) if err.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                Some(Ok(0))
            }
            other => Some(other),
        }
    }

    pub async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            self.writer.writable().await?;
            match self.writer.try_write(data) {
                Ok(n) => data = &data[n..],
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    pub fn resize(&self, cols: u16, rows: u16) -> std::io::Result<()> {
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&self.control, size).map_err(Into::into)
    }
}

/// Makes a process the first choice of the OOM killer, as envd does: the agent itself runs
/// with the lowest score (set when the sandbox is built), which children would inherit.
fn prefer_for_oom_kill(pid: u32) {
    // Raising a score needs no privilege; a process that already exited has no file.
    let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "100");
}

/// A started process, before it is registered.
pub struct Started {
    pub pid: u32,
    pub input: Input,
    pub output: Output,
    pub exit: tokio::sync::oneshot::Receiver<Exit>,
}

impl StartSpec {
    /// The process's whole environment: `PATH` (the agent's), `HOME`, `USER` and `LOGNAME`
    /// of its user, then the sandbox's and the request's variables over them.
    fn environment(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::from([
            (
                "PATH".to_owned(),
                std::env::var("PATH").unwrap_or_else(|_| FALLBACK_PATH.to_owned()),
            ),
            (
                "HOME".to_owned(),
                self.user.home.to_string_lossy().into_owned(),
            ),
            ("USER".to_owned(), self.user.name.clone()),
            ("LOGNAME".to_owned(), self.user.name.clone()),
        ]);
        env.extend(self.env.clone());
        env
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.cmd);
        command
            .args(&self.args)
            .current_dir(&self.cwd)
            .env_clear()
            .envs(self.environment())
            .uid(self.user.uid)
            .gid(self.user.gid);
        command
    }

    fn launch(&self) -> cove_launch::Launch {
        let env = self.environment();
        cove_launch::Launch {
            program: self.cmd.clone(),
            path: env.get("PATH").cloned().unwrap_or_default(),
            args: self.args.clone(),
            env: env.into_iter().collect(),
            cwd: self.cwd.clone(),
            uid: self.user.uid,
            gid: self.user.gid,
            stdin: self.stdin,
        }
    }

    /// Starts the process with the reaper holding off until it is registered.
    pub fn spawn(self, reaper: &crate::reaper::Reaper) -> Result<Started, RpcError> {
        let cannot_start = |err: std::io::Error| {
            let code = match err.kind() {
                std::io::ErrorKind::NotFound => Code::NotFound,
                std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
                _ => Code::InvalidArgument,
            };
            RpcError::new(code, format!("cannot start {:?}: {err}", self.cmd))
        };
        match self.pty {
            Some((cols, rows)) => {
                let (pty, pts) = pty_process::blocking::open().map_err(|err| {
                    RpcError::internal(format!("cannot open a pseudo-terminal: {err}"))
                })?;
                pty.resize(pty_process::Size::new(rows, cols))
                    .map_err(|err| {
                        RpcError::internal(format!("cannot size the pseudo-terminal: {err}"))
                    })?;
                let mut command = self.command();
                if !self.env.contains_key("TERM") {
                    command.env("TERM", "xterm-256color");
                }
                // The child's stdio; the parent's copies close once it is spawned (with
                // `pts`, here).
                let terminal = || {
                    std::os::fd::AsFd::as_fd(&pts)
                        .try_clone_to_owned()
                        .map(Stdio::from)
                        .map_err(|err| {
                            RpcError::internal(format!(
                                "cannot hand out the pseudo-terminal: {err}"
                            ))
                        })
                };
                command
                    .stdin(terminal()?)
                    .stdout(terminal()?)
                    .stderr(terminal()?);
                cove_session::on_terminal(&mut command);
                let (child, exit) = reaper
                    .spawn(|| command.spawn(), std::process::Child::id)
                    .map_err(cannot_start)?;
                drop((command, pts));
                let pty = Arc::new(Pty::new(OwnedFd::from(pty)).map_err(|err| {
                    RpcError::internal(format!("cannot watch the pseudo-terminal: {err}"))
                })?);
                prefer_for_oom_kill(child.id());
                Ok(Started {
                    pid: child.id(),
                    input: Input::Pty(pty.clone()),
                    output: Output::Pty(pty),
                    exit,
                })
            }
            None => {
                // Without a copy of the agent (cove-launch): the same user, groups,
                // environment, directory, process group and signal state as `command()`
                // gives a PTY's process.
                let launch = self.launch();
                let (child, exit) = reaper
                    .spawn(|| cove_launch::spawn(&launch), |child| child.pid)
                    .map_err(cannot_start)?;
                let pipe_err = |err: std::io::Error| {
                    RpcError::internal(format!("cannot watch the process's pipes: {err}"))
                };
                let stdin = match child.stdin {
                    Some(stdin) => Some(Arc::new(
                        pipe::Sender::from_owned_fd(stdin).map_err(pipe_err)?,
                    )),
                    None => None,
                };
                prefer_for_oom_kill(child.pid);
                Ok(Started {
                    pid: child.pid,
                    input: Input::Pipe(Mutex::new(stdin)),
                    output: Output::Pipes {
                        stdout: pipe::Receiver::from_owned_fd(child.stdout).map_err(pipe_err)?,
                        stderr: pipe::Receiver::from_owned_fd(child.stderr).map_err(pipe_err)?,
                    },
                    exit,
                })
            }
        }
    }
}
