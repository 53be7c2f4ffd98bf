//! The task that follows one process: forwards its output to attached clients, enforces its
//! lifetime, and reports its end once it has exited and its output is drained.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use cove_proto::process::process_event::{DataEvent, EndEvent, data_event::Output as Data};
use tokio::{net::unix::pipe, sync::oneshot};

use super::{Event, Process, spawn::Output};
use crate::{AgentState, reaper::Exit};

const PIPE_CHUNK: usize = 32 * 1024;
const PTY_CHUNK: usize = 16 * 1024;

/// Follows `process` until it ends. As envd does, the end is reported once the process has
/// exited *and* its output is closed (children that inherited stdout keep it open), unless
/// the process was killed or stopped: then only what is already buffered is forwarded. A
/// `lifetime` kills its process group when reached.
pub async fn follow(
    state: AgentState,
    process: Arc<Process>,
    output: Output,
    mut exit: oneshot::Receiver<Exit>,
    lifetime: Option<Duration>,
) {
    let deadline = lifetime.map(|d| tokio::time::Instant::now() + d);
    let mut status: Option<Option<Exit>> = None;
    let mut stopping = false;
    let mut out_buf = vec![0u8; PIPE_CHUNK];
    let mut err_buf = vec![0u8; PIPE_CHUNK];
    match output {
        Output::Pipes { stdout, stderr } => {
            let mut stdout = Some(stdout);
            let mut stderr = Some(stderr);
            while status.is_none() || stdout.is_some() || stderr.is_some() {
                if stopping && status.is_some() {
                    for (pipe, buf, event) in [
                        (&stdout, &mut out_buf, stdout_event as fn(Bytes) -> Event),
                        (&stderr, &mut err_buf, stderr_event),
                    ] {
                        if let Some(pipe) = pipe {
                            drain_pipe(pipe, buf, &process, event).await;
                        }
                    }
                    break;
                }
                tokio::select! {
                    read = read_pipe(stdout.as_ref(), &mut out_buf), if stdout.is_some() => match read {
                        Some(data) => process.publish(stdout_event(data)).await,
                        None => stdout = None,
                    },
                    read = read_pipe(stderr.as_ref(), &mut err_buf), if stderr.is_some() => match read {
                        Some(data) => process.publish(stderr_event(data)).await,
                        None => stderr = None,
                    },
                    exited = &mut exit, if status.is_none() => status = Some(exited.ok()),
                    _ = process.stop_requested(), if !stopping => stopping = true,
                    _ = sleep_until(deadline), if !stopping => {
                        stopping = true;
                        let _ = process.signal(rustix::process::Signal::KILL);
                    }
                }
            }
        }
        Output::Pty(pty) => {
            let mut open = true;
            while status.is_none() || open {
                if stopping && status.is_some() {
                    while let Some(Ok(n)) = pty.try_read(&mut out_buf) {
                        if n == 0 {
                            break;
                        }
                        process
                            .publish(pty_event(Bytes::copy_from_slice(&out_buf[..n])))
                            .await;
                    }
                    break;
                }
                tokio::select! {
                    read = pty.read(&mut out_buf[..PTY_CHUNK]), if open => match read {
                        Ok(n) if n > 0 => process.publish(pty_event(Bytes::copy_from_slice(&out_buf[..n]))).await,
                        _ => open = false,
                    },
                    exited = &mut exit, if status.is_none() => status = Some(exited.ok()),
                    _ = process.stop_requested(), if !stopping => stopping = true,
                    _ = sleep_until(deadline), if !stopping => {
                        stopping = true;
                        let _ = process.signal(rustix::process::Signal::KILL);
                    }
                }
            }
        }
    }
    let end = end_event(status.flatten());
    tracing::debug!(pid = process.pid, status = %end.status, "process ended");
    state.processes().finish(&process, end.clone());
    process.publish_end(end).await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// One chunk from a pipe; `None` at end of file or on error.
async fn read_pipe(pipe: Option<&pipe::Receiver>, buf: &mut [u8]) -> Option<Bytes> {
    let pipe = pipe?;
    loop {
        if pipe.readable().await.is_err() {
            return None;
        }
        match pipe.try_read(buf) {
            Ok(0) => return None,
            Ok(n) => return Some(Bytes::copy_from_slice(&buf[..n])),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
    }
}

/// Forwards whatever a pipe holds right now, without waiting for more.
async fn drain_pipe(
    pipe: &pipe::Receiver,
    buf: &mut [u8],
    process: &Process,
    event: fn(Bytes) -> Event,
) {
    while let Ok(n) = pipe.try_read(buf) {
        if n == 0 {
            break;
        }
        process
            .publish(event(Bytes::copy_from_slice(&buf[..n])))
            .await;
    }
}

fn stdout_event(data: Bytes) -> Event {
    Event::Data(DataEvent {
        output: Some(Data::Stdout(data)),
    })
}

fn stderr_event(data: Bytes) -> Event {
    Event::Data(DataEvent {
        output: Some(Data::Stderr(data)),
    })
}

fn pty_event(data: Bytes) -> Event {
    Event::Data(DataEvent {
        output: Some(Data::Pty(data)),
    })
}

/// The end event in the words envd uses (Go's `ProcessState.String()`).
fn end_event(exit: Option<Exit>) -> EndEvent {
    match exit {
        Some(Exit::Code(0)) => EndEvent {
            exit_code: 0,
            exited: true,
            status: "exit status 0".to_owned(),
            error: None,
        },
        Some(Exit::Code(code)) => {
            let status = format!("exit status {code}");
            EndEvent {
                exit_code: code,
                exited: true,
                status: status.clone(),
                error: Some(status),
            }
        }
        Some(Exit::Signal(signal)) => {
            let status = format!("signal: {}", signal_name(signal));
            EndEvent {
                exit_code: -1,
                exited: false,
                status: status.clone(),
                error: Some(status),
            }
        }
        None => EndEvent {
            exit_code: -1,
            exited: false,
            status: "unknown".to_owned(),
            error: Some("the process's exit status was lost".to_owned()),
        },
    }
}

/// Signal descriptions as Go prints them.
fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "hangup",
        2 => "interrupt",
        3 => "quit",
        4 => "illegal instruction",
        5 => "trace/breakpoint trap",
        6 => "aborted",
        7 => "bus error",
        8 => "floating point exception",
        9 => "killed",
        10 => "user defined signal 1",
        11 => "segmentation fault",
        12 => "user defined signal 2",
        13 => "broken pipe",
        14 => "alarm clock",
        15 => "terminated",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_events_read_like_go() {
        assert_eq!(end_event(Some(Exit::Code(0))).error, None);
        let failed = end_event(Some(Exit::Code(3)));
        assert_eq!((failed.exit_code, failed.exited), (3, true));
        assert_eq!(failed.error.as_deref(), Some("exit status 3"));
        let killed = end_event(Some(Exit::Signal(9)));
        assert_eq!((killed.exit_code, killed.exited), (-1, false));
        assert_eq!(killed.status, "signal: killed");
    }
}
