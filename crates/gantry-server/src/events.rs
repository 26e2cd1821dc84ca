//! What a stored delivery asks for: a forge's webhook payload (push, tag push, merge or pull
//! request) or a trigger's or schedule's, read into an [`Event`] by [`parse`]; `Ok(None)` for an
//! event that runs no pipeline. Pure: no IO.

use gantry_api::{ForgeKind, KeyValue, TriggerPipeline};
use serde_json::Value;

use crate::projects::LoadedProject;

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

pub(crate) fn s(v: &Value, path: &[&str]) -> Option<String> {
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

pub(crate) fn valid_ref(r: &str) -> Result<String, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
