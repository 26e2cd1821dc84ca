//! What handlers answer with and look up alike: stored records as the API shows them
//! ([`job_api`], [`pipeline_api`]), a pipeline or job by id or `404`, pagination ([`PageQuery`],
//! [`page_headers`]), and a committed artifacts archive as a body ([`artifacts_body`]).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use gantry_api::{Delivery, DeliveryStatus, ForgeKind, Job, Pipeline, PipelineError};
use gantry_store::{ArtifactsInfo, DeliveryRecord, JobRecord, Page, PipelineRecord};
use serde::Deserialize;

use crate::error::{AppError, AppResult};
use crate::state::AppState;

#[allow(clippy::cast_precision_loss)]
fn duration(start: Option<i64>, end: Option<i64>) -> Option<f64> {
    match (start, end) {
        (Some(s), Some(e)) => Some((e - s).max(0) as f64 / 1000.0),
        _ => None,
    }
}

/// A stored job as the API shows it.
pub(crate) fn job_api(j: &JobRecord) -> Job {
    Job {
        id: j.id,
        pipeline_id: j.pipeline_id,
        name: j.name.clone(),
        stage: j.stage.clone(),
        status: j.status,
        when: j.when.clone(),
        allow_failure: j.allow_failure,
        needs: j.needs.clone(),
        tags: j.tags.clone(),
        attempt: u32::try_from(j.attempt).unwrap_or(1),
        created_at: crate::rfc3339(j.created_at),
        queued_at: j.queued_at.map(crate::rfc3339),
        started_at: j.started_at.map(crate::rfc3339),
        finished_at: j.finished_at.map(crate::rfc3339),
        duration: duration(j.started_at, j.finished_at),
        agent: j.agent_name.clone(),
        exit_code: j.exit_code,
        failure_reason: j.failure_reason.clone(),
        coverage: j.coverage,
        log_size: j.log_size,
        has_artifacts: j.has_artifacts,
    }
}

/// A stored pipeline as the API shows it; `jobs` holds the latest attempt of each job.
pub(crate) fn pipeline_api(p: &PipelineRecord) -> Pipeline {
    Pipeline {
        id: p.id,
        project: p.project_name.clone(),
        git_ref: p.git_ref.clone(),
        tag: p.tag,
        sha: p.sha.clone(),
        before_sha: p.before_sha.clone(),
        source: p.source.clone(),
        status: p.status,
        trace_id: p.trace_id.clone(),
        errors: serde_json::from_str::<Vec<PipelineError>>(&p.errors).unwrap_or_default(),
        created_at: crate::rfc3339(p.created_at),
        started_at: p.started_at.map(crate::rfc3339),
        finished_at: p.finished_at.map(crate::rfc3339),
        duration: duration(p.started_at, p.finished_at),
        fork: crate::spec::fork_of(&p.spec).map(|f| f.to_api()),
        jobs: crate::advance::latest(p).into_iter().map(job_api).collect(),
    }
}

/// A stored delivery as the API shows it.
pub(crate) fn delivery_api(d: &DeliveryRecord) -> Delivery {
    Delivery {
        id: d.id,
        forge: match d.forge.as_str() {
            "gitlab" => ForgeKind::Gitlab,
            "github" => ForgeKind::Github,
            "gitea" => ForgeKind::Gitea,
            "schedule" => ForgeKind::Schedule,
            _ => ForgeKind::Api,
        },
        delivery_id: d.delivery_id.clone(),
        event: d.event.clone(),
        status: d.status,
        reason: d.reason.clone(),
        pipeline_id: d.pipeline_id,
        received_at: crate::rfc3339(d.received_at),
        attempts: d.attempts,
        retry_at: d
            .retry_at
            .filter(|_| d.status == DeliveryStatus::Pending)
            .map(crate::rfc3339),
        last_error: d.last_error.clone(),
    }
}

/// Pipeline `id` with its jobs, or `404`.
pub(crate) async fn load_pipeline(state: &AppState, id: i64) -> AppResult<Pipeline> {
    match state.store.pipeline(id).await? {
        Some(p) => Ok(pipeline_api(&p)),
        None => Err(AppError::not_found(format!("no pipeline {id}"))),
    }
}

/// Job `id`, or `404`.
pub(crate) async fn load_job(state: &AppState, id: i64) -> AppResult<JobRecord> {
    state
        .store
        .job(id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("no job {id}")))
}

/// `page` and `per_page`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// The page, from 1.
    pub page: Option<i64>,
    /// Rows per page: 20 by default, at most 100.
    pub per_page: Option<i64>,
}

impl PageQuery {
    pub(crate) fn page(&self) -> AppResult<Page> {
        let page = self.page.unwrap_or(1);
        let per_page = self.per_page.unwrap_or(20);
        if !(1..=1_000_000).contains(&page) {
            return Err(AppError::bad_request("page must be 1 or more"));
        }
        if !(1..=100).contains(&per_page) {
            return Err(AppError::bad_request("per_page must be from 1 to 100"));
        }
        Ok(Page { page, per_page })
    }
}

pub(crate) fn page_headers(page: Page, total: i64) -> HeaderMap {
    let mut h = HeaderMap::new();
    let pages = (total + page.per_page - 1) / page.per_page;
    let num =
        |n: i64| HeaderValue::from_str(&n.to_string()).unwrap_or(HeaderValue::from_static("0"));
    h.insert("x-total", num(total));
    h.insert("x-total-pages", num(pages));
    h.insert("x-page", num(page.page));
    h.insert("x-per-page", num(page.per_page));
    h.insert(
        "x-next-page",
        if page.page < pages {
            num(page.page + 1)
        } else {
            HeaderValue::from_static("")
        },
    );
    h.insert(
        "x-prev-page",
        if page.page > 1 {
            num(page.page - 1)
        } else {
            HeaderValue::from_static("")
        },
    );
    h
}

/// A committed artifacts archive as a response body, read from the store one chunk at a time. If a
/// re-upload replaces it while it is being sent, the body fails (the client sees a short
/// response) rather than mixing two archives.
pub(crate) fn artifacts_body(state: &AppState, job: i64, info: ArtifactsInfo) -> Body {
    let store = state.store.clone();
    let chunks = futures_util::stream::try_unfold(0i64, move |seq| {
        let store = store.clone();
        async move {
            if seq >= info.chunks {
                return Ok(None);
            }
            match store.artifact_chunk(job, info.upload_id, seq).await {
                Ok(Some(data)) => Ok(Some((Bytes::from(data), seq + 1))),
                Ok(None) => Err(std::io::Error::other(format!(
                    "the artifacts of job {job} were replaced while being sent"
                ))),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            }
        }
    });
    Body::from_stream(chunks)
}
