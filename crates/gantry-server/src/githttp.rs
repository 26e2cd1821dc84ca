//! Read-only git over HTTP for agents: the project's bare mirror served with git's smart HTTP
//! protocol, by running `git http-backend` as a CGI.
//!
//! The repository of job `id` is `/api/v1/agent/jobs/{id}/git`; git asks for
//! `.../info/refs?service=git-upload-pack` and then posts to `.../git-upload-pack`. Only those two:
//! `git-receive-pack` is refused (`403`), and `http.receivepack` is off in the backend too. The
//! same rule as for the source archive decides who may read: the agent that holds job `id` under a
//! live lease (`401` without a valid agent token, `403` when the agent does not hold the job, `404`
//! when there is no such job). The backend may hand out any commit of the mirror by its SHA
//! (`uploadpack.allowAnySHA1InWant`), because the mirror holds commits fetched by SHA without a ref.
//!
//! Jobs read the same mirror at `/api/v1/projects/{name}/git` with their `CI_JOB_TOKEN` (see
//! [`crate::jobtoken`]): it is the `origin` of the job's checkout, so `git fetch origin` works in
//! a job while it runs, and only for its own project.
//!
//! The request body streams into the CGI's standard input and its standard output streams back:
//! a pack never sits in memory.

use std::process::Stdio;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use futures_util::StreamExt as _;
use gantry_api::{ErrorBody, JobStatus};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

use crate::error::{AppError, AppResult};
use crate::http::{AgentAuth, PathParam};
use crate::state::AppState;

/// The most header bytes the CGI may print before its body.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The pipeline of job `id`, when `agent` holds the job under a live lease.
async fn held(
    state: &AppState,
    agent: &gantry_store::AgentRecord,
    id: i64,
) -> AppResult<gantry_store::PipelineRecord> {
    let job = match state.store.job(id).await? {
        Some(j) if j.agent_id == Some(agent.id) && j.status == JobStatus::Running => j,
        Some(_) => {
            return Err(AppError::new(
                StatusCode::FORBIDDEN,
                "this agent does not hold the job",
            ));
        }
        None => return Err(AppError::not_found(format!("no job {id}"))),
    };
    state
        .store
        .pipeline_head(job.pipeline_id)
        .await?
        .ok_or_else(|| AppError::not_found("no such pipeline"))
}

/// `GET /api/v1/agent/jobs/{id}/git/info/refs?service=git-upload-pack`.
#[utoipa::path(get, path = "/api/v1/agent/jobs/{id}/git/info/refs", tag = "agent protocol",
    params(("id" = i64, Path, description = "A job the agent holds"), ("service" = String, Query, description = "`git-upload-pack` (anything else is refused)")),
    responses((status = 200, description = "git's ref advertisement (smart HTTP)", body = Vec<u8>, content_type = "application/x-git-upload-pack-advertisement"),
        (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "Not a fetch, or the agent does not hold the job", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn info_refs(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    PathParam(id): PathParam<i64>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> AppResult<Response> {
    let query = fetch_only(query)?;
    let p = held(&state, &agent, id).await?;
    advertise(&state, &p, &query, &headers).await
}

/// The query of a ref advertisement, when it asks for a fetch (`git-upload-pack`); `403` else.
fn fetch_only(query: Option<String>) -> AppResult<String> {
    let query = query.unwrap_or_default();
    if query == "service=git-upload-pack" {
        Ok(query)
    } else {
        Err(AppError::new(
            StatusCode::FORBIDDEN,
            "only git-upload-pack (fetch and clone) is served",
        ))
    }
}

/// The ref advertisement of pipeline `p`'s mirror. The fetch starts here: make sure the mirror has
/// the commit (another server may have made the pipeline).
async fn advertise(
    state: &AppState,
    p: &gantry_store::PipelineRecord,
    query: &str,
    headers: &HeaderMap,
) -> AppResult<Response> {
    crate::mirror::with_commit(state, p, |_, _| Ok(())).await?;
    cgi(
        state,
        p.project_id,
        "info/refs",
        "GET",
        query,
        headers,
        None,
    )
    .await
}

/// `POST /api/v1/agent/jobs/{id}/git/git-upload-pack`.
#[utoipa::path(post, path = "/api/v1/agent/jobs/{id}/git/git-upload-pack", tag = "agent protocol",
    params(("id" = i64, Path, description = "A job the agent holds")),
    request_body(content = Vec<u8>, content_type = "application/x-git-upload-pack-request", description = "git's upload-pack request"),
    responses((status = 200, description = "git's upload-pack answer (a pack)", body = Vec<u8>, content_type = "application/x-git-upload-pack-result"),
        (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "The agent does not hold the job", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn upload_pack(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    PathParam(id): PathParam<i64>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Response> {
    let p = held(&state, &agent, id).await?;
    upload(&state, &p, &headers, body).await
}

/// A fetch's pack from pipeline `p`'s mirror.
async fn upload(
    state: &AppState,
    p: &gantry_store::PipelineRecord,
    headers: &HeaderMap,
    body: Body,
) -> AppResult<Response> {
    cgi(
        state,
        p.project_id,
        "git-upload-pack",
        "POST",
        "",
        headers,
        Some(body),
    )
    .await
}

/// `GET /api/v1/projects/{name}/git/info/refs?service=git-upload-pack`, with a job token.
#[utoipa::path(get, path = "/api/v1/projects/{name}/git/info/refs", tag = "jobs",
    params(("name" = String, Path, description = "The project of the job whose token is given"), ("service" = String, Query, description = "`git-upload-pack` (anything else is refused)")),
    responses((status = 200, description = "git's ref advertisement (smart HTTP)", body = Vec<u8>, content_type = "application/x-git-upload-pack-advertisement"),
        (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "No job token, or not one of a running job (with a Basic challenge)", body = ErrorBody), (status = 403, description = "Not a fetch, or a job of another project", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("job_token" = [])))]
pub(crate) async fn project_info_refs(
    State(state): State<AppState>,
    PathParam(name): PathParam<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> AppResult<Response> {
    let query = fetch_only(query)?;
    let p = match crate::jobtoken::job_of(&state, &headers, &name).await {
        Ok((_, p)) => p,
        Err(answer) => return Ok(answer),
    };
    advertise(&state, &p, &query, &headers).await
}

/// `POST /api/v1/projects/{name}/git/git-upload-pack`, with a job token.
#[utoipa::path(post, path = "/api/v1/projects/{name}/git/git-upload-pack", tag = "jobs",
    params(("name" = String, Path, description = "The project of the job whose token is given")),
    request_body(content = Vec<u8>, content_type = "application/x-git-upload-pack-request", description = "git's upload-pack request"),
    responses((status = 200, description = "git's upload-pack answer (a pack)", body = Vec<u8>, content_type = "application/x-git-upload-pack-result"),
        (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "No job token, or not one of a running job (with a Basic challenge)", body = ErrorBody), (status = 403, description = "A job of another project", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("job_token" = [])))]
pub(crate) async fn project_upload_pack(
    State(state): State<AppState>,
    PathParam(name): PathParam<String>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Response> {
    let p = match crate::jobtoken::job_of(&state, &headers, &name).await {
        Ok((_, p)) => p,
        Err(answer) => return Ok(answer),
    };
    upload(&state, &p, &headers, body).await
}

/// `POST /api/v1/agent/jobs/{id}/git/git-receive-pack`: refused, the mirror is read-only.
#[utoipa::path(post, path = "/api/v1/agent/jobs/{id}/git/git-receive-pack", tag = "agent protocol",
    params(("id" = i64, Path, description = "A job")),
    responses((status = 403, description = "Always: the repository is read-only", body = ErrorBody)))]
pub(crate) async fn receive_pack() -> AppError {
    AppError::new(StatusCode::FORBIDDEN, "the repository is read-only")
}

/// `POST /api/v1/projects/{name}/git/git-receive-pack`: refused, the mirror is read-only.
#[utoipa::path(post, path = "/api/v1/projects/{name}/git/git-receive-pack", tag = "jobs",
    params(("name" = String, Path, description = "A project")),
    responses((status = 403, description = "Always: the repository is read-only", body = ErrorBody)))]
pub(crate) async fn project_receive_pack() -> AppError {
    receive_pack().await
}

/// Runs `git http-backend` for `rest` of project `project`'s mirror and streams its answer.
async fn cgi(
    state: &AppState,
    project: i64,
    rest: &str,
    method: &str,
    query: &str,
    headers: &HeaderMap,
    body: Option<Body>,
) -> AppResult<Response> {
    let root = state.config.data_dir.join("mirrors");
    let mut cmd = tokio::process::Command::new("git");
    cmd.args([
        "-c",
        "uploadpack.allowAnySHA1InWant=true",
        "-c",
        "uploadpack.allowReachableSHA1InWant=true",
        "-c",
        "http.receivepack=false",
        "-c",
        "http.getanyfile=false",
        "http-backend",
    ])
    // A clean environment: no user or system configuration, nothing of the server's own.
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("GIT_CONFIG_NOSYSTEM", "1")
    .env("GIT_PROJECT_ROOT", &root)
    .env("GIT_HTTP_EXPORT_ALL", "1")
    .env("PATH_INFO", format!("/{project}.git/{rest}"))
    .env("REQUEST_METHOD", method)
    .env("QUERY_STRING", query);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    for (cgi_name, name) in [
        ("CONTENT_TYPE", "content-type"),
        ("CONTENT_LENGTH", "content-length"),
        ("HTTP_CONTENT_ENCODING", "content-encoding"),
        ("GIT_PROTOCOL", "git-protocol"),
    ] {
        if let Some(v) = header(name) {
            cmd.env(cgi_name, v);
        }
    }
    cmd.stdin(if body.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(false);
    let mut child = cmd
        .spawn()
        .map_err(|e| AppError::internal(format!("cannot run git http-backend: {e}")))?;
    if let (Some(body), Some(mut stdin)) = (body, child.stdin.take()) {
        tokio::spawn(async move {
            let mut stream = body.into_data_stream();
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else { break };
                if stdin.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            // Dropping stdin closes it: the backend sees the end of the request.
        });
    }
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| AppError::internal("no stdout"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| AppError::internal("no stderr"))?;
    // Reap the backend, and say what it printed on standard error when it failed.
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if kept.len() < 4096 {
                kept.extend_from_slice(&buf[..n.min(4096 - kept.len())]);
            }
        }
        match child.wait().await {
            Ok(s) if s.success() => {}
            Ok(s) => tracing::warn!(
                status = %s,
                stderr = %String::from_utf8_lossy(&kept).trim(),
                "git http-backend failed"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot wait for git http-backend"),
        }
    });
    let mut out = BufReader::new(stdout);
    let mut status = StatusCode::OK;
    let mut response_headers = HeaderMap::new();
    let mut seen = 0;
    loop {
        let mut line = String::new();
        let n = out
            .read_line(&mut line)
            .await
            .map_err(|e| AppError::internal(format!("git http-backend: {e}")))?;
        seen += n;
        if n == 0 || seen > MAX_HEADER_BYTES {
            return Err(AppError::internal(
                "git http-backend ended without a complete answer",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or_default();
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
        } else if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response_headers.append(n, v);
        }
    }
    if !response_headers.contains_key(header::CONTENT_TYPE) {
        response_headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    let mut resp = Body::from_stream(tokio_util::io::ReaderStream::new(out)).into_response();
    *resp.status_mut() = status;
    *resp.headers_mut() = response_headers;
    Ok(resp)
}
