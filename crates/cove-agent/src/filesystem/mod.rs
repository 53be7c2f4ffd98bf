//! `filesystem.Filesystem`: stat, list, create, move and remove files, and watch directories.
//!
//! Operations run as the agent (root in the sandbox); the calling user decides how relative
//! paths resolve and who owns what gets created.

pub mod entry;
pub mod watch;

use std::{
    fs, io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use axum::Router;
use cove_proto::{
    connect::{Code, RpcError},
    filesystem::{
        EntryInfo, ListDirRequest, ListDirResponse, MakeDirRequest, MakeDirResponse, MoveRequest,
        MoveResponse, RemoveRequest, RemoveResponse, StatRequest, StatResponse,
    },
};

use crate::{
    AgentState, paths,
    rpc::{self, Call},
    users::{Accounts, User},
};

pub fn routes() -> Router<AgentState> {
    Router::new()
        .route("/filesystem.Filesystem/Stat", rpc::unary(stat))
        .route("/filesystem.Filesystem/MakeDir", rpc::unary(make_dir))
        .route("/filesystem.Filesystem/Move", rpc::unary(move_entry))
        .route("/filesystem.Filesystem/ListDir", rpc::unary(list_dir))
        .route("/filesystem.Filesystem/Remove", rpc::unary(remove))
        .route(
            "/filesystem.Filesystem/WatchDir",
            rpc::server_stream(watch::watch_dir),
        )
        .route(
            "/filesystem.Filesystem/CreateWatcher",
            rpc::unary(watch::create_watcher),
        )
        .route(
            "/filesystem.Filesystem/GetWatcherEvents",
            rpc::unary(watch::get_watcher_events),
        )
        .route(
            "/filesystem.Filesystem/RemoveWatcher",
            rpc::unary(watch::remove_watcher),
        )
}

/// Resolves a client path for the caller (relative to their home, `~` expanded).
pub fn resolve(state: &AgentState, user: &User, path: &str) -> Result<PathBuf, RpcError> {
    let workdir = state.defaults().workdir();
    paths::resolve(path, user, workdir.as_deref())
        .map_err(|err| RpcError::invalid_argument(err.to_string()))
}

fn accounts(state: &AgentState) -> Result<Accounts, RpcError> {
    state
        .accounts()
        .load()
        .map_err(|err| RpcError::internal(err.to_string()))
}

/// Maps an I/O error on `path` to the Connect code a client can act on.
pub fn io_error(action: &str, path: &Path, err: &io::Error) -> RpcError {
    let code = match err.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Code::NotFound,
        io::ErrorKind::PermissionDenied => Code::PermissionDenied,
        io::ErrorKind::AlreadyExists => Code::AlreadyExists,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Code::ResourceExhausted,
        io::ErrorKind::InvalidInput
        | io::ErrorKind::IsADirectory
        | io::ErrorKind::DirectoryNotEmpty => Code::InvalidArgument,
        _ if err.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            Code::FailedPrecondition
        }
        _ => Code::Internal,
    };
    RpcError::new(code, format!("cannot {action} '{}': {err}", path.display()))
}

async fn stat(
    state: AgentState,
    call: Call,
    request: StatRequest,
) -> Result<StatResponse, RpcError> {
    let path = resolve(&state, &call.caller.user, &request.path)?;
    let accounts = accounts(&state)?;
    let entry =
        entry::entry_info(&path, &path, &accounts).map_err(|err| io_error("stat", &path, &err))?;
    Ok(StatResponse { entry: Some(entry) })
}

async fn make_dir(
    state: AgentState,
    call: Call,
    request: MakeDirRequest,
) -> Result<MakeDirResponse, RpcError> {
    let user = &call.caller.user;
    let path = resolve(&state, user, &request.path)?;
    match fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => {
            return Err(RpcError::new(
                Code::AlreadyExists,
                format!("directory already exists: {}", path.display()),
            ));
        }
        Ok(_) => {
            return Err(RpcError::invalid_argument(format!(
                "path already exists but it is not a directory: {}",
                path.display()
            )));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_error("stat", &path, &err)),
    }
    ensure_dirs(&path, user).map_err(|err| io_error("create directory", &path, &err))?;
    let accounts = accounts(&state)?;
    let entry =
        entry::entry_info(&path, &path, &accounts).map_err(|err| io_error("stat", &path, &err))?;
    Ok(MakeDirResponse { entry: Some(entry) })
}

async fn move_entry(
    state: AgentState,
    call: Call,
    request: MoveRequest,
) -> Result<MoveResponse, RpcError> {
    let user = &call.caller.user;
    let source = resolve(&state, user, &request.source)?;
    let destination = resolve(&state, user, &request.destination)?;
    fs::symlink_metadata(&source).map_err(|err| io_error("move", &source, &err))?;
    if let Some(parent) = destination.parent() {
        ensure_dirs(parent, user).map_err(|err| io_error("create directory", parent, &err))?;
    }
    fs::rename(&source, &destination).map_err(|err| {
        RpcError::new(
            io_error("move", &source, &err).code,
            format!(
                "cannot move '{}' to '{}': {err}",
                source.display(),
                destination.display()
            ),
        )
    })?;
    let accounts = accounts(&state)?;
    let entry = entry::entry_info(&destination, &destination, &accounts)
        .map_err(|err| io_error("stat", &destination, &err))?;
    Ok(MoveResponse { entry: Some(entry) })
}

async fn remove(
    state: AgentState,
    call: Call,
    request: RemoveRequest,
) -> Result<RemoveResponse, RpcError> {
    let path = resolve(&state, &call.caller.user, &request.path)?;
    if path == Path::new("/") {
        return Err(RpcError::invalid_argument("refusing to remove /"));
    }
    let result = match fs::symlink_metadata(&path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path),
        Ok(_) => fs::remove_file(&path),
    };
    match result {
        Ok(()) => Ok(RemoveResponse {}),
        // Vanished while we removed it: the goal is reached.
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(RemoveResponse {}),
        Err(err) => Err(io_error("remove", &path, &err)),
    }
}

async fn list_dir(
    state: AgentState,
    call: Call,
    request: ListDirRequest,
) -> Result<ListDirResponse, RpcError> {
    let requested = resolve(&state, &call.caller.user, &request.path)?;
    let depth = request.depth.max(1);
    // The requested path may itself be a symlink to a directory.
    let real = fs::canonicalize(&requested).map_err(|err| io_error("list", &requested, &err))?;
    if !real.is_dir() {
        return Err(RpcError::invalid_argument(format!(
            "path is not a directory: {}",
            requested.display()
        )));
    }
    let accounts = accounts(&state)?;
    let mut entries = Vec::new();
    walk(&real, &requested, depth, &accounts, &mut entries)?;
    Ok(ListDirResponse { entries })
}

/// Depth-first, children sorted by name; symlinked directories are listed, not entered.
fn walk(
    real: &Path,
    shown: &Path,
    depth: u32,
    accounts: &Accounts,
    out: &mut Vec<EntryInfo>,
) -> Result<(), RpcError> {
    let mut names: Vec<_> = fs::read_dir(real)
        .map_err(|err| io_error("list", shown, &err))?
        .filter_map(|entry| entry.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        let child_real = real.join(&name);
        let child_shown = shown.join(&name);
        let info = match entry::entry_info(&child_real, &child_shown, accounts) {
            Ok(info) => info,
            // Removed while we were listing.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_error("stat", &child_shown, &err)),
        };
        let descend = depth > 1
            && !info.is_symlink
            && info.r#type == cove_proto::filesystem::FileType::Directory as i32;
        out.push(info);
        if descend {
            walk(&child_real, &child_shown, depth - 1, accounts, out)?;
        }
    }
    Ok(())
}

/// `mkdir -p` where every directory created is owned by `user`.
pub fn ensure_dirs(path: &Path, user: &User) -> io::Result<()> {
    let mut current = PathBuf::from("/");
    for component in path.components().skip(1) {
        current.push(component);
        match fs::metadata(&current) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is a file, not a directory", current.display()),
                ));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                match fs::DirBuilder::new().mode(0o755).create(&current) {
                    Ok(()) => chown(&current, user)?,
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(err) => return Err(err),
                }
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Gives `path` to `user` (a no-op when the agent runs unprivileged as that user).
pub fn chown(path: &Path, user: &User) -> io::Result<()> {
    unless_unprivileged_as(
        user,
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)),
    )
}

/// Gives an open file to `user`, like [`chown`].
pub fn fchown(file: &impl std::os::fd::AsFd, user: &User) -> io::Result<()> {
    unless_unprivileged_as(
        user,
        std::os::unix::fs::fchown(file, Some(user.uid), Some(user.gid)),
    )
}

/// A refused change of owner is fine when the agent runs as `user` itself.
fn unless_unprivileged_as(user: &User, result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(err)
            if err.kind() == io::ErrorKind::PermissionDenied
                && rustix::process::geteuid().as_raw() == user.uid =>
        {
            Ok(())
        }
        other => other,
    }
}
