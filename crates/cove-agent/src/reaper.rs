//! Child reaping. The agent is PID 1 of its sandbox (or a child subreaper outside one), so
//! every orphan ends up as its child: one task waits for all of them and hands the exit
//! status of the processes the agent started to whoever waits for it.
//!
//! Standard library `Child::wait` is never used: a `waitpid(-1)` here would race it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use rustix::process::{Pid, WaitOptions, WaitStatus};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It called `exit` with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

impl Exit {
    fn from_status(status: WaitStatus) -> Option<Self> {
        if let Some(code) = status.exit_status() {
            Some(Exit::Code(code))
        } else {
            status.terminating_signal().map(Exit::Signal)
        }
    }
}

/// Hands out exit statuses of registered children; reaps and discards everything else.
#[derive(Clone, Default)]
pub struct Reaper {
    waiting: Arc<Mutex<HashMap<i32, oneshot::Sender<Exit>>>>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

impl Reaper {
    /// Starts the reaping task; with a `backstop`, it also reaps when the notification of a
    /// child's exit was lost (see [`crate::signals`]). Must run inside a tokio runtime.
    pub fn start(backstop: Option<std::time::Duration>) -> std::io::Result<Self> {
        // Outside a PID namespace, adopt our grandchildren so no orphan escapes to the
        // host's init and every one of them is reaped here.
        if rustix::process::getpid().as_raw_nonzero().get() != 1 {
            let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
        }
        let reaper = Self::default();
        let mut sigchld =
            crate::signals::Heard::new(rustix::process::Signal::CHILD, "SIGCHLD", backstop)?;
        let task = reaper.clone();
        tokio::spawn(async move {
            loop {
                task.reap_all();
                sigchld.recv().await;
            }
        });
        Ok(reaper)
    }

    /// Spawns a child with `spawn` while reaping is held off, and returns its pid and a
    /// receiver for its exit. Holding the lock across the spawn keeps the reaper from
    /// collecting a child that exits before it is registered, and from racing the standard
    /// library's own wait when `exec` fails.
    pub fn spawn<T>(
        &self,
        spawn: impl FnOnce() -> std::io::Result<T>,
        pid_of: impl Fn(&T) -> u32,
    ) -> std::io::Result<(T, oneshot::Receiver<Exit>)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let child = spawn()?;
        let (tx, rx) = oneshot::channel();
        let pid = i32::try_from(pid_of(&child)).unwrap_or(i32::MAX);
        waiting.insert(pid, tx);
        Ok((child, rx))
    }

    fn reap_all(&self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        // Stops when no child has changed state, or there are no children at all.
        while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
            if let (Some(tx), Some(exit)) = (
                waiting.remove(&Pid::as_raw(Some(pid))),
                Exit::from_status(status),
            ) {
                let _ = tx.send(exit);
            }
        }
    }
}
