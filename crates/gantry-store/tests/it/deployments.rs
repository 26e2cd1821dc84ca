//! Deployments (issue 19): recorded once per job, their status and end read from their job
//! (finish, lease expiry, cancel), environments with their last and current deployments, the
//! rollback's reads and its atomic mark.

use gantry_api::deployments::DeploymentStatus;
use gantry_store::{AgentRecord, JobRecord, JobResult, JobStatus, NewDeployment, Store};

use crate::harness::{Harness, agent, create, page, project};
use crate::records::job;

store_tests!(
    a_deployment_is_recorded_once_and_ends_with_its_job,
    a_killed_agent_leaves_a_failed_deployment,
    environments_list_their_last_and_current_deployments,
    the_last_success_before_and_the_rolled_back_mark,
);

/// The deployment of claimed `job` of project `project_id` to `environment`, as the server
/// records it at the claim.
fn deployment(project_id: i64, job: &JobRecord, environment: &str, at: i64) -> NewDeployment {
    NewDeployment {
        project_id,
        environment: environment.to_owned(),
        url: Some(format!("https://{}.example", environment.replace('/', "-"))),
        tier: Some("production".to_owned()),
        job_id: job.id,
        pipeline_id: job.pipeline_id,
        job_name: job.name.clone(),
        sha: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        git_ref: "main".to_owned(),
        triggered_by: "push by alice".to_owned(),
        variables: r#"[{"key":"TOKEN","value":"[MASKED]","masked":true}]"#.to_owned(),
        artifacts: r#"["build"]"#.to_owned(),
        created_at: at,
        rollback_of: None,
    }
}

/// How a job ended, with its measurements.
fn ended(status: JobStatus, at: i64, measurements: Option<&str>) -> JobResult {
    JobResult {
        measurements: measurements.map(str::to_owned),
        ..crate::done(status, at)
    }
}

/// Claims the next job of project `project_id` on `agent` and records its deployment to
/// `environment`: the job and the deployment's id.
async fn deploy(
    s: &dyn Store,
    project_id: i64,
    agent: &AgentRecord,
    environment: &str,
    at: i64,
) -> (JobRecord, i64) {
    let j = s.claim(agent, at, at + 60_000).await.unwrap().unwrap();
    let id = s
        .record_deployment(&deployment(project_id, &j, environment, at))
        .await
        .unwrap();
    (j, id)
}

/// Deploys the next job and ends it `status`.
async fn deployed(
    s: &dyn Store,
    project_id: i64,
    agent: &AgentRecord,
    environment: &str,
    (at, status): (i64, JobStatus),
) -> i64 {
    let (j, id) = deploy(s, project_id, agent, environment, at).await;
    s.finish(j.id, agent.id, &ended(status, at + 1, None))
        .await
        .unwrap();
    id
}

/// A pipeline of `n` jobs in project `project_id`.
async fn jobs(s: &dyn Store, project_id: i64, n: i64) {
    let jobs = (0..n).map(|i| job(&format!("deploy-{i}"), i, 2_000 + i));
    create(s, project_id, jobs.collect()).await;
}

async fn a_deployment_is_recorded_once_and_ends_with_its_job(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    jobs(s, p.id, 4).await;
    let a = agent(s, "a", &[], true).await;
    let thief = agent(s, "thief", &[], true).await;

    let (j, id) = deploy(s, p.id, &a, "production", 3_000).await;
    let d = s.deployment(id).await.unwrap().unwrap();
    assert_eq!(d.status, DeploymentStatus::Running);
    assert_eq!(
        (
            d.project_id,
            d.project_name.as_str(),
            d.environment.as_str()
        ),
        (p.id, "p", "production")
    );
    assert_eq!(
        (d.job_id, d.pipeline_id, d.job_name.as_str()),
        (j.id, j.pipeline_id, "deploy-0")
    );
    assert_eq!(d.url.as_deref(), Some("https://production.example"));
    assert_eq!(d.tier.as_deref(), Some("production"));
    assert_eq!(
        (d.git_ref.as_str(), d.triggered_by.as_str()),
        ("main", "push by alice")
    );
    assert_eq!(
        d.variables,
        r#"[{"key":"TOKEN","value":"[MASKED]","masked":true}]"#
    );
    assert_eq!(d.artifacts, r#"["build"]"#);
    assert_eq!((d.created_at, d.finished_at), (3_000, None));
    assert_eq!((d.rollback_of, d.rolled_back_by), (None, None));
    assert_eq!(d.measurements, "[]");

    // Recording it again (a claim answered twice) keeps the first.
    let mut again = deployment(p.id, &j, "staging", 9_000);
    again.triggered_by = "later".to_owned();
    assert_eq!(s.record_deployment(&again).await.unwrap(), id);
    assert_eq!(s.job_deployment(j.id).await.unwrap().unwrap(), d);
    assert_eq!(
        s.deployments(p.id, "staging", page(1, 10))
            .await
            .unwrap()
            .total,
        0
    );

    // A refused finish stores no measurements; the job's own finish stores them with it.
    let m = r#"[{"kind":"http","check":"u","value":200.0}]"#;
    assert!(
        s.finish(
            j.id,
            thief.id,
            &ended(JobStatus::Success, 4_000, Some("[1]"))
        )
        .await
        .is_err()
    );
    assert_eq!(s.deployment(id).await.unwrap().unwrap().measurements, "[]");
    s.finish(j.id, a.id, &ended(JobStatus::Success, 4_000, Some(m)))
        .await
        .unwrap();
    let d = s.deployment(id).await.unwrap().unwrap();
    assert_eq!(d.status, DeploymentStatus::Success);
    assert_eq!((d.finished_at, d.measurements.as_str()), (Some(4_000), m));

    // A failed job fails its deployment, a canceled one cancels it.
    let failed = deployed(s, p.id, &a, "production", (5_000, JobStatus::Failed)).await;
    let d = s.deployment(failed).await.unwrap().unwrap();
    assert_eq!(
        (d.status, d.finished_at),
        (DeploymentStatus::Failed, Some(5_001))
    );
    let (c, canceled) = deploy(s, p.id, &a, "production", 6_000).await;
    h.exec(&format!(
        "UPDATE jobs SET status = 'canceled', finished_at = 6500, lease_until = NULL \
         WHERE id = {}",
        c.id
    ))
    .await;
    let d = s.deployment(canceled).await.unwrap().unwrap();
    assert_eq!(
        (d.status, d.finished_at),
        (DeploymentStatus::Canceled, Some(6_500))
    );

    // A job without a deployment has none; an unknown id is none.
    let plain = s.claim(&a, 7_000, 60_000).await.unwrap().unwrap();
    assert_eq!(s.job_deployment(plain.id).await.unwrap(), None);
    assert_eq!(s.deployment(canceled + 100).await.unwrap(), None);
}

/// An agent killed mid-job (during its verification): once the lease reaper fails the job, its
/// deployment reads `failed`, with the reaper's time as its end; no store write of its own.
async fn a_killed_agent_leaves_a_failed_deployment(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    jobs(s, p.id, 1).await;
    let a = agent(s, "a", &[], true).await;
    let (j, id) = deploy(s, p.id, &a, "production", 3_000).await;
    assert!(s.expire_leases(60_000).await.unwrap().is_empty());
    assert_eq!(
        s.deployment(id).await.unwrap().unwrap().status,
        DeploymentStatus::Running
    );
    assert_eq!(
        s.expire_leases(63_001).await.unwrap(),
        [(j.id, j.pipeline_id)]
    );
    let d = s.deployment(id).await.unwrap().unwrap();
    assert_eq!(
        (d.status, d.finished_at),
        (DeploymentStatus::Failed, Some(63_001))
    );
    let envs = s.environments(p.id).await.unwrap();
    assert_eq!(envs[0].last.status, DeploymentStatus::Failed);
    assert_eq!(envs[0].current, None);
}

async fn environments_list_their_last_and_current_deployments(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let other = project(s, "other").await;
    assert!(s.environments(p.id).await.unwrap().is_empty());
    jobs(s, p.id, 8).await;
    let a = agent(s, "a", &[], true).await;
    let ok = JobStatus::Success;
    let prod1 = deployed(s, p.id, &a, "production", (3_000, ok)).await;
    let review = deployed(s, p.id, &a, "review/x", (3_100, ok)).await;
    let prod2 = deployed(s, p.id, &a, "production", (3_200, ok)).await;
    let prod3 = deployed(s, p.id, &a, "production", (3_300, JobStatus::Failed)).await;
    let (_, review2) = deploy(s, p.id, &a, "review/x", 3_400).await;
    let prod4 = deployed(s, p.id, &a, "production", (3_500, ok)).await;
    let (_, rollback) = deploy(s, p.id, &a, "production", 3_550).await;
    assert!(s.mark_rolled_back(prod4, rollback).await.unwrap());
    // Another project's environment of the same name is its own.
    jobs(s, other.id, 1).await;
    deployed(s, other.id, &a, "production", (3_600, ok)).await;

    let envs = s.environments(p.id).await.unwrap();
    let names: Vec<&str> = envs.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["production", "review/x"]);
    let (prod, rev) = (&envs[0], &envs[1]);
    assert_eq!(prod.deployments, 5);
    assert_eq!(
        (prod.last.id, prod.last.status),
        (rollback, DeploymentStatus::Running)
    );
    // The newest success not rolled back: not the running rollback, not the rolled-back one,
    // not the failed one.
    assert_eq!(prod.current.as_ref().map(|d| d.id), Some(prod2));
    assert_eq!(rev.deployments, 2);
    assert_eq!(
        (rev.last.id, rev.last.status),
        (review2, DeploymentStatus::Running)
    );
    assert_eq!(rev.current.as_ref().map(|d| d.id), Some(review));
    assert_eq!(s.environments(other.id).await.unwrap()[0].deployments, 1);

    // An environment's deployments, newest first, paginated with the total.
    let ids = |items: Vec<gantry_store::DeploymentRecord>| -> Vec<i64> {
        items.iter().map(|d| d.id).collect()
    };
    let first = s.deployments(p.id, "production", page(1, 3)).await.unwrap();
    assert_eq!(first.items[1].status, DeploymentStatus::RolledBack);
    assert_eq!(first.total, 5);
    assert_eq!(ids(first.items), [rollback, prod4, prod3]);
    let second = s.deployments(p.id, "production", page(2, 3)).await.unwrap();
    assert_eq!(ids(second.items), [prod2, prod1]);
    let rev = s.deployments(p.id, "review/x", page(1, 10)).await.unwrap();
    assert_eq!(ids(rev.items), [review2, review]);
    let none = s.deployments(p.id, "review", page(1, 10)).await.unwrap();
    assert_eq!((none.total, none.items.len()), (0, 0));
}

async fn the_last_success_before_and_the_rolled_back_mark(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    jobs(s, p.id, 7).await;
    let a = agent(s, "a", &[], true).await;
    let ok = JobStatus::Success;
    let v1 = deployed(s, p.id, &a, "production", (3_000, ok)).await;
    let staging = deployed(s, p.id, &a, "staging", (3_100, ok)).await;
    let v2 = deployed(s, p.id, &a, "production", (3_200, JobStatus::Failed)).await;
    let v3 = deployed(s, p.id, &a, "production", (3_300, ok)).await;
    let last = |id| async move { s.last_success_before(id).await.unwrap().map(|d| d.id) };
    assert_eq!(last(v1).await, None, "nothing succeeded before the first");
    // The failed one and another environment's are passed over.
    assert_eq!(last(v3).await, Some(v1));
    assert_eq!(last(v2).await, Some(v1));
    assert_eq!(last(staging).await, None);
    assert_eq!(last(v3 + 100).await, None, "an unknown deployment has none");

    // The rollback of v3 (to v1) is a deployment of its own, recorded with `rollback_of`.
    let j = s.claim(&a, 4_000, 60_000).await.unwrap().unwrap();
    let mut new = deployment(p.id, &j, "production", 4_000);
    new.triggered_by = "rollback".to_owned();
    new.rollback_of = Some(v3);
    let rollback = s.record_deployment(&new).await.unwrap();
    s.finish(j.id, a.id, &ended(ok, 4_500, None)).await.unwrap();
    let r = s.deployment(rollback).await.unwrap().unwrap();
    assert_eq!(
        (r.rollback_of, r.triggered_by.as_str()),
        (Some(v3), "rollback")
    );

    // Marked once: a second rollback racing it does not mark it again.
    let (_, second) = deploy(s, p.id, &a, "production", 4_600).await;
    let mut racing = tokio::task::JoinSet::new();
    for by in [rollback, second] {
        let store = h.store.clone();
        racing.spawn(async move { store.mark_rolled_back(v3, by).await.unwrap() });
    }
    let marked: Vec<bool> = racing.join_all().await;
    assert_eq!(marked.iter().filter(|m| **m).count(), 1, "{marked:?}");
    let d = s.deployment(v3).await.unwrap().unwrap();
    assert_eq!(d.status, DeploymentStatus::RolledBack);
    assert!(d.rolled_back_by.is_some());
    assert!(!s.mark_rolled_back(v3, rollback).await.unwrap());
    // A rolled-back deployment is never a rollback's target; the rollback itself is.
    let next = deployed(s, p.id, &a, "production", (5_000, JobStatus::Failed)).await;
    assert_eq!(last(next).await, Some(rollback));
    assert_eq!(
        s.environments(p.id).await.unwrap()[0]
            .current
            .as_ref()
            .map(|d| d.id),
        Some(rollback)
    );
}
