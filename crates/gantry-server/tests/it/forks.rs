//! Merge requests from forks (`fork_pipelines`) and protected refs (`protected_branches`,
//! `protected_tags`): what the job spec an agent receives holds. The payloads are the forges' own
//! examples (`forges/`), with the head repository or source project changed to a fork's.

use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};

use crate::both;
use crate::common::{Agent, App, Backend, create_token, fixture, git, send, send_hook, set, spawn};
use crate::notify::Recorder;

/// Values that no fork job may see.
const PLAIN: &str = "plain-value-1";
const MASKED: &str = "masked-value-2";
const PROTECTED: &str = "protected-value-3";

/// `job` runs in every pipeline; `leak` only when the compiler saw `PLAIN_VAR`.
const CI: &str = "job:\n  script: [echo]\n  rules:\n    - when: always\n\
                  leak:\n  script: [echo]\n  rules:\n    - if: $PLAIN_VAR\n";

fn variables() -> Value {
    json!([
        {"key": "PLAIN_VAR", "value": PLAIN},
        {"key": "MASKED_VAR", "value": MASKED, "masked": true},
        {"key": "PROTECTED_VAR", "value": PROTECTED, "protected": true},
    ])
}

/// Sends and waits until the delivery is processed; answers its pipeline.
async fn pipeline_of(
    app: &App,
    project: &str,
    forge: &str,
    event: &str,
    payload: &Value,
    id: &str,
) -> Value {
    let r = send_hook(app, project, forge, event, payload, id).await;
    assert_eq!(r.status(), 202, "{id}: {:?}", r.text().await);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let d = app.delivery(project, id).await;
    assert_eq!(d["status"], "created", "{d}");
    app.pipeline(d["pipeline_id"].as_i64().unwrap()).await
}

/// The pipeline of a GitHub pull request from `head` into `main` (`commits`) of project `demo`,
/// from a fork or not; `id` is the delivery's id.
async fn pr_pipeline(app: &App, commits: (&str, &str), fork: bool, id: &str) -> Value {
    let (main, head) = commits;
    let payload = github_pr(main, head, fork);
    pipeline_of(app, "demo", "github", "pull_request", &payload, id).await
}

/// Takes every job the agent is offered, finishing each; answers their specs.
async fn take_all(app: &App, agent: &Agent) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(spec) = app.take(agent, 300).await {
        app.run_job(agent, spec["job_id"].as_i64().unwrap(), "ok\n", "success")
            .await;
        out.push(spec);
    }
    out
}

/// The value of `key` in a job spec, wherever the spec holds it (predefined, the job's own,
/// project and trigger variables), the last one winning.
fn var(spec: &Value, key: &str) -> Option<String> {
    let plan = &spec["plan"];
    [
        &plan["predefined"],
        &plan["variables"],
        &plan["jobs"][0]["predefined"],
        &plan["jobs"][0]["variables"],
        &plan["cli_variables"],
    ]
    .into_iter()
    .filter_map(Value::as_array)
    .flatten()
    .filter(|v| v["key"] == key)
    .filter_map(|v| v["value"].as_str().map(str::to_string))
    .fold(None, |_, v| Some(v))
}

fn job_names(p: &Value) -> Vec<String> {
    p["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap().to_string())
        .collect()
}

/// Asserts that no job spec holds a project variable or a job token.
fn no_secrets(what: &str, specs: &[Value]) {
    assert!(!specs.is_empty(), "{what}: no job");
    for spec in specs {
        let text = spec.to_string();
        for secret in [PLAIN, MASKED, PROTECTED] {
            assert!(!text.contains(secret), "{what}: {secret} in {text}");
        }
        assert_eq!(var(spec, "CI_JOB_TOKEN"), None, "{what}");
        assert_eq!(
            var(spec, "CI_COMMIT_REF_PROTECTED").as_deref(),
            Some("false"),
            "{what}"
        );
    }
}

/// Asserts that the jobs got the unprotected variables (the masked one's value too) and a job
/// token, and not the protected variable (a merge request pipeline is not protected).
fn unprotected_secrets(what: &str, specs: &[Value]) {
    assert!(!specs.is_empty(), "{what}: no job");
    for spec in specs {
        assert_eq!(var(spec, "PLAIN_VAR").as_deref(), Some(PLAIN), "{what}");
        assert_eq!(var(spec, "MASKED_VAR").as_deref(), Some(MASKED), "{what}");
        assert_eq!(var(spec, "PROTECTED_VAR"), None, "{what}");
        assert!(var(spec, "CI_JOB_TOKEN").is_some(), "{what}");
    }
}

/// `main` with the CI file and a `changes` branch one commit ahead: answers (main, head).
fn branches(repo: &Path) -> (String, String) {
    std::fs::write(repo.join(".gitlab-ci.yml"), CI).unwrap();
    git(repo, &["add", "-A"]);
    let main = commit(repo, "base");
    git(repo, &["checkout", "-q", "-b", "changes"]);
    let head = commit(repo, "the change");
    git(repo, &["checkout", "-q", "main"]);
    (main, head)
}

fn commit(repo: &Path, message: &str) -> String {
    git(repo, &["commit", "-q", "--allow-empty", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

/// A GitHub pull request of `head` into `main`; from a fork when `fork`.
fn github_pr(main: &str, head: &str, fork: bool) -> Value {
    let mut p = fixture("github-pull-request-opened.json");
    set(&mut p, "/pull_request/head/sha", json!(head));
    set(&mut p, "/pull_request/base/ref", json!("main"));
    set(&mut p, "/pull_request/base/sha", json!(main));
    if fork {
        set(&mut p, "/pull_request/head/repo/id", json!(999_999));
        set(
            &mut p,
            "/pull_request/head/repo/full_name",
            json!("mallory/Hello-World"),
        );
        set(&mut p, "/pull_request/head/repo/fork", json!(true));
    }
    p
}

/// A Gitea pull request of `head` into `main`; from a fork when `fork`.
fn gitea_pr(main: &str, head: &str, fork: bool) -> Value {
    let mut p = fixture("gitea-pull-request.json");
    set(&mut p, "/pull_request/head/ref", json!("changes"));
    set(&mut p, "/pull_request/head/sha", json!(head));
    set(&mut p, "/pull_request/base/ref", json!("main"));
    set(&mut p, "/pull_request/base/sha", json!(main));
    if fork {
        set(&mut p, "/pull_request/head/repo/id", json!(77));
        set(
            &mut p,
            "/pull_request/head/repo/full_name",
            json!("mallory/repo"),
        );
    }
    p
}

/// A GitLab merge request of `head` into `main`; from a fork when `fork`.
fn gitlab_mr(head: &str, fork: bool) -> Value {
    let mut p = fixture("gitlab-merge-request.json");
    set(&mut p, "/object_attributes/source_branch", json!("changes"));
    set(&mut p, "/object_attributes/target_branch", json!("main"));
    set(&mut p, "/object_attributes/last_commit/id", json!(head));
    if fork {
        set(&mut p, "/object_attributes/source_project_id", json!(15));
        set(
            &mut p,
            "/object_attributes/source/path_with_namespace",
            json!("mallory/awesome_project"),
        );
    }
    p
}

async fn fork_merge_requests_get_no_secrets(b: Backend) {
    let app = spawn(b).await;
    app.project("demo", json!({"variables": variables()})).await;
    let agent = app.register("a", &[]).await;
    let (main, head) = branches(&app.repo);
    let cases = [
        (
            "github",
            "pull_request",
            github_pr(&main, &head, true),
            github_pr(&main, &head, false),
        ),
        (
            "gitea",
            "pull_request",
            gitea_pr(&main, &head, true),
            gitea_pr(&main, &head, false),
        ),
        (
            "gitlab",
            "Merge Request Hook",
            gitlab_mr(&head, true),
            gitlab_mr(&head, false),
        ),
    ];
    for (forge, event, fork, same) in cases {
        let p = pipeline_of(&app, "demo", forge, event, &fork, &format!("{forge}-fork")).await;
        assert_eq!(p["source"], "merge_request_event");
        no_secrets(forge, &take_all(&app, &agent).await);
        // Not even the compiler saw the project's variables.
        assert_eq!(job_names(&p), ["job"], "{forge}");
        assert_eq!(p["fork"]["mode"], "no_secrets", "{forge}: {p}");
        assert_eq!(p["fork"]["secrets"], false, "{forge}: {p}");

        // A merge request from the project's own repository gets them.
        let p = pipeline_of(&app, "demo", forge, event, &same, &format!("{forge}-same")).await;
        assert!(p["fork"].is_null(), "{forge}: {p}");
        assert_eq!(job_names(&p), ["job", "leak"], "{forge}");
        unprotected_secrets(forge, &take_all(&app, &agent).await);
    }
}
both!(fork_merge_requests_get_no_secrets);

async fn fork_pipelines_none_creates_no_pipeline(b: Backend) {
    let app = spawn(b).await;
    app.project(
        "demo",
        json!({"variables": variables(), "fork_pipelines": "none"}),
    )
    .await;
    let (main, head) = branches(&app.repo);
    for (forge, event, payload) in [
        ("github", "pull_request", github_pr(&main, &head, true)),
        ("gitea", "pull_request", gitea_pr(&main, &head, true)),
        ("gitlab", "Merge Request Hook", gitlab_mr(&head, true)),
    ] {
        let r = send_hook(
            &app,
            "demo",
            forge,
            event,
            &payload,
            &format!("{forge}-fork"),
        )
        .await;
        assert_eq!(r.status(), 204, "{forge}");
        let reason = r.headers()["x-gantry-reason"].to_str().unwrap().to_string();
        assert!(reason.contains("fork_pipelines"), "{forge}: {reason}");
    }
    let pipelines = app.json("/api/v1/projects/demo/pipelines").await;
    assert_eq!(pipelines, json!([]));
    assert_eq!(
        app.json("/api/v1/projects/demo").await["fork_pipelines"],
        "none"
    );
    // The project's own merge requests still run.
    let p = pr_pipeline(&app, (&main, &head), false, "same").await;
    assert!(p["fork"].is_null(), "{p}");
}
both!(fork_pipelines_none_creates_no_pipeline);

/// `POST /api/v1/pipelines/{id}/approve` with `token`; answers the status and the body.
async fn approve(app: &App, id: i64, token: &str) -> (u16, Value) {
    let r = app
        .request(Method::POST, &format!("/api/v1/pipelines/{id}/approve"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn approved_fork_pipelines_run_with_secrets(b: Backend) {
    let app = spawn(b).await;
    app.project(
        "demo",
        json!({"variables": variables(), "fork_pipelines": "approve"}),
    )
    .await;
    app.project("other", json!({})).await;
    let agent = app.register("a", &[]).await;
    let (main, head) = branches(&app.repo);

    let p = pr_pipeline(&app, (&main, &head), true, "fork-1").await;
    let id = p["id"].as_i64().unwrap();
    let p = app.pipeline_status(id, "manual").await;
    assert_eq!(p["fork"]["mode"], "approve", "{p}");
    assert_eq!(p["fork"]["secrets"], false, "{p}");
    assert!(
        p["fork"]["waiting"].as_str().unwrap().contains("approve"),
        "{p}"
    );
    for j in p["jobs"].as_array().unwrap() {
        assert_eq!(j["status"], "created", "{p}");
    }
    // The whole pipeline waits: no job is handed out.
    assert_eq!(app.take(&agent, 300).await, None);

    // A job's CI_JOB_TOKEN (of a pipeline of the project's own merge request) cannot approve.
    let own = pr_pipeline(&app, (&main, &head), false, "same").await;
    assert!(own["fork"].is_null(), "{own}");
    let spec = app.take(&agent, 5000).await.expect("the project's own job");
    let job_token = var(&spec, "CI_JOB_TOKEN").expect("a job token");
    assert_eq!(approve(&app, id, &job_token).await.0, 401);
    app.run_job(&agent, spec["job_id"].as_i64().unwrap(), "ok\n", "success")
        .await;
    take_all(&app, &agent).await;
    // Nor a project token of another project.
    let other = create_token(&app, "other", false).await;
    assert_eq!(approve(&app, id, &other).await.0, 403);
    // Nor a read-only token of the project, which reads the pipeline but changes nothing.
    let reader = create_token(&app, "demo", true).await;
    let (status, body) = approve(&app, id, &reader).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap()
            == "this token's scope is read: it cannot approve a fork's pipeline",
        "{body}"
    );
    send(
        app.request(Method::GET, &format!("/api/v1/pipelines/{id}"))
            .bearer_auth(&reader),
        200,
    )
    .await;
    for path in [
        format!("/api/v1/pipelines/{id}/cancel"),
        "/api/v1/projects/demo/pipelines".to_string(),
    ] {
        let r = app
            .request(Method::POST, &path)
            .bearer_auth(&reader)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    assert_eq!(app.pipeline(id).await["status"], "manual");
    assert_eq!(app.take(&agent, 300).await, None);

    // The admin approves: it runs with the project's (unprotected) variables and a job token.
    let (status, approved) = approve(&app, id, crate::common::ADMIN).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["fork"]["secrets"], true, "{approved}");
    assert_eq!(approved["fork"]["approved_by"], "admin", "{approved}");
    assert!(approved["fork"]["waiting"].is_null(), "{approved}");
    let specs = take_all(&app, &agent).await;
    assert_eq!(
        specs.len(),
        1,
        "the jobs the compiler made without the variables"
    );
    unprotected_secrets("approved", &specs);
    app.pipeline_status(id, "success").await;
    // Once only.
    assert_eq!(approve(&app, id, crate::common::ADMIN).await.0, 409);

    // A project token of the project approves too.
    let p = pipeline_of(
        &app,
        "demo",
        "gitlab",
        "Merge Request Hook",
        &gitlab_mr(&head, true),
        "fork-2",
    )
    .await;
    let id = p["id"].as_i64().unwrap();
    app.pipeline_status(id, "manual").await;
    let token = create_token(&app, "demo", false).await;
    let (status, approved) = approve(&app, id, &token).await;
    assert_eq!(status, 200, "{approved}");
    assert!(
        approved["fork"]["approved_by"]
            .as_str()
            .unwrap()
            .starts_with("token "),
        "{approved}"
    );
    unprotected_secrets("approved by a token", &take_all(&app, &agent).await);

    // Canceling a waiting pipeline cancels its jobs.
    let p = pipeline_of(
        &app,
        "demo",
        "gitea",
        "pull_request",
        &gitea_pr(&main, &head, true),
        "fork-3",
    )
    .await;
    let id = p["id"].as_i64().unwrap();
    app.pipeline_status(id, "manual").await;
    send(app.post(&format!("/api/v1/pipelines/{id}/cancel")), 200).await;
    let p = app.pipeline_status(id, "canceled").await;
    assert!(
        p["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["status"] == "canceled"),
        "{p}"
    );
    assert_eq!(approve(&app, id, crate::common::ADMIN).await.0, 409);
}
both!(approved_fork_pipelines_run_with_secrets);

/// A GitLab push of `sha` to `full_ref` (a branch or a tag) of `project`; answers the job specs.
async fn push(app: &App, agent: &Agent, project: &str, full_ref: &str, sha: &str) -> Vec<Value> {
    let tag = full_ref.starts_with("refs/tags/");
    let mut p = fixture(if tag {
        "gitlab-tag-push.json"
    } else {
        "gitlab-push.json"
    });
    set(&mut p, "/ref", json!(full_ref));
    set(&mut p, "/after", json!(sha));
    set(&mut p, "/checkout_sha", json!(sha));
    let event = if tag { "Tag Push Hook" } else { "Push Hook" };
    pipeline_of(
        app,
        project,
        "gitlab",
        event,
        &p,
        &format!("{project}-{full_ref}"),
    )
    .await;
    let specs = take_all(app, agent).await;
    assert!(!specs.is_empty(), "{full_ref}: no job");
    specs
}

/// Whether every job got the protected variable and `CI_COMMIT_REF_PROTECTED=true`; panics when
/// some did and some did not.
fn protected(what: &str, specs: &[Value]) -> bool {
    let got: Vec<bool> = specs
        .iter()
        .map(|s| {
            let var_given = var(s, "PROTECTED_VAR").as_deref() == Some(PROTECTED);
            let flag = var(s, "CI_COMMIT_REF_PROTECTED").as_deref() == Some("true");
            assert_eq!(
                var_given, flag,
                "{what}: the variable and the flag disagree"
            );
            var_given
        })
        .collect();
    assert!(got.iter().all(|&g| g == got[0]), "{what}: {got:?}");
    got[0]
}

async fn only_protected_refs_get_protected_variables(b: Backend) {
    let app = spawn(b).await;
    // Defaults: the default branch is protected, no tag is.
    let demo = app.project("demo", json!({"variables": variables()})).await;
    let rel = app
        .project(
            "rel",
            json!({"variables": variables(), "protected_branches": ["main", "release/*"],
                   "protected_tags": ["v*"]}),
        )
        .await;
    let agent = app.register("a", &[]).await;
    std::fs::write(app.repo.join(".gitlab-ci.yml"), "job:\n  script: [echo]\n").unwrap();
    git(&app.repo, &["add", "-A"]);
    let sha = commit(&app.repo, "base");
    for name in ["v-evil", "v1.0"] {
        git(&app.repo, &["tag", name]);
    }
    for name in ["release/1", "dev"] {
        git(&app.repo, &["branch", name]);
    }

    assert!(protected(
        "demo main",
        &push(&app, &agent, "demo", "refs/heads/main", &sha).await
    ));
    assert!(!protected(
        "demo v-evil",
        &push(&app, &agent, "demo", "refs/tags/v-evil", &sha).await
    ));
    assert!(!protected(
        "demo v1.0",
        &push(&app, &agent, "demo", "refs/tags/v1.0", &sha).await
    ));
    assert!(!protected(
        "demo release/1",
        &push(&app, &agent, "demo", "refs/heads/release/1", &sha).await
    ));

    assert!(protected(
        "rel v1.0",
        &push(&app, &agent, "rel", "refs/tags/v1.0", &sha).await
    ));
    assert!(protected(
        "rel release/1",
        &push(&app, &agent, "rel", "refs/heads/release/1", &sha).await
    ));
    assert!(protected(
        "rel main",
        &push(&app, &agent, "rel", "refs/heads/main", &sha).await
    ));
    assert!(!protected(
        "rel dev",
        &push(&app, &agent, "rel", "refs/heads/dev", &sha).await
    ));

    // The API shows the settings.
    assert_eq!(demo["protected_branches"], json!(["main"]));
    assert_eq!(demo["protected_tags"], json!([]));
    assert_eq!(rel["protected_branches"], json!(["main", "release/*"]));
    assert_eq!(
        app.json("/api/v1/projects/rel").await["protected_tags"],
        json!(["v*"])
    );
    // A pattern that is not a ref name is refused, with the setting named.
    let r = send(
        app.post("/api/v1/projects")
            .json(&json!({"name": "bad", "repo_url": "/x", "protected_tags": ["v[0-9]*"]})),
        400,
    )
    .await;
    let e = r.json::<Value>().await.unwrap();
    assert!(
        e["error"].as_str().unwrap().starts_with("protected_tags"),
        "{e}"
    );
    // The OpenAPI document knows the settings.
    let doc = app.json("/api/v1/openapi.json").await;
    let props = &doc["components"]["schemas"]["NewProject"]["properties"];
    for field in ["fork_pipelines", "protected_branches", "protected_tags"] {
        assert!(!props[field].is_null(), "{field}: {props}");
    }
    assert!(!doc["paths"]["/api/v1/pipelines/{id}/approve"]["post"].is_null());
}
both!(only_protected_refs_get_protected_variables);

async fn fork_pipelines_include_no_other_project(b: Backend) {
    let app = spawn(b).await;
    app.project("demo", json!({})).await;
    app.project("shared", json!({"include_allowed_from": ["demo"]}))
        .await;
    let agent = app.register("a", &[]).await;
    std::fs::create_dir_all(app.repo.join("templates")).unwrap();
    std::fs::write(
        app.repo.join("templates/build.yml"),
        "shared_job:\n  script: [echo private]\n  rules:\n    - when: always\n",
    )
    .unwrap();
    std::fs::write(
        app.repo.join(".gitlab-ci.yml"),
        "include:\n  - project: shared\n    ref: main\n    file: /templates/build.yml\n",
    )
    .unwrap();
    git(&app.repo, &["add", "-A"]);
    let main = commit(&app.repo, "base");
    git(&app.repo, &["checkout", "-q", "-b", "changes"]);
    let head = commit(&app.repo, "the change");
    git(&app.repo, &["checkout", "-q", "main"]);

    let p = pr_pipeline(&app, (&main, &head), true, "fork").await;
    assert_eq!(p["status"], "failed", "{p}");
    let errors = p["errors"].to_string();
    assert!(errors.contains("fork"), "{errors}");
    assert_eq!(p["errors"][0]["file"], ".gitlab-ci.yml", "{p}");
    assert_eq!(app.take(&agent, 300).await, None);

    // The project's own merge request includes the file.
    let p = pr_pipeline(&app, (&main, &head), false, "same").await;
    assert_eq!(job_names(&p), ["shared_job"], "{p}");
}
both!(fork_pipelines_include_no_other_project);

/// As on GitLab, the caches of protected and unprotected refs are kept apart: the server gives
/// every cache key (and fallback key) the suffix `-protected` or `-non_protected`, so a pipeline
/// of an unprotected ref (a fork's merge request, a pushed tag) never writes a cache that a
/// protected pipeline restores; `cache:unprotect: true` shares the `-non_protected` one.
async fn caches_of_protected_and_unprotected_refs_are_apart(b: Backend) {
    let app = spawn(b).await;
    app.project("demo", json!({})).await;
    let agent = app.register("a", &[]).await;
    std::fs::write(
        app.repo.join(".gitlab-ci.yml"),
        "job:\n  script: [echo]\n  cache:\n    - key: deps\n      paths: [v/]\n      \
         fallback_keys: [old]\n    - key: shared\n      paths: [s/]\n      unprotect: true\n",
    )
    .unwrap();
    git(&app.repo, &["add", "-A"]);
    let sha = commit(&app.repo, "base");
    git(&app.repo, &["branch", "dev"]);
    let suffixes = |specs: &[Value]| -> Vec<String> {
        specs[0]["plan"]["jobs"][0]["cache"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["key_suffix"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let main = push(&app, &agent, "demo", "refs/heads/main", &sha).await;
    assert_eq!(suffixes(&main), ["-protected", "-non_protected"]);
    let dev = push(&app, &agent, "demo", "refs/heads/dev", &sha).await;
    assert_eq!(suffixes(&dev), ["-non_protected", "-non_protected"]);
}
both!(caches_of_protected_and_unprotected_refs_are_apart);

/// A fork's pipeline file cannot redirect the project's own `notify:` rules: they are expanded
/// with the project's variables only, while the file's rules see the fork's variables.
async fn fork_files_cannot_redirect_the_projects_notifications(b: Backend) {
    let project_hook = Recorder::start(0).await;
    let fork_hook = Recorder::start(0).await;
    let app = spawn(b).await;
    app.project(
        "demo",
        json!({
            "variables": [{"key": "HOOK_URL", "value": project_hook.url, "masked": true}],
            "notify": [{"on": ["pipeline_failed"], "webhook": {"url": "$HOOK_URL"}}],
        }),
    )
    .await;
    let agent = app.register("a", &[]).await;
    let (main, _) = branches(&app.repo);
    // The fork's file points `HOOK_URL` at its own server, and adds a rule of its own.
    git(&app.repo, &["checkout", "-q", "changes"]);
    let ci = format!(
        "variables:\n  HOOK_URL: {}\n  MINE: {}\nnotify:\n  - on: [pipeline_failed]\n    \
         webhook: {{url: $MINE}}\njob:\n  script: [exit 1]\n  rules:\n    - when: always\n",
        fork_hook.url, fork_hook.url
    );
    std::fs::write(app.repo.join(".gitlab-ci.yml"), ci).unwrap();
    git(&app.repo, &["add", "-A"]);
    let head = commit(&app.repo, "the fork's change");
    git(&app.repo, &["checkout", "-q", "main"]);

    let p = pr_pipeline(&app, (&main, &head), true, "fork-notify").await;
    let spec = app.take(&agent, 300).await.expect("the fork's job");
    app.run_job(&agent, spec["job_id"].as_i64().unwrap(), "no\n", "failed")
        .await;
    app.pipeline_status(p["id"].as_i64().unwrap(), "failed")
        .await;
    // One message each: the project's rule reached the project's hook, the file's the fork's.
    let project_seen = project_hook.wait_for(1).await;
    let fork_seen = fork_hook.wait_for(1).await;
    assert_eq!(project_seen[0].1["event"], "pipeline_failed");
    assert_eq!(fork_seen[0].1["event"], "pipeline_failed");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(project_hook.seen().len(), 1);
    assert_eq!(fork_hook.seen().len(), 1, "{:?}", fork_hook.seen());
}
both!(fork_files_cannot_redirect_the_projects_notifications);
