//! `CI_JOB_TOKEN`: a job's own credential, valid while the job runs, for reading its project's
//! repository from inside the job (`git fetch origin`, `git describe` after fetching tags), as on
//! GitLab.
//!
//! The token is `ID_MAC`: the job's id, and an HMAC-SHA256 (keyed with the admin token) over the
//! job's id, the agent that claimed it and when. Nothing is stored: a server recomputes the MAC
//! from the job's row, so every server sharing the database (and the admin token) accepts it, and
//! it stops working the moment the job is no longer running (a retry is another job, another
//! token). It is handed to the agent in the job's variables, masked.
//!
//! It is accepted as `Authorization: Bearer TOKEN`, or as the password of HTTP Basic
//! authentication (any user name; GitLab's is `gitlab-ci-token`), so that
//! `https://gitlab-ci-token:${CI_JOB_TOKEN}@…` URLs written for GitLab work.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use gantry_api::JobStatus;
use gantry_store::{JobRecord, PipelineRecord};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::state::AppState;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &str, job: &JobRecord) -> Option<HmacSha256> {
    let agent = job.agent_id?;
    let started = job.started_at?;
    let mut mac = HmacSha256::new_from_slice(key.as_bytes()).ok()?;
    mac.update(format!("gantry-job-token:{}:{agent}:{started}", job.id).as_bytes());
    Some(mac)
}

/// The token of `job` as claimed (`None` before a claim).
pub(crate) fn mint(key: &str, job: &JobRecord) -> Option<String> {
    let mac = mac(key, job)?;
    Some(format!(
        "{}_{}",
        job.id,
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// The token a request carries: a bearer token, or the password of Basic authentication.
fn carried(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_string());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_string())
}

/// `401` asking for Basic credentials, so that git sends the ones of its URL.
pub(crate) fn challenge(message: &str) -> Response {
    let mut r = crate::error::AppError::unauthorized(message.to_string()).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"gantry\""),
    );
    r
}

/// The running job whose token the request carries, with its pipeline, when that job belongs to
/// project `project`. `Err`: the answer (`401` with a Basic challenge for a missing, malformed or
/// stale token; `403` for a running job of another project).
pub(crate) async fn job_of(
    state: &AppState,
    headers: &HeaderMap,
    project: &str,
) -> Result<(JobRecord, PipelineRecord), Response> {
    let Some(token) = carried(headers) else {
        return Err(challenge("a job token (CI_JOB_TOKEN) is required"));
    };
    let stale = || challenge("the job token is not valid (or its job is no longer running)");
    let Some((id, given)) = token.split_once('_') else {
        return Err(stale());
    };
    let (Ok(id), Ok(given)) = (id.parse::<i64>(), hex::decode(given)) else {
        return Err(stale());
    };
    let job = match state.store.job(id).await {
        Ok(Some(job)) if job.status == JobStatus::Running => job,
        Ok(_) => return Err(stale()),
        Err(e) => return Err(crate::error::AppError::from(e).into_response()),
    };
    let key = &state.config.admin_token.0;
    if mac(key, &job).is_none_or(|m| m.verify_slice(&given).is_err()) {
        return Err(stale());
    }
    let pipeline = match state.store.pipeline_head(job.pipeline_id).await {
        Ok(Some(p)) => p,
        Ok(None) => return Err(stale()),
        Err(e) => return Err(crate::error::AppError::from(e).into_response()),
    };
    if pipeline.project_name != project {
        return Err(crate::error::AppError::new(
            StatusCode::FORBIDDEN,
            "a job token reads its own project's repository only",
        )
        .into_response());
    }
    Ok((job, pipeline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_carried_as_bearer_or_basic_password() {
        let mut h = HeaderMap::new();
        assert_eq!(carried(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 7_ab"),
        );
        assert_eq!(carried(&h).as_deref(), Some("7_ab"));
        let basic = base64::engine::general_purpose::STANDARD.encode("gitlab-ci-token:7_cd");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {basic}")).unwrap(),
        );
        assert_eq!(carried(&h).as_deref(), Some("7_cd"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!"));
        assert_eq!(carried(&h), None);
    }
}
