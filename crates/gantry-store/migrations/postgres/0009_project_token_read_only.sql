-- A read-only project token reads its project's pipelines, jobs, logs and artifacts, and changes
-- nothing: it cannot trigger, cancel, retry, play or approve. Existing tokens keep writing.
ALTER TABLE project_tokens ADD COLUMN read_only BOOLEAN NOT NULL DEFAULT FALSE;
