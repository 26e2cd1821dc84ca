//! One job handed out by the server, from its source download to its `finish` call.
//!
//! The job runs in place in a git checkout of its commit, `work_dir/builds/checkouts/<worker>/<project>/`
//! (see `checkout`), kept for the next job of the project on that worker. The worker's job directory
//! `work_dir/builds/jobs/<worker>/` holds `src/` (only where `git` is missing: the commit's tree from
//! the server's archive), `state/` (the runtime's state dir: the dependencies' artifacts go to its
//! artifact store before the run, and the job's own entry is archived from there after it), `log`
//! (the spool) and the archives in transit. It is emptied before and after each job (see
//! [`empty_job_dir`] and [`prepare_job_dir`]), and kept: creating and deleting a directory tree per job was a third of an
//! agent's CPU for trivial jobs, in the filesystem's inode allocation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gantry_api::agent::{FinishJob, JobSpec, Outcome};
use gantry_pipeline::Plan;
use gantry_pipeline::plan::{FailureReason, Variable, When};
use gantry_runtime::{JobResult, JobStatus, RunConfig};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::archive;
use crate::backoff::Backoff;
use crate::checkout;
use crate::client::{CallError, Client};
use crate::executors::Executors;
use crate::reports;
use crate::spool::{self, LogReporter, Spool, Summaries, UploadError};

/// The timeout of jobs whose plan sets none (the server's plan normally sets one).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a job whose lease is lost gets to stop before it is dropped.
const LOST_GRACE: Duration = Duration::from_secs(10);

/// What every job of an agent shares.
pub(crate) struct Env {
    pub client: Client,
    pub work_dir: PathBuf,
    pub name: String,
    /// What runs the job's steps.
    pub exec: Arc<Executors>,
    /// Whether `git` runs here: jobs get a git checkout; else the server's archive of the tree.
    pub git: bool,
    /// Turns true when the agent aborts (SIGTERM): running jobs stop and are reported failed.
    pub abort: watch::Receiver<bool>,
}

/// How the job went, as far as the agent's bookkeeping goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Done {
    /// The server took the `finish` call.
    Finished,
    /// The lease was lost: the job was stopped and dropped.
    LeaseLost,
    /// The server refused the job's calls for good (logged).
    Refused,
}

/// Runs `spec` to its end; never fails (what goes wrong goes to the job's log, the agent's log, or
/// the server's view of the job).
/// `slot` is the worker's number: its checkouts are its own.
pub(crate) async fn run(env: Arc<Env>, spec: JobSpec, slot: usize) -> Done {
    let span = tracing::info_span!(
        "job",
        job_id = spec.job_id,
        pipeline_id = spec.pipeline_id,
        job = %spec.job,
        trace_id = %spec.trace_id,
    );
    async move {
        tracing::info!(project = %spec.project, attempt = spec.attempt, "job started");
        let dir = job_dir(&env.work_dir, slot);
        let done = run_in(&env, &spec, &dir, slot).await;
        let emptied = tokio::task::spawn_blocking(move || empty_job_dir(&dir)).await;
        if let Ok(Err(e)) = emptied {
            tracing::warn!(error = %e, "cannot empty the job's directory");
        }
        match &done {
            Done::Finished => tracing::info!("job finished"),
            Done::LeaseLost => tracing::warn!("lease lost; job stopped and dropped"),
            Done::Refused => {}
        }
        done
    }
    .instrument(span)
    .await
}

/// The lease monitor's news.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lease {
    Held,
    Lost,
}

async fn run_in(env: &Arc<Env>, spec: &JobSpec, dir: &Path, slot: usize) -> Done {
    let prepared = {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            prepare_job_dir(&dir)?;
            Spool::create(&dir.join(LOG))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
    };
    let spool = match prepared {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot prepare the job's directory");
            // Nothing can be logged: say so in the finish call.
            let failed = failure(FailureReason::RunnerSystemFailure);
            return finish(env, spec, &failed, 0, Summaries::default()).await;
        }
    };
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let (lease_tx, mut lease_rx) = watch::channel(Lease::Held);
    let cancel_tx = Arc::new(cancel_tx);

    let mut uploader = tokio::spawn(spool::upload(
        env.client.clone(),
        spec.job_id,
        spool.clone(),
    ));
    let heartbeat = tokio::spawn(heartbeat(
        env.client.clone(),
        spec.job_id,
        Duration::from_millis(spec.lease_timeout_ms / 3).max(Duration::from_millis(100)),
        cancel_tx.clone(),
        lease_tx,
    ));

    spool.info(&format!(
        "Running job {} (id {}, pipeline {}) on agent {} (trace {})",
        spec.job, spec.job_id, spec.pipeline_id, env.name, spec.trace_id
    ));
    // The lease can be lost while the job prepares or runs: stop it then.
    let reporter = Arc::new(LogReporter::new(spool.clone()));
    let work = execute(env, spec, dir, slot, &reporter, cancel_rx);
    tokio::pin!(work);
    let mut abort = env.abort.clone();
    let mut was_aborted = false;
    let result = tokio::select! {
        r = &mut work => Some(r),
        () = lost(&mut lease_rx) => None,
        () = aborted(&mut abort) => {
            was_aborted = true;
            // The agent is stopping: stop the job, then report it as a system failure (the
            // server retries it where `retry:when` allows) rather than leave its lease to run out.
            let _ = cancel_tx.send(true);
            let _ = tokio::time::timeout(LOST_GRACE, &mut work).await;
            spool.info("ERROR: the agent is stopping (SIGTERM or Ctrl-C): the job was aborted");
            Some(failure(FailureReason::RunnerSystemFailure))
        }
    };
    let Some(result) = result else {
        // Cancel the job and give the runtime a moment to kill its processes; then drop it.
        let _ = cancel_tx.send(true);
        let _ = tokio::time::timeout(LOST_GRACE, &mut work).await;
        heartbeat.abort();
        stop(uploader).await;
        return Done::LeaseLost;
    };
    // Measuring large summaries (per-line coverage) takes a while: not on the event loop.
    let summaries = {
        let (reporter, spool) = (reporter.clone(), spool.clone());
        tokio::task::spawn_blocking(move || sendable(&reporter, &spool))
            .await
            .unwrap_or_default()
    };
    spool.info(&summary(&result));
    spool.close();
    let log = tokio::select! {
        r = &mut uploader => r.unwrap_or_else(|e| Err(UploadError::Spool(std::io::Error::other(e)))),
        () = lost(&mut lease_rx) => {
            stop(uploader).await;
            Err(UploadError::LeaseLost)
        }
    };
    let log_size = match log {
        Ok(size) => size,
        Err(UploadError::LeaseLost) => {
            heartbeat.abort();
            return Done::LeaseLost;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot upload the log");
            heartbeat.abort();
            return Done::Refused;
        }
    };
    // An aborted job's artifacts stay behind: the agent is on its way out.
    let uploaded = if was_aborted {
        Ok(())
    } else {
        upload_artifacts(env, spec, dir).await
    };
    let done = match uploaded {
        Ok(()) => finish(env, spec, &result, log_size, summaries).await,
        Err(d) => d,
    };
    heartbeat.abort();
    done
}

/// Aborts `task` and waits until it is gone: the worker's next job reuses the spool's file, which
/// a detached uploader would go on reading for the job whose lease was lost.
async fn stop<T>(task: tokio::task::JoinHandle<T>) {
    task.abort();
    let _ = task.await;
}

/// Resolves when `rx` turns true (never if its sender goes without).
async fn aborted(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|a| *a).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves when the lease is lost (never when the monitor ends without losing it).
async fn lost(rx: &mut watch::Receiver<Lease>) {
    loop {
        if *rx.borrow_and_update() == Lease::Lost {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Heartbeats every `every`; cancels the job when the server says so, reports a lost lease.
async fn heartbeat(
    client: Client,
    job: i64,
    every: Duration,
    cancel: Arc<watch::Sender<bool>>,
    lease: watch::Sender<Lease>,
) {
    let mut delay = every;
    loop {
        tokio::time::sleep(delay).await;
        match client.heartbeat(job).await {
            Ok(hb) => {
                delay = every;
                if hb.cancel && !*cancel.borrow() {
                    tracing::info!("the server canceled the job");
                    let _ = cancel.send(true);
                }
            }
            Err(CallError::LeaseLost) => {
                let _ = lease.send(Lease::Lost);
                return;
            }
            Err(e) => {
                // Try again sooner: the lease runs out after three missed beats.
                tracing::debug!(error = %e, "heartbeat failed");
                delay = (every / 3).max(Duration::from_millis(100));
            }
        }
    }
}

/// A failure before the job could run.
fn failure(reason: FailureReason) -> JobResult {
    JobResult {
        name: String::new(),
        stage: String::new(),
        status: JobStatus::Failed,
        allow_failure: false,
        exit_code: None,
        duration: Duration::ZERO,
        coverage: None,
        reason: Some(reason),
    }
}

fn reason_str(r: FailureReason) -> String {
    r.as_str().to_string()
}

/// The last line of the log.
fn summary(r: &JobResult) -> String {
    match (r.status, r.exit_code, r.reason) {
        (JobStatus::Success, ..) => "Job succeeded".to_string(),
        (JobStatus::Canceled, ..) => "Job canceled".to_string(),
        (_, Some(code), _) => format!("ERROR: Job failed: exit code {code}"),
        (_, None, Some(reason)) => format!("ERROR: Job failed: {}", reason_str(reason)),
        (status, None, None) => format!("Job ended as {}", status.as_str()),
    }
}

/// The job's summaries and gate verdict as the finish call carries them: summaries too large
/// for it lose what [`reports::fit`] takes out, which the job's log says.
fn sendable(reporter: &LogReporter, spool: &Spool) -> Summaries {
    let mut s = reporter.take_summaries();
    if let Some(r) = s.reports.take() {
        let (fits, note) = reports::fit(r, reports::MAX_JSON);
        if let Some(note) = note {
            spool.info(&note);
        }
        s.reports = fits;
    }
    s
}

/// Downloads what the job needs and runs it with `reporter`; its result (failures to prepare are
/// failed results, reported in the log).
async fn execute(
    env: &Arc<Env>,
    spec: &JobSpec,
    dir: &Path,
    slot: usize,
    reporter: &Arc<LogReporter>,
    cancel: watch::Receiver<bool>,
) -> JobResult {
    let spool = &reporter.spool;
    let Some(idx) = spec.plan.jobs.iter().position(|j| j.name == spec.job) else {
        spool.info(&format!("the plan has no job `{}`", spec.job));
        return failure(FailureReason::RunnerSystemFailure);
    };
    let state = dir.join(STATE);
    // A gate without a script reads no file and runs no process (the runtime evaluates it alone):
    // it needs neither the commit nor the artifacts of its dependencies.
    let job = &spec.plan.jobs[idx];
    let gate_only = job.script.is_empty() && !job.gate.is_empty();
    let fetched = if gate_only {
        let src = dir.join("src");
        std::fs::create_dir_all(&src)
            .map(|()| (src, Some(Vec::new())))
            .map_err(|e| format!("cannot create the job's directory: {e}"))
    } else {
        source(env, spec, idx, slot, dir, spool).await
    };
    let (src, files) = match fetched {
        Ok(s) => s,
        Err(message) => {
            spool.info(&message);
            return failure(FailureReason::RunnerSystemFailure);
        }
    };
    let deps = if gate_only {
        Ok(())
    } else {
        dependencies(env, spec, dir, &state).await
    };
    match deps {
        Ok(()) => {}
        Err(Fetch::Missing(message)) => {
            spool.info(&message);
            return failure(FailureReason::MissingDependencyFailure);
        }
        Err(Fetch::System(message)) => {
            spool.info(&message);
            return failure(FailureReason::RunnerSystemFailure);
        }
    };
    let origin = env.client.project_git_url(&spec.project);
    let plan = runnable(&spec.plan, idx, spec.job_id, &origin);
    let mut selected = vec![false; plan.jobs.len()];
    selected[idx] = true;
    let config = RunConfig {
        project_dir: src,
        state_dir: state,
        pipeline_id: u64::try_from(spec.pipeline_id).unwrap_or(0),
        concurrency: 1,
        in_place: true,
        selected,
        play_manual: vec![spec.job.clone()],
        echo: true,
        default_timeout: DEFAULT_TIMEOUT,
        files,
        overlay: false,
        // A gate's inputs, from the server: the summaries of the jobs it is evaluated on, and the
        // change's lines.
        changes: spec.changes.clone().map(Arc::new),
        max_report_bytes: gantry_runtime::gantry_reports::DEFAULT_MAX_BYTES,
        gate_reports: spec.gate_reports.clone().map(Arc::new),
    };
    let ran = gantry_runtime::run(&plan, config, env.exec.clone(), reporter.clone(), cancel).await;
    match ran {
        Ok(_) => reporter.result().unwrap_or_else(|| {
            spool.info("the runtime did not report the job");
            failure(FailureReason::RunnerSystemFailure)
        }),
        Err(e) => {
            spool.info(&format!("cannot run the job: {e}"));
            failure(FailureReason::RunnerSystemFailure)
        }
    }
}

/// The plan as the agent runs it: the server decided that the job runs, so its `when` no longer
/// matters (no delay, no waiting to be played, no `on_failure` check against jobs that are not
/// here), and the server retries, not the agent. The server's `CI_JOB_ID` goes first among the
/// global variables, which rank above the id the runtime makes up for local runs.
///
/// With the job's `CI_JOB_TOKEN` (from the server, masked), the job can read its project's
/// repository at `origin` (the checkout's `origin` remote): `CI_REPOSITORY_URL` is that URL with
/// the token as the password of user `gitlab-ci-token`, as on GitLab, and git in the job sends the
/// token to that URL only (`http.<origin>.extraHeader` through `GIT_CONFIG_*`, nothing written to
/// disk). Variables of the job's own override these.
fn runnable(plan: &Plan, idx: usize, job_id: i64, origin: &str) -> Plan {
    let mut plan = plan.clone();
    let token = plan.jobs[idx]
        .predefined
        .iter()
        .find(|v| v.key == "CI_JOB_TOKEN")
        .map(|v| v.value.clone());
    let job = &mut plan.jobs[idx];
    job.when = When::Always;
    job.start_in = None;
    job.retry.max = 0;
    let literal = |k: &str, v: String| {
        let mut var = Variable::new(k, v);
        var.expand = false;
        var
    };
    let mut first = vec![literal("CI_JOB_ID", job_id.to_string())];
    if let Some(token) = token {
        let with_token = match origin.split_once("://") {
            Some((scheme, rest)) => format!("{scheme}://gitlab-ci-token:{token}@{rest}"),
            None => origin.to_string(),
        };
        first.extend([
            literal("CI_REPOSITORY_URL", with_token),
            literal("GIT_CONFIG_COUNT", "1".into()),
            literal("GIT_CONFIG_KEY_0", format!("http.{origin}.extraHeader")),
            literal(
                "GIT_CONFIG_VALUE_0",
                format!("Authorization: Bearer {token}"),
            ),
        ]);
    }
    plan.variables.splice(0..0, first);
    plan
}

/// Why the job's inputs could not be fetched.
enum Fetch {
    /// A dependency's artifacts are missing.
    Missing(String),
    /// Anything else.
    System(String),
}

/// Where the job runs, and its files when the runtime must not list them: a git checkout of the
/// commit in the worker's directory for the project (see `checkout`), or, on a machine without
/// git, the server's archive of the commit's tree extracted into the job's directory.
async fn source(
    env: &Arc<Env>,
    spec: &JobSpec,
    idx: usize,
    slot: usize,
    dir: &Path,
    spool: &Arc<Spool>,
) -> Result<(PathBuf, Option<Vec<PathBuf>>), String> {
    if !env.git {
        let src = dir.join("src");
        let tar = dir.join("source.tar");
        match download(env, spec.job_id, "/source", &tar).await {
            Ok(true) => {}
            Ok(false) => return Err("the server has no source for the job".into()),
            Err(Fetch::Missing(m) | Fetch::System(m)) => return Err(m),
        }
        let files = extract(tar, src.clone())
            .await
            .map_err(|e| format!("cannot extract the source: {e}"))?;
        return Ok((src, Some(files)));
    }
    let vars: HashMap<String, String> =
        gantry_pipeline::vars::resolve(&spec.plan.job_variables(idx, &[], &[]))
            .into_iter()
            .collect();
    let opts = checkout::Options::from_vars(|k| vars.get(k).cloned())?;
    let work = checkout_dir(&env.work_dir, slot, &spec.project);
    let url = env.client.git_url(spec.job_id);
    let origin = env.client.project_git_url(&spec.project);
    let token = env.client.token().to_string();
    let sha = spec.sha.clone();
    let ref_name = vars
        .get("CI_COMMIT_REF_NAME")
        .filter(|r| !r.is_empty())
        .cloned();
    let tag = vars.get("CI_COMMIT_TAG").is_some_and(|t| !t.is_empty());
    let say = {
        let spool = spool.clone();
        move |line: &str| spool.info(line)
    };
    let dest = work.clone();
    tokio::task::spawn_blocking(move || {
        let src = checkout::Source {
            url,
            origin,
            token: &token,
            sha: &sha,
            ref_name,
            tag,
        };
        checkout::prepare(&dest, &opts, &src, &say)
    })
    .await
    .map_err(|e| format!("cannot prepare the source: {e}"))??;
    Ok((work, None))
}

/// The checkout of `project` for worker `slot`: `work_dir/builds/checkouts/<slot>/<project>`, kept
/// across jobs (a worker runs one job at a time, so no two jobs share one).
pub(crate) fn checkout_dir(work_dir: &Path, slot: usize, project: &str) -> PathBuf {
    let mut name: String = project
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.trim_matches('.').is_empty() {
        name = format!("project{name}");
    }
    work_dir
        .join("builds")
        .join(CHECKOUTS)
        .join(slot.to_string())
        .join(name)
}

/// The directory under `work_dir/builds` that holds the checkouts (the agent keeps it on restart).
pub(crate) const CHECKOUTS: &str = "checkouts";

/// The job directory of worker `slot`: `work_dir/builds/jobs/<slot>`.
pub(crate) fn job_dir(work_dir: &Path, slot: usize) -> PathBuf {
    work_dir.join("builds").join("jobs").join(slot.to_string())
}

/// The spool's name in a job directory.
const LOG: &str = "log";
/// The runtime's state dir in a job directory, and the one file in it that stays.
const STATE: &str = "state";
const STATE_KEEP: &str = ".gitignore";

/// Leaves nothing of the last job in `dir` (a missing `dir` is empty): everything goes but the
/// spool, which is cut to nothing, and `state/` with its `.gitignore`. Those are kept as they are,
/// not deleted and created again per job, which on ext4 costs an inode allocation each (a scan of
/// the inode bitmap past every recently deleted inode on a filesystem without a journal).
pub(crate) fn empty_job_dir(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let (name, kind) = (entry.file_name(), entry.file_type()?);
        if name == LOG && kind.is_file() {
            std::fs::OpenOptions::new()
                .write(true)
                .open(entry.path())?
                .set_len(0)?;
        } else if name == STATE && kind.is_dir() {
            for inner in std::fs::read_dir(entry.path())? {
                let inner = inner?;
                if inner.file_name() != STATE_KEEP || !inner.file_type()?.is_file() {
                    remove(&inner.path(), inner.file_type()?)?;
                }
            }
        } else {
            remove(&entry.path(), kind)?;
        }
    }
    Ok(())
}

/// Makes `dir` an empty job directory: emptied in place or, where that fails (something of the
/// last job the agent cannot delete), moved aside, so that one leftover cannot fail every later
/// job of the worker. What is moved aside is deleted as far as it can be, and on the next start.
pub(crate) fn prepare_job_dir(dir: &Path) -> std::io::Result<()> {
    if let Err(e) = empty_job_dir(dir) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let aside = dir.with_extension(format!("stale-{nanos}"));
        tracing::warn!(error = %e, dir = %dir.display(), aside = %aside.display(),
            "cannot empty the job directory; moving it aside");
        std::fs::rename(dir, &aside)?;
        let _ = std::fs::symlink_metadata(&aside).and_then(|m| remove(&aside, m.file_type()));
    }
    std::fs::create_dir_all(dir)
}

fn remove(path: &Path, kind: std::fs::FileType) -> std::io::Result<()> {
    if kind.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Downloads and extracts the dependencies' artifacts into the artifact store under `state`.
async fn dependencies(
    env: &Arc<Env>,
    spec: &JobSpec,
    dir: &Path,
    state: &Path,
) -> Result<(), Fetch> {
    for dep in &spec.dependencies {
        if !dep.has_artifacts {
            continue;
        }
        let Some(idx) = spec.plan.jobs.iter().position(|j| j.name == dep.name) else {
            continue;
        };
        let tar = dir.join(format!("dep-{}.tar", dep.job_id));
        let path = format!("/dependencies/{}/artifacts", dep.job_id);
        if !download(env, spec.job_id, &path, &tar).await? {
            return Err(Fetch::Missing(format!(
                "the artifacts of {} are gone",
                dep.name
            )));
        }
        let dest = gantry_runtime::artifact_dir(&spec.plan, state, idx);
        extract(tar, dest).await.map_err(|e| {
            Fetch::System(format!("cannot extract the artifacts of {}: {e}", dep.name))
        })?;
    }
    Ok(())
}

async fn extract(tar: PathBuf, dest: PathBuf) -> Result<Vec<PathBuf>, archive::ArchiveError> {
    tokio::task::spawn_blocking(move || {
        let r = archive::extract(&tar, &dest);
        let _ = std::fs::remove_file(&tar);
        r
    })
    .await
    .map_err(|e| archive::ArchiveError::Io(std::io::Error::other(e)))?
}

/// Downloads with retries on network and server errors.
async fn download(env: &Env, job: i64, rest: &str, dest: &Path) -> Result<bool, Fetch> {
    let mut backoff = Backoff::default();
    loop {
        match env.client.download(job, rest, dest).await {
            Ok(found) => return Ok(found),
            Err(CallError::LeaseLost) => {
                // The lease monitor notices too; wait for it to drop the job.
                std::future::pending::<()>().await;
            }
            Err(e) if e.is_transient() => {
                tracing::debug!(error = %e, path = rest, "download failed; retrying");
                backoff.wait().await;
            }
            Err(e) => return Err(Fetch::System(format!("cannot download {rest}: {e}"))),
        }
    }
}

/// Uploads the job's stored artifacts, if it stored any.
async fn upload_artifacts(env: &Arc<Env>, spec: &JobSpec, dir: &Path) -> Result<(), Done> {
    let Some(idx) = spec.plan.jobs.iter().position(|j| j.name == spec.job) else {
        return Ok(());
    };
    let entry = gantry_runtime::artifact_dir(&spec.plan, &dir.join(STATE), idx);
    if !entry.join("meta.json").exists() {
        return Ok(());
    }
    let tar = dir.join("artifacts.tar");
    let packed = {
        let tar = tar.clone();
        tokio::task::spawn_blocking(move || archive::pack(&entry, &tar))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
    };
    if let Err(e) = packed {
        tracing::error!(error = %e, "cannot archive the artifacts");
        return Ok(());
    }
    send_artifacts(&env.client, spec.job_id, &tar).await
}

/// Sends the artifacts archive at `tar`, from its file (so it never sits in memory whole), again
/// from its start after a network or server error, until the server takes or refuses it.
async fn send_artifacts(client: &Client, job: i64, tar: &Path) -> Result<(), Done> {
    let mut backoff = Backoff::default();
    loop {
        match client.put_artifacts(job, tar).await {
            Ok(()) => return Ok(()),
            Err(CallError::LeaseLost) => return Err(Done::LeaseLost),
            Err(e) if e.is_transient() => {
                tracing::debug!(error = %e, "artifacts upload failed; retrying");
                backoff.wait().await;
            }
            Err(e @ CallError::Io(_)) => {
                tracing::error!(error = %e, "cannot upload the artifacts");
                return Ok(());
            }
            Err(e) => {
                tracing::error!(error = %e, "the server refused the artifacts");
                return Ok(());
            }
        }
    }
}

/// The `finish` call, retried until the server answers. A server whose body limit is lower than
/// [`reports::MAX_JSON`] allows (`413`) gets it again without the summaries, then without the gate's
/// verdict, then without the verification's measurements.
async fn finish(
    env: &Env,
    spec: &JobSpec,
    r: &JobResult,
    log_size: u64,
    summaries: Summaries,
) -> Done {
    let mut body = FinishJob {
        outcome: match r.status {
            JobStatus::Success => Outcome::Success,
            JobStatus::Canceled => Outcome::Canceled,
            JobStatus::Failed | JobStatus::Skipped | JobStatus::Manual => Outcome::Failed,
            JobStatus::Created | JobStatus::Pending | JobStatus::Running | JobStatus::Scheduled => {
                unreachable!("a run ends a job success, failed, canceled, skipped or manual")
            }
        },
        exit_code: r.exit_code,
        failure_reason: r.reason.map(reason_str).or_else(|| {
            matches!(r.status, JobStatus::Skipped | JobStatus::Manual)
                .then(|| reason_str(FailureReason::UnknownFailure))
        }),
        coverage: r.coverage,
        log_size: i64::try_from(log_size).unwrap_or(i64::MAX),
        reports: summaries.reports,
        gate: summaries.gate,
        measurements: summaries.measurements,
    };
    let mut backoff = Backoff::default();
    loop {
        match env.client.finish(spec.job_id, &body).await {
            Ok(()) => return Done::Finished,
            Err(CallError::LeaseLost) => return Done::LeaseLost,
            Err(e) if e.is_transient() => {
                tracing::debug!(error = %e, "finish failed; retrying");
                backoff.wait().await;
            }
            Err(CallError::Status { status: 413, .. })
                if body.reports.is_some()
                    || body.gate.is_some()
                    || !body.measurements.is_empty() =>
            {
                let what = if body.reports.take().is_some() {
                    "report summaries"
                } else if body.gate.take().is_some() {
                    "gate verdict"
                } else {
                    body.measurements.clear();
                    "verification measurements"
                };
                tracing::warn!(
                    "the server refused the finish as too large; sending it without the {what}"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "the server refused to finish the job");
                return Done::Refused;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::put;
    use std::sync::Mutex;

    #[test]
    fn emptying_a_job_dir_keeps_the_spool_file_and_state_dir_but_nothing_of_the_job() {
        use std::os::unix::fs::MetadataExt as _;
        let t = tempfile::tempdir().unwrap();
        let dir = job_dir(t.path(), 3);
        assert!(dir.ends_with("builds/jobs/3"));
        // A missing directory is empty.
        empty_job_dir(&dir).unwrap();
        std::fs::create_dir_all(dir.join("state/artifacts/0/out")).unwrap();
        std::fs::create_dir_all(dir.join("src/deep")).unwrap();
        std::fs::write(dir.join("log"), "a secret line\n").unwrap();
        std::fs::write(dir.join("state/.gitignore"), "*\n").unwrap();
        std::fs::write(dir.join("state/artifacts/0/out/f"), "x").unwrap();
        std::fs::write(dir.join("state/dotenv"), "A=1").unwrap();
        std::fs::write(dir.join("artifacts.tar"), "tar").unwrap();
        std::fs::write(dir.join("src/deep/a"), "a").unwrap();
        let (log_ino, state_ino) = (
            std::fs::metadata(dir.join("log")).unwrap().ino(),
            std::fs::metadata(dir.join("state")).unwrap().ino(),
        );

        empty_job_dir(&dir).unwrap();
        let names = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&dir), ["log", "state"]);
        assert_eq!(names(&dir.join("state")), [".gitignore"]);
        let log = std::fs::metadata(dir.join("log")).unwrap();
        assert_eq!(log.len(), 0, "the last job's log is cut");
        // Kept, not deleted and created again.
        assert_eq!(log.ino(), log_ino);
        assert_eq!(
            std::fs::metadata(dir.join("state")).unwrap().ino(),
            state_ino
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("state/.gitignore")).unwrap(),
            "*\n"
        );

        // Entries with the kept names but of another kind go too.
        std::fs::remove_file(dir.join("log")).unwrap();
        std::fs::create_dir(dir.join("log")).unwrap();
        std::fs::remove_file(dir.join("state/.gitignore")).unwrap();
        std::fs::create_dir(dir.join("state/.gitignore")).unwrap();
        empty_job_dir(&dir).unwrap();
        assert_eq!(names(&dir), ["state"]);
        assert!(names(&dir.join("state")).is_empty());
    }

    #[test]
    fn a_job_dir_that_cannot_be_emptied_is_moved_aside() {
        let t = tempfile::tempdir().unwrap();
        let dir = job_dir(t.path(), 0);
        // A fresh worker: the directory is made.
        prepare_job_dir(&dir).unwrap();
        assert!(dir.is_dir());
        // Something that is not a directory cannot be emptied (reading it fails): it goes aside,
        // and the worker gets an empty directory anyway.
        std::fs::remove_dir(&dir).unwrap();
        std::fs::write(&dir, "not a directory").unwrap();
        assert!(empty_job_dir(&dir).is_err());
        prepare_job_dir(&dir).unwrap();
        assert!(dir.is_dir());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let left: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["0"], "the leftover was deleted once aside");
    }

    /// One artifacts upload as the server saw it.
    #[derive(Debug)]
    struct Put {
        content_length: Option<String>,
        chunked: bool,
        body: Vec<u8>,
    }

    /// The uploads received, and how many to answer with `503` first.
    #[derive(Default)]
    struct Uploads {
        puts: Vec<Put>,
        fail: usize,
    }

    async fn put_artifacts(
        State(rec): State<Arc<Mutex<Uploads>>>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> (StatusCode, &'static str) {
        let mut r = rec.lock().unwrap();
        r.puts.push(Put {
            content_length: headers
                .get("content-length")
                .map(|v| v.to_str().unwrap().to_string()),
            chunked: headers.contains_key("transfer-encoding"),
            body: body.to_vec(),
        });
        if r.fail > 0 {
            r.fail -= 1;
            return (StatusCode::SERVICE_UNAVAILABLE, "{\"error\":\"busy\"}");
        }
        (StatusCode::CREATED, "{\"size\":0}")
    }

    async fn artifacts_server(rec: Arc<Mutex<Uploads>>) -> Client {
        let app = Router::new()
            .route("/api/v1/agent/jobs/{id}/artifacts", put(put_artifacts))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(rec);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Client::new(&format!("http://{addr}"), "t".into()).unwrap()
    }

    /// Bytes that differ from chunk to chunk, so a repeated or dropped chunk shows.
    fn archive_bytes(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from((i * 31 + i / 997) % 251).unwrap())
            .collect()
    }

    /// Sends an archive of `len` bytes for job 5 to a server that records into `rec`, and checks
    /// that the upload succeeds; returns the archive's bytes.
    async fn upload_archive(rec: &Arc<Mutex<Uploads>>, len: usize) -> Vec<u8> {
        let client = artifacts_server(rec.clone()).await;
        let tmp = tempfile::tempdir().unwrap();
        let tar = tmp.path().join("artifacts.tar");
        let want = archive_bytes(len);
        std::fs::write(&tar, &want).unwrap();
        assert!(send_artifacts(&client, 5, &tar).await.is_ok());
        want
    }

    #[tokio::test]
    async fn artifacts_stream_from_the_file_with_their_length() {
        let rec = Arc::new(Mutex::new(Uploads::default()));
        // Several read chunks, and not a multiple of one.
        let want = upload_archive(&rec, 3 * (256 << 10) + 12_345).await;
        let r = rec.lock().unwrap();
        assert_eq!(r.puts.len(), 1);
        let put = &r.puts[0];
        assert_eq!(
            put.content_length.as_deref(),
            Some(want.len().to_string().as_str())
        );
        assert!(!put.chunked, "sent chunked instead of with a length");
        assert!(put.body == want, "the body differs from the file");
    }

    #[tokio::test]
    async fn an_artifacts_retry_sends_the_whole_file_again() {
        let rec = Arc::new(Mutex::new(Uploads {
            fail: 2,
            ..Uploads::default()
        }));
        let want = upload_archive(&rec, 700_001).await;
        let r = rec.lock().unwrap();
        assert_eq!(r.puts.len(), 3, "two refused uploads, then one taken");
        for put in &r.puts {
            assert_eq!(
                put.content_length.as_deref(),
                Some(want.len().to_string().as_str())
            );
            assert!(put.body == want, "a retry sent other bytes than the file");
        }
    }

    #[tokio::test]
    async fn a_missing_archive_is_not_retried() {
        let rec = Arc::new(Mutex::new(Uploads::default()));
        let client = artifacts_server(rec.clone()).await;
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("gone.tar");
        let err = client.put_artifacts(5, &missing).await.unwrap_err();
        assert!(matches!(err, CallError::Io(_)), "{err:?}");
        assert!(!err.is_transient());
        assert!(send_artifacts(&client, 5, &missing).await.is_ok());
        assert!(rec.lock().unwrap().puts.is_empty());
    }

    #[test]
    fn summaries() {
        let mut r = failure(FailureReason::ScriptFailure);
        r.exit_code = Some(3);
        assert_eq!(summary(&r), "ERROR: Job failed: exit code 3");
        r.exit_code = None;
        r.reason = Some(FailureReason::JobExecutionTimeout);
        assert_eq!(summary(&r), "ERROR: Job failed: job_execution_timeout");
        r.status = JobStatus::Success;
        assert_eq!(summary(&r), "Job succeeded");
    }
}
