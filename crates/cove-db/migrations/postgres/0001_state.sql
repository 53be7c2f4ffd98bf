-- The state as the first servers with PostgreSQL made it.
CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    team        TEXT NOT NULL,
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE TABLE IF NOT EXISTS teams (
    name           TEXT PRIMARY KEY,
    max_sandboxes  BIGINT,
    max_memory_mb  BIGINT,
    max_cpus       BIGINT
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
    cpu_count        BIGINT NOT NULL,
    memory_mb        BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    spawn_count      BIGINT NOT NULL DEFAULT 0,
    last_spawned_at  BIGINT
);
CREATE TABLE IF NOT EXISTS template_names (
    name      TEXT PRIMARY KEY,
    template  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS template_builds (
    id           TEXT PRIMARY KEY,
    template     TEXT NOT NULL,
    status       TEXT NOT NULL,
    triggered    BIGINT NOT NULL DEFAULT 0,
    tags         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    result       TEXT,
    reason       TEXT
);
CREATE INDEX IF NOT EXISTS template_builds_by_template ON template_builds (template);
CREATE TABLE IF NOT EXISTS template_tags (
    template    TEXT NOT NULL,
    tag         TEXT NOT NULL,
    build       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (template, tag)
);
CREATE TABLE IF NOT EXISTS template_build_logs (
    build  TEXT NOT NULL,
    seq    BIGINT NOT NULL,
    entry  TEXT NOT NULL,
    PRIMARY KEY (build, seq)
);
CREATE TABLE IF NOT EXISTS template_step_cache (
    key         TEXT PRIMARY KEY,
    layer       TEXT,
    created_at  BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS template_files (
    team        TEXT NOT NULL,
    hash        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (team, hash)
);
