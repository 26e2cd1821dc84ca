//! Forge events as GitLab reads them: each forge's own example payload (`forges/`, sources in
//! `forges/SOURCES.md`), correctly signed, and the predefined variables of the pipeline it creates.
//! Only commit SHAs, refs and branch names are changed, so that the server fetches the test
//! repository.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::common::{
    Agent, App, Backend, eventually, fixture, git, git_command, send_hook, set, spawn, spawn_with,
};

const ZEROS: &str = "0000000000000000000000000000000000000000";

/// One job that runs in every pipeline, merge request pipelines included.
const CI: &str = "job:\n  script: [echo]\n  rules:\n    - when: always\n";

/// Sends `payload` to project `demo` as forge `forge`'s event `event`, signed.
async fn send(app: &App, forge: &str, event: &str, payload: &Value, id: &str) -> reqwest::Response {
    send_hook(app, "demo", forge, event, payload, id).await
}

/// Sends and waits until the delivery is processed; answers the delivery.
async fn deliver(app: &App, forge: &str, event: &str, payload: &Value, id: &str) -> Value {
    let r = send(app, forge, event, payload, id).await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    app.delivery("demo", id).await
}

/// Takes the pipeline's one job and answers its predefined variables (the job's over the
/// pipeline's), then finishes it.
async fn variables(app: &App, agent: &Agent) -> HashMap<String, String> {
    let spec = app.take(agent, 5000).await.expect("a job");
    let mut out = HashMap::new();
    for v in spec["plan"]["predefined"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spec["plan"]["jobs"][0]["predefined"].as_array().unwrap())
    {
        out.insert(
            v["key"].as_str().unwrap().to_string(),
            v["value"].as_str().unwrap().to_string(),
        );
    }
    app.run_job(agent, spec["job_id"].as_i64().unwrap(), "ok\n", "success")
        .await;
    out
}

/// Commits `files` with message `message`, dated 2011 (so that a pipeline's time is never the
/// commit's); answers the SHA.
fn commit(repo: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (name, content) in files {
        std::fs::write(repo.join(name), content).unwrap();
    }
    git(repo, &["add", "-A"]);
    let ok = git_command(repo)
        .args(["commit", "-q", "--allow-empty", "-m", message])
        .env("GIT_AUTHOR_DATE", "2011-12-12T14:27:31+02:00")
        .env("GIT_COMMITTER_DATE", "2011-12-12T14:27:31+02:00")
        .status()
        .unwrap()
        .success();
    assert!(ok);
    git(repo, &["rev-parse", "HEAD"])
}

/// An annotated tag `name` on HEAD with `message`; answers the tag object's SHA.
fn annotated_tag(repo: &Path, name: &str, message: &str) -> String {
    git(repo, &["tag", "-a", name, "-m", message]);
    git(repo, &["rev-parse", name])
}

async fn annotated_tags_run_the_peeled_commit(b: Backend) {
    let app = spawn(b).await;
    app.project("demo", json!({})).await;
    let agent = app.register("a", &[]).await;
    let sha = commit(&app.repo, &[(".gitlab-ci.yml", CI)], "the commit's message");

    // GitLab: `after` is the tag object, `checkout_sha` the commit.
    let tag = annotated_tag(
        &app.repo,
        "v1.0.0",
        "Release 1.0.0\n\nThe tag's own message",
    );
    assert_ne!(tag, sha);
    let mut p = fixture("gitlab-tag-push.json");
    set(&mut p, "/after", json!(tag));
    set(&mut p, "/checkout_sha", json!(sha));
    let d = deliver(&app, "gitlab", "Tag Push Hook", &p, "gl-tag").await;
    assert_eq!(d["status"], "created", "{d}");
    let pipeline = app.pipeline(d["pipeline_id"].as_i64().unwrap()).await;
    assert_eq!(pipeline["sha"], sha.as_str());
    assert_eq!(pipeline["tag"], true);
    let v = variables(&app, &agent).await;
    assert_eq!(v["CI_COMMIT_SHA"], sha);
    assert_eq!(v["CI_COMMIT_TAG"], "v1.0.0");
    assert_eq!(
        v["CI_COMMIT_TAG_MESSAGE"],
        "Release 1.0.0\n\nThe tag's own message"
    );
    assert_eq!(v["CI_COMMIT_MESSAGE"], "the commit's message");
    assert_eq!(v["CI_COMMIT_BEFORE_SHA"], ZEROS);
    assert_eq!(v["GITLAB_USER_ID"], "1");
    assert!(!v.contains_key("CI_COMMIT_BRANCH"));

    // GitHub: `after` is the tag object, `head_commit.id` the commit.
    let tag = annotated_tag(&app.repo, "simple-tag", "A GitHub tag");
    let mut p = fixture("github-push.json");
    set(&mut p, "/ref", json!("refs/tags/simple-tag"));
    set(&mut p, "/after", json!(tag));
    set(&mut p, "/head_commit/id", json!(sha));
    let d = deliver(&app, "github", "push", &p, "gh-tag").await;
    assert_eq!(d["status"], "created", "{d}");
    assert_eq!(d["event"], "tag_push");
    let v = variables(&app, &agent).await;
    assert_eq!(v["CI_COMMIT_SHA"], sha);
    assert_eq!(v["CI_COMMIT_TAG"], "simple-tag");
    assert_eq!(v["CI_COMMIT_TAG_MESSAGE"], "A GitHub tag");
    assert_eq!(v["GITLAB_USER_LOGIN"], "Codertocat");
    assert_eq!(v["GITLAB_USER_ID"], "21031067");

    // A lightweight tag has no message.
    git(&app.repo, &["tag", "light"]);
    let mut p = fixture("gitlab-tag-push.json");
    set(&mut p, "/ref", json!("refs/tags/light"));
    set(&mut p, "/after", json!(sha));
    set(&mut p, "/checkout_sha", json!(sha));
    let d = deliver(&app, "gitlab", "Tag Push Hook", &p, "gl-light").await;
    assert_eq!(d["status"], "created", "{d}");
    let v = variables(&app, &agent).await;
    assert_eq!(v["CI_COMMIT_TAG"], "light");
    assert_eq!(v["CI_COMMIT_TAG_MESSAGE"], "");

    // GitHub's `create` event comes with the tag's push: it runs no second pipeline.
    let mut p = fixture("github-create.json");
    set(&mut p, "/ref", json!("simple-tag"));
    let r = send(&app, "github", "create", &p, "gh-create").await;
    assert_eq!(r.status(), 204);
    let all = app.json("/api/v1/projects/demo/deliveries").await;
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
}
both!(annotated_tags_run_the_peeled_commit);

async fn users_and_creation_time_come_from_the_event(b: Backend) {
    let app = spawn(b).await;
    app.project("demo", json!({})).await;
    let agent = app.register("a", &[]).await;
    let parent = commit(&app.repo, &[("README", "x")], "first");
    let sha = commit(&app.repo, &[(".gitlab-ci.yml", CI)], "fixed readme");

    let mut p = fixture("gitlab-push.json");
    set(&mut p, "/ref", json!("refs/heads/main"));
    set(&mut p, "/before", json!(parent));
    set(&mut p, "/after", json!(sha));
    set(&mut p, "/checkout_sha", json!(sha));
    let d = deliver(&app, "gitlab", "Push Hook", &p, "gl-push").await;
    assert_eq!(d["status"], "created", "{d}");
    let pipeline = app.pipeline(d["pipeline_id"].as_i64().unwrap()).await;
    let v = variables(&app, &agent).await;
    assert_eq!(v["GITLAB_USER_ID"], "4");
    assert_eq!(v["GITLAB_USER_LOGIN"], "jsmith");
    assert_eq!(v["GITLAB_USER_NAME"], "John Smith");
    assert_eq!(v["GITLAB_USER_EMAIL"], "john@example.com");
    assert_eq!(v["CI_COMMIT_BEFORE_SHA"], parent);
    assert_eq!(v["CI_COMMIT_BRANCH"], "main");
    // The pipeline's creation time, to the second, in UTC; the commit's is 2011.
    let created = pipeline["created_at"].as_str().unwrap();
    assert_eq!(v["CI_PIPELINE_CREATED_AT"], format!("{}Z", &created[..19]));
    assert!(v["CI_COMMIT_TIMESTAMP"].starts_with("2011-12-12"), "{v:?}");

    // Gitea: the pusher.
    let sha = commit(&app.repo, &[("README", "y")], "Webhooks Yay!");
    let mut p = fixture("gitea-push.json");
    set(&mut p, "/ref", json!("refs/heads/main"));
    set(&mut p, "/after", json!(sha));
    let d = deliver(&app, "gitea", "push", &p, "gt-push").await;
    assert_eq!(d["status"], "created", "{d}");
    let v = variables(&app, &agent).await;
    assert_eq!(v["GITLAB_USER_ID"], "1");
    assert_eq!(v["GITLAB_USER_LOGIN"], "gitea");
    assert_eq!(v["GITLAB_USER_NAME"], "Gitea");
    assert_eq!(v["GITLAB_USER_EMAIL"], "someone@gitea.io");
    assert_eq!(v["CI_COMMIT_SHA"], sha);
}
both!(users_and_creation_time_come_from_the_event);

async fn ci_skip_creates_no_pipeline(b: Backend) {
    let app = spawn(b).await;
    app.project("demo", json!({})).await;
    let sha = commit(&app.repo, &[(".gitlab-ci.yml", CI)], "a change");
    // `git push -o ci.skip`, as GitLab's push payload carries it.
    let mut p = fixture("gitlab-push.json");
    set(&mut p, "/ref", json!("refs/heads/main"));
    set(&mut p, "/after", json!(sha));
    set(&mut p, "/checkout_sha", json!(sha));
    p["push_options"] = json!({"ci": {"skip": true}});
    let d = deliver(&app, "gitlab", "Push Hook", &p, "skip-option").await;
    assert_eq!(d["status"], "skipped", "{d}");
    assert!(d["pipeline_id"].is_null());
    assert!(d["reason"].as_str().unwrap().contains("ci.skip"), "{d}");
    // `[ci skip]` and `[skip ci]` in the commit message, in any case.
    for (i, message) in ["docs only [ci skip]", "[Skip CI] typo", "wip [skip-ci]"]
        .iter()
        .enumerate()
    {
        let sha = commit(&app.repo, &[], message);
        let mut p = fixture("gitlab-push.json");
        set(&mut p, "/ref", json!("refs/heads/main"));
        set(&mut p, "/after", json!(sha));
        set(&mut p, "/checkout_sha", json!(sha));
        let d = deliver(&app, "gitlab", "Push Hook", &p, &format!("skip-{i}")).await;
        assert_eq!(d["status"], "skipped", "{message}: {d}");
        assert!(d["reason"].as_str().unwrap().contains("ci skip"), "{d}");
    }
    // Without either, the same commit creates a pipeline (pushed anew: the same push again
    // would be a replay, a duplicate of the first).
    let d = deliver(
        &app,
        "gitlab",
        "Push Hook",
        &{
            let mut p = fixture("gitlab-push.json");
            set(&mut p, "/before", json!("2".repeat(40)));
            set(&mut p, "/ref", json!("refs/heads/main"));
            set(&mut p, "/after", json!(sha));
            set(&mut p, "/checkout_sha", json!(sha));
            p
        },
        "no-skip",
    )
    .await;
    assert_eq!(d["status"], "created", "{d}");
    let all = app.json("/api/v1/projects/demo/pipelines").await;
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
}
both!(ci_skip_creates_no_pipeline);

/// `main` with a base commit, a `feature` branch with one commit on it, and `main` moved on after
/// the branch: answers (merge base, feature head, main head).
fn branches(repo: &Path, feature: &str) -> (String, String, String) {
    let base = commit(repo, &[(".gitlab-ci.yml", CI)], "base");
    git(repo, &["checkout", "-q", "-b", feature]);
    let head = commit(repo, &[("feature.txt", "f")], "the feature");
    git(repo, &["checkout", "-q", "main"]);
    let main = commit(repo, &[("main.txt", "m")], "main moves on");
    (base, head, main)
}

async fn gitlab_merge_requests(b: Backend) {
    let app = spawn(b).await;
    app.project("demo", json!({})).await;
    let agent = app.register("a", &[]).await;
    let (base, head, main) = branches(&app.repo, "ms-viewport");
    let mut p = fixture("gitlab-merge-request.json");
    set(&mut p, "/object_attributes/target_branch", json!("main"));
    set(&mut p, "/object_attributes/last_commit/id", json!(head));
    let d = deliver(&app, "gitlab", "Merge Request Hook", &p, "mr").await;
    assert_eq!(d["status"], "created", "{d}");
    let pipeline = app.pipeline(d["pipeline_id"].as_i64().unwrap()).await;
    assert_eq!(pipeline["source"], "merge_request_event");
    assert_eq!(pipeline["ref"], "ms-viewport");
    let v = variables(&app, &agent).await;
    assert_eq!(v["CI_COMMIT_SHA"], head);
    assert_eq!(v["CI_PIPELINE_SOURCE"], "merge_request_event");
    assert_eq!(v["CI_MERGE_REQUEST_REF_PATH"], "refs/merge-requests/1/head");
    assert_eq!(v["CI_COMMIT_BEFORE_SHA"], ZEROS);
    assert_eq!(v["CI_MERGE_REQUEST_DIFF_BASE_SHA"], base);
    assert_ne!(base, main);
    // Only merged-results pipelines have these.
    assert_eq!(v["CI_MERGE_REQUEST_TARGET_BRANCH_SHA"], "");
    assert_eq!(v["CI_MERGE_REQUEST_SOURCE_BRANCH_SHA"], "");
    assert_eq!(v["CI_MERGE_REQUEST_IID"], "1");
    assert_eq!(v["CI_MERGE_REQUEST_ID"], "99");
    assert_eq!(v["CI_MERGE_REQUEST_TITLE"], "MS-Viewport");
    assert_eq!(v["CI_MERGE_REQUEST_DESCRIPTION"], "");
    assert_eq!(v["CI_MERGE_REQUEST_LABELS"], "API");
    assert_eq!(v["CI_MERGE_REQUEST_ASSIGNEES"], "user1");
    assert_eq!(v["CI_MERGE_REQUEST_SOURCE_BRANCH_NAME"], "ms-viewport");
    assert_eq!(v["CI_MERGE_REQUEST_TARGET_BRANCH_NAME"], "main");
    assert_eq!(v["CI_MERGE_REQUEST_EVENT_TYPE"], "detached");
    assert_eq!(
        v["CI_MERGE_REQUEST_PROJECT_PATH"],
        "awesome_space/awesome_project"
    );
    assert_eq!(
        v["CI_MERGE_REQUEST_PROJECT_URL"],
        "http://example.com/awesome_space/awesome_project"
    );
    assert_eq!(v["CI_MERGE_REQUEST_PROJECT_ID"], "14");
    assert_eq!(v["CI_MERGE_REQUEST_SOURCE_PROJECT_ID"], "14");
    assert_eq!(v["GITLAB_USER_ID"], "1");
    assert_eq!(v["GITLAB_USER_LOGIN"], "root");
    assert_eq!(v["GITLAB_USER_NAME"], "Administrator");
    assert_eq!(v["GITLAB_USER_EMAIL"], "admin@example.com");
    assert_eq!(v["CI_COMMIT_REF_NAME"], "ms-viewport");
    assert!(!v.contains_key("CI_COMMIT_BRANCH"));
}
both!(gitlab_merge_requests);

async fn github_and_gitea_pull_requests_are_merge_request_pipelines(b: Backend) {
    let app = spawn(b).await;
    app.project("demo", json!({})).await;
    let agent = app.register("a", &[]).await;
    let (base, head, main) = branches(&app.repo, "changes");
    let mut p = fixture("github-pull-request-opened.json");
    set(&mut p, "/pull_request/head/sha", json!(head));
    set(&mut p, "/pull_request/base/ref", json!("main"));
    set(&mut p, "/pull_request/base/sha", json!(main));
    let d = deliver(&app, "github", "pull_request", &p, "gh-pr").await;
    assert_eq!(d["status"], "created", "{d}");
    let pipeline = app.pipeline(d["pipeline_id"].as_i64().unwrap()).await;
    assert_eq!(pipeline["source"], "merge_request_event");
    let v = variables(&app, &agent).await;
    assert_eq!(v["CI_PIPELINE_SOURCE"], "merge_request_event");
    assert_eq!(v["CI_COMMIT_SHA"], head);
    assert_eq!(v["CI_COMMIT_BEFORE_SHA"], ZEROS);
    assert_eq!(v["CI_MERGE_REQUEST_IID"], "2");
    assert_eq!(v["CI_MERGE_REQUEST_REF_PATH"], "refs/pull/2/head");
    assert_eq!(
        v["CI_MERGE_REQUEST_TITLE"],
        "Update the README with new information."
    );
    assert_eq!(
        v["CI_MERGE_REQUEST_DESCRIPTION"],
        "This is a pretty simple change that we need to pull into master."
    );
    assert_eq!(v["CI_MERGE_REQUEST_LABELS"], "bug");
    assert_eq!(v["CI_MERGE_REQUEST_ASSIGNEES"], "Codertocat");
    assert_eq!(v["CI_MERGE_REQUEST_SOURCE_BRANCH_NAME"], "changes");
    assert_eq!(v["CI_MERGE_REQUEST_TARGET_BRANCH_NAME"], "main");
    assert_eq!(v["CI_MERGE_REQUEST_DIFF_BASE_SHA"], base);
    assert_eq!(v["CI_MERGE_REQUEST_TARGET_BRANCH_SHA"], "");
    assert_eq!(v["CI_MERGE_REQUEST_SOURCE_BRANCH_SHA"], "");
    assert_eq!(v["CI_MERGE_REQUEST_PROJECT_PATH"], "Codertocat/Hello-World");
    assert_eq!(
        v["CI_MERGE_REQUEST_PROJECT_URL"],
        "https://github.com/Codertocat/Hello-World"
    );
    assert_eq!(v["CI_MERGE_REQUEST_PROJECT_ID"], "186853002");
    assert_eq!(v["GITLAB_USER_LOGIN"], "Codertocat");
    assert_eq!(v["GITLAB_USER_ID"], "21031067");
    assert!(!v.contains_key("CI_COMMIT_BRANCH"));

    // Gitea names the merge base itself.
    let mut p = fixture("gitea-pull-request.json");
    set(&mut p, "/pull_request/head/ref", json!("changes"));
    set(&mut p, "/pull_request/head/sha", json!(head));
    set(&mut p, "/pull_request/base/ref", json!("main"));
    set(&mut p, "/pull_request/base/sha", json!(main));
    set(&mut p, "/pull_request/merge_base", json!(base));
    let d = deliver(&app, "gitea", "pull_request", &p, "gt-pr").await;
    assert_eq!(d["status"], "created", "{d}");
    let v = variables(&app, &agent).await;
    assert_eq!(v["CI_PIPELINE_SOURCE"], "merge_request_event");
    assert_eq!(v["CI_MERGE_REQUEST_IID"], "12");
    assert_eq!(v["CI_MERGE_REQUEST_REF_PATH"], "refs/pull/12/head");
    assert_eq!(v["CI_MERGE_REQUEST_TITLE"], "Fix bug");
    assert_eq!(v["CI_MERGE_REQUEST_DESCRIPTION"], "fixes bug #2");
    assert_eq!(v["CI_MERGE_REQUEST_MILESTONE"], "Milestone Title");
    assert_eq!(v["CI_MERGE_REQUEST_ASSIGNEES"], "user1");
    assert_eq!(v["CI_MERGE_REQUEST_DIFF_BASE_SHA"], base);
    assert_eq!(v["CI_MERGE_REQUEST_PROJECT_PATH"], "test/repo");
    assert_eq!(v["GITLAB_USER_LOGIN"], "user1");
    assert_eq!(v["GITLAB_USER_ID"], "2");
}
both!(github_and_gitea_pull_requests_are_merge_request_pipelines);

fn quick_retries(c: &mut gantry_server::Config) {
    c.delivery_retry_backoff = Duration::from_millis(20);
    c.delivery_retry_max_backoff = Duration::from_millis(100);
}

async fn a_missing_ref_fails_at_once(b: Backend) {
    let app = spawn_with(b, quick_retries).await;
    app.project("demo", json!({})).await;
    commit(&app.repo, &[(".gitlab-ci.yml", CI)], "base");
    // A push of a commit and a branch the repository does not have.
    let mut p = fixture("gitlab-push.json");
    set(&mut p, "/ref", json!("refs/heads/gone"));
    let d = deliver(&app, "gitlab", "Push Hook", &p, "gone").await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["attempts"], 0, "not retried: {d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("refs/heads/gone"), "{reason}");
    assert!(!reason.contains("gave up"), "{reason}");
}
both!(a_missing_ref_fails_at_once);

async fn an_unreachable_repository_is_retried(b: Backend) {
    let app = spawn_with(b, |c| {
        quick_retries(c);
        c.delivery_max_attempts = 10_000;
    })
    .await;
    app.project("demo", json!({})).await;
    let sha = commit(&app.repo, &[(".gitlab-ci.yml", CI)], "base");
    let away = app.repo.with_file_name("moved-away");
    std::fs::rename(&app.repo, &away).unwrap();
    let mut p = fixture("gitlab-push.json");
    set(&mut p, "/ref", json!("refs/heads/main"));
    set(&mut p, "/after", json!(sha));
    set(&mut p, "/checkout_sha", json!(sha));
    let r = send(&app, "gitlab", "Push Hook", &p, "unreachable").await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    // Retried while the repository cannot be reached…
    eventually(|| async {
        let list = app.json("/api/v1/projects/demo/deliveries").await;
        let d = list
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)?
            .clone();
        assert_eq!(d["status"], "pending", "{d}");
        (d["attempts"].as_i64().unwrap() >= 2).then_some(())
    })
    .await;
    // …and created once it can.
    std::fs::rename(&away, &app.repo).unwrap();
    let d = app.delivery("demo", id).await;
    assert_eq!(d["status"], "created", "{d}");
}
both!(an_unreachable_repository_is_retried);

/// A final commit status names the gate's outcome: `...; gate failed: coverage 71.2 < 75` when it
/// failed, `...; gate passed` when it passed.
async fn commit_statuses_name_the_gate(b: Backend) {
    let (forge_url, seen) = crate::flow::recorder().await;
    let app = spawn(b).await;
    app.project(
        "demo",
        json!({"forge": {"kind": "github", "api_url": forge_url, "token": "gh-token", "project": "owner/repo"}}),
    )
    .await;
    let agent = app.register("a", &[]).await;
    let ci = "stages: [test, gate]\nunit:\n  stage: test\n  script: [make]\n  coverage: '/(\\d+)%/'\n\
              quality:\n  stage: gate\n  gate:\n    coverage: '>= 75'\n";
    let mut parent = ZEROS.to_owned();
    for (i, (cov, state, description)) in [
        (
            71.2,
            "failure",
            "the pipeline is failed; gate failed: coverage 71.2 < 75",
        ),
        (80.0, "success", "the pipeline is success; gate passed"),
    ]
    .into_iter()
    .enumerate()
    {
        let sha = app.commit(&[(".gitlab-ci.yml", &format!("# {i}\n{ci}"))]);
        let pipeline = crate::reports::push_after(&app, "demo", "main", &parent, &sha).await;
        parent = sha.clone();
        let unit = crate::reports::take_in(&app, &agent, pipeline, "unit").await;
        let body = json!({"outcome": "success", "exit_code": 0, "coverage": cov});
        let unit = unit["job_id"].as_i64().unwrap();
        let r = crate::reports::finish_with(&app, &agent, unit, "x\n", body).await;
        assert_eq!(r.status(), 200);
        // The fake agent evaluates the gate on the inputs its spec carries, as the runtime does.
        let gate = crate::reports::take_in(&app, &agent, pipeline, "quality").await;
        let inputs: gantry_reports::Reports =
            serde_json::from_value(gate["gate_reports"].clone()).unwrap();
        let conditions = [gantry_pipeline::gate::Condition::parse("coverage", ">= 75").unwrap()];
        let outcome = gantry_reports::evaluate(&conditions, &inputs, None);
        let body = json!({
            "outcome": if outcome.passed { "success" } else { "failed" },
            "exit_code": 0, "gate": outcome,
        });
        let gate = gate["job_id"].as_i64().unwrap();
        let r = crate::reports::finish_with(&app, &agent, gate, "x\n", body).await;
        assert_eq!(r.status(), 200);
        let posted = eventually(|| async {
            let s = seen.lock().unwrap().clone();
            s.into_iter()
                .find(|(p, _, b)| p.ends_with(&sha) && b["state"] == state)
        })
        .await;
        assert_eq!(posted.2["description"], description, "{}", posted.2);
    }
}
both!(commit_statuses_name_the_gate);
