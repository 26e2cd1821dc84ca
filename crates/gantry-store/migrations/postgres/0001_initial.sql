-- Gantry's schema on PostgreSQL. Times are milliseconds since the Unix epoch.

CREATE TABLE projects (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT   NOT NULL UNIQUE,
    spec        TEXT   NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE deliveries (
    id           BIGSERIAL PRIMARY KEY,
    project_id   BIGINT  NOT NULL REFERENCES projects (id),
    forge        TEXT    NOT NULL,
    delivery_id  TEXT    NOT NULL,
    event        TEXT    NOT NULL,
    payload      BYTEA   NOT NULL,
    trace_id     TEXT    NOT NULL,
    status       TEXT    NOT NULL DEFAULT 'pending',
    reason       TEXT,
    pipeline_id  BIGINT,
    received_at  BIGINT  NOT NULL
);
CREATE UNIQUE INDEX deliveries_key ON deliveries (project_id, forge, delivery_id);
CREATE INDEX deliveries_pending ON deliveries (id) WHERE status = 'pending';

CREATE TABLE pipelines (
    id           BIGSERIAL PRIMARY KEY,
    project_id   BIGINT  NOT NULL REFERENCES projects (id),
    delivery_id  BIGINT  UNIQUE REFERENCES deliveries (id),
    git_ref      TEXT    NOT NULL,
    tag          BOOLEAN NOT NULL,
    sha          TEXT    NOT NULL,
    before_sha   TEXT,
    source       TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    trace_id     TEXT    NOT NULL,
    errors       TEXT    NOT NULL,
    spec         TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT,
    version      BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX pipelines_project ON pipelines (project_id, id);
CREATE INDEX pipelines_active ON pipelines (id)
    WHERE status NOT IN ('success', 'failed', 'canceled', 'skipped');

CREATE TABLE jobs (
    id                BIGSERIAL PRIMARY KEY,
    pipeline_id       BIGINT  NOT NULL REFERENCES pipelines (id),
    project_id        BIGINT  NOT NULL,
    name              TEXT    NOT NULL,
    stage             TEXT    NOT NULL,
    stage_index       BIGINT  NOT NULL,
    position          BIGINT  NOT NULL,
    attempt           BIGINT  NOT NULL,
    status            TEXT    NOT NULL,
    job_when          TEXT    NOT NULL,
    allow_failure     BOOLEAN NOT NULL,
    needs             TEXT[],
    tags              TEXT[]  NOT NULL,
    resource_group    TEXT,
    interruptible     BOOLEAN NOT NULL,
    spec              TEXT    NOT NULL,
    created_at        BIGINT  NOT NULL,
    queued_at         BIGINT,
    started_at        BIGINT,
    finished_at       BIGINT,
    run_after         BIGINT,
    agent_id          BIGINT,
    agent_name        TEXT,
    lease_until       BIGINT,
    cancel_requested  BOOLEAN NOT NULL DEFAULT FALSE,
    exit_code         INTEGER,
    failure_reason    TEXT,
    coverage          DOUBLE PRECISION,
    log_size          BIGINT  NOT NULL DEFAULT 0,
    has_artifacts     BOOLEAN NOT NULL DEFAULT FALSE,
    retried           BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX jobs_pipeline ON jobs (pipeline_id, position, attempt);
-- The queue: only pending rows, in claim order.
CREATE INDEX jobs_pending ON jobs (queued_at, id) WHERE status = 'pending';
-- Leases and resource groups look only at running rows.
CREATE INDEX jobs_running ON jobs (lease_until) WHERE status = 'running';
CREATE INDEX jobs_group_running ON jobs (project_id, resource_group)
    WHERE status = 'running' AND resource_group IS NOT NULL;

-- A job's log as consecutive chunks: `pos` is the chunk's first byte in the log.
CREATE TABLE log_chunks (
    job_id  BIGINT NOT NULL REFERENCES jobs (id),
    pos     BIGINT NOT NULL,
    bytes   BYTEA  NOT NULL,
    PRIMARY KEY (job_id, pos)
);

CREATE TABLE artifacts (
    job_id   BIGINT PRIMARY KEY REFERENCES jobs (id),
    archive  BYTEA NOT NULL
);

CREATE TABLE agents (
    id             BIGSERIAL PRIMARY KEY,
    name           TEXT    NOT NULL,
    token_hash     TEXT    NOT NULL UNIQUE,
    tags           TEXT[]  NOT NULL,
    run_untagged   BOOLEAN NOT NULL,
    executor       TEXT    NOT NULL,
    concurrency    BIGINT  NOT NULL,
    version        TEXT    NOT NULL,
    registered_at  BIGINT  NOT NULL,
    last_seen_at   BIGINT
);
