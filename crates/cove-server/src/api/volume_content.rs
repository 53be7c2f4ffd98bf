//! The content API of volumes (`/volumecontent/{id}/…`), as the E2B SDKs' `Volume` class
//! calls it: authenticated by the volume's token (`Authorization: Bearer`), run on the host
//! over files sandboxes wrote — every path is resolved inside the volume by
//! [`cove_runtime::volume_files`], never joined as a string.

use axum::{
    Json,
    body::Body,
    extract::{Path, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use cove_proto::rest::{VolumeEntryStat, VolumeMetadata};
use cove_runtime::volume_files::{
    Entry, EntryKind, MAX_ID, Ownership, VolumeFileError, VolumePath, VolumeRoot,
};
use futures::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::{ApiError, ApiQuery, sandboxes::body};
use crate::{AppState, clock};

impl From<VolumeFileError> for ApiError {
    fn from(err: VolumeFileError) -> Self {
        let status = match &err {
            VolumeFileError::NotFound(_) => StatusCode::NOT_FOUND,
            VolumeFileError::BadPath(..)
            | VolumeFileError::NotADirectory(_)
            | VolumeFileError::IsADirectory(_)
            | VolumeFileError::NotAFile(_)
            | VolumeFileError::TooDeep(_) => StatusCode::BAD_REQUEST,
            VolumeFileError::Exists(_) => StatusCode::CONFLICT,
            VolumeFileError::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
            VolumeFileError::Io { .. } => {
                tracing::error!(err = %format!("{:#}", super::ErrorChain(&err)), "volume content request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, err.to_string())
    }
}

/// How much of an upload that failed is still read (and dropped) before answering.
const DRAIN_LIMIT: usize = 256 << 20;

#[derive(Debug, Deserialize)]
pub struct PathQuery {
    path: String,
}

#[derive(Debug, Deserialize)]
pub struct DirQuery {
    path: String,
    depth: Option<usize>,
}

#[derive(Debug, Deserialize)]
pub struct MakeQuery {
    path: String,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
    force: Option<bool>,
}

/// The root of the volume `id` when the request shows its token.
async fn open(state: &AppState, headers: &HeaderMap, id: String) -> Result<VolumeRoot, ApiError> {
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, message);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            unauthorized("missing volume token: send it as 'Authorization: Bearer <token>'")
        })?;
    let volumes = state.lifecycle().volumes().clone();
    let Some(volume) = volumes.by_token(&id, token)? else {
        return Err(unauthorized("invalid volume token (or no such volume)"));
    };
    run(move || volumes.root(&volume).map_err(ApiError::from)).await
}

/// Blocking file work, off the async threads.
async fn run<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|join| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the volume request failed unexpectedly: {join}"),
        )
    })?
}

fn parse(path: &str) -> Result<VolumePath, ApiError> {
    Ok(VolumePath::parse(path)?)
}

fn ownership(uid: Option<u32>, gid: Option<u32>, mode: Option<u32>) -> Result<Ownership, ApiError> {
    if uid.into_iter().chain(gid).any(|id| id > MAX_ID) {
        return Err(ApiError::bad_request(format!(
            "uid and gid must be at most {MAX_ID}"
        )));
    }
    if mode.is_some_and(|m| m > 0o7777) {
        return Err(ApiError::bad_request("mode must be at most 0o7777 (4095)"));
    }
    Ok(Ownership { uid, gid, mode })
}

fn stat_of(entry: Entry) -> VolumeEntryStat {
    VolumeEntryStat {
        name: entry.name,
        kind: match entry.kind {
            EntryKind::File => "file",
            EntryKind::Directory => "directory",
            EntryKind::Symlink => "symlink",
            EntryKind::Other => "unknown",
        }
        .to_owned(),
        path: entry.path,
        size: entry.size,
        mode: entry.mode,
        uid: entry.uid,
        gid: entry.gid,
        atime: clock::rfc3339(entry.atime_ms),
        mtime: clock::rfc3339(entry.mtime_ms),
        ctime: clock::rfc3339(entry.ctime_ms),
        target: entry.target,
    }
}

pub async fn stat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<PathQuery>,
) -> Result<Json<VolumeEntryStat>, ApiError> {
    let path = parse(&query.path)?;
    let root = open(&state, &headers, id).await?;
    let entry = run(move || Ok(root.stat(&path)?)).await?;
    Ok(Json(stat_of(entry)))
}

pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<DirQuery>,
) -> Result<Json<Vec<VolumeEntryStat>>, ApiError> {
    let path = parse(&query.path)?;
    let root = open(&state, &headers, id).await?;
    let depth = query.depth.unwrap_or(1);
    let entries = run(move || Ok(root.list(&path, depth)?)).await?;
    Ok(Json(entries.into_iter().map(stat_of).collect()))
}

pub async fn make_dir(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<MakeQuery>,
) -> Result<Response, ApiError> {
    let path = parse(&query.path)?;
    let owner = ownership(query.uid, query.gid, query.mode)?;
    let root = open(&state, &headers, id).await?;
    let parents = query.force.unwrap_or(false);
    let entry = run(move || Ok(root.make_dir(&path, owner, parents)?)).await?;
    Ok((StatusCode::CREATED, Json(stat_of(entry))).into_response())
}

pub async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<PathQuery>,
) -> Result<StatusCode, ApiError> {
    let path = parse(&query.path)?;
    let root = open(&state, &headers, id).await?;
    run(move || Ok(root.remove(&path)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn set_metadata(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<PathQuery>,
    payload: Result<Json<VolumeMetadata>, JsonRejection>,
) -> Result<Json<VolumeEntryStat>, ApiError> {
    let path = parse(&query.path)?;
    let change = body(payload)?;
    let owner = ownership(change.uid, change.gid, change.mode)?;
    let root = open(&state, &headers, id).await?;
    let entry = run(move || Ok(root.set_metadata(&path, owner)?)).await?;
    Ok(Json(stat_of(entry)))
}

pub async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<PathQuery>,
) -> Result<Response, ApiError> {
    let path = parse(&query.path)?;
    let root = open(&state, &headers, id).await?;
    let file = run(move || Ok(root.open_file(&path)?)).await?;
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

pub async fn write(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<MakeQuery>,
    content: Body,
) -> Result<Response, ApiError> {
    let path = parse(&query.path)?;
    let owner = ownership(query.uid, query.gid, query.mode)?;
    let root = std::sync::Arc::new(open(&state, &headers, id).await?);
    let parents = query.force.unwrap_or(false);
    let (at, target) = (root.clone(), path.clone());
    let file = run(move || Ok(at.create_file(&target, owner, parents)?)).await?;
    let mut file = tokio::fs::File::from_std(file);
    let mut chunks = content.into_data_stream();
    let mut failed: Option<ApiError> = None;
    while let Some(chunk) = chunks.next().await {
        let written = match chunk {
            Ok(bytes) => file.write_all(&bytes).await,
            Err(err) => {
                failed = Some(ApiError::bad_request(format!("the upload stopped: {err}")));
                break;
            }
        };
        if let Err(err) = written {
            failed = Some(VolumeFileError::of_write(&path, err).into());
            // The client is still sending: take (and drop) a bounded rest of it, so that it
            // reads the answer instead of a connection reset.
            let mut drained = 0usize;
            while drained < DRAIN_LIMIT
                && let Some(Ok(bytes)) = chunks.next().await
            {
                drained += bytes.len();
            }
            break;
        }
    }
    if failed.is_none()
        && let Err(err) = file.flush().await
    {
        failed = Some(VolumeFileError::of_write(&path, err).into());
    }
    drop(file);
    if let Some(err) = failed {
        // A part of a file is no use and holds the space that ran out.
        let (at, target) = (root.clone(), path.clone());
        let _ = run(move || Ok(at.remove(&target)?)).await;
        return Err(err);
    }
    let entry = run(move || Ok(root.stat(&path)?)).await?;
    Ok((StatusCode::CREATED, Json(stat_of(entry))).into_response())
}
