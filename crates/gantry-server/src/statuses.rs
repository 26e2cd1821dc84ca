//! Commit statuses to the project's forge, as its pipelines change status. One worker posts them in
//! order, retrying with exponential backoff; a failure to post is logged and never fails a pipeline.
//!
//! - GitLab: `POST {api_url}/projects/{url-encoded project}/statuses/{sha}` with `state` (`pending`,
//!   `running`, `success`, `failed`, `canceled`, `skipped`), `ref`, `name: gantry`, `description` and
//!   `target_url`; header `PRIVATE-TOKEN`.
//! - GitHub and Gitea: `POST {api_url}/repos/{owner}/{repo}/statuses/{sha}` with `state` (`pending`,
//!   `success`, `failure`, `error`), `context: gantry`, `description` and `target_url`; header
//!   `Authorization: Bearer`.

use std::sync::Mutex;
use std::time::Duration;

use gantry_api::{Forge, ForgeKind, PipelineStatus};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::state::AppState;

/// One status to post.
#[derive(Clone, Debug)]
pub(crate) struct StatusUpdate {
    forge: Forge,
    url: String,
    body: Value,
    pipeline: i64,
}

/// The queue between the pipelines and the worker.
pub(crate) struct StatusQueue {
    tx: mpsc::UnboundedSender<StatusUpdate>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<StatusUpdate>>>,
}

impl StatusQueue {
    pub fn new() -> StatusQueue {
        let (tx, rx) = mpsc::unbounded_channel();
        StatusQueue {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

/// The forge's state and description for a pipeline status.
pub(crate) fn forge_state(kind: ForgeKind, status: PipelineStatus) -> (&'static str, String) {
    use PipelineStatus as P;
    let description = format!("the pipeline is {status}");
    // The states are the forge's words: GitLab's spell ours, for the statuses it has.
    let state = match kind {
        ForgeKind::Gitlab => match status {
            P::Running | P::Success | P::Failed | P::Canceled | P::Skipped => status.as_str(),
            P::Created | P::Pending | P::Manual => "pending",
        },
        _ => match status {
            P::Success | P::Skipped => "success",
            P::Failed => "failure",
            P::Canceled => "error",
            P::Created | P::Pending | P::Running | P::Manual => "pending",
        },
    };
    (state, description)
}

/// The most a description holds (GitHub refuses longer ones).
const MAX_DESCRIPTION: usize = 140;

/// What a status says of a pipeline's gates, from their verdicts (`gate_jobs`, as
/// [`gantry_store::Store::pipeline_gates`] reads them): `gate failed: coverage 71.2 < 75` for
/// the first gate that failed, `gate passed` when every one passed; `None` without gates.
pub(crate) fn gate_description(gate_jobs: &[gantry_store::ReportsRecord]) -> Option<String> {
    let outcomes: Vec<gantry_reports::GateOutcome> = gate_jobs
        .iter()
        .filter_map(|r| r.stored.as_ref()?.gate.as_deref())
        .filter_map(|g| serde_json::from_slice(g).ok())
        .collect();
    if outcomes.is_empty() {
        return None;
    }
    let text = match outcomes.iter().find(|o| !o.passed) {
        Some(o) => format!("gate failed: {}", gantry_reports::gate::failures(o)),
        None => "gate passed".to_owned(),
    };
    Some(cap(text))
}

/// `text` within [`MAX_DESCRIPTION`], cut with `…`.
fn cap(text: String) -> String {
    if text.chars().count() > MAX_DESCRIPTION {
        let cut: String = text.chars().take(MAX_DESCRIPTION - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// The request for a pipeline's status; a final status's description ends with `gate` (see
/// [`gate_description`]) when the pipeline has a gate verdict: `the pipeline is failed; gate
/// failed: coverage 71.2 < 75`.
pub(crate) fn request(
    forge: &Forge,
    sha: &str,
    git_ref: &str,
    status: PipelineStatus,
    target_url: Option<String>,
    gate: Option<String>,
) -> (String, Value) {
    let base = forge.api_url.trim_end_matches('/');
    let (state, description) = forge_state(forge.kind, status);
    let description = match gate {
        Some(g) if status.is_final() => cap(format!("{description}; {g}")),
        _ => description,
    };
    match forge.kind {
        ForgeKind::Gitlab => {
            let project = percent_encoding::utf8_percent_encode(
                &forge.project,
                percent_encoding::NON_ALPHANUMERIC,
            );
            let mut body = json!({
                "state": state,
                "ref": git_ref,
                "name": "gantry",
                "description": description,
            });
            if let Some(t) = target_url {
                body["target_url"] = Value::String(t);
            }
            (format!("{base}/projects/{project}/statuses/{sha}"), body)
        }
        _ => {
            let mut body = json!({
                "state": state,
                "context": "gantry",
                "description": description,
            });
            if let Some(t) = target_url {
                body["target_url"] = Value::String(t);
            }
            (
                format!("{base}/repos/{}/statuses/{sha}", forge.project),
                body,
            )
        }
    }
}

/// Queues the status of pipeline `id` for its project's forge, if it has one.
pub(crate) async fn pipeline_changed(state: &AppState, id: i64) {
    let Ok(Some(p)) = state.store.pipeline(id).await else {
        return;
    };
    let Ok(Some(record)) = state.store.project_by_id(p.project_id).await else {
        return;
    };
    let Ok(project) = crate::projects::LoadedProject::parse(record, &state.secrets) else {
        return;
    };
    let Some(forge) = project.spec.forge else {
        return;
    };
    if forge.token.is_none() {
        return;
    }
    let target = state
        .config
        .external_url
        .as_ref()
        .map(|u| format!("{}/api/v1/pipelines/{id}", u.trim_end_matches('/')));
    // Only a final status names the gate: a running pipeline's gate may not have run yet.
    let gates = if p.status.is_final() {
        state.store.pipeline_gates(id).await.unwrap_or_default()
    } else {
        Vec::new()
    };
    let (url, body) = request(
        &forge,
        &p.sha,
        &p.git_ref,
        p.status,
        target,
        gate_description(&gates),
    );
    let _ = state.statuses.tx.send(StatusUpdate {
        forge,
        url,
        body,
        pipeline: id,
    });
}

/// The worker.
pub(crate) async fn run(state: AppState) {
    let Some(mut rx) = state
        .statuses
        .rx
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    else {
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client: no commit statuses");
            return;
        }
    };
    let mut shutdown = state.shutdown.clone();
    loop {
        let update = tokio::select! {
            u = rx.recv() => match u { Some(u) => u, None => return },
            _ = shutdown.changed() => return,
        };
        post(&state, &client, &update).await;
    }
}

async fn post(state: &AppState, client: &reqwest::Client, u: &StatusUpdate) {
    let token = u.forge.token.clone().unwrap_or_default();
    let mut backoff = gantry_api::backoff::Backoff::new(state.config.status_backoff, Duration::MAX);
    for attempt in 1..=5 {
        let req = client.post(&u.url).json(&u.body);
        let req = match u.forge.kind {
            ForgeKind::Gitlab => req.header("PRIVATE-TOKEN", &token),
            _ => req
                .bearer_auth(&token)
                .header("Accept", "application/vnd.github+json"),
        };
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(pipeline = u.pipeline, "commit status posted");
                return;
            }
            // A client error will not get better by asking again, except when rate limited.
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                tracing::warn!(pipeline = u.pipeline, status = %r.status(), "the forge refused the commit status");
                return;
            }
            Ok(r) => {
                tracing::warn!(pipeline = u.pipeline, attempt, status = %r.status(), "cannot post the commit status");
            }
            Err(e) => {
                tracing::warn!(pipeline = u.pipeline, attempt, error = %e, "cannot post the commit status");
            }
        }
        if attempt < 5 {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let gl = Forge {
            kind: ForgeKind::Gitlab,
            api_url: "https://gitlab.example.com/api/v4/".into(),
            token: Some("t".into()),
            project: "group/proj".into(),
        };
        let (url, body) = request(&gl, "abc", "main", PipelineStatus::Running, None, None);
        assert_eq!(
            url,
            "https://gitlab.example.com/api/v4/projects/group%2Fproj/statuses/abc"
        );
        assert_eq!(body["state"], "running");
        assert_eq!(body["ref"], "main");
        assert_eq!(body["name"], "gantry");
        let gh = Forge {
            kind: ForgeKind::Github,
            api_url: "https://api.github.com".into(),
            token: Some("t".into()),
            project: "o/r".into(),
        };
        let (url, body) = request(
            &gh,
            "abc",
            "main",
            PipelineStatus::Running,
            Some("http://x/1".into()),
            Some("gate passed".into()),
        );
        assert_eq!(url, "https://api.github.com/repos/o/r/statuses/abc");
        assert_eq!(body["state"], "pending");
        assert_eq!(body["context"], "gantry");
        assert_eq!(body["target_url"], "http://x/1");
        assert_eq!(
            body["description"], "the pipeline is running",
            "not final: no gate"
        );
        let (_, body) = request(
            &gh,
            "abc",
            "main",
            PipelineStatus::Failed,
            None,
            Some("gate passed".into()),
        );
        assert_eq!(body["description"], "the pipeline is failed; gate passed");
        assert_eq!(
            forge_state(ForgeKind::Github, PipelineStatus::Canceled).0,
            "error"
        );
        assert_eq!(
            forge_state(ForgeKind::Gitea, PipelineStatus::Failed).0,
            "failure"
        );
        assert_eq!(
            forge_state(ForgeKind::Gitlab, PipelineStatus::Manual).0,
            "pending"
        );
    }

    #[test]
    fn gate_descriptions_name_the_first_failed_gate_within_the_forges_limit() {
        use gantry_pipeline::gate::Condition;
        let record = |conditions: &[Condition], coverage: f64| {
            let reports = gantry_reports::Reports {
                job_coverage: vec![coverage],
                ..Default::default()
            };
            let outcome = gantry_reports::evaluate(conditions, &reports, None);
            gantry_store::ReportsRecord {
                job_id: 1,
                name: "gate".into(),
                stage: "gate".into(),
                stage_index: 1,
                status: gantry_api::JobStatus::Failed,
                job_coverage: None,
                stored: Some(gantry_store::NewReports {
                    gate: Some(serde_json::to_vec(&outcome).unwrap()),
                    ..Default::default()
                }),
            }
        };
        let ge75 = [Condition::parse("coverage", ">= 75").unwrap()];
        assert_eq!(gate_description(&[]), None);
        assert_eq!(
            gate_description(&[record(&ge75, 80.0)]).as_deref(),
            Some("gate passed")
        );
        assert_eq!(
            gate_description(&[record(&ge75, 80.0), record(&ge75, 71.2)]).as_deref(),
            Some("gate failed: coverage 71.2 < 75")
        );
        let many: Vec<Condition> = (0..20)
            .map(|i| Condition::parse("coverage", &format!(">= {}", 90 + i)).unwrap())
            .collect();
        let long = gate_description(&[record(&many, 71.2)]).unwrap();
        assert_eq!(long.chars().count(), MAX_DESCRIPTION);
        assert!(
            long.starts_with("gate failed: coverage 71.2 < 90; "),
            "{long}"
        );
        assert!(long.ends_with('…'), "{long}");
    }
}
