//! The catalogue of templates teams built: templates and their names, builds (status, log,
//! why they failed, the layers they made), tags naming builds, the build cache, and the build
//! contexts uploaded. It lives in the state database beside keys and sandboxes, on a
//! connection of its own, so a restarted server finds every template again.
//!
//! A template belongs to one team; its name (E2B's alias) is unique on the server, so a name
//! another team holds is refused rather than shadowed. Each build that finished is reachable
//! through its tags (`default` unless the build asked for others); `name` alone means
//! `name:default`.

mod builds;
mod cache;
mod logs;
mod schema;
mod tags;
mod templates;

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use rusqlite::Connection;

pub use self::{
    builds::{BuildRow, Built},
    cache::Cached,
    logs::{MAX_ENTRIES as MAX_LOG_ENTRIES, level_rank},
    tags::TagRow,
    templates::{Owner, TemplateRow},
};

/// The tag a build takes when it names none, and the one a bare name means.
pub const DEFAULT_TAG: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot open the template catalogue in {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("template catalogue query failed")]
    Query(#[from] rusqlite::Error),
    #[error("a stored template record is unreadable")]
    Record(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, CatalogError>;

impl CatalogError {
    /// Whether the database could not be written because its disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            CatalogError::Query(rusqlite::Error::SqliteFailure(err, _))
                if err.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

/// The catalogue (see the module documentation).
pub struct Catalog {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Catalog {
    /// Opens the catalogue in the database at `path` (creating its tables).
    pub fn open(path: &Path) -> Result<Self> {
        let conn = crate::store::connect(path, schema::SCHEMA)
            .and_then(|conn| schema::add_columns(&conn).map(|()| conn))
            .map_err(|source| CatalogError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether `name` may be a template's name: 1 to 128 of `a-z 0-9 . _ -`, starting with a
/// letter or digit (E2B's rule, lowercase as its CLI makes them).
pub fn valid_name(name: &str) -> bool {
    valid_word(name, |b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Whether `tag` may be a tag: 1 to 128 of `A-Z a-z 0-9 . _ -`, starting with a letter or
/// digit.
pub fn valid_tag(tag: &str) -> bool {
    valid_word(tag, |b| b.is_ascii_alphanumeric())
}

/// 1 to 128 bytes, the first a `letter` and the rest letters, `.`, `_` or `-`.
fn valid_word(word: &str, letter: impl Fn(u8) -> bool) -> bool {
    let bytes = word.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && letter(bytes[0])
        && bytes
            .iter()
            .all(|b| letter(*b) || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        assert!(valid_name("my-app") && valid_name("a.b_c-1") && valid_name("1st"));
        assert!(!valid_name("") && !valid_name("My-App") && !valid_name("-x"));
        assert!(!valid_name("team/app") && !valid_name("a:b") && !valid_name(&"a".repeat(129)));
        assert!(valid_tag("v2") && valid_tag("Prod.1") && !valid_tag("a:b") && !valid_tag(""));
    }

    #[test]
    fn a_catalogue_of_an_older_server_gets_the_columns_added_since() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            // The table as servers before the runtime column made it, with a template.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE template_templates (id TEXT PRIMARY KEY, team TEXT NOT NULL,
                   cpu_count INTEGER NOT NULL, memory_mb INTEGER NOT NULL,
                   created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
                   spawn_count INTEGER NOT NULL DEFAULT 0, last_spawned_at INTEGER);
                 INSERT INTO template_templates (id, team, cpu_count, memory_mb, created_at, updated_at)
                   VALUES ('old', 'team', 2, 512, 1, 1);",
            )
            .unwrap();
        }
        let catalog = Catalog::open(&path).unwrap();
        let old = catalog.template("old").unwrap().unwrap();
        assert_eq!((old.memory_mb, old.runtime), (512, None));
        catalog.set_template_runtime("old", "gvisor").unwrap();
        let new = catalog
            .create_template("new", "team", "new", 1, 256, Some("gvisor"))
            .unwrap();
        drop(catalog);
        // Opening it again adds nothing twice and keeps what was stored.
        let catalog = Catalog::open(&path).unwrap();
        assert_eq!(
            catalog.template("old").unwrap().unwrap().runtime.as_deref(),
            Some("gvisor")
        );
        assert_eq!(catalog.template("new").unwrap(), Some(new));
    }
}
