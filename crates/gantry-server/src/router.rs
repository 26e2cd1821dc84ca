//! The router: every route with its handler (the API's, and the web UI's pages in `ui`), body limits, the middleware, and JSON errors for
//! everything axum itself would answer in plain text (404, 405, panics). The only module, with
//! `openapi`, that names handlers: handlers sit below it, and what they share below them.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{delete, get, post, put};

use crate::error::AppError;
use crate::state::AppState;

/// The router with every route and middleware.
pub(crate) fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let max_artifacts = state.config.max_artifacts_bytes;
    let max_finish = max_body.max(crate::reports::FINISH_MIN_LIMIT);
    let api = Router::new()
        .route(
            "/api/v1/projects",
            post(crate::admin::create).get(crate::admin::list),
        )
        .route("/api/v1/projects/{name}", get(crate::admin::show))
        .route(
            "/api/v1/projects/{name}/variables",
            post(crate::admin::set_variable),
        )
        .route(
            "/api/v1/projects/{name}/variables/{key}",
            delete(crate::admin::delete_variable),
        )
        .route(
            "/api/v1/projects/{name}/schedules",
            post(crate::admin::add_schedule),
        )
        .route(
            "/api/v1/projects/{name}/schedules/{n}",
            delete(crate::admin::delete_schedule),
        )
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
        .route(
            "/api/v1/projects/{name}/coverage",
            get(crate::read::coverage_trend),
        )
        .route(
            "/api/v1/projects/{name}/environments",
            get(crate::deployments::environments),
        )
        .route(
            "/api/v1/projects/{name}/environments/{env}/deployments",
            get(crate::deployments::deployments),
        )
        .route(
            "/api/v1/projects/{name}/environments/{env}/rollback",
            post(crate::rollback::rollback),
        )
        .route("/api/v1/pipelines/{id}", get(crate::read::pipeline))
        .route(
            "/api/v1/pipelines/{id}/reports",
            get(crate::read::pipeline_reports),
        )
        .route(
            "/api/v1/pipelines/{id}/cancel",
            post(crate::actions::cancel_pipeline),
        )
        .route(
            "/api/v1/pipelines/{id}/approve",
            post(crate::actions::approve_pipeline),
        )
        .route("/api/v1/jobs/{id}", get(crate::read::job))
        .route("/api/v1/jobs/{id}/reports", get(crate::read::job_reports))
        .route("/api/v1/jobs/{id}/log", get(crate::read::job_log))
        .route(
            "/api/v1/jobs/{id}/log/stream",
            get(crate::read::job_log_stream),
        )
        .route(
            "/api/v1/jobs/{id}/artifacts",
            get(crate::read::job_artifacts),
        )
        .route("/api/v1/jobs/{id}/retry", post(crate::actions::retry_job))
        .route("/api/v1/jobs/{id}/play", post(crate::actions::play_job))
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
            post(crate::dispatch::finish).layer(DefaultBodyLimit::max(max_finish)),
        )
        .route("/api/v1/openapi.json", get(crate::openapi::document))
        .route("/metrics", get(crate::health::metrics))
        .route("/healthz", get(crate::health::healthz))
        .route("/readyz", get(crate::health::readyz))
        .route("/", get(crate::ui::projects))
        .route(
            "/signin",
            get(crate::ui::signin_page).post(crate::ui::signin),
        )
        .route("/signout", post(crate::ui::signout))
        .route("/assets/style.css", get(crate::ui::style))
        .route("/assets/app.js", get(crate::ui::script))
        .route("/agents", get(crate::ui::agents))
        .route("/projects/{name}", get(crate::ui::pipelines))
        .route("/projects/{name}/deliveries", get(crate::ui::deliveries))
        .route(
            "/projects/{name}/environments",
            get(crate::ui::environments),
        )
        .route(
            "/projects/{name}/environments/{env}",
            get(crate::ui::environment),
        )
        .route(
            "/projects/{name}/environments/{env}/rollback",
            get(crate::ui::rollback_confirm).post(crate::ui::rollback),
        )
        .route("/pipelines/{id}", get(crate::ui::pipeline))
        .route("/pipelines/{id}/reports", get(crate::ui::reports))
        .route("/pipelines/{id}/cancel", post(crate::ui::cancel))
        .route("/jobs/{id}", get(crate::ui::job))
        .route("/jobs/{id}/log.html", get(crate::ui::log_chunk))
        .route("/jobs/{id}/log/stream", get(crate::ui::log_stream))
        .route("/jobs/{id}/raw", get(crate::ui::log_raw))
        .route("/jobs/{id}/{action}", post(crate::ui::job_action));
    api.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::http::observe,
        ))
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
