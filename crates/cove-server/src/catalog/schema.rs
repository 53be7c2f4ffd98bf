//! The catalogue's tables (prefixed `template_`, beside the store's own).

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS template_templates (
    id               TEXT PRIMARY KEY,
    team             TEXT NOT NULL,
    cpu_count        INTEGER NOT NULL,
    memory_mb        INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    spawn_count      INTEGER NOT NULL DEFAULT 0,
    last_spawned_at  INTEGER,
    runtime          TEXT
);
CREATE TABLE IF NOT EXISTS template_names (
    name      TEXT PRIMARY KEY,
    template  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS template_builds (
    id           TEXT PRIMARY KEY,
    template     TEXT NOT NULL,
    status       TEXT NOT NULL,
    triggered    INTEGER NOT NULL DEFAULT 0,
    tags         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    result       TEXT,
    reason       TEXT
);
CREATE INDEX IF NOT EXISTS template_builds_by_template ON template_builds (template);
CREATE TABLE IF NOT EXISTS template_tags (
    template    TEXT NOT NULL,
    tag         TEXT NOT NULL,
    build       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (template, tag)
);
CREATE TABLE IF NOT EXISTS template_build_logs (
    build  TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    entry  TEXT NOT NULL,
    PRIMARY KEY (build, seq)
);
CREATE TABLE IF NOT EXISTS template_step_cache (
    key         TEXT PRIMARY KEY,
    layer       TEXT,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS template_files (
    team        TEXT NOT NULL,
    hash        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (team, hash)
);
";

/// Columns added to tables after their first release, as `(table, column, type)`: a
/// catalogue made by an older server gets them when opened (`CREATE TABLE IF NOT EXISTS`
/// leaves an existing table as it was).
pub const ADDED_COLUMNS: &[(&str, &str, &str)] = &[("template_templates", "runtime", "TEXT")];

/// Adds the [`ADDED_COLUMNS`] `conn`'s tables lack.
pub fn add_columns(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    for (table, column, kind) in ADDED_COLUMNS {
        let mut statement =
            conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        let present = statement
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if !present.iter().any(|name| name == column) {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}
