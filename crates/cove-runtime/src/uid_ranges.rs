//! Host-wide uid ranges. A sandbox's range (its *slot*, see [`crate::userns`]) is leased with
//! an exclusive `flock` on `/run/cove/uid-ranges/<slot>`, taken by the sandbox's setup and
//! held by its PID 1 for the sandbox's whole life. So two servers on one host (two state
//! directories) never run sandboxes as the same host uids, and a range comes free by itself
//! when the sandbox's last process is gone — after a kill, a crash of the server, or a
//! reboot — with no bookkeeping that could go stale.
//!
//! The server only picks candidates ([`Slots`]); the lease itself is taken in the setup stage
//! ([`Lease::take`]), which answers "taken" when another server got there first.

use std::{
    collections::{BTreeSet, HashMap},
    fs, io,
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::{DirBuilderExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use rustix::fs::FlockOperation;

/// Where the leases live: on the host's `/run` (a tmpfs only root writes), so they vanish
/// with a reboot like the sandboxes they stand for.
pub const LEASE_DIR: &str = "/run/cove/uid-ranges";

/// How long a slot found leased by someone else is skipped before it is tried again.
const FOREIGN_FOR: Duration = Duration::from_secs(30);

/// An exclusive lease on one slot. The lock lives as long as any copy of the descriptor.
#[derive(Debug)]
pub struct Lease {
    file: fs::File,
}

impl Lease {
    /// Takes `slot` in `dir` if nobody holds it; `None` when someone does.
    pub fn take(dir: &Path, slot: u32) -> io::Result<Option<Lease>> {
        let file = open_lease_file(dir, slot)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(Lease { file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// The descriptor that holds the lock, for the process that keeps it.
    pub fn into_fd(self) -> OwnedFd {
        self.file.into()
    }
}

impl AsFd for Lease {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn open_lease_file(dir: &Path, slot: u32) -> io::Result<fs::File> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(slot.to_string()))
}

/// Whether someone holds `slot` right now (a lock taken and dropped at once). Only a hint:
/// the lease is taken for real by the sandbox's setup.
fn is_leased(dir: &Path, slot: u32) -> bool {
    match Lease::take(dir, slot) {
        Ok(lease) => lease.is_none(),
        // A lease file we cannot open is no slot to hand out.
        Err(_) => true,
    }
}

/// The slots this server uses, and candidates for new sandboxes.
#[derive(Debug)]
pub struct Slots {
    dir: PathBuf,
    max: u32,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    /// Slots of this server's sandboxes (starting or running).
    ours: BTreeSet<u32>,
    /// Slots another server's sandboxes hold, and since when we know.
    foreign: HashMap<u32, Instant>,
}

impl Slots {
    /// Slots `0..max`, leased under `dir` (normally [`LEASE_DIR`]).
    pub fn new(dir: impl Into<PathBuf>, max: u32) -> Self {
        Self {
            dir: dir.into(),
            max,
            state: Mutex::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot no sandbox of ours uses and nobody else seems to hold, reserved for us; `None`
    /// when every slot is taken.
    pub fn reserve(&self) -> Option<u32> {
        let mut state = self.state();
        let now = Instant::now();
        state
            .foreign
            .retain(|_, since| now.duration_since(*since) < FOREIGN_FOR);
        for slot in 0..self.max {
            if state.ours.contains(&slot) || state.foreign.contains_key(&slot) {
                continue;
            }
            if is_leased(&self.dir, slot) {
                state.foreign.insert(slot, now);
                continue;
            }
            state.ours.insert(slot);
            return Some(slot);
        }
        None
    }

    /// Marks `slot` as held by someone else (their setup got the lease first) and gives up
    /// our reservation of it.
    pub fn lost(&self, slot: u32) {
        let mut state = self.state();
        state.ours.remove(&slot);
        state.foreign.insert(slot, Instant::now());
    }

    /// Records a slot held by one of our sandboxes (found again after a restart).
    pub fn adopt(&self, slot: u32) {
        self.state().ours.insert(slot);
    }

    /// Gives a slot back (its sandbox is gone, or never started).
    pub fn release(&self, slot: u32) {
        self.state().ours.remove(&slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_exclusive_and_ends_with_its_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let lease = Lease::take(dir.path(), 7).unwrap().expect("free at first");
        assert!(Lease::take(dir.path(), 7).unwrap().is_none(), "held twice");
        assert!(Lease::take(dir.path(), 8).unwrap().is_some());
        drop(lease);
        assert!(Lease::take(dir.path(), 7).unwrap().is_some());
    }

    #[test]
    fn slots_skip_what_another_server_holds() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = Lease::take(dir.path(), 0).unwrap().unwrap();
        let slots = Slots::new(dir.path(), 4);
        assert_eq!(slots.reserve(), Some(1));
        assert_eq!(slots.reserve(), Some(2));
        slots.lost(2);
        assert_eq!(slots.reserve(), Some(3));
        assert_eq!(slots.reserve(), None, "0 is theirs, 2 was lost to them");
        slots.release(1);
        assert_eq!(slots.reserve(), Some(1));
        drop(theirs);
        slots.adopt(0);
        assert_eq!(slots.reserve(), None);
    }
}
