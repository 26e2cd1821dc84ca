//! Applies `advance` to stored pipelines: optimistic writes with `Store::apply` (read again and retry
//! when another writer won), then the effects: agents woken, metrics, commit statuses. Also the lease
//! reaper, the sweeper (delayed jobs, pipelines left behind by a crash, old source archives),
//! interruptible auto-cancel, and the cancel / retry / play routes.

use gantry_api::{ErrorBody, Job, Pipeline};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use gantry_store::{Millis, PipelineRecord};

use crate::advance::{self, Step};
use crate::error::{AppError, AppResult};
use crate::http::{Caller, PathParam};
use crate::projects::LoadedProject;
use crate::state::AppState;

type Op<'a> = &'a (dyn Fn(&PipelineRecord, Millis) -> Result<Step, String> + Send + Sync);

/// Applies `op` (when given) to pipeline `id`, then advances it until nothing changes.
async fn drive(state: &AppState, id: i64, op: Option<Op<'_>>) -> AppResult<()> {
    let mut op = op;
    for _ in 0..100 {
        let Some(p) = state.store.pipeline(id).await? else {
            return Err(AppError::not_found(format!("no pipeline {id}")));
        };
        let now = crate::now_ms();
        let step = match op {
            Some(f) => f(&p, now).map_err(AppError::conflict)?,
            None => advance::advance(&p, now),
        };
        if step.is_empty() {
            if op.is_none() {
                if let Some(at) = step.wake_at {
                    remember(state, at, id);
                }
                return Ok(());
            }
            op = None;
            continue;
        }
        if state.store.apply(id, p.version, &step.changes).await? {
            effects(state, &p, &step).await;
            op = None;
        }
    }
    tracing::warn!(pipeline = id, "the pipeline does not settle");
    Ok(())
}

fn remember(state: &AppState, at: Millis, id: i64) {
    state
        .delayed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert((at, id));
}

async fn effects(state: &AppState, before: &PipelineRecord, step: &Step) {
    if step.queued {
        state.jobs_ready.notify_waiters();
    }
    if let Some(at) = step.wake_at {
        remember(state, at, before.id);
    }
    for s in &step.ended {
        state.metrics.job_ended(s);
    }
    if !step.ended.is_empty() {
        state.logs.notify_waiters();
    }
    if let Some(s) = &step.changes.status {
        if matches!(s.as_str(), "success" | "failed" | "canceled" | "skipped") {
            state.metrics.pipeline_ended(s);
        }
        tracing::info!(pipeline = before.id, trace_id = %before.trace_id, status = %s, "pipeline status");
        crate::statuses::pipeline_changed(state, before.id).await;
    }
}

/// Advances pipeline `id`, logging failures (for background callers).
pub(crate) async fn advance(state: &AppState, id: i64) {
    if let Err(e) = drive(state, id, None).await {
        tracing::warn!(pipeline = id, error = %e.message, "cannot advance the pipeline");
    }
}

/// Fails jobs whose lease ran out, every quarter of the lease timeout, and advances their pipelines
/// (which retries them where `retry:when` allows `runner_system_failure`).
pub(crate) async fn reaper(state: AppState) {
    let every = (state.config.lease_timeout / 4).max(Duration::from_millis(100));
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        expire(&state).await;
    }
}

/// Fails the running jobs whose lease ran out (`runner_system_failure`) and advances their
/// pipelines: the lost-agent path, also taken at once for a revoked agent's jobs.
pub(crate) async fn expire(state: &AppState) {
    match state.store.expire_leases(crate::now_ms()).await {
        Ok(expired) => {
            let mut pipelines: Vec<i64> = expired.iter().map(|(_, p)| *p).collect();
            pipelines.sort_unstable();
            pipelines.dedup();
            for (job, pipeline) in &expired {
                tracing::warn!(job, pipeline, "lease expired: runner_system_failure");
                state.metrics.job_ended("failed");
            }
            if !expired.is_empty() {
                state.logs.notify_waiters();
            }
            for p in pipelines {
                advance(state, p).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot expire leases"),
    }
}

/// How long a commit's source archive is kept after it was made.
const ARCHIVE_AGE: Duration = Duration::from_secs(3600);

/// Advances every active pipeline at start (a crash may have left one behind), delayed jobs when they
/// come due, and every active pipeline once a minute (delayed jobs another server scheduled); once a
/// minute, removes source archives older than [`ARCHIVE_AGE`].
pub(crate) async fn sweeper(state: AppState) {
    let mut shutdown = state.shutdown.clone();
    let mut last_full = None::<std::time::Instant>;
    loop {
        if last_full.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            last_full = Some(std::time::Instant::now());
            let data_dir = state.config.data_dir.clone();
            let _ = tokio::task::spawn_blocking(move || {
                crate::git::prune_archives(&data_dir, ARCHIVE_AGE)
            })
            .await;
            match state.store.drop_stale_artifact_uploads().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(uploads = n, "dropped unfinished artifact uploads"),
                Err(e) => tracing::warn!(error = %e, "cannot drop unfinished artifact uploads"),
            }
            match state.store.active_pipelines().await {
                Ok(ids) => {
                    for id in ids {
                        if state.stopping() {
                            return;
                        }
                        advance(&state, id).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list active pipelines"),
            }
        }
        let now = crate::now_ms();
        let due: Vec<i64> = {
            let mut d = state
                .delayed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut out = Vec::new();
            while let Some(&(at, id)) = d.first() {
                if at > now {
                    break;
                }
                d.pop_first();
                out.push(id);
            }
            out
        };
        for id in due {
            advance(&state, id).await;
        }
        let next = state
            .delayed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .first()
            .map(|(at, _)| *at);
        let wait = next.map_or(Duration::from_secs(1), |at| {
            Duration::from_millis(u64::try_from((at - now).clamp(10, 1000)).unwrap_or(1000))
        });
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Cancels the older pipelines of `git_ref` that a new push made redundant, where every job that
/// started is `interruptible`.
pub(crate) async fn auto_cancel(
    state: &AppState,
    project: &LoadedProject,
    git_ref: &str,
    newer: i64,
) {
    let older = match state
        .store
        .unfinished_push_pipelines(project.record.id, git_ref, newer)
        .await
    {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(newer, error = %e, "cannot list the pipelines a push makes redundant");
            return;
        }
    };
    for old in older {
        let Ok(Some(full)) = state.store.pipeline(old).await else {
            continue;
        };
        let interruptible = advance::latest(&full)
            .iter()
            .filter(|j| j.started_at.is_some())
            .all(|j| j.interruptible);
        if interruptible {
            tracing::info!(
                pipeline = old,
                newer,
                "auto-canceled: a newer pipeline runs the same ref"
            );
            let op = |p: &PipelineRecord, now| Ok(advance::cancel(p, now));
            if let Err(e) = drive(state, old, Some(&op)).await {
                tracing::warn!(pipeline = old, error = %e.message, "cannot auto-cancel");
            }
        }
    }
}

/// `POST /api/v1/pipelines/{id}/cancel`.
#[utoipa::path(post, path = "/api/v1/pipelines/{id}/cancel", tag = "pipelines", params(("id" = i64, Path, description = "The id")),
    responses((status = 200, description = "Canceled", body = Pipeline), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project, or a read-only one", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "The pipeline is over", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn cancel_pipeline(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> AppResult<Json<gantry_api::Pipeline>> {
    caller.pipeline(&state, id).await?;
    caller.writes()?;
    let op = |p: &PipelineRecord, now| {
        if matches!(p.status.as_str(), "success" | "failed" | "skipped") {
            Err(format!("the pipeline is {} already", p.status))
        } else {
            Ok(advance::cancel(p, now))
        }
    };
    drive(&state, id, Some(&op)).await?;
    crate::read::load_pipeline(&state, id).await.map(Json)
}

/// `POST /api/v1/jobs/{id}/retry`: answers the new attempt.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs", params(("id" = i64, Path, description = "The id")),
    responses((status = 201, description = "The new attempt", body = Job), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project, or a read-only one", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "The job cannot be retried", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn retry_job(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> AppResult<(StatusCode, Json<gantry_api::Job>)> {
    caller.job(&state, id).await?;
    caller.writes()?;
    let job = crate::read::load_job(&state, id).await?;
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
    Ok((StatusCode::CREATED, Json(crate::read::job_api(newest))))
}

/// `POST /api/v1/jobs/{id}/play`.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/play", tag = "jobs", params(("id" = i64, Path, description = "The id")),
    responses((status = 200, description = "Queued", body = Job), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project, or a read-only one", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "The job is not manual", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn play_job(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> AppResult<Json<gantry_api::Job>> {
    caller.job(&state, id).await?;
    caller.writes()?;
    let job = crate::read::load_job(&state, id).await?;
    let op = move |p: &PipelineRecord, now| advance::play(p, id, now);
    drive(&state, job.pipeline_id, Some(&op)).await?;
    let job = crate::read::load_job(&state, id).await?;
    Ok(Json(crate::read::job_api(&job)))
}

/// `POST /api/v1/pipelines/{id}/approve`: a fork pipeline of mode `approve` that waits gets the
/// project's (unprotected) variables and `CI_JOB_TOKEN`, and runs. The admin token or a project
/// token of the pipeline's project; a job's `CI_JOB_TOKEN` is no API token and cannot.
#[utoipa::path(post, path = "/api/v1/pipelines/{id}/approve", tag = "pipelines", params(("id" = i64, Path, description = "The id")),
    responses((status = 200, description = "Approved: it runs with the project's variables", body = Pipeline), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project, or a read-only one", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "The pipeline does not wait for an approval", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn approve_pipeline(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> AppResult<Json<gantry_api::Pipeline>> {
    caller.pipeline(&state, id).await?;
    caller.writes()?;
    let by = match &caller {
        Caller::Admin => "admin".to_string(),
        Caller::Project(t) => format!("token {}", t.id),
    };
    let Some(head) = state.store.pipeline_head(id).await? else {
        return Err(AppError::not_found(format!("no pipeline {id}")));
    };
    let project = crate::projects::load(&state, &head.project_name).await?;
    // A merge request pipeline is not protected: the unprotected variables, as a pipeline of a
    // branch of the project itself gets them.
    let variables = crate::intake::pipeline_variables(&project.spec, false);
    let op = move |p: &PipelineRecord, now: Millis| {
        let mut doc: crate::intake::PipelineDoc =
            serde_json::from_str(&p.spec).map_err(|e| e.to_string())?;
        match &mut doc.fork {
            Some(f) if f.waiting() && p.status == "manual" => {
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
    crate::read::load_pipeline(&state, id).await.map(Json)
}
