//! Webhooks (`POST /api/v1/projects/{name}/hooks/{gitlab,github,gitea}`) and API triggers
//! (`POST /api/v1/projects/{name}/pipelines`): check, store durably, answer `202`. The processor
//! (`intake`) turns stored deliveries into pipelines afterwards, with [`parse`] to read them.
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
use gantry_api::{DeliveryAccepted, ForgeKind, KeyValue, TriggerPipeline};
use gantry_store::NewDelivery;
use hmac::{Hmac, Mac as _};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::error::{AppError, AppResult};
use crate::http::{Caller, JsonBody, PathParam, TraceId, same};
use crate::projects::LoadedProject;
use crate::state::AppState;

/// A merge or pull request event's facts.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct MergeRequest {
    pub iid: i64,
    pub id: i64,
    pub title: String,
    pub description: String,
    pub source_branch: String,
    pub target_branch: String,
    /// The target branch's head as the payload gives it (GitHub's and Gitea's `base.sha`): fetched
    /// to compute the merge base; not `CI_MERGE_REQUEST_TARGET_BRANCH_SHA`, which only merged-results
    /// pipelines have.
    pub target_sha: Option<String>,
    /// The merge base when the payload gives it (Gitea's `merge_base`).
    pub diff_base_sha: Option<String>,
    pub labels: Vec<String>,
    pub assignees: Vec<String>,
    pub milestone: Option<String>,
    /// `refs/merge-requests/<iid>/head` (GitLab), `refs/pull/<n>/head` (GitHub, Gitea).
    pub ref_path: String,
    /// The target project's path, URL and id, when the payload names them.
    pub project_path: Option<String>,
    pub project_url: Option<String>,
    pub project_id: Option<String>,
    /// The source project's, likewise (a fork's).
    pub source_project_path: Option<String>,
    pub source_project_url: Option<String>,
    pub source_project_id: Option<String>,
    /// Whether the source is a fork: another repository (GitHub, Gitea) or project (GitLab) than
    /// the target, or one the payload does not name. Its pipeline gets no secrets (see
    /// `ForkPipelines`).
    pub fork: bool,
    pub url: String,
}

/// Whether a merge request's source is another repository than its target: their ids differ, or
/// (without both ids) their paths do. A payload that names neither counts as a fork: what cannot be
/// shown to be the project itself gets no secrets.
fn is_fork(
    source_id: Option<&str>,
    target_id: Option<&str>,
    source_path: Option<&str>,
    target_path: Option<&str>,
) -> bool {
    match ((source_id, target_id), (source_path, target_path)) {
        ((Some(s), Some(t)), _) => s != t,
        (_, (Some(s), Some(t))) => !s.eq_ignore_ascii_case(t),
        _ => true,
    }
}

/// What an event asks for, whatever forge it came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Event {
    /// `CI_PIPELINE_SOURCE`.
    pub source: String,
    /// The branch or tag, short (`main`, `v1.0`).
    pub git_ref: String,
    pub tag: bool,
    /// The commit (for a tag, the commit it points at, GitLab's `checkout_sha`); `None` for
    /// triggers, which run the ref's head.
    pub sha: Option<String>,
    pub before_sha: Option<String>,
    /// The full ref to fetch when the commit itself cannot be fetched.
    pub fetch_ref: String,
    pub user_name: String,
    pub user_email: String,
    /// `GITLAB_USER_ID` and `GITLAB_USER_LOGIN`, when the payload names the user.
    pub user_id: Option<String>,
    pub user_login: String,
    /// The tag's message as the payload gives it (GitLab's `message`); git's answer comes first.
    pub tag_message: Option<String>,
    /// `git push -o ci.skip` (GitLab's `push_options`): no pipeline.
    pub push_skip: bool,
    pub mr: Option<MergeRequest>,
    /// Pipeline variables (triggers and schedules).
    pub variables: Vec<KeyValue>,
}

const ZEROS: &str = "0000000000000000000000000000000000000000";

/// Why a merge request from a fork runs no pipeline.
pub(crate) const FORKS_OFF: &str =
    "fork_pipelines is `none`: merge requests from forks run no pipeline";

/// Whether merge requests from forks run pipelines in `project` (`fork_pipelines` is not `none`).
pub(crate) fn forks_run(project: &LoadedProject) -> bool {
    project.spec.fork_pipelines != gantry_api::ForkPipelines::None
}

fn s(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    match cur {
        Value::String(x) => Some(x.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A non-empty string at `path`.
fn ne(v: &Value, path: &[&str]) -> Option<String> {
    s(v, path).filter(|x| !x.is_empty())
}

fn i(v: &Value, path: &[&str]) -> i64 {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(c) => cur = c,
            None => return 0,
        }
    }
    cur.as_i64().unwrap_or(0)
}

/// The strings at `field` of each element of the array at `path`.
fn names(v: &Value, path: &[&str], fields: &[&str]) -> Vec<String> {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(c) => cur = c,
            None => return Vec::new(),
        }
    }
    cur.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|x| fields.iter().find_map(|f| ne(x, &[f])))
                .collect()
        })
        .unwrap_or_default()
}

fn need(v: &Value, path: &[&str]) -> Result<String, String> {
    s(v, path)
        .filter(|x| !x.is_empty())
        .ok_or_else(|| format!("the payload has no `{}`", path.join(".")))
}

fn valid_sha(sha: &str) -> Result<String, String> {
    if (4..=64).contains(&sha.len()) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha.to_ascii_lowercase())
    } else {
        Err(format!("`{sha}` is not a commit id"))
    }
}

fn valid_ref(r: &str) -> Result<String, String> {
    if r.is_empty()
        || r.starts_with('-')
        || r.contains("..")
        || r.bytes()
            .any(|b| b.is_ascii_control() || b" ~^:?*[\\".contains(&b))
    {
        Err(format!("`{r}` is not a valid ref"))
    } else {
        Ok(r.to_string())
    }
}

/// Whether GitLab's `push_options` ask to skip CI: `{"ci": {"skip": true}}`, or the list of raw
/// options (`["ci.skip"]`) that GitLab 11.7 sent.
fn push_skip(v: &Value) -> bool {
    match v.get("push_options") {
        Some(Value::Object(_)) => v
            .pointer("/push_options/ci/skip")
            .is_some_and(|x| x.as_bool() == Some(true) || x.as_str().is_some_and(|s| s == "true")),
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some("ci.skip")),
        _ => false,
    }
}

/// A push event: the ref (full), before and after.
fn push(forge: ForgeKind, v: &Value) -> Result<Option<Event>, String> {
    let full = need(v, &["ref"])?;
    let after = need(v, &["after"])?;
    if after == ZEROS || v.get("deleted").and_then(Value::as_bool) == Some(true) {
        return Ok(None);
    }
    let (git_ref, tag) = if let Some(t) = full.strip_prefix("refs/tags/") {
        (t.to_string(), true)
    } else if let Some(b) = full.strip_prefix("refs/heads/") {
        (b.to_string(), false)
    } else {
        return Ok(None);
    };
    // An annotated tag's `after` is the tag object; the commit is GitLab's `checkout_sha`, or
    // GitHub's and Gitea's `head_commit.id`.
    let commit = if tag {
        ne(v, &["checkout_sha"])
            .or_else(|| ne(v, &["head_commit", "id"]))
            .filter(|c| c != ZEROS)
            .unwrap_or_else(|| after.clone())
    } else {
        after.clone()
    };
    let (user_name, user_email, user_id, user_login) = match forge {
        ForgeKind::Gitlab => (
            s(v, &["user_name"]).unwrap_or_default(),
            s(v, &["user_email"]).unwrap_or_default(),
            ne(v, &["user_id"]),
            ne(v, &["user_username"]).unwrap_or_default(),
        ),
        _ => (
            ne(v, &["pusher", "full_name"])
                .or_else(|| ne(v, &["pusher", "name"]))
                .or_else(|| ne(v, &["pusher", "login"]))
                .unwrap_or_default(),
            s(v, &["pusher", "email"]).unwrap_or_default(),
            ne(v, &["pusher", "id"]).or_else(|| ne(v, &["sender", "id"])),
            ne(v, &["pusher", "login"])
                .or_else(|| ne(v, &["pusher", "username"]))
                .or_else(|| ne(v, &["sender", "login"]))
                .unwrap_or_default(),
        ),
    };
    Ok(Some(Event {
        source: "push".into(),
        git_ref: valid_ref(&git_ref)?,
        tag,
        sha: Some(valid_sha(&commit)?),
        before_sha: s(v, &["before"]).and_then(|b| valid_sha(&b).ok()),
        fetch_ref: valid_ref(&full)?,
        user_name,
        user_email,
        user_id,
        user_login,
        tag_message: if tag { s(v, &["message"]) } else { None },
        push_skip: push_skip(v),
        mr: None,
        variables: Vec::new(),
    }))
}

fn gitlab_mr(v: &Value) -> Result<Option<Event>, String> {
    let a = v
        .get("object_attributes")
        .ok_or("the payload has no `object_attributes`")?;
    let action = s(a, &["action"]).unwrap_or_default();
    let runs = match action.as_str() {
        "open" | "reopen" => true,
        // An update without new commits (a title change) runs nothing, as on GitLab.
        "update" => a.get("oldrev").is_some_and(|o| !o.is_null()),
        _ => false,
    };
    if !runs {
        return Ok(None);
    }
    let source_branch = valid_ref(&need(a, &["source_branch"])?)?;
    let sha = valid_sha(&need(a, &["last_commit", "id"])?)?;
    let iid = i(a, &["iid"]);
    Ok(Some(Event {
        source: "merge_request_event".into(),
        git_ref: source_branch.clone(),
        tag: false,
        sha: Some(sha),
        before_sha: None,
        fetch_ref: format!("refs/heads/{source_branch}"),
        user_name: s(v, &["user", "name"]).unwrap_or_default(),
        user_email: s(v, &["user", "email"]).unwrap_or_default(),
        user_id: ne(v, &["user", "id"]),
        user_login: s(v, &["user", "username"]).unwrap_or_default(),
        tag_message: None,
        push_skip: false,
        mr: Some(MergeRequest {
            iid,
            id: i(a, &["id"]),
            title: s(a, &["title"]).unwrap_or_default(),
            description: s(a, &["description"]).unwrap_or_default(),
            source_branch,
            target_branch: valid_ref(&need(a, &["target_branch"])?)?,
            target_sha: None,
            diff_base_sha: None,
            labels: {
                let l = names(v, &["labels"], &["title"]);
                if l.is_empty() {
                    names(a, &["labels"], &["title"])
                } else {
                    l
                }
            },
            assignees: names(v, &["assignees"], &["username"]),
            milestone: None,
            ref_path: format!("refs/merge-requests/{iid}/head"),
            project_path: ne(a, &["target", "path_with_namespace"])
                .or_else(|| ne(v, &["project", "path_with_namespace"])),
            project_url: ne(a, &["target", "web_url"]).or_else(|| ne(v, &["project", "web_url"])),
            project_id: ne(a, &["target_project_id"]).or_else(|| ne(v, &["project", "id"])),
            source_project_path: ne(a, &["source", "path_with_namespace"]),
            source_project_url: ne(a, &["source", "web_url"]),
            source_project_id: ne(a, &["source_project_id"]),
            fork: is_fork(
                ne(a, &["source_project_id"]).as_deref(),
                ne(a, &["target_project_id"]).as_deref(),
                ne(a, &["source", "path_with_namespace"]).as_deref(),
                ne(a, &["target", "path_with_namespace"]).as_deref(),
            ),
            url: s(a, &["url"]).unwrap_or_default(),
        }),
        variables: Vec::new(),
    }))
}

/// A GitHub or Gitea pull request: a `merge_request_event` pipeline, so that the same `rules` work.
fn pull_request(v: &Value) -> Result<Option<Event>, String> {
    let action = s(v, &["action"]).unwrap_or_default();
    if !matches!(
        action.as_str(),
        "opened" | "reopened" | "synchronize" | "synchronized"
    ) {
        return Ok(None);
    }
    let pr = v
        .get("pull_request")
        .ok_or("the payload has no `pull_request`")?;
    let number = i(pr, &["number"]).max(i(v, &["number"]));
    let source_branch = valid_ref(&need(pr, &["head", "ref"])?)?;
    Ok(Some(Event {
        source: "merge_request_event".into(),
        git_ref: source_branch.clone(),
        tag: false,
        sha: Some(valid_sha(&need(pr, &["head", "sha"])?)?),
        before_sha: None,
        fetch_ref: format!("refs/pull/{number}/head"),
        user_name: ne(v, &["sender", "full_name"])
            .or_else(|| ne(v, &["sender", "login"]))
            .unwrap_or_default(),
        user_email: s(v, &["sender", "email"]).unwrap_or_default(),
        user_id: ne(v, &["sender", "id"]),
        user_login: ne(v, &["sender", "login"])
            .or_else(|| ne(v, &["sender", "username"]))
            .unwrap_or_default(),
        tag_message: None,
        push_skip: false,
        mr: Some(MergeRequest {
            iid: number,
            id: i(pr, &["id"]),
            title: s(pr, &["title"]).unwrap_or_default(),
            description: s(pr, &["body"]).unwrap_or_default(),
            source_branch,
            target_branch: valid_ref(&need(pr, &["base", "ref"])?)?,
            target_sha: s(pr, &["base", "sha"]).and_then(|x| valid_sha(&x).ok()),
            diff_base_sha: s(pr, &["merge_base"]).and_then(|x| valid_sha(&x).ok()),
            labels: names(pr, &["labels"], &["name"]),
            assignees: names(pr, &["assignees"], &["login", "username"]),
            milestone: ne(pr, &["milestone", "title"]),
            ref_path: format!("refs/pull/{number}/head"),
            project_path: ne(pr, &["base", "repo", "full_name"])
                .or_else(|| ne(v, &["repository", "full_name"])),
            project_url: ne(pr, &["base", "repo", "html_url"])
                .or_else(|| ne(v, &["repository", "html_url"])),
            project_id: ne(pr, &["base", "repo", "id"]).or_else(|| ne(v, &["repository", "id"])),
            source_project_path: ne(pr, &["head", "repo", "full_name"]),
            source_project_url: ne(pr, &["head", "repo", "html_url"]),
            source_project_id: ne(pr, &["head", "repo", "id"]),
            // `head.repo` is null once the fork is deleted: a fork. A head repository that says
            // it is a fork while the ids are the same is the target (a fork's own branches).
            fork: is_fork(
                ne(pr, &["head", "repo", "id"]).as_deref(),
                ne(pr, &["base", "repo", "id"])
                    .or_else(|| ne(v, &["repository", "id"]))
                    .as_deref(),
                ne(pr, &["head", "repo", "full_name"]).as_deref(),
                ne(pr, &["base", "repo", "full_name"])
                    .or_else(|| ne(v, &["repository", "full_name"]))
                    .as_deref(),
            ),
            url: s(pr, &["html_url"]).unwrap_or_default(),
        }),
        variables: Vec::new(),
    }))
}

/// A trigger's or schedule's payload: `{ref, variables}`.
fn trigger(source: &str, v: &Value) -> Result<Option<Event>, String> {
    let t: TriggerPipeline =
        serde_json::from_value(v.clone()).map_err(|e| format!("invalid trigger: {e}"))?;
    let git_ref = valid_ref(&t.git_ref.unwrap_or_default())?;
    Ok(Some(Event {
        source: source.into(),
        fetch_ref: git_ref.clone(),
        git_ref,
        variables: t.variables,
        ..Event::default()
    }))
}

/// Reads a stored delivery's event. `Ok(None)`: an event that runs no pipeline.
pub(crate) fn parse(forge: &str, event: &str, payload: &Value) -> Result<Option<Event>, String> {
    let kind = match forge {
        "gitlab" => ForgeKind::Gitlab,
        "github" => ForgeKind::Github,
        "gitea" => ForgeKind::Gitea,
        "api" => return trigger("api", payload),
        "schedule" => return trigger("schedule", payload),
        other => return Err(format!("unknown forge `{other}`")),
    };
    match (kind, event) {
        (_, "push" | "tag_push") => push(kind, payload),
        (ForgeKind::Gitlab, "merge_request") => gitlab_mr(payload),
        (ForgeKind::Github | ForgeKind::Gitea, "pull_request") => pull_request(payload),
        _ => Ok(None),
    }
}

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
    // One line per delivery at `info` cost a sixth of the intake on PostgreSQL; the delivery's row
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

/// `POST /api/v1/projects/{name}/hooks/gitlab`.
#[utoipa::path(post, path = "/api/v1/projects/{name}/hooks/gitlab", tag = "webhooks",
    params(("name" = String, Path, description = "The project's name"), ("X-Gitlab-Token" = Option<String>, Header, description = "The webhook secret"), ("X-Gitlab-Event" = Option<String>, Header, description = "Push Hook, Tag Push Hook, Merge Request Hook"), ("X-Gitlab-Event-UUID" = Option<String>, Header, description = "The delivery id")),
    request_body(content = serde_json::Value, content_type = "application/json", description = "The forge's event payload"),
    responses((status = 202, description = "Stored; processed afterwards", body = DeliveryAccepted),
        (status = 204, description = "An event that runs no pipeline"), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 413, description = "The body is over the limit", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)))]
pub(crate) async fn gitlab(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceId>,
    PathParam(name): PathParam<String>,
    req: Request,
) -> AppResult<Response> {
    close_on_error(receive(state, ForgeKind::Gitlab, name, req, trace.0).await)
}

/// `POST /api/v1/projects/{name}/hooks/github`.
#[utoipa::path(post, path = "/api/v1/projects/{name}/hooks/github", tag = "webhooks",
    params(("name" = String, Path, description = "The project's name"), ("X-Hub-Signature-256" = Option<String>, Header, description = "sha256=HMAC of the body"), ("X-GitHub-Event" = Option<String>, Header, description = "push, pull_request"), ("X-GitHub-Delivery" = Option<String>, Header, description = "The delivery id")),
    request_body(content = serde_json::Value, content_type = "application/json", description = "The forge's event payload"),
    responses((status = 202, description = "Stored; processed afterwards", body = DeliveryAccepted),
        (status = 204, description = "An event that runs no pipeline"), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 413, description = "The body is over the limit", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)))]
pub(crate) async fn github(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceId>,
    PathParam(name): PathParam<String>,
    req: Request,
) -> AppResult<Response> {
    close_on_error(receive(state, ForgeKind::Github, name, req, trace.0).await)
}

/// `POST /api/v1/projects/{name}/hooks/gitea`.
#[utoipa::path(post, path = "/api/v1/projects/{name}/hooks/gitea", tag = "webhooks",
    params(("name" = String, Path, description = "The project's name"), ("X-Gitea-Signature" = Option<String>, Header, description = "Hex HMAC of the body"), ("X-Gitea-Event" = Option<String>, Header, description = "push, pull_request"), ("X-Gitea-Delivery" = Option<String>, Header, description = "The delivery id")),
    request_body(content = serde_json::Value, content_type = "application/json", description = "The forge's event payload"),
    responses((status = 202, description = "Stored; processed afterwards", body = DeliveryAccepted),
        (status = 204, description = "An event that runs no pipeline"), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 413, description = "The body is over the limit", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)))]
pub(crate) async fn gitea(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceId>,
    PathParam(name): PathParam<String>,
    req: Request,
) -> AppResult<Response> {
    close_on_error(receive(state, ForgeKind::Gitea, name, req, trace.0).await)
}

/// `POST /api/v1/projects/{name}/pipelines`: a pipeline for a ref's head, stored as a delivery of
/// forge `api` so that it goes the same durable way as a webhook.
#[utoipa::path(post, path = "/api/v1/projects/{name}/pipelines", tag = "pipelines", params(("name" = String, Path, description = "The project's name")), request_body = TriggerPipeline,
    responses((status = 202, description = "Stored; the pipeline is created afterwards (see the deliveries)", body = DeliveryAccepted), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project, or a read-only one", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 413, description = "The body is over the limit", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn trigger_pipeline(
    State(state): State<AppState>,
    caller: Caller,
    Extension(trace): Extension<TraceId>,
    PathParam(name): PathParam<String>,
    JsonBody(body): JsonBody<TriggerPipeline>,
) -> AppResult<Response> {
    caller.project(&name)?;
    caller.writes()?;
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
    use serde_json::json;

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

    #[test]
    fn events() {
        let sha = "a".repeat(40);
        let p =
            json!({"ref": "refs/heads/main", "before": ZEROS, "after": sha, "user_name": "Jane"});
        let e = parse("gitlab", "push", &p).unwrap().unwrap();
        assert_eq!(e.git_ref, "main");
        assert!(!e.tag);
        assert_eq!(e.source, "push");
        assert_eq!(e.user_name, "Jane");
        let p = json!({"ref": "refs/tags/v1", "after": sha});
        let e = parse("github", "tag_push", &p).unwrap().unwrap();
        assert!(e.tag);
        assert_eq!(e.git_ref, "v1");
        let deleted = json!({"ref": "refs/heads/x", "after": ZEROS});
        assert_eq!(parse("gitlab", "push", &deleted).unwrap(), None);
        assert!(parse("gitlab", "push", &json!({"after": sha})).is_err());
        let mr = json!({"object_attributes": {"action": "open", "iid": 7, "source_branch": "feat",
            "target_branch": "main", "last_commit": {"id": sha}, "title": "Feat"}});
        let e = parse("gitlab", "merge_request", &mr).unwrap().unwrap();
        assert_eq!(e.source, "merge_request_event");
        assert_eq!(e.mr.as_ref().unwrap().iid, 7);
        let pr = json!({"action": "opened", "number": 3, "pull_request": {"number": 3, "head": {"ref": "f", "sha": sha},
            "base": {"ref": "main", "sha": sha}}});
        let e = parse("github", "pull_request", &pr).unwrap().unwrap();
        assert_eq!(e.fetch_ref, "refs/pull/3/head");
        let closed = json!({"action": "closed", "pull_request": {}});
        // Forks: another repository's id or name, or none named.
        let fork = |head: Value| {
            let pr = json!({"action": "opened", "number": 3, "pull_request": {"number": 3,
                "head": {"ref": "f", "sha": sha, "repo": head},
                "base": {"ref": "main", "sha": sha, "repo": {"id": 1, "full_name": "o/r", "fork": false}}}});
            parse("github", "pull_request", &pr)
                .unwrap()
                .unwrap()
                .mr
                .unwrap()
                .fork
        };
        assert!(!fork(json!({"id": 1, "full_name": "o/r", "fork": false})));
        assert!(
            !fork(json!({"id": 1, "full_name": "o/r", "fork": true})),
            "the target's own branch"
        );
        assert!(fork(json!({"id": 2, "full_name": "evil/r", "fork": true})));
        assert!(fork(json!({"id": 2, "full_name": "o/r"})), "the ids decide");
        assert!(fork(json!({"full_name": "evil/r"})));
        assert!(fork(Value::Null), "a deleted fork");
        let gitlab = |source: i64, target: i64| {
            let mr = json!({"object_attributes": {"action": "open", "iid": 7, "source_branch": "feat",
                "target_branch": "main", "last_commit": {"id": sha},
                "source_project_id": source, "target_project_id": target}});
            parse("gitlab", "merge_request", &mr)
                .unwrap()
                .unwrap()
                .mr
                .unwrap()
                .fork
        };
        assert!(!gitlab(14, 14));
        assert!(gitlab(15, 14));
        assert_eq!(parse("gitea", "pull_request", &closed).unwrap(), None);
        // Push options: GitLab's object, and the list GitLab 11.7 sent.
        let skip =
            json!({"ref": "refs/heads/main", "after": sha, "push_options": {"ci": {"skip": true}}});
        assert!(parse("gitlab", "push", &skip).unwrap().unwrap().push_skip);
        let skip = json!({"ref": "refs/heads/main", "after": sha, "push_options": ["ci.skip"]});
        assert!(parse("gitlab", "push", &skip).unwrap().unwrap().push_skip);
        let no = json!({"ref": "refs/heads/main", "after": sha, "push_options": {}});
        assert!(!parse("gitlab", "push", &no).unwrap().unwrap().push_skip);
        // An annotated tag: the commit, not the tag object.
        let commit = "b".repeat(40);
        let t = json!({"ref": "refs/tags/v1", "after": sha, "checkout_sha": commit});
        assert_eq!(
            parse("gitlab", "tag_push", &t).unwrap().unwrap().sha,
            Some(commit.clone())
        );
        let t = json!({"ref": "refs/tags/v1", "after": sha, "head_commit": {"id": commit}});
        assert_eq!(
            parse("github", "tag_push", &t).unwrap().unwrap().sha,
            Some(commit)
        );
        let bad_ref = json!({"ref": "refs/heads/--upload-pack=x", "after": sha});
        assert!(parse("gitlab", "push", &bad_ref).is_err());
    }
}
