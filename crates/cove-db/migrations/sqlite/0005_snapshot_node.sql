-- The node a snapshot's layers are on (NULL: a server that is not part of a cluster): its
-- sandboxes start there.
ALTER TABLE templates ADD COLUMN node TEXT;
