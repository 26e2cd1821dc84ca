//! A pipeline's next state, with GitLab's semantics, computed from its stored record: which jobs become
//! pending, skipped, manual, scheduled or canceled, which failures are retried (as new attempts), and
//! the pipeline's status. Pure: no IO, the clock is passed in. `progress` applies the result with
//! `Store::apply` and calls again until nothing changes.
//!
//! The rules follow the local runtime's scheduler (`gantry-runtime/src/schedule.rs`), with one
//! difference that only a server has: a manual job that blocks (`allow_failure: false`) leaves the jobs
//! after it `created` instead of skipping them, so that playing it later lets the pipeline go on.

use std::collections::HashMap;

use gantry_api::{JobStatus, PipelineStatus};
use gantry_pipeline::plan::{AllowFailure, FailureReason, Retry, When};
use gantry_store::{Changes, JobChange, JobRecord, Millis, NewJob, PipelineRecord};
use serde::Deserialize;

/// What a finished job means for the jobs that wait for it. Ordered: folding takes the maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Up {
    Ok,
    Failed,
    Blocked,
}

/// The parts of a job's spec that progress needs.
#[derive(Clone, Debug, Deserialize)]
struct MetaDoc {
    job: Meta,
}

/// The parts of a job's spec that progress needs.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Meta {
    pub allow_failure: AllowFailure,
    #[serde(default)]
    pub retry: Retry,
    #[serde(default)]
    pub start_in: Option<std::time::Duration>,
}

impl Meta {
    /// Reads a job's spec; a spec that does not parse counts as the defaults.
    pub fn of(job: &JobRecord) -> Meta {
        serde_json::from_str::<MetaDoc>(&job.spec).map_or_else(
            |_| Meta {
                allow_failure: AllowFailure::Bool(job.allow_failure),
                retry: Retry::default(),
                start_in: None,
            },
            |d| d.job,
        )
    }
}

/// The [`Meta`] of each job, decoded on first use.
struct Metas<'a> {
    jobs: &'a [&'a JobRecord],
    cells: Vec<std::cell::OnceCell<Meta>>,
}

impl<'a> Metas<'a> {
    fn new(jobs: &'a [&'a JobRecord]) -> Self {
        Metas {
            jobs,
            cells: (0..jobs.len())
                .map(|_| std::cell::OnceCell::new())
                .collect(),
        }
    }

    fn get(&self, i: usize) -> &Meta {
        self.cells[i].get_or_init(|| Meta::of(self.jobs[i]))
    }
}

fn when(job: &JobRecord) -> When {
    match job.when.as_str() {
        "on_failure" => When::OnFailure,
        "always" => When::Always,
        "manual" => When::Manual,
        "delayed" => When::Delayed,
        _ => When::OnSuccess,
    }
}

/// A failure reason as stored, for `retry:when`.
pub(crate) fn reason(s: Option<&str>) -> FailureReason {
    match s {
        None | Some("script_failure") => FailureReason::ScriptFailure,
        Some("job_execution_timeout") => FailureReason::JobExecutionTimeout,
        Some("runner_system_failure") => FailureReason::RunnerSystemFailure,
        Some("missing_dependency_failure") => FailureReason::MissingDependencyFailure,
        Some("verification_failure") => FailureReason::VerificationFailure,
        Some(_) => FailureReason::UnknownFailure,
    }
}

/// The latest attempt of each job, in position order.
pub(crate) fn latest(p: &PipelineRecord) -> Vec<&JobRecord> {
    latest_where(&p.jobs, |_| true)
}

/// The latest attempt of each job that counts for its pipeline, in position order: a rollback's
/// attempt runs in its target's pipeline but neither sets the pipeline's status nor holds a job.
fn counted(p: &PipelineRecord) -> Vec<&JobRecord> {
    counted_of(&p.jobs)
}

/// [`counted`] of `jobs` (any attempts): the attempts a later job takes artifacts and reports
/// from, never a rollback's.
pub(crate) fn counted_of(jobs: &[JobRecord]) -> Vec<&JobRecord> {
    latest_where(jobs, |j| !is_rollback(j))
}

/// The latest attempt of each job in `jobs` that `keep` keeps, in position order; `keep` is
/// asked only about an attempt later than the one found so far.
fn latest_where(jobs: &[JobRecord], keep: impl Fn(&JobRecord) -> bool) -> Vec<&JobRecord> {
    let mut by_pos: std::collections::BTreeMap<i64, &JobRecord> = std::collections::BTreeMap::new();
    for j in jobs {
        match by_pos.get(&j.position) {
            Some(cur) if cur.attempt >= j.attempt => {}
            _ if !keep(j) => {}
            _ => {
                by_pos.insert(j.position, j);
            }
        }
    }
    by_pos.into_values().collect()
}

/// Whether attempt `j` performs a rollback (`spec::JobDoc::rollback`). A first attempt never
/// does, so only a later attempt's spec is read.
pub(crate) fn is_rollback(j: &JobRecord) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        rollback: Option<serde::de::IgnoredAny>,
    }
    j.attempt > 1 && serde_json::from_str::<Probe>(&j.spec).is_ok_and(|p| p.rollback.is_some())
}

/// A new attempt of `job`.
pub(crate) fn new_attempt(job: &JobRecord, now: Millis) -> NewJob {
    NewJob {
        name: job.name.clone(),
        stage: job.stage.clone(),
        stage_index: job.stage_index,
        position: job.position,
        attempt: job.attempt + 1,
        status: JobStatus::Created,
        when: job.when.clone(),
        allow_failure: job.allow_failure,
        needs: job.needs.clone(),
        tags: job.tags.clone(),
        resource_group: job.resource_group.clone(),
        interruptible: job.interruptible,
        spec: job.spec.clone(),
        created_at: now,
    }
}

/// What [`advance`] decided.
#[derive(Debug, Default)]
pub(crate) struct Step {
    /// What to write.
    pub changes: Changes,
    /// Some job became pending (agents should be woken).
    pub queued: bool,
    /// The earliest time a scheduled job comes due.
    pub wake_at: Option<Millis>,
    /// Jobs that ended without running, with their status (for metrics).
    pub ended: Vec<JobStatus>,
}

impl Step {
    fn change(&mut self, id: i64) -> &mut JobChange {
        if let Some(i) = self.changes.jobs.iter().position(|c| c.id == id) {
            return &mut self.changes.jobs[i];
        }
        self.changes.jobs.push(JobChange {
            id,
            ..JobChange::default()
        });
        self.changes.jobs.last_mut().expect("just pushed")
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.changes == Changes::default()
    }
}

/// Computes the pipeline's next state at time `now`.
pub(crate) fn advance(p: &PipelineRecord, now: Millis) -> Step {
    let mut step = Step::default();
    if p.jobs.is_empty() {
        return step;
    }
    // A fork pipeline that waits for its approval holds every job (`spec::ForkDoc`); canceling
    // it still cancels them.
    if matches!(p.status, PipelineStatus::Created | PipelineStatus::Manual)
        && crate::spec::fork_of(&p.spec).is_some_and(|f| f.waiting())
    {
        if p.status != PipelineStatus::Manual {
            step.changes.status = Some(PipelineStatus::Manual);
        }
        return step;
    }
    let canceled = p.status == PipelineStatus::Canceled;
    let jobs = counted(p);
    // A job's spec is decoded only when its state asks for it (a failure, a manual or delayed
    // job): not for the many jobs that are pending, running or done.
    let metas = Metas::new(&jobs);
    // Each job's status as this step leaves it; `None` once a new attempt of it is created (it is
    // retrying: not done yet).
    let mut status: Vec<Option<JobStatus>> = jobs.iter().map(|j| Some(j.status)).collect();

    if canceled {
        cancel_unstarted(&mut step, &jobs, &mut status, now);
    } else {
        retry_failures(&mut step, &jobs, &metas, &mut status, now);
    }
    let up = resolve(&mut step, &jobs, &metas, &mut status, canceled, now);
    pipeline_status(&mut step, p, &jobs, &metas, &status, &up, now);
    step
}

/// Failures that `retry` covers become new attempts; the new attempt is created, so the job is
/// not done yet (`retrying`).
fn retry_failures(
    step: &mut Step,
    jobs: &[&JobRecord],
    metas: &Metas<'_>,
    status: &mut [Option<JobStatus>],
    now: Millis,
) {
    for (i, j) in jobs.iter().enumerate() {
        // A retried failure here has a rollback's attempt after it, which took its number.
        if j.status != JobStatus::Failed || j.retried {
            continue;
        }
        let m = metas.get(i);
        let attempts_left = u32::try_from(j.attempt).unwrap_or(u32::MAX) <= m.retry.max;
        if attempts_left
            && m.retry
                .matches(reason(j.failure_reason.as_deref()), j.exit_code)
        {
            step.changes.new_jobs.push(new_attempt(j, now));
            step.change(j.id).retried = Some(true);
            status[i] = None;
        }
    }
}

/// A canceled pipeline: whatever did not start is canceled, whatever runs is asked to stop.
fn cancel_unstarted(
    step: &mut Step,
    jobs: &[&JobRecord],
    status: &mut [Option<JobStatus>],
    now: Millis,
) {
    for (i, j) in jobs.iter().enumerate() {
        match j.status {
            JobStatus::Created | JobStatus::Scheduled | JobStatus::Manual | JobStatus::Pending => {
                set(step, status, i, j.id, JobStatus::Canceled, now);
            }
            JobStatus::Running if !j.cancel_requested => {
                step.change(j.id).cancel_requested = Some(true);
            }
            _ => {}
        }
    }
}

/// Resolves each job once what it waits for is resolved (its `needs`, or the earlier stages):
/// queues, skips, holds or schedules it; answers how each job stands for the jobs after it.
fn resolve(
    step: &mut Step,
    jobs: &[&JobRecord],
    metas: &Metas<'_>,
    status: &mut [Option<JobStatus>],
    canceled: bool,
    now: Millis,
) -> Vec<Option<Up>> {
    let by_name: HashMap<&str, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    let n = jobs.len();
    let mut up: Vec<Option<Up>> = vec![None; n];
    let deps: Vec<Vec<usize>> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| match &j.needs {
            Some(needs) => needs
                .iter()
                .filter_map(|name| by_name.get(name.as_str()).copied())
                .filter(|&d| d != i)
                .collect(),
            None => (0..n)
                .filter(|&d| jobs[d].stage_index < j.stage_index)
                .collect(),
        })
        .collect();
    loop {
        let mut progressed = false;
        for i in 0..n {
            if up[i].is_some() || deps[i].iter().any(|&d| up[d].is_none()) {
                continue;
            }
            let upstream = deps[i]
                .iter()
                .filter_map(|&d| up[d])
                .max()
                .unwrap_or(Up::Ok);
            let j = jobs[i];
            let manual_up = || {
                if metas.get(i).allow_failure.allows(None) {
                    Up::Ok
                } else {
                    Up::Blocked
                }
            };
            let resolved = match status[i] {
                Some(JobStatus::Created) if canceled => {
                    set(step, status, i, j.id, JobStatus::Canceled, now);
                    Some(Up::Failed)
                }
                Some(JobStatus::Created) => match (when(j), upstream) {
                    (_, Up::Blocked) => Some(Up::Blocked),
                    (When::Always, _)
                    | (When::OnFailure, Up::Failed)
                    | (When::OnSuccess, Up::Ok) => {
                        queue(step, status, i, j.id, now);
                        None
                    }
                    (When::OnFailure, Up::Ok) => {
                        set(step, status, i, j.id, JobStatus::Skipped, now);
                        Some(Up::Ok)
                    }
                    (_, Up::Failed) => {
                        set(step, status, i, j.id, JobStatus::Skipped, now);
                        Some(Up::Failed)
                    }
                    (When::Manual, Up::Ok) => {
                        step.change(j.id).status = Some(JobStatus::Manual);
                        status[i] = Some(JobStatus::Manual);
                        Some(manual_up())
                    }
                    (When::Delayed, Up::Ok) => {
                        let delay = metas
                            .get(i)
                            .start_in
                            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4));
                        let at = now + delay;
                        let c = step.change(j.id);
                        c.status = Some(JobStatus::Scheduled);
                        c.run_after = Some(at);
                        status[i] = Some(JobStatus::Scheduled);
                        step.wake_at = Some(step.wake_at.map_or(at, |w| w.min(at)));
                        None
                    }
                },
                Some(JobStatus::Scheduled) if canceled => {
                    set(step, status, i, j.id, JobStatus::Canceled, now);
                    Some(Up::Failed)
                }
                Some(JobStatus::Scheduled) => {
                    let at = j.run_after.unwrap_or(now);
                    if at <= now {
                        queue(step, status, i, j.id, now);
                    } else {
                        step.wake_at = Some(step.wake_at.map_or(at, |w| w.min(at)));
                    }
                    None
                }
                Some(JobStatus::Manual) if canceled => {
                    set(step, status, i, j.id, JobStatus::Canceled, now);
                    Some(Up::Failed)
                }
                Some(JobStatus::Manual) => Some(manual_up()),
                Some(JobStatus::Pending) if canceled => {
                    set(step, status, i, j.id, JobStatus::Canceled, now);
                    Some(Up::Failed)
                }
                Some(JobStatus::Running) if canceled && !j.cancel_requested => {
                    step.change(j.id).cancel_requested = Some(true);
                    None
                }
                Some(JobStatus::Success) => Some(Up::Ok),
                Some(JobStatus::Failed) if metas.get(i).allow_failure.allows(j.exit_code) => {
                    Some(Up::Ok)
                }
                Some(JobStatus::Failed | JobStatus::Canceled) => Some(Up::Failed),
                Some(JobStatus::Skipped) => Some(upstream.min(Up::Failed)),
                _ => None,
            };
            if resolved.is_some() {
                up[i] = resolved;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    up
}

/// The pipeline's status, from its jobs' new statuses, with its start and end times.
fn pipeline_status(
    step: &mut Step,
    p: &PipelineRecord,
    jobs: &[&JobRecord],
    metas: &Metas<'_>,
    status: &[Option<JobStatus>],
    up: &[Option<Up>],
    now: Millis,
) {
    let canceled = p.status == PipelineStatus::Canceled;
    let n = jobs.len();
    let is = |i: usize, s: JobStatus| status[i] == Some(s);
    let any = |s: JobStatus| status.contains(&Some(s));
    let retrying = status.contains(&None);
    let started = p.jobs.iter().any(|j| j.started_at.is_some())
        || any(JobStatus::Success)
        || any(JobStatus::Failed);
    let allowed_failure =
        |i: usize| is(i, JobStatus::Failed) && metas.get(i).allow_failure.allows(jobs[i].exit_code);
    let new_status = if canceled {
        PipelineStatus::Canceled
    } else if any(JobStatus::Running) || retrying {
        PipelineStatus::Running
    } else if any(JobStatus::Pending) || any(JobStatus::Scheduled) {
        if started {
            PipelineStatus::Running
        } else {
            PipelineStatus::Pending
        }
    } else {
        let blocking_manual =
            (0..n).any(|i| is(i, JobStatus::Manual) && up[i] == Some(Up::Blocked));
        let all_manual = (0..n)
            .filter(|&i| !is(i, JobStatus::Skipped))
            .all(|i| is(i, JobStatus::Manual))
            && any(JobStatus::Manual);
        if blocking_manual || all_manual || any(JobStatus::Created) {
            PipelineStatus::Manual
        } else if (0..n).any(|i| is(i, JobStatus::Failed) && !allowed_failure(i)) {
            PipelineStatus::Failed
        } else if any(JobStatus::Canceled) {
            PipelineStatus::Canceled
        } else if (0..n).all(|i| is(i, JobStatus::Skipped) || is(i, JobStatus::Manual)) {
            PipelineStatus::Skipped
        } else {
            PipelineStatus::Success
        }
    };
    if new_status != p.status {
        step.changes.status = Some(new_status);
    }
    if p.started_at.is_none() {
        if let Some(t) = jobs.iter().filter_map(|j| j.started_at).min() {
            step.changes.started_at = Some(t);
        }
    }
    let running = any(JobStatus::Running) || retrying;
    if new_status.is_final() && !running && p.finished_at.is_none() {
        step.changes.finished_at = Some(now);
    }
}

fn set(
    step: &mut Step,
    status: &mut [Option<JobStatus>],
    i: usize,
    id: i64,
    to: JobStatus,
    now: Millis,
) {
    let c = step.change(id);
    c.status = Some(to);
    c.finished_at = Some(now);
    status[i] = Some(to);
    step.ended.push(to);
}

fn queue(step: &mut Step, status: &mut [Option<JobStatus>], i: usize, id: i64, now: Millis) {
    let c = step.change(id);
    c.status = Some(JobStatus::Pending);
    c.queued_at = Some(now);
    status[i] = Some(JobStatus::Pending);
    step.queued = true;
}

/// Cancels the pipeline: jobs that did not start are canceled, running ones are asked to stop. A
/// rollback's attempt in it is canceled too (as GitLab's cancel stops a re-deploy), though it does
/// not count in it: a pipeline that is over otherwise stays as it is, and only its rollback's
/// attempt is canceled (nothing to do: an empty step).
pub(crate) fn cancel(p: &PipelineRecord, now: Millis) -> Step {
    let over = matches!(
        p.status,
        PipelineStatus::Success | PipelineStatus::Failed | PipelineStatus::Skipped
    );
    let mut step = if over {
        Step::default()
    } else {
        let mut canceled = p.clone();
        canceled.status = PipelineStatus::Canceled;
        let mut step = advance(&canceled, now);
        if p.status != PipelineStatus::Canceled {
            step.changes.status = Some(PipelineStatus::Canceled);
        }
        step
    };
    let rollbacks: Vec<&JobRecord> = latest(p).into_iter().filter(|j| is_rollback(j)).collect();
    let mut status: Vec<Option<JobStatus>> = rollbacks.iter().map(|j| Some(j.status)).collect();
    cancel_unstarted(&mut step, &rollbacks, &mut status, now);
    step
}

/// Whether a rollback's attempt in pipeline `p` runs and was asked to stop (a cancel of the
/// pipeline has nothing more to do).
pub(crate) fn rollback_canceling(p: &PipelineRecord) -> bool {
    latest(p)
        .into_iter()
        .any(|j| j.status == JobStatus::Running && j.cancel_requested && is_rollback(j))
}

/// Plays the manual job `job_id`.
pub(crate) fn play(p: &PipelineRecord, job_id: i64, now: Millis) -> Result<Step, String> {
    let jobs = latest(p);
    let Some(j) = jobs.iter().find(|j| j.id == job_id) else {
        return Err("this job was retried: play its latest attempt".into());
    };
    if j.status != JobStatus::Manual {
        return Err(format!("the job is {}, not manual", j.status));
    }
    if p.status == PipelineStatus::Canceled {
        return Err("the pipeline was canceled".into());
    }
    let mut step = Step::default();
    let c = step.change(job_id);
    c.status = Some(JobStatus::Pending);
    c.queued_at = Some(now);
    step.queued = true;
    Ok(step)
}

/// Retries job `job_id` (which ended): a new attempt, and the jobs after it that were skipped or
/// canceled because of it wait again.
pub(crate) fn retry(p: &PipelineRecord, job_id: i64, now: Millis) -> Result<Step, String> {
    let jobs = latest(p);
    let Some(j) = jobs.iter().find(|j| j.id == job_id) else {
        return Err("this job was retried already: retry its latest attempt".into());
    };
    if !matches!(
        j.status,
        JobStatus::Success | JobStatus::Failed | JobStatus::Canceled
    ) {
        return Err(format!("a {} job cannot be retried", j.status));
    }
    let mut step = Step::default();
    let mut attempt = new_attempt(j, now);
    // Retrying a rollback's attempt re-deploys its job: the rollback (its ids, its
    // `rollback_script`) was that attempt's alone; rolling back again is the rollback API's.
    if let Ok(mut doc) = serde_json::from_str::<crate::spec::JobDoc>(&j.spec) {
        if doc.rollback.take().is_some() {
            attempt.spec = serde_json::to_string(&doc).map_err(|e| e.to_string())?;
        }
    }
    step.changes.new_jobs.push(attempt);
    step.change(j.id).retried = Some(true);
    // Everything that waits for it, directly or not, and did not run, waits again.
    let mut waiting = vec![j.name.clone()];
    let mut k = 0;
    while k < waiting.len() {
        let name = waiting[k].clone();
        let stage = jobs
            .iter()
            .find(|x| x.name == name)
            .map_or(0, |x| x.stage_index);
        for other in &jobs {
            let waits = match &other.needs {
                Some(n) => n.contains(&name),
                None => other.stage_index > stage,
            };
            if waits
                && !waiting.contains(&other.name)
                && matches!(other.status, JobStatus::Skipped | JobStatus::Canceled)
                && other.started_at.is_none()
            {
                step.change(other.id).status = Some(JobStatus::Created);
                waiting.push(other.name.clone());
            }
        }
        k += 1;
    }
    step.changes.status = Some(PipelineStatus::Running);
    Ok(step)
}

/// Re-deploys the job of attempt `job_id` as `rollback`: a new attempt after its latest one (which
/// must have ended), queued at once, that runs the job turned into its rollback
/// (`spec::JobDoc::rollback`), as GitLab's re-deploy retries the old job. Unlike [`retry`], no
/// other job waits again, a manual or delayed job runs now, and the pipeline's status stays: a
/// rollback's attempt does not count in it (`counted`), so the old pipeline is not reopened.
pub(crate) fn redeploy(
    p: &PipelineRecord,
    job_id: i64,
    rollback: &crate::spec::RollbackDoc,
    now: Millis,
) -> Result<Step, String> {
    let jobs = latest(p);
    let Some(position) = p.jobs.iter().find(|j| j.id == job_id).map(|j| j.position) else {
        return Err(format!("pipeline {} has no job {job_id}", p.id));
    };
    let Some(j) = jobs.iter().find(|j| j.position == position) else {
        return Err(format!("pipeline {} has no job {job_id}", p.id));
    };
    if !matches!(
        j.status,
        JobStatus::Success | JobStatus::Failed | JobStatus::Canceled
    ) {
        return Err(format!(
            "the deployment's job is {}: it cannot be re-deployed until it ends",
            j.status
        ));
    }
    if p.status == PipelineStatus::Canceled {
        return Err("the deployment's pipeline was canceled".into());
    }
    let mut doc: crate::spec::JobDoc =
        serde_json::from_str(&j.spec).map_err(|e| format!("the job's spec: {e}"))?;
    doc.rollback = Some(rollback.clone());
    let mut attempt = new_attempt(j, now);
    attempt.spec = serde_json::to_string(&doc).map_err(|e| e.to_string())?;
    attempt.status = JobStatus::Pending;
    attempt.when = "on_success".into();
    let mut step = Step::default();
    step.changes.new_jobs.push(attempt);
    step.change(j.id).retried = Some(true);
    step.queued = true;
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: i64, name: &str, stage: i64, when: &str) -> JobRecord {
        JobRecord {
            id,
            pipeline_id: 1,
            name: name.into(),
            stage: format!("s{stage}"),
            stage_index: stage,
            position: id,
            attempt: 1,
            status: JobStatus::Created,
            when: when.into(),
            allow_failure: false,
            needs: None,
            tags: Vec::new(),
            resource_group: None,
            interruptible: false,
            spec: r#"{"job":{"allow_failure":false,"retry":{"max":0,"when":[],"exit_codes":[]},"start_in":null}}"#.into(),
            created_at: 0,
            queued_at: None,
            started_at: None,
            finished_at: None,
            run_after: None,
            agent_id: None,
            agent_name: None,
            lease_until: None,
            cancel_requested: false,
            exit_code: None,
            failure_reason: None,
            coverage: None,
            log_size: 0,
            has_artifacts: false,
            retried: false,
        }
    }

    fn pipeline(jobs: Vec<JobRecord>) -> PipelineRecord {
        PipelineRecord {
            id: 1,
            project_id: 1,
            project_name: "p".into(),
            git_ref: "main".into(),
            tag: false,
            sha: "a".repeat(40),
            before_sha: None,
            source: "push".into(),
            status: PipelineStatus::Created,
            trace_id: "t".into(),
            errors: "[]".into(),
            spec: "{}".into(),
            created_at: 0,
            started_at: None,
            finished_at: None,
            version: 1,
            jobs,
        }
    }

    /// Applies a step the way the store would, so that tests can run a pipeline to its end.
    fn apply(p: &mut PipelineRecord, step: &Step) {
        for c in &step.changes.jobs {
            let j = p.jobs.iter_mut().find(|j| j.id == c.id).unwrap();
            if let Some(s) = c.status {
                j.status = s;
            }
            if let Some(r) = c.retried {
                j.retried = r;
            }
            if let Some(t) = c.run_after {
                j.run_after = Some(t);
            }
            if let Some(r) = c.cancel_requested {
                j.cancel_requested = r;
            }
        }
        for nj in &step.changes.new_jobs {
            let id = p.jobs.iter().map(|j| j.id).max().unwrap() + 100;
            let mut j = job(id, &nj.name, nj.stage_index, &nj.when);
            j.position = nj.position;
            j.attempt = nj.attempt;
            j.status = nj.status;
            j.spec = nj.spec.clone();
            j.needs = nj.needs.clone();
            p.jobs.push(j);
        }
        if let Some(s) = step.changes.status {
            p.status = s;
        }
        if let Some(t) = step.changes.finished_at {
            p.finished_at = Some(t);
        }
        if let Some(t) = step.changes.started_at {
            p.started_at = Some(t);
        }
    }

    #[test]
    fn a_fork_pipeline_waiting_for_approval_holds_every_job() {
        let mut p = pipeline(vec![job(1, "a", 0, "on_success"), job(2, "b", 1, "always")]);
        p.spec = r#"{"stages":[],"fork":{"mode":"approve"}}"#.into();
        settle(&mut p);
        assert_eq!(p.status, PipelineStatus::Manual);
        assert!(p.jobs.iter().all(|j| j.status == JobStatus::Created));
        // Approved: it runs.
        p.spec = r#"{"fork":{"mode":"approve","approved_by":"admin","approved_at":5}}"#.into();
        settle(&mut p);
        assert_eq!(p.status, PipelineStatus::Pending);
        assert_eq!(p.jobs[0].status, JobStatus::Pending);
        // Canceled while waiting: its jobs are canceled.
        let mut waiting = pipeline(vec![job(1, "a", 0, "on_success")]);
        waiting.spec = r#"{"fork":{"mode":"approve"}}"#.into();
        settle(&mut waiting);
        let step = cancel(&waiting, 1000);
        apply(&mut waiting, &step);
        assert_eq!(waiting.status, PipelineStatus::Canceled);
        assert_eq!(waiting.jobs[0].status, JobStatus::Canceled);
        // A fork pipeline without secrets runs at once.
        let mut plain = pipeline(vec![job(1, "a", 0, "on_success")]);
        plain.spec = r#"{"fork":{"mode":"no_secrets"}}"#.into();
        settle(&mut plain);
        assert_eq!(plain.jobs[0].status, JobStatus::Pending);
    }

    /// Advances until nothing changes.
    fn settle(p: &mut PipelineRecord) {
        for _ in 0..20 {
            let step = advance(p, 1000);
            if step.is_empty() {
                return;
            }
            apply(p, &step);
        }
        panic!("does not settle");
    }

    fn finish(p: &mut PipelineRecord, name: &str, status: &str) {
        let j = p
            .jobs
            .iter_mut()
            .filter(|j| j.name == name)
            .max_by_key(|j| j.attempt)
            .unwrap();
        j.status = JobStatus::parse(status).unwrap();
        j.started_at = Some(10);
        if status == "failed" {
            j.exit_code = Some(1);
            j.failure_reason = Some("script_failure".into());
        }
    }

    fn statuses(p: &PipelineRecord) -> Vec<(String, String)> {
        latest(p)
            .iter()
            .map(|j| (j.name.clone(), j.status.as_str().to_owned()))
            .collect()
    }

    fn st(p: &PipelineRecord, name: &str) -> String {
        latest(p)
            .iter()
            .find(|j| j.name == name)
            .unwrap()
            .status
            .as_str()
            .to_owned()
    }

    #[test]
    fn stages_in_order() {
        let mut p = pipeline(vec![
            job(1, "build", 0, "on_success"),
            job(2, "test", 1, "on_success"),
        ]);
        settle(&mut p);
        assert_eq!(st(&p, "build"), "pending");
        assert_eq!(st(&p, "test"), "created");
        assert_eq!(p.status, PipelineStatus::Pending);
        finish(&mut p, "build", "success");
        settle(&mut p);
        assert_eq!(st(&p, "test"), "pending");
        assert_eq!(p.status, PipelineStatus::Running);
        finish(&mut p, "test", "success");
        settle(&mut p);
        assert_eq!(p.status, PipelineStatus::Success);
        assert!(p.finished_at.is_some());
    }

    #[test]
    fn failure_skips_later_and_runs_on_failure() {
        let mut p = pipeline(vec![
            job(1, "build", 0, "on_success"),
            job(2, "test", 1, "on_success"),
            job(3, "cleanup", 2, "on_failure"),
            job(4, "report", 2, "always"),
        ]);
        settle(&mut p);
        finish(&mut p, "build", "failed");
        settle(&mut p);
        assert_eq!(st(&p, "test"), "skipped");
        assert_eq!(st(&p, "cleanup"), "pending");
        assert_eq!(st(&p, "report"), "pending");
        finish(&mut p, "cleanup", "success");
        finish(&mut p, "report", "success");
        settle(&mut p);
        assert_eq!(p.status, PipelineStatus::Failed);
    }

    #[test]
    fn allowed_failure_lets_the_pipeline_pass() {
        let mut b = job(1, "lint", 0, "on_success");
        b.spec = r#"{"job":{"allow_failure":true}}"#.into();
        let mut p = pipeline(vec![b, job(2, "test", 1, "on_success")]);
        settle(&mut p);
        finish(&mut p, "lint", "failed");
        settle(&mut p);
        assert_eq!(st(&p, "test"), "pending");
        finish(&mut p, "test", "success");
        settle(&mut p);
        assert_eq!(p.status, PipelineStatus::Success);
    }

    #[test]
    fn needs_start_before_the_stage_ends() {
        let mut c = job(3, "deploy", 2, "on_success");
        c.needs = Some(vec!["a".into()]);
        let mut p = pipeline(vec![
            job(1, "a", 0, "on_success"),
            job(2, "b", 0, "on_success"),
            c,
        ]);
        settle(&mut p);
        finish(&mut p, "a", "success");
        settle(&mut p);
        assert_eq!(st(&p, "deploy"), "pending");
        assert_eq!(st(&p, "b"), "pending");
    }

    #[test]
    fn all_manual_is_manual_and_playing_runs() {
        let mut m = job(1, "deploy", 0, "manual");
        m.spec = r#"{"job":{"allow_failure":true}}"#.into();
        let mut p = pipeline(vec![m]);
        settle(&mut p);
        assert_eq!(st(&p, "deploy"), "manual");
        assert_eq!(p.status, PipelineStatus::Manual);
        let step = play(&p, 1, 5).unwrap();
        apply(&mut p, &step);
        settle(&mut p);
        assert_eq!(st(&p, "deploy"), "pending");
        assert_eq!(p.status, PipelineStatus::Pending);
        assert!(play(&p, 1, 6).is_err(), "only manual jobs are played");
    }

    #[test]
    fn a_blocking_manual_job_holds_the_jobs_after_it() {
        let mut p = pipeline(vec![
            job(1, "build", 0, "on_success"),
            job(2, "approve", 1, "manual"),
            job(3, "deploy", 2, "on_success"),
        ]);
        settle(&mut p);
        finish(&mut p, "build", "success");
        settle(&mut p);
        assert_eq!(st(&p, "approve"), "manual");
        assert_eq!(st(&p, "deploy"), "created");
        assert_eq!(p.status, PipelineStatus::Manual);
        let step = play(&p, 2, 5).unwrap();
        apply(&mut p, &step);
        finish(&mut p, "approve", "success");
        settle(&mut p);
        assert_eq!(st(&p, "deploy"), "pending");
    }

    #[test]
    fn an_optional_manual_job_does_not_hold_the_pipeline() {
        let mut m = job(2, "optional", 0, "manual");
        m.spec = r#"{"job":{"allow_failure":true}}"#.into();
        let mut p = pipeline(vec![job(1, "build", 0, "on_success"), m]);
        settle(&mut p);
        finish(&mut p, "build", "success");
        settle(&mut p);
        assert_eq!(p.status, PipelineStatus::Success);
    }

    #[test]
    fn retries_make_new_attempts() {
        let mut j = job(1, "flaky", 0, "on_success");
        j.spec = r#"{"job":{"allow_failure":false,"retry":{"max":1,"when":["runner_system_failure"],"exit_codes":[]}}}"#.into();
        let mut p = pipeline(vec![j]);
        settle(&mut p);
        {
            let j = &mut p.jobs[0];
            j.started_at = Some(10);
            j.status = JobStatus::Failed;
            j.failure_reason = Some("runner_system_failure".into());
        }
        settle(&mut p);
        assert_eq!(p.jobs.len(), 2);
        assert!(p.jobs[0].retried);
        assert_eq!(p.jobs[1].attempt, 2);
        assert_eq!(p.jobs[1].status, JobStatus::Pending);
        assert_eq!(p.status, PipelineStatus::Running);
        // The second failure is not retried: max 1.
        p.jobs[1].status = JobStatus::Failed;
        p.jobs[1].failure_reason = Some("runner_system_failure".into());
        settle(&mut p);
        assert_eq!(p.jobs.len(), 2);
        assert_eq!(p.status, PipelineStatus::Failed);
    }

    #[test]
    fn a_script_failure_is_not_retried_when_retry_names_other_reasons() {
        let mut j = job(1, "x", 0, "on_success");
        j.spec = r#"{"job":{"allow_failure":false,"retry":{"max":2,"when":["runner_system_failure"],"exit_codes":[]}}}"#.into();
        let mut p = pipeline(vec![j]);
        settle(&mut p);
        finish(&mut p, "x", "failed");
        settle(&mut p);
        assert_eq!(p.jobs.len(), 1);
        assert_eq!(p.status, PipelineStatus::Failed);
    }

    #[test]
    fn cancel_cancels_waiting_jobs_and_asks_running_ones_to_stop() {
        let mut p = pipeline(vec![
            job(1, "a", 0, "on_success"),
            job(2, "b", 0, "on_success"),
            job(3, "c", 1, "on_success"),
        ]);
        settle(&mut p);
        p.jobs[0].status = JobStatus::Running;
        let step = cancel(&p, 50);
        apply(&mut p, &step);
        assert_eq!(st(&p, "b"), "canceled");
        assert_eq!(st(&p, "c"), "canceled");
        assert!(p.jobs[0].cancel_requested);
        assert_eq!(p.status, PipelineStatus::Canceled);
        assert!(p.finished_at.is_none(), "a job still runs");
        finish(&mut p, "a", "canceled");
        settle(&mut p);
        assert!(p.finished_at.is_some());
    }

    #[test]
    fn retry_reopens_the_jobs_after() {
        let mut p = pipeline(vec![
            job(1, "build", 0, "on_success"),
            job(2, "test", 1, "on_success"),
        ]);
        settle(&mut p);
        finish(&mut p, "build", "failed");
        settle(&mut p);
        assert_eq!(p.status, PipelineStatus::Failed);
        let step = retry(&p, 1, 99).unwrap();
        apply(&mut p, &step);
        settle(&mut p);
        assert_eq!(st(&p, "build"), "pending");
        assert_eq!(st(&p, "test"), "created");
        finish(&mut p, "build", "success");
        settle(&mut p);
        assert_eq!(st(&p, "test"), "pending");
        assert!(retry(&p, 1, 100).is_err(), "an old attempt");
    }

    #[test]
    fn delayed_jobs_wait_for_their_time() {
        let mut d = job(1, "later", 0, "delayed");
        d.spec = r#"{"job":{"allow_failure":false,"start_in":{"secs":60,"nanos":0}}}"#.into();
        let mut p = pipeline(vec![d]);
        let step = advance(&p, 1000);
        assert_eq!(step.wake_at, Some(61_000));
        apply(&mut p, &step);
        assert_eq!(st(&p, "later"), "scheduled");
        assert!(advance(&p, 2000).changes.jobs.is_empty());
        let step = advance(&p, 61_000);
        apply(&mut p, &step);
        assert_eq!(st(&p, "later"), "pending");
    }

    fn deploy_job(id: i64, name: &str, stage: i64) -> JobRecord {
        let mut j = job(id, name, stage, "manual");
        let mut plan =
            gantry_pipeline::Job::new(name, &format!("s{stage}"), usize::try_from(stage).unwrap());
        plan.script = vec!["./deploy.sh".into()];
        j.spec = serde_json::to_string(&crate::spec::JobDoc {
            job: plan,
            rollback: None,
        })
        .unwrap();
        j
    }

    #[test]
    fn retrying_a_rollbacks_attempt_redeploys_without_rolling_back() {
        let mut p = pipeline(vec![deploy_job(1, "deploy", 0)]);
        settle(&mut p);
        let step = play(&p, 1, 5).unwrap();
        apply(&mut p, &step);
        finish(&mut p, "deploy", "success");
        settle(&mut p);
        let doc = crate::spec::RollbackDoc {
            from: 7,
            to: 5,
            rollback_script: Some(vec!["helm rollback r".into()]),
            by: None,
        };
        let step = redeploy(&p, 1, &doc, 6).unwrap();
        apply(&mut p, &step);
        let rollback = latest(&p)[0].clone();
        let spec: crate::spec::JobDoc = serde_json::from_str(&rollback.spec).unwrap();
        assert_eq!(spec.rollback, Some(doc));
        finish(&mut p, "deploy", "success");
        settle(&mut p);
        let step = retry(&p, rollback.id, 7).unwrap();
        let spec: crate::spec::JobDoc =
            serde_json::from_str(&step.changes.new_jobs[0].spec).unwrap();
        assert_eq!(spec.rollback, None, "a retry is a plain re-deploy");
    }

    /// A successful pipeline: a build, a manual deploy job played, and an `on_failure` job after.
    fn deployed() -> PipelineRecord {
        let mut p = pipeline(vec![
            job(1, "build", 0, "on_success"),
            deploy_job(2, "deploy", 1),
            job(3, "after", 2, "on_failure"),
        ]);
        settle(&mut p);
        finish(&mut p, "build", "success");
        settle(&mut p);
        let step = play(&p, 2, 5).unwrap();
        apply(&mut p, &step);
        finish(&mut p, "deploy", "success");
        settle(&mut p);
        p
    }

    #[test]
    fn redeploy_queues_a_new_attempt_and_reopens_nothing() {
        let mut p = deployed();
        assert_eq!(st(&p, "after"), "skipped");
        assert_eq!(p.status, PipelineStatus::Success);
        let r = crate::spec::RollbackDoc {
            from: 9,
            to: 4,
            rollback_script: Some(vec!["helm rollback app".into()]),
            by: None,
        };
        let step = redeploy(&p, 2, &r, 50).unwrap();
        assert!(step.queued, "agents are woken");
        assert_eq!(step.changes.new_jobs.len(), 1);
        let nj = &step.changes.new_jobs[0];
        assert_eq!(
            (nj.attempt, nj.status, nj.when.as_str()),
            (2, JobStatus::Pending, "on_success"),
            "queued at once, manual or not"
        );
        let doc: crate::spec::JobDoc = serde_json::from_str(&nj.spec).unwrap();
        assert_eq!(doc.rollback, Some(r.clone()));
        // Only the deploy job changes: the job after it stays skipped.
        assert_eq!(step.changes.jobs.len(), 1);
        apply(&mut p, &step);
        settle(&mut p);
        assert_eq!(st(&p, "deploy"), "pending");
        assert_eq!(st(&p, "after"), "skipped");
        assert_eq!(p.status, PipelineStatus::Success, "not reopened");
        // While its latest attempt runs, it cannot be re-deployed again.
        let new_id = latest(&p)[1].id;
        assert!(redeploy(&p, new_id, &r, 60).is_err(), "not ended");
        assert!(redeploy(&p, 2, &r, 60).is_err(), "not ended");
        finish(&mut p, "deploy", "success");
        settle(&mut p);
        assert_eq!(p.status, PipelineStatus::Success);
        // A re-deploy through an older attempt follows the latest; it replaces the rollback the
        // latest performed, not stacks it.
        let again = crate::spec::RollbackDoc {
            from: 10,
            to: 4,
            rollback_script: None,
            by: None,
        };
        let step = redeploy(&p, 2, &again, 70).unwrap();
        assert_eq!(step.changes.new_jobs[0].attempt, 3);
        assert_eq!(step.changes.jobs[0].id, new_id);
        let doc: crate::spec::JobDoc =
            serde_json::from_str(&step.changes.new_jobs[0].spec).unwrap();
        assert_eq!(doc.rollback, Some(again));
        assert!(redeploy(&p, 77, &r, 80).is_err(), "no such job");
    }

    /// A pipeline whose deploy job (between a build and a job after it) succeeded, and the
    /// rollback's attempt of that job, just queued.
    fn rolling_back() -> PipelineRecord {
        let mut p = deployed();
        assert_eq!(p.status, PipelineStatus::Success);
        assert_eq!(p.finished_at, Some(1000));
        let r = crate::spec::RollbackDoc {
            from: 9,
            to: 4,
            rollback_script: None,
            by: None,
        };
        let step = redeploy(&p, 2, &r, 50).unwrap();
        assert_eq!(step.changes.status, None, "the pipeline is not reopened");
        apply(&mut p, &step);
        p
    }

    #[test]
    fn a_rollbacks_attempt_leaves_its_pipeline_status_alone() {
        for end in ["success", "failed", "canceled"] {
            let mut p = rolling_back();
            let attempt = latest(&p)[1].clone();
            assert!(is_rollback(&attempt));
            assert!(!is_rollback(&p.jobs[1]), "the deploy's own attempt");
            for now in ["pending", "running", end] {
                finish(&mut p, "deploy", now);
                let step = advance(&p, 2000);
                assert!(step.is_empty(), "{now}: {step:?}");
                assert_eq!(st(&p, "deploy"), now, "its own status is real");
                assert_eq!(st(&p, "after"), "skipped", "nothing waits on it");
                assert_eq!(p.status, PipelineStatus::Success, "{now}");
                assert_eq!(p.finished_at, Some(1000));
            }
        }
    }

    #[test]
    fn cancel_cancels_a_rollbacks_attempt_and_leaves_an_ended_pipeline_alone() {
        let p = deployed();
        assert!(cancel(&p, 60).is_empty(), "nothing runs in it");
        let mut p = rolling_back();
        let step = cancel(&p, 60);
        assert_eq!(step.changes.status, None);
        assert_eq!(step.ended, vec![JobStatus::Canceled]);
        apply(&mut p, &step);
        assert_eq!(st(&p, "deploy"), "canceled");
        assert_eq!(p.status, PipelineStatus::Success);
        // Running: asked to stop.
        let mut p = rolling_back();
        finish(&mut p, "deploy", "running");
        let step = cancel(&p, 60);
        apply(&mut p, &step);
        assert!(latest(&p)[1].cancel_requested);
        assert!(cancel(&p, 70).is_empty(), "asked once");
    }

    #[test]
    fn a_failed_rollback_is_not_retried_and_a_later_retry_counts_again() {
        let mut p = rolling_back();
        // Even a job that `retry` covers: a rollback that fails is reported, not run again.
        let rb = p.jobs.iter_mut().find(|j| j.attempt == 2).unwrap();
        let mut doc: crate::spec::JobDoc = serde_json::from_str(&rb.spec).unwrap();
        doc.job.retry.max = 2;
        rb.spec = serde_json::to_string(&doc).unwrap();
        finish(&mut p, "deploy", "failed");
        assert!(advance(&p, 2000).is_empty());
        assert_eq!(p.status, PipelineStatus::Success);
        // Retrying the rollback's attempt is a plain re-deploy: it counts, and its failure fails
        // the pipeline as any job's would.
        let id = latest(&p)[1].id;
        let step = retry(&p, id, 3000).unwrap();
        apply(&mut p, &step);
        settle(&mut p);
        assert_eq!(p.status, PipelineStatus::Running);
        finish(&mut p, "deploy", "failed");
        settle(&mut p);
        assert_eq!(st(&p, "after"), "pending", "its on_failure job runs");
        finish(&mut p, "after", "success");
        settle(&mut p);
        assert_eq!(p.status, PipelineStatus::Failed);
    }

    #[test]
    fn all_skipped_is_skipped() {
        let mut p = pipeline(vec![job(1, "only-on-failure", 0, "on_failure")]);
        settle(&mut p);
        assert_eq!(
            statuses(&p),
            vec![("only-on-failure".into(), "skipped".into())]
        );
        assert_eq!(p.status, PipelineStatus::Skipped);
    }
}
