//! The host's side of the link to a gVisor sandbox's agent. The agent listens on a Unix
//! socket in a host directory bind-mounted into the sandbox (`--host-uds=create` makes the
//! socket a real one on the host). Root inside the sandbox can write that directory, so the
//! host never trusts what it finds there: it connects through
//! [`AgentEndpoint::UnixInSandbox`] (no symlink followed, a socket or nothing), and reads
//! and removes files there without following links.
//!
//! Before a checkpoint the agent is told to let go of the socket and every connection through
//! it (`runsc kill <id> USR1`, see `cove_agent::quiesce`) and acknowledges with a marker
//! file; the host then removes the socket file (gVisor does not let the sandbox unlink a
//! socket bound on the host). After a restore, `USR2` makes it listen again; a sandbox
//! restored from another's image (a fork, a create from a memory snapshot) is first given its
//! own access token and environment in a renewal file ([`Channel::renew`]).

use std::os::unix::fs::OpenOptionsExt;
use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rustix::fs::{FileType, Mode, OFlags};

use super::runsc::{Runsc, RunscError, Status};
use crate::AgentEndpoint;

/// The socket's name in the agent's directory.
pub const SOCKET: &str = "agent.sock";
/// The acknowledgement's name in the agent's directory.
pub const MARKER: &str = "quiesced";
/// The renewal file's name in the agent's directory.
pub const RENEWAL: &str = "renewal.json";
/// How long the agent may take to listen or to quiesce (a loaded host, a first start).
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the agent of container {id} did not {what} within {patience:?} (see the sandbox log)")]
    Timeout {
        id: String,
        what: &'static str,
        patience: Duration,
    },
    #[error("container {id} stopped before its agent could {what} (see the sandbox log)")]
    Stopped { id: String, what: &'static str },
    /// The agent would not let go: what it said.
    #[error("the sandbox cannot be checkpointed now: {0}")]
    NotNow(String),
    #[error("the agent's socket is not to be trusted")]
    Refused(#[source] io::Error),
    #[error(transparent)]
    Runsc(#[from] RunscError),
    #[error("cannot {what} in the agent's directory")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The agent's directory on the host.
#[derive(Clone, Debug)]
pub struct Channel {
    dir: PathBuf,
}

impl Channel {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET)
    }

    /// Where the server connects.
    pub fn endpoint(&self) -> AgentEndpoint {
        AgentEndpoint::UnixInSandbox(self.socket())
    }

    /// Waits until the agent of container `id` accepts connections. A socket path that
    /// holds anything but a socket ends the wait at once.
    pub fn wait_listening(&self, runsc: &Runsc, id: &str) -> Result<(), ChannelError> {
        let endpoint = self.endpoint();
        self.wait(runsc, id, "listen", || match endpoint.resolve() {
            Ok(target) => Ok(std::os::unix::net::UnixStream::connect(target.path()).is_ok()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(ChannelError::Refused(err)),
        })
    }

    /// Tells the agent of container `id` to let go of its socket and connections, waits for
    /// its acknowledgement, and removes the socket file (a checkpoint comes next).
    pub fn quiesce(&self, runsc: &Runsc, id: &str) -> Result<(), ChannelError> {
        self.remove(MARKER)?;
        runsc.kill(id, "USR1", false)?;
        self.wait(runsc, id, "quiesce", || Ok(self.acknowledged()))?;
        // The agent refused (it serves on): what it says is the sandbox's to say, so only a
        // short line of plain text of it is passed on.
        if let Some(reason) = self.refusal() {
            self.remove(MARKER)?;
            return Err(ChannelError::NotNow(reason));
        }
        self.remove(SOCKET)?;
        self.remove(MARKER)
    }

    /// The refusal the marker holds, if it holds one.
    fn refusal(&self) -> Option<String> {
        use std::io::Read;
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(self.dir.join(MARKER))
            .ok()?;
        let mut text = String::new();
        file.take(512).read_to_string(&mut text).ok()?;
        let reason = text.strip_prefix(cove_agent_refused_prefix())?;
        Some(
            reason
                .trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(300)
                .collect(),
        )
    }

    /// Tells a quiesced agent of container `id` to listen again and waits until it does.
    pub fn listen_again(&self, runsc: &Runsc, id: &str) -> Result<(), ChannelError> {
        // Whatever is left at the socket's path would keep the agent from binding it.
        self.remove(SOCKET)?;
        runsc.kill(id, "USR2", false)?;
        self.wait_listening(runsc, id)
    }

    /// Removes what an earlier container of the sandbox left (its socket file, which the
    /// new agent could not bind over, its marker, a renewal never taken).
    pub fn clear(&self) -> Result<(), ChannelError> {
        self.remove(SOCKET)?;
        self.remove(MARKER)?;
        self.remove(RENEWAL)
    }

    /// Leaves `agent`'s access token and environment for an agent restored from another
    /// sandbox's image, which takes them when told to listen again ([`Channel::listen_again`]),
    /// before anyone can connect. Written before the restore, into a directory nothing runs
    /// beside yet; never through a link.
    pub fn renew(&self, agent: &crate::AgentSettings) -> Result<(), ChannelError> {
        use std::io::Write;
        self.remove(RENEWAL)?;
        let body = serde_json::json!({
            "accessToken": agent.access_token,
            "envVars": agent.env,
        });
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.dir.join(RENEWAL))
            .and_then(|mut file| file.write_all(body.to_string().as_bytes()))
            .map_err(|source| ChannelError::Io {
                what: "write the agent's renewal",
                source,
            })
    }

    /// Whether the marker is there: a regular file, not a link to one.
    fn acknowledged(&self) -> bool {
        rustix::fs::open(
            self.dir.join(MARKER),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .and_then(|fd| rustix::fs::fstat(&fd))
        // Empty: still being written (the agent renames a whole marker into place; older
        // agents wrote it in place).
        .is_ok_and(|stat| {
            FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile && stat.st_size > 0
        })
    }

    /// Removes `name` from the agent's directory, whatever the sandbox made of it (unlink
    /// never follows a link; a directory goes with what is inside, links not followed).
    fn remove(&self, name: &str) -> Result<(), ChannelError> {
        let path = self.dir.join(name);
        let removed = match fs::symlink_metadata(&path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err),
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
        };
        match removed {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(ChannelError::Io {
                what: "remove a file",
                source: err,
            }),
            _ => Ok(()),
        }
    }

    /// Polls `done` until it says yes, the container stops, or [`PATIENCE`] runs out.
    fn wait(
        &self,
        runsc: &Runsc,
        id: &str,
        what: &'static str,
        mut done: impl FnMut() -> Result<bool, ChannelError>,
    ) -> Result<(), ChannelError> {
        let deadline = Instant::now() + PATIENCE;
        let mut pause = Duration::from_millis(2);
        let mut polls = 0u32;
        loop {
            if done()? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ChannelError::Timeout {
                    id: id.to_owned(),
                    what,
                    patience: PATIENCE,
                });
            }
            polls += 1;
            // Asking runsc costs a process: only now and then.
            if polls.is_multiple_of(16) && !matches!(runsc.state(id)?, Some(Status::Running)) {
                return Err(ChannelError::Stopped {
                    id: id.to_owned(),
                    what,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(25));
        }
    }
}

/// How the agent's refusal to quiesce begins (`cove_agent::quiesce::REFUSED_PREFIX`; the
/// runtime does not depend on the agent's crate).
fn cove_agent_refused_prefix() -> &'static str {
    "refused: "
}

/// The agent's directory is only host root's on the host side (the sandbox's gofer, host
/// root, works in it for the sandbox).
pub fn make_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .or_else(|err| {
            if err.kind() == io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(err)
            }
        })?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_counts_once_written_whole_and_a_refusal_is_read_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let channel = Channel::new(dir.path().to_owned());
        let marker = dir.path().join(MARKER);
        assert!(!channel.acknowledged());
        // Created but not yet written: no answer yet (an empty marker once passed for
        // "quiesced" while the agent was refusing).
        fs::write(&marker, "").unwrap();
        assert!(!channel.acknowledged());
        fs::write(&marker, "refused: processes listen on TCP port(s) 8123\n").unwrap();
        assert!(channel.acknowledged());
        assert_eq!(
            channel.refusal().as_deref(),
            Some("processes listen on TCP port(s) 8123")
        );
        fs::write(&marker, "quiesced\n").unwrap();
        assert!(channel.acknowledged());
        assert_eq!(channel.refusal(), None);
        // A link to a file is no marker.
        fs::remove_file(&marker).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, "quiesced\n").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &marker).unwrap();
        assert!(!channel.acknowledged());
    }
}
