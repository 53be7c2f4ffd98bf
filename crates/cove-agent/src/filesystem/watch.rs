//! Directory watching over inotify: the streaming `WatchDir` and the polling watchers
//! (`CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`).

use std::{
    collections::HashMap,
    ffi::c_int,
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use cove_proto::{
    connect::{Code, RpcError},
    filesystem::{
        CreateWatcherRequest, CreateWatcherResponse, EventType, FilesystemEvent,
        GetWatcherEventsRequest, GetWatcherEventsResponse, RemoveWatcherRequest,
        RemoveWatcherResponse, WatchDirRequest, WatchDirResponse,
        watch_dir_response::{Event as WatchEvent, KeepAlive, StartEvent},
    },
};
use futures::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchMask, Watches};

use super::{entry, io_error, resolve};
use crate::{
    AgentState,
    rpc::{self, Call, MessageStream},
    users::Accounts,
};

/// Events a polling watcher buffers before it reports an overflow instead.
const MAX_BUFFERED_EVENTS: usize = 100_000;

/// Room for the events of one read from inotify.
const EVENT_BUFFER_BYTES: usize = 64 * 1024;

/// Filesystem magic numbers of network filesystems, watched only on request.
const NETWORK_FILESYSTEMS: [(i64, &str); 5] = [
    (0x6969, "NFS"),
    (0xFF53_4D42, "CIFS"),
    (0x517B, "SMB"),
    (0xFE53_4D42, "SMB2"),
    (0x6573_5546, "FUSE"),
];

fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::MODIFY
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::MOVE_SELF
        | WatchMask::ATTRIB
}

/// What to watch.
#[derive(Clone, Debug)]
struct Spec {
    root: PathBuf,
    recursive: bool,
    include_entry: bool,
}

/// An inotify instance and the watches it holds for one watch.
struct Source {
    inotify: Inotify,
    watcher: Watcher,
}

/// Checks the request and starts watching: events queue in the kernel from here on.
fn open(
    state: &AgentState,
    call: &Call,
    path: &str,
    recursive: bool,
    include_entry: bool,
    allow_network_mounts: bool,
) -> Result<Source, RpcError> {
    let root = resolve(state, &call.caller.user, path)?;
    let meta = fs::metadata(&root).map_err(|err| io_error("watch", &root, &err))?;
    if !meta.is_dir() {
        return Err(RpcError::invalid_argument(format!(
            "path {} is not a directory",
            root.display()
        )));
    }
    let network_fs = rustix::fs::statfs(&root).ok().and_then(|stat| {
        NETWORK_FILESYSTEMS
            .iter()
            .find(|(magic, _)| *magic == stat.f_type)
    });
    if let (false, Some((_, name))) = (allow_network_mounts, network_fs) {
        return Err(RpcError::invalid_argument(format!(
            "cannot watch {} on a network filesystem ({name}); set allow_network_mounts to try anyway",
            root.display()
        )));
    }
    let accounts = state
        .accounts()
        .load()
        .map_err(|err| RpcError::internal(err.to_string()))?;
    let spec = Spec {
        root,
        recursive,
        include_entry,
    };
    let inotify = Inotify::init()
        .map_err(|err| RpcError::internal(format!("cannot start inotify: {err}")))?;
    let mut watcher = Watcher {
        watches: inotify.watches(),
        dirs: HashMap::new(),
        spec,
        accounts,
    };
    watcher
        .add_tree(&watcher.spec.root.clone(), Path::new(""))
        .map_err(|err| io_error("watch", &watcher.spec.root, &err))?;
    Ok(Source { inotify, watcher })
}

impl Source {
    /// The events as they come, until the stream is dropped.
    fn into_stream(self) -> Result<MessageStream<FilesystemEvent>, RpcError> {
        let Source {
            inotify,
            mut watcher,
        } = self;
        let events = inotify
            .into_event_stream(vec![0u8; EVENT_BUFFER_BYTES])
            .map_err(|err| RpcError::internal(format!("cannot read inotify events: {err}")))?;
        let stream = events
            .map(move |event| -> Vec<Result<FilesystemEvent, RpcError>> {
                match event {
                    Ok(event) => watcher.translate(event).into_iter().map(Ok).collect(),
                    Err(err) => vec![Err(RpcError::internal(format!("watcher error: {err}")))],
                }
            })
            .flat_map(futures::stream::iter);
        Ok(stream.boxed())
    }
}

/// The watch descriptors of one watch and the directories they stand for.
struct Watcher {
    watches: Watches,
    /// Watch descriptor (its number, the same through any descriptor of the instance) →
    /// the directory's path relative to the root ("" for the root).
    dirs: HashMap<c_int, PathBuf>,
    spec: Spec,
    accounts: Accounts,
}

impl Watcher {
    /// Watches `dir` and, when recursive, every directory below it (symlinks not followed).
    fn add_tree(&mut self, dir: &Path, relative: &Path) -> std::io::Result<()> {
        let wd = self.watches.add(dir, mask())?;
        self.dirs
            .insert(wd.get_watch_descriptor_id(), relative.to_owned());
        if !self.spec.recursive {
            return Ok(());
        }
        let Ok(children) = fs::read_dir(dir) else {
            return Ok(());
        };
        for child in children.flatten() {
            if child.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                // A subdirectory that vanished or cannot be read is simply not watched.
                let _ = self.add_tree(&child.path(), &relative.join(child.file_name()));
            }
        }
        Ok(())
    }

    fn translate(&mut self, event: inotify::Event<std::ffi::OsString>) -> Vec<FilesystemEvent> {
        if event.mask.contains(EventMask::Q_OVERFLOW) {
            tracing::warn!(root = %self.spec.root.display(), "inotify queue overflowed; events were lost");
            return Vec::new();
        }
        if event.mask.contains(EventMask::IGNORED) {
            self.dirs.remove(&event.wd.get_watch_descriptor_id());
            return Vec::new();
        }
        let Some(dir) = self.dirs.get(&event.wd.get_watch_descriptor_id()).cloned() else {
            return Vec::new();
        };
        let is_self_event = event
            .mask
            .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF);
        // A subdirectory's own removal is already reported by its parent.
        if is_self_event && !dir.as_os_str().is_empty() {
            return Vec::new();
        }
        // An upload's temporary file is an implementation detail: its file shows up as
        // created and written when it takes its place.
        if event
            .name
            .as_deref()
            .is_some_and(crate::atomic::is_temporary)
        {
            return Vec::new();
        }
        let relative = match &event.name {
            Some(name) => dir.join(name),
            None => dir.clone(),
        };
        let name = if relative.as_os_str().is_empty() {
            ".".to_owned()
        } else {
            relative.to_string_lossy().into_owned()
        };
        let absolute = self.spec.root.join(&relative);

        if self.spec.recursive
            && event.mask.contains(EventMask::ISDIR)
            && event
                .mask
                .intersects(EventMask::CREATE | EventMask::MOVED_TO)
        {
            let _ = self.add_tree(&absolute, &relative);
        }

        let kinds = [
            (EventMask::CREATE | EventMask::MOVED_TO, EventType::Create),
            (
                EventMask::MOVED_FROM | EventMask::MOVE_SELF,
                EventType::Rename,
            ),
            (EventMask::ATTRIB, EventType::Chmod),
            (EventMask::MODIFY, EventType::Write),
            (
                EventMask::DELETE | EventMask::DELETE_SELF,
                EventType::Remove,
            ),
        ];
        kinds
            .into_iter()
            .filter(|(bits, _)| event.mask.intersects(*bits))
            .map(|(_, kind)| {
                let entry = (self.spec.include_entry
                    && matches!(
                        kind,
                        EventType::Create | EventType::Write | EventType::Chmod
                    ))
                .then(|| entry::entry_info(&absolute, &absolute, &self.accounts).ok())
                .flatten();
                FilesystemEvent {
                    name: name.clone(),
                    r#type: kind as i32,
                    entry,
                }
            })
            .collect()
    }
}

pub async fn watch_dir(
    state: AgentState,
    call: Call,
    request: WatchDirRequest,
) -> Result<MessageStream<WatchDirResponse>, RpcError> {
    let events = open(
        &state,
        &call,
        &request.path,
        request.recursive,
        request.include_entry,
        request.allow_network_mounts,
    )?
    .into_stream()?;
    let started = futures::stream::once(async { Ok(WatchEvent::Start(StartEvent {})) });
    let events = started
        .chain(events.map(|e| e.map(WatchEvent::Filesystem)))
        .boxed();
    let events = rpc::with_keepalive(events, call.keepalive, || {
        WatchEvent::Keepalive(KeepAlive {})
    });
    Ok(rpc::with_deadline(events, call.timeout)
        .map(|e| e.map(|event| WatchDirResponse { event: Some(event) }))
        .boxed())
}

/// Polling watchers by id.
#[derive(Default)]
pub struct Watchers(Mutex<HashMap<String, Arc<Polled>>>);

/// A watcher a client polls: the events read so far and the task that reads them.
struct Polled {
    collector: Arc<Mutex<Collector>>,
    task: tokio::task::AbortHandle,
}

/// Reads a polling watcher's events from the kernel and keeps them for the client.
///
/// Two descriptors of one inotify instance read the same queue: the task waits on the
/// stream's, and a poll reads the queue at once through the other, so a change the
/// client made before polling is among the events even when the task has not run yet.
/// Both read and translate under the collector's lock, so no event sits read but not
/// kept while the other looks.
struct Collector {
    stream: EventStream<Vec<u8>>,
    direct: Inotify,
    watcher: Watcher,
    buffer: Vec<u8>,
    events: Vec<FilesystemEvent>,
    error: Option<RpcError>,
}

impl Collector {
    fn new(source: Source) -> std::io::Result<Collector> {
        let direct = Inotify::from(source.inotify.as_fd().try_clone_to_owned()?);
        Ok(Collector {
            stream: source
                .inotify
                .into_event_stream(vec![0u8; EVENT_BUFFER_BYTES])?,
            direct,
            watcher: source.watcher,
            buffer: vec![0u8; EVENT_BUFFER_BYTES],
            events: Vec::new(),
            error: None,
        })
    }

    fn lock(collector: &Mutex<Collector>) -> std::sync::MutexGuard<'_, Collector> {
        collector.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The task's side: keeps what the stream has until it would wait; ready once the
    /// watcher has stopped.
    fn poll_collect(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.error.is_some() {
                return Poll::Ready(());
            }
            match self.stream.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(event))) => self.keep(event),
                Poll::Ready(Some(Err(err))) => {
                    self.error = Some(RpcError::internal(format!("watcher error: {err}")));
                }
                Poll::Ready(None) => {
                    self.error = Some(RpcError::internal("the watcher's inotify instance closed"));
                }
            }
        }
    }

    /// The poll's side: keeps every event queued in the kernel, without waiting.
    fn collect_queued(&mut self) {
        while self.error.is_none() {
            let read = match self.direct.read_events(&mut self.buffer) {
                Ok(read) => read.map(|event| event.to_owned()).collect::<Vec<_>>(),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(err) => {
                    self.error = Some(RpcError::internal(format!("watcher error: {err}")));
                    return;
                }
            };
            for event in read {
                self.keep(event);
            }
        }
    }

    fn keep(&mut self, event: inotify::EventOwned) {
        if self.error.is_some() {
            return;
        }
        if self.events.len() >= MAX_BUFFERED_EVENTS {
            self.error = Some(RpcError::new(
                Code::ResourceExhausted,
                format!(
                    "over {MAX_BUFFERED_EVENTS} events were not collected; the watcher stopped"
                ),
            ));
            return;
        }
        let translated = self.watcher.translate(event);
        self.events.extend(translated);
    }
}

impl Watchers {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Polled>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<Polled>, RpcError> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| RpcError::not_found(format!("watcher with id {id} not found")))
    }
}

impl Drop for Polled {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn create_watcher(
    state: AgentState,
    call: Call,
    request: CreateWatcherRequest,
) -> Result<CreateWatcherResponse, RpcError> {
    let source = open(
        &state,
        &call,
        &request.path,
        request.recursive,
        request.include_entry,
        request.allow_network_mounts,
    )?;
    let collector = Collector::new(source)
        .map_err(|err| RpcError::internal(format!("cannot read inotify events: {err}")))?;
    let collector = Arc::new(Mutex::new(collector));
    let reader = collector.clone();
    let task = tokio::spawn(std::future::poll_fn(move |cx| {
        Collector::lock(&reader).poll_collect(cx)
    }));
    let id = watcher_id();
    let entry = Arc::new(Polled {
        collector,
        task: task.abort_handle(),
    });
    state.watchers().map().insert(id.clone(), entry);
    Ok(CreateWatcherResponse { watcher_id: id })
}

/// Hands out what happened since the last poll. The kernel's queue is read first, so a
/// change the client made before polling is always among the events.
pub async fn get_watcher_events(
    state: AgentState,
    _call: Call,
    request: GetWatcherEventsRequest,
) -> Result<GetWatcherEventsResponse, RpcError> {
    let polled = state.watchers().get(&request.watcher_id)?;
    let mut collector = Collector::lock(&polled.collector);
    collector.collect_queued();
    if let Some(err) = &collector.error {
        return Err(err.clone());
    }
    Ok(GetWatcherEventsResponse {
        events: std::mem::take(&mut collector.events),
    })
}

pub async fn remove_watcher(
    state: AgentState,
    _call: Call,
    request: RemoveWatcherRequest,
) -> Result<RemoveWatcherResponse, RpcError> {
    state
        .watchers()
        .map()
        .remove(&request.watcher_id)
        .ok_or_else(|| {
            RpcError::not_found(format!("watcher with id {} not found", request.watcher_id))
        })?;
    Ok(RemoveWatcherResponse {})
}

/// `w` + 20 random characters of `[a-z0-9]`, like envd's watcher ids.
fn watcher_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 20];
    getrandom_fill(&mut bytes);
    let mut id = String::from("w");
    id.extend(
        bytes
            .iter()
            .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char),
    );
    id
}

fn getrandom_fill(buf: &mut [u8]) {
    // The kernel's generator; a short read only happens for huge buffers.
    let _ = rustix::rand::getrandom(buf, rustix::rand::GetRandomFlags::empty());
}
