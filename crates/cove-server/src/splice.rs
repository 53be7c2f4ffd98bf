//! Pipes that move bytes between two sockets with `splice`, never through the server's
//! memory: large uploads into a sandbox's agent (`proxy::file_upload`) and large downloads
//! out of it (`front::raw_send`).

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
};

use rustix::pipe::{PipeFlags, SpliceFlags};

/// A pipe's size: as much as one round moves, and about what one transfer holds of the
/// server's memory.
const PIPE_BYTES: usize = 1 << 20;

/// A non-blocking pipe of [`PIPE_BYTES`] (or the system's size, where that is refused).
#[derive(Debug)]
pub struct Pipe {
    /// The read end.
    pub from: OwnedFd,
    /// The write end.
    pub to: OwnedFd,
    /// Its size in bytes.
    pub room: usize,
}

impl Pipe {
    /// Fails when the server is out of descriptors.
    pub fn new() -> io::Result<Self> {
        let (from, to) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let room = rustix::pipe::fcntl_setpipe_size(&to, PIPE_BYTES)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&to))?;
        Ok(Self { from, to, room })
    }
}

/// Moves up to `bytes` from `from` to `to` (one of them a pipe) without blocking.
pub fn splice(from: impl AsFd, to: impl AsFd, bytes: usize) -> io::Result<usize> {
    rustix::pipe::splice(
        from,
        None,
        to,
        None,
        bytes,
        SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
    )
    .map_err(io::Error::from)
}
