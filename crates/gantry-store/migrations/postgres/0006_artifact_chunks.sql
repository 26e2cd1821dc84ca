-- Artifacts move from one blob per job to chunk rows, so that neither storing nor serving an
-- archive holds more than a chunk in memory. An upload writes its chunks under a fresh id from
-- `artifact_uploads`; committing it points the job's `artifacts` row at it (with its size and chunk
-- count) in one statement and deletes the upload it replaces (its chunks go with it, `ON DELETE
-- CASCADE`), so a reader never sees a half-written or mixed archive.
CREATE TABLE artifact_uploads (
    id      BIGSERIAL PRIMARY KEY,
    job_id  BIGINT  NOT NULL REFERENCES jobs (id)
);
CREATE INDEX artifact_uploads_job ON artifact_uploads (job_id);

CREATE TABLE artifact_chunks (
    upload_id  BIGINT  NOT NULL REFERENCES artifact_uploads (id) ON DELETE CASCADE,
    seq        BIGINT  NOT NULL,
    data       BYTEA   NOT NULL,
    PRIMARY KEY (upload_id, seq)
);

CREATE TABLE artifacts_chunked (
    job_id     BIGINT  PRIMARY KEY REFERENCES jobs (id),
    upload_id  BIGINT  NOT NULL REFERENCES artifact_uploads (id),
    size       BIGINT  NOT NULL,
    chunks     BIGINT  NOT NULL
);

-- Archives stored whole before become uploads of 1 MiB chunks (the upload id is the job id, which
-- no upload has used yet).
INSERT INTO artifact_uploads (id, job_id) SELECT job_id, job_id FROM artifacts;
WITH RECURSIVE parts (job_id, seq) AS (
    SELECT job_id, 0 FROM artifacts
    UNION ALL
    SELECT p.job_id, p.seq + 1 FROM parts p JOIN artifacts a ON a.job_id = p.job_id
    WHERE (p.seq + 1) * 1048576 < length(a.archive)
)
INSERT INTO artifact_chunks (upload_id, seq, data)
SELECT a.job_id, p.seq, substring(a.archive FROM p.seq * 1048576 + 1 FOR 1048576)
FROM parts p JOIN artifacts a ON a.job_id = p.job_id;
INSERT INTO artifacts_chunked (job_id, upload_id, size, chunks)
SELECT a.job_id, a.job_id, length(a.archive),
       (SELECT COUNT(*) FROM artifact_chunks c WHERE c.upload_id = a.job_id)
FROM artifacts a;

DROP TABLE artifacts;
ALTER TABLE artifacts_chunked RENAME TO artifacts;
ALTER INDEX artifacts_chunked_pkey RENAME TO artifacts_pkey;
SELECT setval(pg_get_serial_sequence('artifact_uploads', 'id'),
              COALESCE((SELECT MAX(id) FROM artifact_uploads), 0) + 1, false);
