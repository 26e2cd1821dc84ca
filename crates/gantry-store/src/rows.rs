//! Column lists and small helpers shared by both backends; [`crate::query::Sql`] reads the rows.

/// The columns of `jobs` that `Sql::job_row` reads.
pub(crate) const JOB_COLS: &str = "id, pipeline_id, name, stage, stage_index, position, attempt, \
     status, job_when, allow_failure, needs, tags, resource_group, interruptible, spec, created_at, \
     queued_at, started_at, finished_at, run_after, agent_id, agent_name, lease_until, \
     cancel_requested, exit_code, failure_reason, coverage, log_size, has_artifacts, retried";

/// The columns of `pipelines` (aliased `p`, joined with `projects` as `pr`) that
/// `Sql::pipeline_row` reads, but for `version` (`query::VERSION`).
///
/// A pipeline's version is `pipelines.version` (bumped by `apply`) plus the sum of its jobs'
/// `bumps` (bumped by claims, finishes and lease expiry), so that agents working on one pipeline
/// never contend for its row.
pub(crate) const PIPELINE_COLS: &str = "p.id, p.project_id, pr.name AS project_name, p.git_ref, \
     p.tag, p.sha, p.before_sha, p.source, p.status, p.trace_id, p.errors, p.spec, p.created_at, \
     p.started_at, p.finished_at";

/// The columns of `deliveries` that `Sql::delivery_row` reads, without `payload`.
pub(crate) const DELIVERY_COLS: &str = "id, project_id, forge, delivery_id, event, trace_id, \
     status, reason, pipeline_id, received_at, attempts, retry_at, last_error";

/// The columns of `agents` that `Sql::agent_row` reads.
pub(crate) const AGENT_COLS: &str = "id, name, tags, run_untagged, executor, concurrency, version, \
     registered_at, last_seen_at, projects, protected_only, protocol";

/// The columns of `project_tokens` (aliased `t`, joined with `projects` as `pr`) that
/// `Sql::project_token_row` reads.
pub(crate) const PROJECT_TOKEN_COLS: &str = "t.id, t.project_id, pr.name AS project_name, t.name, \
     t.token_hash, t.created_at, t.expires_at, t.read_only";

/// The columns of `projects` that `Sql::project_row` reads.
pub(crate) const PROJECT_COLS: &str = "id, name, spec, created_at";

/// Statuses after which a pipeline is over.
pub(crate) const OVER: &str = "('success', 'failed', 'canceled', 'skipped')";

/// Pipeline statuses that the first claim of one of its jobs turns into `running`.
pub(crate) const NOT_STARTED: &str = "('created', 'pending', 'manual', 'scheduled')";

/// How many jobs one multi-row `INSERT` carries (17 parameters each, well under both limits).
pub(crate) const INSERT_BATCH: usize = 500;

/// When a new job is queued: a job created `pending` is queued at its creation.
pub(crate) fn queued_at(job: &crate::records::NewJob) -> Option<crate::records::Millis> {
    (job.status == gantry_api::JobStatus::Pending).then_some(job.created_at)
}

/// `page` as `(LIMIT, OFFSET)`; pages start at 1 and hold at least one row.
pub(crate) fn limit_offset(page: crate::records::Page) -> (i64, i64) {
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
