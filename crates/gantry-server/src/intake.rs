//! Deliveries → pipelines. The processor wakes when a delivery is stored, and also sweeps
//! `pending_deliveries` at start and periodically, so that a delivery stored before a crash is
//! processed after the restart. Creating a pipeline marks its delivery `created` in the same
//! transaction, and a second creation for one delivery answers the first pipeline: two servers that
//! process one delivery at once create one pipeline.
//!
//! A failure is [`Failure::Transient`] when another attempt later may succeed (the repository
//! cannot be fetched, the store fails, a remote include's host cannot be reached): the delivery
//! stays pending with one more attempt counted and a `retry_at` after a backoff that doubles
//! (`delivery_retry_backoff`, capped by `delivery_retry_max_backoff`); the processor wakes for the
//! earliest due retry. After `delivery_max_attempts` attempts it is closed `failed`, the reason
//! saying how many attempts were made. Every other failure is [`Failure::Permanent`]: closed
//! `failed` at once.
//!
//! **Projects apart.** Each project's due deliveries are processed by a task of its own, in order,
//! and at most `delivery_concurrency` projects' at once: a project whose repository hangs (until
//! `git_timeout` stops its fetch) holds up only its own deliveries.
//!
//! **Intake first.** A forge waits for the `202` (GitLab and GitHub give up after 10 s and count a
//! failure), while a pipeline may start a little later. So while deliveries are arriving
//! (`state::Intake::busy`), the processor pauses after each delivery for [`YIELD_FACTOR`] times as long
//! as that delivery took: it keeps working through a burst, at a fifth of the cores' time, and
//! takes all of it back as soon as the burst ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gantry_api::{
    DeliveryStatus, ForkPipelines, JobStatus, PipelineError, PipelineStatus, ProjectVariable,
};
use gantry_pipeline::vars;
use gantry_pipeline::{Context, GitFacts, Plan, Variable};
use gantry_store::{DeliveryRecord, NewJob, NewPipeline};

use crate::events::{self, Event};
use crate::git;
use crate::includes::{self, Fetched, Remotes, WithRemotes};
use crate::projects::LoadedProject;
use crate::spec::{ForkDoc, JobDoc, PipelineDoc, pipeline_variables};
use crate::state::AppState;

const ZEROS: &str = "0000000000000000000000000000000000000000";

/// Why a delivery was not processed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Another attempt later may succeed.
    Transient(String),
    /// Another attempt would fail the same way.
    Permanent(String),
}

impl From<gantry_store::StoreError> for Failure {
    fn from(e: gantry_store::StoreError) -> Failure {
        Failure::Transient(e.to_string())
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Failure {
        Failure::Permanent(e.to_string())
    }
}

fn permanent(e: impl std::fmt::Display) -> Failure {
    Failure::Permanent(e.to_string())
}

/// How many times as long as a delivery took the processor pauses after it while deliveries are
/// arriving.
pub(crate) const YIELD_FACTOR: u32 = 4;

/// The projects whose deliveries are being processed, each by a task of its own, and the signal
/// a task gives when it ends.
#[derive(Clone, Default)]
struct Busy {
    projects: Arc<std::sync::Mutex<std::collections::HashSet<i64>>>,
    done: Arc<tokio::sync::Notify>,
}

impl Busy {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<i64>> {
        self.projects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// While only projects that are being processed have pending deliveries, how long a delivery of
/// another project may wait before the processor looks again. Looking on every arrival would
/// read every pending delivery of the busy projects once per webhook.
const BUSY_RESCAN: Duration = Duration::from_millis(100);

/// The processor loop: hands each project's due deliveries to a task of its own, one project's
/// after the other's in order, at most `delivery_concurrency` projects at once, so that a project
/// whose repository hangs holds up no other project.
pub(crate) async fn run(state: AppState) {
    let mut shutdown = state.shutdown.clone();
    let busy = Busy::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(
        state.config.delivery_concurrency.max(1),
    ));
    loop {
        let found = start_pending(&state, &busy, &slots).await;
        let pause = next_pause(&state).await;
        if !found && !busy.lock().is_empty() {
            // Only busy projects have due deliveries (or none has): nothing new can start before
            // a task ends, except another project's delivery, which waits at most BUSY_RESCAN.
            tokio::select! {
                () = busy.done.notified() => {}
                () = tokio::time::sleep(pause.min(BUSY_RESCAN)) => {}
                _ = shutdown.changed() => return,
            }
        } else {
            tokio::select! {
                () = state.deliveries.notified() => {}
                () = busy.done.notified() => {}
                () = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Until the next sweep, or the earliest retry of a delivery when that comes first.
async fn next_pause(state: &AppState) -> Duration {
    let sweep = state.config.sweep_interval;
    match state.store.next_delivery_retry().await {
        Ok(Some(at)) => {
            let wait = u64::try_from(at - crate::now_ms()).unwrap_or(0);
            // Not below 50 ms, so that a store that keeps failing does not spin the loop.
            sweep.min(Duration::from_millis(wait).max(Duration::from_millis(50)))
        }
        Ok(None) => sweep,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the next delivery retry");
            sweep
        }
    }
}

/// Starts a task for each project that has due deliveries and none being processed; the task
/// processes them in order, then wakes the loop for what arrived meanwhile. Answers whether it
/// found any due delivery of a project that is not busy.
async fn start_pending(state: &AppState, busy: &Busy, slots: &Arc<tokio::sync::Semaphore>) -> bool {
    let skip: Vec<i64> = busy.lock().iter().copied().collect();
    let batch = match state
        .store
        .pending_deliveries(20, crate::now_ms(), &skip)
        .await
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read pending deliveries");
            return false;
        }
    };
    let found = !batch.is_empty();
    let mut by_project: Vec<(i64, Vec<DeliveryRecord>)> = Vec::new();
    for d in batch {
        match by_project.iter_mut().find(|(p, _)| *p == d.project_id) {
            Some((_, list)) => list.push(d),
            None => by_project.push((d.project_id, vec![d])),
        }
    }
    for (project, deliveries) in by_project {
        if !busy.lock().insert(project) {
            continue;
        }
        let (state, busy, slots) = (state.clone(), busy.clone(), slots.clone());
        tokio::spawn(async move {
            if let Ok(_slot) = slots.acquire_owned().await {
                process_deliveries(&state, deliveries).await;
            }
            busy.lock().remove(&project);
            busy.done.notify_one();
        });
    }
    found
}

/// Processes `batch` in order; `false` when it stopped early (the server is stopping, or a
/// failure cannot be recorded).
async fn process_deliveries(state: &AppState, batch: Vec<DeliveryRecord>) -> bool {
    for d in batch {
        if state.stopping() {
            return false;
        }
        let id = d.id;
        let attempt = d.attempts + 1;
        let last = attempt >= i64::from(state.config.delivery_max_attempts);
        let started = std::time::Instant::now();
        let outcome = process_one(state, d, last).await;
        if state.intake.busy() {
            tokio::time::sleep(started.elapsed() * YIELD_FACTOR).await;
        }
        let result = match outcome {
            Ok(()) => Ok(()),
            Err(Failure::Permanent(reason)) => {
                tracing::warn!(delivery = id, %reason, "delivery failed");
                state
                    .store
                    .close_delivery(id, DeliveryStatus::Failed, &reason)
                    .await
            }
            Err(Failure::Transient(error)) if last => {
                let reason = format!("{error} (gave up after {attempt} attempts)");
                tracing::warn!(delivery = id, %reason, "delivery failed");
                state
                    .store
                    .fail_delivery_attempt(id, &reason, None)
                    .await
                    .map(drop)
            }
            Err(Failure::Transient(error)) => {
                let pause = retry_pause(&state.config, attempt);
                tracing::info!(
                    delivery = id,
                    attempt,
                    retry_in_ms = pause.as_millis(),
                    %error,
                    "delivery failed transiently; it will be retried"
                );
                let at = crate::now_ms() + i64::try_from(pause.as_millis()).unwrap_or(i64::MAX / 4);
                state
                    .store
                    .fail_delivery_attempt(id, &error, Some(at))
                    .await
                    .map(drop)
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot record a delivery's failure");
            return false;
        }
    }
    true
}

/// The pause after failed attempt number `attempt` (1 for the first): the backoff, doubled for each
/// further attempt, capped.
pub(crate) fn retry_pause(config: &crate::config::Config, attempt: i64) -> Duration {
    gantry_api::backoff::Backoff::new(
        config.delivery_retry_backoff,
        config.delivery_retry_max_backoff,
    )
    .after_attempt(u32::try_from(attempt.clamp(1, 31)).unwrap_or(1))
}

/// The result of compiling at a commit.
struct Compiled {
    sha: String,
    before_sha: Option<String>,
    result: gantry_pipeline::Compiled,
    doc: PipelineDoc,
}

/// A delivery → a pipeline (or a skipped delivery). On `last`, the delivery's last attempt, a remote
/// include that cannot be fetched for a transient reason becomes a compile error instead.
/// Closes delivery `id` as skipped, for `reason`.
async fn skip(state: &AppState, id: i64, reason: &str) -> gantry_store::Result<()> {
    state
        .store
        .close_delivery(id, DeliveryStatus::Skipped, reason)
        .await
}

async fn process_one(state: &AppState, d: DeliveryRecord, last: bool) -> Result<(), Failure> {
    let project = match state.store.project_by_id(d.project_id).await? {
        Some(p) => LoadedProject::parse(p, &state.secrets).map_err(|e| permanent(e.message))?,
        None => return Err(permanent("the project no longer exists")),
    };
    let payload: serde_json::Value = serde_json::from_slice(&d.payload)
        .map_err(|e| permanent(format!("invalid payload: {e}")))?;
    let event = match events::parse(&d.forge, &d.event, &payload).map_err(permanent)? {
        Some(e) => e,
        None => {
            skip(state, d.id, "this event runs no pipeline").await?;
            return Ok(());
        }
    };
    if event.mr.as_ref().is_some_and(|m| m.fork) && !events::forks_run(&project) {
        skip(state, d.id, events::FORKS_OFF).await?;
        return Ok(());
    }
    if event.push_skip {
        skip(state, d.id, "the push option `ci.skip`").await?;
        return Ok(());
    }
    let lock = state.mirror_lock(project.record.id);
    let guard = lock.lock().await;
    let mirror = git::mirror_path(&state.config.data_dir, project.record.id);
    let checkout = {
        let project = project.clone();
        let event = event.clone();
        let remote = git::Remote::new(&project.spec.repo_url, state.config.git_timeout);
        tokio::task::spawn_blocking(move || checkout(&mirror, &remote, &event))
            .await
            .map_err(|e| permanent(format!("the compiler panicked: {e}")))??
    };
    drop(guard);
    if matches!(event.source.as_str(), "push" | "merge_request_event")
        && skips_ci(&checkout.info.message)
    {
        skip(state, d.id, "`[ci skip]` in the commit message").await?;
        return Ok(());
    }
    // The pipeline's creation time, as `CI_PIPELINE_CREATED_AT` says it.
    let now = crate::now_ms();
    let created_at = created_at(now);
    let checkout = Arc::new(checkout);
    // Compile; fetch the remote includes it asked for; compile again with them.
    let mut remotes: Arc<Remotes> = Arc::new(HashMap::new());
    let mut round = 1;
    let compiled = loop {
        let last_round = round >= includes::MAX_INCLUDE_ROUNDS;
        let (compiled, missing) = {
            let project = project.clone();
            let event = event.clone();
            let checkout = checkout.clone();
            let remotes = remotes.clone();
            let created_at = created_at.clone();
            tokio::task::spawn_blocking(move || {
                compile_with(
                    &checkout,
                    &project,
                    &event,
                    &remotes,
                    last_round,
                    &created_at,
                )
            })
            .await
            .map_err(|e| permanent(format!("the compiler panicked: {e}")))?
        };
        if missing.is_empty() || last_round {
            break compiled;
        }
        let mut more = (*remotes).clone();
        // A fork's pipeline without secrets reads no other project's files: those projects trust
        // this project's members (`include_allowed_from`), not whoever forked it. (With
        // `approve`, the files reach a job only once someone approved it.)
        let missing = if compiled
            .doc
            .fork
            .as_ref()
            .is_some_and(|f| f.mode == ForkPipelines::NoSecrets)
        {
            let (denied, allowed): (Vec<String>, Vec<String>) = missing
                .into_iter()
                .partition(|k| included_project(k).is_some_and(|n| n != project.record.name));
            for key in denied {
                more.insert(key, Err(FORK_INCLUDE.to_string()));
            }
            allowed
        } else {
            missing
        };
        for (key, fetched) in includes::fetch_all(state, &project.record.name, missing).await {
            let entry = match fetched {
                Fetched::Content(c) => Ok(c),
                Fetched::Permanent(why) => Err(why),
                Fetched::Transient(why) if last => {
                    Err(format!("{why} (gave up after {} attempts)", d.attempts + 1))
                }
                Fetched::Transient(why) => {
                    return Err(Failure::Transient(format!("include `{key}`: {why}")));
                }
            };
            more.insert(key, entry);
        }
        remotes = Arc::new(more);
        round += 1;
    };
    let trace = if d.trace_id.is_empty() {
        crate::random_id()
    } else {
        d.trace_id.clone()
    };
    let errors: Vec<PipelineError> = compiled
        .result
        .errors()
        .map(|e| PipelineError {
            file: e.file.clone(),
            line: e.line,
            column: e.column,
            message: e.message.clone(),
        })
        .collect();
    let mut new = NewPipeline {
        project_id: project.record.id,
        delivery_id: Some(d.id),
        git_ref: event.git_ref.clone(),
        tag: event.tag,
        // What `compile_with` decided; a protected-only agent takes jobs of such pipelines only.
        protected: compiled
            .doc
            .predefined
            .iter()
            .any(|v| v.key == "CI_COMMIT_REF_PROTECTED" && v.value == "true"),
        sha: compiled.sha.clone(),
        before_sha: compiled.before_sha.clone(),
        source: event.source.clone(),
        status: PipelineStatus::Created,
        trace_id: trace.clone(),
        errors: "[]".into(),
        spec: String::new(),
        created_at: now,
        jobs: Vec::new(),
    };
    if !errors.is_empty() {
        new.status = PipelineStatus::Failed;
        new.errors = serde_json::to_string(&errors)?;
        new.spec = serde_json::to_string(&compiled.doc)?;
        let id = state.store.create_pipeline(&new).await?;
        tracing::info!(pipeline = id, trace_id = %trace, "invalid configuration: pipeline failed");
        state.metrics.pipeline_ended(PipelineStatus::Failed);
        crate::statuses::pipeline_changed(state, id).await;
        return Ok(());
    }
    if let Some(reason) = &compiled.result.workflow_skipped {
        skip(state, d.id, &format!("workflow:rules: {reason}")).await?;
        return Ok(());
    }
    let Some(plan) = compiled.result.plan else {
        return Err(permanent("the compiler gave no plan"));
    };
    if plan.jobs.is_empty() {
        skip(
            state,
            d.id,
            "no job survives workflow:rules and the job rules",
        )
        .await?;
        return Ok(());
    }
    new.jobs = new_jobs(&plan, now)?;
    let mut doc = compiled.doc;
    if plan.jobs.iter().any(crate::reports::needs_changes) {
        let before = new.before_sha.as_deref();
        doc.changes =
            Some(crate::reports::pipeline_changes(state, &project, &doc, &new.sha, before).await);
    }
    new.spec = serde_json::to_string(&doc)?;
    if doc.fork.as_ref().is_some_and(ForkDoc::waiting) {
        // The whole pipeline waits for an approval (`advance` keeps it so).
        new.status = PipelineStatus::Manual;
    }
    let id = state.store.create_pipeline(&new).await?;
    tracing::info!(pipeline = id, trace_id = %trace, project = %project.record.name, "pipeline created");
    crate::progress::advance(state, id).await;
    if event.source == "push" && !event.tag {
        crate::progress::auto_cancel(state, &project, &event.git_ref, id).await;
    }
    Ok(())
}

/// Why a fork's pipeline cannot include another project's files.
const FORK_INCLUDE: &str = "a merge request from a fork cannot include another project's files \
    (fork_pipelines is `no_secrets`; with `approve` it can, once approved)";

/// The project of this server that include key `key` reads (`project:NAME@REF:FILE`,
/// `component:HOST/NAME/COMPONENT@VERSION`); `None` for other keys.
fn included_project(key: &str) -> Option<&str> {
    let (kind, rest) = key.split_once(':')?;
    match kind {
        "project" => rest.split_once('@').map(|(name, _)| name),
        "component" => rest.split('/').nth(1),
        _ => None,
    }
}

/// The plan's jobs as stored jobs. Their stages are numbered among those that have jobs, from 0:
/// the order is the plan's, and a job of the first stage is known to have no earlier one (its
/// hand-out reads no earlier jobs).
fn new_jobs(plan: &Plan, now: i64) -> serde_json::Result<Vec<NewJob>> {
    let used: std::collections::BTreeSet<usize> = plan.jobs.iter().map(|j| j.stage_index).collect();
    let dense: HashMap<usize, i64> = used.into_iter().zip(0..).collect();
    let mut out = Vec::with_capacity(plan.jobs.len());
    for (i, job) in plan.jobs.iter().enumerate() {
        let resource_group = job.resource_group.as_ref().map(|rg| {
            let resolved: HashMap<String, String> = vars::resolve(&plan.job_variables(i, &[], &[]))
                .into_iter()
                .collect();
            vars::expand(rg, &|k| resolved.get(k).cloned())
        });
        out.push(NewJob {
            name: job.name.clone(),
            stage: job.stage.clone(),
            stage_index: dense.get(&job.stage_index).copied().unwrap_or(0),
            position: i64::try_from(i).unwrap_or(0),
            attempt: 1,
            status: JobStatus::Created,
            when: job.when.as_str().into(),
            allow_failure: job.allow_failure.is_allowed(),
            needs: job
                .needs
                .as_ref()
                .map(|n| n.iter().map(|n| n.job.clone()).collect()),
            tags: job.tags.clone(),
            resource_group: resource_group.filter(|g| !g.is_empty()),
            interruptible: job.interruptible,
            spec: serde_json::to_string(&JobDoc {
                job: job.clone(),
                rollback: None,
            })?,
            created_at: now,
        });
    }
    Ok(out)
}

fn var(key: &str, value: impl Into<String>) -> Variable {
    let mut v = Variable::new(key, value);
    v.expand = false;
    v
}

/// Whether a commit message asks to skip CI: `[ci skip]` or `[skip ci]`, in any case, with a space,
/// `-` or `_` between the words (GitLab's pattern).
pub(crate) fn skips_ci(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["ci", "skip"].iter().zip(["skip", "ci"]).any(|(a, b)| {
        [' ', '-', '_']
            .iter()
            .any(|sep| m.contains(&format!("[{a}{sep}{b}]")))
    })
}

/// `CI_PIPELINE_CREATED_AT`: ISO 8601 in UTC to the second (`2022-01-31T16:47:55Z`), as GitLab's.
fn created_at(ms: i64) -> String {
    let full = crate::rfc3339(ms);
    format!("{}Z", full.get(..19).unwrap_or(&full))
}

/// GitLab's limit on `CI_MERGE_REQUEST_DESCRIPTION`, in characters.
const MR_DESCRIPTION_LIMIT: usize = 2700;

/// The merge request's predefined variables (GitLab's, for a merge request pipeline that is not a
/// merged-results one: the source and target branch SHAs are empty).
fn mr_variables(
    mr: &events::MergeRequest,
    project: &LoadedProject,
    diff_base: Option<&str>,
) -> Vec<Variable> {
    let path = mr
        .project_path
        .clone()
        .unwrap_or_else(|| project.record.name.clone());
    // Without the payload's URL, the repository's, without the credentials it may carry: a
    // fork's jobs see these variables.
    let url = mr
        .project_url
        .clone()
        .unwrap_or_else(|| git::redact_url(&project.spec.repo_url));
    let truncated = mr.description.chars().count() > MR_DESCRIPTION_LIMIT;
    let description: String = mr.description.chars().take(MR_DESCRIPTION_LIMIT).collect();
    let mut v = vec![
        var("CI_MERGE_REQUEST_IID", mr.iid.to_string()),
        var("CI_MERGE_REQUEST_ID", mr.id.to_string()),
        var("CI_MERGE_REQUEST_TITLE", mr.title.clone()),
        var("CI_MERGE_REQUEST_DESCRIPTION", description),
        var(
            "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME",
            mr.source_branch.clone(),
        ),
        var("CI_MERGE_REQUEST_SOURCE_BRANCH_SHA", ""),
        var(
            "CI_MERGE_REQUEST_TARGET_BRANCH_NAME",
            mr.target_branch.clone(),
        ),
        var("CI_MERGE_REQUEST_TARGET_BRANCH_SHA", ""),
        var("CI_MERGE_REQUEST_EVENT_TYPE", "detached"),
        var("CI_MERGE_REQUEST_REF_PATH", mr.ref_path.clone()),
        var(
            "CI_MERGE_REQUEST_SOURCE_PROJECT_PATH",
            mr.source_project_path
                .clone()
                .unwrap_or_else(|| path.clone()),
        ),
        var(
            "CI_MERGE_REQUEST_SOURCE_PROJECT_URL",
            mr.source_project_url.clone().unwrap_or_else(|| url.clone()),
        ),
        var("CI_MERGE_REQUEST_PROJECT_PATH", path),
        var("CI_MERGE_REQUEST_PROJECT_URL", url),
        var("CI_MERGE_REQUEST_LABELS", mr.labels.join(",")),
        var(
            "CI_MERGE_REQUEST_TARGET_BRANCH_PROTECTED",
            project
                .spec
                .is_protected(&mr.target_branch, false)
                .to_string(),
        ),
    ];
    if truncated {
        v.push(var("CI_MERGE_REQUEST_DESCRIPTION_IS_TRUNCATED", "true"));
    }
    if let Some(id) = &mr.project_id {
        v.push(var("CI_MERGE_REQUEST_PROJECT_ID", id.clone()));
    }
    if let Some(id) = mr.source_project_id.as_ref().or(mr.project_id.as_ref()) {
        v.push(var("CI_MERGE_REQUEST_SOURCE_PROJECT_ID", id.clone()));
    }
    if !mr.assignees.is_empty() {
        v.push(var("CI_MERGE_REQUEST_ASSIGNEES", mr.assignees.join(",")));
    }
    if let Some(m) = &mr.milestone {
        v.push(var("CI_MERGE_REQUEST_MILESTONE", m.clone()));
    }
    if let Some(base) = diff_base {
        v.push(var("CI_MERGE_REQUEST_DIFF_BASE_SHA", base));
    }
    v
}

/// The event's commit, fetched into the mirror, with its facts and files.
struct Checkout {
    sha: String,
    before_sha: Option<String>,
    info: git::CommitInfo,
    sources: git::GitSources,
    /// A merge request's diff base (`CI_MERGE_REQUEST_DIFF_BASE_SHA`).
    diff_base: Option<String>,
    /// A tag pipeline's `CI_COMMIT_TAG_MESSAGE`.
    tag_message: Option<String>,
}

/// A fetch's failure: permanent when the remote has no such ref, transient otherwise (the remote
/// cannot be reached, the mirror fails).
fn fetch_failure(e: &anyhow::Error) -> Failure {
    let text = format!("{e:#}");
    if e.chain()
        .any(|c| c.downcast_ref::<git::NoSuchRef>().is_some())
    {
        Failure::Permanent(text)
    } else {
        Failure::Transient(text)
    }
}

/// Fetches the event's commit into the mirror and reads its facts (blocking).
fn checkout(
    mirror: &std::path::Path,
    remote: &git::Remote,
    event: &Event,
) -> Result<Checkout, Failure> {
    let sha = git::fetch(mirror, remote, event.sha.as_deref(), &event.fetch_ref)
        .map_err(|e| fetch_failure(&e))?;
    let transient = |e: anyhow::Error| Failure::Transient(format!("{e:#}"));
    let info = git::commit_info(mirror, &sha).map_err(transient)?;
    // GitLab: the push's `before`; all zeros for merge requests, triggers and schedules.
    let before_sha = Some(event.before_sha.clone().unwrap_or_else(|| ZEROS.into()));
    let mut base = event
        .before_sha
        .clone()
        .filter(|b| !b.bytes().all(|c| c == b'0'));
    let mut diff_base = None;
    if let Some(mr) = &event.mr {
        let target_head = git::fetch(
            mirror,
            remote,
            mr.target_sha.as_deref(),
            &format!("refs/heads/{}", mr.target_branch),
        )
        .ok();
        diff_base = mr
            .diff_base_sha
            .clone()
            .filter(|b| git::has_commit(mirror, b))
            .or_else(|| {
                target_head
                    .as_deref()
                    .and_then(|t| git::merge_base(mirror, t, &sha))
            })
            .or_else(|| mr.diff_base_sha.clone());
        base = diff_base.clone().or(target_head);
    }
    let tag_message = if event.tag {
        git::tag_message(mirror, remote, &event.git_ref)
            .ok()
            .or_else(|| event.tag_message.clone())
    } else {
        None
    };
    let sources = git::GitSources::new(mirror, &sha, base).map_err(transient)?;
    Ok(Checkout {
        sha,
        before_sha,
        info,
        sources,
        diff_base,
        tag_message,
    })
}

/// Compiles the checkout's `.gitlab-ci.yml` with the remote includes fetched so far (blocking);
/// answers the result and the remote includes it asked for that are not fetched yet.
fn compile_with(
    checkout: &Checkout,
    project: &LoadedProject,
    event: &Event,
    remotes: &Remotes,
    last_round: bool,
    created_at: &str,
) -> (Compiled, Vec<String>) {
    let sha = checkout.sha.clone();
    let before_sha = checkout.before_sha.clone();
    let info = &checkout.info;
    let sources = WithRemotes::new(&checkout.sources, remotes, last_round);
    // Merge request pipelines are never protected (GitLab's), whatever their branch.
    let protected = event.mr.is_none() && project.spec.is_protected(&event.git_ref, event.tag);
    // A fork's merge request gets no project variable, not even for its rules or includes
    // (`include:remote` of `https://…/$SECRET` would send it away at compile time).
    let fork = event.mr.as_ref().is_some_and(|m| m.fork);
    let project_variables: Vec<ProjectVariable> = if fork {
        Vec::new()
    } else {
        pipeline_variables(&project.spec, protected)
    };
    // Variables the compiler must see for rules, in precedence order; the predefined ones of merge
    // requests are moved back below the YAML variables afterwards.
    let mut predefined_extra = vec![var("CI_PIPELINE_CREATED_AT", created_at)];
    if let Some(id) = &event.user_id {
        predefined_extra.push(var("GITLAB_USER_ID", id.clone()));
    }
    if !event.user_login.is_empty() {
        predefined_extra.push(var("GITLAB_USER_LOGIN", event.user_login.clone()));
    }
    if event.tag {
        predefined_extra.push(var(
            "CI_COMMIT_TAG_MESSAGE",
            checkout.tag_message.clone().unwrap_or_default(),
        ));
    }
    if let Some(mr) = &event.mr {
        predefined_extra.extend(mr_variables(mr, project, checkout.diff_base.as_deref()));
        // A merge request pipeline has a ref name but no CI_COMMIT_BRANCH, as on GitLab.
        predefined_extra.push(var("CI_COMMIT_REF_NAME", event.git_ref.clone()));
        predefined_extra.push(var("CI_COMMIT_REF_SLUG", vars::slug(&event.git_ref)));
    }
    if protected {
        predefined_extra.push(var("CI_COMMIT_REF_PROTECTED", "true"));
    }
    let trigger_vars: Vec<Variable> = event
        .variables
        .iter()
        .map(|kv| Variable::new(kv.key.clone(), kv.value.clone()))
        .collect();
    let mut compile_vars = predefined_extra.clone();
    compile_vars.extend(
        project_variables
            .iter()
            .filter(|v| v.environment_scope == "*")
            .map(|v| Variable {
                key: v.key.clone(),
                value: v.value.clone().unwrap_or_default(),
                expand: true,
                masked: v.masked,
            }),
    );
    compile_vars.extend(trigger_vars.iter().cloned());
    let ctx = Context {
        file: ".gitlab-ci.yml".into(),
        project_dir: format!("/builds/{}", project.record.name),
        project_dir_name: project.record.name.clone(),
        git: GitFacts {
            sha: sha.clone(),
            before_sha: before_sha.clone().unwrap_or_else(|| ZEROS.into()),
            branch: if event.tag || event.mr.is_some() {
                None
            } else {
                Some(event.git_ref.clone())
            },
            tag: event.tag.then(|| event.git_ref.clone()),
            message: info.message.clone(),
            timestamp: info.timestamp.clone(),
            author: info.author.clone(),
            default_branch: project.spec.default_branch.clone(),
            remote_url: Some(project.spec.repo_url.clone()),
            user_name: event.user_name.clone(),
            user_email: event.user_email.clone(),
        },
        pipeline_source: event.source.clone(),
        pipeline_id: 0,
        cli_variables: compile_vars,
        server_url: None,
    };
    let mut result = gantry_pipeline::compile(&sources, &ctx);
    let mut doc = PipelineDoc {
        // Masked and protected values stay out of the pipeline's row: a reference (key and
        // scope) is stored, and the value is read from the project (where it is encrypted, see
        // `secrets.rs`) when a job is handed out (see `dispatch::handed_out`).
        project_variables: project_variables
            .into_iter()
            .map(|mut v| {
                if v.masked || v.protected {
                    v.value = None;
                }
                v
            })
            .collect(),
        cli_variables: trigger_vars.clone(),
        fork: fork.then_some(ForkDoc {
            mode: project.spec.fork_pipelines,
            approved_by: None,
            approved_at: None,
        }),
        notify: result.notify.clone(),
        ..PipelineDoc::default()
    };
    if let Some(plan) = &mut result.plan {
        // The server's facts replace the compiler's defaults in place (one value per key).
        for v in predefined_extra {
            match plan.predefined.iter_mut().find(|p| p.key == v.key) {
                Some(p) => *p = v,
                None => plan.predefined.push(v),
            }
        }
        plan.cli_variables = trigger_vars;
        doc.stages = plan.stages.clone();
        doc.predefined = plan.predefined.clone();
        doc.variables = plan.variables.clone();
    }
    let missing = sources.missing();
    (
        Compiled {
            sha,
            before_sha,
            result,
            doc,
        },
        missing,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_pauses_double_and_are_capped() {
        let mut c = crate::config::Config::new(std::path::Path::new("/tmp"), "a", "r");
        assert_eq!(c.delivery_max_attempts, 5);
        let pauses: Vec<u64> = (1..=6).map(|n| retry_pause(&c, n).as_secs()).collect();
        assert_eq!(pauses, [2, 4, 8, 16, 32, 64]);
        c.delivery_retry_max_backoff = Duration::from_secs(10);
        assert_eq!(retry_pause(&c, 4), Duration::from_secs(10));
        assert_eq!(retry_pause(&c, 1_000), Duration::from_secs(10));
    }

    #[test]
    fn skip_ci_in_the_commit_message() {
        for m in [
            "[ci skip]",
            "docs [skip ci]",
            "[CI-SKIP] x",
            "[Skip_CI]",
            "a\n\n[ci skip]",
        ] {
            assert!(skips_ci(m), "{m}");
        }
        for m in ["ci skip", "[ci  skip]", "[skipci]", "(skip ci)", ""] {
            assert!(!skips_ci(m), "{m}");
        }
    }

    #[test]
    fn included_projects() {
        assert_eq!(included_project("project:shared@v1:/a.yml"), Some("shared"));
        assert_eq!(
            included_project("component:gantry.example:8080/shared/build@1.0"),
            Some("shared")
        );
        assert_eq!(included_project("remote:https://x.example/a.yml"), None);
        assert_eq!(included_project("template:Go.gitlab-ci.yml"), None);
    }

    #[test]
    fn project_urls_lose_their_credentials() {
        for (url, shown) in [
            (
                "https://u:p@git.example.com/g/p.git",
                "https://git.example.com/g/p.git",
            ),
            (
                "https://tok@git.example.com/a@b",
                "https://git.example.com/a@b",
            ),
            (
                "https://git.example.com/g/p.git",
                "https://git.example.com/g/p.git",
            ),
            ("/srv/repo.git", "/srv/repo.git"),
        ] {
            assert_eq!(git::redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn pipeline_creation_time_is_utc_to_the_second() {
        assert_eq!(created_at(1_643_647_675_123), "2022-01-31T16:47:55Z");
    }

    #[test]
    fn stored_stages_count_from_the_first_that_has_jobs() {
        let yaml = "stages: [build, test, deploy]\n\
                    t1:\n  stage: test\n  script: [x]\n\
                    d1:\n  stage: deploy\n  script: [x]\n\
                    t2:\n  stage: test\n  script: [x]\n\
                    last:\n  stage: .post\n  script: [x]\n";
        let sources = gantry_pipeline::MemSources::new(vec![(
            ".gitlab-ci.yml".to_string(),
            yaml.to_string(),
        )]);
        let plan = gantry_pipeline::compile(&sources, &Context::default())
            .plan
            .unwrap();
        let stored = new_jobs(&plan, 0).unwrap();
        let stages: Vec<(&str, i64)> = stored
            .iter()
            .map(|j| (j.name.as_str(), j.stage_index))
            .collect();
        assert_eq!(stages, [("t1", 0), ("t2", 0), ("d1", 1), ("last", 2)]);
    }
}
