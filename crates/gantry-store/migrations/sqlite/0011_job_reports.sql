-- A job's report summaries (issue 18): the JSON its agent sent (`gantry_reports::Reports`) and a
-- gate job's verdict (`gantry_reports::GateOutcome`), kept opaque, beside the plain numbers that
-- lists and the coverage trend read without parsing them. One row per job attempt; a retried
-- save replaces it.
CREATE TABLE job_reports (
    job_id        INTEGER PRIMARY KEY REFERENCES jobs (id),
    pipeline_id   INTEGER NOT NULL,
    reports       BLOB,
    gate          BLOB,
    coverage      REAL,
    tests_total   INTEGER,
    tests_failed  INTEGER,
    gate_passed   INTEGER
);
CREATE INDEX job_reports_pipeline ON job_reports (pipeline_id);
-- The coverage trend reads a ref's pipelines newest first.
CREATE INDEX pipelines_ref ON pipelines (project_id, git_ref, id);
