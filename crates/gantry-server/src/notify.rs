//! Notifications of `notify:` rules (issue 19): the pipeline file's and the project settings'
//! (both apply; a target both name gets one message). When a pipeline ends ([`pipeline_end`],
//! from `progress.rs`, stored in the transaction that ends it), the messages its rules want (`pipeline_failed`, or `pipeline_fixed` when the
//! previous finished pipeline of its ref failed), and when a deployment or a rollback ends
//! ([`deployment`], from `rollback.rs`: `deployment_succeeded`, `deployment_failed`, `rollback`)
//! are STORED first, one row per rule, with the target's URL and secret expanded (a file's rule
//! with the pipeline's variables, project variables included; a project's rule with the predefined
//! and the project's variables only, so that no pipeline file, a fork's included, can redirect it;
//! scoped ones by the deployment's environment) and sealed under the server's key (they hold the hook's token). The
//! background task [`run`] sends the due ones with [`gantry_notify::Sender::deliver`], one attempt
//! at a time, and records each attempt: a failed one is retried with backoff
//! (`Config::notify_backoff`, doubling) until `Config::notify_max_attempts`, across restarts since
//! the row holds the count. Sent and failed-for-good ones are counted in `/metrics`
//! (`gantry_notifications_total{result}`). Nothing here fails a pipeline.

use std::collections::HashMap;
use std::time::Duration;

use gantry_api::PipelineStatus;
use gantry_notify::{Commit, Event, EventKind, Pipeline, Policy, Sender, Target};
use gantry_pipeline::{Variable, vars};
use gantry_store::{NewNotification, NotificationRecord};

use crate::clock::now_ms;
use crate::projects::LoadedProject;
use crate::spec::PipelineDoc;
use crate::state::AppState;

/// The associated data a stored target is sealed with.
const AAD: &[u8] = b"notification target";
/// How many due notifications are sent at once.
const BATCH: i64 = 16;
/// How long a claimed notification is left to its sender before it is due again (longer than an
/// attempt: `Policy::timeout`).
const CLAIM: i64 = 60_000;
/// The longest the sender sleeps without looking at the store.
const IDLE: Duration = Duration::from_secs(60);

/// The notifications that pipeline `p` (as read before the change that ends it) calls for when it
/// ends with `status`, for that change to store (`Changes::notifications`): the pipeline's end and
/// its notifications are stored together or not at all. Failures are logged (none then).
pub(crate) async fn pipeline_end(
    state: &AppState,
    p: &gantry_store::PipelineRecord,
    status: PipelineStatus,
) -> Vec<NewNotification> {
    if !matches!(status, PipelineStatus::Failed | PipelineStatus::Success) {
        return Vec::new();
    }
    pipeline_event(state, p, status).await.unwrap_or_else(|e| {
        tracing::warn!(pipeline = p.id, error = %e, "cannot make the pipeline's notifications");
        Vec::new()
    })
}

/// After the change that ended pipeline `pipeline` stored `n` notifications: logs them and wakes
/// the sender.
pub(crate) fn pipeline_ended(state: &AppState, pipeline: i64, n: usize) {
    stored_now(state, pipeline, Ok(n));
}

/// What a deployment's notification says beyond its pipeline: the event, its environment, the
/// failed job (a failed deployment or rollback) and a rollback's from and to.
#[derive(Clone, Debug)]
pub(crate) struct Notice {
    pub kind: EventKind,
    pub environment: String,
    pub failed_jobs: Vec<String>,
    pub rollback: Option<gantry_notify::Rollback>,
}

/// Stores the notifications of a deployment's (or a rollback's) end, whose job is of pipeline
/// `pipeline`, and wakes the sender. Failures are logged.
pub(crate) async fn deployment(state: &AppState, pipeline: i64, notice: Notice) {
    let stored = async {
        let p = state
            .store
            .pipeline_head(pipeline)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no such pipeline")?;
        let project = state
            .project_for_hook(&p.project_name)
            .await
            .map_err(|e| e.message)?;
        let all = notifications(state, &p, &project, &Wanted::from(notice))?;
        for n in &all {
            state
                .store
                .insert_notification(n)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(all.len())
    }
    .await;
    stored_now(state, pipeline, stored);
}

/// Logs what was stored and wakes the sender.
fn stored_now(state: &AppState, pipeline: i64, stored: Result<usize, String>) {
    match stored {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(pipeline, notifications = n, "notifications stored");
            state.notifications.notify_one();
        }
        Err(e) => tracing::warn!(pipeline, error = %e, "cannot store the notifications"),
    }
}

/// The event a notification is for, without what its pipeline says.
struct Wanted {
    kind: EventKind,
    environment: Option<String>,
    failed_jobs: Vec<String>,
    rollback: Option<gantry_notify::Rollback>,
}

impl From<Notice> for Wanted {
    fn from(n: Notice) -> Wanted {
        Wanted {
            kind: n.kind,
            environment: Some(n.environment),
            failed_jobs: n.failed_jobs,
            rollback: n.rollback,
        }
    }
}

/// A pipeline's end's notifications (`pipeline_failed`, or `pipeline_fixed` when the previous
/// finished pipeline of its ref failed); `p` is the pipeline with its jobs.
async fn pipeline_event(
    state: &AppState,
    p: &gantry_store::PipelineRecord,
    status: PipelineStatus,
) -> Result<Vec<NewNotification>, String> {
    // Most pipelines have no rules: find out from the spec in hand and the cached project,
    // without reading the store.
    #[derive(serde::Deserialize)]
    struct Rules {
        #[serde(default)]
        notify: Vec<serde::de::IgnoredAny>,
    }
    let in_file = serde_json::from_str::<Rules>(&p.spec).map_or(true, |r| !r.notify.is_empty());
    let project = state
        .project_for_hook(&p.project_name)
        .await
        .map_err(|e| e.message)?;
    if !in_file && project.spec.notify.is_empty() {
        return Ok(Vec::new());
    }
    let id = p.id;
    let kind = if status == PipelineStatus::Failed {
        EventKind::PipelineFailed
    } else {
        let previous = state
            .store
            .previous_finished_status(p.project_id, &p.git_ref, id)
            .await
            .map_err(|e| e.to_string())?;
        if previous != Some(PipelineStatus::Failed) {
            return Ok(Vec::new());
        }
        EventKind::PipelineFixed
    };
    let failed_jobs = p
        .jobs
        .iter()
        .filter(|j| j.status == gantry_api::JobStatus::Failed && !j.allow_failure && !j.retried)
        .map(|j| j.name.clone())
        .collect();
    let wanted = Wanted {
        kind,
        environment: None,
        failed_jobs,
        rollback: None,
    };
    notifications(state, p, &project, &wanted)
}

/// The notifications of `wanted` for pipeline `p` (its jobs are not needed) that the rules of its
/// file and of `project`'s settings call for (a target both name gets one), to store.
fn notifications(
    state: &AppState,
    p: &gantry_store::PipelineRecord,
    project: &LoadedProject,
    wanted: &Wanted,
) -> Result<Vec<NewNotification>, String> {
    let mut doc: PipelineDoc = serde_json::from_str(&p.spec).map_err(|e| e.to_string())?;
    // The project's rules first: a target both name is expanded as the project's.
    let mut rules: Vec<(&gantry_notify::Rule, Origin)> = Vec::new();
    let project_rules = project.spec.notify.iter().map(|r| (r, Origin::Project));
    for (r, origin) in project_rules.chain(doc.notify.iter().map(|r| (r, Origin::File))) {
        if r.wants(wanted.kind) && !rules.iter().any(|(x, _)| x.target == r.target) {
            rules.push((r, origin));
        }
    }
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    // A fork pipeline that is not approved sees no project variable, here as in its jobs.
    if doc.fork.as_ref().is_some_and(|f| !f.secrets()) {
        doc.project_variables.clear();
    }
    let env = wanted.environment.as_deref();
    let values: HashMap<String, String> =
        vars::resolve(&variables(&doc, &project.spec.variables, env))
            .into_iter()
            .collect();
    let project_values: HashMap<String, String> =
        vars::resolve(&project_variables(&doc, &project.spec.variables, env))
            .into_iter()
            .collect();
    let get = |k: &str| values.get(k).cloned().unwrap_or_default();
    let id = p.id;
    let event = Event {
        kind: wanted.kind,
        project: p.project_name.clone(),
        git_ref: p.git_ref.clone(),
        commit: Commit {
            sha: p.sha.clone(),
            title: get("CI_COMMIT_TITLE"),
        },
        pipeline: Pipeline {
            id: u64::try_from(id).unwrap_or_default(),
            url: state
                .config
                .external_url
                .as_ref()
                .map(|u| format!("{}/api/v1/pipelines/{id}", u.trim_end_matches('/'))),
        },
        failed_jobs: wanted.failed_jobs.clone(),
        environment: wanted.environment.clone(),
        rollback: wanted.rollback.clone(),
    };
    let event = serde_json::to_string(&event).map_err(|e| e.to_string())?;
    let now = now_ms();
    rules
        .iter()
        .map(|(rule, origin)| {
            let values = match origin {
                Origin::Project => &project_values,
                Origin::File => &values,
            };
            let target = gantry_notify::expand(&rule.target, values);
            let target = serde_json::to_string(&target).map_err(|e| e.to_string())?;
            Ok(NewNotification {
                pipeline_id: id,
                target: state.secrets.seal(AAD, &target),
                event: event.clone(),
                created_at: now,
            })
        })
        .collect()
}

/// Where a rule comes from, which decides the variables it is expanded with.
#[derive(Clone, Copy)]
enum Origin {
    /// The project's settings: only what the project's admin set (and the predefined variables),
    /// never what the pipeline's file (perhaps a fork's) or its trigger defines.
    Project,
    /// The pipeline's file: every variable the pipeline's jobs see.
    File,
}

/// The pipeline's variables in precedence order (later ones win): predefined, global, the
/// project's (see [`scoped`]), then trigger and schedule variables.
fn variables(
    doc: &PipelineDoc,
    secrets: &[gantry_api::ProjectVariable],
    env: Option<&str>,
) -> Vec<Variable> {
    doc.predefined
        .iter()
        .chain(&doc.variables)
        .cloned()
        .chain(scoped(&doc.project_variables, secrets, env))
        .chain(doc.cli_variables.iter().cloned())
        .collect()
}

/// What a project's own rule is expanded with: the predefined variables, then all the project's
/// variables from its settings (`settings`, a fork's pipeline included: the rule and its
/// target are the project's, and nothing of them reaches a job).
fn project_variables(
    doc: &PipelineDoc,
    settings: &[gantry_api::ProjectVariable],
    env: Option<&str>,
) -> Vec<Variable> {
    doc.predefined
        .iter()
        .cloned()
        .chain(scoped(settings, settings, env))
        .collect()
}

/// Project variables `vars` whose `environment_scope` matches `env`, the most specific last (`*`
/// alone for a pipeline's notification); masked values come from `secrets`.
fn scoped<'a>(
    vars: &'a [gantry_api::ProjectVariable],
    secrets: &'a [gantry_api::ProjectVariable],
    env: Option<&str>,
) -> impl Iterator<Item = Variable> + 'a {
    let mut scoped: Vec<(u8, &gantry_api::ProjectVariable)> = vars
        .iter()
        .filter_map(|v| {
            gantry_pipeline::plan::scope_rank(&v.environment_scope, env).map(|rank| (rank, v))
        })
        .collect();
    scoped.sort_by_key(|(rank, _)| *rank);
    scoped.into_iter().map(|(_, v)| {
        let value = v.value.clone().or_else(|| {
            secrets
                .iter()
                .find(|s| s.key == v.key && s.environment_scope == v.environment_scope)
                .and_then(|s| s.value.clone())
        });
        let mut var = Variable::new(v.key.clone(), value.unwrap_or_default());
        var.masked = v.masked;
        var
    })
}

/// The sender: sends the due notifications, then sleeps until the next is due or one is stored.
pub(crate) async fn run(state: AppState) {
    let policy = Policy {
        attempts: 1,
        timeout: Duration::from_secs(10),
        ..Policy::default()
    };
    let sender = match Sender::new(policy) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client: no notifications");
            return;
        }
    };
    let mut shutdown = state.shutdown.clone();
    loop {
        send_due(&state, &sender).await;
        let wait = match state.store.next_notification_at().await {
            Ok(Some(at)) => Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)),
            Ok(None) => IDLE,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the next notification");
                Duration::from_secs(5)
            }
        };
        tokio::select! {
            () = state.notifications.notified() => {}
            () = tokio::time::sleep(wait.clamp(Duration::from_millis(50), IDLE)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Sends the notifications due now, at most [`BATCH`] at once.
async fn send_due(state: &AppState, sender: &Sender) {
    let now = now_ms();
    let due = match state
        .store
        .claim_notifications(now, now + CLAIM, BATCH)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the due notifications");
            return;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for n in due {
        let (state, sender) = (state.clone(), sender.clone());
        tasks.spawn(async move { send(&state, &sender, n).await });
    }
    while tasks.join_next().await.is_some() {}
}

/// One attempt of notification `n`, recorded.
async fn send(state: &AppState, sender: &Sender, n: NotificationRecord) {
    let target: Option<Target> = state
        .secrets
        .open_text(AAD, &n.target)
        .and_then(|t| serde_json::from_str(&t).ok());
    let event: Option<Event> = serde_json::from_str(&n.event).ok();
    let (error, host) = match (target, event) {
        (Some(target), Some(event)) => {
            let d = sender.deliver(&target, &event).await;
            (d.error, d.host)
        }
        // Not a transient failure: another attempt would read the same row.
        _ => {
            let error = "cannot read the stored notification (was the secret key changed?)";
            record(state, &n, Some(error), false, "").await;
            return;
        }
    };
    record(state, &n, error.as_deref(), true, &host).await;
}

/// Records an attempt of `n`: sent without `error`; else retried (when `retry` and attempts
/// remain) or failed for good.
async fn record(
    state: &AppState,
    n: &NotificationRecord,
    error: Option<&str>,
    retry: bool,
    host: &str,
) {
    let attempts = u32::try_from(n.attempts + 1).unwrap_or(u32::MAX);
    let retry_at =
        (error.is_some() && retry && attempts < state.config.notify_max_attempts).then(|| {
            let pause = gantry_api::backoff::Backoff::new(
                state.config.notify_backoff,
                state.config.notify_max_backoff,
            )
            .after_attempt(attempts);
            now_ms() + i64::try_from(pause.as_millis()).unwrap_or(i64::MAX / 2)
        });
    if let Err(e) = state
        .store
        .notification_attempt(n.id, error, retry_at)
        .await
    {
        tracing::warn!(notification = n.id, error = %e, "cannot record a notification attempt");
        return;
    }
    match (error, retry_at) {
        (None, _) => {
            state.metrics.notification("sent");
            tracing::info!(
                notification = n.id,
                pipeline = n.pipeline_id,
                host,
                "notification sent"
            );
        }
        (Some(e), retry_at) => {
            if retry_at.is_none() {
                state.metrics.notification("failed");
            }
            tracing::warn!(
                notification = n.id,
                pipeline = n.pipeline_id,
                host,
                attempts,
                error = e,
                retrying = retry_at.is_some(),
                "notification not sent"
            );
        }
    }
}
