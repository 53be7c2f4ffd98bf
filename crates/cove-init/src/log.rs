//! A sandbox's log: the stderr of its PID 1, a file on the host's disk (outside the sandbox's
//! disk quota) that `cove serve` hands to clients entry by entry. One JSON object a line,
//! kept under a size: some of what the agent logs is up to the code in the sandbox (failed
//! requests, say), so it must not grow without end.

use std::{
    io::{self, Write},
    os::fd::{AsFd, BorrowedFd},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the subscriber: `COVE_LOG` filter (default `info`), JSON lines on the capped
/// stderr ([`cap`] sets the size).
pub fn install() {
    let filter = EnvFilter::try_from_env("COVE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .json()
        .with_writer(|| &AGENT_LOG)
        .init();
}

/// Sets the size the log is kept under (from the sandbox's spec).
pub fn cap(bytes: u64) {
    AGENT_LOG.cap.store(bytes, Ordering::Relaxed);
}

/// stderr, kept under a size: when a line would take the file past it, the newest half of
/// the file moves to its start and the rest is dropped.
#[derive(Debug)]
struct CappedStderr {
    cap: AtomicU64,
    /// One writer at a time, so two never shrink the file at once.
    lock: Mutex<()>,
}

static AGENT_LOG: CappedStderr = CappedStderr {
    cap: AtomicU64::new(cove_runtime::namespace::init::DEFAULT_LOG_CAP),
    lock: Mutex::new(()),
};

impl Write for &CappedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let stderr = io::stderr();
        let mut stderr = stderr.lock();
        let cap = self.cap.load(Ordering::Relaxed);
        if let Ok(stat) = rustix::fs::fstat(stderr.as_fd()) {
            let size = u64::try_from(stat.st_size).unwrap_or(0);
            let regular = rustix::fs::FileType::from_raw_mode(stat.st_mode).is_file();
            if regular && size + buf.len() as u64 > cap {
                // A log we cannot shrink is written on: losing lines would be worse.
                let _ = keep_newest(stderr.as_fd(), size, cap / 2);
            }
        }
        stderr.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Keeps only the last `keep` bytes of the `size`-byte file `fd` (appending), from the first
/// whole line on.
fn keep_newest(fd: BorrowedFd<'_>, size: u64, keep: u64) -> io::Result<()> {
    let from = size.saturating_sub(keep);
    let mut tail = vec![0u8; usize::try_from(size - from).unwrap_or(0)];
    let mut read = 0;
    while read < tail.len() {
        match rustix::io::pread(fd, &mut tail[read..], from + read as u64)? {
            0 => break,
            n => read += n,
        }
    }
    tail.truncate(read);
    let start = tail.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
    rustix::fs::ftruncate(fd, 0)?;
    let mut rest = &tail[start..];
    while !rest.is_empty() {
        let written = rustix::io::write(fd, rest)?;
        rest = &rest[written..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeping_the_newest_half_starts_at_a_whole_line() {
        let file = tempfile::tempfile().unwrap();
        let mut writer = std::fs::OpenOptions::new()
            .append(true)
            .read(true)
            .open(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&file)
            ))
            .unwrap();
        writer.write_all(b"one\ntwo\nthree\nfour\n").unwrap();
        keep_newest(writer.as_fd(), 19, 8).unwrap();
        writer.write_all(b"five\n").unwrap();
        let mut all = String::new();
        io::Read::read_to_string(
            &mut std::fs::File::open(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&file)
            ))
            .unwrap(),
            &mut all,
        )
        .unwrap();
        assert_eq!(all, "four\nfive\n");
    }
}
