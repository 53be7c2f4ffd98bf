//! `openat2(2)` confined below a directory (`RESOLVE_IN_ROOT`, `RESOLVE_BENEATH`), tried again
//! when the kernel could not prove the confinement. A `..` in such a lookup fails with
//! `EAGAIN` whenever anything on the host renamed a file or changed a mount while it ran (the
//! kernel then cannot rule out an escape); on a host that starts sandboxes, both happen all
//! the time. The man page's advice is to retry.

use std::os::fd::{AsFd, OwnedFd};

use rustix::{
    fs::{Mode, OFlags, ResolveFlags},
    io::Errno,
};

/// How often a lookup is tried before `EAGAIN` is passed on. Each try that loses the race
/// costs one system call; a storm of renames and mounts that outlasts this many is answered
/// as a busy host (EAGAIN), never with a lookup that was not confined.
const TRIES: usize = 1000;

/// [`rustix::fs::openat2`], tried again while it fails with `EAGAIN`.
pub fn openat2<Fd: AsFd, P: rustix::path::Arg + Copy>(
    dir: Fd,
    path: P,
    flags: OFlags,
    mode: Mode,
    resolve: ResolveFlags,
) -> rustix::io::Result<OwnedFd> {
    let mut tries = 1;
    loop {
        match rustix::fs::openat2(dir.as_fd(), path, flags, mode, resolve) {
            Err(Errno::AGAIN) if tries < TRIES => {
                tries += 1;
                std::thread::yield_now();
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;

    /// Renames elsewhere on the host while lookups with `..` run: every lookup succeeds.
    #[test]
    fn lookups_with_dotdot_survive_renames_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/f"), "x").unwrap();
        let busy = tempfile::tempdir().unwrap();
        std::fs::write(busy.path().join("one"), "").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let renamer = {
            let (stop, busy) = (stop.clone(), busy.path().to_owned());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::fs::rename(busy.join("one"), busy.join("two")).unwrap();
                    std::fs::rename(busy.join("two"), busy.join("one")).unwrap();
                }
            })
        };
        let root = rustix::fs::open(
            dir.path(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let mut failures = 0;
        for _ in 0..20_000 {
            let opened = openat2(
                &root,
                "a/b/../f",
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT,
            );
            if opened.is_err() {
                failures += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        renamer.join().unwrap();
        assert_eq!(failures, 0, "lookups that failed");
    }
}
