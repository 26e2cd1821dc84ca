//! Runs a compiled [`gantry_pipeline::Plan`]: DAG scheduling, the job lifecycle, logs and masking,
//! workspaces, artifacts, dotenv reports and caches. Processes are started only through an
//! [`executor::Executor`].
//!
//! ```no_run
//! # async fn example<E: gantry_runtime::executor::Executor>(plan: gantry_pipeline::Plan, executor: E,
//! #     reporter: std::sync::Arc<dyn gantry_runtime::Reporter>) -> Result<(), gantry_runtime::RuntimeError> {
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! let config = gantry_runtime::RunConfig {
//!     project_dir: ".".into(),
//!     state_dir: ".gantry".into(),
//!     pipeline_id: 1,
//!     concurrency: 4,
//!     in_place: false,
//!     selected: vec![true; plan.jobs.len()],
//!     play_manual: Vec::new(),
//!     echo: true,
//!     default_timeout: Duration::from_secs(3600),
//!     files: None,
//!     overlay: true,
//!     changes: None,
//!     max_report_bytes: gantry_runtime::gantry_reports::DEFAULT_MAX_BYTES,
//!     gate_reports: None,
//! };
//! let (_cancel_tx, cancel) = tokio::sync::watch::channel(false);
//! let result = gantry_runtime::run(&plan, config, Arc::new(executor), reporter, cancel).await?;
//! # let _ = result; Ok(()) }
//! ```
//!
//! # Decisions worth knowing
//! - A job's `when` is evaluated once everything it waits for has finished. Skipped jobs and manual
//!   jobs that were not played count as successes for their dependants, except that a job skipped
//!   because of a failure makes its `on_success` dependants skipped too (and triggers `on_failure`
//!   ones), as in GitLab.
//! - A manual job that is not played holds nothing up, even with `allow_failure: false` (where
//!   GitLab would block the pipeline until someone plays it): a local run has nobody to play it
//!   later, and gitlab-ci-local, whose `run` flags Gantry follows, does the same. The CLI refuses
//!   to run a job that `needs` an unplayed manual job.
//! - After each attempt (passed or failed, not canceled), the job's `artifacts:reports` are read
//!   into summaries (`summaries.rs`), reported as [`Event::Report`] and kept under
//!   `state_dir/reports/`; a report that cannot be read fails the job. A job with `gate:` runs
//!   its script, then evaluates the gate on the summaries of the jobs it depends on (its `needs`,
//!   else every job of earlier stages) from this run, or for jobs this run does not select, from
//!   `state_dir/reports/` (or on exactly [`RunConfig::gate_reports`] when given);
//!   [`Event::Gate`] carries the verdict, and a failed gate fails the job.
//! - A job with `verify:` (a deploy job) runs its script once per progressive step, with
//!   `GANTRY_DEPLOY_WEIGHT` set to the step's weight, and after each successful run verifies the
//!   deployment with `gantry-release` (`verify.rs`), reporting each measurement as
//!   [`Event::Verify`]; a failed verification fails the job and stops the progression, a marginal
//!   one goes on with a warning. Its gate, if any, and `after_script` come after.
//! - On cancel, running jobs are killed (their `after_script` still runs) and every job that had not
//!   started ends as [`JobStatus::Canceled`].

pub mod executor;
#[cfg(feature = "fake")]
pub mod fake;
pub mod script;
pub mod section;

mod artifacts;
mod cache;
mod files;
mod job;
mod mask;
mod schedule;
mod summaries;
mod verify;
mod workspace;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use executor::Stream;
// The API's statuses: a run ends a job `success`, `failed`, `canceled`, `skipped` or `manual`, and a
// pipeline `success`, `failed` or `canceled`; the others are the server's.
pub use gantry_api::{JobStatus, PipelineStatus};
use gantry_pipeline::Plan;
pub use gantry_pipeline::plan::FailureReason;
pub use gantry_release;
pub use gantry_reports;
pub use mask::{MASK, Masker};
pub use summaries::ReportKind;
pub use verify::measurement_line;

/// How to run a pipeline.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The user's working tree (root of the git repository, or `--cwd`).
    pub project_dir: PathBuf,
    /// Where gantry keeps its state, usually `project_dir/.gantry`; created with a `.gitignore` of `*`.
    pub state_dir: PathBuf,
    /// This pipeline's id (`CI_PIPELINE_ID`, and the name of its builds directory).
    pub pipeline_id: u64,
    /// At most this many jobs run at once (0 is taken as 1).
    pub concurrency: usize,
    /// Run every job in `project_dir` itself instead of in its own workspace.
    pub in_place: bool,
    /// Per job of the plan (by index): whether it is part of this run. Other jobs are ignored: not
    /// waited for, and their stored artifacts (from earlier runs) are used.
    pub selected: Vec<bool>,
    /// The manual jobs to run (`--manual JOB`); other manual jobs end as [`JobStatus::Manual`].
    pub play_manual: Vec<String>,
    /// Report each command before it runs ([`Event::JobEcho`]). Commands are echoed to the
    /// runtime either way: the echoes start the log's sections ([`section`]).
    pub echo: bool,
    /// The timeout of jobs that do not set `timeout`.
    pub default_timeout: Duration,
    /// The project's files (tracked, plus untracked and not ignored), relative to `project_dir`, when
    /// the caller has listed them already; `None` makes the runtime list them itself.
    pub files: Option<Vec<PathBuf>>,
    /// Give each job an overlay (copy-on-write) view of the project snapshot where the system allows
    /// it (root, with a kernel and file system that take overlayfs); `false`, or where it does not,
    /// a tree of hard links to the snapshot. See `ARCHITECTURE.md`, Workspaces.
    pub overlay: bool,
    /// The lines the change added or modified against its base, for gates' `new_coverage`
    /// (`None`: no base known, and `new_coverage` has no data).
    pub changes: Option<Arc<gantry_reports::ChangedLines>>,
    /// A report file larger than this fails its job ([`gantry_reports::DEFAULT_MAX_BYTES`]).
    pub max_report_bytes: u64,
    /// The summaries a gate is evaluated on, when the caller has them (an agent, from the job's
    /// spec): exactly these, instead of this run's and `state_dir/reports/`. `None`: those.
    pub gate_reports: Option<Arc<gantry_reports::Reports>>,
}

/// Detaches every job workspace overlay this process still has mounted. For a process about to exit
/// without letting [`run`] finish (a second Ctrl-C); [`run`] detaches each when its job ends, and a
/// later run detaches what a killed one left.
pub fn unmount_workspaces() {
    workspace::unmount_all();
}

/// Receives everything that happens, as it happens. Called from many tasks at once; it should be quick
/// (a log line is reported before the job can produce the next one).
pub trait Reporter: Send + Sync {
    /// One event.
    fn event(&self, event: Event<'_>);
}

/// What the runtime reports. Text is already masked.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// An attempt of a job starts (attempts count from 1).
    JobStarted {
        /// The job.
        job: &'a str,
        /// Its stage.
        stage: &'a str,
        /// The attempt.
        attempt: u32,
    },
    /// A command is about to run.
    JobEcho {
        /// The job.
        job: &'a str,
        /// The command, as written (possibly several lines).
        command: &'a str,
    },
    /// A line of job output.
    JobLog {
        /// The job.
        job: &'a str,
        /// The stream.
        stream: Stream,
        /// The line, without its terminator.
        line: &'a str,
    },
    /// Something the runtime did or noticed for a job ("retrying (attempt 2 of 3)", "after_script failed
    /// with exit code 3", "artifacts: 3 files", ...).
    JobInfo {
        /// The job.
        job: &'a str,
        /// The message.
        message: &'a str,
    },
    /// A job is done, whatever happened to it. Sent exactly once per selected job.
    JobFinished {
        /// The job.
        job: &'a str,
        /// Its stage.
        stage: &'a str,
        /// How it ended: success, failed, canceled, skipped or manual.
        status: JobStatus,
        /// Whether its failure is allowed (only ever true when `status` is [`JobStatus::Failed`]).
        allow_failure: bool,
        /// The script's exit code, when it ran to an exit.
        exit_code: Option<i32>,
        /// From its first start to its end (zero for jobs that did not run).
        duration: Duration,
        /// The coverage found in its log.
        coverage: Option<f64>,
        /// Why it failed.
        reason: Option<FailureReason>,
        /// Why it failed without an exit code of its script, in words: it could not start (the
        /// image cannot be pulled, the workspace cannot be made, no executor takes it), the runner
        /// failed, or it timed out. `None` otherwise. Masked.
        error: Option<&'a str>,
    },
    /// A job's reports of one kind, read after an attempt (passed or failed). Sent before its
    /// [`Event::JobFinished`], once per kind that the job's reports have data of.
    Report {
        /// The job.
        job: &'a str,
        /// Which summary of `reports` this event is about.
        kind: ReportKind,
        /// All of the job's summaries.
        reports: &'a gantry_reports::Reports,
    },
    /// A gate job's gate was evaluated (after its script succeeded), before its
    /// [`Event::JobFinished`].
    Gate {
        /// The job.
        job: &'a str,
        /// The verdict, each condition and the worst offenders.
        outcome: &'a gantry_reports::GateOutcome,
    },
    /// A measurement of a job's verification (`verify:`), as it is taken, before the job's
    /// [`Event::JobFinished`].
    Verify {
        /// The job.
        job: &'a str,
        /// The progressive step's weight, when the job's `verify:steps` are its own (not `[100]`).
        weight: Option<u8>,
        /// The measurement; its text is masked.
        measurement: &'a gantry_release::Measurement,
    },
    /// The pipeline is done.
    PipelineFinished {
        /// How it ended: success, failed or canceled.
        status: PipelineStatus,
        /// How long it took.
        duration: Duration,
    },
}

/// How one job ended (the content of its [`Event::JobFinished`]).
#[derive(Clone, Debug, PartialEq)]
pub struct JobResult {
    /// The job's name.
    pub name: String,
    /// Its stage.
    pub stage: String,
    /// How it ended: success, failed, canceled, skipped or manual.
    pub status: JobStatus,
    /// Whether its failure is allowed.
    pub allow_failure: bool,
    /// The script's exit code.
    pub exit_code: Option<i32>,
    /// How long it ran, all attempts included.
    pub duration: Duration,
    /// Its coverage.
    pub coverage: Option<f64>,
    /// Why it failed.
    pub reason: Option<FailureReason>,
}

/// How a pipeline ended.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineResult {
    /// The pipeline's status: success, failed or canceled.
    pub status: PipelineStatus,
    /// One entry per selected job, in plan order.
    pub jobs: Vec<JobResult>,
}

/// Why a pipeline could not run at all. Failures of single jobs are job statuses, not errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// `RunConfig::selected` does not match the plan.
    #[error("the run selects {selected} jobs but the plan has {jobs}")]
    Selection {
        /// `selected.len()`.
        selected: usize,
        /// `plan.jobs.len()`.
        jobs: usize,
    },
    /// The state directory or the project snapshot could not be made.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// What was being prepared.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where the artifact store under `state_dir` keeps the entry of the job at `index` of `plan`:
/// `state_dir/artifacts/<slug>/`, holding `files/`, `reports/<type>/` and `meta.json` (with the
/// job's dotenv variables). An agent places a dependency's downloaded entry there before [`run`], and
/// archives the entry of the job it ran after it.
///
/// # Panics
/// When `index` is not a job of `plan`.
#[must_use]
pub fn artifact_dir(plan: &Plan, state_dir: &std::path::Path, index: usize) -> PathBuf {
    state_dir
        .join("artifacts")
        .join(schedule::slugs(plan).swap_remove(index))
}

/// Runs `plan` with `executor`, reporting to `reporter`, until every selected job has finished or
/// `cancel` becomes `true`.
///
/// # Errors
/// Only when the pipeline cannot start: see [`RuntimeError`].
pub async fn run<E: executor::Executor>(
    plan: &Plan,
    config: RunConfig,
    executor: Arc<E>,
    reporter: Arc<dyn Reporter>,
    cancel: tokio::sync::watch::Receiver<bool>,
) -> Result<PipelineResult, RuntimeError> {
    schedule::run(plan, config, executor, reporter, cancel).await
}
