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
    last_spawned_at  INTEGER
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
