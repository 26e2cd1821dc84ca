-- Transient failures of a delivery (a repository that cannot be fetched, a store error) leave it
-- pending and retry it later: `attempts` counts the failed attempts, `retry_at` (milliseconds) is
-- when the next one may start (`pending_deliveries` skips it before then), `last_error` says why
-- the last attempt failed.
ALTER TABLE deliveries ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN retry_at BIGINT;
ALTER TABLE deliveries ADD COLUMN last_error TEXT;
