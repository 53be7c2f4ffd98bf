//! Connecting to an [`AgentEndpoint`]. A socket in a directory the sandbox can write is
//! pinned first: opened with `O_PATH | O_NOFOLLOW` (a symlink the sandbox put there is
//! opened as the link itself, not followed to some other socket of the host), checked to be
//! a socket, and connected to through `/proc/self/fd/N`, which names that very inode and
//! nothing the sandbox can swap in between the check and the connect.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use rustix::fs::{FileType, Mode, OFlags};

use crate::AgentEndpoint;

/// A path to `connect(2)` to, valid while this value lives.
#[derive(Debug)]
pub struct ConnectPath {
    path: PathBuf,
    /// The pinned socket `path` names, when it was pinned.
    _pinned: Option<OwnedFd>,
}

impl ConnectPath {
    /// Where to connect.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AgentEndpoint {
    /// Whether the kernel's own socket code reads what the host sends the agent. A
    /// gVisor sandbox's socket ([`AgentEndpoint::UnixInSandbox`]) is read by runsc's sentry
    /// for the agent. With the runsc Debian 12 ships (20221219) the sentry stopped reading
    /// it for good, the agent's reads waiting on, when the host's send buffer was widened
    /// (3 MB uploads written straight to the socket: with the default buffer and twice it
    /// every one went through, with 2 and 4 MiB none), and at the first pages spliced into
    /// it. So such a socket gets plain writes and the default send buffer.
    pub fn reads_deep_queues(&self) -> bool {
        matches!(self, AgentEndpoint::Unix(_))
    }

    /// What to connect to for one connection to the agent; keep it until connected.
    pub fn resolve(&self) -> io::Result<ConnectPath> {
        match self {
            AgentEndpoint::Unix(path) => Ok(ConnectPath {
                path: path.clone(),
                _pinned: None,
            }),
            AgentEndpoint::UnixInSandbox(path) => {
                let fd = pin_socket(path)?;
                Ok(ConnectPath {
                    path: PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
                    _pinned: Some(fd),
                })
            }
        }
    }
}

/// Opens the socket at `path` itself: not a symlink's target, nothing but a socket.
pub fn pin_socket(path: &Path) -> io::Result<OwnedFd> {
    let fd = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|err| {
        io::Error::new(
            io::Error::from(err).kind(),
            format!("cannot open the agent's socket {}: {err}", path.display()),
        )
    })?;
    let kind = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
    if kind != FileType::Socket {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a socket but a {}; refusing to connect to it",
                path.display(),
                describe(kind)
            ),
        ));
    }
    Ok(fd)
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::Symlink => "symlink",
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Fifo => "fifo",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "file of another kind",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_pinned_and_a_symlink_to_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&real).unwrap();
        let endpoint = AgentEndpoint::UnixInSandbox(real.clone());
        let target = endpoint.resolve().unwrap();
        std::os::unix::net::UnixStream::connect(target.path()).unwrap();

        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = AgentEndpoint::UnixInSandbox(link).resolve().unwrap_err();
        assert!(
            err.to_string().contains("not a socket but a symlink"),
            "{err}"
        );

        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(AgentEndpoint::UnixInSandbox(file).resolve().is_err());
    }
}
