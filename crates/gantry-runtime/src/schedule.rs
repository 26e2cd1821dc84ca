//! The scheduler: one loop owns the pipeline's state and starts each job the moment what it waits
//! for has finished (and a slot is free: the job task takes it). No waves.
//!
//! *Architecture Invariant*: the work is linear in jobs + `needs` edges. A job without `needs` waits
//! on a stage barrier (per-stage counters of unfinished jobs), never on one edge per earlier job.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_pipeline::Plan;
use gantry_pipeline::plan::{WaitFor, When};
use gantry_pipeline::vars;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::executor::Executor;
use crate::job::{Ctx, Stored, canceled, finished_event, run_job};
use crate::mask::Masker;
use crate::workspace::{self, Setup, Snapshot};
use crate::{
    Event, JobResult, JobStatus, PipelineResult, PipelineStatus, Reporter, RunConfig, RuntimeError,
};

/// What a finished job means for the jobs that wait for it. Ordered: folding takes the maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Upstream {
    /// Succeeded, failed with an allowed failure, or did not need to run.
    Ok,
    /// Failed, or was skipped because something before it failed.
    Failed,
}

fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Directory names for the jobs: slugs of their names, made unique in plan order.
pub(crate) fn slugs(plan: &Plan) -> Vec<String> {
    let mut taken = HashSet::new();
    plan.jobs
        .iter()
        .map(|j| {
            let base = vars::slug(&j.name);
            let base = if base.is_empty() {
                "job".to_string()
            } else {
                base
            };
            let mut s = base.clone();
            let mut n = 2;
            while !taken.insert(s.clone()) {
                s = format!("{base}-{n}");
                n += 1;
            }
            s
        })
        .collect()
}

pub(crate) async fn run<E: Executor>(
    plan: &Plan,
    config: RunConfig,
    executor: Arc<E>,
    reporter: Arc<dyn Reporter>,
    mut cancel: watch::Receiver<bool>,
) -> Result<PipelineResult, RuntimeError> {
    let started = Instant::now();
    if config.selected.len() != plan.jobs.len() {
        return Err(RuntimeError::Selection {
            selected: config.selected.len(),
            jobs: plan.jobs.len(),
        });
    }
    let ctx = Arc::new(prepare(plan, config, executor, reporter, cancel.clone()).await?);
    let (jobs, is_canceled) = drive(&ctx, &mut cancel).await;
    let status = if is_canceled || *ctx.cancel.borrow() {
        PipelineStatus::Canceled
    } else if jobs
        .iter()
        .any(|j| j.status == JobStatus::Failed && !j.allow_failure)
    {
        PipelineStatus::Failed
    } else {
        PipelineStatus::Success
    };
    ctx.reporter.event(Event::PipelineFinished {
        status,
        duration: started.elapsed(),
    });
    Ok(PipelineResult { status, jobs })
}

/// The state the jobs share, before the first one starts: the state directory, the project
/// snapshot, what the artifact store holds from earlier runs, the masker.
async fn prepare<E: Executor>(
    plan: &Plan,
    config: RunConfig,
    executor: Arc<E>,
    reporter: Arc<dyn Reporter>,
    cancel: watch::Receiver<bool>,
) -> Result<Ctx<E>, RuntimeError> {
    let builds_dir = config
        .state_dir
        .join("builds")
        .join(config.pipeline_id.to_string());
    let artifacts_dir = config.state_dir.join("artifacts");
    let (snapshot, on_disk) =
        prepare_disk(plan, &config, builds_dir.clone(), artifacts_dir.clone()).await?;
    let slugs = slugs(plan);
    let stored = (0..plan.jobs.len())
        .map(|i| {
            if !config.selected[i] && on_disk.contains(&slugs[i]) {
                Stored::OnDisk
            } else {
                Stored::Nothing
            }
        })
        .collect();
    Ok(Ctx {
        plan: plan.clone(),
        slots: Semaphore::new(config.concurrency.max(1)),
        cache_dir: config.state_dir.join("cache"),
        reports_dir: config.state_dir.join("reports"),
        config,
        executor,
        reporter,
        masker: masker(plan),
        snapshot,
        by_name: plan
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.name.clone(), i))
            .collect(),
        slugs,
        builds_dir,
        artifacts_dir,
        groups: Mutex::new(HashMap::new()),
        stored: Mutex::new(stored),
        summaries: Mutex::new(vec![None; plan.jobs.len()]),
        job_ids: AtomicU64::new(0),
        cancel,
        verifier: std::sync::OnceLock::new(),
    })
}

/// The state directory, the project snapshot and the names of the stored artifact entries: all
/// blocking IO, in one go.
async fn prepare_disk(
    plan: &Plan,
    config: &RunConfig,
    builds_dir: PathBuf,
    artifacts_dir: PathBuf,
) -> Result<(Snapshot, HashSet<String>), RuntimeError> {
    let state_dir = config.state_dir.clone();
    let (project_dir, in_place, overlay) =
        (config.project_dir.clone(), config.in_place, config.overlay);
    let given_files = config.files.clone();
    // `untracked` artifacts and caches are defined by the files listed before the jobs ran.
    let untracked = plan
        .jobs
        .iter()
        .zip(&config.selected)
        .any(|(job, &selected)| {
            selected
                && (job.artifacts.as_ref().is_some_and(|a| a.untracked)
                    || job.cache.iter().any(|c| c.untracked))
        });
    tokio::task::spawn_blocking(
        move || -> Result<(Snapshot, HashSet<String>), RuntimeError> {
            std::fs::create_dir_all(&state_dir).map_err(io_error(&state_dir))?;
            let ignore = state_dir.join(".gitignore");
            if !ignore.exists() {
                std::fs::write(&ignore, "*\n").map_err(io_error(&ignore))?;
            }
            workspace::discard_old_builds(&state_dir);
            let snapshot = Snapshot::build(Setup {
                project_dir: &project_dir,
                state_dir: &state_dir,
                builds_dir: &builds_dir,
                in_place,
                given: given_files,
                untracked,
                overlay,
            })
            .map_err(io_error(&project_dir))?;
            let on_disk = std::fs::read_dir(&artifacts_dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            Ok((snapshot, on_disk))
        },
    )
    .await
    .map_err(|e| RuntimeError::Io {
        path: config.project_dir.clone(),
        source: std::io::Error::other(e),
    })?
}

/// Masked values of every layer: a server's job carries some among its predefined variables
/// (`CI_JOB_TOKEN`).
fn masker(plan: &Plan) -> Masker {
    Masker::new(
        plan.predefined
            .iter()
            .chain(&plan.variables)
            .chain(&plan.cli_variables)
            .chain(plan.scoped_variables.iter().map(|s| &s.variable))
            .chain(
                plan.jobs
                    .iter()
                    .flat_map(|j| j.predefined.iter().chain(&j.variables)),
            )
            .filter(|v| v.masked)
            .map(|v| v.value.as_str()),
    )
}

/// The loop: starts each job once what it waits for has finished, until every selected job has
/// finished. Returns their results in plan order, and whether the pipeline was canceled.
async fn drive<E: Executor>(
    ctx: &Arc<Ctx<E>>,
    cancel: &mut watch::Receiver<bool>,
) -> (Vec<JobResult>, bool) {
    let mut s = Scheduler::new(ctx);
    let mut tasks: JoinSet<Option<JobResult>> = JoinSet::new();
    let mut task_jobs: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut is_canceled = false;
    s.advance();
    loop {
        // A job that ends because of the cancel can be joined before the cancel itself is seen:
        // the jobs it releases are canceled, not skipped.
        if !is_canceled && *cancel.borrow() {
            is_canceled = true;
            cancel_waiting(ctx, &mut s);
        }
        while let Some(j) = s.ready.pop_front() {
            if s.finished[j] {
                continue;
            }
            if is_canceled {
                s.finish(j, Upstream::Failed, skipped(ctx, j, JobStatus::Canceled));
                continue;
            }
            let job = &ctx.plan.jobs[j];
            if job.trigger {
                ctx.info(&job.name, "trigger jobs are not supported yet; skipped");
                s.finish(j, Upstream::Ok, skipped(ctx, j, JobStatus::Skipped));
                continue;
            }
            let played = ctx.config.play_manual.contains(&job.name);
            match not_run(job.when, s.upstream(j), played) {
                None => {
                    let handle = tasks.spawn(run_job(ctx.clone(), j));
                    task_jobs.insert(handle.id(), j);
                    s.running[j] = true;
                }
                Some((up, status)) => s.finish(j, up, skipped(ctx, j, status)),
            }
        }
        if s.done == s.selected {
            break;
        }
        if tasks.is_empty() {
            // Only a cycle in `needs` can get here: nothing runs and nothing can start.
            for j in 0..ctx.plan.jobs.len() {
                if ctx.config.selected[j] && !s.finished[j] {
                    ctx.info(
                        &ctx.plan.jobs[j].name,
                        "waits for a job that waits for it; skipped",
                    );
                    s.finish(j, Upstream::Failed, skipped(ctx, j, JobStatus::Skipped));
                }
            }
            continue;
        }
        tokio::select! {
            Some(joined) = tasks.join_next_with_id() => {
                let (id, ran) = match joined {
                    Ok((id, ran)) => (id, Some(ran)),
                    Err(panicked) => (panicked.id(), None),
                };
                let Some(j) = task_jobs.remove(&id) else { continue };
                s.running[j] = false;
                // A task that ran its job reported it finished; one that was canceled before it
                // started, or panicked, did not.
                let (result, reported) = match ran {
                    Some(Some(result)) => (result, true),
                    Some(None) => (skipped(ctx, j, JobStatus::Canceled), false),
                    None => {
                        let reason = Some(gantry_pipeline::plan::FailureReason::UnknownFailure);
                        (JobResult { reason, ..skipped(ctx, j, JobStatus::Failed) }, false)
                    }
                };
                s.finish_reported(j, passes_on(&result), result, reported);
            }
            () = canceled(cancel), if !is_canceled => {
                is_canceled = true;
                cancel_waiting(ctx, &mut s);
            }
        }
    }
    (s.results.into_iter().flatten().collect(), is_canceled)
}

/// Marks every selected job that neither runs nor has finished canceled.
fn cancel_waiting<E>(ctx: &Ctx<E>, s: &mut Scheduler<'_, E>) {
    for j in 0..ctx.plan.jobs.len() {
        if ctx.config.selected[j] && !s.finished[j] && !s.running[j] {
            s.finish(j, Upstream::Failed, skipped(ctx, j, JobStatus::Canceled));
        }
    }
}

/// Why a job whose turn has come does not run (what it passes on, and its status), from its `when`,
/// what it inherits and whether it is a played manual job; `None` when it runs.
fn not_run(when: When, up: Upstream, played: bool) -> Option<(Upstream, JobStatus)> {
    match (when, up) {
        (When::Always, _) | (When::OnFailure, Upstream::Failed) => None,
        (When::OnFailure, _) => Some((Upstream::Ok, JobStatus::Skipped)),
        (_, Upstream::Failed) => Some((Upstream::Failed, JobStatus::Skipped)),
        // A manual job that is not played holds nothing up: a local run has nobody to play it
        // later (gitlab-ci-local does the same; GitLab would block the pipeline at a manual job
        // with `allow_failure: false`).
        (When::Manual, _) if !played => Some((Upstream::Ok, JobStatus::Manual)),
        _ => None,
    }
}

/// What a job that ran (or was canceled while it waited) means for the jobs that wait for it.
fn passes_on(result: &JobResult) -> Upstream {
    match result.status {
        JobStatus::Failed if !result.allow_failure => Upstream::Failed,
        JobStatus::Canceled => Upstream::Failed,
        JobStatus::Success | JobStatus::Failed | JobStatus::Skipped | JobStatus::Manual => {
            Upstream::Ok
        }
        JobStatus::Created | JobStatus::Pending | JobStatus::Running | JobStatus::Scheduled => {
            unreachable!("a job's task ends it success, failed or canceled")
        }
    }
}

/// The result of a job that did not run.
fn skipped<E>(ctx: &Ctx<E>, j: usize, status: JobStatus) -> JobResult {
    let job = &ctx.plan.jobs[j];
    JobResult {
        name: job.name.clone(),
        stage: job.stage.clone(),
        status,
        allow_failure: false,
        exit_code: None,
        duration: Duration::ZERO,
        coverage: None,
        reason: None,
    }
}

/// The dependency bookkeeping.
struct Scheduler<'a, E> {
    ctx: &'a Ctx<E>,
    waits: Vec<WaitFor>,
    /// Per job: unfinished selected jobs of its `needs`.
    pending: Vec<usize>,
    /// Per job: the jobs whose `needs` name it.
    dependents: Vec<Vec<usize>>,
    /// Per stage: unfinished selected jobs.
    stage_left: Vec<usize>,
    /// Per stage: the fold of its finished jobs.
    stage_up: Vec<Upstream>,
    /// Per stage index `k`: the jobs waiting for every stage before `k`.
    stage_waiters: Vec<Vec<usize>>,
    /// How many leading stages are complete, and the fold over them.
    done_prefix: usize,
    prefix_up: Upstream,
    /// Per job.
    up: Vec<Upstream>,
    finished: Vec<bool>,
    running: Vec<bool>,
    results: Vec<Option<JobResult>>,
    ready: VecDeque<usize>,
    /// For jobs waiting on a stage barrier: the fold when the barrier opened.
    barrier_up: Vec<Upstream>,
    selected: usize,
    done: usize,
}

impl<'a, E> Scheduler<'a, E> {
    fn new(ctx: &'a Ctx<E>) -> Self {
        let plan = &ctx.plan;
        let sel = &ctx.config.selected;
        let n = plan.jobs.len();
        let stages = plan
            .jobs
            .iter()
            .map(|j| j.stage_index + 1)
            .max()
            .unwrap_or(0)
            .max(plan.stages.len());
        let waits = plan.waits();
        let mut pending = vec![0; n];
        let mut dependents = vec![Vec::new(); n];
        let mut stage_left = vec![0; stages];
        let mut stage_waiters = vec![Vec::new(); stages + 1];
        let mut ready = VecDeque::new();
        for j in (0..n).filter(|&j| sel[j]) {
            stage_left[plan.jobs[j].stage_index] += 1;
            match &waits[j] {
                WaitFor::Jobs(deps) => {
                    let mut deps: Vec<usize> =
                        deps.iter().copied().filter(|&d| d != j && sel[d]).collect();
                    deps.sort_unstable();
                    deps.dedup();
                    pending[j] = deps.len();
                    for d in deps {
                        dependents[d].push(j);
                    }
                    if pending[j] == 0 {
                        ready.push_back(j);
                    }
                }
                WaitFor::StagesBefore(k) => stage_waiters[(*k).min(stages)].push(j),
            }
        }
        Scheduler {
            ctx,
            waits,
            pending,
            dependents,
            stage_up: vec![Upstream::Ok; stages],
            stage_left,
            stage_waiters,
            done_prefix: 0,
            prefix_up: Upstream::Ok,
            up: vec![Upstream::Ok; n],
            finished: vec![false; n],
            running: vec![false; n],
            results: vec![None; n],
            ready,
            barrier_up: vec![Upstream::Ok; n],
            selected: sel.iter().filter(|s| **s).count(),
            done: 0,
        }
    }

    /// Opens the stage barriers whose stages are all complete.
    fn advance(&mut self) {
        loop {
            for j in std::mem::take(&mut self.stage_waiters[self.done_prefix]) {
                self.barrier_up[j] = self.prefix_up;
                self.ready.push_back(j);
            }
            if self.done_prefix < self.stage_left.len() && self.stage_left[self.done_prefix] == 0 {
                self.prefix_up = self.prefix_up.max(self.stage_up[self.done_prefix]);
                self.done_prefix += 1;
            } else {
                break;
            }
        }
    }

    /// What job `j` inherits from what it waited for.
    fn upstream(&self, j: usize) -> Upstream {
        match &self.waits[j] {
            WaitFor::Jobs(deps) => deps
                .iter()
                .filter(|&&d| d != j && self.ctx.config.selected[d])
                .map(|&d| self.up[d])
                .max()
                .unwrap_or(Upstream::Ok),
            WaitFor::StagesBefore(_) => self.barrier_up[j],
        }
    }

    fn finish(&mut self, j: usize, up: Upstream, result: JobResult) {
        self.finish_reported(j, up, result, false);
    }

    /// Records that job `j` finished; reports it unless its task `already` did.
    fn finish_reported(&mut self, j: usize, up: Upstream, result: JobResult, already: bool) {
        if self.finished[j] {
            return;
        }
        self.finished[j] = true;
        self.done += 1;
        self.up[j] = up;
        let stage = self.ctx.plan.jobs[j].stage_index;
        self.stage_left[stage] -= 1;
        self.stage_up[stage] = self.stage_up[stage].max(up);
        if !already {
            self.ctx.reporter.event(finished_event(&result, None));
        }
        self.results[j] = Some(result);
        for d in std::mem::take(&mut self.dependents[j]) {
            self.pending[d] -= 1;
            if self.pending[d] == 0 {
                self.ready.push_back(d);
            }
        }
        self.advance();
    }
}
