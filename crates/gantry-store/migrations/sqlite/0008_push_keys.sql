-- A push's identity (`ref`, `before`, `after`), so that a signed push body replayed under a new
-- delivery id is a duplicate of the first (issue 16, finding 12). Unique per project while set;
-- keys older than the server's window are cleared before each insert, so the same push may run
-- again after it.
ALTER TABLE deliveries ADD COLUMN push_key TEXT;
CREATE UNIQUE INDEX deliveries_push_key ON deliveries (project_id, push_key) WHERE push_key IS NOT NULL;
CREATE INDEX deliveries_push_key_age ON deliveries (received_at) WHERE push_key IS NOT NULL;
