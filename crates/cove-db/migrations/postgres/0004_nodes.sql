-- The machines of a cluster that run sandboxes (nodes), as each reports itself: where it is
-- reached, whether it reports itself (`up`) or stopped (`down`), whether it is being drained
-- (takes no new sandboxes, lets its own finish), and what it has free (JSON) at its last
-- heartbeat.
CREATE TABLE IF NOT EXISTS nodes (
    id            TEXT PRIMARY KEY,
    address       TEXT NOT NULL,
    state         TEXT NOT NULL,
    draining      BIGINT NOT NULL DEFAULT 0,
    capacity      TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL
);
-- The node a sandbox runs on (NULL: a server that is not part of a cluster).
ALTER TABLE sandboxes ADD COLUMN node TEXT;
CREATE INDEX IF NOT EXISTS sandboxes_by_node ON sandboxes (node);
