//! The read API: pipelines, jobs, logs (plain, ranged, and live over Server-Sent Events), artifacts,
//! agents and deliveries. Reads of a project's things take the admin token or that project's token
//! ([`Caller`]); the agent list takes the admin token.

use gantry_api::ErrorBody;
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use gantry_api::reports::{CoverageTrendPoint, ReportsSummary};
use gantry_api::{Agent, AgentJob, Delivery, Job, JobStatus, Pipeline, PipelineStatus};
use gantry_store::{CoveragePoint, PipelineFilter};
use serde::{Deserialize, Serialize};

use crate::error::{AppError, AppResult};
use crate::http::{Admin, Caller, PathParam, QueryParams};
use crate::state::AppState;
use crate::views::{
    PageQuery, artifacts_body, delivery_api, job_api, load_job, load_pipeline, page_headers,
    pipeline_api,
};

/// The filters of the pipeline list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PipelineQuery {
    /// Only this branch or tag.
    #[serde(rename = "ref")]
    #[param(rename = "ref")]
    pub git_ref: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// The page, from 1.
    pub page: Option<i64>,
    /// Rows per page: 20 by default, at most 100.
    pub per_page: Option<i64>,
}

/// `GET /api/v1/projects/{name}/pipelines`.
#[utoipa::path(get, path = "/api/v1/projects/{name}/pipelines", tag = "pipelines",
    params(("name" = String, Path, description = "The project's name"), PipelineQuery),
    responses((status = 200, description = "A page of pipelines, newest first (without jobs)", body = Vec<Pipeline>,
        headers(("X-Total" = i64), ("X-Page" = i64), ("X-Per-Page" = i64), ("X-Next-Page" = String))), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn pipelines(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam<String>,
    QueryParams(q): QueryParams<PipelineQuery>,
) -> AppResult<Response> {
    caller.project(&name)?;
    let page = PageQuery {
        page: q.page,
        per_page: q.per_page,
    }
    .page()?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(
            PipelineStatus::parse(s)
                .ok_or_else(|| AppError::bad_request(format!("unknown status `{s}`")))?,
        ),
    };
    let project = state.project(&name).await?;
    let paged = state
        .store
        .pipelines(
            project.record.id,
            &PipelineFilter {
                git_ref: q.git_ref.filter(|r| !r.is_empty()),
                status,
            },
            page,
        )
        .await?;
    let items: Vec<Pipeline> = paged.items.iter().map(pipeline_api).collect();
    Ok((page_headers(page, paged.total), Json(items)).into_response())
}

/// `GET /api/v1/projects/{name}/deliveries`.
#[utoipa::path(get, path = "/api/v1/projects/{name}/deliveries", tag = "webhooks",
    params(("name" = String, Path, description = "The project's name"), PageQuery),
    responses((status = 200, description = "A page of deliveries, newest first", body = Vec<Delivery>,
        headers(("X-Total" = i64), ("X-Page" = i64), ("X-Per-Page" = i64), ("X-Next-Page" = String))), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> AppResult<Response> {
    caller.project(&name)?;
    let page = q.page()?;
    let project = state.project(&name).await?;
    let paged = state.store.deliveries(project.record.id, page).await?;
    let items: Vec<Delivery> = paged.items.iter().map(delivery_api).collect();
    Ok((page_headers(page, paged.total), Json(items)).into_response())
}

/// `GET /api/v1/pipelines/{id}`.
#[utoipa::path(get, path = "/api/v1/pipelines/{id}", tag = "pipelines", params(("id" = i64, Path, description = "The id")),
    responses((status = 200, description = "The pipeline with the latest attempt of each job", body = Pipeline), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn pipeline(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> AppResult<Json<Pipeline>> {
    caller.pipeline(&state, id).await?;
    load_pipeline(&state, id).await.map(Json)
}

/// `GET /api/v1/jobs/{id}`.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = i64, Path, description = "The id")),
    responses((status = 200, description = "The job", body = Job), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn job(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> AppResult<Json<Job>> {
    caller.job(&state, id).await?;
    Ok(Json(job_api(&load_job(&state, id).await?)))
}

/// `GET /api/v1/pipelines/{id}/reports`.
#[utoipa::path(get, path = "/api/v1/pipelines/{id}/reports", tag = "reports", params(("id" = i64, Path, description = "The id")),
    responses((status = 200, description = "The reports of the pipeline's jobs (the latest attempt of each), merged: tests with the failed cases, coverage overall, per job and per file, SARIF results by level, vulnerabilities and Code Quality issues by severity, and the gate jobs' verdicts", body = ReportsSummary), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn pipeline_reports(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> AppResult<Json<ReportsSummary>> {
    caller.pipeline(&state, id).await?;
    if state.store.pipeline_project(id).await?.is_none() {
        return Err(AppError::not_found(format!("no pipeline {id}")));
    }
    let records = state.store.pipeline_reports(id).await?;
    let view = tokio::task::spawn_blocking(move || crate::reports::view(&records))
        .await
        .map_err(AppError::internal)??;
    Ok(Json(view))
}

/// `GET /api/v1/jobs/{id}/reports`.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/reports", tag = "reports", params(("id" = i64, Path, description = "The id")),
    responses((status = 200, description = "The job's reports, as a pipeline's show them", body = ReportsSummary), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn job_reports(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> AppResult<Json<ReportsSummary>> {
    caller.job(&state, id).await?;
    let Some(record) = state.store.job_reports(id).await? else {
        return Err(AppError::not_found(format!("no job {id}")));
    };
    let view = tokio::task::spawn_blocking(move || crate::reports::view(&[record]))
        .await
        .map_err(AppError::internal)??;
    Ok(Json(view))
}

/// The query of the coverage trend.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CoverageQuery {
    /// The branch or tag.
    #[serde(rename = "ref")]
    #[param(rename = "ref")]
    pub git_ref: String,
    /// The page, from 1.
    pub page: Option<i64>,
    /// Rows per page: 20 by default, at most 100.
    pub per_page: Option<i64>,
}

/// `GET /api/v1/projects/{name}/coverage?ref=REF`.
#[utoipa::path(get, path = "/api/v1/projects/{name}/coverage", tag = "reports",
    params(("name" = String, Path, description = "The project's name"), CoverageQuery),
    responses((status = 200, description = "The coverage of the ref's pipelines that have one, newest first", body = Vec<CoverageTrendPoint>,
        headers(("X-Total" = i64), ("X-Page" = i64), ("X-Per-Page" = i64), ("X-Next-Page" = String))), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn coverage_trend(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam<String>,
    QueryParams(q): QueryParams<CoverageQuery>,
) -> AppResult<Response> {
    caller.project(&name)?;
    let page = PageQuery {
        page: q.page,
        per_page: q.per_page,
    }
    .page()?;
    let project = state.project(&name).await?;
    let paged = state
        .store
        .coverage_trend(project.record.id, &q.git_ref, page)
        .await?;
    let items: Vec<CoverageTrendPoint> = paged.items.into_iter().map(trend_point).collect();
    Ok((page_headers(page, paged.total), Json(items)).into_response())
}

/// A pipeline's coverage as the API shows it: two decimals.
pub(crate) fn trend_point(c: CoveragePoint) -> CoverageTrendPoint {
    CoverageTrendPoint {
        pipeline_id: c.pipeline_id,
        sha: c.sha,
        created_at: crate::rfc3339(c.created_at),
        coverage: (c.coverage * 100.0).round() / 100.0,
    }
}

/// Parses `bytes=A-B`, `bytes=A-` or `bytes=-N` against a log of `size` bytes: `start..end`.
/// `Err(())` when it cannot be satisfied.
pub(crate) fn parse_range(value: &str, size: i64) -> Result<Option<(i64, i64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Several ranges: answer the whole log, as servers may.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: i64 = b.parse().map_err(|_| ())?;
        if n <= 0 {
            return Err(());
        }
        ((size - n).max(0), size)
    } else {
        let start: i64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            size
        } else {
            let last: i64 = b.parse().map_err(|_| ())?;
            if last < start {
                return Err(());
            }
            (last + 1).min(size)
        };
        (start, end)
    };
    if range.0 >= size {
        return Err(());
    }
    Ok(Some(range))
}

const CHUNK: i64 = 256 * 1024;

/// The log's bytes `start..end`, read from the store a chunk at a time.
fn log_body(state: AppState, id: i64, start: i64, end: i64) -> Body {
    let stream = futures_util::stream::unfold(start, move |at| {
        let state = state.clone();
        async move {
            if at >= end {
                return None;
            }
            let upto = (at + CHUNK).min(end);
            match state.store.read_log(id, at, upto).await {
                Ok(bytes) if bytes.is_empty() => None,
                Ok(bytes) => {
                    let next = at + i64::try_from(bytes.len()).unwrap_or(CHUNK);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(bytes)), next))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), end)),
            }
        }
    });
    Body::from_stream(stream)
}

/// `GET /api/v1/jobs/{id}/log`: the log as plain text; `Range: bytes=…` answers `206`.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/log", tag = "jobs",
    params(("id" = i64, Path, description = "The id"), ("Range" = Option<String>, Header, description = "bytes=START-END")),
    responses((status = 200, description = "The log", body = String, content_type = "text/plain"),
        (status = 206, description = "Part of the log", body = String, content_type = "text/plain"),
        (status = 416, description = "The range is past the end", body = ErrorBody), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn job_log(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
    headers: HeaderMap,
) -> AppResult<Response> {
    caller.job(&state, id).await?;
    let job = load_job(&state, id).await?;
    let size = job.log_size;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(v) => match parse_range(v, size) {
            Ok(r) => r,
            Err(()) => {
                let mut resp = AppError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    format!("the log holds {size} bytes"),
                )
                .into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(resp);
            }
        },
        None => None,
    };
    let (status, start, end) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e),
        None => (StatusCode::OK, 0, size),
    };
    let mut resp = Response::new(log_body(state, id, start, end));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&(end - start).to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

/// One Server-Sent Event of the live log stream.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SseMessage {
    /// `log` or `end`.
    pub event: Option<String>,
    /// JSON: a `LogChunk` for `log`, a `LogEnd` for `end`.
    pub data: Option<String>,
    /// For `log`: the byte offset to resume from (`Last-Event-ID`).
    pub id: Option<String>,
    /// Reconnection time.
    pub retry: Option<i64>,
}

/// A `log` event of the live stream.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct LogChunk {
    /// Where the text starts in the log, in bytes.
    pub offset: i64,
    /// The text (invalid UTF-8 replaced).
    pub text: String,
}

/// The `end` event of the live stream.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct LogEnd {
    /// The job's final status.
    pub status: JobStatus,
    /// The log's size in bytes.
    pub size: i64,
}

/// The longest prefix of `bytes` that does not end inside a UTF-8 sequence.
fn utf8_prefix(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() && bytes.len() - e.valid_up_to() < 4 => e.valid_up_to(),
        Err(_) => bytes.len(),
    }
}

enum Live {
    Reading(i64),
    Done,
}

/// `GET /api/v1/jobs/{id}/log/stream`: Server-Sent Events. `log` events (`{offset, text}`) replay the
/// log from the start (or from `Last-Event-ID`, a byte offset), then follow it live; one `end` event
/// (`{status, size}`) when the job is over. Memory stays bounded: one chunk at a time.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/log/stream", tag = "jobs",
    params(("id" = i64, Path, description = "The id"), ("Last-Event-ID" = Option<String>, Header, description = "Resume from this byte offset")),
    responses((status = 200, description = "Server-Sent Events: `log` events (`data` is a LogChunk), then one `end` event (`data` is a LogEnd)", body = SseMessage, content_type = "text/event-stream"),
        (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn job_log_stream(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
    headers: HeaderMap,
) -> AppResult<Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>>> {
    caller.job(&state, id).await?;
    load_job(&state, id).await?;
    let from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0)
        .max(0);
    let stream = futures_util::stream::unfold(Live::Reading(from), move |live| {
        let state = state.clone();
        async move {
            let Live::Reading(at) = live else {
                return None;
            };
            loop {
                // Listen first, so that a chunk appended while reading is not missed.
                let notified = state.logs.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let Ok(Some(job)) = state.store.job(id).await else {
                    return None;
                };
                if at < job.log_size {
                    let bytes = state
                        .store
                        .read_log(id, at, (at + CHUNK).min(job.log_size))
                        .await
                        .unwrap_or_default();
                    let keep = utf8_prefix(&bytes);
                    let keep = if keep == 0 { bytes.len() } else { keep };
                    if keep > 0 {
                        let text = String::from_utf8_lossy(&bytes[..keep]).into_owned();
                        let next = at + i64::try_from(keep).unwrap_or(0);
                        let ev = SseEvent::default()
                            .event("log")
                            .id(next.to_string())
                            .json_data(LogChunk { offset: at, text })
                            .unwrap_or_default();
                        return Some((Ok(ev), Live::Reading(next)));
                    }
                }
                let over = job.status.is_final()
                    || (job.status == JobStatus::Manual && job.started_at.is_none());
                if over && at >= job.log_size {
                    let ev = SseEvent::default()
                        .event("end")
                        .json_data(LogEnd {
                            status: job.status,
                            size: job.log_size,
                        })
                        .unwrap_or_default();
                    return Some((Ok(ev), Live::Done));
                }
                if state.stopping() {
                    return None;
                }
                tokio::select! {
                    () = &mut notified => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `GET /api/v1/jobs/{id}/artifacts`: the job's artifacts, a tar archive.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/artifacts", tag = "jobs", params(("id" = i64, Path, description = "The id")),
    responses((status = 200, description = "The artifacts, a tar archive", body = Vec<u8>, content_type = "application/x-tar"), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn job_artifacts(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> AppResult<Response> {
    caller.job(&state, id).await?;
    load_job(&state, id).await?;
    match state.store.artifacts_info(id).await? {
        Some(info) => Ok((
            [
                (header::CONTENT_TYPE, "application/x-tar".to_string()),
                (header::CONTENT_LENGTH, info.size.to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"artifacts-{id}.tar\""),
                ),
            ],
            artifacts_body(&state, id, info),
        )
            .into_response()),
        None => Err(AppError::not_found(format!("job {id} has no artifacts"))),
    }
}

/// `GET /api/v1/agents`.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
    responses((status = 200, description = "Every agent", body = Vec<Agent>), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token: this needs the admin token", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn agents(State(state): State<AppState>, _: Admin) -> AppResult<Json<Vec<Agent>>> {
    let since = crate::now_ms()
        - i64::try_from(state.config.lease_timeout.as_millis()).unwrap_or(i64::MAX / 2);
    // Every agent's running jobs in one query, not one per agent.
    let mut jobs: HashMap<i64, Vec<AgentJob>> = HashMap::new();
    for j in state.store.agent_jobs().await? {
        jobs.entry(j.agent_id).or_default().push(AgentJob {
            id: j.job_id,
            name: j.name,
            pipeline_id: j.pipeline_id,
            project: j.project_name,
            claimed_at: crate::rfc3339(j.claimed_at),
        });
    }
    let list = state
        .store
        .agents()
        .await?
        .into_iter()
        .map(|a| Agent {
            id: a.id,
            online: a.last_seen_at.is_some_and(|t| t >= since),
            protocol: a.protocol.and_then(|p| u32::try_from(p).ok()),
            jobs: jobs.remove(&a.id).unwrap_or_default(),
            name: a.name,
            tags: a.tags,
            run_untagged: a.run_untagged,
            executor: a.executor,
            concurrency: u32::try_from(a.concurrency).unwrap_or(1),
            version: a.version,
            registered_at: crate::rfc3339(a.registered_at),
            last_seen_at: a.last_seen_at.map(crate::rfc3339),
        })
        .collect();
    Ok(Json(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 10))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 100))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 100))));
        assert_eq!(parse_range("bytes=95-200", 100), Ok(Some((95, 100))));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=5-1", 100), Err(()));
        assert_eq!(parse_range("bytes=x-", 100), Err(()));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
    }

    #[test]
    fn utf8_boundaries() {
        let s = "héllo".as_bytes();
        assert_eq!(
            utf8_prefix(&s[..2]),
            1,
            "the é is cut: keep it for the next chunk"
        );
        assert_eq!(utf8_prefix(s), s.len());
    }
}
