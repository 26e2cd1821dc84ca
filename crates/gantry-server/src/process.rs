//! Deliveries → pipelines. The processor wakes when a delivery is stored, and also sweeps
//! `pending_deliveries` at start and periodically, so that a delivery stored before a crash is
//! processed after the restart. Creating a pipeline marks its delivery `created` in the same
//! transaction, and a second creation for one delivery answers the first pipeline: two servers that
//! process one delivery at once create one pipeline.

use std::collections::HashMap;

use gantry_api::{PipelineError, ProjectVariable};
use gantry_pipeline::vars;
use gantry_pipeline::{Context, GitFacts, Plan, Variable};
use gantry_store::{DeliveryRecord, NewJob, NewPipeline};
use serde::{Deserialize, Serialize};

use crate::git;
use crate::hooks::{self, Event};
use crate::projects::LoadedProject;
use crate::state::AppState;

/// What every job of a pipeline shares, as stored in the pipeline's `spec`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct PipelineDoc {
    pub stages: Vec<String>,
    /// Predefined pipeline variables (with the merge request's).
    pub predefined: Vec<Variable>,
    /// Global and `workflow:rules` variables.
    pub variables: Vec<Variable>,
    /// Trigger and schedule variables: the highest precedence.
    pub cli_variables: Vec<Variable>,
    /// Project variables this pipeline may see (protected ones only on protected refs); environment
    /// scopes are matched per job when it is handed out.
    pub project_variables: Vec<ProjectVariable>,
}

/// A job as stored in the job's `spec`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JobDoc {
    pub job: gantry_pipeline::Job,
}

/// The processor loop.
pub(crate) async fn run(state: AppState) {
    let mut shutdown = state.shutdown.clone();
    loop {
        process_pending(&state).await;
        tokio::select! {
            () = state.deliveries.notified() => {}
            () = tokio::time::sleep(state.config.sweep_interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Processes every pending delivery.
pub(crate) async fn process_pending(state: &AppState) {
    loop {
        let batch = match state.store.pending_deliveries(20).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read pending deliveries");
                return;
            }
        };
        let n = batch.len();
        for d in batch {
            if state.stopping() {
                return;
            }
            let id = d.id;
            if let Err(reason) = process_one(state, d).await {
                tracing::warn!(delivery = id, %reason, "delivery failed");
                if let Err(e) = state.store.close_delivery(id, "failed", &reason).await {
                    tracing::warn!(error = %e, "cannot close a delivery");
                    return;
                }
            }
        }
        if n < 20 {
            return;
        }
    }
}

/// The result of compiling at a commit.
struct Compiled {
    sha: String,
    before_sha: Option<String>,
    result: gantry_pipeline::Compiled,
    doc: PipelineDoc,
}

/// A delivery → a pipeline (or a skipped delivery). `Err` closes it as failed with the reason.
async fn process_one(state: &AppState, d: DeliveryRecord) -> Result<(), String> {
    let project = match state.store.project_by_id(d.project_id).await {
        Ok(Some(p)) => LoadedProject::parse(p).map_err(|e| e.message)?,
        Ok(None) => return Err("the project no longer exists".into()),
        Err(e) => return Err(e.to_string()),
    };
    let payload: serde_json::Value =
        serde_json::from_slice(&d.payload).map_err(|e| format!("invalid payload: {e}"))?;
    let event = match hooks::parse(&d.forge, &d.event, &payload)? {
        Some(e) => e,
        None => {
            return state
                .store
                .close_delivery(d.id, "skipped", "this event runs no pipeline")
                .await
                .map_err(|e| e.to_string());
        }
    };
    let lock = state.mirror_lock(project.record.id);
    let guard = lock.lock().await;
    let mirror = git::mirror_path(&state.config.data_dir, project.record.id);
    let compiled = {
        let project = project.clone();
        let event = event.clone();
        tokio::task::spawn_blocking(move || compile_at(&mirror, &project, &event))
            .await
            .map_err(|e| format!("the compiler panicked: {e}"))??
    };
    drop(guard);
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
    let now = crate::now_ms();
    let mut new = NewPipeline {
        project_id: project.record.id,
        delivery_id: Some(d.id),
        git_ref: event.git_ref.clone(),
        tag: event.tag,
        sha: compiled.sha.clone(),
        before_sha: compiled.before_sha.clone(),
        source: event.source.clone(),
        status: "created".into(),
        trace_id: trace.clone(),
        errors: "[]".into(),
        spec: String::new(),
        created_at: now,
        jobs: Vec::new(),
    };
    if !errors.is_empty() {
        new.status = "failed".into();
        new.errors = serde_json::to_string(&errors).map_err(|e| e.to_string())?;
        new.spec = serde_json::to_string(&compiled.doc).map_err(|e| e.to_string())?;
        let id = state
            .store
            .create_pipeline(&new)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(pipeline = id, trace_id = %trace, "invalid configuration: pipeline failed");
        state.metrics.pipeline_ended("failed");
        crate::statuses::pipeline_changed(state, id).await;
        return Ok(());
    }
    if let Some(reason) = &compiled.result.workflow_skipped {
        return state
            .store
            .close_delivery(d.id, "skipped", &format!("workflow:rules: {reason}"))
            .await
            .map_err(|e| e.to_string());
    }
    let Some(plan) = compiled.result.plan else {
        return Err("the compiler gave no plan".into());
    };
    if plan.jobs.is_empty() {
        return state
            .store
            .close_delivery(
                d.id,
                "skipped",
                "no job survives workflow:rules and the job rules",
            )
            .await
            .map_err(|e| e.to_string());
    }
    new.jobs = new_jobs(&plan, now).map_err(|e| e.to_string())?;
    new.spec = serde_json::to_string(&compiled.doc).map_err(|e| e.to_string())?;
    let id = state
        .store
        .create_pipeline(&new)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(pipeline = id, trace_id = %trace, project = %project.record.name, "pipeline created");
    crate::progress::advance(state, id).await;
    if event.source == "push" && !event.tag {
        crate::progress::auto_cancel(state, &project, &event.git_ref, id).await;
    }
    Ok(())
}

/// The plan's jobs as stored jobs.
fn new_jobs(plan: &Plan, now: i64) -> serde_json::Result<Vec<NewJob>> {
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
            stage_index: i64::try_from(job.stage_index).unwrap_or(0),
            position: i64::try_from(i).unwrap_or(0),
            attempt: 1,
            status: "created".into(),
            when: job.when.as_str().into(),
            allow_failure: job.allow_failure.is_allowed(),
            needs: job
                .needs
                .as_ref()
                .map(|n| n.iter().map(|n| n.job.clone()).collect()),
            tags: job.tags.clone(),
            resource_group: resource_group.filter(|g| !g.is_empty()),
            interruptible: job.interruptible,
            spec: serde_json::to_string(&JobDoc { job: job.clone() })?,
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

/// The merge request's predefined variables.
fn mr_variables(mr: &hooks::MergeRequest, project: &LoadedProject, sha: &str) -> Vec<Variable> {
    let mut v = vec![
        var("CI_MERGE_REQUEST_IID", mr.iid.to_string()),
        var("CI_MERGE_REQUEST_ID", mr.id.to_string()),
        var("CI_MERGE_REQUEST_TITLE", mr.title.clone()),
        var("CI_MERGE_REQUEST_DESCRIPTION", mr.description.clone()),
        var(
            "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME",
            mr.source_branch.clone(),
        ),
        var("CI_MERGE_REQUEST_SOURCE_BRANCH_SHA", sha),
        var(
            "CI_MERGE_REQUEST_TARGET_BRANCH_NAME",
            mr.target_branch.clone(),
        ),
        var("CI_MERGE_REQUEST_EVENT_TYPE", "detached"),
        var("CI_MERGE_REQUEST_PROJECT_PATH", project.record.name.clone()),
        var(
            "CI_MERGE_REQUEST_SOURCE_PROJECT_PATH",
            project.record.name.clone(),
        ),
        var("CI_MERGE_REQUEST_LABELS", mr.labels.join(",")),
        var(
            "CI_MERGE_REQUEST_PROJECT_URL",
            project.spec.repo_url.clone(),
        ),
        var(
            "CI_MERGE_REQUEST_TARGET_BRANCH_PROTECTED",
            (mr.target_branch == project.spec.default_branch).to_string(),
        ),
    ];
    if let Some(t) = &mr.target_sha {
        v.push(var("CI_MERGE_REQUEST_TARGET_BRANCH_SHA", t.clone()));
        v.push(var("CI_MERGE_REQUEST_DIFF_BASE_SHA", t.clone()));
    }
    if !mr.url.is_empty() {
        v.push(var("CI_MERGE_REQUEST_REF_PATH", mr.url.clone()));
    }
    v
}

/// Fetches the event's commit into the mirror and compiles its `.gitlab-ci.yml` (blocking).
fn compile_at(
    mirror: &std::path::Path,
    project: &LoadedProject,
    event: &Event,
) -> Result<Compiled, String> {
    let sha = git::fetch(
        mirror,
        &project.spec.repo_url,
        event.sha.as_deref(),
        &event.fetch_ref,
    )
    .map_err(|e| format!("{e:#}"))?;
    let info = git::commit_info(mirror, &sha).map_err(|e| format!("{e:#}"))?;
    let before_sha = event.before_sha.clone().or_else(|| info.parent.clone());
    let mut base = event
        .before_sha
        .clone()
        .filter(|b| !b.bytes().all(|c| c == b'0'));
    if let Some(mr) = &event.mr {
        base = mr.target_sha.clone().or_else(|| {
            git::fetch(
                mirror,
                &project.spec.repo_url,
                None,
                &format!("refs/heads/{}", mr.target_branch),
            )
            .ok()
        });
    }
    let sources = git::GitSources::new(mirror, &sha, base).map_err(|e| format!("{e:#}"))?;
    let protected = event.tag || event.git_ref == project.spec.default_branch && event.mr.is_none();
    let project_variables: Vec<ProjectVariable> = project
        .spec
        .variables
        .iter()
        .filter(|v| protected || !v.protected)
        .cloned()
        .collect();
    // Variables the compiler must see for rules, in precedence order; the predefined ones of merge
    // requests are moved back below the YAML variables afterwards.
    let mut predefined_extra = Vec::new();
    if let Some(mr) = &event.mr {
        predefined_extra.extend(mr_variables(mr, project, &sha));
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
            before_sha: before_sha.clone().unwrap_or_else(|| "0".repeat(40)),
            branch: if event.tag || event.mr.is_some() {
                None
            } else {
                Some(event.git_ref.clone())
            },
            tag: event.tag.then(|| event.git_ref.clone()),
            message: info.message,
            timestamp: info.timestamp,
            author: info.author,
            default_branch: project.spec.default_branch.clone(),
            remote_url: Some(project.spec.repo_url.clone()),
            user_name: event.user_name.clone(),
            user_email: event.user_email.clone(),
        },
        pipeline_source: event.source.clone(),
        pipeline_id: 0,
        cli_variables: compile_vars,
    };
    let mut result = gantry_pipeline::compile(&sources, &ctx);
    let mut doc = PipelineDoc {
        project_variables,
        cli_variables: trigger_vars.clone(),
        ..PipelineDoc::default()
    };
    if let Some(plan) = &mut result.plan {
        plan.predefined.extend(predefined_extra);
        plan.cli_variables = trigger_vars;
        doc.stages = plan.stages.clone();
        doc.predefined = plan.predefined.clone();
        doc.variables = plan.variables.clone();
    }
    Ok(Compiled {
        sha,
        before_sha,
        result,
        doc,
    })
}
