-- A push's identity (`ref`, `before`, `after`), so that a signed push body replayed under a new
-- delivery id is a duplicate of the first (issue 16, finding 12). Unique per project while set;
-- a key older than the delivery's window is cleared when a push meets it, and that push is stored.
ALTER TABLE deliveries ADD COLUMN push_key TEXT;
CREATE UNIQUE INDEX deliveries_push_key ON deliveries (project_id, push_key) WHERE push_key IS NOT NULL;
