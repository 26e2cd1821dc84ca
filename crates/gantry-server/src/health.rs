//! Health and metrics: `/healthz` (the server runs), `/readyz` (the database answers), `/metrics`
//! (Prometheus, behind `metrics_token` when set).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use gantry_api::ErrorBody;

use crate::error::AppError;
use crate::http::{bearer, same};
use crate::state::AppState;

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus metrics", body = String, content_type = "application/openmetrics-text"), (status = 401, description = "`metrics_token` is set, and the request does not carry it", body = ErrorBody)))]
pub(crate) async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
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
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "The database answers", body = Health),
    (status = 503, description = "The database does not answer", body = ErrorBody)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, AppError> {
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
