//! Processes started through the agent: the table of running ones, their output fan-out to
//! attached clients, and the end events kept for late re-attachers.

mod output;
mod service;
mod spawn;

use std::{
    collections::{HashMap, VecDeque},
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
    ended: Mutex<EndedLog>,
}

/// What is left of an ended process.
#[derive(Clone)]
struct Ended {
    tag: Option<String>,
    end: process_event::EndEvent,
    at: tokio::time::Instant,
}

/// The ends of the processes that ended in the last [`RETAIN_ENDED`], by pid and by tag.
/// Each start and end costs the same however many there are (an agent running hundreds of
/// short commands a second holds thousands).
#[derive(Default)]
struct EndedLog {
    by_pid: HashMap<u32, Ended>,
    /// The pids of each tag's ends, oldest first.
    by_tag: HashMap<String, Vec<u32>>,
    /// Every end as it was recorded, oldest first; an entry whose pid has been forgotten or
    /// recorded again since is skipped.
    order: VecDeque<(tokio::time::Instant, u32)>,
}

impl EndedLog {
    /// Forgets the ends older than [`RETAIN_ENDED`].
    fn expire(&mut self, now: tokio::time::Instant) {
        while let Some(&(at, pid)) = self.order.front() {
            if now.duration_since(at) < RETAIN_ENDED {
                break;
            }
            self.order.pop_front();
            if self.by_pid.get(&pid).is_some_and(|e| e.at == at) {
                self.forget_pid(pid);
            }
        }
    }

    fn forget_pid(&mut self, pid: u32) {
        let Some(Ended { tag: Some(tag), .. }) = self.by_pid.remove(&pid) else {
            return;
        };
        if let Some(pids) = self.by_tag.get_mut(&tag) {
            pids.retain(|p| *p != pid);
            if pids.is_empty() {
                self.by_tag.remove(&tag);
            }
        }
    }

    fn forget_tag(&mut self, tag: &str) {
        for pid in self.by_tag.remove(tag).unwrap_or_default() {
            self.by_pid.remove(&pid);
        }
    }

    fn record(&mut self, pid: u32, ended: Ended) {
        self.forget_pid(pid);
        if let Some(tag) = &ended.tag {
            self.by_tag.entry(tag.clone()).or_default().push(pid);
        }
        self.order.push_back((ended.at, pid));
        self.by_pid.insert(pid, ended);
    }

    /// The latest end of a process with `tag`.
    fn latest_of(&self, tag: &str) -> Option<(u32, &Ended)> {
        let pid = *self.by_tag.get(tag)?.last()?;
        self.by_pid.get(&pid).map(|e| (pid, e))
    }
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

    fn ended(&self) -> std::sync::MutexGuard<'_, EndedLog> {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        ended.expire(tokio::time::Instant::now());
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
            Selector::Pid(pid) => ended.by_pid.get(pid).map(|e| (*pid, e.end.clone())),
            Selector::Tag(tag) => ended.latest_of(tag).map(|(pid, e)| (pid, e.end.clone())),
        }
    }

    fn insert(&self, process: Arc<Process>) {
        let mut ended = self.ended();
        // A reused pid or tag must not resurrect an older process's end.
        ended.forget_pid(process.pid);
        if let Some(tag) = &process.tag {
            ended.forget_tag(tag);
        }
        drop(ended);
        self.live().insert(process.pid, process);
    }

    fn finish(&self, process: &Process, end: process_event::EndEvent) {
        self.ended().record(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(tag: Option<&str>, exit_code: i32, at: tokio::time::Instant) -> Ended {
        Ended {
            tag: tag.map(str::to_owned),
            end: process_event::EndEvent {
                exit_code,
                ..Default::default()
            },
            at,
        }
    }

    /// The pid the latest end of `tag` is of, and its exit code.
    fn latest(log: &EndedLog, tag: &str) -> Option<(u32, i32)> {
        log.latest_of(tag).map(|(pid, e)| (pid, e.end.exit_code))
    }

    #[test]
    fn ends_are_kept_for_their_time_by_pid_and_by_tag() {
        let t0 = tokio::time::Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut log = EndedLog::default();
        log.record(10, ended(Some("web"), 1, at(0)));
        log.record(11, ended(Some("web"), 2, at(1)));
        log.record(12, ended(None, 3, at(2)));
        // Two ends of one tag: the latest answers for the tag, each for its pid.
        assert_eq!(latest(&log, "web"), Some((11, 2)));
        assert_eq!(log.by_pid[&10].end.exit_code, 1);

        // A pid used again: its new end replaces the old one, and the old one's place in
        // the order no longer removes it.
        log.record(10, ended(None, 4, at(3)));
        log.expire(at(0) + RETAIN_ENDED);
        assert_eq!(log.by_pid[&10].end.exit_code, 4);
        assert_eq!(latest(&log, "web"), Some((11, 2)));

        log.expire(at(1) + RETAIN_ENDED);
        assert_eq!(latest(&log, "web"), None);
        assert!(log.by_tag.is_empty());
        assert_eq!(log.by_pid.len(), 2, "pids 10 and 12 stay");

        log.expire(at(3) + RETAIN_ENDED);
        assert!(log.by_pid.is_empty() && log.order.is_empty());
    }

    #[test]
    fn a_new_process_of_a_tag_forgets_the_tags_earlier_ends() {
        let now = tokio::time::Instant::now();
        let mut log = EndedLog::default();
        log.record(20, ended(Some("job"), 0, now));
        log.record(21, ended(Some("job"), 0, now));
        log.forget_tag("job");
        assert_eq!(latest(&log, "job"), None);
        assert!(log.by_pid.is_empty());
        // Their entries in the order expire without touching what came later.
        log.record(20, ended(Some("job"), 7, now + Duration::from_secs(5)));
        log.expire(now + RETAIN_ENDED);
        assert_eq!(
            log.latest_of("job").map(|(pid, e)| (pid, e.end.exit_code)),
            Some((20, 7))
        );
    }
}
