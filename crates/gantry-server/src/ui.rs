//! The web UI at `/`: the same data and operations as the API, as pages that `gantry-ui` renders.
//!
//! It sits beside the router, above the handlers: a request's session cookie becomes the API's
//! [`Caller`] (the token is looked up on every request, as a header's is, so revocation is
//! immediate), and the pages call the handlers' own functions (`read`, `actions`) or the shared
//! `views`, so a page can see and do exactly what its token can through the API.
//!
//! *Must hold:* the session cookie is `HttpOnly`, `SameSite=Strict` and `Secure` over https; every
//! `POST` carries `csrf`, an HMAC under the admin token, checked before anything happens: of the
//! session's token, or for sign-in, of the random pre-session cookie that `GET /signin` sets (so
//! that no other site can sign a browser into its own session); sign-in also refuses a browser's
//! `Sec-Fetch-Site` other than same-origin and an `Origin` other than this server's. A `POST` of a
//! token of scope `read` is refused by the handler it reaches (`Caller::can`). Pages are sent with
//! a Content-Security-Policy that allows only the UI's own script.

use std::future::Future;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gantry_store::{Page, PipelineFilter};
use gantry_ui::Markup;
use gantry_ui::Viewer;
use hmac::{Hmac, Mac as _};
use serde::Deserialize;
use sha2::Sha256;

use crate::error::{AppError, AppResult};
use crate::http::{Admin, Caller, PathParam, QueryParams, RawBody, same};
use crate::state::AppState;
use crate::views::{delivery_api, job_api, load_job, pipeline_api};

/// The session cookie: the token itself, percent-encoded.
const COOKIE: &str = "gantry_session";

/// The pre-session cookie of the sign-in form: random, for `/signin` only.
const PRESESSION: &str = "gantry_signin";

/// How long a sign-in form stays good, in seconds.
const PRESESSION_AGE: u32 = 1800;

/// What the MAC of a session's CSRF token and of a sign-in form start with, so that neither is
/// the other.
const SESSION_MAC: &[u8] = b"gantry-ui-csrf\n";
const SIGNIN_MAC: &[u8] = b"gantry-ui-signin\n";

/// How much of a log one chunk of the log view renders, in bytes.
const LOG_CHUNK: i64 = 64 * 1024;

/// A signed-in request: its caller and what the pages show of it.
pub(crate) struct Session {
    caller: Caller,
    viewer: Viewer,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Session, Response> {
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Err(see_other("/signin"));
        };
        match Caller::of_token(state, &token).await {
            Ok(caller) => {
                let viewer = Viewer {
                    who: match &caller {
                        Caller::Admin => "admin".to_string(),
                        Caller::Project(t) => format!("{} ({})", t.name, t.project_name),
                    },
                    csrf: mac(state, SESSION_MAC, &token),
                    can_write: caller.writes().is_ok(),
                    scope: caller.scope(),
                    admin: matches!(caller, Caller::Admin),
                };
                Ok(Session { caller, viewer })
            }
            // Revoked or expired: the cookie goes, and the user signs in again.
            Err(e) if e.status == StatusCode::UNAUTHORIZED => {
                let mut resp = see_other("/signin");
                set_cookie(&mut resp, &format!("{COOKIE}=; Path=/; Max-Age=0"));
                Err(resp)
            }
            Err(e) => Err(fail(None, e)),
        }
    }
}

/// Cookie `name` from the `Cookie` header.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
        .map(|v| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
}

/// A form's CSRF token: HMAC-SHA256 of `label` and `value` (a session's token, or a
/// pre-session) under the admin token, hex.
fn mac(state: &AppState, label: &[u8], value: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(state.config.admin_token.0.as_bytes()) else {
        return String::new();
    };
    mac.update(label);
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Field `name` of a URL-encoded form body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// `403` unless the form carries the session's CSRF token.
fn check_csrf(s: &Session, body: &[u8]) -> AppResult<()> {
    match form_field(body, "csrf") {
        Some(t) if !s.viewer.csrf.is_empty() && same(&t, &s.viewer.csrf) => Ok(()),
        _ => Err(AppError::new(
            StatusCode::FORBIDDEN,
            "the form is out of date or not from this site: reload the page and try again",
        )),
    }
}

/// A page, with the headers every page gets.
fn html(status: StatusCode, m: &Markup) -> Response {
    let mut resp = (status, m.0.clone()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// An error as a page.
fn fail(viewer: Option<&Viewer>, e: AppError) -> Response {
    html(
        e.status,
        &gantry_ui::error(viewer, e.status.as_u16(), &e.message),
    )
}

/// `303 See Other` to `to`.
fn see_other(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn set_cookie(resp: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// A page of the signed-in user, or its error as a page.
fn answer(s: &Session, r: AppResult<Response>) -> Response {
    r.unwrap_or_else(|e| fail(Some(&s.viewer), e))
}

/// `GET /assets/style.css`.
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", gantry_ui::STYLE)
}

/// `GET /assets/app.js`.
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", gantry_ui::SCRIPT)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// `GET /signin`: the form, with a new pre-session.
pub(crate) async fn signin_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    signin_form(&state, &headers, StatusCode::OK, None)
}

/// The sign-in page with a new pre-session: its cookie, and its MAC in the form.
fn signin_form(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    // Its time of issue, under the MAC with it, bounds its life on the server too.
    let pre = format!("{}.{}", crate::now_ms(), crate::random_token());
    let mut resp = html(
        status,
        &gantry_ui::signin(error, &mac(state, SIGNIN_MAC, &pre)),
    );
    set_cookie(
        &mut resp,
        &format!(
            "{PRESESSION}={pre}; Path=/signin; Max-Age={PRESESSION_AGE}; HttpOnly; SameSite=Strict{}",
            secure(state, headers)
        ),
    );
    resp
}

/// `; Secure` when the browser reaches the server over https.
fn secure(state: &AppState, headers: &HeaderMap) -> &'static str {
    let https = state
        .config
        .external_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https:"))
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    if https { "; Secure" } else { "" }
}

/// Whether a sign-in form was posted by this site's own sign-in page: its `csrf` is the MAC of
/// the pre-session cookie, issued at most `PRESESSION_AGE` ago, and the browser's `Sec-Fetch-Site` and `Origin`, when it sends them,
/// say the same origin (the `Host`, or the external URL's).
fn signin_from_here(state: &AppState, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("sec-fetch-site").is_some_and(|site| !matches!(site, "same-origin" | "none")) {
        return false;
    }
    if let Some(origin) = header("origin") {
        let authority = |url: &str| {
            url.split_once("://")
                .map(|(_, rest)| rest.split('/').next().unwrap_or(rest).to_owned())
        };
        let external = state.config.external_url.as_deref().and_then(authority);
        let ours = |a: &str| {
            header("host").is_some_and(|h| h.eq_ignore_ascii_case(a))
                || external
                    .as_deref()
                    .is_some_and(|e| e.eq_ignore_ascii_case(a))
        };
        if !authority(origin).is_some_and(|a| ours(&a)) {
            return false;
        }
    }
    match (cookie(headers, PRESESSION), form_field(body, "csrf")) {
        (Some(pre), Some(sent)) => {
            same(&sent, &mac(state, SIGNIN_MAC, &pre)) && fresh(&pre, crate::now_ms())
        }
        _ => false,
    }
}

/// Whether pre-session `pre` (`ISSUED_MS.RANDOM`) was issued at most `PRESESSION_AGE` before `now`.
fn fresh(pre: &str, now: i64) -> bool {
    pre.split_once('.')
        .and_then(|(at, _)| at.parse::<i64>().ok())
        .is_some_and(|at| (0..=i64::from(PRESESSION_AGE) * 1000).contains(&(now - at)))
}

/// `POST /signin`: a known token, sent by this site's sign-in form, becomes the session cookie.
pub(crate) async fn signin(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    if !signin_from_here(&state, &headers, &body) {
        return signin_form(
            &state,
            &headers,
            StatusCode::FORBIDDEN,
            Some(
                "This sign-in form is out of date or not from this site: reload the page and sign in again",
            ),
        );
    }
    let token = form_field(&body, "token").unwrap_or_default();
    let token = token.trim();
    match Caller::of_token(&state, token).await {
        Ok(_) => {
            let secure = secure(&state, &headers);
            let mut resp = see_other("/");
            set_cookie(
                &mut resp,
                &format!(
                    "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{secure}",
                    gantry_ui::enc(token),
                ),
            );
            set_cookie(
                &mut resp,
                &format!(
                    "{PRESESSION}=; Path=/signin; Max-Age=0; HttpOnly; SameSite=Strict{secure}"
                ),
            );
            resp
        }
        Err(e) if e.status == StatusCode::UNAUTHORIZED => signin_form(
            &state,
            &headers,
            StatusCode::UNAUTHORIZED,
            Some("This token is not known to the server"),
        ),
        Err(e) => fail(None, e),
    }
}

/// `POST /signout`.
pub(crate) async fn signout(s: Session, RawBody(body): RawBody) -> Response {
    if let Err(e) = check_csrf(&s, &body) {
        return fail(Some(&s.viewer), e);
    }
    let mut resp = see_other("/signin");
    set_cookie(
        &mut resp,
        &format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
    );
    resp
}

/// `GET /`: the projects the session sees, each with the last pipeline of its default branch.
pub(crate) async fn projects(State(state): State<AppState>, s: Session) -> Response {
    let r = async {
        let mut rows = Vec::new();
        for p in state.store.projects().await? {
            if s.caller.project(&p.name).is_err() {
                continue;
            }
            let default_branch = serde_json::from_str::<crate::spec::ProjectSpec>(&p.spec)
                .map(|spec| spec.default_branch)
                .unwrap_or_default();
            let last = state
                .store
                .pipelines(
                    p.id,
                    &PipelineFilter {
                        git_ref: Some(default_branch.clone()),
                        status: None,
                    },
                    Page {
                        page: 1,
                        per_page: 1,
                    },
                )
                .await?
                .items
                .first()
                .map(pipeline_api);
            rows.push(gantry_ui::ProjectRow {
                name: p.name,
                default_branch,
                last,
            });
        }
        Ok(html(StatusCode::OK, &gantry_ui::projects(&s.viewer, &rows)))
    };
    answer(&s, r.await)
}

/// The commit title a pipeline's predefined variables hold.
fn commit_title(spec: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        predefined: Vec<gantry_pipeline::Variable>,
    }
    serde_json::from_str::<Doc>(spec)
        .ok()?
        .predefined
        .into_iter()
        .find(|v| v.key == "CI_COMMIT_TITLE")
        .map(|v| v.value)
        .filter(|t| !t.is_empty())
}

/// The pipeline list's query.
#[derive(Deserialize)]
pub(crate) struct ListQuery {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    status: Option<String>,
    page: Option<i64>,
}

const PER_PAGE: i64 = 20;

fn page_of(n: Option<i64>) -> Page {
    Page {
        page: n.unwrap_or(1).clamp(1, 1_000_000),
        per_page: PER_PAGE,
    }
}

fn pages(total: i64) -> i64 {
    (total + PER_PAGE - 1) / PER_PAGE
}

/// `GET /projects/{name}`: its pipelines, filtered by ref and status, a page at a time.
pub(crate) async fn pipelines(
    State(state): State<AppState>,
    s: Session,
    PathParam(name): PathParam<String>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Response {
    let r = async {
        s.caller.project(&name)?;
        let status = match q.status.as_deref().filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(
                gantry_api::PipelineStatus::parse(v)
                    .ok_or_else(|| AppError::bad_request(format!("unknown status `{v}`")))?,
            ),
        };
        let git_ref = q.git_ref.filter(|r| !r.is_empty());
        let project = state.project(&name).await?;
        let page = page_of(q.page);
        let paged = state
            .store
            .pipelines(
                project.record.id,
                &PipelineFilter {
                    git_ref: git_ref.clone(),
                    status,
                },
                page,
            )
            .await?;
        let list = gantry_ui::PipelineList {
            project: name,
            rows: paged
                .items
                .iter()
                .map(|p| gantry_ui::PipelineRow {
                    pipeline: pipeline_api(p),
                    title: commit_title(&p.spec),
                })
                .collect(),
            git_ref,
            status,
            page: page.page,
            pages: pages(paged.total),
        };
        Ok(html(
            StatusCode::OK,
            &gantry_ui::pipelines(&s.viewer, &list),
        ))
    };
    answer(&s, r.await)
}

/// The deliveries page's query.
#[derive(Deserialize)]
pub(crate) struct PageOnly {
    page: Option<i64>,
}

/// `GET /projects/{name}/deliveries`.
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    s: Session,
    PathParam(name): PathParam<String>,
    QueryParams(q): QueryParams<PageOnly>,
) -> Response {
    let r = async {
        s.caller.project(&name)?;
        let project = state.project(&name).await?;
        let page = page_of(q.page);
        let paged = state.store.deliveries(project.record.id, page).await?;
        let list: Vec<_> = paged.items.iter().map(delivery_api).collect();
        Ok(html(
            StatusCode::OK,
            &gantry_ui::deliveries(&s.viewer, &name, &list, page.page, pages(paged.total)),
        ))
    };
    answer(&s, r.await)
}

/// `GET /projects/{name}/environments`: each environment with its current deployment.
pub(crate) async fn environments(
    State(state): State<AppState>,
    s: Session,
    PathParam(name): PathParam<String>,
) -> Response {
    let r = async {
        let caller = Caller::of_session(&s);
        let envs = crate::deployments::environments(State(state), caller, PathParam(name.clone()))
            .await?
            .0;
        Ok(html(
            StatusCode::OK,
            &gantry_ui::environments(&s.viewer, &name, &envs),
        ))
    };
    answer(&s, r.await)
}

/// The newest deployment of environment `env` of project `project_id`.
async fn newest_deployment(
    state: &AppState,
    project_id: i64,
    env: &str,
) -> AppResult<Option<gantry_store::DeploymentRecord>> {
    let first = Page {
        page: 1,
        per_page: 1,
    };
    Ok(state
        .store
        .deployments(project_id, env, first)
        .await?
        .items
        .into_iter()
        .next())
}

/// A page of environment `env`'s deployments, as the environment page shows them.
async fn history(
    state: &AppState,
    s: &Session,
    name: &str,
    env: &str,
    page_no: Option<i64>,
) -> AppResult<gantry_ui::DeploymentList> {
    s.caller.project(name)?;
    let project = state.project(name).await?;
    let page = page_of(page_no);
    let paged = state
        .store
        .deployments(project.record.id, env, page)
        .await?;
    if paged.total == 0 {
        return Err(AppError::not_found(format!(
            "project {name} has no environment `{env}`"
        )));
    }
    let rows = paged
        .items
        .iter()
        .map(crate::deployments::deployment_api)
        .collect::<AppResult<Vec<_>>>()?;
    let newest = match rows.first() {
        Some(d) if page.page == 1 => Some(d.id),
        _ => newest_deployment(state, project.record.id, env)
            .await?
            .map(|d| d.id),
    };
    Ok(gantry_ui::DeploymentList {
        project: name.to_string(),
        environment: env.to_string(),
        rows,
        newest,
        page: page.page,
        pages: pages(paged.total),
    })
}

/// `GET /projects/{name}/environments/{env}`: its deployments, a page at a time.
pub(crate) async fn environment(
    State(state): State<AppState>,
    s: Session,
    PathParam((name, env)): PathParam<(String, String)>,
    QueryParams(q): QueryParams<PageOnly>,
) -> Response {
    let r = async {
        let list = history(&state, &s, &name, &env, q.page).await?;
        Ok(html(
            StatusCode::OK,
            &gantry_ui::environment(&s.viewer, &list, None),
        ))
    };
    answer(&s, r.await)
}

/// The deployment a rollback goes to.
#[derive(Deserialize)]
pub(crate) struct RollbackTo {
    to: Option<i64>,
}

/// `GET /projects/{name}/environments/{env}/rollback?to=ID`: the confirmation, for a writer.
pub(crate) async fn rollback_confirm(
    State(state): State<AppState>,
    s: Session,
    PathParam((name, env)): PathParam<(String, String)>,
    QueryParams(q): QueryParams<RollbackTo>,
) -> Response {
    let r = async {
        s.caller.project(&name)?;
        s.caller.can("roll back an environment")?;
        let to =
            q.to.ok_or_else(|| AppError::bad_request("which deployment to roll back to (`to`)"))?;
        let project = state.project(&name).await?;
        let target = state
            .store
            .deployment(to)
            .await?
            .filter(|d| d.project_id == project.record.id && d.environment == env)
            .ok_or_else(|| {
                AppError::not_found(format!("`{env}` of {name} has no deployment {to}"))
            })?;
        let from = newest_deployment(&state, project.record.id, &env)
            .await?
            .as_ref()
            .map(crate::deployments::deployment_api)
            .transpose()?;
        let to = crate::deployments::deployment_api(&target)?;
        Ok(html(
            StatusCode::OK,
            &gantry_ui::rollback_confirm(&s.viewer, &name, &env, from.as_ref(), &to),
        ))
    };
    answer(&s, r.await)
}

/// `POST /projects/{name}/environments/{env}/rollback` (`csrf`, `to`): the API's rollback, then
/// `303` to the environment page, which shows it running; a refusal (`409`: no earlier success,
/// one still running) is shown on that page.
pub(crate) async fn rollback(
    State(state): State<AppState>,
    s: Session,
    PathParam((name, env)): PathParam<(String, String)>,
    RawBody(body): RawBody,
) -> Response {
    if let Err(e) = check_csrf(&s, &body) {
        return fail(Some(&s.viewer), e);
    }
    let asked = gantry_api::deployments::RollbackRequest {
        to: form_field(&body, "to").and_then(|v| v.parse().ok()),
    };
    // Serializing an optional number cannot fail.
    let json = serde_json::to_vec(&asked).unwrap_or_default();
    let caller = Caller::of_session(&s);
    let started = crate::rollback::rollback(
        State(state.clone()),
        caller,
        PathParam((name.clone(), env.clone())),
        RawBody(json.into()),
    )
    .await;
    match started {
        Ok(_) => see_other(&format!(
            "/projects/{}/environments/{}",
            gantry_ui::enc(&name),
            gantry_ui::enc(&env)
        )),
        Err(e) => match history(&state, &s, &name, &env, None).await {
            Ok(list) => html(
                e.status,
                &gantry_ui::environment(&s.viewer, &list, Some(&e.message)),
            ),
            Err(_) => fail(Some(&s.viewer), e),
        },
    }
}

/// `GET /pipelines/{id}`.
pub(crate) async fn pipeline(
    State(state): State<AppState>,
    s: Session,
    PathParam(id): PathParam<i64>,
) -> Response {
    let r = async {
        s.caller.pipeline(&state, id).await?;
        let Some(p) = state.store.pipeline(id).await? else {
            return Err(AppError::not_found(format!("no pipeline {id}")));
        };
        let title = commit_title(&p.spec);
        let page = gantry_ui::pipeline(&s.viewer, &pipeline_api(&p), title.as_deref());
        Ok(html(StatusCode::OK, &page))
    };
    answer(&s, r.await)
}

/// `GET /pipelines/{id}/reports`.
pub(crate) async fn reports(
    State(state): State<AppState>,
    s: Session,
    PathParam(id): PathParam<i64>,
) -> Response {
    let r = async {
        let caller = Caller::of_session(&s);
        let reports = crate::read::pipeline_reports(State(state.clone()), caller, PathParam(id))
            .await?
            .0;
        let p = crate::views::load_pipeline(&state, id).await?;
        // The default branch's last pipelines with coverage, oldest first.
        let project = state.project(&p.project).await?;
        let branch = project.spec.default_branch.clone();
        let newest = state
            .store
            .coverage_trend(
                project.record.id,
                &branch,
                Page {
                    page: 1,
                    per_page: gantry_ui::TREND_LEN,
                },
            )
            .await?
            .items;
        let trend = gantry_ui::CoverageTrend {
            branch,
            points: newest
                .into_iter()
                .rev()
                .map(crate::read::trend_point)
                .collect(),
        };
        Ok(html(
            StatusCode::OK,
            &gantry_ui::reports(&s.viewer, &p, &reports, &trend),
        ))
    };
    answer(&s, r.await)
}

/// `GET /agents`: for the admin.
pub(crate) async fn agents(State(state): State<AppState>, s: Session) -> Response {
    let r = async {
        if !s.viewer.admin {
            return Err(AppError::new(
                StatusCode::FORBIDDEN,
                "the agents are shown to the admin only",
            ));
        }
        let list = crate::read::agents(State(state), Admin).await?.0;
        Ok(html(StatusCode::OK, &gantry_ui::agents(&s.viewer, &list)))
    };
    answer(&s, r.await)
}

/// `GET /jobs/{id}`.
pub(crate) async fn job(
    State(state): State<AppState>,
    s: Session,
    PathParam(id): PathParam<i64>,
) -> Response {
    let r = async {
        s.caller.job(&state, id).await?;
        let job = job_api(&load_job(&state, id).await?);
        let project = state
            .store
            .pipeline_head(job.pipeline_id)
            .await?
            .map(|p| p.project_name)
            .unwrap_or_default();
        Ok(html(
            StatusCode::OK,
            &gantry_ui::job(&s.viewer, &project, &job),
        ))
    };
    answer(&s, r.await)
}

/// Which chunk of a log the view wants: forward from `from` (a line's start, numbered `line`),
/// backward to `to` (the start of line `line`), the chunk at line `line` alone, or, with none of
/// them, the tail.
#[derive(Deserialize)]
pub(crate) struct LogQuery {
    from: Option<i64>,
    to: Option<i64>,
    line: Option<u64>,
}

/// How many bytes a scan of the stored log reads at a time.
const SCAN_BLOCK: i64 = 1024 * 1024;

/// Scans the log from its start, counting newlines, up to `end` or until the line numbered `stop`
/// starts: that line's offset and number. Reads the stored log once at most.
async fn scan(state: &AppState, id: i64, end: i64, stop: Option<u64>) -> AppResult<(i64, u64)> {
    let (mut at, mut line) = (0, 1);
    while at < end && stop.is_none_or(|s| line < s) {
        let bytes = state
            .store
            .read_log(id, at, (at + SCAN_BLOCK).min(end))
            .await?;
        if bytes.is_empty() {
            break;
        }
        for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'\n') {
            line += 1;
            if stop == Some(line) {
                return Ok((at + i64::try_from(i).unwrap_or(0) + 1, line));
            }
        }
        at += i64::try_from(bytes.len()).unwrap_or(0);
    }
    Ok((at, line))
}

/// `GET /jobs/{id}/log.html`: whole lines of up to `LOG_CHUNK` bytes of the log, rendered: forward
/// from `?from=OFFSET&line=N`, backward to `?to=OFFSET&line=N`, from line `?line=N`, or the tail
/// (these two cost one scan of the stored log, to number lines). `X-From` and `X-Line` say where
/// the chunk starts, `X-Next-From` and `X-Next-Line` where the next one starts, `X-Done: 1` that
/// the job is over and the chunk reaches the end of its log. A line longer than a chunk comes in
/// pieces cut at characters' edges: `X-Next-Line` stays its number, and the next chunk starts with
/// its rest (no anchor of its own). `line` is taken as 1 to `u32::MAX`.
pub(crate) async fn log_chunk(
    State(state): State<AppState>,
    s: Session,
    PathParam(id): PathParam<i64>,
    QueryParams(q): QueryParams<LogQuery>,
) -> Response {
    let r = async {
        s.caller.job(&state, id).await?;
        let job = load_job(&state, id).await?;
        let size = job.log_size;
        let over = job.status.is_final();
        // A line number from the query: 1 to `u32::MAX` (a hostile one cannot overflow).
        let line_no = |l: u64| l.clamp(1, u64::from(u32::MAX));
        let (from, line, end, backward) = match (q.from, q.to, q.line.map(line_no)) {
            (Some(from), _, line) => {
                let from = from.clamp(0, size);
                (from, line.unwrap_or(1), (from + LOG_CHUNK).min(size), None)
            }
            (None, Some(to), Some(line)) => {
                let to = to.clamp(0, size);
                ((to - LOG_CHUNK).max(0), line, to, Some(line))
            }
            (None, None, Some(line)) => {
                let (from, line) = scan(&state, id, size, Some(line)).await?;
                (from, line, (from + LOG_CHUNK).min(size), None)
            }
            (None, to, None) => {
                let to = to.unwrap_or(size).clamp(0, size);
                ((to - LOG_CHUNK).max(0), 0, to, Some(0))
            }
        };
        // One byte before the chunk too: whether it starts a line or goes on with one.
        let lead = usize::from(from > 0);
        let mut bytes = if end > from {
            state
                .store
                .read_log(id, from - i64::from(from > 0), end)
                .await?
        } else {
            Vec::new()
        };
        let mut continued = from > 0 && bytes.first().is_some_and(|&b| b != b'\n');
        bytes.drain(..lead.min(bytes.len()));
        let (mut from, mut line) = (from, line);
        if let Some(at_end) = backward {
            // Backward: from the first line that starts inside the window (a line longer than
            // the window is shown in pieces, from its first whole character in the window).
            if continued {
                let head = &bytes[..bytes.len().saturating_sub(1)];
                let skip = match head.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        continued = false;
                        i + 1
                    }
                    None => gantry_ui::log::char_start(&bytes),
                };
                bytes.drain(..skip);
                from += i64::try_from(skip).unwrap_or(0);
            }
            line = if at_end == 0 {
                scan(&state, id, from, None).await?.1
            } else {
                let lines = bytes.iter().filter(|&&b| b == b'\n').count();
                at_end
                    .saturating_sub(u64::try_from(lines).unwrap_or(0))
                    .max(1)
            };
        }
        // The end of the log: a last line without its newline is whole once the job is over, and
        // left for a later chunk while it runs. A chunk that ends before the log does ends in a
        // piece of a line where it cuts one (a backward chunk always; a forward one when it holds
        // no newline), which the next chunk goes on with under the same number.
        let all = end == size;
        let tail = match (all, over, backward) {
            (true, true, _) => gantry_ui::log::Tail::Done,
            (true, false, _) | (false, _, None) => gantry_ui::log::Tail::Whole,
            (false, _, Some(_)) => gantry_ui::log::Tail::Piece,
        };
        let mut chunk = gantry_ui::log::render_from(&bytes, line, continued, tail);
        if chunk.consumed == 0 && !bytes.is_empty() && !all {
            // One line longer than a chunk: shown in pieces.
            chunk =
                gantry_ui::log::render_from(&bytes, line, continued, gantry_ui::log::Tail::Piece);
        }
        let next = from + i64::try_from(chunk.consumed).unwrap_or(0);
        let mut resp = (StatusCode::OK, chunk.html).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let done = if over && next == size { "1" } else { "0" };
        for (k, v) in [
            ("x-from", from.to_string()),
            ("x-line", line.to_string()),
            ("x-next-from", next.to_string()),
            ("x-next-line", chunk.next_line.to_string()),
            ("x-done", done.to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        }
        Ok(resp)
    };
    answer(&s, r.await)
}

/// Where the live log resumes.
#[derive(Deserialize)]
pub(crate) struct StreamQuery {
    #[serde(default)]
    from: i64,
}

/// `GET /jobs/{id}/log/stream?from=OFFSET`: the API's live log stream, resuming at `from`.
pub(crate) async fn log_stream(
    State(state): State<AppState>,
    s: Session,
    PathParam(id): PathParam<i64>,
    QueryParams(q): QueryParams<StreamQuery>,
    mut headers: HeaderMap,
) -> Response {
    if !headers.contains_key("last-event-id") {
        if let Ok(v) = HeaderValue::from_str(&q.from.max(0).to_string()) {
            headers.insert("last-event-id", v);
        }
    }
    let caller = Caller::of_session(&s);
    match crate::read::job_log_stream(State(state), caller, PathParam(id), headers).await {
        Ok(sse) => sse.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /jobs/{id}/raw`: the API's plain log, as a download.
pub(crate) async fn log_raw(
    State(state): State<AppState>,
    s: Session,
    PathParam(id): PathParam<i64>,
    headers: HeaderMap,
) -> Response {
    let caller = Caller::of_session(&s);
    match crate::read::job_log(State(state), caller, PathParam(id), headers).await {
        Ok(mut resp) => {
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"job-{id}.log\""))
            {
                resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            resp
        }
        Err(e) => fail(Some(&s.viewer), e),
    }
}

/// A form's action: the CSRF token checked, then `act` (an API handler, which checks the token may
/// change things), then `303` to the pipeline page it answers.
async fn act<F>(s: &Session, body: &[u8], act: F) -> Response
where
    F: Future<Output = AppResult<i64>>,
{
    let r = async {
        check_csrf(s, body)?;
        let pipeline = act.await?;
        Ok(see_other(&format!("/pipelines/{pipeline}")))
    };
    answer(s, r.await)
}

/// `POST /pipelines/{id}/cancel`.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    s: Session,
    PathParam(id): PathParam<i64>,
    RawBody(body): RawBody,
) -> Response {
    let caller = Caller::of_session(&s);
    act(&s, &body, async move {
        crate::actions::cancel_pipeline(State(state), caller, PathParam(id))
            .await
            .map(|p| p.id)
    })
    .await
}

/// `POST /jobs/{id}/retry` and `POST /jobs/{id}/play`.
pub(crate) async fn job_action(
    State(state): State<AppState>,
    s: Session,
    PathParam((id, action)): PathParam<(i64, String)>,
    RawBody(body): RawBody,
) -> Response {
    let caller = Caller::of_session(&s);
    act(&s, &body, async move {
        match action.as_str() {
            "retry" => crate::actions::retry_job(State(state), caller, PathParam(id))
                .await
                .map(|(_, j)| j.pipeline_id),
            "play" => crate::actions::play_job(State(state), caller, PathParam(id))
                .await
                .map(|j| j.pipeline_id),
            _ => Err(AppError::not_found("no such action")),
        }
    })
    .await
}

impl Caller {
    /// The session's caller, for a handler that takes one by value.
    fn of_session(s: &Session) -> Caller {
        match &s.caller {
            Caller::Admin => Caller::Admin,
            Caller::Project(t) => Caller::Project(t.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pre_session_lives_thirty_minutes_on_the_server_too() {
        let at = 1_800_000_000_000;
        let pre = format!("{at}.0123abcd");
        assert!(fresh(&pre, at));
        assert!(fresh(&pre, at + i64::from(PRESESSION_AGE) * 1000));
        assert!(!fresh(&pre, at + i64::from(PRESESSION_AGE) * 1000 + 1));
        assert!(!fresh(&pre, at - 1), "issued in the future");
        assert!(!fresh("0123abcd", at), "no time of issue");
    }

    #[test]
    fn cookies_and_forms() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; gantry_session=gpt_x%3By; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("gpt_x;y"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("gantry_session="));
        assert_eq!(cookie(&h, COOKIE), None);
        assert_eq!(
            form_field(b"token=a%2Bb+c&csrf=z", "token").as_deref(),
            Some("a+b c")
        );
        assert_eq!(form_field(b"token=a", "csrf"), None);
    }
}
