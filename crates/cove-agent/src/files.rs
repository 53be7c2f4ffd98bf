//! `GET /files` (download) and `POST /files` (upload: multipart or a raw body), streamed
//! both ways so file size never turns into memory use.

use std::{
    collections::{BTreeMap, HashSet},
    io,
    path::{Path, PathBuf},
};

use axum::{
    Json,
    body::Body,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use cove_proto::envd::FILE_UPGRADE;
use futures::{Stream, StreamExt, TryStreamExt};
use hyper::upgrade::OnUpgrade;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::{
    AgentState, atomic,
    auth::{self, Operation, SignedQuery},
    encoding,
    filesystem::{self, entry::METADATA_XATTR_PREFIX},
    paths, receive_file,
    rest::RestError,
    send_file,
    users::User,
};

/// Bytes read from the filesystem per chunk of a download.
const READ_CHUNK: usize = 1 << 20;
/// Bytes handed to the filesystem per write of an upload.
const WRITE_CHUNK: usize = 1 << 20;

/// Bytes of a gzip-encoded upload decoded per piece.
const GZIP_PIECE: usize = 256 << 10;

/// Largest total size of a file's metadata (keys with prefix, plus values).
const MAX_METADATA_BYTES: usize = 4096;
/// Longest metadata key: the VFS xattr name limit minus our prefix.
const MAX_METADATA_KEY: usize = 255 - METADATA_XATTR_PREFIX.len();

/// Query of both `/files` methods.
#[derive(Debug, Default, Deserialize)]
pub struct FilesQuery {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    signature_expiration: Option<i64>,
}

impl FilesQuery {
    fn signed(&self) -> SignedQuery<'_> {
        SignedQuery {
            path: self.path.as_deref().unwrap_or(""),
            username: self.username.as_deref().unwrap_or(""),
            signature: self.signature.as_deref(),
            expiration: self.signature_expiration,
        }
    }

    /// The user the request acts as (401 when it does not exist, as envd answers).
    fn user(&self, state: &AgentState) -> Result<User, RestError> {
        state
            .user(self.username.as_deref().filter(|u| !u.is_empty()))
            .map_err(|err| RestError::new(StatusCode::UNAUTHORIZED, err.to_string()))
    }

    fn resolve(
        &self,
        state: &AgentState,
        user: &User,
        path: Option<&str>,
    ) -> Result<PathBuf, RestError> {
        let workdir = state.defaults().workdir();
        paths::resolve(path.unwrap_or(""), user, workdir.as_deref())
            .map_err(|err| RestError::bad_request(err.to_string()))
    }
}

/// `GET /files?path=…`: the file's bytes, gzip-compressed when the client asks for that in
/// particular and the file compresses (see [`encoding`]).
pub async fn download(
    State(state): State<AgentState>,
    Query(query): Query<FilesQuery>,
    mut request: axum::extract::Request,
) -> Result<Response, RestError> {
    let headers = request.headers();
    auth::check_signature(&state, headers, &query.signed(), Operation::Read)?;
    let user = query.user(&state)?;
    let path = query.resolve(&state, &user, query.path.as_deref())?;
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(|err| match err.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => RestError::new(
                StatusCode::NOT_FOUND,
                format!("path '{}' does not exist", path.display()),
            ),
            io::ErrorKind::PermissionDenied => RestError::new(
                StatusCode::FORBIDDEN,
                format!("cannot read '{}': {err}", path.display()),
            ),
            _ => RestError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot stat '{}': {err}", path.display()),
            ),
        })?;
    if meta.is_dir() {
        return Err(RestError::bad_request(format!(
            "path '{}' is a directory",
            path.display()
        )));
    }
    let mut file = tokio::fs::File::open(&path).await.map_err(|err| {
        RestError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot open '{}': {err}", path.display()),
        )
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut response_headers = HeaderMap::new();
    response_headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&path)),
    );
    if let Ok(value) = HeaderValue::from_str(&content_disposition(&name)) {
        response_headers.insert(header::CONTENT_DISPOSITION, value);
    }
    let (gzip, head) = choose_coding(encoding::wish(headers), &mut file, &path).await?;
    if !gzip
        && send_file::wanted(headers, meta.len())
        && let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>()
    {
        let file = file.into_std().await;
        let socket = request
            .extensions()
            .get::<axum::extract::ConnectInfo<send_file::Socket>>()
            .map(|info| info.0.clone());
        return Ok(send_file::respond(
            on_upgrade,
            socket,
            response_headers,
            head,
            file,
            meta.len(),
        ));
    }
    // The bytes read to judge the file go out first, then the rest of it.
    let body = if gzip {
        response_headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let rest = std::io::Cursor::new(head).chain(file);
        let reader = tokio::io::BufReader::with_capacity(READ_CHUNK, rest);
        let encoder = async_compression::tokio::bufread::GzipEncoder::with_quality(
            reader,
            async_compression::Level::Fastest,
        );
        Body::from_stream(ReaderStream::with_capacity(encoder, READ_CHUNK))
    } else {
        response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
        // As many bytes as the length said: a file that grows meanwhile (a log) goes out as
        // it was; one that shrinks ends the body short, and the client sees it cut off.
        let rest = meta.len().saturating_sub(head.len() as u64);
        Body::from_stream(read_ahead(head, file.into_std().await, rest))
    };
    Ok((StatusCode::OK, response_headers, body).into_response())
}

/// `head`, then up to `limit` bytes of `file`, in pieces of [`READ_CHUNK`] bytes. Each piece
/// is read on a blocking thread straight into the buffer that goes out (a `tokio::fs::File`
/// would read into a buffer of its own and copy from it), and the next piece is read while
/// this one is sent.
pub(crate) fn read_ahead(
    head: Bytes,
    file: std::fs::File,
    limit: u64,
) -> impl Stream<Item = io::Result<Bytes>> {
    use std::io::Read as _;
    let head = (!head.is_empty()).then_some(Ok(head));
    let pieces = futures::stream::unfold(Some(read_piece(file.take(limit))), |reading| async {
        let (rest, read) = match reading?.await {
            Ok(done) => done,
            Err(err) => return Some((Err(io::Error::other(err)), None)),
        };
        match read {
            Ok(piece) if piece.is_empty() => None,
            Ok(piece) => Some((Ok(Bytes::from(piece)), Some(read_piece(rest)))),
            Err(err) => Some((Err(err), None)),
        }
    });
    futures::stream::iter(head).chain(pieces)
}

/// The file's part still to be sent.
type Rest = std::io::Take<std::fs::File>;

/// Reads the next piece of a download (empty at its end), on a blocking thread.
fn read_piece(mut rest: Rest) -> tokio::task::JoinHandle<(Rest, io::Result<Vec<u8>>)> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut piece = Vec::with_capacity(READ_CHUNK);
        let read = (&mut rest)
            .take(READ_CHUNK as u64)
            .read_to_end(&mut piece)
            .map(|_| piece);
        (rest, read)
    })
}

/// Whether a download goes out gzip-compressed (see [`encoding`]), and the bytes read from
/// the start of `file` to decide it.
async fn choose_coding(
    wish: encoding::Wish,
    file: &mut tokio::fs::File,
    path: &Path,
) -> Result<(bool, Bytes), RestError> {
    if wish == encoding::Wish::Identity {
        return Ok((false, Bytes::new()));
    }
    let mut sample = Vec::with_capacity(encoding::SAMPLE_BYTES);
    while sample.len() < encoding::SAMPLE_BYTES {
        let read = (&mut *file)
            .take((encoding::SAMPLE_BYTES - sample.len()) as u64)
            .read_buf(&mut sample)
            .await
            .map_err(|err| {
                RestError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot read '{}': {err}", path.display()),
                )
            })?;
        if read == 0 {
            break;
        }
    }
    let sample = Bytes::from(sample);
    if wish == encoding::Wish::GzipOnly {
        return Ok((true, sample));
    }
    let judged = sample.clone();
    // Compressing 64 KiB takes a fraction of a millisecond, but it is CPU work all the same.
    let compresses = tokio::task::spawn_blocking(move || encoding::compresses(&judged))
        .await
        .unwrap_or(false);
    Ok((compresses, sample))
}

fn content_disposition(name: &str) -> String {
    if name
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        format!("inline; filename=\"{name}\"")
    } else {
        let encoded: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        format!("inline; filename*=utf-8''{encoded}")
    }
}

/// A content type from the file's extension.
fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" | "md" | "py" | "rs" | "sh" => "text/plain; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "xml" => "text/xml; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// What an upload reports per written file.
#[derive(Debug, Serialize)]
pub struct WrittenEntry {
    path: String,
    name: String,
    r#type: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
}

/// `POST /files`: writes one file from a raw body (`?path=` required) or any number from a
/// multipart form (field `file`; the part's filename is its path unless `?path=` is given).
/// A raw body the server sends through the file upgrade is received from the socket
/// ([`receive_file`]).
pub async fn upload(
    State(state): State<AgentState>,
    Query(query): Query<FilesQuery>,
    request: axum::extract::Request,
) -> Result<Response, RestError> {
    let (mut parts, body) = request.into_parts();
    if let Some(length) = receive_file::wanted(&parts.headers) {
        let length = length?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| RestError::bad_request("the file upgrade needs HTTP/1.1"))?;
        let socket = parts
            .extensions
            .get::<axum::extract::ConnectInfo<send_file::Socket>>()
            .map(|info| info.0.clone());
        let (target, metadata) = ready_raw(&state, &query, &parts.headers).await?;
        return Ok(receive_file::respond(
            on_upgrade, socket, target, metadata, length,
        ));
    }
    let mut body = body.into_data_stream().map_err(io::Error::other);
    let result = accept(&state, &query, &parts.headers, &mut body).await;
    if result.is_err() {
        // Answering while the client still sends would close the connection under it, and
        // it (or the proxy) would see a broken pipe instead of the error.
        drain(&mut body, ERROR_DRAIN_TIME).await;
    }
    result.map(|written| Json(written).into_response())
}

/// Checks a raw upload sent through the file upgrade as [`accept`] checks any, and makes
/// its file ready.
async fn ready_raw(
    state: &AgentState,
    query: &FilesQuery,
    headers: &HeaderMap,
) -> Result<(Target, BTreeMap<String, String>), RestError> {
    auth::check_signature(state, headers, &query.signed(), Operation::Write)?;
    let user = query.user(state)?;
    let metadata = parse_metadata(headers)?;
    let coded = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("identity"));
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    if coded || essence(content_type) != "application/octet-stream" {
        return Err(RestError::bad_request(format!(
            "the {FILE_UPGRADE} upgrade takes only a raw body without a Content-Encoding"
        )));
    }
    let path = raw_path(state, query, &user)?;
    Ok((Target::open_async(&path, &user).await?, metadata))
}

/// Checks an upload and writes its files.
async fn accept(
    state: &AgentState,
    query: &FilesQuery,
    headers: &HeaderMap,
    body: &mut (impl Stream<Item = io::Result<Bytes>> + Send + Unpin),
) -> Result<Vec<WrittenEntry>, RestError> {
    auth::check_signature(state, headers, &query.signed(), Operation::Write)?;
    let user = query.user(state)?;
    let metadata = parse_metadata(headers)?;
    let gzipped = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("identity") | Some("") => false,
        Some(v) if v.eq_ignore_ascii_case("gzip") => true,
        Some(other) => {
            return Err(RestError::bad_request(format!(
                "unsupported Content-Encoding {other:?}: use gzip or identity"
            )));
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    let mut stream: std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + '_>> =
        if gzipped {
            let decoder =
                async_compression::tokio::bufread::GzipDecoder::new(StreamReader::new(body));
            Box::pin(ReaderStream::with_capacity(decoder, GZIP_PIECE))
        } else {
            Box::pin(body)
        };
    receive(state, query, &user, &metadata, content_type, &mut stream).await
}

/// A content type without its parameters, lowercased.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Where a raw body upload goes: `?path=`, required.
fn raw_path(state: &AgentState, query: &FilesQuery, user: &User) -> Result<PathBuf, RestError> {
    let Some(target) = query.path.as_deref().filter(|p| !p.is_empty()) else {
        return Err(RestError::bad_request(
            "the path query parameter is required for a raw body upload",
        ));
    };
    query.resolve(state, user, Some(target))
}

/// Writes the files of an upload body.
async fn receive(
    state: &AgentState,
    query: &FilesQuery,
    user: &User,
    metadata: &BTreeMap<String, String>,
    content_type: &str,
    mut stream: &mut (impl Stream<Item = io::Result<Bytes>> + Send + Unpin),
) -> Result<Vec<WrittenEntry>, RestError> {
    let essence = essence(content_type);
    if essence == "application/octet-stream" {
        let path = raw_path(state, query, user)?;
        write_file(&path, user, metadata, stream).await?;
        Ok(vec![describe(&path)])
    } else if essence.starts_with("multipart/") {
        let boundary = multer::parse_boundary(content_type).map_err(|err| {
            RestError::bad_request(format!("invalid multipart content type: {err}"))
        })?;
        let mut multipart = multer::Multipart::new(&mut stream, boundary);
        let mut parts = SmallWrites::new(user, metadata);
        let read = read_parts(state, query, user, metadata, &mut multipart, &mut parts).await;
        // Whatever happened, the small parts already received are written before the answer.
        let written = parts.finish().await;
        read?;
        let written = written?;
        drop(multipart);
        drain_epilogue(&mut stream).await;
        Ok(written)
    } else {
        Err(RestError::bad_request(format!(
            "unsupported content type {content_type:?}: use multipart/form-data or application/octet-stream"
        )))
    }
}

/// Parts of a form up to this size are read whole and written on a blocking thread in one
/// trip, several at once (`write_files` of many small files); larger ones stream.
const SMALL_PART: usize = 256 << 10;
/// Most small parts written at once.
const PARALLEL_WRITES: usize = 8;

/// Reads the `file` parts of a form: small ones go to `parts`, large ones are streamed to
/// their files here (their place in the answer kept in `parts` too).
async fn read_parts(
    state: &AgentState,
    query: &FilesQuery,
    user: &User,
    metadata: &BTreeMap<String, String>,
    multipart: &mut multer::Multipart<'_>,
    parts: &mut SmallWrites,
) -> Result<(), RestError> {
    let mut seen = HashSet::new();
    // Once a part is known to be refused, no further part is read (parts already handed to
    // a blocking thread are still written).
    while !parts.failed() {
        let field = multipart
            .next_field()
            .await
            .map_err(|err| RestError::bad_request(format!("invalid multipart body: {err}")))?;
        let Some(mut field) = field else {
            return Ok(());
        };
        if field.name() != Some("file") {
            continue;
        }
        let target = query
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .or_else(|| field.file_name().map(str::to_owned))
            .ok_or_else(|| {
                RestError::bad_request(
                    "a file part has no filename and no path query parameter was given",
                )
            })?;
        let path = query.resolve(state, user, Some(&target))?;
        if !seen.insert(path.clone()) {
            return Err(RestError::bad_request(format!(
                "cannot upload several files to the same path '{}' in one request",
                path.display()
            )));
        }
        let unreadable = |err: multer::Error| {
            RestError::bad_request(format!(
                "cannot read the upload for '{}': {err}",
                path.display()
            ))
        };
        let mut head = bytes::BytesMut::new();
        let mut ended = false;
        while head.len() <= SMALL_PART {
            match field.chunk().await.map_err(unreadable)? {
                Some(chunk) => head.extend_from_slice(&chunk),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        if ended {
            parts.write(path, head.freeze()).await;
        } else {
            let head = futures::stream::iter([Ok(head.freeze())]);
            let body = head.chain(field.map_err(io::Error::other));
            write_file(&path, user, metadata, body).await?;
            parts.written(describe(&path));
        }
    }
    Ok(())
}

/// The files of one form in the order of its parts: small ones written on blocking threads,
/// at most [`PARALLEL_WRITES`] at once, large ones as they were streamed.
struct SmallWrites {
    user: User,
    metadata: std::sync::Arc<BTreeMap<String, String>>,
    entries: Vec<Option<Result<WrittenEntry, RestError>>>,
    running: tokio::task::JoinSet<(usize, Result<WrittenEntry, RestError>)>,
    failed: bool,
}

impl SmallWrites {
    fn new(user: &User, metadata: &BTreeMap<String, String>) -> Self {
        Self {
            user: user.clone(),
            metadata: std::sync::Arc::new(metadata.clone()),
            entries: Vec::new(),
            running: tokio::task::JoinSet::new(),
            failed: false,
        }
    }

    /// Whether a part already finished has failed.
    fn failed(&self) -> bool {
        self.failed
    }

    /// Records a file already written, in its place among the parts.
    fn written(&mut self, entry: WrittenEntry) {
        self.entries.push(Some(Ok(entry)));
    }

    /// Starts writing `content` to `path`, once fewer than [`PARALLEL_WRITES`] run.
    async fn write(&mut self, path: PathBuf, content: Bytes) {
        while self.running.len() >= PARALLEL_WRITES {
            self.settle_one().await;
        }
        let index = self.entries.len();
        self.entries.push(None);
        let (user, metadata) = (self.user.clone(), self.metadata.clone());
        self.running
            .spawn_blocking(move || (index, write_whole(&path, &user, &metadata, &content)));
    }

    async fn settle_one(&mut self) {
        match self.running.join_next().await {
            Some(Ok((index, outcome))) => {
                self.failed |= outcome.is_err();
                self.entries[index] = Some(outcome);
            }
            Some(Err(join)) => {
                self.failed = true;
                tracing::error!(%join, "a file write crashed");
            }
            None => {}
        }
    }

    /// Waits for every write; the entries in order, or the first part's error.
    async fn finish(mut self) -> Result<Vec<WrittenEntry>, RestError> {
        while !self.running.is_empty() {
            self.settle_one().await;
        }
        self.entries
            .into_iter()
            .map(|entry| {
                entry.unwrap_or_else(|| {
                    Err(RestError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "a file write crashed",
                    ))
                })
            })
            .collect()
    }
}

/// Most bytes read after a form's closing boundary before giving up on the connection.
const EPILOGUE_LIMIT: usize = 64 << 10;

/// How long the rest of a refused upload is read (and thrown away) before the answer.
pub(crate) const ERROR_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads and discards the rest of a body, for at most `limit`.
async fn drain(
    body: &mut (impl Stream<Item = io::Result<Bytes>> + Unpin),
    limit: std::time::Duration,
) {
    let _ = tokio::time::timeout(limit, async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
}

/// Reads what follows a multipart form's closing boundary (an epilogue, the end of a chunked
/// body). The parser stops at the boundary; answering before the body has ended would make
/// the server close the connection under a client (or proxy) still sending it, which sees a
/// broken pipe instead of the answer.
async fn drain_epilogue(stream: &mut (impl Stream<Item = io::Result<Bytes>> + Unpin)) {
    let mut read = 0;
    while let Some(Ok(chunk)) = stream.next().await {
        read += chunk.len();
        if read > EPILOGUE_LIMIT {
            break;
        }
    }
}

/// Streams `body` into `path`, creating parents owned by `user`; the file ends up theirs,
/// with `metadata` (see [`Target`]).
async fn write_file(
    path: &Path,
    user: &User,
    metadata: &BTreeMap<String, String>,
    body: impl Stream<Item = io::Result<Bytes>> + Unpin,
) -> Result<(), RestError> {
    let mut target = Target::open_async(path, user).await?;
    let file = target
        .file()
        .try_clone()
        .map_err(|err| write_failed(path, "open", &err))?;
    copy_in_chunks(body, file)
        .await
        .map_err(|err| copy_failed(path, err))?;
    target.finish_async(metadata).await
}

/// [`write_file`] of content already received, blocking: one trip to a blocking thread for
/// a small file instead of one per call. What the upload reports for it.
fn write_whole(
    path: &Path,
    user: &User,
    metadata: &BTreeMap<String, String>,
    content: &[u8],
) -> Result<WrittenEntry, RestError> {
    use std::io::Write;
    let mut target = Target::open(path, user)?;
    target
        .file()
        .write_all(content)
        .map_err(|err| write_failed(path, "write", &err))?;
    target.finish(metadata)?;
    Ok(describe(path))
}

/// Where an upload's content goes. A regular file (or a new one) is replaced whole once the
/// content is complete (see [`atomic`]); anything else (a FIFO, a device) is written in
/// place. Either way the file is `user`'s, and its parent directories are made theirs.
pub(crate) struct Target {
    path: PathBuf,
    kind: TargetKind,
}

enum TargetKind {
    Replace(atomic::Staged<std::fs::File>),
    InPlace(std::fs::File),
}

impl Target {
    /// Gets `path` ready to take `user`'s upload, blocking.
    pub(crate) fn open(path: &Path, user: &User) -> Result<Self, RestError> {
        let kind = if make_way(path, user)? {
            TargetKind::Replace(
                atomic::Staged::create_blocking(path, user)
                    .map_err(|err| create_failed(path, &err))?,
            )
        } else {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .map_err(|err| write_failed(path, "open", &err))?;
            filesystem::fchown(&file, user).map_err(|err| write_failed(path, "chown", &err))?;
            TargetKind::InPlace(file)
        };
        Ok(Self {
            path: path.to_path_buf(),
            kind,
        })
    }

    /// [`Target::open`] on a blocking thread.
    pub(crate) async fn open_async(path: &Path, user: &User) -> Result<Self, RestError> {
        let (path, user) = (path.to_path_buf(), user.clone());
        tokio::task::spawn_blocking(move || Self::open(&path, &user))
            .await
            .map_err(|err| RestError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?
    }

    /// Where the content is written.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The file the content goes to.
    pub(crate) fn file(&mut self) -> &mut std::fs::File {
        match &mut self.kind {
            TargetKind::Replace(staged) => staged.file(),
            TargetKind::InPlace(file) => file,
        }
    }

    /// Gives the written file `metadata` and puts it in place, blocking. Dropped instead
    /// (the content failed), a replacement leaves the old file as it was.
    pub(crate) fn finish(self, metadata: &BTreeMap<String, String>) -> Result<(), RestError> {
        match self.kind {
            TargetKind::Replace(staged) => {
                store_metadata(staged.path(), metadata)?;
                staged
                    .commit_blocking()
                    .map_err(|err| write_failed(&self.path, "replace", &err))
            }
            TargetKind::InPlace(_) => {
                if let Err(err) = replace_metadata(&self.path, metadata) {
                    tracing::debug!(?err, path = %self.path.display(), "no metadata on a special file");
                }
                Ok(())
            }
        }
    }

    /// [`Target::finish`] on a blocking thread.
    pub(crate) async fn finish_async(
        self,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), RestError> {
        let metadata = metadata.clone();
        tokio::task::spawn_blocking(move || self.finish(&metadata))
            .await
            .map_err(|err| RestError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?
    }
}

/// Gets `path` ready to be written: its parent directories made (owned by `user`), and
/// refused when it is a directory. Whether it is to be replaced whole (a regular file or
/// nothing yet) rather than written in place (a FIFO, a device: what a rename must not
/// replace).
fn make_way(path: &Path, user: &User) -> Result<bool, RestError> {
    if let Some(parent) = path.parent() {
        filesystem::ensure_dirs(parent, user).map_err(|err| match err.kind() {
            io::ErrorKind::NotADirectory => {
                RestError::bad_request(format!("cannot create '{}': {err}", parent.display()))
            }
            _ => write_failed(path, "create the parent directories of", &err),
        })?;
    }
    match std::fs::metadata(path) {
        Ok(existing) if existing.is_dir() => Err(RestError::bad_request(format!(
            "path '{}' is a directory",
            path.display()
        ))),
        Ok(existing) => Ok(existing.is_file()),
        Err(_) => Ok(true),
    }
}

/// The answer to a write of `path` that failed doing `what`: 507 when the disk is full, 403
/// when the filesystem refuses it (read-only, permission denied; as for reads), 500
/// otherwise (as envd).
pub(crate) fn write_failed(path: &Path, what: &str, err: &io::Error) -> RestError {
    if is_disk_full(err) {
        return RestError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "not enough disk space available to write '{}'",
                path.display()
            ),
        );
    }
    let status = match err.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            StatusCode::FORBIDDEN
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    RestError::new(status, format!("cannot {what} '{}': {err}", path.display()))
}

/// The answer to a file that could not be made beside `path` (where it is written before
/// it replaces `path`). Its parent directories exist by then ([`make_way`]), so "not found"
/// means a directory that takes no new files, as `/proc` and its kinds answer: 403, as for
/// a read-only filesystem. Existing files there are not written in place: through `/proc/self`
/// that would be the agent's own process.
fn create_failed(path: &Path, err: &io::Error) -> RestError {
    if err.kind() == io::ErrorKind::NotFound && path.parent().is_some_and(Path::is_dir) {
        return RestError::new(
            StatusCode::FORBIDDEN,
            format!(
                "cannot write '{}': its directory takes no new files (a kernel filesystem such as /proc)",
                path.display()
            ),
        );
    }
    write_failed(path, "create", err)
}

/// Copies `body` into `file` in writes of [`WRITE_CHUNK`] bytes, each on a blocking thread
/// while the next is gathered. A request body arrives in socket-sized pieces (64 KiB over
/// the server's Unix socket); they are copied into one of two buffers that take turns, so
/// the memory stays the same from write to write. Handing the pieces on as they are would
/// keep each piece's buffer alive until its write, and every read of the body would then
/// fault in fresh pages (more CPU time than the copy saves, measured in docs/BENCHMARKS.md).
pub(crate) async fn copy_in_chunks(
    mut body: impl Stream<Item = io::Result<Bytes>> + Unpin,
    file: std::fs::File,
) -> Result<(), CopyError> {
    let mut file = Some(file);
    let mut spare = Vec::with_capacity(WRITE_CHUNK);
    let mut carried = Bytes::new();
    let mut writing = None;
    loop {
        let mut chunk = std::mem::take(&mut spare);
        chunk.clear();
        // The second buffer is made on the first turn it takes.
        chunk.reserve(WRITE_CHUNK);
        let ended = gather(&mut body, &mut carried, &mut chunk).await?;
        if let Some(previous) = writing.take() {
            let (done, buffer) = settle(previous).await?;
            (file, spare) = (Some(done), buffer);
        }
        let mut target = file
            .take()
            .expect("the file is back once its write is done");
        writing = Some(tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let written = target.write_all(&chunk);
            (target, chunk, written)
        }));
        if ended {
            let last = writing.take().expect("a write was just started");
            settle(last).await?;
            return Ok(());
        }
    }
}

/// Fills `chunk` to [`WRITE_CHUNK`] bytes from `carried` and then `body`; what does not fit
/// stays in `carried`. Whether the body has ended.
async fn gather(
    body: &mut (impl Stream<Item = io::Result<Bytes>> + Unpin),
    carried: &mut Bytes,
    chunk: &mut Vec<u8>,
) -> Result<bool, CopyError> {
    loop {
        let room = WRITE_CHUNK - chunk.len();
        let taken = carried.split_to(carried.len().min(room));
        chunk.extend_from_slice(&taken);
        if chunk.len() == WRITE_CHUNK {
            return Ok(false);
        }
        match body.next().await {
            Some(Ok(piece)) => *carried = piece,
            Some(Err(err)) => return Err(CopyError::Read(err)),
            None => return Ok(true),
        }
    }
}

/// A write of [`copy_in_chunks`] in flight: the file and the buffer come back with it.
type Write = tokio::task::JoinHandle<(std::fs::File, Vec<u8>, io::Result<()>)>;

/// Waits for one write of [`copy_in_chunks`]; the file and the buffer back.
async fn settle(write: Write) -> Result<(std::fs::File, Vec<u8>), CopyError> {
    let (file, buffer, written) = write
        .await
        .map_err(|err| CopyError::Write(io::Error::other(err)))?;
    written.map_err(CopyError::Write)?;
    Ok((file, buffer))
}

/// Which side of a copy failed: the upload's body, or the file.
#[derive(Debug)]
pub(crate) enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// The answer to a copy that failed: a broken body (bad gzip or multipart, a client gone)
/// is the client's mistake; a file that cannot be written is ours.
pub(crate) fn copy_failed(path: &Path, err: CopyError) -> RestError {
    match err {
        CopyError::Read(err) => RestError::bad_request(format!(
            "cannot read the upload for '{}': {err}",
            path.display()
        )),
        CopyError::Write(err) => write_failed(path, "write", &err),
    }
}

fn is_disk_full(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Stores `metadata` on a file about to take its place (507 when the disk is full).
fn store_metadata(path: &Path, metadata: &BTreeMap<String, String>) -> Result<(), RestError> {
    if let Err(err) = replace_metadata(path, metadata) {
        if is_disk_full(&err) {
            return Err(RestError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "not enough disk space available to store the file's metadata",
            ));
        }
        // Filesystems without user xattrs simply keep no metadata.
        tracing::warn!(?err, path = %path.display(), "cannot store file metadata");
    }
    Ok(())
}

/// What an upload reports for the file now at `path`.
pub(crate) fn describe(path: &Path) -> WrittenEntry {
    WrittenEntry {
        path: path.to_string_lossy().into_owned(),
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        r#type: "file",
        metadata: filesystem::entry::read_metadata(path).into_iter().collect(),
    }
}

fn replace_metadata(path: &Path, metadata: &BTreeMap<String, String>) -> io::Result<()> {
    let names = match xattr::list_deref(path) {
        Ok(names) => names,
        // Nothing to store and nothing readable to clear.
        Err(_) if metadata.is_empty() => return Ok(()),
        Err(err) => return Err(err),
    };
    for name in names {
        let stale = name
            .to_str()
            .and_then(|n| n.strip_prefix(METADATA_XATTR_PREFIX))
            .is_some_and(|key| !metadata.contains_key(key));
        if stale {
            xattr::remove_deref(path, &name)?;
        }
    }
    for (key, value) in metadata {
        xattr::set_deref(
            path,
            format!("{METADATA_XATTR_PREFIX}{key}"),
            value.as_bytes(),
        )?;
    }
    Ok(())
}

/// `X-Metadata-<key>: <value>` headers: keys lowercased, printable ASCII, size-limited.
fn parse_metadata(headers: &HeaderMap) -> Result<BTreeMap<String, String>, RestError> {
    let mut metadata = BTreeMap::new();
    let mut total = 0;
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix("x-metadata-") else {
            continue;
        };
        if metadata.contains_key(key) {
            continue;
        }
        let printable = |s: &[u8]| s.iter().all(|b| (0x20..=0x7e).contains(b));
        if key.is_empty() || !printable(key.as_bytes()) || !printable(value.as_bytes()) {
            return Err(RestError::bad_request(format!(
                "invalid metadata {key:?}: keys and values must be printable ASCII"
            )));
        }
        if key.len() > MAX_METADATA_KEY {
            return Err(RestError::bad_request(format!(
                "invalid metadata: key {key:?} is longer than {MAX_METADATA_KEY} bytes"
            )));
        }
        total += METADATA_XATTR_PREFIX.len() + key.len() + value.len();
        if total > MAX_METADATA_BYTES {
            return Err(RestError::bad_request(format!(
                "invalid metadata: more than {MAX_METADATA_BYTES} bytes in total"
            )));
        }
        let value = value.to_str().unwrap_or_default().to_owned();
        metadata.insert(key.to_owned(), value);
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-metadata-Owner", "alice".parse().unwrap());
        headers.insert("x-other", "ignored".parse().unwrap());
        let parsed = parse_metadata(&headers).unwrap();
        assert_eq!(
            parsed.into_iter().collect::<Vec<_>>(),
            vec![("owner".to_owned(), "alice".to_owned())]
        );
        headers.insert("x-metadata-big", "x".repeat(5000).parse().unwrap());
        assert_eq!(
            parse_metadata(&headers).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    /// Found by the `multipart_upload` fuzz target: a body that is not the gzip its
    /// `Content-Encoding` says was answered 500, as if the disk had failed.
    #[tokio::test]
    async fn an_unreadable_upload_is_the_clients_mistake() {
        let dir = tempfile::tempdir().unwrap();
        let user = User {
            name: "user".into(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            home: dir.path().into(),
            shell: "/bin/sh".into(),
        };
        let corrupt = ReaderStream::new(async_compression::tokio::bufread::GzipDecoder::new(
            &b"not gzip at all"[..],
        ));
        let err = write_file(&dir.path().join("f"), &user, &BTreeMap::new(), corrupt)
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST, "{err:?}");
        assert!(err.message.contains("cannot read the upload"), "{err:?}");
    }

    /// Pieces of every size, one larger than a whole write, end up in the file in order.
    #[tokio::test]
    async fn a_copy_keeps_every_byte_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..3 * WRITE_CHUNK + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut pieces = Vec::new();
        let mut rest = &content[..];
        for size in [0, 1, 65_536, WRITE_CHUNK + 7, 3, WRITE_CHUNK - 1]
            .into_iter()
            .cycle()
        {
            if rest.is_empty() {
                break;
            }
            let (piece, after) = rest.split_at(size.min(rest.len()));
            pieces.push(Ok(Bytes::copy_from_slice(piece)));
            rest = after;
        }
        let path = dir.path().join("f");
        let file = std::fs::File::create(&path).unwrap();
        copy_in_chunks(futures::stream::iter(pieces), file)
            .await
            .unwrap();
        assert!(std::fs::read(&path).unwrap() == content);
    }

    #[tokio::test]
    async fn a_download_sends_the_head_then_the_rest_up_to_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..2 * READ_CHUNK + 999).map(|i| (i % 253) as u8).collect();
        let path = dir.path().join("f");
        std::fs::write(&path, &content).unwrap();
        let sent = |head: usize, limit: usize| {
            let mut file = std::fs::File::open(&path).unwrap();
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(head as u64)).unwrap();
            let head = Bytes::copy_from_slice(&content[..head]);
            read_ahead(head, file, limit as u64)
                .map_ok(|piece| piece.to_vec())
                .try_concat()
        };
        // The whole file, with and without a head read before.
        assert!(sent(0, content.len()).await.unwrap() == content);
        let whole = sent(65_536, content.len() - 65_536).await.unwrap();
        assert!(whole == content);
        // A file that grew after its length was taken: only that length goes out.
        let length = READ_CHUNK + 5;
        assert!(sent(100, length - 100).await.unwrap() == content[..length]);
        // One that shrank: the body ends where the file does.
        assert!(sent(0, content.len() + 4096).await.unwrap() == content);
    }

    #[test]
    fn disposition_quotes_names() {
        assert_eq!(content_disposition("a.txt"), "inline; filename=\"a.txt\"");
        assert_eq!(
            content_disposition("a b.txt"),
            "inline; filename*=utf-8''a%20b.txt"
        );
    }
}
