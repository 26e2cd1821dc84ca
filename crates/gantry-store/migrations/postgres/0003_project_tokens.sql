-- Project tokens: API tokens that act on one project only. Only the SHA-256 of the secret is kept;
-- a request's token is looked up by its hash (the unique index). Revoking deletes the row.
CREATE TABLE project_tokens (
    id          BIGSERIAL PRIMARY KEY,
    project_id  BIGINT  NOT NULL REFERENCES projects (id),
    name        TEXT    NOT NULL,
    token_hash  TEXT    NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT
);

CREATE INDEX project_tokens_by_project ON project_tokens (project_id, id);
