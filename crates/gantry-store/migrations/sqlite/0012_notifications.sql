-- Notifications (issue 19): a `notify:` rule's message about a pipeline, stored before it is
-- sent so that a restart does not lose it. `target` is the rule's target with its variables
-- expanded, sealed by the server (it holds the hook's token); `event` is the event's JSON
-- (`gantry_notify::Event`). A pending one is sent at `next_attempt_at` (milliseconds); a failed
-- attempt counts in `attempts`, keeps `last_error` and moves `next_attempt_at`, until it is
-- `sent` or `failed` for good.
CREATE TABLE notifications (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline_id      INTEGER NOT NULL,
    target           TEXT    NOT NULL,
    event            TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    next_attempt_at  INTEGER NOT NULL,
    created_at       INTEGER NOT NULL
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notifications_pipeline ON notifications (pipeline_id);
