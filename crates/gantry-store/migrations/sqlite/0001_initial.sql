-- Gantry's schema on SQLite. Times are milliseconds since the Unix epoch; lists are JSON arrays.

CREATE TABLE projects (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    spec        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id   INTEGER NOT NULL REFERENCES projects (id),
    forge        TEXT    NOT NULL,
    delivery_id  TEXT    NOT NULL,
    event        TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    trace_id     TEXT    NOT NULL,
    status       TEXT    NOT NULL DEFAULT 'pending',
    reason       TEXT,
    pipeline_id  INTEGER,
    received_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX deliveries_key ON deliveries (project_id, forge, delivery_id);
CREATE INDEX deliveries_pending ON deliveries (id) WHERE status = 'pending';

CREATE TABLE pipelines (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id   INTEGER NOT NULL REFERENCES projects (id),
    delivery_id  INTEGER UNIQUE REFERENCES deliveries (id),
    git_ref      TEXT    NOT NULL,
    tag          INTEGER NOT NULL,
    sha          TEXT    NOT NULL,
    before_sha   TEXT,
    source       TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    trace_id     TEXT    NOT NULL,
    errors       TEXT    NOT NULL,
    spec         TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    version      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX pipelines_project ON pipelines (project_id, id);
CREATE INDEX pipelines_active ON pipelines (id)
    WHERE status NOT IN ('success', 'failed', 'canceled', 'skipped');

CREATE TABLE jobs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline_id       INTEGER NOT NULL REFERENCES pipelines (id),
    project_id        INTEGER NOT NULL,
    name              TEXT    NOT NULL,
    stage             TEXT    NOT NULL,
    stage_index       INTEGER NOT NULL,
    position          INTEGER NOT NULL,
    attempt           INTEGER NOT NULL,
    status            TEXT    NOT NULL,
    job_when          TEXT    NOT NULL,
    allow_failure     INTEGER NOT NULL,
    needs             TEXT,
    tags              TEXT    NOT NULL,
    resource_group    TEXT,
    interruptible     INTEGER NOT NULL,
    spec              TEXT    NOT NULL,
    created_at        INTEGER NOT NULL,
    queued_at         INTEGER,
    started_at        INTEGER,
    finished_at       INTEGER,
    run_after         INTEGER,
    agent_id          INTEGER,
    agent_name        TEXT,
    lease_until       INTEGER,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    exit_code         INTEGER,
    failure_reason    TEXT,
    coverage          REAL,
    log_size          INTEGER NOT NULL DEFAULT 0,
    has_artifacts     INTEGER NOT NULL DEFAULT 0,
    retried           INTEGER NOT NULL DEFAULT 0
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
    job_id  INTEGER NOT NULL REFERENCES jobs (id),
    pos     INTEGER NOT NULL,
    bytes   BLOB    NOT NULL,
    PRIMARY KEY (job_id, pos)
);

CREATE TABLE artifacts (
    job_id   INTEGER PRIMARY KEY REFERENCES jobs (id),
    archive  BLOB NOT NULL
);

CREATE TABLE agents (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT    NOT NULL,
    token_hash     TEXT    NOT NULL UNIQUE,
    tags           TEXT    NOT NULL,
    run_untagged   INTEGER NOT NULL,
    executor       TEXT    NOT NULL,
    concurrency    INTEGER NOT NULL,
    version        TEXT    NOT NULL,
    registered_at  INTEGER NOT NULL,
    last_seen_at   INTEGER
);
