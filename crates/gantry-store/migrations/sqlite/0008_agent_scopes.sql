-- Agents scoped like GitLab's runners: to some projects (a JSON array of project ids; NULL: any)
-- and/or to pipelines of protected refs. A pipeline records whether its ref is protected, which
-- a claim by a protected-only agent reads. `settings` holds what every server must agree on, such
-- as the hash of the current registration token once it was rotated.
ALTER TABLE agents ADD COLUMN projects TEXT;
ALTER TABLE agents ADD COLUMN protected_only INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pipelines ADD COLUMN protected INTEGER NOT NULL DEFAULT 0;
CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
