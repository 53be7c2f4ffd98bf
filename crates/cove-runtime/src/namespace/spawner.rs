//! The spawner of stages: one `cove __sandbox-init --spawner`, exec'd once per runtime,
//! forks each sandbox's setup stage (and its network stage) instead of the server exec'ing
//! `cove` for it. An exec of the 176 MB binary (its relocations, its CPU probes) cost 2.4 ms
//! of every create past the warm pool, and a tenth of a burst's CPU.
//!
//! The spawner is single-threaded and holds nothing of any sandbox: a request is the stage's
//! arguments (those of `cove __sandbox-init`) and three or four descriptors (its stdin,
//! stdout and stderr, and a setup stage's disk when it is mounted already, at
//! [`inherited::SETUP_DISK`]), and a setup stage reads its spec on its stdin after the fork,
//! as an exec'd one does. The stage is forked with `CLONE_PARENT`, so that it is the
//! server's own child, as an exec'd stage is: its pid stays the server's to wait for until
//! the server has reaped it. The spawner ends when the server's end of its socket closes
//! (the server ended, or dropped it).

use std::{
    ffi::{OsStr, OsString},
    fs,
    io::{self, Read, Write},
    mem::MaybeUninit,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::{
            ffi::{OsStrExt, OsStringExt},
            process::ExitStatusExt,
        },
    },
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::Mutex,
};

use crate::inherited;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// The longest request (its arguments): a message of a packet socket comes whole or not at
/// all.
const MAX_REQUEST: usize = 64 << 10;

/// The flag of `cove __sandbox-init` that makes it the spawner.
pub const FLAG: &str = "--spawner";

/// The server's side: a running spawner.
#[derive(Debug)]
pub struct Spawner {
    /// A packet socket: a request and its answer are one message each, one exchange at a
    /// time.
    socket: Mutex<OwnedFd>,
    child: Mutex<Child>,
}

impl Spawner {
    /// Starts `exe` as the spawner, with exactly the environment `env` (what each stage
    /// would have been given).
    pub fn start(exe: &Path, env: &[(OsString, OsString)]) -> io::Result<Self> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        let child = Command::new(exe)
            .args([super::init::SUBCOMMAND, FLAG])
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .spawn()?;
        Ok(Self {
            socket: Mutex::new(ours),
            child: Mutex::new(child),
        })
    }

    /// Forks a stage with the arguments `args` (after `cove __sandbox-init`; none for the
    /// setup stage), `stdio` as its stdin, stdout and stderr and `disk` at
    /// [`inherited::SETUP_DISK`]; returns its pid, a child of this process.
    pub fn spawn(
        &self,
        args: &[&OsStr],
        stdio: [BorrowedFd<'_>; 3],
        disk: Option<BorrowedFd<'_>>,
    ) -> io::Result<u32> {
        let request = encode(args);
        if request.len() > MAX_REQUEST {
            return Err(io::Error::from_raw_os_error(libc::E2BIG));
        }
        let fds: Vec<BorrowedFd<'_>> = stdio.into_iter().chain(disk).collect();
        let socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("the descriptors do not fit the message"));
        }
        rustix::net::sendmsg(
            &*socket,
            &[io::IoSlice::new(&request)],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        let mut answer = [0u8; 4];
        if rustix::io::read(&*socket, &mut answer)? != answer.len() {
            return Err(io::Error::other("the spawner ended"));
        }
        match i32::from_le_bytes(answer) {
            pid if pid > 0 => Ok(pid.unsigned_abs()),
            errno => Err(io::Error::from_raw_os_error(-errno)),
        }
    }

    /// Runs a stage with the arguments `args`, no input and no output but its stderr, to its
    /// end: how it ended, and what it wrote on stderr. `None` when it could not be started
    /// (then nothing of it runs, and it may be exec'd instead).
    pub fn output(&self, args: &[&OsStr]) -> io::Result<Option<(ExitStatus, Vec<u8>)>> {
        let null = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        let (from_stderr, stderr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let pid = match self.spawn(args, [null.as_fd(), null.as_fd(), stderr.as_fd()], None) {
            Ok(pid) => pid,
            Err(err) => {
                tracing::warn!(%err, "the stage spawner failed: the stage is exec'd");
                return Ok(None);
            }
        };
        // Our copy of its end closes, so that reading ends with the stage.
        drop(stderr);
        let mut errors = Vec::new();
        let read = fs::File::from(from_stderr).read_to_end(&mut errors);
        let status = wait(pid)?;
        read?;
        Ok(Some((status, errors)))
    }
}

/// A request: a marker byte, then each argument followed by a NUL (arguments are C strings).
fn encode(args: &[&OsStr]) -> Vec<u8> {
    let mut request = vec![b'!'];
    for arg in args {
        request.extend_from_slice(arg.as_bytes());
        request.push(0);
    }
    request
}

/// The arguments of a request, or none when it is not one.
fn decode(request: &[u8]) -> Option<Vec<OsString>> {
    let (b'!', rest) = request.split_first()? else {
        return None;
    };
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let rest = rest.strip_suffix(&[0])?;
    Some(
        rest.split(|b| *b == 0)
            .map(|arg| OsString::from_vec(arg.to_vec()))
            .collect(),
    )
}

/// Waits for `pid`, a child of this process, to end.
fn wait(pid: u32) -> io::Result<ExitStatus> {
    let pid = rustix::process::Pid::from_raw(
        i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
    )
    .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())? {
        Some((_, status)) => Ok(ExitStatus::from_raw(status.as_raw())),
        None => Err(io::Error::other("the stage was not waited for")),
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        // Closing our end ends it; the kill is for one that is stuck.
        let _ = self
            .socket
            .get_mut()
            .map(|s| rustix::net::shutdown(&*s, rustix::net::Shutdown::Both));
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A setup stage started for a sandbox: forked by the spawner, or exec'd without one.
#[derive(Debug)]
pub(super) struct Setup {
    pub pid: u32,
    /// Its report.
    pub stdout: Option<fs::File>,
    /// The exec'd stage.
    exec: Option<Child>,
}

impl Setup {
    /// Starts a setup stage on `spec` (its stdin) whose stderr is `log`, with the sandbox's
    /// `disk` mounted already at [`inherited::SETUP_DISK`] when there is one: through
    /// `spawner` when there is one (and it answers), else by exec'ing `exe` with the
    /// environment `env`. The spec is in the stage's stdin before it starts
    /// ([`inherited::SpecPipe`]).
    pub fn start(
        exe: &Path,
        spawner: Option<&Spawner>,
        env: &[(OsString, OsString)],
        log: fs::File,
        disk: Option<BorrowedFd<'_>>,
        spec: &[u8],
    ) -> io::Result<Self> {
        let (stdin, rest) = inherited::SpecPipe::new(spec)?;
        if let Some(spawner) = spawner {
            let (from_stdout, stdout) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            match spawner.spawn(&[], [stdin.as_fd(), stdout.as_fd(), log.as_fd()], disk) {
                // Our copies of its ends close here, so that its stdout ends with it and
                // the rest of the spec cannot wait for a reader that is gone.
                Ok(pid) => {
                    drop(stdin);
                    // A stage that ended already (another server holds the uid range)
                    // cannot read the rest; its report says why.
                    let _ = rest.finish(spec);
                    return Ok(Self {
                        pid,
                        stdout: Some(fs::File::from(from_stdout)),
                        exec: None,
                    });
                }
                Err(err) => {
                    tracing::warn!(%err, "the setup spawner failed: the stage is exec'd");
                }
            }
        }
        let mut command = Command::new(exe);
        command
            .arg(super::init::SUBCOMMAND)
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::piped())
            .stderr(log)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)));
        if let Some(disk) = disk {
            inherited::pass(
                &mut command,
                vec![(disk.try_clone_to_owned()?, inherited::SETUP_DISK)],
            )?;
        }
        let mut child = rest.spawn(command, spec)?;
        Ok(Self {
            pid: child.id(),
            stdout: child
                .stdout
                .take()
                .map(|s| fs::File::from(OwnedFd::from(s))),
            exec: Some(child),
        })
    }

    /// Waits for the stage to end (it is this process's child either way).
    pub fn wait(self) -> io::Result<ExitStatus> {
        match self.exec {
            Some(mut child) => child.wait(),
            None => wait(self.pid),
        }
    }
}

/// The spawner's side: answers requests on stdin until it closes. `stage` runs in each
/// forked process with the request's arguments, its stdio in place, and returns its exit
/// code.
pub fn serve(stage: impl Fn(Vec<OsString>) -> i32) -> io::Result<()> {
    let socket = rustix::io::dup(rustix::stdio::stdin())?;
    // The server's socket is reached through `socket` only.
    let null = fs::File::open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    let mut request = vec![0u8; MAX_REQUEST];
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            &socket,
            &mut [io::IoSliceMut::new(&mut request)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        if received.bytes == 0 {
            return Ok(());
        }
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = message {
                fds.extend(rights);
            }
        }
        let args = if received.flags.contains(ReturnFlags::TRUNC) {
            None
        } else {
            decode(&request[..received.bytes])
        };
        let answer = match args {
            // Stdin, stdout, stderr, and perhaps a setup stage's disk.
            Some(args) if matches!(fds.len(), 3 | 4) => {
                match fork_stage(&socket, &fds, &|| stage(args.clone())) {
                    Ok(pid) => pid,
                    Err(err) => -err.raw_os_error().unwrap_or(libc::EIO),
                }
            }
            _ => -libc::EINVAL,
        };
        rustix::io::write(&socket, &answer.to_le_bytes())?;
    }
}

/// Forks a stage as a sibling of this process (a child of the server), with `fds` as its
/// descriptors 0, 1, 2 (and 3).
fn fork_stage(socket: &OwnedFd, fds: &[OwnedFd], stage: &impl Fn() -> i32) -> io::Result<i32> {
    // SAFETY: a plain fork (no new stack, no shared memory) with CLONE_PARENT; this process
    // is single-threaded, so the child's copy of it is whole. The child only rearranges its
    // descriptors and runs `stage`, then exits without returning here.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let code = match become_stage(socket, fds) {
                // A panic must not unwind into the spawner's loop in this copy of it.
                Ok(()) => {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(stage)).unwrap_or(101)
                }
                Err(err) => {
                    let _ = writeln!(io::stderr(), "cove: cannot start the stage: {err}");
                    1
                }
            };
            std::process::exit(code)
        }
        pid => Ok(i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EIO))?),
    }
}

/// In the forked stage: `fds` as descriptors 0, 1, 2 (and 3: [`inherited::SETUP_DISK`]),
/// and the spawner's socket closed.
fn become_stage(socket: &OwnedFd, fds: &[OwnedFd]) -> io::Result<()> {
    debug_assert_eq!(inherited::SETUP_DISK, 3);
    // SAFETY: the socket's descriptor is closed here and never used again in this process
    // (the borrow ends with this call: the stage never returns to the spawner's loop).
    unsafe { libc::close(socket.as_raw_fd()) };
    // Copied above every target first, so that placing one never overwrites another still
    // to be placed (a received descriptor may well be number 3).
    let copies = fds
        .iter()
        .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, inherited::ABOVE_TARGETS))
        .collect::<Result<Vec<_>, _>>()?;
    for fd in fds {
        // SAFETY: only the copies are used from here on; the originals' owners live in the
        // spawner's loop, which this copy of the process never returns to.
        unsafe { libc::close(fd.as_raw_fd()) };
    }
    for (target, copy) in copies.iter().enumerate() {
        let target =
            i32::try_from(target).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: dup2 onto a number below every copy; what sat there (nothing, or a
        // received original closed above) is replaced. The new descriptor is not
        // close-on-exec, as a stage's stdio and disk are handed on that way.
        if unsafe { libc::dup2(copy.as_raw_fd(), target) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_any_arguments_but_nothing_else() {
        let args = [
            OsStr::new("--network"),
            OsStr::new("/usr/bin/slirp4netns"),
            OsStr::new(""),
            OsStr::from_bytes(b"\xffnot utf-8"),
        ];
        let decoded = decode(&encode(&args)).unwrap();
        assert_eq!(decoded, args.map(OsString::from));
        assert_eq!(decode(&encode(&[])).unwrap(), Vec::<OsString>::new());
        // Not a request: no marker, or arguments without their end.
        assert!(decode(b"").is_none());
        assert!(decode(b"--network\0").is_none());
        assert!(decode(b"!--network").is_none());
    }
}
