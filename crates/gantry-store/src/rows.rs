//! Column lists and row-to-record mapping shared by both backends.
//!
//! The macros expand in the backend's module and call its `get(row, column)` (a typed column read)
//! and `list(row, column)` / `opt_list(row, column)` / `opt_ids(row, column)` (how that backend
//! stores a list of strings or ids: a JSON array on SQLite, `text[]` / `bigint[]` on PostgreSQL).

/// The columns of `jobs` that [`job_record!`] reads.
pub(crate) const JOB_COLS: &str = "id, pipeline_id, name, stage, stage_index, position, attempt, \
     status, job_when, allow_failure, needs, tags, resource_group, interruptible, spec, created_at, \
     queued_at, started_at, finished_at, run_after, agent_id, agent_name, lease_until, \
     cancel_requested, exit_code, failure_reason, coverage, log_size, has_artifacts, retried";

/// The columns of `pipelines` (aliased `p`, joined with `projects` as `pr`) that
/// [`pipeline_record!`] reads, but for `version` (each backend's `VERSION`).
///
/// A pipeline's version is `pipelines.version` (bumped by `apply`) plus the sum of its jobs'
/// `bumps` (bumped by claims, finishes and lease expiry), so that agents working on one pipeline
/// never contend for its row.
pub(crate) const PIPELINE_COLS: &str = "p.id, p.project_id, pr.name AS project_name, p.git_ref, \
     p.tag, p.sha, p.before_sha, p.source, p.status, p.trace_id, p.errors, p.spec, p.created_at, \
     p.started_at, p.finished_at";

/// The columns of `deliveries` that [`delivery_record!`] reads, without `payload`.
pub(crate) const DELIVERY_COLS: &str = "id, project_id, forge, delivery_id, event, trace_id, \
     status, reason, pipeline_id, received_at, attempts, retry_at, last_error";

/// The columns of `agents` that [`agent_record!`] reads.
pub(crate) const AGENT_COLS: &str = "id, name, tags, run_untagged, executor, concurrency, version, \
     registered_at, last_seen_at, projects, protected_only";

/// The columns of `project_tokens` (aliased `t`, joined with `projects` as `pr`) that
/// [`project_token_record!`] reads.
pub(crate) const PROJECT_TOKEN_COLS: &str = "t.id, t.project_id, pr.name AS project_name, t.name, \
     t.token_hash, t.created_at, t.expires_at, t.read_only";

/// The columns of `projects` that [`project_record!`] reads.
pub(crate) const PROJECT_COLS: &str = "id, name, spec, created_at";

/// Statuses after which a pipeline is over.
pub(crate) const OVER: &str = "('success', 'failed', 'canceled', 'skipped')";

/// Pipeline statuses that the first claim of one of its jobs turns into `running`.
pub(crate) const NOT_STARTED: &str = "('created', 'pending', 'manual', 'scheduled')";

/// How many jobs one multi-row `INSERT` carries (17 parameters each, well under both limits).
pub(crate) const INSERT_BATCH: usize = 500;

macro_rules! job_record {
    ($row:expr) => {{
        let row = $row;
        crate::JobRecord {
            id: get(row, "id")?,
            pipeline_id: get(row, "pipeline_id")?,
            name: get(row, "name")?,
            stage: get(row, "stage")?,
            stage_index: get(row, "stage_index")?,
            position: get(row, "position")?,
            attempt: get(row, "attempt")?,
            status: get(row, "status")?,
            when: get(row, "job_when")?,
            allow_failure: get(row, "allow_failure")?,
            needs: opt_list(row, "needs")?,
            tags: list(row, "tags")?,
            resource_group: get(row, "resource_group")?,
            interruptible: get(row, "interruptible")?,
            spec: get(row, "spec")?,
            created_at: get(row, "created_at")?,
            queued_at: get(row, "queued_at")?,
            started_at: get(row, "started_at")?,
            finished_at: get(row, "finished_at")?,
            run_after: get(row, "run_after")?,
            agent_id: get(row, "agent_id")?,
            agent_name: get(row, "agent_name")?,
            lease_until: get(row, "lease_until")?,
            cancel_requested: get(row, "cancel_requested")?,
            exit_code: get(row, "exit_code")?,
            failure_reason: get(row, "failure_reason")?,
            coverage: get(row, "coverage")?,
            log_size: get(row, "log_size")?,
            has_artifacts: get(row, "has_artifacts")?,
            retried: get(row, "retried")?,
        }
    }};
}

macro_rules! pipeline_record {
    ($row:expr) => {{
        let row = $row;
        crate::PipelineRecord {
            id: get(row, "id")?,
            project_id: get(row, "project_id")?,
            project_name: get(row, "project_name")?,
            git_ref: get(row, "git_ref")?,
            tag: get(row, "tag")?,
            sha: get(row, "sha")?,
            before_sha: get(row, "before_sha")?,
            source: get(row, "source")?,
            status: get(row, "status")?,
            trace_id: get(row, "trace_id")?,
            errors: get(row, "errors")?,
            spec: get(row, "spec")?,
            created_at: get(row, "created_at")?,
            started_at: get(row, "started_at")?,
            finished_at: get(row, "finished_at")?,
            version: get(row, "version")?,
            jobs: Vec::new(),
        }
    }};
}

macro_rules! delivery_record {
    ($row:expr, $payload:expr) => {{
        let row = $row;
        crate::DeliveryRecord {
            id: get(row, "id")?,
            project_id: get(row, "project_id")?,
            forge: get(row, "forge")?,
            delivery_id: get(row, "delivery_id")?,
            event: get(row, "event")?,
            payload: $payload,
            trace_id: get(row, "trace_id")?,
            status: get(row, "status")?,
            reason: get(row, "reason")?,
            pipeline_id: get(row, "pipeline_id")?,
            received_at: get(row, "received_at")?,
            attempts: get(row, "attempts")?,
            retry_at: get(row, "retry_at")?,
            last_error: get(row, "last_error")?,
        }
    }};
}

macro_rules! agent_record {
    ($row:expr) => {{
        let row = $row;
        crate::AgentRecord {
            id: get(row, "id")?,
            name: get(row, "name")?,
            tags: list(row, "tags")?,
            run_untagged: get(row, "run_untagged")?,
            executor: get(row, "executor")?,
            concurrency: get(row, "concurrency")?,
            version: get(row, "version")?,
            registered_at: get(row, "registered_at")?,
            last_seen_at: get(row, "last_seen_at")?,
            projects: opt_ids(row, "projects")?,
            protected_only: get(row, "protected_only")?,
        }
    }};
}

macro_rules! project_record {
    ($row:expr) => {{
        let row = $row;
        crate::ProjectRecord {
            id: get(row, "id")?,
            name: get(row, "name")?,
            spec: get(row, "spec")?,
            created_at: get(row, "created_at")?,
        }
    }};
}

macro_rules! project_token_record {
    ($row:expr) => {{
        let row = $row;
        crate::ProjectTokenRecord {
            id: get(row, "id")?,
            project_id: get(row, "project_id")?,
            project_name: get(row, "project_name")?,
            name: get(row, "name")?,
            token_hash: get(row, "token_hash")?,
            created_at: get(row, "created_at")?,
            expires_at: get(row, "expires_at")?,
            read_only: get(row, "read_only")?,
        }
    }};
}

/// When a new job is queued: a job created `pending` is queued at its creation.
pub(crate) fn queued_at(job: &crate::NewJob) -> Option<crate::Millis> {
    (job.status == "pending").then_some(job.created_at)
}

/// `page` as `(LIMIT, OFFSET)`; pages start at 1 and hold at least one row.
pub(crate) fn limit_offset(page: crate::Page) -> (i64, i64) {
    let per_page = page.per_page.max(1);
    let page = page.page.max(1);
    (per_page, (page - 1).saturating_mul(per_page))
}

/// The part of `chunks` (each `(pos, bytes)`, consecutive, ascending) inside `start..end`.
pub(crate) fn assemble(chunks: Vec<(i64, Vec<u8>)>, start: i64, end: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(usize::try_from(end - start).unwrap_or(0).min(1 << 20));
    for (pos, bytes) in chunks {
        let len = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        let from = (start - pos).clamp(0, len);
        let to = (end - pos).clamp(0, len);
        if from < to {
            // Both bounds are within 0..=len, so they fit a usize.
            out.extend_from_slice(&bytes[from as usize..to as usize]);
        }
    }
    out
}
