//! The schema's steps, in order: `migrations/<backend>/NNNN_name.sql`, the same numbers and
//! names for both backends. A database records the steps it took (`schema_migrations`);
//! opening one takes the steps it lacks, in one transaction, while other processes opening
//! it wait (SQLite's write lock, a PostgreSQL advisory lock), so several Cove processes can
//! start at once against one database.

use crate::{Db, DbError, Result, params};

/// One step of the schema.
struct Migration {
    version: u32,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

macro_rules! step {
    ($version:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $file,
            sqlite: include_str!(concat!("../migrations/sqlite/", $file, ".sql")),
            postgres: include_str!(concat!("../migrations/postgres/", $file, ".sql")),
        }
    };
}

const MIGRATIONS: &[Migration] = &[
    step!(1, "0001_state"),
    step!(2, "0002_template_runtime"),
    step!(3, "0003_versions"),
    step!(4, "0004_nodes"),
    step!(5, "0005_snapshot_node"),
];

/// How many steps there are.
#[cfg(test)]
pub fn count() -> usize {
    MIGRATIONS.len()
}

/// What the advisory lock of PostgreSQL migrations is called (any number all Coves agree on).
const LOCK_KEY: i64 = 0x636f_7665_6462;

/// Takes the steps `db` lacks.
pub fn apply(db: &Db) -> Result<()> {
    let postgres = db.kind() == "postgres";
    db.transaction(|sql| {
        if postgres {
            sql.batch(&format!("SELECT pg_advisory_xact_lock({LOCK_KEY})"))?;
        }
        sql.batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version     BIGINT PRIMARY KEY,
                name        TEXT NOT NULL,
                applied_at  BIGINT NOT NULL
            )",
        )?;
        let applied = sql
            .query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )?
            .iter()
            .map(|row| row.int(0))
            .collect::<Result<Vec<_>>>()?;
        if let Some(newer) = applied
            .iter()
            .find(|v| !MIGRATIONS.iter().any(|m| i64::from(m.version) == **v))
        {
            return Err(DbError::Newer { version: *newer });
        }
        for migration in MIGRATIONS
            .iter()
            .filter(|m| !applied.contains(&i64::from(m.version)))
        {
            let text = if postgres {
                migration.postgres
            } else {
                migration.sqlite
            };
            sql.batch(text).map_err(|source| DbError::Migration {
                version: migration.version,
                name: migration.name,
                source: Box::new(source),
            })?;
            sql.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![migration.version, migration.name, now_ms()],
            )?;
            tracing::info!(
                version = migration.version,
                name = migration.name,
                backend = db.kind(),
                "database migrated"
            );
        }
        Ok(())
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database of a server from before migrations (its tables made with `IF NOT EXISTS`
    /// at each start) takes the steps and keeps its rows.
    #[test]
    fn a_database_from_before_migrations_takes_the_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0].sqlite).unwrap();
            conn.execute_batch(
                "INSERT INTO template_templates (id, team, cpu_count, memory_mb, created_at, updated_at)
                   VALUES ('old', 'team', 2, 512, 1, 1);
                 INSERT INTO api_keys (id, team, name, hash, prefix, created_at)
                   VALUES ('k', 'team', 'n', 'h', 'p', 1);",
            )
            .unwrap();
        }
        let db = Db::open(&crate::Location::File(path)).unwrap();
        let row = db
            .query_row("SELECT memory_mb, runtime FROM template_templates", &[])
            .unwrap()
            .unwrap();
        assert_eq!((row.int(0).unwrap(), row.opt_text(1).unwrap()), (512, None));
        let keys = db
            .query_row("SELECT version FROM versions WHERE name = 'keys'", &[])
            .unwrap()
            .unwrap();
        assert_eq!(keys.int(0).unwrap(), 0);
        assert_eq!(db.query("SELECT id FROM api_keys", &[]).unwrap().len(), 1);
    }

    #[test]
    fn a_database_of_a_newer_cove_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let location = crate::Location::File(dir.path().join("state.db"));
        let db = Db::open(&location).unwrap();
        db.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![999u32, "9999_future", 0i64],
        )
        .unwrap();
        drop(db);
        let err = Db::open(&location).unwrap_err();
        assert!(
            matches!(err, DbError::Open { ref source, .. } if matches!(**source, DbError::Newer { version: 999 })),
            "{err:?}"
        );
    }

    /// Both backends take the same steps: numbered in order, with a file for each.
    #[test]
    fn both_backends_have_every_step() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
            assert!(!m.sqlite.trim().is_empty() && !m.postgres.trim().is_empty());
        }
        for backend in ["sqlite", "postgres"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(backend);
            let files = std::fs::read_dir(&dir).unwrap().count();
            assert_eq!(
                files,
                MIGRATIONS.len(),
                "{} has a step not listed",
                dir.display()
            );
        }
    }
}
