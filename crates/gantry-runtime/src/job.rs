//! The job lifecycle, per attempt: workspace → cache restore → artifact restore → `prepare` → script
//! (with `verify:`, then its verification and further progressive steps: `verify.rs`) → gate →
//! `after_script` → cache save → artifacts and dotenv → `cleanup`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use gantry_pipeline::Plan;
use gantry_pipeline::plan::{ArtifactsWhen, CachePolicy, FailureReason, Variable, When};
use gantry_pipeline::vars;
use regex::Regex;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::executor::{Executor, JobContext, Session, Step, StepEvent, StepKind, StepOutcome};
use crate::mask::Masker;
use crate::section::{Part, Sections};
use crate::summaries::{self, ReportKind};
use crate::workspace::{Snapshot, View};
use crate::{Event, JobResult, JobStatus, Reporter, RunConfig, artifacts, cache, files, verify};
use gantry_release::Verifier;
use gantry_reports::Reports;

/// How long `after_script` may run.
pub(crate) const AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Events buffered between an executor and the reporter.
const STEP_CHANNEL: usize = 1024;

/// What is known about a job's stored artifacts in this pipeline.
#[derive(Clone, Debug)]
pub(crate) enum Stored {
    /// Nothing usable (a selected job that has not stored anything yet in this run).
    Nothing,
    /// An entry from an earlier run, not read yet.
    OnDisk,
    /// An entry whose dotenv variables are known.
    Ready(Arc<[Variable]>),
}

/// Everything the jobs of one pipeline share.
pub(crate) struct Ctx<E> {
    pub plan: Plan,
    pub config: RunConfig,
    pub executor: Arc<E>,
    pub reporter: Arc<dyn Reporter>,
    pub masker: Masker,
    pub snapshot: Snapshot,
    /// Per job: its directory name under `builds/<pipeline>` and `artifacts/`.
    pub slugs: Vec<String>,
    pub by_name: HashMap<String, usize>,
    pub builds_dir: PathBuf,
    pub artifacts_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub slots: Semaphore,
    pub groups: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub stored: Mutex<Vec<Stored>>,
    /// `state_dir/reports`: each job's summaries, kept across runs.
    pub reports_dir: PathBuf,
    /// Per job: its summaries from this run, once it has run.
    pub summaries: Mutex<Vec<Option<Arc<Reports>>>>,
    pub job_ids: AtomicU64,
    pub cancel: watch::Receiver<bool>,
    /// The verifier of `verify:` jobs, once one needed it (see `verify.rs`).
    pub verifier: OnceLock<Arc<Verifier>>,
}

/// How one attempt ended.
struct Attempt {
    status: JobStatus,
    exit_code: Option<i32>,
    reason: Option<FailureReason>,
    coverage: Option<f64>,
    /// Why it failed without an exit code of its script (already masked).
    error: Option<String>,
}

impl Attempt {
    /// A failure without an exit code: `message` says why, in the job's log and in its result.
    fn failed<E>(ctx: &Ctx<E>, job: &str, reason: FailureReason, message: &str) -> Attempt {
        ctx.info(job, message);
        Attempt {
            status: JobStatus::Failed,
            exit_code: None,
            reason: Some(reason),
            coverage: None,
            error: Some(ctx.masker.mask(message).into_owned()),
        }
    }
}

impl<E> Ctx<E> {
    /// The run's verifier, the process's shared one (made by the first verifying job).
    pub(crate) fn verifier(&self) -> Result<Arc<Verifier>, String> {
        if let Some(v) = self.verifier.get() {
            return Ok(v.clone());
        }
        let v = verify::shared()?;
        Ok(self.verifier.get_or_init(|| v).clone())
    }

    fn stored(&self) -> std::sync::MutexGuard<'_, Vec<Stored>> {
        self.stored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn summaries(&self) -> std::sync::MutexGuard<'_, Vec<Option<Arc<Reports>>>> {
        self.summaries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The jobs whose summaries the gate of job `idx` is evaluated on: its `needs` (whether or not
    /// they pass artifacts), else every job of the earlier stages.
    fn gate_sources(&self, idx: usize) -> Vec<usize> {
        let job = &self.plan.jobs[idx];
        match &job.needs {
            Some(needs) => needs
                .iter()
                .filter_map(|n| self.by_name.get(&n.job).copied())
                .collect(),
            None => (0..self.plan.jobs.len())
                .filter(|&j| self.plan.jobs[j].stage_index < job.stage_index)
                .collect(),
        }
    }

    /// The merged summaries of [`Ctx::gate_sources`]: from this run for the jobs it selects (none
    /// for one that did not run), else as an earlier run kept them; or exactly
    /// [`RunConfig::gate_reports`] when the caller gave them.
    fn gate_reports(&self, idx: usize) -> Arc<Reports> {
        if let Some(given) = &self.config.gate_reports {
            return given.clone();
        }
        let mut all = Reports::default();
        for s in self.gate_sources(idx) {
            let r = if self.config.selected[s] {
                self.summaries()[s].clone()
            } else {
                summaries::kept(&self.reports_dir, &self.slugs[s]).map(Arc::new)
            };
            if let Some(r) = r {
                all.merge(&r);
            }
        }
        Arc::new(all)
    }

    pub(crate) fn info(&self, job: &str, message: &str) {
        let message = self.masker.mask(message);
        self.reporter.event(Event::JobInfo {
            job,
            message: &message,
        });
    }

    /// The jobs whose artifacts (and dotenv variables) job `idx` receives, and the explicitly named
    /// dependencies that are not in the plan.
    fn sources(&self, idx: usize) -> (Vec<usize>, Vec<String>) {
        let job = &self.plan.jobs[idx];
        if let Some(deps) = &job.dependencies {
            let mut missing = Vec::new();
            let found = deps
                .iter()
                .filter_map(|d| {
                    let i = self.by_name.get(d).copied();
                    if i.is_none() {
                        missing.push(d.clone());
                    }
                    i
                })
                .collect();
            (found, missing)
        } else if let Some(needs) = &job.needs {
            (
                needs
                    .iter()
                    .filter(|n| n.artifacts)
                    .filter_map(|n| self.by_name.get(&n.job).copied())
                    .collect(),
                Vec::new(),
            )
        } else {
            let stored = self.stored();
            let found = (0..self.plan.jobs.len())
                .filter(|&j| {
                    self.plan.jobs[j].stage_index < job.stage_index
                        && !matches!(stored[j], Stored::Nothing)
                })
                .collect();
            (found, Vec::new())
        }
    }

    /// The dotenv variables that `sources` pass on, in order.
    fn dotenv(&self, sources: &[usize]) -> Vec<Variable> {
        let mut out = Vec::new();
        for &s in sources {
            let state = self.stored()[s].clone();
            let vars = match state {
                Stored::Nothing => continue,
                Stored::Ready(v) => v,
                Stored::OnDisk => {
                    let v: Arc<[Variable]> = artifacts::stored_dotenv(&self.artifact_dir(s)).into();
                    self.stored()[s] = Stored::Ready(v.clone());
                    v
                }
            };
            out.extend(vars.iter().cloned());
        }
        out
    }

    fn artifact_dir(&self, idx: usize) -> PathBuf {
        self.artifacts_dir.join(&self.slugs[idx])
    }

    fn workspace(&self, idx: usize) -> PathBuf {
        if self.config.in_place {
            self.config.project_dir.clone()
        } else {
            self.builds_dir.join(&self.slugs[idx])
        }
    }

    fn builds_root(&self) -> PathBuf {
        if self.config.in_place {
            self.config
                .project_dir
                .parent()
                .map_or_else(|| self.config.project_dir.clone(), Path::to_path_buf)
        } else {
            self.builds_dir.clone()
        }
    }

    /// The resolved variables of an attempt of job `idx`.
    fn env(
        &self,
        idx: usize,
        job_id: u64,
        workspace: &Path,
        dotenv: &[Variable],
    ) -> Vec<(String, String)> {
        let mut runtime = vec![
            Variable::new("CI_JOB_ID", job_id.to_string()),
            Variable::new("CI_PIPELINE_ID", self.config.pipeline_id.to_string()),
            Variable::new("CI_PROJECT_DIR", workspace.to_string_lossy()),
            Variable::new("CI_BUILDS_DIR", self.builds_root().to_string_lossy()),
            Variable::new("CI_JOB_STARTED_AT", rfc3339(SystemTime::now())),
        ];
        // As GitLab Runner sets it, whatever the executor: the job's image, its variables expanded.
        if let Some(image) = &self.plan.jobs[idx].image {
            runtime.push(Variable::new("CI_JOB_IMAGE", image.name.clone()));
        }
        vars::resolve(&self.plan.job_variables(idx, &runtime, dotenv))
    }
}

/// Resolves when the pipeline is canceled; never if the sender is gone without canceling.
pub(crate) async fn canceled(cancel: &mut watch::Receiver<bool>) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn lookup(env: &[(String, String)]) -> HashMap<&str, &str> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Runs job `idx`, whose `when` says it runs, through all its attempts, and reports it finished.
/// `None` (and nothing reported) if the pipeline was canceled before the job started.
pub(crate) async fn run_job<E: Executor>(ctx: Arc<Ctx<E>>, idx: usize) -> Option<JobResult> {
    let job = &ctx.plan.jobs[idx];
    let mut cancel = ctx.cancel.clone();
    let (sources, missing) = ctx.sources(idx);
    for m in missing {
        ctx.info(
            &job.name,
            &format!("dependency `{m}` is not in the pipeline; no artifacts from it"),
        );
    }
    let dotenv = ctx.dotenv(&sources);

    if let (When::Delayed, Some(delay)) = (job.when, job.start_in) {
        ctx.info(
            &job.name,
            &format!("waiting {} (when: delayed)", human(delay)),
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = canceled(&mut cancel) => return None,
        }
    }

    let _group = match &job.resource_group {
        Some(group) => {
            let env = ctx.env(idx, 0, &ctx.workspace(idx), &dotenv);
            let map = lookup(&env);
            let name = vars::expand(group, &|n| map.get(n).map(|v| (*v).to_string()));
            let lock = ctx
                .groups
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(name)
                .or_default()
                .clone();
            tokio::select! {
                g = lock.lock_owned() => Some(g),
                () = canceled(&mut cancel) => return None,
            }
        }
        None => None,
    };
    let _slot = tokio::select! {
        s = ctx.slots.acquire() => s.ok(),
        () = canceled(&mut cancel) => return None,
    };
    if *cancel.borrow() {
        return None;
    }

    let started = Instant::now();
    let mut n = 1;
    let result = loop {
        ctx.reporter.event(Event::JobStarted {
            job: &job.name,
            stage: &job.stage,
            attempt: n,
        });
        let a = attempt(&ctx, idx, n, &sources, &dotenv).await;
        let retry = a.status == JobStatus::Failed
            && n <= job.retry.max
            && a.reason.is_some_and(|r| job.retry.matches(r, a.exit_code))
            && !*cancel.borrow();
        if retry {
            n += 1;
            ctx.info(
                &job.name,
                &format!("retrying (attempt {n} of {})", job.retry.max + 1),
            );
            continue;
        }
        break a;
    };
    let outcome = JobResult {
        name: job.name.clone(),
        stage: job.stage.clone(),
        allow_failure: result.status == JobStatus::Failed
            && job.allow_failure.allows(result.exit_code),
        status: result.status,
        exit_code: result.exit_code,
        duration: started.elapsed(),
        coverage: result.coverage,
        reason: result.reason,
    };
    // Reported here, before the slot and the resource group are released, so that no job that was
    // waiting for them is reported as started before this one is reported as finished.
    ctx.reporter
        .event(finished_event(&outcome, result.error.as_deref()));
    Some(outcome)
}

/// The [`Event::JobFinished`] of `result`, with `error` (why it failed without an exit code).
pub(crate) fn finished_event<'a>(result: &'a JobResult, error: Option<&'a str>) -> Event<'a> {
    Event::JobFinished {
        job: &result.name,
        stage: &result.stage,
        status: result.status,
        allow_failure: result.allow_failure,
        exit_code: result.exit_code,
        duration: result.duration,
        coverage: result.coverage,
        reason: result.reason,
        error,
    }
}

/// Evaluates the gate of job `idx` and reports it; the failed attempt when it does not pass.
async fn gate<E: Executor>(ctx: &Arc<Ctx<E>>, idx: usize) -> Option<Attempt> {
    let job = &ctx.plan.jobs[idx];
    let name = job.name.as_str();
    let ctx2 = ctx.clone();
    let reports = tokio::task::spawn_blocking(move || ctx2.gate_reports(idx))
        .await
        .unwrap_or_default();
    let outcome = gantry_reports::evaluate(&job.gate, &reports, ctx.config.changes.as_deref());
    ctx.reporter.event(Event::Gate {
        job: name,
        outcome: &outcome,
    });
    if outcome.passed {
        ctx.info(name, "quality gate passed");
        None
    } else {
        let message = summaries::gate_failure(&outcome);
        Some(Attempt::failed(
            ctx,
            name,
            FailureReason::ScriptFailure,
            &message,
        ))
    }
}

/// An attempt of a gate job without `script`: the gate alone. No workspace, cache or artifacts,
/// and no executor (no shell, no container), so no `before_script` or `after_script` either, not
/// even those it inherits from `default:`: they wrap a script in its shell, and there is none.
/// GitLab's other jobs without `script`, trigger jobs, likewise never reach a runner and run none
/// of the scripts they inherit.
async fn gate_only<E: Executor>(ctx: &Arc<Ctx<E>>, idx: usize, n: u32) -> Attempt {
    let name = ctx.plan.jobs[idx].name.as_str();
    if n == 1 {
        // As any job's first attempt: this run replaces what an earlier one kept for the job.
        let ctx2 = ctx.clone();
        let cleared = tokio::task::spawn_blocking(move || {
            ctx2.stored()[idx] = Stored::Nothing;
            let job = &ctx2.plan.jobs[idx].name;
            summaries::keep(
                &ctx2.reports_dir,
                &ctx2.slugs[idx],
                job,
                &Reports::default(),
            )?;
            files::remove(&ctx2.artifact_dir(idx))
        })
        .await;
        if let Ok(Err(e)) = cleared {
            ctx.info(
                name,
                &format!("cannot remove what an earlier run kept: {e}"),
            );
        }
    }
    ctx.summaries()[idx] = Some(Arc::default());
    gate(ctx, idx).await.unwrap_or(Attempt {
        status: JobStatus::Success,
        exit_code: None,
        reason: None,
        coverage: None,
        error: None,
    })
}

/// One attempt of job `idx`.
async fn attempt<E: Executor>(
    ctx: &Arc<Ctx<E>>,
    idx: usize,
    n: u32,
    sources: &[usize],
    dotenv: &[Variable],
) -> Attempt {
    let job = &ctx.plan.jobs[idx];
    let name = job.name.as_str();
    if job.script.is_empty() && !job.gate.is_empty() {
        return gate_only(ctx, idx, n).await;
    }
    let job_id = ctx.config.pipeline_id.saturating_mul(100_000)
        + ctx.job_ids.fetch_add(1, Ordering::Relaxed)
        + 1;
    let workspace = ctx.workspace(idx);
    let env = ctx.env(idx, job_id, &workspace, dotenv);

    let prepared = {
        let (ctx, env, workspace, sources) = (
            ctx.clone(),
            env.clone(),
            workspace.clone(),
            sources.to_vec(),
        );
        tokio::task::spawn_blocking(move || prepare_files(&ctx, idx, n, &workspace, &env, &sources))
            .await
    };
    // Held until the attempt is over: dropping it detaches an overlay workspace.
    let (cache_keys, _view) = match prepared {
        Ok(Ok(prepared)) => prepared,
        Ok(Err((reason, message))) => {
            return Attempt::failed(ctx, name, reason, &message);
        }
        Err(e) => {
            return Attempt::failed(
                ctx,
                name,
                FailureReason::RunnerSystemFailure,
                &format!("preparing the workspace failed: {e}"),
            );
        }
    };

    // Image and service names take the job's variables (`image: golang:$GO_VERSION`).
    let look = lookup(&env);
    let expand_name = |i: &gantry_pipeline::plan::Image| gantry_pipeline::plan::Image {
        name: vars::expand(&i.name, &|n| look.get(n).map(|v| (*v).to_string())),
        ..i.clone()
    };
    let context = JobContext {
        name: job.name.clone(),
        workspace: workspace.clone(),
        image: job.image.as_ref().map(expand_name),
        services: job.services.iter().map(expand_name).collect(),
    };
    let mut session = match ctx.executor.prepare(&context).await {
        Ok(s) => s,
        Err(message) => {
            return Attempt::failed(ctx, name, FailureReason::RunnerSystemFailure, &message);
        }
    };

    let mut coverage = Coverage::new(ctx, job.coverage.as_deref(), name);
    let commands: Vec<String> = job
        .before_script
        .iter()
        .chain(&job.script)
        .cloned()
        .collect();
    let mut env = env;
    if let Some(first) = job.verify.as_ref().and_then(|v| v.steps.first()) {
        verify::set_weight(&mut env, *first);
    }
    let timeout = job.timeout.unwrap_or(ctx.config.default_timeout);
    let mut parts = Vec::with_capacity(2);
    if !job.before_script.is_empty() {
        parts.push((0, Part::BeforeScript));
    }
    parts.push((job.before_script.len(), Part::Script));
    // Always echoed: the echoes say where the log's sections start (`RunConfig::echo` says
    // whether they are reported).
    let mut step = Step {
        kind: StepKind::Script,
        commands,
        env,
        workdir: workspace.clone(),
        timeout: Some(timeout),
        echo: true,
    };
    let started = tokio::time::Instant::now();
    let outcome = run_step(
        ctx,
        &mut session,
        &step,
        &parts,
        ctx.cancel.clone(),
        name,
        &mut coverage,
    )
    .await;
    let mut result = script_attempt(ctx, name, outcome, timeout);

    if let (Some(spec), JobStatus::Success) = (&job.verify, result.status) {
        let deploy = Deploy {
            name,
            parts: &parts,
            spec,
            deadline: started + timeout,
            timeout,
        };
        let verified = verified_steps(ctx, &mut session, &mut step, &deploy, &mut coverage).await;
        if let Some(failed) = verified {
            result = failed;
        }
    }

    if !job.gate.is_empty() && result.status == JobStatus::Success {
        if let Some(failed) = gate(ctx, idx).await {
            result = failed;
        }
    }

    if !job.after_script.is_empty() {
        let status = match result.status {
            JobStatus::Success => "success",
            JobStatus::Canceled => "canceled",
            JobStatus::Failed => "failed",
            JobStatus::Skipped
            | JobStatus::Manual
            | JobStatus::Created
            | JobStatus::Pending
            | JobStatus::Running
            | JobStatus::Scheduled => unreachable!("an attempt ends success, failed or canceled"),
        };
        let mut env = step.env.clone();
        env.push(("CI_JOB_STATUS".to_string(), status.to_string()));
        let after = Step {
            kind: StepKind::AfterScript,
            commands: job.after_script.clone(),
            env,
            workdir: workspace.clone(),
            timeout: Some(AFTER_SCRIPT_TIMEOUT),
            echo: true,
        };
        let parts = [(0, Part::AfterScript)];
        // after_script runs even when the pipeline is canceled; only its own timeout stops it.
        let (_keep, never) = watch::channel(false);
        let coverage = &mut coverage;
        match run_step(ctx, &mut session, &after, &parts, never, name, coverage).await {
            StepOutcome::Exited(0) => {}
            StepOutcome::Exited(code) => {
                ctx.info(name, &format!("after_script failed with exit code {code}"))
            }
            StepOutcome::TimedOut => {
                ctx.info(
                    name,
                    &format!(
                        "after_script timed out after {}",
                        human(AFTER_SCRIPT_TIMEOUT)
                    ),
                );
            }
            StepOutcome::Canceled => ctx.info(name, "after_script was canceled"),
            StepOutcome::SystemFailure(m) => {
                ctx.info(name, &format!("after_script could not run: {m}"))
            }
        }
    }
    result.coverage = coverage.value;

    if result.status != JobStatus::Canceled {
        let (ctx2, workspace2, env2, cov) = (
            ctx.clone(),
            workspace.clone(),
            step.env.clone(),
            result.coverage,
        );
        let read =
            tokio::task::spawn_blocking(move || read_reports(&ctx2, idx, &workspace2, &env2, cov))
                .await;
        let (reports, errors) = read.unwrap_or_else(|e| {
            (
                Reports::default(),
                vec![format!("reading the reports failed: {e}")],
            )
        });
        for kind in ReportKind::present(&reports) {
            ctx.reporter.event(Event::Report {
                job: name,
                kind,
                reports: &reports,
            });
        }
        ctx.summaries()[idx] = Some(Arc::new(reports));
        if !errors.is_empty() {
            let message = errors.join("\n");
            if result.status == JobStatus::Success {
                let cov = result.coverage;
                result = Attempt::failed(ctx, name, FailureReason::ScriptFailure, &message);
                result.coverage = cov;
            } else {
                ctx.info(name, &message);
            }
        }
    }

    if result.status != JobStatus::Canceled {
        let (ctx2, workspace2, status, env) =
            (ctx.clone(), workspace.clone(), result.status, step.env);
        let done = tokio::task::spawn_blocking(move || {
            finish_files(&ctx2, idx, &workspace2, &env, status, &cache_keys)
        });
        if let Err(e) = done.await {
            ctx.info(name, &format!("saving cache and artifacts failed: {e}"));
        }
    }
    session.cleanup().await;
    result
}

/// A verified job's attempt, for [`verified_steps`].
struct Deploy<'a> {
    name: &'a str,
    /// The sections of its script step.
    parts: &'a [(usize, Part)],
    spec: &'a gantry_pipeline::verify::Verify,
    /// When the job's timeout ends (counted from its script's start).
    deadline: tokio::time::Instant,
    timeout: Duration,
}

/// Verifies the first progressive step (whose script `step` just succeeded), then runs the script
/// of each further step (with its `GANTRY_DEPLOY_WEIGHT`) and verifies it. `None` when every step
/// passed; else how the attempt ends: failed at the first failing step, canceled, or timed out.
async fn verified_steps<E: Executor>(
    ctx: &Arc<Ctx<E>>,
    session: &mut E::Session,
    step: &mut Step,
    deploy: &Deploy<'_>,
    coverage: &mut Coverage,
) -> Option<Attempt> {
    let name = deploy.name;
    let verifier = match ctx.verifier() {
        Ok(v) => v,
        Err(m) => {
            return Some(Attempt::failed(
                ctx,
                name,
                FailureReason::RunnerSystemFailure,
                &m,
            ));
        }
    };
    let steps = &deploy.spec.steps;
    // Measurements carry a weight only when the job has steps of its own.
    let progressive = steps.as_slice() != [100];
    for (i, &weight) in steps.iter().enumerate() {
        if i > 0 {
            verify::set_weight(&mut step.env, weight);
            step.timeout = Some(
                deploy
                    .deadline
                    .saturating_duration_since(tokio::time::Instant::now()),
            );
            let of = steps.len();
            ctx.info(
                name,
                &format!("progressive step {} of {of}: weight {weight}", i + 1),
            );
            let cancel = ctx.cancel.clone();
            let outcome = run_step(ctx, session, step, deploy.parts, cancel, name, coverage).await;
            let result = script_attempt(ctx, name, outcome, deploy.timeout);
            if result.status != JobStatus::Success {
                return Some(result);
            }
        }
        let at = if progressive {
            format!(" at weight {weight}")
        } else {
            String::new()
        };
        let spec = verify::expanded(deploy.spec, &step.env);
        if let Err(m) = verify::check_urls(&spec) {
            return Some(Attempt::failed(ctx, name, FailureReason::ScriptFailure, &m));
        }
        ctx.info(name, &verify::starting(&spec, &at, human));
        let weight = progressive.then_some(weight);
        let report = |m: &gantry_release::Measurement| {
            let measurement = verify::masked(&ctx.masker, m);
            ctx.reporter.event(Event::Verify {
                job: name,
                weight,
                measurement: &measurement,
            });
        };
        let ended = verify::verify(
            &verifier,
            &spec,
            report,
            ctx.cancel.clone(),
            deploy.deadline,
        )
        .await;
        let Some(outcome) = ended else {
            let message = format!("timed out after {} (verifying)", human(deploy.timeout));
            return Some(Attempt::failed(
                ctx,
                name,
                FailureReason::JobExecutionTimeout,
                &message,
            ));
        };
        if outcome.status == gantry_release::Status::Canceled {
            return Some(script_attempt(
                ctx,
                name,
                StepOutcome::Canceled,
                deploy.timeout,
            ));
        }
        match verify::judged(&outcome, &at) {
            Ok(line) => ctx.info(name, &line),
            Err(m) => {
                let reason = FailureReason::VerificationFailure;
                return Some(Attempt::failed(ctx, name, reason, &m));
            }
        }
    }
    None
}

/// How a script step's `outcome` ends the attempt of job `name`, whose timeout is `timeout`.
fn script_attempt<E>(ctx: &Ctx<E>, name: &str, outcome: StepOutcome, timeout: Duration) -> Attempt {
    match outcome {
        StepOutcome::Exited(0) => Attempt {
            status: JobStatus::Success,
            exit_code: Some(0),
            reason: None,
            coverage: None,
            error: None,
        },
        StepOutcome::Exited(code) => Attempt {
            status: JobStatus::Failed,
            exit_code: Some(code),
            reason: Some(FailureReason::ScriptFailure),
            coverage: None,
            error: None,
        },
        StepOutcome::TimedOut => Attempt::failed(
            ctx,
            name,
            FailureReason::JobExecutionTimeout,
            &format!("timed out after {}", human(timeout)),
        ),
        StepOutcome::Canceled => Attempt {
            status: JobStatus::Canceled,
            exit_code: None,
            reason: None,
            coverage: None,
            error: None,
        },
        StepOutcome::SystemFailure(message) => {
            Attempt::failed(ctx, name, FailureReason::RunnerSystemFailure, &message)
        }
    }
}

/// Runs one step, forwarding its events (masked) to the reporter, with the log sections of its
/// `parts` (each from the index of its first command; their markers are not masked: they are
/// the runtime's, and a masked value must not break them).
async fn run_step<S: Session>(
    ctx: &Ctx<impl Sized>,
    session: &mut S,
    step: &Step,
    parts: &[(usize, Part)],
    cancel: watch::Receiver<bool>,
    job: &str,
    coverage: &mut Coverage,
) -> StepOutcome {
    let (tx, mut rx) = mpsc::channel(STEP_CHANNEL);
    let mut sections = Sections::new(parts, &step.commands);
    let section = |line: &str| {
        ctx.reporter.event(Event::JobLog {
            job,
            stream: crate::Stream::Stdout,
            line,
        });
    };
    let consume = async {
        while let Some(event) = rx.recv().await {
            match event {
                StepEvent::Echo(command) => {
                    for line in sections.echoed(&command) {
                        section(&line);
                    }
                    if ctx.config.echo {
                        let command = ctx.masker.mask(&command);
                        ctx.reporter.event(Event::JobEcho {
                            job,
                            command: &command,
                        });
                    }
                }
                StepEvent::Output(out) => {
                    coverage.scan(&out.line);
                    let line = ctx.masker.mask(&out.line);
                    ctx.reporter.event(Event::JobLog {
                        job,
                        stream: out.stream,
                        line: &line,
                    });
                }
            }
        }
    };
    let (outcome, ()) = tokio::join!(session.run_step(step, tx, cancel), consume);
    // However the step ended (a failed command, its timeout, a cancel): its last section ends.
    if let Some(line) = sections.close() {
        section(&line);
    }
    outcome
}

/// The job's `coverage` regex and the last value it found.
struct Coverage {
    re: Option<Regex>,
    value: Option<f64>,
}

impl Coverage {
    fn new<E>(ctx: &Ctx<E>, pattern: Option<&str>, job: &str) -> Coverage {
        let re = pattern.and_then(|p| match Regex::new(p) {
            Ok(re) => Some(re),
            Err(e) => {
                ctx.info(
                    job,
                    &format!("coverage regex `{p}` is invalid, ignored: {e}"),
                );
                None
            }
        });
        Coverage { re, value: None }
    }

    fn scan(&mut self, line: &str) {
        static NUMBER: OnceLock<Regex> = OnceLock::new();
        let Some(re) = &self.re else { return };
        // As GitLab (`regex.scan(line).flatten.last`): the last match in the line, and in it the last
        // capture group that took part, or the whole match when the regex has no groups; then the
        // first number inside that text.
        let Some(caps) = re.captures_iter(line).last() else {
            return;
        };
        let text = caps
            .iter()
            .skip(1)
            .flatten()
            .last()
            .or_else(|| caps.get(0))
            .map_or("", |m| m.as_str());
        let number = NUMBER.get_or_init(|| Regex::new(r"\d+(?:\.\d+)?").expect("valid regex"));
        if let Some(v) = number.find(text).and_then(|n| n.as_str().parse().ok()) {
            self.value = Some(v);
        }
    }
}

/// Workspace, cache restore and artifact restore of an attempt. Returns the cache keys and the
/// workspace's view, or why the attempt fails.
fn prepare_files<E>(
    ctx: &Ctx<E>,
    idx: usize,
    n: u32,
    workspace: &Path,
    env: &[(String, String)],
    sources: &[usize],
) -> Result<(Vec<String>, Option<View>), (FailureReason, String)> {
    let job = &ctx.plan.jobs[idx];
    let name = job.name.as_str();
    let system = |what: &str, e: std::io::Error| {
        (FailureReason::RunnerSystemFailure, format!("{what}: {e}"))
    };
    if n == 1 {
        // This run replaces whatever an earlier run stored for the job.
        files::remove(&ctx.artifact_dir(idx))
            .map_err(|e| system("cannot remove old artifacts", e))?;
        ctx.stored()[idx] = Stored::Nothing;
    }
    let view = if ctx.config.in_place {
        None
    } else {
        Some(
            ctx.snapshot
                .populate(workspace)
                .map_err(|e| system(&format!("cannot create {}", workspace.display()), e))?,
        )
    };
    let map = lookup(env);
    let look = |n: &str| map.get(n).map(|v| (*v).to_string());

    let mut keys = Vec::with_capacity(job.cache.len());
    for c in &job.cache {
        let key =
            cache::key(c, &look, workspace).map_err(|m| (FailureReason::UnknownFailure, m))?;
        if c.policy != CachePolicy::Push {
            let fallbacks = c
                .fallback_keys
                .iter()
                .map(|k| vars::expand(k, &look))
                .filter(|k| cache::check(k).is_ok())
                .map(|k| format!("{k}{}", c.key_suffix));
            let found = std::iter::once(key.clone())
                .chain(fallbacks)
                .find(|k| ctx.cache_dir.join(k).is_dir());
            match found {
                Some(k) => match files::copy_tree(&ctx.cache_dir.join(&k), workspace) {
                    Ok(count) => ctx.info(
                        name,
                        &format!("cache restored from key {k} ({count} files)"),
                    ),
                    Err(e) => ctx.info(name, &format!("cannot restore cache {k}: {e}")),
                },
                None => ctx.info(name, &format!("no cache for key {key}")),
            }
        }
        keys.push(key);
    }

    for &s in sources {
        let source = &ctx.plan.jobs[s];
        // Only what was stored in this run, or by an earlier run for a job this run does not run:
        // never stale files of a job that this run skipped.
        let usable = !matches!(ctx.stored()[s], Stored::Nothing);
        let restored = if usable {
            artifacts::restore(&ctx.artifact_dir(s), workspace)
        } else {
            Ok(None)
        };
        match restored {
            Ok(Some(count)) if count > 0 => {
                ctx.info(
                    name,
                    &format!("artifacts of {} restored ({count} files)", source.name),
                );
            }
            Ok(None) if job.dependencies.is_some() && source.artifacts.is_some() => {
                ctx.info(
                    name,
                    &format!("{} has no artifacts to restore", source.name),
                );
            }
            Ok(_) => {}
            Err(e) => ctx.info(
                name,
                &format!("cannot restore the artifacts of {}: {e}", source.name),
            ),
        }
    }
    Ok((keys, view))
}

/// Reads job `idx`'s reports (whatever its status, as GitLab collects reports) into summaries
/// with `coverage` (its `coverage:` regex's value), and keeps them under `state_dir/reports/`.
/// Returns the summaries and why some reports could not be read.
fn read_reports<E>(
    ctx: &Ctx<E>,
    idx: usize,
    workspace: &Path,
    env: &[(String, String)],
    coverage: Option<f64>,
) -> (Reports, Vec<String>) {
    let job = &ctx.plan.jobs[idx];
    let map = lookup(env);
    let look = |n: &str| map.get(n).map(|v| (*v).to_string());
    let mut kinds = Vec::new();
    let mut errors = Vec::new();
    for (kind, paths) in job.artifacts.iter().flat_map(|a| &a.reports) {
        if !summaries::is_read(kind) {
            continue;
        }
        let paths: Vec<String> = paths.iter().map(|p| vars::expand(p, &look)).collect();
        match files::select(workspace, &paths, &[], None) {
            Ok(sel) => {
                if sel.files.is_empty() {
                    ctx.info(
                        &job.name,
                        &format!("no {kind} report matches {}", paths.join(", ")),
                    );
                }
                kinds.push((kind.clone(), sel.files));
            }
            Err(e) => errors.push(format!("cannot collect the {kind} report: {e}")),
        }
    }
    let (mut reports, read_errors) =
        summaries::read(workspace, &kinds, ctx.config.max_report_bytes);
    errors.extend(read_errors);
    reports.job_coverage = coverage.into_iter().collect();
    summaries::mask(&ctx.masker, &mut reports);
    if let Err(e) = summaries::keep(&ctx.reports_dir, &ctx.slugs[idx], &job.name, &reports) {
        ctx.info(&job.name, &format!("cannot keep the report summaries: {e}"));
    }
    (reports, errors)
}

fn when_matches(when: ArtifactsWhen, status: JobStatus) -> bool {
    match when {
        ArtifactsWhen::Always => true,
        ArtifactsWhen::OnSuccess => status == JobStatus::Success,
        ArtifactsWhen::OnFailure => status == JobStatus::Failed,
    }
}

/// Cache save, artifact and dotenv collection of an attempt.
fn finish_files<E>(
    ctx: &Ctx<E>,
    idx: usize,
    workspace: &Path,
    env: &[(String, String)],
    status: JobStatus,
    cache_keys: &[String],
) {
    let job = &ctx.plan.jobs[idx];
    let name = job.name.as_str();
    let map = lookup(env);
    let look = |n: &str| map.get(n).map(|v| (*v).to_string());
    let expand_all = |ps: &[String]| {
        ps.iter()
            .map(|p| vars::expand(p, &look))
            .collect::<Vec<_>>()
    };

    for (c, key) in job.cache.iter().zip(cache_keys) {
        if c.policy == CachePolicy::Pull || !when_matches(c.when, status) {
            continue;
        }
        let tracked = c.untracked.then(|| ctx.snapshot.listed());
        let saved = files::select(workspace, &expand_all(&c.paths), &[], tracked).and_then(|sel| {
            files::replace_dir_with(workspace, &sel.files, &ctx.cache_dir.join(key))
        });
        match saved {
            Ok(count) => ctx.info(
                name,
                &format!("cache saved under key {key} ({count} files)"),
            ),
            Err(e) => ctx.info(name, &format!("cannot save cache {key}: {e}")),
        }
    }

    let Some(a) = &job.artifacts else { return };
    if !when_matches(a.when, status) {
        return;
    }
    let tracked = a.untracked.then(|| ctx.snapshot.listed());
    let selection = match files::select(
        workspace,
        &expand_all(&a.paths),
        &expand_all(&a.exclude),
        tracked,
    ) {
        Ok(s) => s,
        Err(e) => {
            ctx.info(name, &format!("cannot collect artifacts: {e}"));
            return;
        }
    };
    for w in &selection.warnings {
        ctx.info(name, &format!("artifacts: {w}"));
    }
    let mut reports = Vec::new();
    let mut dotenv = Vec::new();
    for (kind, paths) in &a.reports {
        let sel = match files::select(workspace, &expand_all(paths), &[], None) {
            Ok(s) => s,
            Err(e) => {
                ctx.info(name, &format!("cannot collect the {kind} report: {e}"));
                continue;
            }
        };
        if kind == "dotenv" {
            for f in sel.files.iter().filter(|f| !workspace.join(f).is_dir()) {
                match std::fs::read_to_string(workspace.join(f)) {
                    Ok(text) => {
                        let (pairs, bad) = artifacts::parse_dotenv(&text);
                        for b in bad {
                            ctx.info(
                                name,
                                &format!("dotenv {}: ignored invalid line `{b}`", f.display()),
                            );
                        }
                        dotenv.extend(pairs);
                    }
                    Err(e) => ctx.info(
                        name,
                        &format!("cannot read dotenv report {}: {e}", f.display()),
                    ),
                }
            }
        }
        reports.push((kind.clone(), sel.files));
    }
    let meta = artifacts::Meta {
        job: job.name.clone(),
        name: Some(
            a.name
                .as_ref()
                .map_or_else(|| "artifacts".to_string(), |n| vars::expand(n, &look)),
        ),
        expire_in: a.expire_in.clone(),
        created_at: rfc3339(SystemTime::now()),
        files: 0,
        dotenv: dotenv.clone(),
    };
    let upload = artifacts::Upload {
        workspace,
        files: &selection.files,
        reports: &reports,
        meta,
    };
    match artifacts::store(&ctx.artifact_dir(idx), upload) {
        Ok(()) => {
            let count = selection
                .files
                .iter()
                .filter(|f| !workspace.join(f).is_dir())
                .count();
            ctx.info(
                name,
                &format!(
                    "artifacts: {count} file{}",
                    if count == 1 { "" } else { "s" }
                ),
            );
            ctx.stored()[idx] = Stored::Ready(artifacts::to_variables(dotenv).into());
        }
        Err(e) => ctx.info(name, &format!("cannot store artifacts: {e}")),
    }
}

/// A duration as a person writes it: `10s`, `1.5s`, `2m 5s`.
pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        let (m, s) = (secs / 60, secs % 60);
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m {s}s")
        }
    } else if d.subsec_millis() == 0 {
        format!("{secs}s")
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// `t` as RFC 3339 in UTC, to the second: `2024-05-01T12:00:00Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::MAX)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_and_durations() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
            "2024-02-29T12:34:56Z"
        );
        assert_eq!(human(Duration::from_secs(10)), "10s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_secs(125)), "2m 5s");
    }
}
