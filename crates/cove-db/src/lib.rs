//! The state database behind one interface: an embedded SQLite file on one machine (the
//! default: nothing to run beside `cove serve`), or PostgreSQL, which several Cove processes
//! on several machines share (a cluster).
//!
//! Callers write one SQL text for both: the common subset (`INSERT … ON CONFLICT … DO UPDATE`,
//! `?1` placeholders, TEXT and 64-bit integers, NULL). The schema is made and moved forward by
//! the migrations in `migrations/<backend>/`, one numbered file per step, the same steps for
//! both backends ([`migrations`]); opening a database applies the ones it lacks.
//!
//! The interface is synchronous, as the store's callers are: a statement is a short wait, as
//! a lock is. PostgreSQL is driven by `tokio-postgres` (asynchronous) whose connection runs on
//! a thread of its own; a statement is sent to it and waited for.

mod migrations;
mod postgres;
mod sqlite;
mod tls;
mod value;

use std::path::PathBuf;

pub use self::value::{Row, Value};

/// Where the state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// An SQLite file (made when missing).
    File(PathBuf),
    /// A PostgreSQL server and database (`postgres://user:password@host:port/database`).
    Postgres(String),
}

impl Location {
    /// `postgres://…` or `postgresql://…` is a PostgreSQL server; anything else a file path.
    pub fn parse(text: &str) -> Self {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Location::Postgres(text.to_owned())
        } else {
            Location::File(PathBuf::from(text))
        }
    }

    /// The location without its password, to show in logs and messages.
    pub fn redacted(&self) -> String {
        match self {
            Location::File(path) => path.display().to_string(),
            Location::Postgres(url) => postgres::redacted(url),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the state database {location}")]
    Open {
        location: String,
        #[source]
        source: Box<DbError>,
    },
    #[error("SQLite statement failed")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL statement failed")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the PostgreSQL server cannot be reached")]
    Unavailable(#[source] tokio_postgres::Error),
    #[error("column {column} holds {found}, not {wanted}")]
    Column {
        column: usize,
        found: &'static str,
        wanted: &'static str,
    },
    #[error("migration {version} ({name}) failed")]
    Migration {
        version: u32,
        name: &'static str,
        #[source]
        source: Box<DbError>,
    },
    #[error(
        "the database has migration {version}, which this Cove does not know: it was made by a newer Cove"
    )]
    Newer { version: i64 },
    #[error("cannot start the PostgreSQL connection's thread: {0}")]
    Io(String),
    #[error("the database connection was closed")]
    Closed,
    #[error("another Cove process holds {0} in this database")]
    Claimed(String),
    #[error("PostgreSQL over TLS: {0}")]
    Tls(String),
}

pub type Result<T> = std::result::Result<T, DbError>;

impl DbError {
    /// Whether a row like this one exists already (a unique column repeated).
    pub fn is_conflict(&self) -> bool {
        match self.innermost() {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(err, _)) => {
                err.code == rusqlite::ErrorCode::ConstraintViolation
            }
            DbError::Postgres(err) => {
                err.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            }
            _ => false,
        }
    }

    /// Whether the database could not be written because its disk is full.
    pub fn is_disk_full(&self) -> bool {
        match self.innermost() {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(err, _)) => {
                err.code == rusqlite::ErrorCode::DiskFull
            }
            DbError::Postgres(err) => {
                err.code() == Some(&tokio_postgres::error::SqlState::DISK_FULL)
            }
            _ => false,
        }
    }

    /// Whether the database server could not be reached (it may come back).
    pub fn is_unavailable(&self) -> bool {
        matches!(self.innermost(), DbError::Unavailable(_))
    }

    fn innermost(&self) -> &DbError {
        match self {
            DbError::Open { source, .. } | DbError::Migration { source, .. } => source.innermost(),
            other => other,
        }
    }
}

/// The advisory lock that stands for `what`: FNV-1a of its name, the same in every Cove.
fn claim_key(what: &str) -> i64 {
    let hash = what.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Statements, on the database or in a transaction.
pub trait Sql {
    /// Runs a statement; returns how many rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64>;
    /// The rows a query returns.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
    /// Runs several statements, without parameters (a migration's).
    fn batch(&mut self, sql: &str) -> Result<()>;

    /// The first row a query returns, if any.
    fn query_row(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// A database (see the crate's documentation).
pub struct Db {
    backend: Backend,
}

enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(Box<postgres::Postgres>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("kind", &self.kind()).finish()
    }
}

impl Db {
    /// Opens the database at `location` and applies the migrations it lacks.
    pub fn open(location: &Location) -> Result<Self> {
        let opened = match location {
            Location::File(path) => sqlite::Sqlite::open(path).map(Backend::Sqlite),
            Location::Postgres(url) => {
                postgres::Postgres::connect(url).map(|db| Backend::Postgres(Box::new(db)))
            }
        }
        .and_then(|backend| {
            let db = Self { backend };
            migrations::apply(&db)?;
            Ok(db)
        });
        opened.map_err(|source| DbError::Open {
            location: location.redacted(),
            source: Box::new(source),
        })
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Holds `what` (a name: the whole server's state, one node's sandboxes) for this
    /// process while it runs, so that a second process claiming it is refused
    /// ([`DbError::Claimed`]) instead of taking over the first one's sandboxes. An SQLite
    /// file needs none: its state directory is its server's own.
    pub fn claim(&self, what: &str) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(db) => db.claim(claim_key(what)).map_err(|err| match err {
                DbError::Claimed(_) => DbError::Claimed(what.to_owned()),
                other => other,
            }),
        }
    }

    /// Runs `work` in a transaction that no other one doing `what` (a name) runs beside, in
    /// any process on the database: the second waits for the first to commit, then sees
    /// what it wrote (a PostgreSQL transaction-scoped advisory lock; SQLite's write lock).
    pub fn exclusive<T>(
        &self,
        what: &str,
        work: impl FnOnce(&mut dyn Sql) -> Result<T>,
    ) -> Result<T> {
        match &self.backend {
            Backend::Sqlite(db) => db.transaction(work),
            Backend::Postgres(db) => db.transaction(|sql| {
                sql.batch(&format!(
                    "SELECT pg_advisory_xact_lock({})",
                    claim_key(what)
                ))?;
                work(sql)
            }),
        }
    }

    /// Runs `work` in a transaction: committed when it returns `Ok`, undone otherwise.
    pub fn transaction<T>(&self, work: impl FnOnce(&mut dyn Sql) -> Result<T>) -> Result<T> {
        match &self.backend {
            Backend::Sqlite(db) => db.transaction(work),
            Backend::Postgres(db) => db.transaction(work),
        }
    }

    /// Runs a statement outside any transaction.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        self.with(|s| s.execute(sql, params))
    }

    /// The rows a query returns.
    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.with(|s| s.query(sql, params))
    }

    /// The first row a query returns, if any.
    pub fn query_row(&self, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        self.with(|s| s.query_row(sql, params))
    }

    /// Runs `work`'s statements one after the other on one connection, each on its own (no
    /// transaction: for reads that need no write lock).
    pub fn with<T>(&self, work: impl FnOnce(&mut dyn Sql) -> Result<T>) -> Result<T> {
        match &self.backend {
            Backend::Sqlite(db) => db.with(work),
            Backend::Postgres(db) => db.with(work),
        }
    }
}

#[cfg(test)]
mod tests {
    use cove_test_util::TestPostgres;

    use super::*;

    /// Runs `test` on a fresh SQLite file, then on a fresh PostgreSQL server (where it is
    /// installed: CI installs it).
    fn on_each_backend(test: impl Fn(&Location, Option<&mut TestPostgres>)) {
        let dir = tempfile::tempdir().unwrap();
        test(&Location::File(dir.path().join("state.db")), None);
        if !TestPostgres::installed() {
            eprintln!("SKIPPED on PostgreSQL: it is not installed (Debian package postgresql)");
            return;
        }
        let mut server = TestPostgres::start();
        test(&Location::Postgres(server.url()), Some(&mut server));
    }

    #[test]
    fn statements_transactions_and_conflicts_behave_alike() {
        on_each_backend(|location, _| {
            let db = Db::open(location).unwrap();
            db.execute(
                "INSERT INTO teams (name, max_sandboxes, max_memory_mb) VALUES (?1, ?2, ?3)",
                params!["a", 3u32, None::<u64>],
            )
            .unwrap();
            let row = db
                .query_row(
                    "SELECT name, max_sandboxes, max_memory_mb, max_cpus IS NULL FROM teams WHERE name = ?1",
                    params!["a"],
                )
                .unwrap()
                .unwrap();
            assert_eq!(row.text(0).unwrap(), "a");
            assert_eq!(row.opt_u32(1).unwrap(), Some(3));
            assert_eq!(row.opt_int(2).unwrap(), None);
            assert!(
                row.flag(3).unwrap(),
                "{}: a boolean reads as a flag",
                db.kind()
            );
            assert!(row.text(1).is_err(), "an integer is not text");

            // A unique column repeated is a conflict, on both.
            let again = db
                .execute("INSERT INTO teams (name) VALUES (?1)", params!["a"])
                .unwrap_err();
            assert!(again.is_conflict(), "{}: {again:?}", db.kind());

            // A transaction that fails leaves nothing behind; one that succeeds, everything.
            let failed = db.transaction(|sql| {
                sql.execute("INSERT INTO teams (name) VALUES (?1)", params!["b"])?;
                sql.execute("INSERT INTO teams (name) VALUES (?1)", params!["a"])?;
                Ok(())
            });
            assert!(failed.unwrap_err().is_conflict());
            db.transaction(|sql| {
                sql.execute("INSERT INTO teams (name) VALUES (?1)", params!["c"])?;
                sql.execute(
                    "INSERT INTO teams (name) VALUES (?1) ON CONFLICT (name) DO UPDATE SET max_cpus = ?2",
                    params!["a", 4u32],
                )
            })
            .unwrap();
            let names: Vec<String> = db
                .query("SELECT name FROM teams ORDER BY name", &[])
                .unwrap()
                .iter()
                .map(|r| r.text(0).unwrap())
                .collect();
            assert_eq!(names, ["a", "c"], "{}", db.kind());
            let count = db
                .query_row(
                    "SELECT COUNT(*) FROM teams WHERE max_cpus = ?1",
                    params![4u32],
                )
                .unwrap()
                .unwrap();
            assert_eq!(count.count(0).unwrap(), 1);

            // Opening it again takes no step twice.
            drop(db);
            let db = Db::open(location).unwrap();
            let steps = db
                .query_row("SELECT COUNT(*) FROM schema_migrations", &[])
                .unwrap()
                .unwrap();
            assert_eq!(steps.count(0).unwrap(), migrations::count() as u64);
        });
    }

    /// Several processes start against one database at once: each finds it migrated, and
    /// every step is taken once.
    #[test]
    fn concurrent_opens_take_each_step_once() {
        on_each_backend(|location, _| {
            let opened: Vec<Db> = std::thread::scope(|scope| {
                let openers: Vec<_> = (0..4)
                    .map(|_| scope.spawn(|| Db::open(location).unwrap()))
                    .collect();
                openers.into_iter().map(|o| o.join().unwrap()).collect()
            });
            let steps = opened[0]
                .query(
                    "SELECT version FROM schema_migrations ORDER BY version",
                    &[],
                )
                .unwrap();
            assert_eq!(steps.len(), migrations::count());
        });
    }

    /// A PostgreSQL server that goes away is reported as unavailable, and used again once it
    /// is back, without opening the database again.
    #[test]
    fn a_database_server_that_comes_back_is_used_again() {
        on_each_backend(|location, server| {
            let Some(server) = server else { return };
            let db = Db::open(location).unwrap();
            db.execute("INSERT INTO teams (name) VALUES (?1)", params!["kept"])
                .unwrap();
            server.kill();
            let down = db.query("SELECT name FROM teams", &[]).unwrap_err();
            assert!(down.is_unavailable(), "{down:?}");
            server.restart();
            let rows = db.query("SELECT name FROM teams", &[]).unwrap();
            assert_eq!(rows[0].text(0).unwrap(), "kept");
        });
    }

    /// One process holds a PostgreSQL database; a second claim is refused while the first
    /// holds it, also after the first's connection was made again.
    #[test]
    fn a_claimed_database_is_refused_to_a_second_claim() {
        on_each_backend(|location, server| {
            let first = Db::open(location).unwrap();
            first.claim("node a").unwrap();
            let Some(server) = server else { return };
            let second = Db::open(location).unwrap();
            assert!(
                matches!(second.claim("node a"), Err(DbError::Claimed(what)) if what == "node a")
            );
            second.claim("node b").unwrap();
            // The server restarts: the first takes its claim again with its new connection.
            server.kill();
            server.restart();
            first.query("SELECT 1", &[]).unwrap();
            assert!(matches!(second.claim("node a"), Err(DbError::Claimed(_))));
            drop(first);
            wait_for(|| second.claim("node a").is_ok());
        });
    }

    /// Polls `done` for up to ten seconds.
    fn wait_for(done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "not within 10 s");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    #[test]
    fn a_wrong_url_is_said_at_open_without_its_password() {
        let port = cove_test_util::free_port();
        let location = Location::parse(&format!("postgres://cove:secret@127.0.0.1:{port}/cove"));
        let err = Db::open(&location).unwrap_err();
        let message = format!("{err}");
        assert!(
            message.contains(&format!("cove:***@127.0.0.1:{port}")),
            "{message}"
        );
        assert!(!message.contains("secret"), "{message}");
        assert!(err.is_unavailable(), "{err:?}");
    }
}
