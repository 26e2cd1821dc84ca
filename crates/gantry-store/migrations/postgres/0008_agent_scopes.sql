-- Agents scoped like GitLab's runners: to some projects (project ids; NULL: any) and/or to
-- pipelines of protected refs. A pipeline records whether its ref is protected, which a claim by a
-- protected-only agent reads. `settings` holds what every server must agree on, such as the hash
-- of the current registration token once it was rotated.
ALTER TABLE agents ADD COLUMN projects BIGINT[];
ALTER TABLE agents ADD COLUMN protected_only BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE pipelines ADD COLUMN protected BOOLEAN NOT NULL DEFAULT FALSE;
CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
