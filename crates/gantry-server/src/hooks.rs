//! Webhooks (`POST /api/v1/projects/{name}/hooks/{gitlab,github,gitea}`) and API triggers
//! (`POST /api/v1/projects/{name}/pipelines`): check, store durably, answer `202`. The processor
//! (`intake`) turns stored deliveries into pipelines afterwards, with `events::parse` to read them.
//!
//! Checks, in order: the project exists (`404`), the credential header is there (GitLab's token is
//! checked whole) (`401`), all before the body is read; the body's size (`413`, per forge, see
//! `Config::webhook_body_limits`), read under a shared memory budget (`503` when it stays
//! full), the signature (`401`, constant time), the body is JSON
//! (`400`), the event is one we run pipelines for (else `204`, the reason in `X-Gantry-Reason`: a `204`
//! carries no body).

use axum::Extension;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gantry_api::ErrorBody;
use gantry_api::{DeliveryAccepted, ForgeKind, TriggerPipeline};
use gantry_store::NewDelivery;
use hmac::{Hmac, Mac as _};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::error::{AppError, AppResult};
use crate::events::{FORKS_OFF, forks_run, parse, s, valid_ref};
use crate::http::{Caller, JsonBody, PathParam, TraceId, same};
use crate::projects::LoadedProject;
use crate::state::AppState;

/// The event name from the forge's header, `None` for events we do not handle.
fn event_name(forge: ForgeKind, headers: &HeaderMap) -> Option<&'static str> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    match forge {
        ForgeKind::Gitlab => match h("x-gitlab-event") {
            "Push Hook" => Some("push"),
            "Tag Push Hook" => Some("tag_push"),
            "Merge Request Hook" => Some("merge_request"),
            _ => None,
        },
        ForgeKind::Github | ForgeKind::Gitea => {
            let e = if forge == ForgeKind::Gitea && !h("x-gitea-event").is_empty() {
                h("x-gitea-event")
            } else {
                h("x-github-event")
            };
            match e {
                "push" => Some("push"),
                "pull_request" => Some("pull_request"),
                _ => None,
            }
        }
        ForgeKind::Api | ForgeKind::Schedule => None,
    }
}

type HmacSha256 = Hmac<Sha256>;

/// Whether `headers` prove that the body was sent by someone who knows `secret` (constant time).
pub(crate) fn verify(forge: ForgeKind, secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let hmac_ok = |hex_sig: &str| {
        let Ok(sig) = hex::decode(hex_sig.trim()) else {
            return false;
        };
        let Ok(mut mac) = HmacSha256::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    };
    match forge {
        ForgeKind::Gitlab => h("x-gitlab-token").is_some_and(|t| same(t, secret)),
        ForgeKind::Github => h("x-hub-signature-256")
            .and_then(|v| v.strip_prefix("sha256="))
            .is_some_and(hmac_ok),
        ForgeKind::Gitea => match h("x-gitea-signature") {
            Some(sig) => hmac_ok(sig),
            None => h("x-hub-signature-256")
                .and_then(|v| v.strip_prefix("sha256="))
                .is_some_and(hmac_ok),
        },
        ForgeKind::Api | ForgeKind::Schedule => false,
    }
}

/// What can be checked of a webhook's credential before its body is read: GitLab's token whole
/// (it does not depend on the body), GitHub's and Gitea's signature header's presence (the HMAC
/// covers the body, so it is checked once the body is read).
fn credential_before_body(forge: ForgeKind, secret: &str, headers: &HeaderMap) -> AppResult<()> {
    let has = |n: &str| headers.get(n).is_some_and(|v| !v.is_empty());
    let ok = match forge {
        ForgeKind::Gitlab => verify(forge, secret, headers, b""),
        ForgeKind::Github => has("x-hub-signature-256"),
        ForgeKind::Gitea => has("x-gitea-signature") || has("x-hub-signature-256"),
        ForgeKind::Api | ForgeKind::Schedule => false,
    };
    if ok {
        Ok(())
    } else if forge == ForgeKind::Gitlab {
        Err(AppError::unauthorized("the webhook token does not match"))
    } else {
        Err(AppError::unauthorized(
            "the webhook has no signature header",
        ))
    }
}

fn delivery_id(forge: ForgeKind, headers: &HeaderMap, body: &[u8]) -> String {
    let name = match forge {
        ForgeKind::Gitlab => "x-gitlab-event-uuid",
        ForgeKind::Github => "x-github-delivery",
        ForgeKind::Gitea => "x-gitea-delivery",
        ForgeKind::Api | ForgeKind::Schedule => "x-gantry-delivery",
    };
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map_or_else(
            // Without an id, the body's hash: a replayed body is then a duplicate.
            || format!("sha256:{}", hex::encode(Sha256::digest(body))),
            str::to_string,
        )
}

fn ignored(reason: &str) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(reason) {
        r.headers_mut().insert("x-gantry-reason", v);
    }
    r
}

async fn receive(
    state: AppState,
    forge: ForgeKind,
    name: String,
    req: Request,
    trace: String,
) -> AppResult<Response> {
    state.intake.arrived();
    // Everything that needs no body is checked before a byte of it is read (issue 16, finding 2):
    // a stranger gets `404` or `401` at once, and costs no memory.
    let project = state.project_for_hook(&name).await?;
    let Some(secret) = project.spec.webhook_secret.as_deref() else {
        state.metrics.delivery("unauthorized");
        return Err(AppError::unauthorized(
            "the project has no webhook secret: webhooks are refused",
        ));
    };
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    if let Err(e) = credential_before_body(forge, secret, &headers) {
        state.metrics.delivery("unauthorized");
        return Err(e);
    }
    let (body, _reading) = crate::http::read_webhook_body(
        &state,
        state.config.webhook_body_limits.of(forge),
        &headers,
        body,
    )
    .await?;
    if !verify(forge, secret, &headers, &body) {
        state.metrics.delivery("unauthorized");
        return Err(AppError::unauthorized(
            "the webhook signature does not match",
        ));
    }
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            state.metrics.delivery("invalid");
            return Err(AppError::bad_request(format!("invalid JSON body: {e}")));
        }
    };
    let Some(event) = event_name(forge, &headers) else {
        state.metrics.delivery("ignored");
        return Ok(ignored("this event runs no pipeline"));
    };
    match parse(forge.as_str(), event, &payload) {
        Err(e) => {
            state.metrics.delivery("invalid");
            return Err(AppError::bad_request(e));
        }
        Ok(None) => {
            state.metrics.delivery("ignored");
            return Ok(ignored("this event runs no pipeline"));
        }
        Ok(Some(e)) if e.mr.as_ref().is_some_and(|m| m.fork) && !forks_run(&project) => {
            state.metrics.delivery("ignored");
            return Ok(ignored(FORKS_OFF));
        }
        Ok(Some(_)) => {}
    }
    // A tag push from GitHub or Gitea is a `push` whose ref is a tag.
    let event = if event == "push"
        && payload
            .get("ref")
            .and_then(Value::as_str)
            .is_some_and(|r| r.starts_with("refs/tags/"))
    {
        "tag_push"
    } else {
        event
    };
    // A push's identity: a signed body replayed under a new delivery id is a duplicate of the
    // first within the window (issue 16, finding 12).
    let push_key = matches!(event, "push" | "tag_push").then(|| {
        let f = |k: &str| s(&payload, &[k]).unwrap_or_default();
        format!("{} {} {}", f("ref"), f("before"), f("after"))
    });
    store(
        &state,
        &project,
        NewDelivery {
            project_id: project.record.id,
            forge: forge.as_str().to_string(),
            delivery_id: delivery_id(forge, &headers, &body),
            event: event.to_string(),
            payload: body.to_vec(),
            trace_id: trace,
            received_at: 0,
            push_key,
            push_key_since: 0,
        },
    )
    .await
}

/// Stores `delivery`, received now, with the push dedupe window's start.
async fn store(
    state: &AppState,
    project: &LoadedProject,
    mut delivery: NewDelivery,
) -> AppResult<Response> {
    delivery.received_at = crate::now_ms();
    let window = i64::try_from(state.config.push_dedupe_window.as_millis()).unwrap_or(i64::MAX);
    delivery.push_key_since = delivery.received_at.saturating_sub(window);
    let (id, duplicate) = state.store.insert_delivery(&delivery).await?;
    state
        .metrics
        .delivery(if duplicate { "duplicate" } else { "accepted" });
    if !duplicate {
        state.deliveries.notify_one();
    }
    // One line per delivery at `info` cost a large share of the intake; the delivery's row
    // (`GET …/deliveries`) and the processor's "pipeline created" line carry its trace id.
    if duplicate {
        tracing::info!(project = %project.record.name, delivery = id, "duplicate delivery: not processed again");
    } else {
        tracing::debug!(project = %project.record.name, delivery = id, "delivery stored");
    }
    let mut r = (
        StatusCode::ACCEPTED,
        Json(DeliveryAccepted { id, duplicate }),
    )
        .into_response();
    if duplicate {
        // The same delivery id, or the same push (ref, before and after) within the window.
        if let Ok(v) = HeaderValue::from_str(&format!(
            "a duplicate of delivery {id}: the same delivery id, or the same push within the dedupe window"
        )) {
            r.headers_mut().insert("x-gantry-reason", v);
        }
    }
    Ok(r)
}

/// An error answered before the body was read (or while it was) ends the connection
/// (`Connection: close`): the rest of the body would otherwise be read as the next request, and
/// a client that keeps the connection for its next request would see it closed under it.
fn close_on_error(r: AppResult<Response>) -> AppResult<Response> {
    r.or_else(|e| {
        let mut r = e.into_response();
        r.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
        Ok(r)
    })
}

/// The webhook handler `$name` of forge `$kind`, at `$path`: its OpenAPI entry (the forge's own
/// headers in `$headers`, the rest shared) and the call, which closes the connection on an error
/// (see [`close_on_error`]).
macro_rules! webhook {
    ($(#[doc = $doc:literal])* $name:ident, $kind:ident, $path:literal, $($header:tt),+) => {
        $(#[doc = $doc])*
        #[utoipa::path(post, path = $path, tag = "webhooks",
            params(("name" = String, Path, description = "The project's name"), $($header),+),
            request_body(content = serde_json::Value, content_type = "application/json", description = "The forge's event payload"),
            responses((status = 202, description = "Stored; processed afterwards", body = DeliveryAccepted),
                (status = 204, description = "An event that runs no pipeline"), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 413, description = "The body is over the limit", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)))]
        pub(crate) async fn $name(
            State(state): State<AppState>,
            Extension(trace): Extension<TraceId>,
            PathParam(name): PathParam<String>,
            req: Request,
        ) -> AppResult<Response> {
            close_on_error(receive(state, ForgeKind::$kind, name, req, trace.0).await)
        }
    };
}

webhook!(
    /// `POST /api/v1/projects/{name}/hooks/gitlab`.
    gitlab, Gitlab, "/api/v1/projects/{name}/hooks/gitlab",
    ("X-Gitlab-Token" = Option<String>, Header, description = "The webhook secret"),
    ("X-Gitlab-Event" = Option<String>, Header, description = "Push Hook, Tag Push Hook, Merge Request Hook"),
    ("X-Gitlab-Event-UUID" = Option<String>, Header, description = "The delivery id"));
webhook!(
    /// `POST /api/v1/projects/{name}/hooks/github`.
    github, Github, "/api/v1/projects/{name}/hooks/github",
    ("X-Hub-Signature-256" = Option<String>, Header, description = "sha256=HMAC of the body"),
    ("X-GitHub-Event" = Option<String>, Header, description = "push, pull_request"),
    ("X-GitHub-Delivery" = Option<String>, Header, description = "The delivery id"));
webhook!(
    /// `POST /api/v1/projects/{name}/hooks/gitea`.
    gitea, Gitea, "/api/v1/projects/{name}/hooks/gitea",
    ("X-Gitea-Signature" = Option<String>, Header, description = "Hex HMAC of the body"),
    ("X-Gitea-Event" = Option<String>, Header, description = "push, pull_request"),
    ("X-Gitea-Delivery" = Option<String>, Header, description = "The delivery id"));

/// `POST /api/v1/projects/{name}/pipelines`: a pipeline for a ref's head, stored as a delivery of
/// forge `api` so that it goes the same durable way as a webhook.
#[utoipa::path(post, path = "/api/v1/projects/{name}/pipelines", tag = "pipelines", params(("name" = String, Path, description = "The project's name")), request_body = TriggerPipeline,
    responses((status = 202, description = "Stored; the pipeline is created afterwards (see the deliveries)", body = DeliveryAccepted), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project, or one of scope `read`", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 413, description = "The body is over the limit", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn trigger_pipeline(
    State(state): State<AppState>,
    caller: Caller,
    Extension(trace): Extension<TraceId>,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<TriggerPipeline>,
) -> AppResult<Response> {
    caller.project(&name)?;
    caller.can("trigger a pipeline")?;
    state.intake.arrived();
    let project = state.project(&name).await?;
    let git_ref = body
        .git_ref
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| project.spec.default_branch.clone());
    valid_ref(&git_ref).map_err(AppError::bad_request)?;
    for v in &body.variables {
        if !crate::projects::valid_key(&v.key) {
            return Err(AppError::bad_request(format!(
                "variable `{}`: names are letters, digits and `_`",
                v.key
            )));
        }
    }
    let payload = serde_json::to_vec(&TriggerPipeline {
        git_ref: Some(git_ref),
        variables: body.variables,
    })
    .map_err(AppError::internal)?;
    store(
        &state,
        &project,
        NewDelivery {
            project_id: project.record.id,
            forge: "api".into(),
            delivery_id: crate::random_id(),
            event: "trigger".into(),
            payload,
            trace_id: trace.0,
            received_at: 0,
            push_key: None,
            push_key_since: 0,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_signature() {
        let body = br#"{"zen":"hi"}"#;
        let mut mac = HmacSha256::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let sig = hex::encode(mac.finalize().into_bytes());
        let mut h = HeaderMap::new();
        h.insert(
            "x-hub-signature-256",
            HeaderValue::from_str(&format!("sha256={sig}")).unwrap(),
        );
        assert!(verify(ForgeKind::Github, "s3cret", &h, body));
        assert!(!verify(ForgeKind::Github, "other", &h, body));
        assert!(!verify(ForgeKind::Github, "s3cret", &h, b"{}"));
        let mut h = HeaderMap::new();
        h.insert("x-gitea-signature", HeaderValue::from_str(&sig).unwrap());
        assert!(verify(ForgeKind::Gitea, "s3cret", &h, body));
        assert!(!verify(
            ForgeKind::Github,
            "s3cret",
            &HeaderMap::new(),
            body
        ));
        let mut h = HeaderMap::new();
        h.insert("x-gitlab-token", HeaderValue::from_static("s3cret"));
        assert!(verify(ForgeKind::Gitlab, "s3cret", &h, body));
        assert!(!verify(ForgeKind::Gitlab, "s3cre", &h, body));
    }
}
