//! Descriptors handed on at fixed numbers. The setup stage hands a sandbox's PID 1 the
//! agent's listening socket (created by host root in a directory the sandbox never sees) and
//! the lease on the sandbox's uid range, so that PID 1 needs no host path for them; the
//! server hands a setup stage the sandbox's disk when the disk pool mounted it ahead.

use std::{
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{net::UnixListener, process::CommandExt},
    },
    process::Command,
};

/// The agent's listening Unix socket.
pub const AGENT_LISTENER: RawFd = 3;
/// The sandbox's uid-range lease ([`crate::uid_ranges::Lease`]); PID 1 only keeps it open.
pub const UID_LEASE: RawFd = 4;

/// A setup stage's disk, mounted already: a detached mount of its filesystem
/// ([`crate::disk::Device::mount_detached`]).
pub const SETUP_DISK: RawFd = 3;

/// Descriptors are first copied to numbers from here on, above every target, so that placing
/// one never overwrites another still to be placed.
pub(crate) const ABOVE_TARGETS: RawFd = 16;

/// Makes the child of `command` find `fds` at the given numbers (and nothing else of ours:
/// everything this process opens is close-on-exec).
pub fn pass(command: &mut Command, fds: Vec<(OwnedFd, RawFd)>) -> io::Result<()> {
    debug_assert!(fds.iter().all(|(_, target)| *target < ABOVE_TARGETS));
    let fds = fds
        .into_iter()
        .map(|(fd, target)| {
            let copy = rustix::io::fcntl_dupfd_cloexec(&fd, ABOVE_TARGETS)?;
            Ok((copy, target))
        })
        .collect::<io::Result<Vec<_>>>()?;
    // SAFETY: the closure only calls dup2, which is async-signal-safe, on descriptors the
    // `fds` vector keeps open until the child has exec'd; it allocates nothing. Every source
    // is above every target, so no dup2 overwrites a source still to be placed, and the copy
    // dup2 makes is not close-on-exec.
    unsafe {
        command.pre_exec(move || {
            for (fd, target) in &fds {
                if libc::dup2(fd.as_raw_fd(), *target) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

/// The rest of a stage's spec, written ahead into its stdin as much as the pipe takes
/// without waiting (all of a spec under 64 KiB): the stage reads it as soon as it runs,
/// instead of waiting until whoever started it is scheduled again to write it.
pub struct SpecPipe {
    pipe: OwnedFd,
    written: usize,
}

impl SpecPipe {
    /// The stage's stdin, holding what of `spec` fits, and the rest to write.
    pub fn new(spec: &[u8]) -> io::Result<(OwnedFd, Self)> {
        let (stdin, pipe) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        rustix::fs::fcntl_setfl(&pipe, rustix::fs::OFlags::NONBLOCK)?;
        let mut written = 0;
        while written < spec.len() {
            match rustix::io::write(&pipe, &spec[written..]) {
                Ok(n) => written += n,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(err) => return Err(err.into()),
            }
        }
        Ok((stdin, Self { pipe, written }))
    }

    /// Spawns `command`, whose stdin is this pipe's, and writes the rest of `spec` once it
    /// runs, the command (with its copy of the stdin) gone first ([`SpecPipe::finish`]). A
    /// stage that ended already cannot read the rest; what it reported says why.
    pub fn spawn(self, mut command: Command, spec: &[u8]) -> io::Result<std::process::Child> {
        let child = command.spawn()?;
        drop(command);
        let _ = self.finish(spec);
        Ok(child)
    }

    /// Writes the rest of `spec` (the one given to [`SpecPipe::new`]) and closes the pipe.
    /// Only once the stage runs, and with every other copy of its stdin closed: a stage that
    /// ended early must make this fail, not wait.
    pub fn finish(self, spec: &[u8]) -> io::Result<()> {
        if self.written < spec.len() {
            rustix::fs::fcntl_setfl(&self.pipe, rustix::fs::OFlags::empty())?;
            std::io::Write::write_all(&mut std::fs::File::from(self.pipe), &spec[self.written..])?;
        }
        Ok(())
    }
}

/// Takes the disk mounted ahead in a setup stage whose spec says it has one. Call it once,
/// before anything else could have opened a descriptor at [`SETUP_DISK`].
pub fn setup_disk() -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the flags of whatever descriptor has this number.
    if unsafe { libc::fcntl(SETUP_DISK, libc::F_GETFD) } == -1 {
        return Err(io::Error::other(format!(
            "no descriptor {SETUP_DISK}: the sandbox's mounted disk was not passed"
        )));
    }
    // SAFETY: the server placed the mount at this number for this stage alone, and this
    // function is called once, so nothing else owns or closes the descriptor.
    let owned = unsafe { OwnedFd::from_raw_fd(SETUP_DISK) };
    // Not PID 1's: its own descriptors are placed on purpose.
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    Ok(owned)
}

/// Takes the agent's listening socket in PID 1. Call it once, before anything else could
/// have opened a descriptor at [`AGENT_LISTENER`].
pub fn agent_listener() -> io::Result<UnixListener> {
    // SAFETY: F_GETFD only reads the flags of whatever descriptor has this number (any
    // number is a valid argument); -1 means none is open.
    if unsafe { libc::fcntl(AGENT_LISTENER, libc::F_GETFD) } == -1 {
        return Err(io::Error::other(format!(
            "no descriptor {AGENT_LISTENER}: the agent's listening socket was not passed"
        )));
    }
    // SAFETY: setup placed the listening socket at this number for this process alone, and
    // this function is called once, so nothing else owns or closes the descriptor.
    let owned = unsafe { OwnedFd::from_raw_fd(AGENT_LISTENER) };
    // What sits at the number must be a listening socket.
    if !rustix::net::sockopt::socket_acceptconn(&owned)? {
        return Err(io::Error::other(format!(
            "descriptor {AGENT_LISTENER} is not the agent's listening socket"
        )));
    }
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    let listener = UnixListener::from(owned);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_all(stdin: OwnedFd) -> Vec<u8> {
        let mut got = Vec::new();
        std::fs::File::from(stdin).read_to_end(&mut got).unwrap();
        got
    }

    #[test]
    fn a_small_spec_is_in_the_pipe_before_the_stage_runs() {
        let spec = b"{\"id\":\"a\"}\n".to_vec();
        let (stdin, rest) = SpecPipe::new(&spec).unwrap();
        // All of it is there already: the stage reads its line without anyone writing more.
        let mut line = vec![0u8; spec.len()];
        rustix::io::read(&stdin, &mut line).unwrap();
        assert_eq!(line, spec);
        rest.finish(&spec).unwrap();
    }

    #[test]
    fn a_spec_larger_than_the_pipe_arrives_whole_once_the_rest_is_written() {
        let spec: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let (stdin, rest) = SpecPipe::new(&spec).unwrap();
        assert!(rest.written > 0 && rest.written < spec.len());
        let reader = std::thread::spawn(move || read_all(stdin));
        rest.finish(&spec).unwrap();
        assert_eq!(reader.join().unwrap(), spec);
    }

    #[test]
    fn the_rest_for_a_stage_that_ended_fails_instead_of_waiting() {
        let spec = vec![b'x'; 1 << 20];
        let (stdin, rest) = SpecPipe::new(&spec).unwrap();
        drop(stdin);
        assert!(rest.finish(&spec).is_err());
    }
}
