//! Identifying and stopping a sandbox's PID 1 from the host, safe against pid reuse: a pid
//! is only ours when its start time matches the one recorded when it started.

use std::{collections::HashMap, io, os::fd::OwnedFd, sync::Mutex, time::Duration};

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

/// A pidfd of `pid` if it is still the process that started at `started` (None when it is
/// gone). The start time is checked after the pidfd is open: from then on the pid cannot be
/// reused under us.
fn open_pidfd(pid: u32, started: u64) -> io::Result<Option<OwnedFd>> {
    let raw = Pid::from_raw(
        i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
    )
    .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let pidfd = match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    Ok(is_alive(pid, started)?.then_some(pidfd))
}

/// SIGKILLs `pid` (if it is still the process that started at `started`) and waits up to
/// `timeout` for it to be gone. Killing a PID namespace's init kills everything in it.
pub fn kill_and_wait(pid: u32, started: u64, timeout: Duration) -> io::Result<()> {
    let Some(pidfd) = open_pidfd(pid, started)? else {
        return Ok(());
    };
    rustix::process::pidfd_send_signal(&pidfd, Signal::KILL)?;
    if exits_within(&pidfd, timeout)? {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("process {pid} did not exit"),
        ))
    }
}

/// Whether the process behind `pidfd` has exited, or does within `timeout` (a pidfd is
/// readable from its exit on); a timeout too long to express waits 10 s.
fn exits_within(pidfd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut polled = [PollFd::new(pidfd, PollFlags::IN)];
    let timeout = Timespec::try_from(timeout).unwrap_or(Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    });
    Ok(rustix::event::poll(&mut polled, Some(&timeout))? > 0)
}

/// Sandboxes' PID 1s, each watched through a pidfd opened the first time it is looked at:
/// whether one still runs is then a poll of its descriptor, where a read of `/proc/PID/stat`
/// walks a path every time. The reaper asks about every sandbox twice a second; with a
/// thousand sandboxes those reads were two fifths of an idle server's CPU time.
#[derive(Debug, Default)]
pub struct ExitWatch {
    /// By sandbox id: the process watched (pid, start time) and its pidfd.
    watched: Mutex<HashMap<String, (u32, u64, OwnedFd)>>,
}

impl ExitWatch {
    /// [`is_alive`] for sandbox `id`'s PID 1, `pid` started at `started`.
    pub fn is_alive(&self, id: &str, pid: u32, started: u64) -> io::Result<bool> {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known_pid, known_start, pidfd)) = watched.get(id)
            && (*known_pid, *known_start) == (pid, started)
        {
            let alive = !exits_within(pidfd, Duration::ZERO)?;
            if !alive {
                watched.remove(id);
            }
            return Ok(alive);
        }
        // Not watched yet, or a new PID 1 (a resume): its identity is checked once.
        watched.remove(id);
        let Some(pidfd) = open_pidfd(pid, started)? else {
            return Ok(false);
        };
        watched.insert(id.to_owned(), (pid, started, pidfd));
        Ok(true)
    }

    /// Stops watching sandbox `id` (it was killed, or paused without processes).
    pub fn forget(&self, id: &str) {
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// How many processes are watched (one descriptor each).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.watched.lock().unwrap_or_else(|e| e.into_inner()).len()
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

    #[test]
    fn an_exit_watch_sees_its_process_end_and_forgets_it() {
        let watch = ExitWatch::default();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (pid, started) = (child.id(), start_time(child.id()).unwrap());
        assert!(watch.is_alive("a", pid, started).unwrap());
        assert!(
            watch.is_alive("a", pid, started).unwrap(),
            "asked again, by its pidfd"
        );
        assert_eq!(watch.len(), 1);
        assert!(
            !watch.is_alive("b", pid, started + 1).unwrap(),
            "another start time is another process"
        );
        child.kill().unwrap();
        // Still a zombie until waited for: it has ended all the same (once the signal is
        // taken, which is not at once).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while watch.is_alive("a", pid, started).unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "the killed child still runs"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(watch.len(), 0, "an ended process is not watched any more");
        child.wait().unwrap();
        assert!(!watch.is_alive("a", pid, started).unwrap());
        assert_eq!(watch.len(), 0);
    }

    #[test]
    fn a_forgotten_sandbox_holds_no_descriptor() {
        let watch = ExitWatch::default();
        let me = std::process::id();
        assert!(watch.is_alive("me", me, start_time(me).unwrap()).unwrap());
        watch.forget("me");
        assert_eq!(watch.len(), 0);
    }
}
