//! Projects: `POST /api/v1/projects`, `GET /api/v1/projects`, `GET /api/v1/projects/{name}`. The store
//! keeps the project's settings as our JSON document, [`ProjectSpec`], checked by [`validate`].

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use gantry_api::ErrorBody;
use gantry_api::{ForgeKind, NewProject, Project};

use crate::error::{AppError, AppResult};
use crate::http::{Admin, Caller, JsonBody, PathParam, QueryParams};
use crate::projects::{LoadedProject, valid_key};
use crate::spec::ProjectSpec;
use crate::state::AppState;
use crate::views::{PageQuery, page_headers};

/// Checks a new project and turns it into the stored settings.
pub(crate) fn validate(p: &NewProject) -> Result<ProjectSpec, String> {
    if p.name.is_empty()
        || p.name.len() > 100
        || p.name == "."
        || p.name == ".."
        || !p
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(
            "the name must be 1 to 100 letters, digits, `-`, `_` or `.` (and not `.` or `..`)"
                .into(),
        );
    }
    let url = p.repo_url.trim();
    if url.is_empty() || url.starts_with('-') || url.contains(['\n', '\0']) {
        return Err("repo_url must be a URL or path that git can fetch".into());
    }
    let default_branch = p
        .default_branch
        .clone()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "main".into());
    if default_branch.starts_with('-') || default_branch.contains(['\n', '\0', ' ', ':']) {
        return Err("default_branch is not a valid branch name".into());
    }
    if p.webhook_secret.as_deref() == Some("") {
        return Err("webhook_secret must not be empty (leave it out instead)".into());
    }
    for v in &p.variables {
        if !valid_key(&v.key) {
            return Err(format!(
                "variable `{}`: names are letters, digits and `_`",
                v.key
            ));
        }
        if v.masked && v.value.as_deref().is_none_or(|s| s.len() < 8) {
            return Err(format!(
                "variable `{}`: a masked value must have at least 8 characters",
                v.key
            ));
        }
    }
    if let Some(f) = &p.forge {
        if !matches!(
            f.kind,
            ForgeKind::Gitlab | ForgeKind::Github | ForgeKind::Gitea
        ) {
            return Err("forge.kind must be gitlab, github or gitea".into());
        }
        if !(f.api_url.starts_with("http://") || f.api_url.starts_with("https://")) {
            return Err("forge.api_url must be an http(s) URL".into());
        }
        if f.kind != ForgeKind::Gitlab && f.project.split('/').count() != 2 {
            return Err("forge.project must be `owner/repo`".into());
        }
    }
    for s in &p.schedules {
        crate::schedules::parse(s).map_err(|e| format!("schedule `{}`: {e}", s.cron))?;
    }
    if p.include_allowed_from.len() > 100 {
        return Err("include_allowed_from holds at most 100 names or patterns".into());
    }
    for pattern in &p.include_allowed_from {
        if pattern.is_empty()
            || pattern.len() > 100
            || !pattern
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.*".contains(&b))
        {
            return Err(format!(
                "include_allowed_from: `{pattern}` is not a project name or a pattern of one \
                 (letters, digits, `-`, `_`, `.`, and `*` for any run of them)"
            ));
        }
    }
    if let Some(list) = &p.protected_branches {
        valid_ref_patterns("protected_branches", list)?;
    }
    valid_ref_patterns("protected_tags", &p.protected_tags)?;
    let notify = notify_rules(&p.notify)?;
    Ok(ProjectSpec {
        repo_url: url.to_string(),
        default_branch,
        webhook_secret: p.webhook_secret.clone(),
        variables: p.variables.clone(),
        forge: p.forge.clone(),
        schedules: p.schedules.clone(),
        include_allowed_from: p.include_allowed_from.clone(),
        fork_pipelines: p.fork_pipelines.unwrap_or_default(),
        protected_branches: p.protected_branches.clone(),
        protected_tags: p.protected_tags.clone(),
        notify,
    })
}

/// Checks the project's `notify` rules as a pipeline file's are checked (`gantry_pipeline::notify`):
/// the JSON is read as the YAML it also is, and the first problem is reported at its place in it
/// (`notify:LINE:COLUMN`, lines of the rules as pretty-printed JSON).
fn notify_rules(rules: &[serde_json::Value]) -> Result<Vec<gantry_notify::Rule>, String> {
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    if rules.len() > 100 {
        return Err("notify holds at most 100 rules".into());
    }
    let text = serde_json::to_string_pretty(rules).map_err(|e| e.to_string())?;
    gantry_pipeline::notify::rules_from_text(&text, "notify").map_err(|diags| {
        diags
            .first()
            .map_or_else(|| "notify: invalid rules".into(), ToString::to_string)
    })
}

/// Checks the branch or tag names and patterns of setting `what`: at most 100, each a short ref
/// name where `*` is the one wildcard.
fn valid_ref_patterns(what: &str, list: &[String]) -> Result<(), String> {
    if list.len() > 100 {
        return Err(format!("{what} holds at most 100 names or patterns"));
    }
    for pattern in list {
        let bad = pattern.is_empty()
            || pattern.len() > 255
            || pattern.starts_with(['-', '/'])
            || pattern.ends_with('/')
            || pattern.contains("..")
            || pattern.contains("//")
            || pattern
                .bytes()
                .any(|b| b.is_ascii_control() || b" ~^:?[\\".contains(&b));
        if bad {
            return Err(format!(
                "{what}: `{pattern}` is not a branch or tag name or a pattern of one \
                 (`*` stands for any run of characters)"
            ));
        }
    }
    Ok(())
}

/// `POST /api/v1/projects`.
#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", request_body = NewProject,
    responses((status = 201, description = "Added", body = Project), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token: this needs the admin token", body = ErrorBody), (status = 409, description = "The name is taken", body = ErrorBody), (status = 413, description = "The body is over the limit", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    _: Admin,
    JsonBody(body): JsonBody<NewProject>,
) -> AppResult<(StatusCode, Json<Project>)> {
    let spec = validate(&body).map_err(AppError::bad_request)?;
    let json = serde_json::to_string(&state.secrets.seal_spec(&body.name, &spec))
        .map_err(AppError::internal)?;
    let record = state
        .store
        .create_project(&body.name, &json, crate::now_ms())
        .await?;
    tracing::info!(project = %record.name, "project added");
    Ok((
        StatusCode::CREATED,
        Json(LoadedProject { record, spec }.to_api()),
    ))
}

/// `GET /api/v1/projects`: a page of projects by name, with the same `page`/`per_page`
/// parameters and `X-Total`/`X-Next-Page` headers as the other lists.
#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", params(PageQuery),
    responses((status = 200, description = "A page of projects, by name", body = Vec<Project>,
        headers(("X-Total" = i64), ("X-Page" = i64), ("X-Per-Page" = i64), ("X-Next-Page" = String))), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token: this needs the admin token", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    _: Admin,
    QueryParams(q): QueryParams<PageQuery>,
) -> AppResult<Response> {
    let page = q.page()?;
    let all = state.store.projects().await?;
    let total = i64::try_from(all.len()).unwrap_or(i64::MAX);
    let skip = usize::try_from((page.page - 1) * page.per_page).unwrap_or(usize::MAX);
    let take = usize::try_from(page.per_page).unwrap_or(0);
    let mut out = Vec::new();
    for r in all.into_iter().skip(skip).take(take) {
        out.push(LoadedProject::parse(r, &state.secrets)?.to_api());
    }
    Ok((page_headers(page, total), Json(out)).into_response())
}

/// `GET /api/v1/projects/{name}`.
#[utoipa::path(get, path = "/api/v1/projects/{name}", tag = "projects", params(("name" = String, Path, description = "The project's name")),
    responses((status = 200, description = "The project", body = Project), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 403, description = "A project token of another project", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = []), ("private_token" = [])))]
pub(crate) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam<String>,
) -> AppResult<Json<Project>> {
    caller.project(&name)?;
    Ok(Json(state.project(&name).await?.to_api()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::name_matches;
    use gantry_api::ProjectVariable;
    use gantry_store::ProjectRecord;

    fn project(name: &str) -> NewProject {
        NewProject {
            name: name.into(),
            repo_url: "/srv/repo.git".into(),
            default_branch: None,
            webhook_secret: None,
            variables: Vec::new(),
            forge: None,
            schedules: Vec::new(),
            include_allowed_from: Vec::new(),
            fork_pipelines: None,
            protected_branches: None,
            protected_tags: Vec::new(),
            notify: Vec::new(),
        }
    }

    #[test]
    fn notify_rules_are_checked_as_the_file_checks_them() {
        let mut p = project("x");
        p.notify = vec![serde_json::json!({"on": ["rollback", "deployment_failed"],
            "slack": {"url": "$SLACK_URL"}})];
        let spec = validate(&p).unwrap();
        assert_eq!(spec.notify.len(), 1);
        assert!(spec.notify[0].wants(gantry_notify::EventKind::Rollback));
        assert_eq!(spec.notify[0].target.url, "$SLACK_URL");
        p.notify = vec![serde_json::json!({"on": ["deploy_failed"], "slack": {"url": "$U"}})];
        let e = validate(&p).unwrap_err();
        assert!(
            e.starts_with("notify:4:7: `notify`: unknown event `deploy_failed`"),
            "{e}"
        );
        p.notify = vec![serde_json::json!({"on": ["all"], "slack": {"url": "ftp://x"}})];
        let e = validate(&p).unwrap_err();
        assert!(e.contains("must start with https:// or http://"), "{e}");
        p.notify = vec![serde_json::json!({"on": ["all"]})];
        assert!(
            validate(&p)
                .unwrap_err()
                .contains("a rule needs one target")
        );
    }

    #[test]
    fn names() {
        assert!(validate(&project("my-project_1.0")).is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(101)] {
            assert!(validate(&project(bad)).is_err(), "{bad}");
        }
        let mut p = project("x");
        p.repo_url = "--upload-pack=evil".into();
        assert!(validate(&p).is_err());
    }

    #[test]
    fn include_patterns() {
        for (pattern, name) in [
            ("app", "app"),
            ("*", "anything"),
            ("team-*", "team-a"),
            ("team-*", "team-"),
            ("*-ci", "docs-ci"),
            ("a*b*c", "aXXbYYc"),
            ("a*b*c", "abc"),
            ("**", "x"),
        ] {
            assert!(name_matches(pattern, name), "{pattern} ~ {name}");
        }
        for (pattern, name) in [
            ("app", "app2"),
            ("app", "ap"),
            ("team-*", "team"),
            ("team-*", "other-team-a"),
            ("*-ci", "docs-ci2"),
            ("a*b*c", "aXXbYY"),
            ("", "x"),
        ] {
            assert!(!name_matches(pattern, name), "{pattern} !~ {name}");
        }
        let mut p = project("shared");
        assert!(validate(&p).unwrap().include_allowed_from.is_empty());
        p.include_allowed_from = vec!["app".into(), "team-*".into(), "*".into()];
        assert!(validate(&p).is_ok());
        for bad in ["", "a/b", "a b", "x\n"] {
            p.include_allowed_from = vec![bad.into()];
            let e = validate(&p).unwrap_err();
            assert!(e.starts_with("include_allowed_from"), "{bad}: {e}");
        }
    }

    #[test]
    fn includes_are_allowed_from_itself_and_the_listed_projects() {
        let mut p = project("shared");
        p.include_allowed_from = vec!["app".into(), "team-*".into()];
        let loaded = LoadedProject {
            record: ProjectRecord {
                id: 1,
                name: "shared".into(),
                spec: String::new(),
                created_at: 0,
            },
            spec: validate(&p).unwrap(),
        };
        for ok in ["shared", "app", "team-x"] {
            assert!(loaded.allows_include_from(ok), "{ok}");
        }
        for denied in ["app2", "other", "team"] {
            assert!(!loaded.allows_include_from(denied), "{denied}");
        }
        let mut closed = loaded.clone();
        closed.spec.include_allowed_from.clear();
        assert!(closed.allows_include_from("shared"));
        assert!(!closed.allows_include_from("app"));
    }

    #[test]
    fn protected_refs() {
        let mut p = project("x");
        let spec = validate(&p).unwrap();
        assert!(spec.is_protected("main", false), "the default branch");
        assert!(!spec.is_protected("dev", false));
        assert!(
            !spec.is_protected("main", true),
            "no tag is protected by default"
        );
        assert!(!spec.is_protected("v1.0", true));
        p.protected_branches = Some(vec!["main".into(), "release/*".into()]);
        p.protected_tags = vec!["v*".into()];
        let spec = validate(&p).unwrap();
        for (name, tag) in [
            ("main", false),
            ("release/1.0", false),
            ("release/a/b", false),
            ("v1.0", true),
            ("v-evil", true),
        ] {
            assert!(spec.is_protected(name, tag), "{name}");
        }
        for (name, tag) in [
            ("release", false),
            ("v1.0", false),
            ("main", true),
            ("x-v1", true),
        ] {
            assert!(!spec.is_protected(name, tag), "{name}");
        }
        p.protected_tags = vec!["v[0-9]".into()];
        let e = validate(&p).unwrap_err();
        assert!(e.starts_with("protected_tags: `v[0-9]`"), "{e}");
        p.protected_tags = Vec::new();
        p.protected_branches = Some(vec![String::new()]);
        assert!(validate(&p).unwrap_err().starts_with("protected_branches"));
        // An explicit list replaces the default branch.
        p.protected_branches = Some(vec!["release/*".into()]);
        assert!(!validate(&p).unwrap().is_protected("main", false));
    }

    #[test]
    fn masked_values_are_hidden() {
        let mut p = project("x");
        p.variables.push(ProjectVariable {
            key: "SECRET".into(),
            value: Some("hunter2hunter2".into()),
            masked: true,
            protected: false,
            environment_scope: "*".into(),
        });
        let spec = validate(&p).unwrap();
        let loaded = LoadedProject {
            record: ProjectRecord {
                id: 1,
                name: "x".into(),
                spec: String::new(),
                created_at: 0,
            },
            spec,
        };
        let api = serde_json::to_string(&loaded.to_api()).unwrap();
        assert!(!api.contains("hunter2"), "{api}");
    }
}
