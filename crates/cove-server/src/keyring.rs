//! The API keys requests are checked against: the valid keys' hashes in memory, kept in step
//! with the database, so that a request with a wrong key costs a hash and a map lookup — not a
//! query under the store's lock, which a flood of wrong keys would turn into a queue for
//! everyone.
//!
//! `cove keys` creates and revokes keys from another process, and the answer must follow at
//! once. A change is noticed by the database files' size and modification time (two `stat`s, no
//! lock) and confirmed by SQLite's `PRAGMA data_version` on a connection of our own; the keys are
//! read again only when that moved. As file times are coarse, the database is also asked when
//! the last check is older than [`RECHECK_PERIOD`], whatever the files say.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Mutex, RwLock},
    time::{Duration, Instant},
};

use crate::{
    secrets,
    store::{Result, Store},
};

/// How long the files' word that nothing changed is taken.
const RECHECK_PERIOD: Duration = Duration::from_secs(1);

/// The valid keys (hash → team), as of the last check.
pub struct KeyRing {
    db: Store,
    files: [PathBuf; 2],
    recheck: Duration,
    seen: RwLock<Seen>,
    /// One reader of the database at a time; the others wait for its result.
    reading: Mutex<()>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

struct Seen {
    keys: HashMap<String, String>,
    data_version: i64,
    stamp: Stamp,
    checked_at: Instant,
    /// Times the database was asked (for tests).
    reads: u64,
}

/// What the database files look like from outside: (device, inode, size, mtime) of each.
type Stamp = [Option<(u64, u64, u64, i64, i64)>; 2];

fn stamp(files: &[PathBuf; 2]) -> Stamp {
    files.each_ref().map(|path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
    })
}

impl KeyRing {
    /// The keys of the database at `path`, read through a connection of its own.
    pub fn open(path: &Path) -> Result<Self> {
        Self::with_recheck(path, RECHECK_PERIOD)
    }

    fn with_recheck(path: &Path, recheck: Duration) -> Result<Self> {
        let db = Store::open(path)?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let files = [path.to_owned(), PathBuf::from(wal)];
        let stamp = stamp(&files);
        let data_version = db.data_version()?;
        let keys = db.valid_keys()?;
        Ok(Self {
            db,
            files,
            recheck,
            seen: RwLock::new(Seen {
                keys,
                data_version,
                stamp,
                checked_at: Instant::now(),
                reads: 1,
            }),
            reading: Mutex::new(()),
        })
    }

    /// The team a (non-revoked) key belongs to.
    pub fn team_for_key(&self, secret: &str) -> Result<Option<String>> {
        let hash = secrets::hash_key(secret);
        let now = stamp(&self.files);
        {
            let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
            if seen.stamp == now && seen.checked_at.elapsed() < self.recheck {
                return Ok(seen.keys.get(&hash).cloned());
            }
        }
        self.catch_up(now)?;
        let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
        Ok(seen.keys.get(&hash).cloned())
    }

    /// Brings the keys up to the database as of `now` (a stamp taken before asking it, so a
    /// change that lands meanwhile is noticed by the next lookup).
    fn catch_up(&self, now: Stamp) -> Result<()> {
        let _reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        let (known_version, fresh) = {
            let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
            (
                seen.data_version,
                // Another lookup caught up while this one waited.
                seen.stamp == now && seen.checked_at.elapsed() < self.recheck,
            )
        };
        if fresh {
            return Ok(());
        }
        let data_version = self.db.data_version()?;
        let keys = if data_version == known_version {
            None
        } else {
            Some(self.db.valid_keys()?)
        };
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        seen.reads += 1;
        seen.data_version = data_version;
        seen.stamp = now;
        seen.checked_at = Instant::now();
        if let Some(keys) = keys {
            seen.keys = keys;
        }
        Ok(())
    }

    #[cfg(test)]
    fn reads(&self) -> u64 {
        self.seen.read().unwrap_or_else(|e| e.into_inner()).reads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_keys_cost_no_database_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        let (_, secret) = store.create_key("team-a", "k").unwrap();
        let ring = KeyRing::with_recheck(&path, Duration::from_secs(3600)).unwrap();
        let reads = ring.reads();
        for n in 0..1000 {
            assert_eq!(ring.team_for_key(&format!("cove_wrong{n}")).unwrap(), None);
        }
        assert_eq!(
            ring.team_for_key(&secret).unwrap().as_deref(),
            Some("team-a")
        );
        assert_eq!(ring.reads(), reads);
    }

    #[test]
    fn keys_made_and_revoked_elsewhere_count_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let ring = KeyRing::with_recheck(&path, Duration::from_secs(3600)).unwrap();
        // Another connection, as `cove keys` in another process would have.
        let other = Store::open(&path).unwrap();
        for round in 0..20 {
            let (info, secret) = other.create_key("team-b", "k").unwrap();
            assert_eq!(
                ring.team_for_key(&secret).unwrap().as_deref(),
                Some("team-b"),
                "round {round}"
            );
            assert!(other.revoke_key(&info.id).unwrap());
            assert_eq!(ring.team_for_key(&secret).unwrap(), None, "round {round}");
        }
    }

    #[test]
    fn the_database_is_asked_again_after_the_recheck_period() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let ring = KeyRing::with_recheck(&path, Duration::ZERO).unwrap();
        let reads = ring.reads();
        assert_eq!(ring.team_for_key("cove_wrong").unwrap(), None);
        assert_eq!(ring.reads(), reads + 1);
    }
}
