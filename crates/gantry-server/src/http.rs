//! The router: routes, authentication, the trace-id and metrics middleware, body limits, and JSON
//! errors for everything axum itself would answer in plain text (404, 405, rejections, panics).

use gantry_api::ErrorBody;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use gantry_store::{AgentRecord, ProjectTokenRecord};
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tracing::Instrument as _;

use crate::error::{AppError, AppResult};
use crate::metrics::HttpLabels;
use crate::state::AppState;

/// The trace id of a request.
#[derive(Clone, Debug)]
pub(crate) struct TraceId(pub String);

/// The router with every route and middleware.
pub(crate) fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let max_artifacts = state.config.max_artifacts_bytes;
    let api = Router::new()
        .route(
            "/api/v1/projects",
            post(crate::projects::create).get(crate::projects::list),
        )
        .route("/api/v1/projects/{name}", get(crate::projects::show))
        .route(
            "/api/v1/projects/{name}/tokens",
            post(crate::tokens::create).get(crate::tokens::list),
        )
        .route(
            "/api/v1/projects/{name}/tokens/{id}",
            delete(crate::tokens::revoke),
        )
        .route(
            "/api/v1/projects/{name}/hooks/gitlab",
            post(crate::hooks::gitlab),
        )
        .route(
            "/api/v1/projects/{name}/hooks/github",
            post(crate::hooks::github),
        )
        .route(
            "/api/v1/projects/{name}/hooks/gitea",
            post(crate::hooks::gitea),
        )
        .route(
            "/api/v1/projects/{name}/pipelines",
            post(crate::hooks::trigger_pipeline).get(crate::read::pipelines),
        )
        .route(
            "/api/v1/projects/{name}/deliveries",
            get(crate::read::deliveries),
        )
        .route("/api/v1/pipelines/{id}", get(crate::read::pipeline))
        .route(
            "/api/v1/pipelines/{id}/cancel",
            post(crate::progress::cancel_pipeline),
        )
        .route(
            "/api/v1/pipelines/{id}/approve",
            post(crate::progress::approve_pipeline),
        )
        .route("/api/v1/jobs/{id}", get(crate::read::job))
        .route("/api/v1/jobs/{id}/log", get(crate::read::job_log))
        .route(
            "/api/v1/jobs/{id}/log/stream",
            get(crate::read::job_log_stream),
        )
        .route(
            "/api/v1/jobs/{id}/artifacts",
            get(crate::read::job_artifacts),
        )
        .route("/api/v1/jobs/{id}/retry", post(crate::progress::retry_job))
        .route("/api/v1/jobs/{id}/play", post(crate::progress::play_job))
        .route("/api/v1/agents", get(crate::read::agents))
        .route("/api/v1/agents/{id}", delete(crate::tokens::revoke_agent))
        .route(
            "/api/v1/agents/registration-token",
            post(crate::tokens::rotate_registration_token),
        )
        .route(gantry_api::agent::REGISTER, post(crate::dispatch::register))
        .route("/api/v1/agent/jobs/request", post(crate::dispatch::request))
        .route(
            "/api/v1/agent/jobs/request/stop",
            post(crate::dispatch::stop_polling),
        )
        .route(
            "/api/v1/agent/jobs/{id}/heartbeat",
            post(crate::dispatch::heartbeat),
        )
        .route("/api/v1/agent/jobs/{id}/log", put(crate::dispatch::log))
        .route(
            "/api/v1/agent/jobs/{id}/source",
            get(crate::dispatch::source),
        )
        .route(
            "/api/v1/agent/jobs/{id}/git/info/refs",
            get(crate::githttp::info_refs),
        )
        .route(
            "/api/v1/agent/jobs/{id}/git/git-upload-pack",
            post(crate::githttp::upload_pack),
        )
        .route(
            "/api/v1/agent/jobs/{id}/git/git-receive-pack",
            post(crate::githttp::receive_pack),
        )
        .route(
            "/api/v1/projects/{name}/git/info/refs",
            get(crate::githttp::project_info_refs),
        )
        .route(
            "/api/v1/projects/{name}/git/git-upload-pack",
            post(crate::githttp::project_upload_pack),
        )
        .route(
            "/api/v1/projects/{name}/git/git-receive-pack",
            post(crate::githttp::project_receive_pack),
        )
        .route(
            "/api/v1/agent/jobs/{id}/dependencies/{dep}/artifacts",
            get(crate::dispatch::dependency_artifacts),
        )
        .route(
            "/api/v1/agent/jobs/{id}/artifacts",
            put(crate::dispatch::upload_artifacts).layer(DefaultBodyLimit::max(max_artifacts)),
        )
        .route(
            "/api/v1/agent/jobs/{id}/finish",
            post(crate::dispatch::finish),
        )
        .route("/api/v1/openapi.json", get(crate::openapi::document))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    api.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .with_state(state)
}

async fn not_found() -> AppError {
    AppError::not_found("no such route")
}

async fn method_not_allowed() -> AppError {
    AppError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take this method",
    )
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}

/// The trace id from `traceparent` (its trace-id field) or `X-Trace-ID`, else a new one.
pub(crate) fn trace_id(headers: &HeaderMap) -> String {
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let parts: Vec<&str> = tp.trim().split('-').collect();
        if parts.len() >= 4
            && parts[1].len() == 32
            && parts[1].bytes().all(|b| b.is_ascii_hexdigit())
            && parts[1].bytes().any(|b| b != b'0')
        {
            return parts[1].to_ascii_lowercase();
        }
    }
    if let Some(t) = headers.get("x-trace-id").and_then(|v| v.to_str().ok()) {
        let t = t.trim();
        if !t.is_empty()
            && t.len() <= 64
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return t.to_string();
        }
    }
    crate::random_id()
}

/// Trace id in and out, a span per request, and the request duration histogram.
async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let trace = trace_id(req.headers());
    req.extensions_mut().insert(TraceId(trace.clone()));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().to_string();
    let span = tracing::info_span!("request", trace_id = %trace, method = %method, route = %route);
    let start = Instant::now();
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&trace) {
        resp.headers_mut().insert("x-trace-id", v);
    }
    state
        .metrics
        .http
        .get_or_create(&HttpLabels {
            route,
            method,
            status: resp.status().as_u16(),
        })
        .observe(start.elapsed().as_secs_f64());
    resp
}

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus metrics", body = String, content_type = "application/openmetrics-text"), (status = 401, description = "`metrics_token` is set, and the request does not carry it", body = ErrorBody)))]
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(want) = &state.config.metrics_token {
        if !bearer(&headers).is_some_and(|t| same(t, &want.0)) {
            return AppError::unauthorized("/metrics needs the metrics token").into_response();
        }
    }
    if let Ok(depth) = state.store.queue_depth().await {
        state.metrics.queue_depth.set(depth);
    }
    if let Ok(agents) = state.store.agents().await {
        let since = crate::now_ms()
            - i64::try_from(state.config.lease_timeout.as_millis()).unwrap_or(i64::MAX / 2);
        let online = agents
            .iter()
            .filter(|a| a.last_seen_at.is_some_and(|t| t >= since))
            .count();
        state
            .metrics
            .agents
            .set(i64::try_from(online).unwrap_or(i64::MAX));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// The body of `/healthz` and `/readyz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// `ok`.
    pub status: String,
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The server runs", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "The database answers", body = Health),
    (status = 503, description = "The database does not answer", body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, AppError> {
    state.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "the database does not answer");
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database does not answer",
        )
    })?;
    Ok(Json(Health {
        status: "ok".into(),
    }))
}

/// The token of a request: `Authorization: Bearer TOKEN` or `PRIVATE-TOKEN: TOKEN`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(t.trim());
        }
    }
    headers
        .get("private-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Constant-time string equality that does not leak the length of either side: both are hashed
/// to fixed-size SHA-256 digests, which are compared in constant time (no early return on a
/// length mismatch).
pub(crate) fn same(a: &str, b: &str) -> bool {
    bool::from(token_digest(a).ct_eq(&token_digest(b)))
}

/// The fixed-size digest that [`same`] compares.
fn token_digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// The prefix of project tokens' secrets, so that leaked ones are recognisable (as GitLab's
/// `glpat-`), and so that other tokens never cost a database read.
pub(crate) const PROJECT_TOKEN_PREFIX: &str = "gpt_";

/// Who made an API request: the admin, or a project token, which acts on its own project only.
///
/// Missing, unknown, revoked and expired tokens are refused with `401`. A project token used
/// outside its project is refused with `403` and a JSON error, whether or not the thing it names
/// exists, so that it learns nothing about other projects.
pub(crate) enum Caller {
    /// The admin token: everything.
    Admin,
    /// A project token: its project's pipelines, deliveries, jobs, logs and artifacts.
    Project(ProjectTokenRecord),
}

/// The `403` of a project token used outside its project.
fn other_project() -> AppError {
    AppError::new(
        StatusCode::FORBIDDEN,
        "a project token acts on its own project only",
    )
}

impl Caller {
    /// Allows the admin, and project tokens of project `name`.
    pub fn project(&self, name: &str) -> AppResult<()> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Project(t) if t.project_name == name => Ok(()),
            Caller::Project(_) => Err(other_project()),
        }
    }

    /// Refuses a read-only project token (`403`): for routes that change something.
    pub fn writes(&self) -> AppResult<()> {
        match self {
            Caller::Project(t) if t.read_only => Err(AppError::new(
                StatusCode::FORBIDDEN,
                "a read-only project token cannot change anything",
            )),
            _ => Ok(()),
        }
    }

    /// Allows the admin, and project tokens of pipeline `id`'s project (one primary-key read).
    pub async fn pipeline(&self, state: &AppState, id: i64) -> AppResult<()> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Project(t) => {
                if state.store.pipeline_project(id).await? == Some(t.project_id) {
                    Ok(())
                } else {
                    Err(other_project())
                }
            }
        }
    }

    /// Allows the admin, and project tokens of job `id`'s project (one primary-key read).
    pub async fn job(&self, state: &AppState, id: i64) -> AppResult<()> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Project(t) => {
                if state.store.job_project(id).await? == Some(t.project_id) {
                    Ok(())
                } else {
                    Err(other_project())
                }
            }
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, AppError> {
        let Some(token) = bearer(&parts.headers) else {
            return Err(AppError::unauthorized("a token is required"));
        };
        if same(token, &state.config.admin_token.0) {
            return Ok(Caller::Admin);
        }
        if !token.starts_with(PROJECT_TOKEN_PREFIX) {
            return Err(AppError::unauthorized("invalid token"));
        }
        // Looked up by its hash: the comparison of secrets happens in the index, on hashes, so
        // it tells an attacker nothing about the secret's bytes.
        match state
            .store
            .project_token_by_hash(&token_hash(token))
            .await?
        {
            None => Err(AppError::unauthorized("invalid token")),
            Some(t) if t.expires_at.is_some_and(|at| at <= crate::now_ms()) => {
                Err(AppError::unauthorized("the token has expired"))
            }
            Some(t) => Ok(Caller::Project(t)),
        }
    }
}

/// A request made with the admin token. A valid project token gets `403`.
pub(crate) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin, AppError> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Admin => Ok(Admin),
            Caller::Project(_) => Err(AppError::new(
                StatusCode::FORBIDDEN,
                "this needs the admin token; a project token cannot do it",
            )),
        }
    }
}

/// SHA-256 of a token, hex: how agent tokens are stored.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A request made with an agent's token (its row read from the store on every request).
pub(crate) struct AgentAuth(pub AgentRecord);

impl FromRequestParts<AppState> for AgentAuth {
    type Rejection = AppError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<AgentAuth, AppError> {
        let Some(token) = bearer(&parts.headers) else {
            return Err(AppError::unauthorized("an agent token is required"));
        };
        // Looked up on every request, nothing cached: a revoked agent (its row deleted) gets
        // `401` at once on every server sharing the store.
        let Some(agent) = state.store.agent_by_token(&token_hash(token)).await? else {
            return Err(AppError::unauthorized("invalid agent token"));
        };
        Ok(AgentAuth(agent))
    }
}

/// A JSON body: `400` with a JSON error when it is not valid JSON of the right shape, `413` when it is
/// over the limit. (serde_json stops at 128 levels of nesting, with an error, never a stack overflow.)
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = AppError;
    async fn from_request(req: Request, state: &AppState) -> Result<JsonBody<T>, AppError> {
        let bytes = Bytes::from_request(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| AppError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// The raw body, with JSON errors (`413` over the limit).
pub(crate) struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = AppError;
    async fn from_request(req: Request, state: &AppState) -> Result<RawBody, AppError> {
        Ok(RawBody(Bytes::from_request(req, state).await?))
    }
}

/// Reads a webhook's body (issue 16, finding 2), after the handler has checked everything that
/// needs no body: `413` at once when `Content-Length` is over `limit`, or as soon as the body
/// grows over it; `503` when the bodies being read hold the whole `webhook_body_budget_bytes` for
/// longer than `webhook_body_timeout`; `408` when the body takes longer than that to arrive. The
/// budget is a semaphore of bytes: a body holds its declared length (or `limit`, when chunked)
/// until the returned permit is dropped, so held connections cost bounded memory.
pub(crate) async fn read_webhook_body<'a>(
    state: &'a AppState,
    limit: usize,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> AppResult<(Bytes, tokio::sync::SemaphorePermit<'a>)> {
    use http_body_util::BodyExt as _;
    let too_large = || {
        AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let wanted = declared
        .map_or(limit, |n| usize::try_from(n).unwrap_or(limit))
        .clamp(1, state.config.webhook_body_budget_bytes.max(1));
    let wait = state.config.webhook_body_timeout;
    let permit = match tokio::time::timeout(
        wait,
        state
            .hook_bodies
            .acquire_many(u32::try_from(wanted).unwrap_or(u32::MAX)),
    )
    .await
    {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return Err(AppError::internal("the webhook body budget is closed")),
        Err(_) => {
            return Err(AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many webhook bodies are being read: retry later",
            ));
        }
    };
    match tokio::time::timeout(wait, http_body_util::Limited::new(body, limit).collect()).await {
        Ok(Ok(c)) => Ok((c.to_bytes(), permit)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(AppError::bad_request(format!("cannot read the body: {e}"))),
        Err(_) => Err(AppError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time",
        )),
    }
}

/// A path parameter with a JSON `400` when it does not parse.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub(crate) struct PathParam<T>(pub T);

/// Query parameters with a JSON `400` when they do not parse.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub(crate) struct QueryParams<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_sees_fixed_size_digests_whatever_the_lengths() {
        // The bytes compared are SHA-256 digests, so neither the comparison nor an early
        // return can tell how long the expected token is.
        for (a, b) in [
            ("short", "a much longer token"),
            ("", "x"),
            ("same", "same"),
        ] {
            let (x, y) = (token_digest(a), token_digest(b));
            assert_eq!(x.len(), 32);
            assert_eq!(y.len(), 32);
        }
        assert!(same("gpt_secret", "gpt_secret"));
        assert!(!same("gpt_secret", "gpt_secreT"));
        assert!(!same("gpt_secret", "gpt_secret_and_more"));
        assert!(!same("", "x"));
        assert!(same("", ""));
    }

    #[test]
    fn trace_ids() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(trace_id(&h), "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut h = HeaderMap::new();
        h.insert("x-trace-id", HeaderValue::from_static("abc-123"));
        assert_eq!(trace_id(&h), "abc-123");
        let mut h = HeaderMap::new();
        h.insert(
            "x-trace-id",
            HeaderValue::from_static("bad value with spaces"),
        );
        let t = trace_id(&h);
        assert_eq!(t.len(), 32);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn tokens_from_both_headers() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert("private-token", HeaderValue::from_static("xyz"));
        assert_eq!(bearer(&h), Some("xyz"));
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
