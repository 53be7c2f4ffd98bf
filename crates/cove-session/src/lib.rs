//! Starts a command in a session of its own whose controlling terminal is its stdin (a
//! pseudo-terminal's secondary side): what a shell in a terminal expects (job control,
//! `^C` reaching the foreground job, `tty`).
//!
//! The two system calls are made raw, between fork and exec. A wrapper that reads `setsid`'s
//! result as a process id does not do: gVisor's `setsid` (runsc 2022) returns 0 where Linux
//! returns the new session's id, and rustix's wrapper, which pty-process uses, asserts the
//! id is not 0 (a panic in the child of every PTY in a gVisor sandbox).

use std::{os::unix::process::CommandExt, process::Command};

/// Makes `command`'s child a session leader with its stdin as controlling terminal. Set
/// stdin to the terminal before spawning it.
pub fn on_terminal(command: &mut Command) -> &mut Command {
    // SAFETY: the hook runs in the forked child before exec and makes only setsid and
    // ioctl, both async-signal-safe; it allocates nothing and touches no lock.
    unsafe { command.pre_exec(session_on_stdin) }
}

fn session_on_stdin() -> std::io::Result<()> {
    // SAFETY: setsid takes no arguments; TIOCSCTTY takes an integer (0: do not steal the
    // terminal from another session), no pointer.
    let failed = unsafe { libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 };
    if failed {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use super::*;

    #[test]
    fn the_child_leads_its_own_session() {
        // Without a terminal on stdin, TIOCSCTTY fails and the spawn says so.
        let mut command = Command::new("true");
        command.stdin(Stdio::null());
        let spawned = on_terminal(&mut command).spawn();
        assert!(spawned.is_err(), "{spawned:?}");
    }
}
