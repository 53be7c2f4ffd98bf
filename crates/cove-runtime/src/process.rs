//! Identifying and stopping a sandbox's PID 1 from the host, safe against pid reuse: a pid
//! is only ours when its start time matches the one recorded when it started.

use std::{io, time::Duration};

use rustix::process::{Pid, PidfdFlags, Signal};

/// What `/proc/PID/stat` says: the state letter and the start time (clock ticks since boot,
/// field 22).
fn stat(pid: u32) -> io::Result<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat");
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let mut fields = stat
        .rfind(')')
        .map(|i| stat[i + 1..].split_whitespace())
        .ok_or_else(malformed)?;
    let state = fields
        .next()
        .and_then(|s| s.chars().next())
        .ok_or_else(malformed)?;
    let start_time = fields
        .nth(18)
        .and_then(|v| v.parse().ok())
        .ok_or_else(malformed)?;
    Ok((state, start_time))
}

/// The start time of `pid` (clock ticks since boot).
pub fn start_time(pid: u32) -> io::Result<u64> {
    stat(pid).map(|(_, start_time)| start_time)
}

/// Whether the process that started at `started` still runs as `pid` (a zombie has ended).
/// An error means it could not be looked at — too many open files, say — which says
/// nothing about whether it runs.
pub fn is_alive(pid: u32, started: u64) -> io::Result<bool> {
    match stat(pid) {
        Ok((state, start_time)) => Ok(state != 'Z' && start_time == started),
        // No such process, or it went away while we read.
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(err) => Err(err),
    }
}

/// SIGKILLs `pid` (if it is still the process that started at `started`) and waits up to
/// `timeout` for it to be gone. Killing a PID namespace's init kills everything in it.
pub fn kill_and_wait(pid: u32, started: u64, timeout: Duration) -> io::Result<()> {
    let raw = Pid::from_raw(
        i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
    )
    .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let pidfd = match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    // Checked after opening the pidfd: from here on the pid cannot be reused under us.
    if !is_alive(pid, started)? {
        return Ok(());
    }
    rustix::process::pidfd_send_signal(&pidfd, Signal::KILL)?;
    let mut fds = [rustix::event::PollFd::new(
        &pidfd,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::event::Timespec::try_from(timeout).unwrap_or(rustix::event::Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    });
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("process {pid} did not exit"),
        )),
        Ok(_) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_with_its_start_time() {
        let me = std::process::id();
        let started = start_time(me).unwrap();
        assert!(is_alive(me, started).unwrap());
        assert!(!is_alive(me, started + 1).unwrap());
        assert!(!is_alive(u32::MAX >> 1, started).unwrap(), "no such pid");
    }

    #[test]
    fn kill_and_wait_stops_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let started = start_time(child.id()).unwrap();
        kill_and_wait(child.id(), started, Duration::from_secs(5)).unwrap();
        assert!(child.wait().unwrap().code().is_none());
    }
}
