-- The state as servers before migrations made it (each table only if missing, so a
-- database of such a server takes this step without change).
CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    team        TEXT NOT NULL,
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE TABLE IF NOT EXISTS teams (
    name           TEXT PRIMARY KEY,
    max_sandboxes  INTEGER,
    max_memory_mb  INTEGER,
    max_cpus       INTEGER
);
CREATE TABLE IF NOT EXISTS sandboxes (
    id          TEXT PRIMARY KEY,
    team        TEXT NOT NULL,
    record      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS volumes (
    id          TEXT PRIMARY KEY,
    team        TEXT NOT NULL,
    name        TEXT NOT NULL,
    record      TEXT NOT NULL,
    UNIQUE (team, name)
);
CREATE TABLE IF NOT EXISTS templates (
    id          TEXT PRIMARY KEY,
    team        TEXT NOT NULL,
    entry       TEXT NOT NULL
);
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
