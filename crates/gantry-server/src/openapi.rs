//! `GET /api/v1/openapi.json`: the OpenAPI document, generated with utoipa from the handlers'
//! `#[utoipa::path]` annotations and the `gantry-api` types.

use axum::Json;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "job_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        components.add_security_scheme(
            "private_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("PRIVATE-TOKEN"))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Gantry", description = "Gantry's server: projects, webhooks, pipelines, jobs, and the agent protocol.\n\n\
Authentication: `Authorization: Bearer TOKEN` or `PRIVATE-TOKEN: TOKEN`. The admin token may do everything. \
A project token (`gpt_…`, made with `POST /api/v1/projects/{name}/tokens`) may trigger pipelines and read, \
cancel, retry and play its own project's pipelines, deliveries, jobs, logs and artifacts, roll back its \
environments, and read the project (a token of scope `read` only reads); \
anything else answers `403` (also for things of other projects that do not exist). Agents use their agent \
token on `/api/v1/agent`. Missing, unknown, revoked or expired tokens answer `401`."),
    paths(
        crate::admin::create,
        crate::admin::list,
        crate::admin::show,
        crate::admin::set_variable,
        crate::admin::delete_variable,
        crate::admin::add_schedule,
        crate::admin::delete_schedule,
        crate::tokens::create,
        crate::tokens::list,
        crate::tokens::revoke,
        crate::hooks::gitlab,
        crate::hooks::github,
        crate::hooks::gitea,
        crate::hooks::trigger_pipeline,
        crate::read::pipelines,
        crate::read::deliveries,
        crate::read::pipeline,
        crate::read::job,
        crate::read::job_log,
        crate::read::job_log_stream,
        crate::read::job_artifacts,
        crate::read::pipeline_reports,
        crate::read::job_reports,
        crate::read::coverage_trend,
        crate::deployments::environments,
        crate::deployments::deployments,
        crate::read::agents,
        crate::tokens::revoke_agent,
        crate::tokens::rotate_registration_token,
        crate::actions::cancel_pipeline,
        crate::actions::approve_pipeline,
        crate::actions::retry_job,
        crate::actions::play_job,
        crate::rollback::rollback,
        crate::dispatch::register,
        crate::dispatch::request,
        crate::dispatch::heartbeat,
        crate::dispatch::log,
        crate::dispatch::source,
        crate::dispatch::dependency_artifacts,
        crate::dispatch::upload_artifacts,
        crate::dispatch::finish,
        crate::dispatch::stop_polling,
        crate::githttp::info_refs,
        crate::githttp::upload_pack,
        crate::githttp::receive_pack,
        crate::githttp::project_info_refs,
        crate::githttp::project_upload_pack,
        crate::githttp::project_receive_pack,
        crate::health::healthz,
        crate::health::readyz,
        crate::health::metrics,
    ),
    components(schemas(
        gantry_api::ErrorBody,
        crate::read::LogChunk,
        crate::read::LogEnd,
    )),
    modifiers(&Security)
)]
struct Doc;

/// The document, built once.
fn doc() -> &'static serde_json::Value {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DOC.get_or_init(|| serde_json::to_value(Doc::openapi()).unwrap_or_default())
}

/// `GET /api/v1/openapi.json`.
pub(crate) async fn document() -> Json<serde_json::Value> {
    Json(doc().clone())
}
