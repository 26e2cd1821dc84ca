//! Project tokens: `POST`, `GET /api/v1/projects/{name}/tokens` and
//! `DELETE /api/v1/projects/{name}/tokens/{id}`, for the admin only.
//!
//! A project token acts on its own project ([`crate::http::Caller`]): with scope `write` (the
//! default) it triggers pipelines and reads, cancels, retries and plays the project's pipelines,
//! deliveries, jobs, logs and artifacts, and rolls back its environments; with scope `read` it only
//! reads. The older `read_only: true` on create is taken as `scope: read`; the store keeps the
//! scope as that boolean.
//! Its secret is `gpt_` and 32 random bytes from the OS in hex; it is answered once, when the token is
//! created, and the store keeps only its SHA-256. Revoking deletes it.
//!
//! Also the agents' credentials, for the admin: revoking an agent and rotating the registration
//! token.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use gantry_api::agent::RegistrationToken;
use gantry_api::{CreatedProjectToken, ErrorBody, NewProjectToken, ProjectToken, TokenScope};
use gantry_store::ProjectTokenRecord;

use crate::error::{AppError, AppResult};
use crate::http::{Admin, JsonBody, PROJECT_TOKEN_PREFIX, PathParam, scope_of, token_hash};
use crate::state::AppState;

fn api(t: &ProjectTokenRecord) -> ProjectToken {
    ProjectToken {
        id: t.id,
        name: t.name.clone(),
        created_at: crate::rfc3339(t.created_at),
        expires_at: t.expires_at.map(crate::rfc3339),
        scope: scope_of(t),
        read_only: t.read_only,
    }
}

/// `POST /api/v1/projects/{name}/tokens`: answers the secret, once.
#[utoipa::path(post, path = "/api/v1/projects/{name}/tokens", tag = "projects",
    params(("name" = String, Path, description = "The project's name")), request_body = NewProjectToken,
    responses((status = 201, description = "Created; `token` is the secret, shown this once", body = CreatedProjectToken), (status = 400, description = "Invalid path, query or body, or `scope` and `read_only` that disagree", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token cannot manage tokens", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 413, description = "The body is over the limit", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    _: Admin,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<NewProjectToken>,
) -> AppResult<(StatusCode, Json<CreatedProjectToken>)> {
    let project = state.project(&name).await?;
    let token_name = body.name.trim();
    if token_name.is_empty()
        || token_name.chars().count() > 100
        || token_name.chars().any(char::is_control)
    {
        return Err(AppError::bad_request(
            "name: 1 to 100 characters, no control characters",
        ));
    }
    let scope = body.resolved_scope().map_err(AppError::bad_request)?;
    let now = crate::now_ms();
    let expires_at = match body.expires_at.as_deref() {
        None => None,
        Some(s) => {
            let at = crate::parse_time(s).ok_or_else(|| {
                AppError::bad_request(format!(
                    "expires_at `{s}`: want RFC 3339 (2027-01-31T12:00:00Z) or a date (2027-01-31)"
                ))
            })?;
            if at <= now {
                return Err(AppError::bad_request(format!(
                    "expires_at `{s}` is not in the future"
                )));
            }
            Some(at)
        }
    };
    let secret = format!("{PROJECT_TOKEN_PREFIX}{}", crate::random_token());
    let record = state
        .store
        .create_project_token(&gantry_store::NewProjectToken {
            project_id: project.record.id,
            name: token_name.to_owned(),
            token_hash: token_hash(&secret),
            created_at: now,
            expires_at,
            read_only: scope == TokenScope::Read,
        })
        .await?;
    tracing::info!(project = %name, token = record.id, "project token created");
    let t = api(&record);
    Ok((
        StatusCode::CREATED,
        Json(CreatedProjectToken {
            id: t.id,
            name: t.name,
            token: secret,
            created_at: t.created_at,
            expires_at: t.expires_at,
            scope: t.scope,
            read_only: t.read_only,
        }),
    ))
}

/// `GET /api/v1/projects/{name}/tokens`: without secrets.
#[utoipa::path(get, path = "/api/v1/projects/{name}/tokens", tag = "projects",
    params(("name" = String, Path, description = "The project's name")),
    responses((status = 200, description = "The project's tokens (expired ones too), without their secrets", body = Vec<ProjectToken>), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token cannot manage tokens", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    _: Admin,
    PathParam(name): PathParam<String>,
) -> AppResult<Json<Vec<ProjectToken>>> {
    let project = state.project(&name).await?;
    let tokens = state.store.project_tokens(project.record.id).await?;
    Ok(Json(tokens.iter().map(api).collect()))
}

/// `DELETE /api/v1/projects/{name}/tokens/{id}`: revokes at once.
#[utoipa::path(delete, path = "/api/v1/projects/{name}/tokens/{id}", tag = "projects",
    params(("name" = String, Path, description = "The project's name"), ("id" = i64, Path, description = "The token's id")),
    responses((status = 204, description = "Revoked"), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token cannot manage tokens", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    _: Admin,
    PathParam((name, id)): PathParam<(String, i64)>,
) -> AppResult<StatusCode> {
    let project = state.project(&name).await?;
    if state
        .store
        .delete_project_token(project.record.id, id)
        .await?
    {
        tracing::info!(project = %name, token = id, "project token revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::not_found(format!(
            "project `{name}` has no token {id}"
        )))
    }
}

/// `DELETE /api/v1/agents/{id}`: revokes an agent at once. Its token is gone from the store, which
/// every server reads on every agent request, so its next call gets `401` everywhere; its running
/// jobs fail now as a lost agent's (`runner_system_failure`, retried where `retry:when` allows).
#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents",
    params(("id" = i64, Path, description = "The agent's id")),
    responses((status = 204, description = "Revoked"), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token cannot revoke agents", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn revoke_agent(
    State(state): State<AppState>,
    _: Admin,
    PathParam(id): PathParam<i64>,
) -> AppResult<StatusCode> {
    if !state.store.revoke_agent(id).await? {
        return Err(AppError::not_found(format!("no agent {id}")));
    }
    tracing::info!(agent = id, "agent revoked");
    crate::progress::expire(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/agents/registration-token`: a new registration token, answered once; its SHA-256
/// replaces the previous token in the store, for every server. Agents already registered keep
/// working (they use their own tokens).
#[utoipa::path(post, path = "/api/v1/agents/registration-token", tag = "agents",
    responses((status = 201, description = "The new registration token, shown this once", body = RegistrationToken), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token cannot do this", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn rotate_registration_token(
    State(state): State<AppState>,
    _: Admin,
) -> AppResult<(StatusCode, Json<RegistrationToken>)> {
    let token = crate::random_token();
    state
        .store
        .set_setting(crate::http::REGISTRATION_TOKEN_SETTING, &token_hash(&token))
        .await?;
    tracing::info!("registration token rotated");
    Ok((StatusCode::CREATED, Json(RegistrationToken { token })))
}
