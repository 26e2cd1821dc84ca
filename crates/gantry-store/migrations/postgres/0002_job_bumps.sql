-- Claims, finishes and lease expiry count their changes on the job row instead of bumping the
-- pipeline's version: a pipeline's version is `pipelines.version + SUM(jobs.bumps)`, so agents
-- claiming and finishing jobs of one pipeline do not all update (and on PostgreSQL, lock until
-- the commit is flushed) the same pipeline row.
ALTER TABLE jobs ADD COLUMN bumps BIGINT NOT NULL DEFAULT 0;

-- Jobs are a queue: rows are updated often, so vacuum and analyze them sooner than the defaults.
ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
