//! What every handler uses to read a request: authentication (`Caller`, `Admin`, `AgentAuth`,
//! token hashes), extractors whose rejections are JSON errors (`JsonBody`, `RawBody`, `PathParam`,
//! `QueryParams`), webhook bodies under their limits, and the trace-id and metrics middleware.

use std::time::Instant;

use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use gantry_api::TokenScope;
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
pub(crate) async fn observe(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
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

/// The setting that holds the SHA-256 of the registration token once it was rotated.
pub(crate) const REGISTRATION_TOKEN_SETTING: &str = "registration_token_sha256";

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
    /// Who it is, as records name it: `admin`, or `token ID (NAME)`.
    pub fn who(&self) -> String {
        match self {
            Caller::Admin => "admin".to_string(),
            Caller::Project(t) => format!("token {} ({})", t.id, t.name),
        }
    }

    /// Allows the admin, and project tokens of project `name`.
    pub fn project(&self, name: &str) -> AppResult<()> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Project(t) if t.project_name == name => Ok(()),
            Caller::Project(_) => Err(other_project()),
        }
    }

    /// Refuses a project token of scope `read` (`403`, saying that it cannot `what`): for routes
    /// that change something.
    pub fn can(&self, what: &str) -> AppResult<()> {
        match self {
            Caller::Project(t) if scope_of(t) == TokenScope::Read => Err(AppError::new(
                StatusCode::FORBIDDEN,
                format!("this token's scope is read: it cannot {what}"),
            )),
            _ => Ok(()),
        }
    }

    /// [`Caller::can`] for a change this says nothing more about.
    pub fn writes(&self) -> AppResult<()> {
        self.can("change anything")
    }

    /// The scope of a project token; the admin has none.
    pub fn scope(&self) -> Option<TokenScope> {
        match self {
            Caller::Admin => None,
            Caller::Project(t) => Some(scope_of(t)),
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

    /// [`Caller::pipeline`], then [`Caller::can`] `what`: for routes that change pipeline `id`.
    pub async fn changes_pipeline(&self, state: &AppState, id: i64, what: &str) -> AppResult<()> {
        self.pipeline(state, id).await?;
        self.can(what)
    }

    /// [`Caller::job`], then [`Caller::can`] `what`: for routes that change job `id`.
    pub async fn changes_job(&self, state: &AppState, id: i64, what: &str) -> AppResult<()> {
        self.job(state, id).await?;
        self.can(what)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, AppError> {
        let Some(token) = bearer(&parts.headers) else {
            return Err(AppError::unauthorized("a token is required"));
        };
        Caller::of_token(state, token).await
    }
}

impl Caller {
    /// The caller a token makes, read from the store on every call (revocation is immediate):
    /// for the API's headers, and for the web UI's session cookie.
    pub(crate) async fn of_token(state: &AppState, token: &str) -> AppResult<Caller> {
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

/// A stored project token's scope (the store keeps `read` as `read_only`).
pub(crate) fn scope_of(t: &ProjectTokenRecord) -> TokenScope {
    if t.read_only {
        TokenScope::Read
    } else {
        TokenScope::Write
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
