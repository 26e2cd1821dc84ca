//! What users do to pipelines and jobs: cancel, retry, play, and approve a fork pipeline. Each one
//! is an operation of `advance` that `progress::drive` applies.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use gantry_api::{ErrorBody, Job, Pipeline, PipelineStatus};
use gantry_store::{Millis, PipelineRecord};

use crate::advance::{self, Step};
use crate::error::{AppError, AppResult};
use crate::http::{Caller, PathParam};
use crate::progress::drive;
use crate::state::AppState;

/// `POST /api/v1/pipelines/{id}/cancel`.
#[utoipa::path(post, path = "/api/v1/pipelines/{id}/cancel", tag = "pipelines", params(("id" = i64, Path, description = "The id")),
    responses((status = 200, description = "Canceled", body = Pipeline), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project, or one of scope `read`", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "The pipeline is over and no rollback runs in it", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn cancel_pipeline(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> AppResult<Json<gantry_api::Pipeline>> {
    caller
        .changes_pipeline(&state, id, "cancel a pipeline")
        .await?;
    // A pipeline that is over has nothing to cancel, unless a rollback's attempt runs in it (one
    // already asked to stop is being canceled: nothing more to do, the pipeline as it is).
    let op = |p: &PipelineRecord, now| {
        let step = advance::cancel(p, now);
        if step.is_empty()
            && p.status != PipelineStatus::Canceled
            && !advance::rollback_canceling(p)
        {
            Err(format!("the pipeline is {} already", p.status))
        } else {
            Ok(step)
        }
    };
    drive(&state, id, Some(&op)).await?;
    crate::views::load_pipeline(&state, id).await.map(Json)
}

/// `POST /api/v1/jobs/{id}/retry`: answers the new attempt.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs", params(("id" = i64, Path, description = "The id")),
    responses((status = 201, description = "The new attempt", body = Job), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project, or one of scope `read`", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "The job cannot be retried", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn retry_job(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> AppResult<(StatusCode, Json<gantry_api::Job>)> {
    caller.changes_job(&state, id, "retry a job").await?;
    let job = crate::views::load_job(&state, id).await?;
    let op = move |p: &PipelineRecord, now| advance::retry(p, id, now);
    drive(&state, job.pipeline_id, Some(&op)).await?;
    let p = state
        .store
        .pipeline(job.pipeline_id)
        .await?
        .ok_or_else(|| AppError::not_found("no such pipeline"))?;
    let newest = advance::latest(&p)
        .into_iter()
        .find(|j| j.position == job.position)
        .ok_or_else(|| AppError::internal("the retried job is gone"))?;
    Ok((StatusCode::CREATED, Json(crate::views::job_api(newest))))
}

/// `POST /api/v1/jobs/{id}/play`.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/play", tag = "jobs", params(("id" = i64, Path, description = "The id")),
    responses((status = 200, description = "Queued", body = Job), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project, or one of scope `read`", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "The job is not manual", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn play_job(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> AppResult<Json<gantry_api::Job>> {
    caller.changes_job(&state, id, "play a job").await?;
    let job = crate::views::load_job(&state, id).await?;
    let op = move |p: &PipelineRecord, now| advance::play(p, id, now);
    drive(&state, job.pipeline_id, Some(&op)).await?;
    let job = crate::views::load_job(&state, id).await?;
    Ok(Json(crate::views::job_api(&job)))
}

/// `POST /api/v1/pipelines/{id}/approve`: a fork pipeline of mode `approve` that waits gets the
/// project's (unprotected) variables and `CI_JOB_TOKEN`, and runs. The admin token or a project
/// token of the pipeline's project; a job's `CI_JOB_TOKEN` is no API token and cannot.
#[utoipa::path(post, path = "/api/v1/pipelines/{id}/approve", tag = "pipelines", params(("id" = i64, Path, description = "The id")),
    responses((status = 200, description = "Approved: it runs with the project's variables", body = Pipeline), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project, or one of scope `read`", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "The pipeline does not wait for an approval", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn approve_pipeline(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> AppResult<Json<gantry_api::Pipeline>> {
    caller
        .changes_pipeline(&state, id, "approve a fork's pipeline")
        .await?;
    let by = caller.who();
    let Some(head) = state.store.pipeline_head(id).await? else {
        return Err(AppError::not_found(format!("no pipeline {id}")));
    };
    let project = state.project(&head.project_name).await?;
    // A merge request pipeline is not protected: the unprotected variables, as a pipeline of a
    // branch of the project itself gets them.
    let variables = crate::spec::pipeline_variables(&project.spec, false);
    let op = move |p: &PipelineRecord, now: Millis| {
        let mut doc: crate::spec::PipelineDoc =
            serde_json::from_str(&p.spec).map_err(|e| e.to_string())?;
        match &mut doc.fork {
            Some(f) if f.waiting() && p.status == PipelineStatus::Manual => {
                f.approved_by = Some(by.clone());
                f.approved_at = Some(now);
            }
            _ => return Err("the pipeline does not wait for an approval".to_string()),
        }
        doc.project_variables = variables
            .iter()
            .cloned()
            .map(|mut v| {
                if v.masked {
                    v.value = None;
                }
                v
            })
            .collect();
        let mut step = Step::default();
        step.changes.spec = Some(serde_json::to_string(&doc).map_err(|e| e.to_string())?);
        Ok(step)
    };
    drive(&state, id, Some(&op)).await?;
    tracing::info!(pipeline = id, trace_id = %head.trace_id, "fork pipeline approved");
    crate::views::load_pipeline(&state, id).await.map(Json)
}
