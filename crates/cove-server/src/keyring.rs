//! The API keys requests are checked against: the valid keys' hashes in memory, kept in step
//! with the database, so that a request with a wrong key costs a hash and a map lookup — not a
//! query under the store's lock, which a flood of wrong keys would turn into a queue for
//! everyone.
//!
//! `cove keys` creates and revokes keys from another process, and the answer must follow at
//! once. With SQLite a change is noticed by the database files' size and modification time
//! (two `stat`s, no lock) and confirmed by the keys' version, a counter every change of a key
//! moves in its transaction, read on a connection of our own; the keys are read again only
//! when that moved. As file times are coarse, the database is also asked when the last check
//! is older than [`RECHECK_PERIOD`], whatever the files say. A PostgreSQL database has no
//! files here to watch: its keys' version is asked every [`RECHECK_PERIOD`], so a key made or
//! revoked by another process counts within that.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{Mutex, RwLock},
    time::{Duration, Instant},
};

use cove_db::Location;

use crate::{
    secrets,
    store::{Result, Store},
};

/// How long the files' word that nothing changed is taken.
const RECHECK_PERIOD: Duration = Duration::from_secs(1);

/// The valid keys (hash → team), as of the last check.
pub struct KeyRing {
    db: Store,
    /// The database's files, when it has some here.
    files: Vec<PathBuf>,
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
    keys_version: i64,
    stamp: Stamp,
    checked_at: Instant,
    /// Times the database was asked (for tests).
    reads: u64,
}

/// What the database files look like from outside: (device, inode, size, mtime) of each.
type Stamp = Vec<Option<(u64, u64, u64, i64, i64)>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    files
        .iter()
        .map(|path| {
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
        })
        .collect()
}

impl KeyRing {
    /// The keys of the database at `location`, read through a connection of its own.
    pub fn open(location: &Location) -> Result<Self> {
        Self::with_recheck(location, RECHECK_PERIOD)
    }

    fn with_recheck(location: &Location, recheck: Duration) -> Result<Self> {
        let db = Store::open(location)?;
        let files = match location {
            Location::File(path) => {
                let mut wal = path.as_os_str().to_owned();
                wal.push("-wal");
                vec![path.clone(), PathBuf::from(wal)]
            }
            Location::Postgres(_) => Vec::new(),
        };
        let stamp = stamp(&files);
        let keys_version = db.keys_version()?;
        let keys = db.valid_keys()?;
        Ok(Self {
            db,
            files,
            recheck,
            seen: RwLock::new(Seen {
                keys,
                keys_version,
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
        let (known_keys_version, fresh) = {
            let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
            (
                seen.keys_version,
                // Another lookup caught up while this one waited.
                seen.stamp == now && seen.checked_at.elapsed() < self.recheck,
            )
        };
        if fresh {
            return Ok(());
        }
        let read = self.db.keys_version().and_then(|keys_version| {
            let keys = if keys_version == known_keys_version {
                None
            } else {
                Some(self.db.valid_keys()?)
            };
            Ok((keys_version, keys))
        });
        let (keys_version, keys) = match read {
            Ok(read) => read,
            // A database server that went away: the keys as last read go on counting (a
            // running cluster keeps serving), and it is asked again after the period.
            Err(err) if err.is_unavailable() => {
                tracing::warn!(?err, "cannot read the API keys; using the ones read before");
                (known_keys_version, None)
            }
            Err(err) => return Err(err),
        };
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        seen.reads += 1;
        seen.keys_version = keys_version;
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
        crate::test_backends::each(|location| {
            let store = Store::open(location).unwrap();
            let (_, secret) = store.create_key("team-a", "k").unwrap();
            let ring = KeyRing::with_recheck(location, Duration::from_secs(3600)).unwrap();
            let reads = ring.reads();
            for n in 0..1000 {
                assert_eq!(ring.team_for_key(&format!("cove_wrong{n}")).unwrap(), None);
            }
            assert_eq!(
                ring.team_for_key(&secret).unwrap().as_deref(),
                Some("team-a")
            );
            assert_eq!(ring.reads(), reads);
        });
    }

    #[test]
    fn keys_made_and_revoked_elsewhere_count_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::File(dir.path().join("state.db"));
        let ring = KeyRing::with_recheck(&location, Duration::from_secs(3600)).unwrap();
        // Another connection, as `cove keys` in another process would have.
        let other = Store::open(&location).unwrap();
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

    /// With PostgreSQL (no files to watch), a key made or revoked elsewhere counts once the
    /// recheck period has passed.
    #[test]
    fn keys_made_and_revoked_elsewhere_count_after_the_period() {
        crate::test_backends::each(|location| {
            let ring = KeyRing::with_recheck(location, Duration::ZERO).unwrap();
            let other = Store::open(location).unwrap();
            let (info, secret) = other.create_key("team-b", "k").unwrap();
            assert_eq!(
                ring.team_for_key(&secret).unwrap().as_deref(),
                Some("team-b")
            );
            assert!(other.revoke_key(&info.id).unwrap());
            assert_eq!(ring.team_for_key(&secret).unwrap(), None);
        });
    }

    #[test]
    fn the_database_is_asked_again_after_the_recheck_period() {
        crate::test_backends::each(|location| {
            let ring = KeyRing::with_recheck(location, Duration::ZERO).unwrap();
            let reads = ring.reads();
            assert_eq!(ring.team_for_key("cove_wrong").unwrap(), None);
            assert_eq!(ring.reads(), reads + 1);
        });
    }
}
