-- Counters that move with every change of a kind of row, so that a process can tell cheaply
-- whether another one changed them (`keys`: API keys added or revoked).
CREATE TABLE IF NOT EXISTS versions (
    name     TEXT PRIMARY KEY,
    version  INTEGER NOT NULL
);
INSERT INTO versions (name, version) VALUES ('keys', 0) ON CONFLICT (name) DO NOTHING;
