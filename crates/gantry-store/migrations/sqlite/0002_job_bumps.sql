-- Claims, finishes and lease expiry count their changes on the job row instead of bumping the
-- pipeline's version: a pipeline's version is `pipelines.version + SUM(jobs.bumps)`, so agents
-- claiming and finishing jobs of one pipeline do not all update (and on PostgreSQL, lock until
-- the commit is flushed) the same pipeline row.
ALTER TABLE jobs ADD COLUMN bumps INTEGER NOT NULL DEFAULT 0;
