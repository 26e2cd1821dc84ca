-- Deployments (issue 19): one row per job (attempt) with `environment:` (`action: start`), made
-- when the job is claimed (or, for a rollback, when its attempt is made). Its status and end are
-- its job's, read with it, so that every way a job ends ends its deployment; only the
-- `rolled_back_by` mark is its own. `variables`, `artifacts` and `measurements` are the server's
-- JSON, kept opaque.
CREATE TABLE deployments (
    id              BIGSERIAL PRIMARY KEY,
    project_id      BIGINT  NOT NULL REFERENCES projects (id),
    environment     TEXT    NOT NULL,
    url             TEXT,
    tier            TEXT,
    job_id          BIGINT  NOT NULL UNIQUE REFERENCES jobs (id),
    pipeline_id     BIGINT  NOT NULL,
    job_name        TEXT    NOT NULL,
    sha             TEXT    NOT NULL,
    git_ref         TEXT    NOT NULL,
    triggered_by    TEXT    NOT NULL,
    variables       TEXT    NOT NULL DEFAULT '[]',
    artifacts       TEXT    NOT NULL DEFAULT '[]',
    created_at      BIGINT  NOT NULL,
    rollback_of     BIGINT  REFERENCES deployments (id),
    rolled_back_by  BIGINT  REFERENCES deployments (id),
    measurements    TEXT    NOT NULL DEFAULT '[]'
);
-- An environment's deployments, newest first; its last and current ones.
CREATE INDEX deployments_environment ON deployments (project_id, environment, id);
