//! Starts a process as another user without copying the caller (the agent):
//! `clone(CLONE_VM | CLONE_VFORK)`.
//!
//! A `fork` copies the agent's page tables, makes every page copy-on-write (the agent then
//! faults on its own memory), and `exec` tears the copy down again: about a fifth of the
//! CPU of a `true` round trip (docs/BENCHMARKS.md). `posix_spawn` avoids that, but cannot
//! change the user. So the child here shares the agent's memory and runs on a stack of its
//! own until it calls `execve`, while the thread that started it waits.
//!
//! Sharing memory with a multi-threaded process limits what the child may do. It only reads
//! what was prepared before the clone. It changes its user with raw system calls: glibc's
//! `setuid` would signal the agent's other threads, which it believes are its own. It
//! starts with every signal blocked and puts every handled signal back to its default
//! before it unblocks them, so no handler of the agent's ever runs in it. Whatever fails
//! before `execve` is reported through memory both sides see.

use std::{
    ffi::{CString, c_int, c_void},
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    ptr,
    sync::atomic::{AtomicI32, Ordering},
};

use rustix::pipe::{PipeFlags, pipe_with};

/// The child's stack, until `execve`: it calls a few system calls and nothing else.
const STACK: usize = 64 << 10;

/// What to start, and as whom.
#[derive(Debug)]
pub struct Launch {
    /// The program as given: a path when it has a `/`, else looked up in `path`.
    pub program: String,
    /// `PATH` of the new process (where a bare program name is looked for).
    pub path: String,
    /// Its arguments, `argv[0]` (the program as given) excluded.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    pub cwd: std::path::PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// A pipe to its stdin, or `/dev/null`.
    pub stdin: bool,
}

/// A process started with pipes for its standard streams, in a process group of its own.
#[derive(Debug)]
pub struct Child {
    pub pid: u32,
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What the child reads: pointers into buffers the parent keeps alive until the clone
/// returns.
struct Plan {
    /// Where to look for the program, in order (`execvp`'s way).
    candidates: Vec<*const libc::c_char>,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    uid: u32,
    gid: u32,
    /// Whether to drop supplementary groups (only root may, and has to).
    drop_groups: bool,
    stdio: [RawFd; 3],
    /// The `errno` of what failed before `execve`, 0 when nothing did.
    error: AtomicI32,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} holds a NUL byte"),
    )
}

fn c_string(value: &str, what: &str) -> io::Result<CString> {
    CString::new(value).map_err(|_| invalid(what))
}

/// Where to look for `program`: itself when it names a path, else each directory of
/// `path` in turn (an empty entry is the working directory, as for `execvp`).
fn candidates(program: &str, path: &str) -> io::Result<Vec<CString>> {
    if program.contains('/') {
        return Ok(vec![c_string(program, "the program")?]);
    }
    if program.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the program's name is empty",
        ));
    }
    path.split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            c_string(&format!("{}/{program}", dir.trim_end_matches('/')), "PATH")
        })
        .collect()
}

/// Starts `launch` (see the module).
pub fn spawn(launch: &Launch) -> io::Result<Child> {
    let candidates = candidates(&launch.program, &launch.path)?;
    let argv: Vec<CString> = std::iter::once(launch.program.as_str())
        .chain(launch.args.iter().map(String::as_str))
        .map(|arg| c_string(arg, "an argument"))
        .collect::<io::Result<_>>()?;
    let envp: Vec<CString> = launch
        .env
        .iter()
        .map(|(key, value)| {
            if key.contains('=') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the variable name {key:?} holds '='"),
                ));
            }
            c_string(&format!("{key}={value}"), "the environment")
        })
        .collect::<io::Result<_>>()?;
    let cwd = CString::new(launch.cwd.as_os_str().as_encoded_bytes())
        .map_err(|_| invalid("the working directory"))?;

    let (stdin_read, stdin_write) = if launch.stdin {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC)?;
        (read, Some(write))
    } else {
        let null = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        (null, None)
    };
    let (stdout_read, stdout_write) = pipe_with(PipeFlags::CLOEXEC)?;
    let (stderr_read, stderr_write) = pipe_with(PipeFlags::CLOEXEC)?;
    // Were the caller's own 0–2 closed, a pipe could be made at one of those numbers: then
    // it would be placed on itself (keeping its close-on-exec flag), or, with another
    // thread closing descriptors meanwhile, another pipe could be placed over it first. The
    // child gets copies from 3 up, so no source is a target.
    let (stdin_read, stdout_write, stderr_write) = (
        above_stdio(stdin_read)?,
        above_stdio(stdout_write)?,
        above_stdio(stderr_write)?,
    );

    let pointers = |strings: &[CString]| -> Vec<*const libc::c_char> {
        strings
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(ptr::null()))
            .collect()
    };
    let (argv_ptrs, envp_ptrs) = (pointers(&argv), pointers(&envp));
    let plan = Plan {
        candidates: candidates.iter().map(|c| c.as_ptr()).collect(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        cwd: cwd.as_ptr(),
        uid: launch.uid,
        gid: launch.gid,
        drop_groups: rustix::process::getuid().is_root(),
        stdio: [
            stdin_read.as_raw_fd(),
            stdout_write.as_raw_fd(),
            stderr_write.as_raw_fd(),
        ],
        error: AtomicI32::new(0),
    };
    let mut stack = vec![0u8; STACK];
    // The stack grows down from its end, 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + STACK) & !15;

    // SAFETY: every signal is blocked in this thread, and so in the child, which inherits
    // the mask, until the clone returns; `child` only touches `plan` (alive until then:
    // CLONE_VFORK holds this thread until the child execs or exits) and its own stack.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut before: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut before);
        let pid = libc::clone(
            child,
            top as *mut c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &plan as *const Plan as *mut c_void,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &before, ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    drop(stack);
    let error = plan.error.load(Ordering::SeqCst);
    if error != 0 {
        // It exited without running anything; nobody else waits for it (the reaper is
        // held off while a process starts).
        let _ = rustix::process::waitpid(
            rustix::process::Pid::from_raw(pid),
            rustix::process::WaitOptions::empty(),
        );
        return Err(io::Error::from_raw_os_error(error));
    }
    drop((stdin_read, stdout_write, stderr_write));
    Ok(Child {
        pid: u32::try_from(pid).unwrap_or_default(),
        stdin: stdin_write,
        stdout: stdout_read,
        stderr: stderr_read,
    })
}

/// `fd`, or a copy of it at 3 or above when it is one of the standard streams' numbers.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?)
}

/// The child until `execve`. Only async-signal-safe calls, and no glibc call that acts on
/// other threads (see the module).
extern "C" fn child(plan: *mut c_void) -> c_int {
    // SAFETY: `plan` points to the parent's `Plan`, alive while this runs (CLONE_VFORK).
    let plan = unsafe { &*(plan as *const Plan) };
    let fail = || -> c_int {
        // SAFETY: reading errno and leaving are what is left to do.
        unsafe {
            plan.error
                .store((*libc::__errno_location()).max(1), Ordering::SeqCst);
            libc::_exit(127)
        }
    };
    // SAFETY: system calls on this process alone, with prepared arguments.
    unsafe {
        // Default dispositions for every signal the agent handles, and for SIGPIPE (which
        // Rust programs ignore); ignored ones stay ignored, as across any exec. glibc keeps
        // its two internal signals (cancellation, set-id broadcast) to itself; it sends them
        // only to the agent's own threads by id, never to this new process.
        for signal in 1..=libc::SIGRTMAX() {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || signal == libc::SIGPIPE)
            {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::sigprocmask(libc::SIG_SETMASK, &none, ptr::null_mut()) != 0 {
            return fail();
        }
        // Every source is 3 or above (`above_stdio`), so none is overwritten before it is
        // placed; the copies stay open across exec.
        for (target, &fd) in plan.stdio.iter().enumerate() {
            if libc::dup2(fd, target as c_int) < 0 {
                return fail();
            }
        }
        if libc::syscall(libc::SYS_setgid, plan.gid) != 0 {
            return fail();
        }
        if plan.drop_groups
            && libc::syscall(libc::SYS_setgroups, 0, ptr::null::<libc::gid_t>()) != 0
        {
            return fail();
        }
        if libc::syscall(libc::SYS_setuid, plan.uid) != 0 {
            return fail();
        }
        if libc::chdir(plan.cwd) != 0 {
            return fail();
        }
        // Its own process group, so signals reach the children of a shell.
        if libc::setpgid(0, 0) != 0 {
            return fail();
        }
        // `execvp`'s search: the first candidate that runs; a "permission denied" on the
        // way is reported if nothing else is found.
        let mut denied = false;
        for &candidate in &plan.candidates {
            libc::execve(candidate, plan.argv, plan.envp);
            match *libc::__errno_location() {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG => {}
                _ => return fail(),
            }
        }
        *libc::__errno_location() = if denied { libc::EACCES } else { libc::ENOENT };
        fail()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn launch(program: &str, args: &[&str]) -> Launch {
        Launch {
            program: program.to_owned(),
            path: "/nonexistent:/usr/bin:/bin".to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: vec![("GREETING".to_owned(), "hello there".to_owned())],
            cwd: "/tmp".into(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            stdin: true,
        }
    }

    /// Everything `child` printed, and how it ended.
    fn finish(child: Child) -> (String, String, i32) {
        drop(child.stdin);
        let (mut out, mut err) = (String::new(), String::new());
        std::fs::File::from(child.stdout)
            .read_to_string(&mut out)
            .unwrap();
        std::fs::File::from(child.stderr)
            .read_to_string(&mut err)
            .unwrap();
        let status = rustix::process::waitpid(
            rustix::process::Pid::from_raw(child.pid as i32),
            rustix::process::WaitOptions::empty(),
        )
        .unwrap()
        .unwrap()
        .1;
        (out, err, status.exit_status().unwrap_or(-1))
    }

    #[test]
    fn a_program_runs_with_its_arguments_environment_directory_and_group() {
        let child = spawn(&launch(
            "sh",
            &[
                "-c",
                "echo \"$GREETING\" \"$0\"; pwd; echo oops >&2; \
                 [ \"$(ps -o pgid= -p $$ | tr -d ' ')\" = $$ ] && echo own-group; \
                 [ -z \"$PATH_WAS_SET\" ] && echo clean; exit 3",
            ],
        ))
        .unwrap();
        let (out, err, code) = finish(child);
        assert_eq!(out, "hello there sh\n/tmp\nown-group\nclean\n");
        assert_eq!(err, "oops\n");
        assert_eq!(code, 3);
    }

    #[test]
    fn stdin_is_a_pipe_or_nothing() {
        let child = spawn(&launch("cat", &[])).unwrap();
        let mut stdin = std::fs::File::from(child.stdin.as_ref().unwrap().try_clone().unwrap());
        stdin.write_all(b"fed in\n").unwrap();
        drop(stdin);
        assert_eq!(finish(child).0, "fed in\n");

        let mut closed = launch("cat", &[]);
        closed.stdin = false;
        let child = spawn(&closed).unwrap();
        assert!(child.stdin.is_none());
        assert_eq!(finish(child), (String::new(), String::new(), 0));
    }

    #[test]
    fn signals_start_at_their_defaults_and_unblocked() {
        // The test harness's thread may have signals blocked or handled; the child must
        // not inherit either (SigBlk and SigCgt in /proc/self/status).
        // SAFETY: blocks a signal in this test's thread only.
        unsafe {
            let mut usr1: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut usr1);
            libc::sigaddset(&mut usr1, libc::SIGUSR1);
            libc::pthread_sigmask(libc::SIG_BLOCK, &usr1, ptr::null_mut());
        }
        let child = spawn(&launch("cat", &["/proc/self/status"])).unwrap();
        let (out, _, _) = finish(child);
        // Rust programs ignore SIGPIPE; the started one must not (bit 13 of SigIgn).
        let ignored = out.lines().find(|l| l.starts_with("SigIgn:")).unwrap();
        let ignored = u64::from_str_radix(ignored.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE ignored");
        let masks: Vec<&str> = out
            .lines()
            .filter(|line| line.starts_with("SigBlk:") || line.starts_with("SigCgt:"))
            .collect();
        assert_eq!(masks.len(), 2, "{out}");
        for line in masks {
            let mask = line.split_whitespace().nth(1).unwrap();
            // cat catches nothing; a blocked or caught signal would show.
            assert!(
                mask.chars().all(|c| c == '0'),
                "{line} in the started process"
            );
        }
    }

    /// Set in the copy of this test binary that `stdio_closed_in_the_caller` starts.
    const CLOSED_STDIO_REPORT: &str = "COVE_LAUNCH_CLOSED_STDIO_REPORT";

    #[test]
    fn stdio_closed_in_the_caller() {
        if let Ok(report) = std::env::var(CLOSED_STDIO_REPORT) {
            // The copy: its own 0–2 closed, so the pipes are made at those numbers.
            for fd in 0..3 {
                // SAFETY: nothing in this process uses its standard streams any more
                // (the harness ignores writes to a closed stdout).
                unsafe { libc::close(fd) };
            }
            let child = spawn(&launch(
                "sh",
                &["-c", "read line; echo \"out $line\"; echo err >&2"],
            ))
            .unwrap();
            let mut stdin = std::fs::File::from(child.stdin.as_ref().unwrap().try_clone().unwrap());
            stdin.write_all(b"fed\n").unwrap();
            drop(stdin);
            let (out, err, code) = finish(child);
            std::fs::write(report, format!("{out}|{err}|{code}")).unwrap();
            return;
        }
        let report = std::env::temp_dir().join(format!("cove-launch-stdio-{}", std::process::id()));
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::stdio_closed_in_the_caller",
                "--test-threads=1",
            ])
            .env(CLOSED_STDIO_REPORT, &report)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        let seen = std::fs::read_to_string(&report);
        let _ = std::fs::remove_file(&report);
        assert!(status.success(), "the copy failed: {status}");
        assert_eq!(seen.unwrap(), "out fed\n|err\n|0");
    }

    #[test]
    fn what_cannot_start_says_why() {
        let missing = spawn(&launch("no-such-program-here", &[])).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let missing = spawn(&launch("/no/such/file", &[])).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let plain = std::env::temp_dir().join(format!("cove-launch-{}", std::process::id()));
        std::fs::write(&plain, "not a program").unwrap();
        let not_executable = spawn(&launch(plain.to_str().unwrap(), &[])).unwrap_err();
        std::fs::remove_file(&plain).unwrap();
        assert_eq!(not_executable.kind(), io::ErrorKind::PermissionDenied);
        let mut nowhere = launch("true", &[]);
        nowhere.cwd = "/no/such/dir".into();
        assert_eq!(spawn(&nowhere).unwrap_err().kind(), io::ErrorKind::NotFound);
        let nul = spawn(&launch("true", &["a\0b"])).unwrap_err();
        assert_eq!(nul.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_user_changes_for_a_non_root_account() {
        if !rustix::process::getuid().is_root() {
            return;
        }
        let mut nobody = launch("sh", &["-c", "id -u; id -g; id -G"]);
        nobody.uid = 65534;
        nobody.gid = 65534;
        let (out, _, code) = finish(spawn(&nobody).unwrap());
        assert_eq!(code, 0);
        // No supplementary groups left from root.
        assert_eq!(out, "65534\n65534\n65534\n");
    }
}
