//! Rollbacks on the server (issue 19), by the API (`POST /api/v1/projects/{name}/environments/{env}/rollback`)
//! and automatically, the moment a deploy job fails its verification with `verify:on_failure:
//! rollback` ([`job_finished`], from the finish handler). A rollback re-deploys a target deployment
//! (by default the last one of the environment that succeeded before the one rolled back): a new
//! attempt of the target's job in the target's pipeline (`advance::redeploy`, so it has the
//! target's commit, variables and artifacts), turned into its rollback when handed out
//! (`spec::JobDoc::runnable`: the rolled-back job's `rollback_script`, `GANTRY_ROLLBACK_*`). It is
//! a deployment itself, recorded at once (`rollback_of`, triggered by `rollback`, the target's
//! variables and artifacts). When it succeeds, the deployment rolled back is marked `rolled_back`;
//! when it fails, that is logged as an error and notified, and nothing rolls back again.
//! An attempt that a newer deployment superseded (deployed after the one it rolls back) fails
//! when an agent claims it ([`superseded`]): it never puts the older version over the newer.
//! Canceling the pipeline it runs in cancels it, even one that is over (`advance::cancel`), and no
//! later job of that pipeline takes its artifacts or reports (`advance::counted_of`).
//!
//! A deploy job's end (notifications, a rollback's outcome) is `deployments::ended`, which a
//! finish ([`job_finished`]), the lease reaper (`progress::expire`) and a cancel of a queued
//! rollback's attempt (`progress::effects`) call; only a finish
//! starts an automatic rollback. One that cannot start is notified as a failed rollback.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use gantry_api::deployments::{DeploymentStatus, Rollback, RollbackRequest};
use gantry_api::{ErrorBody, JobStatus};
use gantry_pipeline::notify::EventKind;
use gantry_pipeline::verify::OnFailure;
use gantry_store::{DeploymentRecord, JobRecord, NewDeployment, Page};

use crate::error::{AppError, AppResult};
use crate::http::{Caller, PathParam, RawBody};
use crate::notify::Notice;
use crate::spec::{JobDoc, RollbackDoc};
use crate::state::AppState;

/// `POST /api/v1/projects/{name}/environments/{env}/rollback`.
#[utoipa::path(post, path = "/api/v1/projects/{name}/environments/{env}/rollback", tag = "deployments",
    params(("name" = String, Path, description = "The project's name"), ("env" = String, Path, description = "The environment's name (`/` written `%2F`)")),
    request_body(content = Option<RollbackRequest>, description = "The deployment to re-deploy; by default the last one that succeeded before the newest"),
    responses((status = 201, description = "The rollback started", body = Rollback), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project, or one of scope `read`", body = ErrorBody), (status = 404, description = "No such project or environment", body = ErrorBody), (status = 409, description = "The newest deployment still runs, there is no earlier success, or `to` is not a success of the environment", body = ErrorBody), (status = 413, description = "The body is over the limit", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    PathParam((name, env)): PathParam<(String, String)>,
    RawBody(body): RawBody,
) -> AppResult<(StatusCode, Json<Rollback>)> {
    caller.project(&name)?;
    caller.can("roll back an environment")?;
    let asked = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        serde_json::from_slice::<RollbackRequest>(&body)
            .map_err(|e| AppError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let project = state.project(&name).await?;
    let newest = state
        .store
        .deployments(
            project.record.id,
            &env,
            Page {
                page: 1,
                per_page: 1,
            },
        )
        .await?
        .items
        .into_iter()
        .next()
        .ok_or_else(|| {
            AppError::not_found(format!("project `{name}` has no environment `{env}`"))
        })?;
    if newest.status == DeploymentStatus::Running {
        return Err(AppError::conflict(format!(
            "the newest deployment of `{env}` ({}) is still running: roll back once it ends",
            newest.id
        )));
    }
    let to = match asked.to {
        Some(id) => {
            let target = state
                .store
                .deployment(id)
                .await?
                .filter(|d| d.project_id == project.record.id && d.environment == env);
            match target {
                Some(d) if d.id == newest.id => {
                    return Err(AppError::conflict(format!(
                        "deployment {id} is the newest of `{env}`: there is nothing to roll back to it from"
                    )));
                }
                Some(d) if d.status == DeploymentStatus::Success => Some(d),
                _ => {
                    return Err(AppError::conflict(format!(
                        "deployment {id} is not a successful deployment of `{env}`"
                    )));
                }
            }
        }
        None => None,
    };
    let by = format!("{} by {}", crate::deployments::TRIGGERED_BY, caller.who());
    let started = start(&state, &newest, to, by).await?;
    Ok((StatusCode::CREATED, Json(started)))
}

/// Rolls deployment `from` back to `to` (by default the last success before it): re-deploys the
/// target's job as a new attempt, records that attempt's deployment (triggered `by`: `rollback by
/// admin`, `rollback by token 3 (deployer)`, `rollback (automatic)`), wakes the agents.
async fn start(
    state: &AppState,
    from: &DeploymentRecord,
    to: Option<DeploymentRecord>,
    by: String,
) -> AppResult<Rollback> {
    let to = match to {
        Some(t) => t,
        None => state
            .store
            .last_success_before(from.id)
            .await?
            .ok_or_else(|| {
                AppError::conflict(format!(
                    "`{}` has no successful deployment before {} to roll back to",
                    from.environment, from.id
                ))
            })?,
    };
    let rollback_script = match state.store.job(from.job_id).await? {
        Some(j) => rollback_script(&j),
        None => None,
    };
    let Some(target) = state.store.job(to.job_id).await? else {
        return Err(AppError::conflict(format!(
            "the job of deployment {} is gone",
            to.id
        )));
    };
    let doc = RollbackDoc {
        from: from.id,
        to: to.id,
        rollback_script,
        by: Some(by.clone()),
    };
    let op =
        |p: &gantry_store::PipelineRecord, now| crate::advance::redeploy(p, to.job_id, &doc, now);
    crate::progress::drive(state, to.pipeline_id, Some(&op)).await?;
    // The attempt just made: the latest of the target's job.
    let p = state
        .store
        .pipeline(to.pipeline_id)
        .await?
        .ok_or_else(|| AppError::internal("the target's pipeline is gone"))?;
    let attempt = crate::advance::latest(&p)
        .into_iter()
        .find(|j| j.position == target.position)
        .map(|j| j.id)
        .ok_or_else(|| AppError::internal("the rollback's attempt is gone"))?;
    state
        .store
        .record_deployment(&NewDeployment {
            project_id: to.project_id,
            environment: to.environment.clone(),
            url: to.url.clone(),
            tier: to.tier.clone(),
            job_id: attempt,
            pipeline_id: to.pipeline_id,
            job_name: to.job_name.clone(),
            sha: to.sha.clone(),
            git_ref: to.git_ref.clone(),
            triggered_by: by,
            variables: to.variables.clone(),
            artifacts: to.artifacts.clone(),
            created_at: crate::now_ms(),
            rollback_of: Some(from.id),
        })
        .await?;
    tracing::info!(
        environment = %from.environment,
        from = from.id,
        to = to.id,
        job = attempt,
        pipeline = to.pipeline_id,
        "rollback started"
    );
    Ok(Rollback {
        environment: from.environment.clone(),
        from: from.id,
        to: to.id,
        job_id: attempt,
    })
}

/// Whether job `job`, just claimed by agent `agent`, is a rollback's attempt that a newer
/// deployment superseded: the environment has a deployment newer than the one it rolls back, other
/// than the attempt's own. Then the attempt must not deploy the older version over the newer: it
/// fails at once (`unknown_failure`, the reason in its log), nothing is marked rolled back, and an
/// error is logged.
pub(crate) async fn superseded(
    state: &AppState,
    agent: &gantry_store::AgentRecord,
    job: &JobRecord,
) -> AppResult<bool> {
    if !job.spec.contains("\"rollback\":{") {
        return Ok(false);
    }
    let Some(r) = serde_json::from_str::<JobDoc>(&job.spec)
        .ok()
        .and_then(|d| d.rollback)
    else {
        return Ok(false);
    };
    let Some(from) = state.store.deployment(r.from).await? else {
        return Ok(false);
    };
    // Newest first: among the first two, one is newer than `from` and not this attempt's if any is.
    let newest = state
        .store
        .deployments(
            from.project_id,
            &from.environment,
            Page {
                page: 1,
                per_page: 2,
            },
        )
        .await?;
    let Some(newer) = newest
        .items
        .iter()
        .find(|d| d.id > r.from && d.job_id != job.id)
    else {
        return Ok(false);
    };
    let why = format!(
        "superseded: deployment {} is newer than the one this rollback replaces ({})",
        newer.id, r.from
    );
    let now = crate::now_ms();
    state
        .store
        .append_log(
            job.id,
            agent.id,
            0,
            format!("{why}\n").as_bytes(),
            state.lease_until(now),
        )
        .await?;
    let result = gantry_store::JobResult {
        status: JobStatus::Failed,
        exit_code: None,
        failure_reason: Some("unknown_failure".into()),
        coverage: None,
        finished_at: now,
        reports: None,
        measurements: None,
    };
    let pipeline = state.store.finish(job.id, agent.id, &result).await?;
    state.metrics.job_ended(JobStatus::Failed);
    state.logs.notify_waiters();
    tracing::error!(
        environment = %from.environment,
        from = r.from,
        to = r.to,
        newer = newer.id,
        job = job.id,
        "the rollback did not run, nothing was rolled back: {why}"
    );
    crate::progress::advance(state, pipeline).await;
    Ok(true)
}

/// The `rollback_script` of job `j`'s plan job, when it has one.
fn rollback_script(j: &JobRecord) -> Option<Vec<String>> {
    serde_json::from_str::<JobDoc>(&j.spec)
        .ok()
        .map(|d| d.job.rollback_script)
        .filter(|s| !s.is_empty())
}

/// After job `job` (as claimed) finished with `status` and `failure_reason`: its deployment's end
/// ([`crate::deployments::ended`]: notifications, a rollback's outcome); when its verification
/// failed and `verify:on_failure` is `rollback`, starts the rollback. Failures are logged (and a
/// rollback that cannot start is notified as failed); none reaches the agent.
pub(crate) async fn job_finished(
    state: &AppState,
    job: &JobRecord,
    status: JobStatus,
    failure_reason: Option<&str>,
) {
    let Some((doc, deployment)) = crate::deployments::ended(state, job, status).await else {
        return;
    };
    if doc.rollback.is_some() {
        return;
    }
    let rolls_back = doc
        .job
        .verify
        .as_ref()
        .is_some_and(|v| v.on_failure == OnFailure::Rollback);
    if status == JobStatus::Failed && rolls_back && failure_reason == Some("verification_failure") {
        let by = format!("{} (automatic)", crate::deployments::TRIGGERED_BY);
        if let Err(e) = start(state, &deployment, None, by).await {
            tracing::error!(
                environment = %deployment.environment,
                deployment = deployment.id,
                job = job.id,
                error = %e.message,
                "the verification failed and verify:on_failure is rollback, but nothing was rolled back"
            );
            // Nothing re-deploys: notified as a failed rollback, to nothing.
            let notice = Notice {
                kind: EventKind::Rollback,
                environment: deployment.environment.clone(),
                failed_jobs: vec![job.name.clone()],
                rollback: Some(gantry_notify::Rollback {
                    from: deployment.id.to_string(),
                    to: String::new(),
                }),
            };
            crate::notify::deployment(state, job.pipeline_id, notice).await;
        }
    }
}
