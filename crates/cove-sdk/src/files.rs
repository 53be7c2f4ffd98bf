//! A sandbox's files: read, write, list, stat, move, remove, watch.

use std::{collections::HashMap, time::SystemTime};

use bytes::Bytes;
use cove_proto::filesystem::{
    self as fs, CreateWatcherRequest, CreateWatcherResponse, EventType, FileType,
    GetWatcherEventsRequest, GetWatcherEventsResponse, ListDirRequest, ListDirResponse,
    MakeDirRequest, MakeDirResponse, MoveRequest, MoveResponse, RemoveRequest, RemoveResponse,
    RemoveWatcherRequest, RemoveWatcherResponse, StatRequest, StatResponse, WatchDirRequest,
    WatchDirResponse, watch_dir_response,
};
use futures::{Stream, StreamExt, TryStreamExt, stream::BoxStream};
use serde::Deserialize;

use crate::{
    agent::AgentClient,
    error::{Error, Result},
};

/// What kind of entry a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// Sockets, devices, fifos, broken links.
    Other,
}

/// What the agent knows about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub path: String,
    /// `Symlink` for a symlink; `target_kind` then says what it points at.
    pub kind: FileKind,
    pub target_kind: FileKind,
    pub size: i64,
    /// Permission bits (`0o644`, …).
    pub mode: u32,
    /// `ls -l` style: `-rw-r--r--`, `drwxr-xr-x`, `Lrwxrwxrwx`.
    pub permissions: String,
    pub owner: String,
    pub group: String,
    pub modified: Option<SystemTime>,
    pub symlink_target: Option<String>,
    pub metadata: HashMap<String, String>,
}

fn kind(raw: i32) -> FileKind {
    match FileType::try_from(raw) {
        Ok(FileType::File) => FileKind::File,
        Ok(FileType::Directory) => FileKind::Dir,
        Ok(FileType::Symlink) => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

impl From<fs::EntryInfo> for Entry {
    fn from(info: fs::EntryInfo) -> Self {
        let target_kind = kind(info.r#type);
        Entry {
            kind: if info.is_symlink {
                FileKind::Symlink
            } else {
                target_kind
            },
            target_kind,
            name: info.name,
            path: info.path,
            size: info.size,
            mode: info.mode,
            permissions: info.permissions,
            owner: info.owner,
            group: info.group,
            modified: info.modified_time.and_then(|t| {
                let secs = u64::try_from(t.seconds).ok()?;
                Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, t.nanos.max(0) as u32))
            }),
            symlink_target: info.symlink_target,
            metadata: info.metadata,
        }
    }
}

/// A change below a watched directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsEvent {
    /// Path relative to the watched directory.
    pub name: String,
    pub kind: FsEventKind,
    /// The entry after the change, when the watch asked for it.
    pub entry: Option<Entry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsEventKind {
    Create,
    Write,
    Remove,
    Rename,
    Chmod,
}

impl FsEvent {
    fn from_wire(event: fs::FilesystemEvent) -> Option<Self> {
        let kind = match EventType::try_from(event.r#type).ok()? {
            EventType::Create => FsEventKind::Create,
            EventType::Write => FsEventKind::Write,
            EventType::Remove => FsEventKind::Remove,
            EventType::Rename => FsEventKind::Rename,
            EventType::Chmod => FsEventKind::Chmod,
            EventType::Unspecified => return None,
        };
        Some(FsEvent {
            name: event.name,
            kind,
            entry: event.entry.map(Entry::from),
        })
    }
}

/// A file an upload wrote.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Written {
    pub path: String,
    pub name: String,
}

/// The files API of one sandbox.
///
/// ```
/// # use cove_sdk::{CreateOptions, Error, FileKind, Sandbox};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> cove_sdk::Result<()> {
/// # let server = cove_test_util::TestServer::for_doctest().await;
/// # let sandbox = Sandbox::create(&server.config(), CreateOptions::default()).await?;
/// let files = sandbox.files();
/// assert!(files.make_dir("/tmp/project/src").await?);
/// files.write("/tmp/project/src/main.py", "print('hi')\n").await?;
/// assert_eq!(files.stat("/tmp/project/src").await?.kind, FileKind::Dir);
///
/// let moved = files.rename("/tmp/project/src/main.py", "/tmp/project/app.py").await?;
/// assert_eq!((moved.path.as_str(), moved.size), ("/tmp/project/app.py", 12));
/// assert!(!files.exists("/tmp/project/src/main.py").await?);
///
/// files.remove("/tmp/project").await?;
/// assert!(matches!(files.stat("/tmp/project").await, Err(Error::NotFound(_))));
/// # sandbox.kill().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Files<'a> {
    agent: &'a AgentClient,
}

const SERVICE: &str = "filesystem.Filesystem";

impl<'a> Files<'a> {
    pub(crate) fn new(agent: &'a AgentClient) -> Self {
        Self { agent }
    }

    async fn call<Req: cove_proto::connect::Wire, Resp: cove_proto::connect::Wire>(
        &self,
        method: &str,
        request: Req,
    ) -> Result<Resp> {
        self.agent.call(SERVICE, method, request).await
    }

    /// What is at `path`.
    pub async fn stat(&self, path: &str) -> Result<Entry> {
        let response: StatResponse = self
            .call(
                "Stat",
                StatRequest {
                    path: path.to_owned(),
                },
            )
            .await?;
        entry(response.entry)
    }

    /// Whether anything is at `path`.
    pub async fn exists(&self, path: &str) -> Result<bool> {
        crate::error::found(self.stat(path).await)
    }

    /// The entries below `path`, `depth` levels deep (1: direct children).
    pub async fn list(&self, path: &str, depth: u32) -> Result<Vec<Entry>> {
        let response: ListDirResponse = self
            .call(
                "ListDir",
                ListDirRequest {
                    path: path.to_owned(),
                    depth,
                },
            )
            .await?;
        Ok(response.entries.into_iter().map(Entry::from).collect())
    }

    /// Creates a directory and its parents; `false` when it already existed.
    pub async fn make_dir(&self, path: &str) -> Result<bool> {
        match self
            .call::<_, MakeDirResponse>(
                "MakeDir",
                MakeDirRequest {
                    path: path.to_owned(),
                },
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(Error::Rpc {
                code: cove_proto::connect::Code::AlreadyExists,
                ..
            }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Moves `from` to `to`, creating `to`'s parents.
    pub async fn rename(&self, from: &str, to: &str) -> Result<Entry> {
        let response: MoveResponse = self
            .call(
                "Move",
                MoveRequest {
                    source: from.to_owned(),
                    destination: to.to_owned(),
                },
            )
            .await?;
        entry(response.entry)
    }

    /// Removes a file or a whole directory; a missing path is not an error.
    pub async fn remove(&self, path: &str) -> Result<()> {
        let _: RemoveResponse = self
            .call(
                "Remove",
                RemoveRequest {
                    path: path.to_owned(),
                },
            )
            .await?;
        Ok(())
    }

    fn files_request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let channel = &self.agent.channel;
        let mut query = vec![("path", path.to_owned())];
        if let Some(user) = &self.agent.user {
            query.push(("username", user.clone()));
        }
        channel
            .http
            .request(method, format!("{}/files", channel.base))
            .headers(channel.headers.clone())
            .query(&query)
    }

    /// The file's content as a stream of chunks.
    pub async fn read_stream(
        &self,
        path: &str,
    ) -> Result<impl Stream<Item = Result<Bytes>> + Send + 'static> {
        let response = self
            .files_request(reqwest::Method::GET, path)
            .send()
            .await?;
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.bytes().await?;
            return Err(Error::from_http(status, &body));
        }
        Ok(response.bytes_stream().map_err(Error::from))
    }

    /// The file's content.
    pub async fn read(&self, path: &str) -> Result<Bytes> {
        let chunks: Vec<Bytes> = self.read_stream(path).await?.try_collect().await?;
        Ok(Bytes::from(chunks.concat()))
    }

    /// The file's content as UTF-8 text.
    pub async fn read_to_string(&self, path: &str) -> Result<String> {
        let bytes = self.read(path).await?;
        String::from_utf8(bytes.to_vec())
            .map_err(|err| Error::InvalidArgument(format!("{path} is not UTF-8 text: {err}")))
    }

    /// Writes (creates or replaces) one file, creating its parents. `data` is anything a
    /// request body can be made of: `Vec<u8>`, `String`, `&'static str`, [`Bytes`], a
    /// [`tokio::fs::File`].
    ///
    /// ```
    /// # use cove_sdk::{CreateOptions, Sandbox};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> cove_sdk::Result<()> {
    /// # let server = cove_test_util::TestServer::for_doctest().await;
    /// # let sandbox = Sandbox::create(&server.config(), CreateOptions::default()).await?;
    /// let files = sandbox.files();
    /// let written = files.write("/home/user/notes/hello.txt", "hello\n").await?;
    /// assert_eq!(written.path, "/home/user/notes/hello.txt");
    /// assert_eq!(files.read_to_string("/home/user/notes/hello.txt").await?, "hello\n");
    /// assert_eq!(files.read("/home/user/notes/hello.txt").await?, &b"hello\n"[..]);
    /// # sandbox.kill().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write(&self, path: &str, data: impl Into<reqwest::Body>) -> Result<Written> {
        let response = self
            .files_request(reqwest::Method::POST, path)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .body(data)
            .send()
            .await?;
        let mut written = written(response).await?;
        written
            .pop()
            .ok_or_else(|| Error::Protocol("the upload reported no file".to_owned()))
    }

    /// Writes one file from a stream of chunks, without holding it in memory.
    ///
    /// ```
    /// # use cove_sdk::{CreateOptions, Sandbox};
    /// # use futures::{StreamExt, TryStreamExt};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> cove_sdk::Result<()> {
    /// # let server = cove_test_util::TestServer::for_doctest().await;
    /// # let sandbox = Sandbox::create(&server.config(), CreateOptions::default()).await?;
    /// let chunks = futures::stream::iter((0..4).map(|i| {
    ///     Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a' + i; 1 << 20]))
    /// }));
    /// sandbox.files().write_stream("/tmp/big.bin", chunks).await?;
    ///
    /// let mut size = 0;
    /// let mut stream = sandbox.files().read_stream("/tmp/big.bin").await?;
    /// while let Some(chunk) = stream.try_next().await? {
    ///     size += chunk.len();
    /// }
    /// assert_eq!(size, 4 << 20);
    /// # sandbox.kill().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write_stream<S, E>(&self, path: &str, chunks: S) -> Result<Written>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.write(path, reqwest::Body::wrap_stream(chunks)).await
    }

    /// Writes several files in one request, creating their parents.
    ///
    /// ```
    /// # use cove_sdk::{CreateOptions, Sandbox};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> cove_sdk::Result<()> {
    /// # let server = cove_test_util::TestServer::for_doctest().await;
    /// # let sandbox = Sandbox::create(&server.config(), CreateOptions::default()).await?;
    /// let written = sandbox
    ///     .files()
    ///     .write_many([("/tmp/a.txt", "first"), ("/tmp/sub/b.txt", "second")])
    ///     .await?;
    /// assert_eq!(written.len(), 2);
    /// let names: Vec<_> = sandbox.files().list("/tmp", 2).await?.into_iter().map(|e| e.path).collect();
    /// assert!(names.contains(&"/tmp/sub/b.txt".to_owned()), "{names:?}");
    /// # sandbox.kill().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write_many<I, P, D>(&self, files: I) -> Result<Vec<Written>>
    where
        I: IntoIterator<Item = (P, D)>,
        P: Into<String>,
        D: Into<Bytes>,
    {
        let mut form = reqwest::multipart::Form::new();
        for (path, data) in files {
            form = form.part(
                "file",
                reqwest::multipart::Part::stream(data.into()).file_name(path.into()),
            );
        }
        let channel = &self.agent.channel;
        let mut request = channel
            .http
            .post(format!("{}/files", channel.base))
            .headers(channel.headers.clone())
            .multipart(form);
        if let Some(user) = &self.agent.user {
            request = request.query(&[("username", user)]);
        }
        written(request.send().await?).await
    }

    /// Streams changes below `path` (and its subdirectories when `recursive`) until the
    /// stream is dropped. The watch is in place when this returns.
    ///
    /// ```
    /// # use cove_sdk::{CreateOptions, FsEventKind, Sandbox};
    /// # use futures::TryStreamExt;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> cove_sdk::Result<()> {
    /// # let server = cove_test_util::TestServer::for_doctest().await;
    /// # let sandbox = Sandbox::create(&server.config(), CreateOptions::default()).await?;
    /// sandbox.files().make_dir("/tmp/watched").await?;
    /// let mut events = sandbox.files().watch("/tmp/watched", true).await?;
    /// sandbox.files().write("/tmp/watched/new.txt", "x").await?;
    /// let event = events.try_next().await?.expect("an event");
    /// assert_eq!((event.name.as_str(), event.kind), ("new.txt", FsEventKind::Create));
    /// # sandbox.kill().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn watch(
        &self,
        path: &str,
        recursive: bool,
    ) -> Result<BoxStream<'static, Result<FsEvent>>> {
        let request = WatchDirRequest {
            path: path.to_owned(),
            recursive,
            include_entry: false,
            allow_network_mounts: false,
        };
        let mut stream = self
            .agent
            .channel
            .server_stream::<_, WatchDirResponse>(&format!("{SERVICE}/WatchDir"), &request, None)
            .await?;
        // The watch is in place once the agent says so; errors (missing path, …) come first.
        match stream.next().await {
            Some(Ok(WatchDirResponse {
                event: Some(watch_dir_response::Event::Start(_)),
            })) => {}
            Some(Err(err)) => return Err(err),
            _ => {
                return Err(Error::Protocol(
                    "the watch stream did not begin with a start event".to_owned(),
                ));
            }
        }
        Ok(stream
            .try_filter_map(|message| async move {
                Ok(match message.event {
                    Some(watch_dir_response::Event::Filesystem(event)) => FsEvent::from_wire(event),
                    _ => None,
                })
            })
            .boxed())
    }

    /// Starts a polling watcher; collect its events with [`Files::watcher_events`].
    pub async fn create_watcher(&self, path: &str, recursive: bool) -> Result<String> {
        let response: CreateWatcherResponse = self
            .call(
                "CreateWatcher",
                CreateWatcherRequest {
                    path: path.to_owned(),
                    recursive,
                    include_entry: false,
                    allow_network_mounts: false,
                },
            )
            .await?;
        Ok(response.watcher_id)
    }

    /// The events a polling watcher collected since the last call.
    pub async fn watcher_events(&self, watcher_id: &str) -> Result<Vec<FsEvent>> {
        let response: GetWatcherEventsResponse = self
            .call(
                "GetWatcherEvents",
                GetWatcherEventsRequest {
                    watcher_id: watcher_id.to_owned(),
                },
            )
            .await?;
        Ok(response
            .events
            .into_iter()
            .filter_map(FsEvent::from_wire)
            .collect())
    }

    /// Stops a polling watcher.
    pub async fn remove_watcher(&self, watcher_id: &str) -> Result<()> {
        let _: RemoveWatcherResponse = self
            .call(
                "RemoveWatcher",
                RemoveWatcherRequest {
                    watcher_id: watcher_id.to_owned(),
                },
            )
            .await?;
        Ok(())
    }
}

fn entry(info: Option<fs::EntryInfo>) -> Result<Entry> {
    info.map(Entry::from)
        .ok_or_else(|| Error::Protocol("the answer carries no entry".to_owned()))
}

async fn written(response: reqwest::Response) -> Result<Vec<Written>> {
    let status = response.status().as_u16();
    let body = response.bytes().await?;
    if status != 200 {
        return Err(Error::from_http(status, &body));
    }
    serde_json::from_slice(&body)
        .map_err(|err| Error::Protocol(format!("invalid upload answer: {err}")))
}
