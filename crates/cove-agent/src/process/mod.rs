//! Processes started through the agent: the table of running ones, their output fan-out to
//! attached clients, and the end events kept for late re-attachers.

mod output;
mod service;
mod spawn;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use cove_proto::{
    connect::RpcError,
    process::{
        ProcessConfig, ProcessInfo, ProcessSelector, process_event, process_selector::Selector,
    },
};
use tokio::sync::mpsc;

pub use self::{
    service::routes,
    spawn::{Output, StartSpec},
};
use crate::reaper::Reaper;

/// How long the end of a process stays available to `Connect` after it exited.
const RETAIN_ENDED: Duration = Duration::from_secs(30);

/// Events queued per attached client before the process's output waits for it.
const SUBSCRIBER_QUEUE: usize = 64;

/// A process event as clients receive it (`data` or `end`; `start` is sent per stream).
pub type Event = process_event::Event;

/// Running processes and recently ended ones.
pub struct ProcessTable {
    reaper: Reaper,
    live: Mutex<HashMap<u32, Arc<Process>>>,
    ended: Mutex<HashMap<u32, Ended>>,
}

/// What is left of an ended process.
#[derive(Clone)]
struct Ended {
    tag: Option<String>,
    end: process_event::EndEvent,
    at: tokio::time::Instant,
}

impl ProcessTable {
    pub fn new(reaper: Reaper) -> Self {
        Self {
            reaper,
            live: Mutex::default(),
            ended: Mutex::default(),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Process>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ended(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Ended>> {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        ended.retain(|_, e| now.duration_since(e.at) < RETAIN_ENDED);
        ended
    }

    /// The reaper that hands out the exit of every process the agent starts.
    pub fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    /// Running processes, for `List`.
    pub fn list(&self) -> Vec<ProcessInfo> {
        let mut infos: Vec<ProcessInfo> = self
            .live()
            .values()
            .map(|p| ProcessInfo {
                config: Some(p.config.clone()),
                pid: p.pid,
                tag: p.tag.clone(),
            })
            .collect();
        infos.sort_by_key(|p| p.pid);
        infos
    }

    /// The running process a selector names.
    pub fn get(&self, selector: Option<&ProcessSelector>) -> Result<Arc<Process>, RpcError> {
        let live = self.live();
        match selector.and_then(|s| s.selector.as_ref()) {
            Some(Selector::Pid(pid)) => live
                .get(pid)
                .cloned()
                .ok_or_else(|| RpcError::not_found(format!("process with pid {pid} not found"))),
            Some(Selector::Tag(tag)) => live
                .values()
                .find(|p| p.tag.as_deref() == Some(tag.as_str()))
                .cloned()
                .ok_or_else(|| RpcError::not_found(format!("process with tag {tag:?} not found"))),
            None => Err(RpcError::invalid_argument(
                "a process selector (pid or tag) is required",
            )),
        }
    }

    /// The end of a recently ended process a selector names.
    fn get_ended(
        &self,
        selector: Option<&ProcessSelector>,
    ) -> Option<(u32, process_event::EndEvent)> {
        let ended = self.ended();
        match selector?.selector.as_ref()? {
            Selector::Pid(pid) => ended.get(pid).map(|e| (*pid, e.end.clone())),
            Selector::Tag(tag) => ended
                .iter()
                .filter(|(_, e)| e.tag.as_deref() == Some(tag.as_str()))
                .max_by_key(|(_, e)| e.at)
                .map(|(pid, e)| (*pid, e.end.clone())),
        }
    }

    fn insert(&self, process: Arc<Process>) {
        let mut ended = self.ended();
        // A reused pid or tag must not resurrect an older process's end.
        ended.remove(&process.pid);
        if let Some(tag) = &process.tag {
            ended.retain(|_, e| e.tag.as_ref() != Some(tag));
        }
        drop(ended);
        self.live().insert(process.pid, process);
    }

    fn finish(&self, process: &Process, end: process_event::EndEvent) {
        self.ended().insert(
            process.pid,
            Ended {
                tag: process.tag.clone(),
                end,
                at: tokio::time::Instant::now(),
            },
        );
        self.live().remove(&process.pid);
    }
}

/// One running process.
pub struct Process {
    pub pid: u32,
    pub config: ProcessConfig,
    pub tag: Option<String>,
    input: spawn::Input,
    hub: Mutex<Hub>,
    /// Set by SIGKILL/SIGTERM from a client: stop waiting for the output to close.
    stop: tokio::sync::Notify,
}

/// The clients attached to a process's output.
#[derive(Default)]
struct Hub {
    subscribers: Vec<mpsc::Sender<Event>>,
    end: Option<process_event::EndEvent>,
}

/// What an attaching client gets: the events to come, or the end if it already happened.
pub enum Attachment {
    Live(mpsc::Receiver<Event>),
    Ended(process_event::EndEvent),
}

impl Process {
    /// Attaches a client to the output from now on.
    pub fn attach(&self) -> Attachment {
        let mut hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(end) = &hub.end {
            return Attachment::Ended(end.clone());
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        hub.subscribers.push(tx);
        Attachment::Live(rx)
    }

    /// Delivers an event to every attached client, waiting for slow ones (so output is
    /// never dropped for a client that is still there) and forgetting departed ones.
    async fn publish(&self, event: Event) {
        let subscribers = {
            let hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
            hub.subscribers.clone()
        };
        if subscribers.is_empty() {
            return;
        }
        let mut departed = false;
        for tx in &subscribers {
            departed |= tx.send(event.clone()).await.is_err();
        }
        if departed {
            let mut hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
            hub.subscribers.retain(|tx| !tx.is_closed());
        }
    }

    /// Records the end and hands it to every attached client, then detaches them all.
    async fn publish_end(&self, end: process_event::EndEvent) {
        let subscribers = {
            let mut hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
            hub.end = Some(end.clone());
            std::mem::take(&mut hub.subscribers)
        };
        for tx in subscribers {
            let _ = tx.send(Event::End(end.clone())).await;
        }
    }

    pub(crate) fn new(
        pid: u32,
        config: ProcessConfig,
        tag: Option<String>,
        input: spawn::Input,
    ) -> Self {
        Self {
            pid,
            config,
            tag,
            input,
            hub: Mutex::default(),
            stop: tokio::sync::Notify::new(),
        }
    }

    /// Resolves once a client has killed or terminated the process.
    async fn stop_requested(&self) {
        self.stop.notified().await;
    }

    /// Kills or terminates the process on a client's request; its end is then reported
    /// without waiting for children that hold its output open.
    pub fn stop(&self, signal: rustix::process::Signal) -> Result<(), RpcError> {
        self.signal(signal)?;
        // A stored permit: the output task sees it even if it is busy right now.
        self.stop.notify_one();
        Ok(())
    }

    /// Sends a signal to the process's whole process group (the process leads it), so a
    /// shell's children go with it.
    pub fn signal(&self, signal: rustix::process::Signal) -> Result<(), RpcError> {
        let pid = rustix::process::Pid::from_raw(self.pid as i32)
            .ok_or_else(|| RpcError::internal("process has no valid pid"))?;
        match rustix::process::kill_process_group(pid, signal) {
            Ok(()) => Ok(()),
            // The leader may have left its group (setsid/setpgid); signal it alone.
            Err(_) => rustix::process::kill_process(pid, signal).map_err(|err| {
                RpcError::internal(format!("cannot signal process {}: {err}", self.pid))
            }),
        }
    }
}
