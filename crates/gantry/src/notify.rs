//! `gantry run`'s notifications: when the pipeline ends, its `notify:` rules hear about it
//! (`pipeline_failed`, or `pipeline_fixed` when the previous local run of the same ref failed);
//! when a deployment ends (`deployment_succeeded`, `deployment_failed`) and when a rollback ends
//! (`rollback`, with its from and to), through a [`Notifier`], while the run goes on.
//!
//! The last status of each ref is kept in `.gantry/ref-status.json`. Deliveries run on the run's
//! async runtime while nothing else is left to do, and `gantry run` waits for them at most
//! [`WAIT`]. A failed delivery is one warning line on stderr (never the URL: it holds the hook's
//! token) and, with `--output json`, a `notification` event. Nothing here changes the exit code.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gantry_notify::{Commit, Delivery, Event, EventKind, Pipeline, Policy, Rollback, Sender};
use gantry_pipeline::{Plan, Variable};
use gantry_runtime::{JobStatus, PipelineResult, PipelineStatus};
use serde_json::json;

use crate::output::Json;

/// The longest `gantry run` waits for its notifications before it exits.
const WAIT: Duration = Duration::from_secs(20);

/// The file, under the state directory, that holds the last status of each ref.
const REF_STATUS: &str = "ref-status.json";

/// Sends the notifications `result` calls for, records the ref's status, and reports the
/// deliveries. Blocks on `rt` for at most [`WAIT`].
pub fn send(
    rt: &tokio::runtime::Runtime,
    rules: &[gantry_notify::Rule],
    plan: &Plan,
    result: &PipelineResult,
    state_dir: &Path,
    project_dir: &Path,
    json: Option<Arc<Json>>,
) {
    let failed = match result.status {
        PipelineStatus::Success => false,
        PipelineStatus::Failed => true,
        _ => return,
    };
    let notifier = Notifier::new(rules, plan, project_dir, json);
    let previous = record(state_dir, &notifier.base.git_ref, failed);
    let kind = if failed {
        EventKind::PipelineFailed
    } else if previous == Some(true) {
        EventKind::PipelineFixed
    } else {
        return;
    };
    let failed_jobs = result
        .jobs
        .iter()
        .filter(|j| j.status == JobStatus::Failed && !j.allow_failure)
        .map(|j| j.name.clone())
        .collect();
    let _guard = rt.enter();
    if let Some(task) = notifier.spawn(kind, None, None, failed_jobs) {
        let _ = rt.block_on(task);
    }
}

/// What a run's notifications need: its `notify:` rules, what every message of it shows (project,
/// ref, commit, pipeline), the variables that expand the rules' URLs and secrets, and where a
/// delivery is reported.
#[derive(Clone)]
pub struct Notifier {
    rules: Vec<gantry_notify::Rule>,
    base: Event,
    variables: Vec<Variable>,
    json: Option<Arc<Json>>,
}

impl Notifier {
    /// The notifier of a run of `plan` in `project_dir`.
    pub fn new(
        rules: &[gantry_notify::Rule],
        plan: &Plan,
        project_dir: &Path,
        json: Option<Arc<Json>>,
    ) -> Notifier {
        // Later variables win: predefined, then global, then the command line's.
        let variables: Vec<Variable> = plan
            .predefined
            .iter()
            .chain(&plan.variables)
            .chain(&plan.cli_variables)
            .cloned()
            .collect();
        let var = |k: &str| {
            variables
                .iter()
                .rev()
                .find(|v| v.key == k)
                .map(|v| v.value.clone())
                .unwrap_or_default()
        };
        let project = Some(var("CI_PROJECT_NAME"))
            .filter(|p| !p.is_empty())
            .or_else(|| {
                project_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_default();
        let base = Event {
            kind: EventKind::PipelineFailed,
            project,
            git_ref: var("CI_COMMIT_REF_NAME"),
            commit: Commit {
                sha: var("CI_COMMIT_SHA"),
                title: var("CI_COMMIT_TITLE"),
            },
            pipeline: Pipeline {
                id: var("CI_PIPELINE_ID").parse().unwrap_or(0),
                url: None,
            },
            failed_jobs: Vec::new(),
            environment: None,
            rollback: None,
        };
        Notifier {
            rules: rules.to_vec(),
            base,
            variables,
            json,
        }
    }

    /// Sends the `kind` event to the rules that want it, on its own task of the current runtime
    /// (`None` when no rule wants it). The task reports each delivery and gives up after
    /// [`WAIT`]; it never fails.
    pub fn spawn(
        &self,
        kind: EventKind,
        environment: Option<String>,
        rollback: Option<Rollback>,
        failed_jobs: Vec<String>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if !self.rules.iter().any(|r| r.wants(kind)) {
            return None;
        }
        let event = Event {
            kind,
            failed_jobs,
            environment,
            rollback,
            ..self.base.clone()
        };
        let policy = Policy {
            attempts: 3,
            timeout: Duration::from_secs(5),
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(2),
        };
        let sender = match Sender::new(policy) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("gantry: warning: no notification sent: {e}");
                return None;
            }
        };
        let (rules, variables, json) = (
            self.rules.clone(),
            self.variables.clone(),
            self.json.clone(),
        );
        Some(tokio::spawn(async move {
            let sent = tokio::time::timeout(WAIT, sender.spawn(rules, variables, event)).await;
            match sent {
                Ok(Ok(deliveries)) => report(&deliveries, json.as_deref()),
                Ok(Err(_)) => {
                    eprintln!("gantry: warning: the notifications stopped before they were sent");
                }
                Err(_) => eprintln!(
                    "gantry: warning: notifications not all sent after {}s; giving up",
                    WAIT.as_secs()
                ),
            }
        }))
    }
}

/// One warning line per failed delivery; with JSON output, one event per delivery.
fn report(deliveries: &[Delivery], json: Option<&Json>) {
    for d in deliveries {
        if let Some(e) = &d.error {
            eprintln!(
                "gantry: warning: notification to {} ({}) failed after {} attempt{}: {e}",
                d.target.as_str(),
                if d.host.is_empty() {
                    "no host"
                } else {
                    &d.host
                },
                d.attempts,
                if d.attempts == 1 { "" } else { "s" },
            );
        }
        if let Some(j) = json {
            j.write(&json!({
                "event": "notification",
                "target": d.target.as_str(),
                "delivered": d.delivered(),
                "attempts": d.attempts,
                "error": d.error,
            }));
        }
    }
    if let Some(j) = json {
        j.flush();
    }
}

/// Records whether the last run of `git_ref` failed; answers whether the run before it did
/// (`None` when there was none). A state file that cannot be read or written is not an error:
/// it only costs a `pipeline_fixed`.
fn record(state_dir: &Path, git_ref: &str, failed: bool) -> Option<bool> {
    let path = state_dir.join(REF_STATUS);
    let mut statuses: BTreeMap<String, String> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let status = if failed { "failed" } else { "success" };
    let previous = statuses.insert(git_ref.to_string(), status.to_string());
    if let Ok(text) = serde_json::to_vec_pretty(&statuses) {
        // Two runs at once each write their own file; the last rename wins.
        let tmp = state_dir.join(format!("{REF_STATUS}.tmp-{}", std::process::id()));
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    previous.map(|s| s == "failed")
}
