//! Deployments on the server (issue 19). A job whose `environment:` has action `start` deploys:
//! when it is handed out, [`record`] stores its deployment (one insert; the store's
//! `record_deployment` keeps the first of a job, and a rollback's attempt says it is one, and who
//! started it (its `RollbackDoc::by`), whichever of the hand-out and the rollback records it
//! first). It is recorded after the claim commits but
//! before the agent gets the job: the record is built from the job's spec, which needs the job the
//! claim picks, and reads the store; a crash between loses only an attempt that no agent got
//! (its lease runs out), never a deployment that ran. Its status and end are its job's, read
//! with it, so a finish, the lease reaper and a cancel all end it; its verification's measurements come with the job's finish
//! ([`measurements`]). [`ended`] is a deployment's end after a finish, a lease's expiry or a cancel: its
//! notification, and a rollback's outcome (the deployment it rolled back marked, or its failure). The read API: `GET /api/v1/projects/{name}/environments` and
//! `GET /api/v1/projects/{name}/environments/{env}/deployments` (an environment's name may hold
//! `/`, sent as `%2F`); [`deployment_api`] and [`environment_api`] are the records as it shows them.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use gantry_api::agent::{FinishJob, JobSpec};
use gantry_api::deployments::{DeployedVariable, Deployment, Environment, Measurement};
use gantry_api::{ErrorBody, JobStatus};
use gantry_pipeline::notify::EventKind;
use gantry_pipeline::vars;
use gantry_store::{DeploymentRecord, EnvironmentRecord, JobRecord, Millis, NewDeployment};
use gantry_store::{PipelineRecord, Store};

use crate::error::{AppError, AppResult};
use crate::http::{Caller, PathParam, QueryParams};
use crate::notify::Notice;
use crate::spec::{JobDoc, RollbackDoc};
use crate::state::AppState;
use crate::views::{PageQuery, page_headers};

/// Who triggered a rollback's deployment.
pub(crate) const TRIGGERED_BY: &str = "rollback";

/// What a masked variable's value is recorded as.
const MASKED: &str = "[MASKED]";

/// The deployment that handing out `spec` (job `job` of pipeline `p`) at `now` makes, if its job
/// deploys (`environment:` with action `start`). Its environment's name and URL are expanded
/// with the job's variables; its variables are the project's and the pipeline's that the spec
/// hands the agent (masked ones `[MASKED]`); its artifacts the jobs it takes artifacts from.
pub(crate) fn new_deployment(
    p: &PipelineRecord,
    job: &JobRecord,
    spec: &JobSpec,
    now: Millis,
) -> Option<NewDeployment> {
    let main = spec.plan.jobs.first()?;
    let env = main.environment.as_ref().filter(|e| e.action == "start")?;
    let resolved: std::collections::HashMap<String, String> =
        vars::resolve(&spec.plan.job_variables(0, &[], &[]))
            .into_iter()
            .collect();
    let expand = |s: &str| vars::expand(s, &|k| resolved.get(k).cloned());
    // A name that expands to nothing is no environment: GitLab creates none for it.
    let environment = Some(expand(&env.name)).filter(|n| !n.is_empty())?;
    let variables: Vec<DeployedVariable> = spec
        .plan
        .cli_variables
        .iter()
        .map(|v| DeployedVariable {
            key: v.key.clone(),
            value: if v.masked {
                MASKED.to_owned()
            } else {
                v.value.clone()
            },
            masked: v.masked,
        })
        .collect();
    let artifacts: Vec<&str> = spec
        .dependencies
        .iter()
        .filter(|d| d.has_artifacts)
        .map(|d| d.name.as_str())
        .collect();
    let login = resolved.get("GITLAB_USER_LOGIN").filter(|l| !l.is_empty());
    // A rollback's attempt may be handed out before its rollback recorded it: say the same.
    let rollback = serde_json::from_str::<JobDoc>(&job.spec)
        .ok()
        .and_then(|d| d.rollback);
    let rollback_of = rollback.as_ref().map(|r| r.from);
    Some(NewDeployment {
        project_id: p.project_id,
        environment,
        url: env.url.as_deref().map(expand).filter(|u| !u.is_empty()),
        tier: env
            .deployment_tier
            .clone()
            .or_else(|| resolved.get("CI_ENVIRONMENT_TIER").cloned()),
        job_id: job.id,
        pipeline_id: p.id,
        job_name: job.name.clone(),
        sha: p.sha.clone(),
        git_ref: p.git_ref.clone(),
        triggered_by: match (rollback, login) {
            (Some(r), _) => r.by.unwrap_or_else(|| TRIGGERED_BY.to_owned()),
            (None, Some(login)) => format!("{} by {login}", p.source),
            (None, None) => p.source.clone(),
        },
        // Serializing strings and booleans cannot fail.
        variables: serde_json::to_string(&variables).unwrap_or_else(|_| "[]".to_owned()),
        artifacts: serde_json::to_string(&artifacts).unwrap_or_else(|_| "[]".to_owned()),
        created_at: now,
        rollback_of,
    })
}

/// Records the deployment of job `job` as it is handed out with `spec`, if it deploys (see
/// [`new_deployment`]); answers its id.
pub(crate) async fn record(
    store: &dyn Store,
    p: &PipelineRecord,
    job: &JobRecord,
    spec: &JobSpec,
) -> AppResult<Option<i64>> {
    let Some(new) = new_deployment(p, job, spec, crate::now_ms()) else {
        return Ok(None);
    };
    let id = store.record_deployment(&new).await?;
    tracing::info!(job = job.id, deployment = id, environment = %new.environment, "deployment recorded");
    Ok(Some(id))
}

/// After job `job` ended with `status` (its finish, its lease's expiry, a cancel): when it deploys, stores
/// the `deployment_succeeded` / `deployment_failed` notification; when it is a rollback's attempt,
/// marks the deployment it rolled back (on success) or reports its failure loudly, with the
/// `rollback` notification either way. Answers the job's plan and deployment when it deploys.
pub(crate) async fn ended(
    state: &AppState,
    job: &JobRecord,
    status: JobStatus,
) -> Option<(JobDoc, DeploymentRecord)> {
    // Most jobs do not deploy: a substring search (a job with an environment serializes it as a
    // mapping) spares decoding their spec.
    if !job.spec.contains("\"environment\":{") {
        return None;
    }
    let doc = serde_json::from_str::<JobDoc>(&job.spec).ok()?;
    if doc
        .job
        .environment
        .as_ref()
        .is_none_or(|e| e.action != "start")
    {
        return None;
    }
    let deployment = match state.store.job_deployment(job.id).await {
        Ok(d) => d?,
        Err(e) => {
            tracing::warn!(job = job.id, error = %e, "cannot read the job's deployment");
            return None;
        }
    };
    if let Some(r) = &doc.rollback {
        rollback_ended(state, job, status, r, &deployment).await;
        return Some((doc, deployment));
    }
    let kind = match status {
        JobStatus::Success => EventKind::DeploymentSucceeded,
        JobStatus::Failed => EventKind::DeploymentFailed,
        _ => return Some((doc, deployment)),
    };
    let notice = Notice {
        kind,
        environment: deployment.environment.clone(),
        failed_jobs: if status == JobStatus::Failed {
            vec![job.name.clone()]
        } else {
            Vec::new()
        },
        rollback: None,
    };
    crate::notify::deployment(state, job.pipeline_id, notice).await;
    Some((doc, deployment))
}

/// A rollback's job ended: on success the deployment it rolled back is marked; a failure is
/// reported loudly, and never rolled back in turn.
async fn rollback_ended(
    state: &AppState,
    job: &JobRecord,
    status: JobStatus,
    r: &RollbackDoc,
    deployment: &DeploymentRecord,
) {
    let succeeded = status == JobStatus::Success;
    if succeeded {
        match state.store.mark_rolled_back(r.from, deployment.id).await {
            Ok(_) => tracing::info!(
                environment = %deployment.environment,
                from = r.from,
                to = r.to,
                deployment = deployment.id,
                "rolled back"
            ),
            Err(e) => tracing::error!(
                from = r.from,
                error = %e,
                "cannot mark the deployment rolled back"
            ),
        }
    } else {
        tracing::error!(
            environment = %deployment.environment,
            from = r.from,
            to = r.to,
            job = job.id,
            status = status.as_str(),
            "the rollback FAILED: deployment {} is still in place; nothing rolls back again",
            r.from
        );
    }
    let notice = Notice {
        kind: EventKind::Rollback,
        environment: deployment.environment.clone(),
        failed_jobs: if succeeded {
            Vec::new()
        } else {
            vec![job.name.clone()]
        },
        rollback: Some(gantry_notify::Rollback {
            from: r.from.to_string(),
            to: r.to.to_string(),
        }),
    };
    crate::notify::deployment(state, job.pipeline_id, notice).await;
}

/// What a finish stores of the job's verification: its measurements as JSON, `None` when it
/// sent none.
pub(crate) fn measurements(body: &FinishJob) -> Option<String> {
    if body.measurements.is_empty() {
        return None;
    }
    serde_json::to_string(&body.measurements).ok()
}

/// A stored deployment as the API shows it.
pub(crate) fn deployment_api(d: &DeploymentRecord) -> AppResult<Deployment> {
    let json = |what: &str, e: serde_json::Error| {
        AppError::internal(format!("deployment {}: stored {what}: {e}", d.id))
    };
    let variables: Vec<DeployedVariable> =
        serde_json::from_str(&d.variables).map_err(|e| json("variables", e))?;
    let artifacts: Vec<String> =
        serde_json::from_str(&d.artifacts).map_err(|e| json("artifacts", e))?;
    let measurements: Vec<Measurement> =
        serde_json::from_str(&d.measurements).map_err(|e| json("measurements", e))?;
    Ok(Deployment {
        id: d.id,
        project: d.project_name.clone(),
        environment: d.environment.clone(),
        url: d.url.clone(),
        tier: d.tier.clone(),
        status: d.status,
        job_id: d.job_id,
        job: d.job_name.clone(),
        pipeline_id: d.pipeline_id,
        sha: d.sha.clone(),
        git_ref: d.git_ref.clone(),
        triggered_by: d.triggered_by.clone(),
        variables,
        artifacts,
        created_at: crate::rfc3339(d.created_at),
        finished_at: d.finished_at.map(crate::rfc3339),
        rollback_of: d.rollback_of,
        rolled_back_by: d.rolled_back_by,
        measurements,
    })
}

/// A stored environment as the API shows it: its URL and tier are its newest deployment's.
pub(crate) fn environment_api(e: &EnvironmentRecord) -> AppResult<Environment> {
    Ok(Environment {
        name: e.name.clone(),
        url: e.last.url.clone(),
        tier: e.last.tier.clone(),
        deployments: e.deployments,
        last: deployment_api(&e.last)?,
        current: e.current.as_ref().map(deployment_api).transpose()?,
    })
}

/// `GET /api/v1/projects/{name}/environments`.
#[utoipa::path(get, path = "/api/v1/projects/{name}/environments", tag = "deployments",
    params(("name" = String, Path, description = "The project's name")),
    responses((status = 200, description = "The project's environments (those with a deployment), by name, each with its count, its newest deployment and its current one (the newest that succeeded and was not rolled back)", body = Vec<Environment>), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn environments(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam<String>,
) -> AppResult<Json<Vec<Environment>>> {
    caller.project(&name)?;
    let project = state.project(&name).await?;
    let envs = state.store.environments(project.record.id).await?;
    envs.iter()
        .map(environment_api)
        .collect::<AppResult<_>>()
        .map(Json)
}

/// `GET /api/v1/projects/{name}/environments/{env}/deployments`.
#[utoipa::path(get, path = "/api/v1/projects/{name}/environments/{env}/deployments", tag = "deployments",
    params(("name" = String, Path, description = "The project's name"), ("env" = String, Path, description = "The environment's name, percent-encoded (`review%2Fx` for `review/x`)"), PageQuery),
    responses((status = 200, description = "A page of the environment's deployments, newest first", body = Vec<Deployment>,
        headers(("X-Total" = i64), ("X-Page" = i64), ("X-Per-Page" = i64), ("X-Next-Page" = String))), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project", body = ErrorBody), (status = 404, description = "No such project or environment", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn deployments(
    State(state): State<AppState>,
    caller: Caller,
    PathParam((name, env)): PathParam<(String, String)>,
    QueryParams(q): QueryParams<PageQuery>,
) -> AppResult<Response> {
    caller.project(&name)?;
    let page = q.page()?;
    let project = state.project(&name).await?;
    let paged = state
        .store
        .deployments(project.record.id, &env, page)
        .await?;
    if paged.total == 0 {
        return Err(AppError::not_found(format!(
            "project {name} has no environment `{env}`"
        )));
    }
    let items: Vec<Deployment> = paged
        .items
        .iter()
        .map(deployment_api)
        .collect::<AppResult<_>>()?;
    Ok((page_headers(page, paged.total), Json(items)).into_response())
}
