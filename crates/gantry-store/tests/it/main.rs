//! The store's tests: every test runs against SQLite and against PostgreSQL (`sqlite::NAME` and
//! `postgres::NAME`). The PostgreSQL variants need `GANTRY_TEST_POSTGRES_URL`
//! (`eval "$(scripts/postgres.sh)"`) and fail without it.

mod harness;
mod records;

use std::collections::HashSet;
use std::sync::Arc;

use gantry_store::{
    ARTIFACT_CHUNK, AgentJobRecord, Changes, DeliveryStatus, JobChange, JobResult, JobStatus,
    NewProjectToken, NewReports, PipelineFilter, PipelineRecord, PipelineStatus, Store, StoreError,
    connect,
};
use harness::{Harness, agent, create, delivery, new_agent, page, project};
use records::{job, pipeline};

/// Instantiates each named test (an `async fn(Harness)`) once per backend.
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::harness::sqlite(super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::harness::postgres(super::$name).await;
                }
            )*
        }
    };
}

mod deployments;

store_tests!(
    projects_create_conflict_update,
    deliveries_are_stored_once,
    pushes_are_stored_once_within_their_window,
    concurrent_deliveries_get_their_own_answers,
    pending_deliveries_and_close,
    delivery_retries_wait_count_and_survive_reopen,
    create_pipeline_once_per_delivery,
    pipeline_lists_jobs_in_order,
    pipeline_head_and_partial_job_reads,
    pipelines_filter_and_paginate,
    apply_is_optimistic,
    claim_respects_tags,
    claim_respects_run_after_and_order,
    claim_starts_pipeline_and_bumps_version,
    concurrent_claims_hand_each_job_once,
    two_stores_hand_each_job_once,
    apply_racing_claims_never_overwrites_them,
    resource_group_excludes_running,
    resource_group_races_claim_once,
    lease_calls_fail_for_other_agents,
    expired_leases_fail_jobs,
    extend_leases_moves_deadlines,
    finish_records_the_result,
    heartbeat_reports_cancel,
    append_log_is_idempotent,
    append_log_past_2_gib,
    read_log_assembles_ranges,
    artifacts_roundtrip,
    artifact_chunks_roundtrip,
    artifact_reupload_replaces_atomically,
    unfinished_artifact_upload_is_not_served,
    artifact_commit_checks_lease_and_chunks,
    stale_artifact_uploads_are_dropped,
    single_row_artifacts_survive_migration,
    agents_register_and_list,
    agent_jobs_are_the_running_ones,
    queue_depth_counts_pending,
    reopened_store_keeps_everything,
    project_tokens_create_list_find_delete,
    project_of_pipelines_and_jobs,
    success_changes_nothing_only_inside_a_busy_stage,
    an_unknown_status_in_the_database_is_an_error,
    reports_are_stored_with_the_finish_once,
    pipeline_reports_read_latest_attempts,
    jobs_reports_read_the_given_jobs,
    coverage_trend_of_a_ref,
    notifications_wait_retry_and_survive_reopen,
    two_stores_claim_each_notification_once,
    previous_finished_status_of_a_ref,
);

fn lost<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::LeaseLost)),
        "expected LeaseLost, got {result:?}"
    );
}

fn done(status: JobStatus, at: i64) -> JobResult {
    JobResult {
        status,
        exit_code: Some(0),
        failure_reason: None,
        coverage: None,
        finished_at: at,
        reports: None,
        measurements: None,
    }
}

async fn projects_create_conflict_update(h: Harness) {
    let s = &*h.store;
    s.ping().await.unwrap();
    let a = s.create_project("alpha", "{\"a\":1}", 10).await.unwrap();
    assert_eq!(a.name, "alpha");
    assert_eq!(a.spec, "{\"a\":1}");
    assert_eq!(a.created_at, 10);
    let b = s.create_project("beta", "{}", 11).await.unwrap();
    assert_ne!(a.id, b.id);
    let err = s.create_project("alpha", "{}", 12).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(s.update_project("alpha", "{\"a\":2}").await.unwrap());
    assert!(!s.update_project("gamma", "{}").await.unwrap());
    let a2 = s.project("alpha").await.unwrap().unwrap();
    assert_eq!(a2.spec, "{\"a\":2}");
    assert_eq!(s.project_by_id(a.id).await.unwrap().unwrap(), a2);
    assert!(s.project("gamma").await.unwrap().is_none());
    assert!(s.project_by_id(9_999).await.unwrap().is_none());
    let names: Vec<String> = s
        .projects()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
}

/// A push replayed under new delivery ids (issue 16, finding 12): one delivery while its key is
/// within the window, also when the replays race each other; a new one after the window.
async fn pushes_are_stored_once_within_their_window(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let push = |id: &str, at: i64| {
        let mut d = delivery(p.id, id, at);
        d.push_key = Some("refs/heads/main aaa bbb".to_owned());
        d.push_key_since = at - 1000;
        d
    };
    let mut racing = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (store, d) = (h.store.clone(), push(&format!("d-{i}"), 100));
        racing.spawn(async move { store.insert_delivery(&d).await.unwrap() });
    }
    let answers: Vec<(i64, bool)> = racing.join_all().await;
    assert_eq!(
        answers.iter().filter(|(_, dup)| !dup).count(),
        1,
        "{answers:?}"
    );
    let first = answers.iter().find(|(_, dup)| !dup).unwrap().0;
    assert!(answers.iter().all(|(id, _)| *id == first), "{answers:?}");
    // Another push of the ref, and a delivery without a key, are deliveries of their own.
    let mut other = push("other", 200);
    other.push_key = Some("refs/heads/main bbb ccc".to_owned());
    assert!(!s.insert_delivery(&other).await.unwrap().1);
    assert!(
        !s.insert_delivery(&delivery(p.id, "keyless", 200))
            .await
            .unwrap()
            .1
    );
    // Within the window: still a duplicate; after it: a new delivery.
    assert_eq!(
        s.insert_delivery(&push("late", 1100)).await.unwrap(),
        (first, true)
    );
    let (again, dup) = s.insert_delivery(&push("later", 1101)).await.unwrap();
    assert!(!dup);
    assert_ne!(again, first);
}

async fn deliveries_are_stored_once(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let q = project(s, "q").await;
    let (first, dup) = s
        .insert_delivery(&delivery(p.id, "d-1", 100))
        .await
        .unwrap();
    assert!(!dup);
    let (again, dup) = s
        .insert_delivery(&delivery(p.id, "d-1", 101))
        .await
        .unwrap();
    assert!(dup);
    assert_eq!(again, first);
    // The same id from another forge or for another project is another delivery.
    let mut github = delivery(p.id, "d-1", 102);
    github.forge = "github".to_owned();
    let (other, dup) = s.insert_delivery(&github).await.unwrap();
    assert!(!dup);
    assert_ne!(other, first);
    let (other_project, dup) = s
        .insert_delivery(&delivery(q.id, "d-1", 103))
        .await
        .unwrap();
    assert!(!dup);
    assert_ne!(other_project, first);
    let listed = s.deliveries(p.id, page(1, 10)).await.unwrap();
    assert_eq!(listed.total, 2);
    assert_eq!(listed.items.len(), 2);
}

async fn concurrent_deliveries_get_their_own_answers(h: Harness) {
    let s = h.store.clone();
    let p = project(&*s, "p").await;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            // Each id twice, and now and then one for a project that does not exist.
            let d = if i % 50 == 49 {
                delivery(p.id + 1_000, &format!("bad-{i}"), 100)
            } else {
                delivery(p.id, &format!("d-{}", i % 125), 100 + i)
            };
            (
                d.delivery_id.clone(),
                d.project_id,
                s.insert_delivery(&d).await,
            )
        }));
    }
    let mut ids: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let (mut fresh, mut duplicates, mut failed) = (0, 0, 0);
    for t in tasks {
        let (delivery_id, project_id, result) = t.await.unwrap();
        match result {
            Ok((id, duplicate)) => {
                assert_eq!(project_id, p.id);
                assert_eq!(
                    *ids.entry(delivery_id).or_insert(id),
                    id,
                    "one id per delivery"
                );
                if duplicate {
                    duplicates += 1;
                } else {
                    fresh += 1;
                }
            }
            Err(_) => {
                assert_ne!(project_id, p.id, "a good delivery failed");
                failed += 1;
            }
        }
    }
    assert_eq!((fresh, duplicates, failed), (125, 169, 6));
    let stored = s.deliveries(p.id, page(1, 1)).await.unwrap();
    assert_eq!(stored.total, 125);
    // Stored in batches, each delivery still has its own fields under the id it was answered.
    let pending = s.pending_deliveries(1_000, 10_000, &[]).await.unwrap();
    assert_eq!(pending.len(), 125);
    for d in pending {
        assert_eq!(ids.get(&d.delivery_id), Some(&d.id));
        assert_eq!(
            (d.project_id, d.forge.as_str(), d.event.as_str()),
            (p.id, "gitlab", "push")
        );
        assert_eq!(d.payload, delivery(p.id, &d.delivery_id, 0).payload);
        assert_eq!(d.trace_id, format!("trace-{}", d.delivery_id));
    }
}

async fn delivery_retries_wait_count_and_survive_reopen(h: Harness) {
    let s = h.store.clone();
    let p = project(&*s, "p").await;
    let (a, _) = s.insert_delivery(&delivery(p.id, "a", 100)).await.unwrap();
    let (b, _) = s.insert_delivery(&delivery(p.id, "b", 100)).await.unwrap();
    assert_eq!(s.next_delivery_retry().await.unwrap(), None);
    let fresh = &s.pending_deliveries(10, 1_000, &[]).await.unwrap()[0];
    assert_eq!(
        (fresh.attempts, fresh.retry_at, fresh.last_error.as_deref()),
        (0, None, None)
    );
    // A transient failure keeps `a` pending, out of the list until its retry is due.
    assert_eq!(
        s.fail_delivery_attempt(a, "cannot fetch", Some(5_000))
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.next_delivery_retry().await.unwrap(), Some(5_000));
    let ids = |v: Vec<gantry_store::DeliveryRecord>| v.iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.pending_deliveries(10, 4_999, &[]).await.unwrap()),
        [b]
    );
    let due = s.pending_deliveries(10, 5_000, &[]).await.unwrap();
    assert_eq!(ids(due.clone()), [a, b]);
    assert_eq!(due[0].status, DeliveryStatus::Pending);
    assert_eq!(due[0].attempts, 1);
    assert_eq!(due[0].retry_at, Some(5_000));
    assert_eq!(due[0].last_error.as_deref(), Some("cannot fetch"));
    assert_eq!(due[0].reason, None);
    assert_eq!(
        s.fail_delivery_attempt(a, "still cannot fetch", Some(9_000))
            .await
            .unwrap(),
        2
    );
    // It is in the database: a restarted server sees the same.
    drop(s);
    let h = h.reopen().await;
    let s = &*h.store;
    assert_eq!(s.next_delivery_retry().await.unwrap(), Some(9_000));
    assert_eq!(
        ids(s.pending_deliveries(10, 8_000, &[]).await.unwrap()),
        [b]
    );
    // The last attempt closes it failed with the reason; later calls change nothing.
    assert_eq!(
        s.fail_delivery_attempt(a, "gave up after 3 attempts", None)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        s.fail_delivery_attempt(a, "too late", Some(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        ids(s.pending_deliveries(10, 99_000, &[]).await.unwrap()),
        [b]
    );
    assert_eq!(s.next_delivery_retry().await.unwrap(), None);
    let listed = s.deliveries(p.id, page(1, 10)).await.unwrap();
    let closed = listed.items.iter().find(|d| d.id == a).unwrap();
    assert_eq!(closed.status, DeliveryStatus::Failed);
    assert_eq!(closed.reason.as_deref(), Some("gave up after 3 attempts"));
    assert_eq!(closed.attempts, 3);
    assert_eq!(
        closed.last_error.as_deref(),
        Some("gave up after 3 attempts")
    );
    // Closing as skipped is not an attempt.
    s.close_delivery(b, DeliveryStatus::Skipped, "nothing to run")
        .await
        .unwrap();
    assert_eq!(s.fail_delivery_attempt(b, "x", None).await.unwrap(), 0);
}

async fn pending_deliveries_and_close(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            s.insert_delivery(&delivery(p.id, &format!("d{i}"), 100 + i))
                .await
                .unwrap()
                .0,
        );
    }
    let pending = s.pending_deliveries(3, 1_000, &[]).await.unwrap();
    assert_eq!(pending.iter().map(|d| d.id).collect::<Vec<_>>(), ids[..3]);
    assert_eq!(pending[0].payload, b"{\"delivery\":\"d0\"}");
    assert_eq!(pending[0].trace_id, "trace-d0");
    assert_eq!(pending[0].status, DeliveryStatus::Pending);
    s.close_delivery(ids[0], DeliveryStatus::Skipped, "no job survived the rules")
        .await
        .unwrap();
    s.close_delivery(ids[1], DeliveryStatus::Failed, "no .gitlab-ci.yml")
        .await
        .unwrap();
    // Closing is only for pending deliveries: this one stays skipped.
    s.close_delivery(ids[0], DeliveryStatus::Failed, "later")
        .await
        .unwrap();
    let pending = s.pending_deliveries(10, 1_000, &[]).await.unwrap();
    assert_eq!(pending.iter().map(|d| d.id).collect::<Vec<_>>(), ids[2..]);
    // The deliveries of a project being processed are left out, the others' are not.
    let q = project(s, "q").await;
    let other = s
        .insert_delivery(&delivery(q.id, "q0", 200))
        .await
        .unwrap()
        .0;
    let rest = s.pending_deliveries(10, 1_000, &[p.id]).await.unwrap();
    assert_eq!(rest.iter().map(|d| d.id).collect::<Vec<_>>(), [other]);
    let rest = s
        .pending_deliveries(10, 1_000, &[p.id, q.id])
        .await
        .unwrap();
    assert!(rest.is_empty());
    s.close_delivery(other, DeliveryStatus::Skipped, "x")
        .await
        .unwrap();
    let listed = s.deliveries(p.id, page(1, 2)).await.unwrap();
    assert_eq!(listed.total, 5);
    // Newest first, without payloads.
    assert_eq!(
        listed.items.iter().map(|d| d.id).collect::<Vec<_>>(),
        [ids[4], ids[3]]
    );
    assert!(listed.items.iter().all(|d| d.payload.is_empty()));
    let last = s.deliveries(p.id, page(3, 2)).await.unwrap();
    assert_eq!(last.items.len(), 1);
    let skipped = &last.items[0];
    assert_eq!(skipped.id, ids[0]);
    assert_eq!(skipped.status, DeliveryStatus::Skipped);
    assert_eq!(skipped.reason.as_deref(), Some("no job survived the rules"));
}

/// Asserts that `result` is the error that names `column` and the unknown value `bogus`.
fn unknown_status<T: std::fmt::Debug>(result: Result<T, StoreError>, column: &str) {
    let err = result.expect_err("an unknown status was read");
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("database: column {column} holds an unknown status `bogus`")
    );
}

async fn an_unknown_status_in_the_database_is_an_error(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    s.insert_delivery(&delivery(p.id, "d", 100)).await.unwrap();
    let id = create(s, p.id, vec![job("build", 0, 2_000)]).await;
    let job_id = s.pipeline(id).await.unwrap().unwrap().jobs[0].id;
    h.exec("UPDATE jobs SET status = 'bogus'").await;
    unknown_status(s.job(job_id).await, "jobs.status");
    h.exec("UPDATE jobs SET status = 'pending'").await;
    h.exec("UPDATE pipelines SET status = 'bogus'").await;
    unknown_status(s.pipeline(id).await, "pipelines.status");
    unknown_status(
        s.pipelines(p.id, &PipelineFilter::default(), page(1, 20))
            .await,
        "pipelines.status",
    );
    h.exec("UPDATE deliveries SET status = 'bogus'").await;
    unknown_status(s.deliveries(p.id, page(1, 20)).await, "deliveries.status");
}

async fn create_pipeline_once_per_delivery(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let (d, _) = s.insert_delivery(&delivery(p.id, "d", 100)).await.unwrap();
    let mut new = pipeline(p.id, vec![job("build", 0, 2_000), job("test", 1, 2_000)]);
    new.delivery_id = Some(d);
    let first = s.create_pipeline(&new).await.unwrap();
    let second = s.create_pipeline(&new).await.unwrap();
    assert_eq!(first, second);
    let created = s.pipeline(first).await.unwrap().unwrap();
    assert_eq!(created.jobs.len(), 2, "the second call created no jobs");
    assert_eq!(
        s.pipelines(p.id, &PipelineFilter::default(), page(1, 20))
            .await
            .unwrap()
            .total,
        1
    );
    assert!(
        s.pending_deliveries(10, 1_000, &[])
            .await
            .unwrap()
            .is_empty()
    );
    let listed = s.deliveries(p.id, page(1, 20)).await.unwrap();
    assert_eq!(listed.items[0].status, DeliveryStatus::Created);
    assert_eq!(listed.items[0].pipeline_id, Some(first));
    // Pipelines without a delivery are never merged.
    let a = create(s, p.id, vec![]).await;
    let b = create(s, p.id, vec![]).await;
    assert_ne!(a, b);
}

async fn pipeline_head_and_partial_job_reads(h: Harness) {
    let s = &*h.store;
    let p = project(s, "proj").await;
    let a = agent(s, "a", &[], true).await;
    let mut jobs = Vec::new();
    for (i, name) in ["lint", "build", "test", "deploy"].iter().enumerate() {
        let mut j = job(name, i as i64, 2_000);
        j.stage_index = i as i64 / 2;
        j.status = if i == 0 {
            JobStatus::Pending
        } else {
            JobStatus::Created
        };
        jobs.push(j);
    }
    let id = create(s, p.id, jobs.clone()).await;
    // Another pipeline with the same names: never part of the answers.
    let other = create(s, p.id, jobs).await;
    assert!(s.pipeline_head(other).await.unwrap().is_some());
    // A claim bumps the version; a retry adds a second attempt of `build`.
    let claimed = s.claim(&a, 3_000, 60_000).await.unwrap().unwrap();
    assert_eq!(claimed.pipeline_id, id);
    let full = s.pipeline(id).await.unwrap().unwrap();
    let build = full
        .jobs
        .iter()
        .find(|j| j.name == "build")
        .unwrap()
        .clone();
    let mut retry = job("build", build.position, 4_000);
    retry.attempt = 2;
    retry.stage_index = 0;
    retry.status = JobStatus::Created;
    let changes = Changes {
        new_jobs: vec![retry],
        ..Changes::default()
    };
    assert!(s.apply(id, full.version, &changes).await.unwrap());
    let full = s.pipeline(id).await.unwrap().unwrap();

    let head = s.pipeline_head(id).await.unwrap().unwrap();
    assert!(head.jobs.is_empty());
    // The version is a sum over the jobs, which the head does not read; with its 0 an `apply`
    // fails instead of writing over changes it never saw.
    assert!(full.version > 0, "the claim and the apply bump it");
    assert_eq!(head.version, 0);
    assert_eq!(
        head,
        PipelineRecord {
            jobs: Vec::new(),
            version: 0,
            ..full.clone()
        }
    );
    assert!(
        !s.apply(id, head.version, &Changes::default())
            .await
            .unwrap()
    );
    assert_eq!(s.pipeline_head(other + 1000).await.unwrap(), None);

    let names = |jobs: &[gantry_store::JobRecord]| -> Vec<(String, i64)> {
        jobs.iter().map(|j| (j.name.clone(), j.attempt)).collect()
    };
    let named = s
        .jobs_named(
            id,
            &["deploy".to_owned(), "build".to_owned(), "nope".to_owned()],
        )
        .await
        .unwrap();
    assert_eq!(
        names(&named),
        [
            ("build".to_owned(), 1),
            ("build".to_owned(), 2),
            ("deploy".to_owned(), 1)
        ]
    );
    assert!(named.iter().all(|j| j.pipeline_id == id));
    // The records are whole, as `pipeline` reads them.
    let in_full: Vec<_> = full
        .jobs
        .iter()
        .filter(|j| j.name == "build" || j.name == "deploy")
        .cloned()
        .collect();
    assert_eq!(named, in_full);
    assert!(s.jobs_named(id, &[]).await.unwrap().is_empty());

    let before = s.jobs_before_stage(id, 1).await.unwrap();
    assert_eq!(
        names(&before),
        [
            ("lint".to_owned(), 1),
            ("build".to_owned(), 1),
            ("build".to_owned(), 2)
        ]
    );
    assert_eq!(before[0].status, JobStatus::Running);
    assert!(s.jobs_before_stage(id, 0).await.unwrap().is_empty());
    assert_eq!(s.jobs_before_stage(id, 2).await.unwrap().len(), 5);
}

async fn pipeline_lists_jobs_in_order(h: Harness) {
    let s = &*h.store;
    let p = project(s, "proj").await;
    let mut jobs = Vec::new();
    for (i, name) in ["lint", "build", "test", "deploy"].iter().enumerate() {
        let mut j = job(name, i as i64, 2_000);
        j.stage_index = i as i64 / 2;
        j.stage = format!("stage{}", i / 2);
        j.status = JobStatus::Created;
        jobs.push(j);
    }
    jobs[2].needs = Some(vec!["build".to_owned()]);
    jobs[3].tags = vec!["prod".to_owned(), "linux".to_owned()];
    jobs[3].resource_group = Some("production".to_owned());
    jobs[3].when = "manual".to_owned();
    jobs[3].allow_failure = true;
    jobs[3].interruptible = true;
    // Stored out of plan order, listed in it.
    jobs.swap(0, 3);
    let mut new = pipeline(p.id, jobs.clone());
    new.tag = true;
    new.before_sha = Some("before".to_owned());
    let id = s.create_pipeline(&new).await.unwrap();
    let got = s.pipeline(id).await.unwrap().unwrap();
    assert_eq!(got.project_name, "proj");
    assert_eq!(got.git_ref, "main");
    assert!(got.tag);
    assert_eq!(got.before_sha.as_deref(), Some("before"));
    assert_eq!(got.status, PipelineStatus::Created);
    assert_eq!(got.version, 0);
    let names: Vec<&str> = got.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["lint", "build", "test", "deploy"]);
    let deploy = &got.jobs[3];
    assert_eq!(deploy.tags, ["prod", "linux"]);
    assert_eq!(deploy.resource_group.as_deref(), Some("production"));
    assert_eq!(deploy.when, "manual");
    assert!(deploy.allow_failure && deploy.interruptible);
    assert_eq!(deploy.stage, "stage1");
    assert_eq!(deploy.stage_index, 1);
    assert_eq!(deploy.queued_at, None, "created jobs are not queued");
    assert_eq!(
        got.jobs[2].needs.as_deref(),
        Some(&["build".to_owned()][..])
    );
    assert_eq!(got.jobs[0].needs, None);
    assert_eq!(got.jobs[0].spec, "{\"name\":\"lint\"}");
    // A retry (attempt 2, same position) is listed right after its first attempt.
    let mut retry = job("build", 1, 3_000);
    retry.attempt = 2;
    let changes = Changes {
        jobs: vec![JobChange {
            id: got.jobs[1].id,
            retried: Some(true),
            ..JobChange::default()
        }],
        new_jobs: vec![retry],
        ..Changes::default()
    };
    assert!(s.apply(id, got.version, &changes).await.unwrap());
    let got = s.pipeline(id).await.unwrap().unwrap();
    let order: Vec<(&str, i64)> = got
        .jobs
        .iter()
        .map(|j| (j.name.as_str(), j.attempt))
        .collect();
    assert_eq!(
        order,
        [
            ("lint", 1),
            ("build", 1),
            ("build", 2),
            ("test", 1),
            ("deploy", 1)
        ]
    );
    assert!(got.jobs[1].retried);
    assert_eq!(
        got.jobs[2].queued_at,
        Some(3_000),
        "a job created pending is queued"
    );
    assert!(s.pipeline(id + 1_000).await.unwrap().is_none());
}

async fn pipelines_filter_and_paginate(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let other = project(s, "other").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut new = pipeline(p.id, vec![job("j", 0, 2_000)]);
        new.git_ref = if i % 2 == 0 { "main" } else { "dev" }.to_owned();
        new.status = if i < 3 {
            PipelineStatus::Failed
        } else {
            PipelineStatus::Created
        };
        ids.push(s.create_pipeline(&new).await.unwrap());
    }
    create(s, other.id, vec![]).await;
    let all = s
        .pipelines(p.id, &PipelineFilter::default(), page(1, 3))
        .await
        .unwrap();
    assert_eq!(all.total, 7);
    assert_eq!(
        all.items.iter().map(|p| p.id).collect::<Vec<_>>(),
        [ids[6], ids[5], ids[4]]
    );
    assert!(
        all.items.iter().all(|p| p.jobs.is_empty()),
        "lists carry no jobs"
    );
    assert_eq!(all.items[0].project_name, "p");
    let page3 = s
        .pipelines(p.id, &PipelineFilter::default(), page(3, 3))
        .await
        .unwrap();
    assert_eq!(
        page3.items.iter().map(|p| p.id).collect::<Vec<_>>(),
        [ids[0]]
    );
    assert_eq!(page3.total, 7);
    let beyond = s
        .pipelines(p.id, &PipelineFilter::default(), page(9, 3))
        .await
        .unwrap();
    assert!(beyond.items.is_empty());
    assert_eq!(beyond.total, 7);
    let main = PipelineFilter {
        git_ref: Some("main".to_owned()),
        status: None,
    };
    let got = s.pipelines(p.id, &main, page(1, 20)).await.unwrap();
    assert_eq!(got.total, 4);
    assert!(got.items.iter().all(|p| p.git_ref == "main"));
    let failed_dev = PipelineFilter {
        git_ref: Some("dev".to_owned()),
        status: Some(PipelineStatus::Failed),
    };
    let got = s.pipelines(p.id, &failed_dev, page(1, 20)).await.unwrap();
    assert_eq!(got.items.iter().map(|p| p.id).collect::<Vec<_>>(), [ids[1]]);
    assert_eq!(got.total, 1);
    // Active pipelines: not over, oldest first, across projects.
    let active = s.active_pipelines().await.unwrap();
    assert_eq!(active.len(), 5);
    assert_eq!(active[..4], ids[3..]);
    // Those a newer push may make redundant: of the project and the ref, started by a push, older
    // than the newer one, not over.
    let mut scheduled = pipeline(p.id, vec![]);
    scheduled.source = "schedule".to_owned();
    let scheduled = s.create_pipeline(&scheduled).await.unwrap();
    assert_eq!(
        s.unfinished_push_pipelines(p.id, "main", ids[6])
            .await
            .unwrap(),
        [ids[4]]
    );
    assert_eq!(
        s.unfinished_push_pipelines(p.id, "main", scheduled + 1)
            .await
            .unwrap(),
        [ids[4], ids[6]]
    );
    assert_eq!(
        s.unfinished_push_pipelines(p.id, "dev", scheduled + 1)
            .await
            .unwrap(),
        [ids[3], ids[5]]
    );
}

async fn apply_is_optimistic(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let mut created = job("a", 0, 2_000);
    created.status = JobStatus::Created;
    let id = create(s, p.id, vec![created, job("b", 1, 2_000)]).await;
    let before = s.pipeline(id).await.unwrap().unwrap();
    let a = before.jobs[0].id;
    let changes = Changes {
        jobs: vec![JobChange {
            id: a,
            status: Some(JobStatus::Pending),
            queued_at: Some(5_000),
            run_after: Some(6_000),
            failure_reason: Some("reason".to_owned()),
            cancel_requested: Some(true),
            finished_at: Some(7_000),
            retried: Some(true),
        }],
        new_jobs: vec![job("c", 2, 5_000)],
        status: Some(PipelineStatus::Running),
        started_at: Some(5_000),
        finished_at: None,
        spec: Some("{\"approved\":true}".to_owned()),
        // A pipeline's end's notification is stored with it, or not at all.
        notifications: vec![gantry_store::NewNotification {
            pipeline_id: id,
            target: "sealed target".into(),
            event: "ended".into(),
            created_at: 5_000,
        }],
    };
    // A stale version changes nothing.
    assert!(!s.apply(id, before.version + 1, &changes).await.unwrap());
    assert_eq!(s.pipeline(id).await.unwrap().unwrap(), before);
    assert!(!s.apply(id + 1_000, 0, &changes).await.unwrap());
    assert!(s.notifications(id).await.unwrap().is_empty());
    // The current one applies everything, and bumps the version.
    assert!(s.apply(id, before.version, &changes).await.unwrap());
    let stored = s.notifications(id).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].event.as_str(), stored[0].status.as_str()),
        ("ended", "pending")
    );
    let after = s.pipeline(id).await.unwrap().unwrap();
    assert_eq!(after.version, before.version + 1);
    assert_eq!(after.status, PipelineStatus::Running);
    assert_eq!(after.started_at, Some(5_000));
    assert_eq!(after.finished_at, None);
    assert_eq!(after.spec, "{\"approved\":true}");
    let a = &after.jobs[0];
    assert_eq!(a.status, JobStatus::Pending);
    assert_eq!(a.queued_at, Some(5_000));
    assert_eq!(a.run_after, Some(6_000));
    assert_eq!(a.failure_reason.as_deref(), Some("reason"));
    assert!(a.cancel_requested && a.retried);
    assert_eq!(a.finished_at, Some(7_000));
    assert_eq!(
        after.jobs[1], before.jobs[1],
        "unchanged jobs stay as they were"
    );
    assert_eq!(after.jobs.len(), 3);
    // The same version a second time is stale.
    assert!(
        !s.apply(id, before.version, &Changes::default())
            .await
            .unwrap()
    );
    // `None` leaves fields as they are.
    let finish = Changes {
        status: Some(PipelineStatus::Success),
        finished_at: Some(9_000),
        ..Changes::default()
    };
    assert!(s.apply(id, after.version, &finish).await.unwrap());
    let last = s.pipeline(id).await.unwrap().unwrap();
    assert_eq!(last.started_at, Some(5_000));
    assert_eq!(last.finished_at, Some(9_000));
    assert_eq!(last.spec, after.spec);
    assert!(s.active_pipelines().await.unwrap().is_empty());
}

async fn claim_respects_tags(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let mut docker = job("docker", 0, 2_000);
    docker.tags = vec!["docker".to_owned()];
    let mut both = job("both", 1, 2_001);
    both.tags = vec!["docker".to_owned(), "linux".to_owned()];
    let plain = job("plain", 2, 2_002);
    create(s, p.id, vec![docker, both, plain]).await;

    let linux_only = agent(s, "linux-only", &["linux"], false).await;
    assert!(s.claim(&linux_only, 3_000, 9_000).await.unwrap().is_none());

    let docker_tagged = agent(s, "docker-tagged", &["docker"], false).await;
    let got = s
        .claim(&docker_tagged, 3_000, 9_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.name, "docker");
    // "both" needs linux too; "plain" is untagged and this agent takes no untagged jobs.
    assert!(
        s.claim(&docker_tagged, 3_000, 9_000)
            .await
            .unwrap()
            .is_none()
    );

    let untagged = agent(s, "untagged", &[], true).await;
    let got = s.claim(&untagged, 3_000, 9_000).await.unwrap().unwrap();
    assert_eq!(got.name, "plain");
    assert!(s.claim(&untagged, 3_000, 9_000).await.unwrap().is_none());

    let many = agent(s, "many", &["linux", "gpu", "docker"], true).await;
    let got = s.claim(&many, 3_000, 9_000).await.unwrap().unwrap();
    assert_eq!(got.name, "both");
    assert_eq!(got.agent_id, Some(many.id));
    assert_eq!(got.agent_name.as_deref(), Some("many"));
    assert_eq!(got.status, JobStatus::Running);
    assert_eq!(got.started_at, Some(3_000));
    assert_eq!(got.lease_until, Some(9_000));
    assert_eq!(s.job(got.id).await.unwrap().unwrap(), got);
}

async fn claim_respects_run_after_and_order(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let mut delayed = job("delayed", 0, 1_000);
    delayed.status = JobStatus::Created;
    let mut manual = job("manual", 1, 1_000);
    manual.status = JobStatus::Manual;
    let id = create(
        s,
        p.id,
        vec![
            delayed,
            manual,
            job("late", 2, 3_000),
            job("early", 3, 2_000),
        ],
    )
    .await;
    let before = s.pipeline(id).await.unwrap().unwrap();
    let changes = Changes {
        jobs: vec![JobChange {
            id: before.jobs[0].id,
            status: Some(JobStatus::Pending),
            queued_at: Some(1_500),
            run_after: Some(10_000),
            ..JobChange::default()
        }],
        ..Changes::default()
    };
    assert!(s.apply(id, before.version, &changes).await.unwrap());
    let a = agent(s, "a", &[], true).await;
    // Oldest queued first; the delayed one waits for its time; manual jobs are never claimed.
    assert_eq!(
        s.claim(&a, 5_000, 50_000).await.unwrap().unwrap().name,
        "early"
    );
    assert_eq!(
        s.claim(&a, 5_000, 50_000).await.unwrap().unwrap().name,
        "late"
    );
    assert!(s.claim(&a, 9_999, 50_000).await.unwrap().is_none());
    assert_eq!(
        s.claim(&a, 10_000, 50_000).await.unwrap().unwrap().name,
        "delayed"
    );
    assert!(s.claim(&a, 20_000, 50_000).await.unwrap().is_none());
}

async fn claim_starts_pipeline_and_bumps_version(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let id = create(s, p.id, vec![job("a", 0, 2_000), job("b", 1, 2_000)]).await;
    let before = s.pipeline(id).await.unwrap().unwrap();
    let a = agent(s, "a", &[], true).await;
    let claimed = s.claim(&a, 3_000, 9_000).await.unwrap().unwrap();
    assert_eq!(claimed.pipeline_id, id);
    let after = s.pipeline(id).await.unwrap().unwrap();
    assert_eq!(after.version, before.version + 1);
    assert_eq!(after.status, PipelineStatus::Running);
    assert_eq!(after.started_at, Some(3_000));
    // A change computed before the claim no longer applies.
    let cancel = Changes {
        jobs: vec![JobChange {
            id: claimed.id,
            status: Some(JobStatus::Canceled),
            ..JobChange::default()
        }],
        ..Changes::default()
    };
    assert!(!s.apply(id, before.version, &cancel).await.unwrap());
    assert_eq!(
        s.job(claimed.id).await.unwrap().unwrap().status,
        JobStatus::Running
    );
    // A second claim keeps the first start time.
    s.claim(&a, 4_000, 9_000).await.unwrap().unwrap();
    let later = s.pipeline(id).await.unwrap().unwrap();
    assert_eq!(later.started_at, Some(3_000));
    assert_eq!(later.version, after.version + 1);
}

/// Creates `pipelines` pipelines of `per_pipeline` pending jobs each; answers their ids.
async fn many_jobs(
    s: &dyn Store,
    project_id: i64,
    pipelines: usize,
    per_pipeline: usize,
) -> Vec<i64> {
    let mut ids = Vec::new();
    for p in 0..pipelines {
        let jobs = (0..per_pipeline)
            .map(|i| job(&format!("job-{p}-{i}"), i as i64, 2_000 + i as i64))
            .collect();
        ids.push(create(s, project_id, jobs).await);
    }
    ids
}

/// Claims (and finishes) until the queue is empty from `tasks` tasks spread over `stores`;
/// answers every claimed job id.
async fn drain(stores: Vec<Arc<dyn Store>>, tasks: usize) -> Vec<i64> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let s = stores[t % stores.len()].clone();
        handles.push(tokio::spawn(async move {
            let a = agent(&*s, &format!("agent-{t}"), &[], true).await;
            let mut mine = Vec::new();
            while let Some(j) = s.claim(&a, 3_000, 90_000).await.unwrap() {
                assert_eq!(j.agent_id, Some(a.id));
                mine.push(j.id);
                s.finish(j.id, a.id, &done(JobStatus::Success, 4_000))
                    .await
                    .unwrap();
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

async fn concurrent_claims_hand_each_job_once(h: Harness) {
    let s = h.store.clone();
    let p = project(&*s, "p").await;
    let ids = many_jobs(&*s, p.id, 5, 100).await;
    let claimed = drain(vec![s.clone(), s.clone()], 5).await;
    assert_eq!(claimed.len(), 500);
    assert_eq!(
        claimed.iter().collect::<HashSet<_>>().len(),
        500,
        "a job was claimed twice"
    );
    assert_eq!(s.queue_depth().await.unwrap(), 0);
    // Each claim and each finish bumped its pipeline's version once. (The store does not advance
    // pipelines, so all five are still active.)
    let active = s.active_pipelines().await.unwrap();
    assert_eq!(active, ids, "the five pipelines, oldest first");
    for id in active {
        let pl = s.pipeline(id).await.unwrap().unwrap();
        assert_eq!(pl.version, 200);
        assert!(pl.jobs.iter().all(|j| j.status == JobStatus::Success));
    }
}

async fn two_stores_hand_each_job_once(h: Harness) {
    let first = h.store.clone();
    let second = h.open_another().await;
    let p = project(&*first, "p").await;
    many_jobs(&*first, p.id, 5, 100).await;
    let claimed = drain(vec![first.clone(), second], 6).await;
    assert_eq!(claimed.len(), 500);
    assert_eq!(
        claimed.iter().collect::<HashSet<_>>().len(),
        500,
        "a job was claimed twice"
    );
    assert_eq!(first.queue_depth().await.unwrap(), 0);
}

async fn apply_racing_claims_never_overwrites_them(h: Harness) {
    let first = h.store.clone();
    let second = h.open_another().await;
    let p = project(&*first, "p").await;
    let jobs = (0..200).map(|i| job(&format!("j{i}"), i, 2_000)).collect();
    let id = first.create_pipeline(&pipeline(p.id, jobs)).await.unwrap();
    let mut claimers = Vec::new();
    for t in 0..4 {
        let s = if t % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        claimers.push(tokio::spawn(async move {
            let a = agent(&*s, &format!("agent-{t}"), &[], true).await;
            let mut mine = Vec::new();
            while let Some(j) = s.claim(&a, 3_000, 90_000).await.unwrap() {
                mine.push(j.id);
                tokio::task::yield_now().await;
            }
            mine
        }));
    }
    // Meanwhile, cancel every job still pending, as the server would, from what it last read.
    let canceler = {
        let s = second.clone();
        tokio::spawn(async move {
            let mut stale = 0;
            loop {
                let pl = s.pipeline(id).await.unwrap().unwrap();
                let changes = Changes {
                    jobs: pl
                        .jobs
                        .iter()
                        .filter(|j| j.status == JobStatus::Pending)
                        .map(|j| JobChange {
                            id: j.id,
                            status: Some(JobStatus::Canceled),
                            finished_at: Some(5_000),
                            ..JobChange::default()
                        })
                        .collect(),
                    ..Changes::default()
                };
                if s.apply(id, pl.version, &changes).await.unwrap() {
                    return stale;
                }
                stale += 1;
            }
        })
    };
    let mut claimed = HashSet::new();
    for c in claimers {
        for job in c.await.unwrap() {
            assert!(claimed.insert(job), "job {job} claimed twice");
        }
    }
    canceler.await.unwrap();
    let pl = first.pipeline(id).await.unwrap().unwrap();
    for j in &pl.jobs {
        if claimed.contains(&j.id) {
            assert_eq!(
                j.status,
                JobStatus::Running,
                "a claimed job was overwritten: {j:?}"
            );
        } else {
            assert_eq!(j.status, JobStatus::Canceled, "{j:?}");
            assert_eq!(j.agent_id, None);
        }
    }
}

async fn resource_group_excludes_running(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let other = project(s, "other").await;
    let grouped = |name: &str, at: i64| {
        let mut j = job(name, 0, at);
        j.resource_group = Some("production".to_owned());
        j
    };
    create(s, p.id, vec![grouped("deploy-1", 2_000)]).await;
    create(s, p.id, vec![grouped("deploy-2", 2_001)]).await;
    create(s, other.id, vec![grouped("deploy-other", 2_002)]).await;
    create(s, p.id, vec![job("free", 0, 2_003)]).await;
    let a = agent(s, "a", &[], true).await;
    let first = s.claim(&a, 3_000, 9_000).await.unwrap().unwrap();
    assert_eq!(first.name, "deploy-1");
    // deploy-2 waits for deploy-1; the other project's group of the same name is another group.
    assert_eq!(
        s.claim(&a, 3_000, 9_000).await.unwrap().unwrap().name,
        "deploy-other"
    );
    assert_eq!(
        s.claim(&a, 3_000, 9_000).await.unwrap().unwrap().name,
        "free"
    );
    assert!(s.claim(&a, 3_000, 9_000).await.unwrap().is_none());
    s.finish(first.id, a.id, &done(JobStatus::Success, 4_000))
        .await
        .unwrap();
    assert_eq!(
        s.claim(&a, 5_000, 9_000).await.unwrap().unwrap().name,
        "deploy-2"
    );
}

async fn resource_group_races_claim_once(h: Harness) {
    let first = h.store.clone();
    let second = h.open_another().await;
    let p = project(&*first, "p").await;
    for i in 0..10 {
        let mut j = job(&format!("deploy-{i}"), 0, 2_000 + i);
        j.resource_group = Some("production".to_owned());
        first
            .create_pipeline(&pipeline(p.id, vec![j]))
            .await
            .unwrap();
    }
    let mut handles = Vec::new();
    for t in 0..8 {
        let s = if t % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        handles.push(tokio::spawn(async move {
            let a = agent(&*s, &format!("agent-{t}"), &[], true).await;
            let mut got = 0;
            for _ in 0..3 {
                if s.claim(&a, 3_000, 9_000).await.unwrap().is_some() {
                    got += 1;
                }
            }
            got
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap();
    }
    assert_eq!(total, 1, "one job of a resource group runs at a time");
    assert_eq!(first.queue_depth().await.unwrap(), 9);
}

async fn lease_calls_fail_for_other_agents(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    create(s, p.id, vec![job("a", 0, 2_000)]).await;
    let owner = agent(s, "owner", &[], true).await;
    let thief = agent(s, "thief", &[], true).await;
    let j = s.claim(&owner, 3_000, 9_000).await.unwrap().unwrap();
    lost(s.heartbeat(j.id, thief.id, 10_000).await);
    lost(s.append_log(j.id, thief.id, 0, b"x", 10_000).await);
    lost(s.put_artifacts(j.id, thief.id, b"zip", 10_000).await);
    lost(
        s.finish(j.id, thief.id, &done(JobStatus::Success, 4_000))
            .await,
    );
    lost(s.heartbeat(j.id + 1_000, owner.id, 10_000).await);
    let unchanged = s.job(j.id).await.unwrap().unwrap();
    assert_eq!(unchanged.status, JobStatus::Running);
    assert_eq!(unchanged.log_size, 0);
    assert!(!unchanged.has_artifacts);
    assert_eq!(unchanged.lease_until, Some(9_000));
    // The owner may; after finishing, it may no more.
    assert!(!s.heartbeat(j.id, owner.id, 10_000).await.unwrap());
    s.finish(j.id, owner.id, &done(JobStatus::Success, 4_000))
        .await
        .unwrap();
    lost(s.heartbeat(j.id, owner.id, 11_000).await);
    lost(s.append_log(j.id, owner.id, 0, b"x", 11_000).await);
    lost(s.put_artifacts(j.id, owner.id, b"zip", 11_000).await);
    lost(
        s.finish(j.id, owner.id, &done(JobStatus::Failed, 5_000))
            .await,
    );
    assert_eq!(
        s.job(j.id).await.unwrap().unwrap().status,
        JobStatus::Success
    );
}

async fn expired_leases_fail_jobs(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let id = create(s, p.id, vec![job("a", 0, 2_000), job("b", 1, 2_001)]).await;
    let a = agent(s, "a", &[], true).await;
    let short = s.claim(&a, 3_000, 5_000).await.unwrap().unwrap();
    let long = s.claim(&a, 3_000, 20_000).await.unwrap().unwrap();
    s.heartbeat(short.id, a.id, 6_000).await.unwrap();
    assert!(
        s.expire_leases(6_000).await.unwrap().is_empty(),
        "a lease ending now is not over"
    );
    let version = s.pipeline(id).await.unwrap().unwrap().version;
    assert_eq!(s.expire_leases(6_001).await.unwrap(), [(short.id, id)]);
    let pl = s.pipeline(id).await.unwrap().unwrap();
    assert_eq!(pl.version, version + 1);
    let failed = s.job(short.id).await.unwrap().unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(
        failed.failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    assert_eq!(failed.finished_at, Some(6_001));
    assert_eq!(failed.lease_until, None);
    assert_eq!(
        s.job(long.id).await.unwrap().unwrap().status,
        JobStatus::Running
    );
    lost(s.heartbeat(short.id, a.id, 30_000).await);
    lost(s.append_log(short.id, a.id, 0, b"late", 30_000).await);
    lost(s.put_artifacts(short.id, a.id, b"zip", 30_000).await);
    lost(
        s.finish(short.id, a.id, &done(JobStatus::Success, 7_000))
            .await,
    );
    assert_eq!(
        s.job(short.id).await.unwrap().unwrap().status,
        JobStatus::Failed
    );
    assert!(s.expire_leases(6_002).await.unwrap().is_empty());
}

async fn extend_leases_moves_deadlines(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    create(
        s,
        p.id,
        vec![job("a", 0, 2_000), job("b", 1, 2_001), job("c", 2, 2_002)],
    )
    .await;
    let a = agent(s, "a", &[], true).await;
    let early = s.claim(&a, 3_000, 5_000).await.unwrap().unwrap();
    let late = s.claim(&a, 3_000, 50_000).await.unwrap().unwrap();
    s.extend_leases(30_000).await.unwrap();
    assert_eq!(
        s.job(early.id).await.unwrap().unwrap().lease_until,
        Some(30_000)
    );
    assert_eq!(
        s.job(late.id).await.unwrap().unwrap().lease_until,
        Some(50_000),
        "never shortened"
    );
    let pending = s.pipeline(early.pipeline_id).await.unwrap().unwrap().jobs[2].clone();
    assert_eq!(pending.lease_until, None, "only running jobs have leases");
    assert!(s.expire_leases(29_000).await.unwrap().is_empty());
}

async fn finish_records_the_result(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let id = create(s, p.id, vec![job("a", 0, 2_000)]).await;
    let a = agent(s, "a", &[], true).await;
    let j = s.claim(&a, 3_000, 9_000).await.unwrap().unwrap();
    let version = s.pipeline(id).await.unwrap().unwrap().version;
    let result = JobResult {
        status: JobStatus::Failed,
        exit_code: Some(3),
        failure_reason: Some("script_failure".to_owned()),
        coverage: Some(87.5),
        finished_at: 4_000,
        reports: None,
        measurements: None,
    };
    assert_eq!(s.finish(j.id, a.id, &result).await.unwrap(), id);
    let f = s.job(j.id).await.unwrap().unwrap();
    assert_eq!(f.status, JobStatus::Failed);
    assert_eq!(f.exit_code, Some(3));
    assert_eq!(f.failure_reason.as_deref(), Some("script_failure"));
    assert_eq!(f.coverage, Some(87.5));
    assert_eq!(f.finished_at, Some(4_000));
    assert_eq!(f.lease_until, None);
    assert_eq!(f.agent_id, Some(a.id));
    assert_eq!(s.pipeline(id).await.unwrap().unwrap().version, version + 1);
}

async fn success_changes_nothing_only_inside_a_busy_stage(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    // Stage 0: a, b, c; stage 1: d (needs c), e (after the stage).
    let mut d = job("d", 3, 2_000);
    d.stage_index = 1;
    d.status = JobStatus::Created;
    d.needs = Some(vec!["c".to_owned()]);
    let mut e = job("e", 4, 2_000);
    e.stage_index = 1;
    e.status = JobStatus::Created;
    let id = create(
        s,
        p.id,
        vec![
            job("a", 0, 2_000),
            job("b", 1, 2_000),
            job("c", 2, 2_000),
            d,
            e,
        ],
    )
    .await;
    let quiet = |job_id: i64, name: &'static str| async move {
        s.success_changes_nothing(id, 0, job_id, name)
            .await
            .unwrap()
    };
    let ag = agent(s, "a", &[], true).await;
    let ja = s.claim(&ag, 3_000, 9_000).await.unwrap().unwrap();
    let jb = s.claim(&ag, 3_000, 9_000).await.unwrap().unwrap();
    let jc = s.claim(&ag, 3_000, 9_000).await.unwrap().unwrap();
    assert_eq!(
        (ja.name.as_str(), jb.name.as_str(), jc.name.as_str()),
        ("a", "b", "c")
    );
    // b and c still run: a's success changes nothing.
    s.finish(ja.id, ag.id, &done(JobStatus::Success, 4_000))
        .await
        .unwrap();
    assert!(quiet(ja.id, "a").await);
    // d needs c: c's success can queue d, even while b runs.
    assert!(!quiet(jc.id, "c").await);
    // The last job of the stage: the next stage can start.
    s.finish(jb.id, ag.id, &done(JobStatus::Success, 4_000))
        .await
        .unwrap();
    s.finish(jc.id, ag.id, &done(JobStatus::Success, 4_000))
        .await
        .unwrap();
    assert!(!quiet(jb.id, "b").await);
    // A pipeline that is not running (here: canceled) is always advanced.
    let id2 = create(s, p.id, vec![job("x", 0, 2_000), job("y", 1, 2_000)]).await;
    let jx = s.claim(&ag, 5_000, 9_000).await.unwrap().unwrap();
    s.claim(&ag, 5_000, 9_000).await.unwrap().unwrap();
    assert!(s.success_changes_nothing(id2, 0, jx.id, "x").await.unwrap());
    let head = s.pipeline(id2).await.unwrap().unwrap();
    let cancel = Changes {
        status: Some(PipelineStatus::Canceled),
        ..Changes::default()
    };
    assert!(s.apply(id2, head.version, &cancel).await.unwrap());
    assert!(!s.success_changes_nothing(id2, 0, jx.id, "x").await.unwrap());
}

async fn heartbeat_reports_cancel(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let id = create(s, p.id, vec![job("a", 0, 2_000)]).await;
    let a = agent(s, "a", &[], true).await;
    let j = s.claim(&a, 3_000, 9_000).await.unwrap().unwrap();
    assert!(!s.heartbeat(j.id, a.id, 12_000).await.unwrap());
    assert_eq!(
        s.job(j.id).await.unwrap().unwrap().lease_until,
        Some(12_000)
    );
    // A late heartbeat never shortens the lease.
    assert!(!s.heartbeat(j.id, a.id, 10_000).await.unwrap());
    assert_eq!(
        s.job(j.id).await.unwrap().unwrap().lease_until,
        Some(12_000)
    );
    let version = s.pipeline(id).await.unwrap().unwrap().version;
    let cancel = Changes {
        jobs: vec![JobChange {
            id: j.id,
            cancel_requested: Some(true),
            ..JobChange::default()
        }],
        ..Changes::default()
    };
    assert!(s.apply(id, version, &cancel).await.unwrap());
    assert!(s.heartbeat(j.id, a.id, 15_000).await.unwrap());
    assert_eq!(
        s.job(j.id).await.unwrap().unwrap().lease_until,
        Some(15_000)
    );
}

async fn append_log_is_idempotent(h: Harness) {
    let s = &*h.store;
    let (j, a) = running_job(s).await;
    assert_eq!(
        s.append_log(j.id, a.id, 0, b"hello ", 9_000).await.unwrap(),
        6
    );
    // Resent: not doubled.
    assert_eq!(
        s.append_log(j.id, a.id, 0, b"hello ", 9_000).await.unwrap(),
        6
    );
    // Overlapping: only the new part.
    assert_eq!(
        s.append_log(j.id, a.id, 3, b"lo world", 9_000)
            .await
            .unwrap(),
        11
    );
    // Empty and fully old chunks change nothing.
    assert_eq!(s.append_log(j.id, a.id, 11, b"", 9_000).await.unwrap(), 11);
    assert_eq!(
        s.append_log(j.id, a.id, 2, b"llo", 9_000).await.unwrap(),
        11
    );
    // A gap is refused with the stored size.
    match s.append_log(j.id, a.id, 12, b"!", 9_000).await {
        Err(StoreError::LogGap(11)) => {}
        other => panic!("expected LogGap(11), got {other:?}"),
    }
    assert_eq!(s.read_log(j.id, 0, 1_000).await.unwrap(), b"hello world");
    let job = s.job(j.id).await.unwrap().unwrap();
    assert_eq!(job.log_size, 11);
    match s.append_log(j.id, a.id, -1, b"x", 9_000).await {
        Err(StoreError::LogGap(11)) => {}
        other => panic!("expected LogGap(11), got {other:?}"),
    }
    // Appending extends the lease.
    s.append_log(j.id, a.id, 11, b"\n", 20_000).await.unwrap();
    assert_eq!(
        s.job(j.id).await.unwrap().unwrap().lease_until,
        Some(20_000)
    );
    // The same chunk sent eight times at once (a retry racing its original) is stored once.
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = h.store.clone();
        sends.spawn(async move { store.append_log(j.id, a.id, 12, b"again\n", 20_000).await });
    }
    while let Some(r) = sends.join_next().await {
        assert_eq!(r.unwrap().unwrap(), 18);
    }
    assert_eq!(
        s.read_log(j.id, 0, 1_000).await.unwrap(),
        b"hello world\nagain\n"
    );
}

/// A resent chunk far behind the end of a log over 2 GiB changes nothing (offsets are 64-bit all
/// the way); the next chunk goes on at the end.
async fn append_log_past_2_gib(h: Harness) {
    let s = &*h.store;
    let (j, a) = running_job(s).await;
    s.append_log(j.id, a.id, 0, b"abc", 9_000).await.unwrap();
    let huge: i64 = 3_000_000_000;
    h.exec(&format!(
        "UPDATE jobs SET log_size = {huge} WHERE id = {}",
        j.id
    ))
    .await;
    assert_eq!(
        s.append_log(j.id, a.id, 0, b"abc", 9_000).await.unwrap(),
        huge
    );
    assert_eq!(
        s.append_log(j.id, a.id, huge - 1, b"xy", 9_000)
            .await
            .unwrap(),
        huge + 1
    );
    assert_eq!(s.read_log(j.id, huge, huge + 1).await.unwrap(), b"y");
}

async fn read_log_assembles_ranges(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    create(s, p.id, vec![job("a", 0, 2_000), job("b", 1, 2_000)]).await;
    let a = agent(s, "a", &[], true).await;
    let j = s.claim(&a, 3_000, 9_000).await.unwrap().unwrap();
    let other = s.claim(&a, 3_000, 9_000).await.unwrap().unwrap();
    s.append_log(other.id, a.id, 0, b"OTHER JOB", 9_000)
        .await
        .unwrap();
    let mut expected = Vec::new();
    for i in 0..40u32 {
        // Chunks of varying sizes, some resent with overlap.
        let chunk: Vec<u8> = (0..(i % 7 + 1) * 5)
            .map(|k| b'a' + ((i + k) % 26) as u8)
            .collect();
        let offset = expected.len() as i64;
        s.append_log(j.id, a.id, offset, &chunk, 9_000)
            .await
            .unwrap();
        expected.extend_from_slice(&chunk);
        if i % 5 == 0 && offset > 3 {
            let resend = expected[(offset - 3) as usize..].to_vec();
            s.append_log(j.id, a.id, offset - 3, &resend, 9_000)
                .await
                .unwrap();
        }
    }
    let len = expected.len() as i64;
    assert_eq!(s.job(j.id).await.unwrap().unwrap().log_size, len);
    assert_eq!(s.read_log(j.id, 0, len).await.unwrap(), expected);
    for (start, end) in [
        (0, 1),
        (3, 17),
        (5, 40),
        (39, 41),
        (100, 333),
        (len - 7, len + 50),
        (17, 17),
    ] {
        let want =
            &expected[(start as usize).min(expected.len())..(end as usize).min(expected.len())];
        assert_eq!(
            s.read_log(j.id, start, end).await.unwrap(),
            want,
            "range {start}..{end}"
        );
    }
    assert!(s.read_log(j.id, len, len + 10).await.unwrap().is_empty());
    assert!(s.read_log(j.id, 20, 10).await.unwrap().is_empty());
    assert_eq!(s.read_log(other.id, 0, 100).await.unwrap(), b"OTHER JOB");
    assert!(
        s.read_log(other.id + 1_000, 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn artifacts_roundtrip(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    create(s, p.id, vec![job("a", 0, 2_000)]).await;
    let a = agent(s, "a", &[], true).await;
    let j = s.claim(&a, 3_000, 9_000).await.unwrap().unwrap();
    assert!(s.artifacts(j.id).await.unwrap().is_none());
    assert!(s.artifacts_info(j.id).await.unwrap().is_none());
    // Over two chunks: three chunk rows.
    let archive: Vec<u8> = (0..2 * ARTIFACT_CHUNK as u32 + 200_000)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    s.put_artifacts(j.id, a.id, &archive, 12_000).await.unwrap();
    assert_eq!(s.artifacts(j.id).await.unwrap().unwrap(), archive);
    let info = s.artifacts_info(j.id).await.unwrap().unwrap();
    assert_eq!((info.size, info.chunks), (archive.len() as i64, 3));
    let last = s
        .artifact_chunk(j.id, info.upload_id, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last, archive[2 * ARTIFACT_CHUNK..]);
    let job = s.job(j.id).await.unwrap().unwrap();
    assert!(job.has_artifacts);
    assert_eq!(job.lease_until, Some(12_000));
    // A second upload replaces the first.
    s.put_artifacts(j.id, a.id, b"second", 12_000)
        .await
        .unwrap();
    assert_eq!(s.artifacts(j.id).await.unwrap().unwrap(), b"second");
}

/// A running job `a` of a new pipeline and the agent running it.
async fn running_job(s: &dyn Store) -> (gantry_store::JobRecord, gantry_store::AgentRecord) {
    let p = project(s, "p").await;
    create(s, p.id, vec![job("a", 0, 2_000)]).await;
    let a = agent(s, "a", &[], true).await;
    let j = s.claim(&a, 3_000, 9_000).await.unwrap().unwrap();
    (j, a)
}

async fn artifact_chunks_roundtrip(h: Harness) {
    let s = &*h.store;
    let (j, a) = running_job(s).await;
    let upload = s.begin_artifacts(j.id, a.id, 10_000).await.unwrap();
    assert_eq!(
        s.job(j.id).await.unwrap().unwrap().lease_until,
        Some(10_000)
    );
    // Chunks of any size, written out of order, and one written twice (a retried write).
    s.put_artifact_chunk(j.id, upload, 1, b"world")
        .await
        .unwrap();
    s.put_artifact_chunk(j.id, upload, 0, b"hullo ")
        .await
        .unwrap();
    s.put_artifact_chunk(j.id, upload, 0, b"hello ")
        .await
        .unwrap();
    s.put_artifact_chunk(j.id, upload, 2, b"!").await.unwrap();
    s.commit_artifacts(j.id, a.id, upload, 3, 12, 11_000)
        .await
        .unwrap();
    let info = s.artifacts_info(j.id).await.unwrap().unwrap();
    assert_eq!((info.upload_id, info.size, info.chunks), (upload, 12, 3));
    assert_eq!(s.artifacts(j.id).await.unwrap().unwrap(), b"hello world!");
    assert_eq!(
        s.artifact_chunk(j.id, upload, 1).await.unwrap().unwrap(),
        b"world"
    );
    assert!(s.artifact_chunk(j.id, upload, 3).await.unwrap().is_none());
    // Another job's id does not reach these chunks.
    assert!(
        s.artifact_chunk(j.id + 1, upload, 0)
            .await
            .unwrap()
            .is_none()
    );
    let job = s.job(j.id).await.unwrap().unwrap();
    assert!(job.has_artifacts);
    assert_eq!(job.lease_until, Some(11_000));
    // Committing the same upload again (a retried commit) changes nothing.
    s.commit_artifacts(j.id, a.id, upload, 3, 12, 11_000)
        .await
        .unwrap();
    assert_eq!(s.artifacts(j.id).await.unwrap().unwrap(), b"hello world!");
}

async fn artifact_reupload_replaces_atomically(h: Harness) {
    let s = &*h.store;
    let (j, a) = running_job(s).await;
    s.put_artifacts(j.id, a.id, b"first archive", 10_000)
        .await
        .unwrap();
    let first = s.artifacts_info(j.id).await.unwrap().unwrap();
    let second = s.begin_artifacts(j.id, a.id, 10_000).await.unwrap();
    assert_ne!(second, first.upload_id);
    s.put_artifact_chunk(j.id, second, 0, b"second ")
        .await
        .unwrap();
    // While the new upload is being written, readers get the old archive whole.
    assert_eq!(s.artifacts(j.id).await.unwrap().unwrap(), b"first archive");
    s.put_artifact_chunk(j.id, second, 1, b"archive")
        .await
        .unwrap();
    assert_eq!(s.artifacts(j.id).await.unwrap().unwrap(), b"first archive");
    s.commit_artifacts(j.id, a.id, second, 2, 14, 10_000)
        .await
        .unwrap();
    assert_eq!(s.artifacts(j.id).await.unwrap().unwrap(), b"second archive");
    // The replaced upload's chunks are gone: a reader still on it notices instead of mixing.
    assert!(
        s.artifact_chunk(j.id, first.upload_id, 0)
            .await
            .unwrap()
            .is_none()
    );
    // Aborting the committed upload keeps it.
    s.abort_artifacts(j.id, second).await.unwrap();
    assert_eq!(s.artifacts(j.id).await.unwrap().unwrap(), b"second archive");
}

async fn unfinished_artifact_upload_is_not_served(h: Harness) {
    let s = &*h.store;
    let (j, a) = running_job(s).await;
    let upload = s.begin_artifacts(j.id, a.id, 10_000).await.unwrap();
    s.put_artifact_chunk(j.id, upload, 0, b"half of it")
        .await
        .unwrap();
    assert!(s.artifacts_info(j.id).await.unwrap().is_none());
    assert!(s.artifacts(j.id).await.unwrap().is_none());
    assert!(!s.job(j.id).await.unwrap().unwrap().has_artifacts);
    // A retry starts over; the abandoned upload is dropped and can no longer be committed.
    let retry = s.begin_artifacts(j.id, a.id, 10_000).await.unwrap();
    assert!(s.artifact_chunk(j.id, upload, 0).await.unwrap().is_none());
    assert!(matches!(
        s.put_artifact_chunk(j.id, upload, 1, b"rest").await,
        Err(StoreError::UploadGone)
    ));
    assert!(matches!(
        s.commit_artifacts(j.id, a.id, upload, 1, 10, 10_000).await,
        Err(StoreError::UploadGone)
    ));
    assert!(s.artifacts_info(j.id).await.unwrap().is_none());
    // An aborted upload is gone too.
    s.put_artifact_chunk(j.id, retry, 0, b"aborted")
        .await
        .unwrap();
    s.abort_artifacts(j.id, retry).await.unwrap();
    assert!(s.artifact_chunk(j.id, retry, 0).await.unwrap().is_none());
    assert_eq!(
        h.artifact_chunk_rows().await,
        0,
        "chunks go with their upload"
    );
    assert!(matches!(
        s.commit_artifacts(j.id, a.id, retry, 1, 7, 10_000).await,
        Err(StoreError::UploadGone)
    ));
    assert!(s.artifacts(j.id).await.unwrap().is_none());
}

/// An upload cut off by a crash (its job then ended) is dropped with its chunks; the job's current
/// archive and a running job's upload in progress stay.
async fn stale_artifact_uploads_are_dropped(h: Harness) {
    let s = &*h.store;
    let (j, a) = running_job(s).await;
    let committed = s.begin_artifacts(j.id, a.id, 10_000).await.unwrap();
    s.put_artifact_chunk(j.id, committed, 0, b"kept")
        .await
        .unwrap();
    s.commit_artifacts(j.id, a.id, committed, 1, 4, 10_000)
        .await
        .unwrap();
    let cut = s.begin_artifacts(j.id, a.id, 10_000).await.unwrap();
    s.put_artifact_chunk(j.id, cut, 0, b"cut off")
        .await
        .unwrap();
    // While the job runs, its upload may still be committed: nothing is dropped.
    assert_eq!(s.drop_stale_artifact_uploads().await.unwrap(), 0);
    assert!(s.artifact_chunk(j.id, cut, 0).await.unwrap().is_some());
    assert_eq!(h.artifact_chunk_rows().await, 2);
    s.finish(j.id, a.id, &done(JobStatus::Success, 4_000))
        .await
        .unwrap();
    assert_eq!(s.drop_stale_artifact_uploads().await.unwrap(), 1);
    assert!(s.artifact_chunk(j.id, cut, 0).await.unwrap().is_none());
    // No chunk is left behind without its upload.
    assert_eq!(h.artifact_chunk_rows().await, 1);
    assert_eq!(s.artifacts(j.id).await.unwrap().unwrap(), b"kept");
    assert_eq!(s.drop_stale_artifact_uploads().await.unwrap(), 0);
}

async fn artifact_commit_checks_lease_and_chunks(h: Harness) {
    let s = &*h.store;
    let (j, a) = running_job(s).await;
    let thief = agent(s, "thief", &[], true).await;
    lost(s.begin_artifacts(j.id, thief.id, 10_000).await);
    let upload = s.begin_artifacts(j.id, a.id, 10_000).await.unwrap();
    s.put_artifact_chunk(j.id, upload, 0, b"abc").await.unwrap();
    s.put_artifact_chunk(j.id, upload, 2, b"ghi").await.unwrap();
    lost(
        s.commit_artifacts(j.id, thief.id, upload, 3, 9, 10_000)
            .await,
    );
    // A missing chunk, a wrong count or a wrong size is refused.
    for (chunks, size) in [(3, 9), (2, 6), (3, 6)] {
        assert!(
            matches!(
                s.commit_artifacts(j.id, a.id, upload, chunks, size, 10_000)
                    .await,
                Err(StoreError::UploadGone)
            ),
            "{chunks} chunks, {size} bytes"
        );
    }
    s.put_artifact_chunk(j.id, upload, 1, b"def").await.unwrap();
    assert!(matches!(
        s.commit_artifacts(j.id, a.id, upload, 3, 8, 10_000).await,
        Err(StoreError::UploadGone)
    ));
    assert!(s.artifacts_info(j.id).await.unwrap().is_none());
    // Once the job is finished, the upload cannot be committed.
    s.finish(j.id, a.id, &done(JobStatus::Success, 4_000))
        .await
        .unwrap();
    lost(s.commit_artifacts(j.id, a.id, upload, 3, 9, 10_000).await);
    lost(s.begin_artifacts(j.id, a.id, 10_000).await);
    assert!(s.artifacts(j.id).await.unwrap().is_none());
    assert!(!s.job(j.id).await.unwrap().unwrap().has_artifacts);
}

async fn single_row_artifacts_survive_migration(h: Harness) {
    let s = &*h.store;
    let (j, a) = running_job(s).await;
    let p = s.project("p").await.unwrap().unwrap();
    create(s, p.id, vec![job("b", 0, 2_000)]).await;
    let other = s.claim(&a, 3_000, 9_000).await.unwrap().unwrap();
    let big: Vec<u8> = (0..ARTIFACT_CHUNK as u32 * 2 + 5)
        .map(|i| (i % 253) as u8)
        .collect();
    h.rewind_to_single_row_artifacts(&[(j.id, big.clone()), (other.id, b"small".to_vec())])
        .await;
    let h = h.reopen().await;
    let s = &*h.store;
    assert_eq!(s.artifacts(j.id).await.unwrap().unwrap(), big);
    let info = s.artifacts_info(j.id).await.unwrap().unwrap();
    assert_eq!((info.size, info.chunks), (big.len() as i64, 3));
    assert_eq!(s.artifacts(other.id).await.unwrap().unwrap(), b"small");
    // New uploads get ids of their own and replace the migrated archives.
    s.put_artifacts(j.id, a.id, b"new", 10_000).await.unwrap();
    assert_eq!(s.artifacts(j.id).await.unwrap().unwrap(), b"new");
    assert_eq!(s.artifacts(other.id).await.unwrap().unwrap(), b"small");
    s.put_artifacts(other.id, a.id, b"newer", 10_000)
        .await
        .unwrap();
    assert_eq!(s.artifacts(other.id).await.unwrap().unwrap(), b"newer");
    assert_eq!(s.artifacts(j.id).await.unwrap().unwrap(), b"new");
}

async fn agents_register_and_list(h: Harness) {
    let s = &*h.store;
    let a = agent(s, "a", &["docker", "linux"], false).await;
    assert_eq!(a.tags, ["docker", "linux"]);
    assert!(!a.run_untagged);
    assert_eq!(a.executor, "shell");
    assert_eq!(a.concurrency, 1);
    assert_eq!(a.version, "0.1.0");
    assert_eq!(a.registered_at, 1_000);
    assert_eq!(a.last_seen_at, None);
    assert_eq!(a.protocol, Some(3));
    let b = agent(s, "b", &[], true).await;
    assert!(s.agent_by_token("unknown").await.unwrap().is_none());
    s.touch_agent(a.id, 5_000, None).await.unwrap();
    let all = s.agents().await.unwrap();
    assert_eq!(all.iter().map(|x| x.id).collect::<Vec<_>>(), [a.id, b.id]);
    assert_eq!(all[0].last_seen_at, Some(5_000));
    assert_eq!(
        all[0].protocol,
        Some(3),
        "a touch without a protocol keeps it"
    );
    assert_eq!(all[1], b);
    // An agent upgraded since it registered says so in its next request.
    s.touch_agent(a.id, 6_000, Some(4)).await.unwrap();
    let a = s.agent_by_token("hash-of-a").await.unwrap().unwrap();
    assert_eq!((a.last_seen_at, a.protocol), (Some(6_000), Some(4)));
    // A token hash belongs to one agent.
    let err = s
        .register_agent(&new_agent("c", "hash-of-a"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

/// The agents' jobs are the running ones leased to them, read for every agent at once, each with
/// its pipeline, project and claim time; a finished job is no longer one.
async fn agent_jobs_are_the_running_ones(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let a = agent(s, "a", &[], true).await;
    let b = agent(s, "b", &[], true).await;
    assert_eq!(s.agent_jobs().await.unwrap(), []);
    let id = create(
        s,
        p.id,
        vec![
            job("one", 0, 2_000),
            job("two", 1, 2_000),
            job("three", 2, 2_000),
            job("queued", 3, 2_000),
        ],
    )
    .await;
    let one = s.claim(&a, 3_000, 90_000).await.unwrap().unwrap();
    let two = s.claim(&b, 4_000, 90_000).await.unwrap().unwrap();
    let three = s.claim(&a, 5_000, 90_000).await.unwrap().unwrap();
    let running = |agent_id: i64, j: &gantry_store::JobRecord, claimed_at: i64| AgentJobRecord {
        agent_id,
        job_id: j.id,
        name: j.name.clone(),
        pipeline_id: id,
        project_name: "p".to_owned(),
        claimed_at,
    };
    assert_eq!(
        s.agent_jobs().await.unwrap(),
        [
            running(a.id, &one, 3_000),
            running(a.id, &three, 5_000),
            running(b.id, &two, 4_000),
        ]
    );
    s.finish(one.id, a.id, &done(JobStatus::Success, 6_000))
        .await
        .unwrap();
    assert_eq!(
        s.agent_jobs().await.unwrap(),
        [running(a.id, &three, 5_000), running(b.id, &two, 4_000)]
    );
}

fn token(project_id: i64, name: &str, hash: &str, expires_at: Option<i64>) -> NewProjectToken {
    NewProjectToken {
        project_id,
        name: name.to_owned(),
        token_hash: hash.to_owned(),
        created_at: 2_000,
        expires_at,
        read_only: name.starts_with("read"),
    }
}

async fn project_tokens_create_list_find_delete(h: Harness) {
    let s = &*h.store;
    let a = project(s, "alpha").await;
    let b = project(s, "beta").await;
    let t1 = s
        .create_project_token(&token(a.id, "ci", "hash-1", None))
        .await
        .unwrap();
    assert_eq!(t1.project_id, a.id);
    assert_eq!(t1.project_name, "alpha");
    assert_eq!(t1.name, "ci");
    assert_eq!(t1.token_hash, "hash-1");
    assert_eq!(t1.created_at, 2_000);
    assert_eq!(t1.expires_at, None);
    // Names need not be unique; hashes must be.
    let t2 = s
        .create_project_token(&token(a.id, "ci", "hash-2", Some(9_000)))
        .await
        .unwrap();
    assert_ne!(t1.id, t2.id);
    assert_eq!(t2.expires_at, Some(9_000));
    let err = s
        .create_project_token(&token(b.id, "other", "hash-1", None))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let t3 = s
        .create_project_token(&token(b.id, "deploy", "hash-3", None))
        .await
        .unwrap();
    assert_eq!(t3.project_name, "beta");
    assert!(!t3.read_only);
    let reader = s
        .create_project_token(&token(b.id, "reader", "hash-4", None))
        .await
        .unwrap();
    assert!(reader.read_only);
    let found = s.project_token_by_hash("hash-4").await.unwrap().unwrap();
    assert!(found.read_only);
    s.delete_project_token(b.id, reader.id).await.unwrap();
    // Lists hold one project's tokens, by id.
    assert_eq!(
        s.project_tokens(a.id).await.unwrap(),
        [t1.clone(), t2.clone()]
    );
    assert_eq!(
        s.project_tokens(b.id).await.unwrap(),
        std::slice::from_ref(&t3)
    );
    // Found by hash, with the project's name.
    assert_eq!(
        s.project_token_by_hash("hash-2").await.unwrap(),
        Some(t2.clone())
    );
    assert_eq!(
        s.project_token_by_hash("hash-3").await.unwrap(),
        Some(t3.clone())
    );
    assert_eq!(s.project_token_by_hash("unknown").await.unwrap(), None);
    // Deleting needs the right project.
    assert!(!s.delete_project_token(b.id, t1.id).await.unwrap());
    assert!(s.delete_project_token(a.id, t1.id).await.unwrap());
    assert!(!s.delete_project_token(a.id, t1.id).await.unwrap());
    assert_eq!(s.project_token_by_hash("hash-1").await.unwrap(), None);
    assert_eq!(
        s.project_tokens(a.id).await.unwrap(),
        std::slice::from_ref(&t2)
    );
    // A deleted token's hash can be stored again (a new token with the same secret is unlikely,
    // but nothing of the old one remains).
    let again = s
        .create_project_token(&token(a.id, "again", "hash-1", None))
        .await
        .unwrap();
    assert_ne!(again.id, t1.id);
    // Tokens survive a restart.
    let h = h.reopen().await;
    assert_eq!(h.store.project_tokens(a.id).await.unwrap(), [t2, again]);
}

async fn project_of_pipelines_and_jobs(h: Harness) {
    let s = &*h.store;
    let a = project(s, "alpha").await;
    let b = project(s, "beta").await;
    let pa = create(s, a.id, vec![job("x", 0, 2_000), job("y", 1, 2_000)]).await;
    let pb = create(s, b.id, vec![job("z", 0, 2_000)]).await;
    assert_eq!(s.pipeline_project(pa).await.unwrap(), Some(a.id));
    assert_eq!(s.pipeline_project(pb).await.unwrap(), Some(b.id));
    assert_eq!(s.pipeline_project(pb + 1_000).await.unwrap(), None);
    let jobs_a = s.pipeline(pa).await.unwrap().unwrap().jobs;
    let jobs_b = s.pipeline(pb).await.unwrap().unwrap().jobs;
    for j in &jobs_a {
        assert_eq!(s.job_project(j.id).await.unwrap(), Some(a.id));
    }
    assert_eq!(s.job_project(jobs_b[0].id).await.unwrap(), Some(b.id));
    assert_eq!(s.job_project(jobs_b[0].id + 1_000).await.unwrap(), None);
}

async fn queue_depth_counts_pending(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    assert_eq!(s.queue_depth().await.unwrap(), 0);
    let mut manual = job("m", 3, 2_000);
    manual.status = JobStatus::Manual;
    create(
        s,
        p.id,
        vec![
            job("a", 0, 2_000),
            job("b", 1, 2_000),
            job("c", 2, 2_000),
            manual,
        ],
    )
    .await;
    assert_eq!(s.queue_depth().await.unwrap(), 3);
    let a = agent(s, "a", &[], true).await;
    s.claim(&a, 3_000, 9_000).await.unwrap().unwrap();
    assert_eq!(s.queue_depth().await.unwrap(), 2);
}

async fn reopened_store_keeps_everything(h: Harness) {
    let s = h.store.clone();
    let p = project(&*s, "p").await;
    let (d, _) = s.insert_delivery(&delivery(p.id, "d", 100)).await.unwrap();
    let mut new = pipeline(p.id, vec![job("a", 0, 2_000), job("b", 1, 2_000)]);
    new.delivery_id = Some(d);
    let id = s.create_pipeline(&new).await.unwrap();
    let a = agent(&*s, "a", &["x"], true).await;
    let j = s.claim(&a, 3_000, 9_000).await.unwrap().unwrap();
    s.append_log(j.id, a.id, 0, b"line 1\nline 2\n", 9_000)
        .await
        .unwrap();
    s.put_artifacts(j.id, a.id, b"archive", 9_000)
        .await
        .unwrap();
    let pipeline_before = s.pipeline(id).await.unwrap().unwrap();
    drop(s);
    let h = h.reopen().await;
    let s = &*h.store;
    assert_eq!(s.project("p").await.unwrap().unwrap(), p);
    assert_eq!(s.pipeline(id).await.unwrap().unwrap(), pipeline_before);
    assert_eq!(s.read_log(j.id, 0, 100).await.unwrap(), b"line 1\nline 2\n");
    assert_eq!(s.artifacts(j.id).await.unwrap().unwrap(), b"archive");
    assert_eq!(s.agent_by_token("hash-of-a").await.unwrap().unwrap(), a);
    assert_eq!(
        s.insert_delivery(&delivery(p.id, "d", 200)).await.unwrap(),
        (d, true)
    );
    assert_eq!(s.queue_depth().await.unwrap(), 1);
    // The reopened store goes on where the first stopped.
    assert_eq!(
        s.append_log(j.id, a.id, 14, b"line 3\n", 9_000)
            .await
            .unwrap(),
        21
    );
    s.finish(j.id, a.id, &done(JobStatus::Success, 4_000))
        .await
        .unwrap();
    assert_eq!(s.claim(&a, 5_000, 9_000).await.unwrap().unwrap().name, "b");
}

/// Pooled connections are not pinged while in steady use, only after an idle second: connections
/// the server dropped meanwhile (a restart, an administrator's `pg_terminate_backend`) are replaced
/// before they fail a statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replaces_connections_the_server_dropped() {
    harness::postgres(|h: Harness| async move {
        let s = &*h.store;
        let p = project(s, "p").await;
        for _ in 0..4 {
            assert_eq!(s.project(&p.name).await.unwrap().unwrap().id, p.id);
        }
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(h.url())
            .await
            .unwrap();
        let dropped: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert!(!dropped.is_empty(), "the store holds connections");
        tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
        for _ in 0..4 {
            assert_eq!(s.project(&p.name).await.unwrap().unwrap().id, p.id);
        }
    })
    .await;
}

#[tokio::test]
async fn connect_rejects_other_urls() {
    let err = connect("mysql://root:secret@localhost/db")
        .await
        .err()
        .unwrap();
    let message = err.to_string();
    assert!(message.contains("unsupported database URL"), "{message}");
    assert!(
        !message.contains("secret"),
        "the password is not shown: {message}"
    );
}

#[tokio::test]
async fn in_memory_sqlite_works() {
    let s = connect("sqlite::memory:").await.unwrap();
    let p = project(&*s, "p").await;
    create(&*s, p.id, vec![job("a", 0, 2_000)]).await;
    let a = agent(&*s, "a", &[], true).await;
    let j = s.claim(&a, 3_000, 9_000).await.unwrap().unwrap();
    s.append_log(j.id, a.id, 0, b"in memory", 9_000)
        .await
        .unwrap();
    assert_eq!(s.read_log(j.id, 3, 100).await.unwrap(), b"memory");
}

/// Under a steady stream of commits, the WAL keeps starting over: it stays far below the
/// 10,000 pages (40 MB) at which the writer would stop to checkpoint, and sync, itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_stays_short_under_steady_writes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gantry.db");
    let s = connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    let p = project(&*s, "p").await;
    let wal = dir.path().join("gantry.db-wal");
    let mut largest = 0;
    // 16 writers without pause: random ids spread over the key index, about a page each.
    let mut tasks = Vec::new();
    for t in 0..16_u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..750_u64 {
                let id = format!(
                    "{:016x}",
                    (t * 1_000 + i).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                );
                s.insert_delivery(&delivery(p.id, &id, 100)).await.unwrap();
            }
        }));
    }
    while tasks.iter().any(|t| !t.is_finished()) {
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stored = s.deliveries(p.id, page(1, 1)).await.unwrap();
    assert_eq!(stored.total, 12_000);
    assert!(
        largest < 20 << 20,
        "the WAL grew to {largest} bytes while 12,000 deliveries were stored"
    );
}

/// Reports of `coverage` percent and `total` tests, `failed` of them failing.
fn reports(coverage: Option<f64>, total: i64, failed: i64) -> NewReports {
    NewReports {
        reports: Some(format!("{{\"tests\":{{\"total\":{total}}}}}").into_bytes()),
        gate: None,
        coverage,
        tests_total: Some(total),
        tests_failed: Some(failed),
        gate_passed: None,
    }
}

/// A finish with reports stores them in its transaction: a finish refused for a lost lease
/// stores nothing, and saving again replaces (never duplicates, never fails).
async fn reports_are_stored_with_the_finish_once(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let id = create(s, p.id, vec![job("a", 0, 2_000), job("b", 1, 2_000)]).await;
    let owner = agent(s, "owner", &[], true).await;
    let thief = agent(s, "thief", &[], true).await;
    let ja = s.claim(&owner, 3_000, 60_000).await.unwrap().unwrap();
    let with_reports = |r: NewReports| JobResult {
        reports: Some(r),
        ..done(JobStatus::Success, 4_000)
    };
    lost(
        s.finish(ja.id, thief.id, &with_reports(reports(Some(10.0), 1, 0)))
            .await,
    );
    let unfinished = s.job_reports(ja.id).await.unwrap().unwrap();
    assert_eq!(
        unfinished.stored, None,
        "a refused finish stores no reports"
    );
    assert_eq!(unfinished.status, JobStatus::Running);

    let mut first = reports(Some(81.5), 12, 2);
    first.gate = Some(b"{\"passed\":false}".to_vec());
    first.gate_passed = Some(false);
    assert_eq!(
        s.finish(ja.id, owner.id, &with_reports(first.clone()))
            .await
            .unwrap(),
        id
    );
    let got = s.job_reports(ja.id).await.unwrap().unwrap();
    assert_eq!(got.stored.as_ref(), Some(&first));
    let gates = s.pipeline_gates(id).await.unwrap();
    assert_eq!(gates.len(), 1);
    let gate = gates[0].stored.as_ref().unwrap();
    assert_eq!(
        (gates[0].job_id, gate.reports.as_ref()),
        (ja.id, None),
        "only the gate"
    );
    assert_eq!(
        (gate.gate.as_ref(), gate.gate_passed),
        (first.gate.as_ref(), Some(false))
    );
    assert_eq!((got.name.as_str(), got.status), ("a", JobStatus::Success));
    // The retried finish is refused (the job is over), and what it stored stays.
    lost(
        s.finish(ja.id, owner.id, &with_reports(first.clone()))
            .await,
    );
    assert_eq!(
        s.job_reports(ja.id).await.unwrap().unwrap().stored,
        Some(first.clone())
    );

    assert!(s.save_reports(ja.id, &first).await.unwrap());
    let second = reports(Some(90.0), 13, 0);
    assert!(s.save_reports(ja.id, &second).await.unwrap());
    assert!(
        s.pipeline_gates(id).await.unwrap().is_empty(),
        "no gate any more"
    );
    let all = s.pipeline_reports(id).await.unwrap();
    assert_eq!(all.len(), 1, "one row per job: {all:?}");
    assert_eq!(all[0].stored.as_ref(), Some(&second));
    assert!(!s.save_reports(9_999, &second).await.unwrap());
    assert!(s.job_reports(9_999).await.unwrap().is_none());

    // A finish without reports stores none; the job still reads, without them.
    let jb = s.claim(&owner, 5_000, 60_000).await.unwrap().unwrap();
    s.finish(jb.id, owner.id, &done(JobStatus::Failed, 6_000))
        .await
        .unwrap();
    let b = s.job_reports(jb.id).await.unwrap().unwrap();
    assert_eq!((b.stored, b.status), (None, JobStatus::Failed));
    let reopened = h.reopen().await;
    let again = reopened.store.job_reports(ja.id).await.unwrap().unwrap();
    assert_eq!(again.stored, Some(second));
}

/// A pipeline of jobs `a`, `b` and `c` that failed: `a` with reports, `b` with a `coverage:`
/// value, `c` with neither; answers its project, its id, the agent and the jobs' ids.
async fn three_jobs_ended(
    s: &dyn Store,
) -> (
    gantry_store::ProjectRecord,
    i64,
    gantry_store::AgentRecord,
    Vec<i64>,
) {
    let p = project(s, "p").await;
    let jobs = vec![job("a", 0, 2_000), job("b", 1, 2_000), job("c", 2, 2_000)];
    let id = create(s, p.id, jobs).await;
    let ag = agent(s, "a", &[], true).await;
    let mut ids = Vec::new();
    for (i, cov) in [(0, None), (1, Some(50.0)), (2, None)] {
        let j = s.claim(&ag, 3_000, 60_000).await.unwrap().unwrap();
        let r = JobResult {
            coverage: cov,
            reports: (i == 0).then(|| reports(Some(70.0), 3, 1)),
            ..done(JobStatus::Failed, 4_000)
        };
        s.finish(j.id, ag.id, &r).await.unwrap();
        ids.push(j.id);
    }
    (p, id, ag, ids)
}

/// Adds attempt 2 of job `a` (position 0) to pipeline `id`.
async fn retry_a(s: &dyn Store, id: i64) {
    let full = s.pipeline(id).await.unwrap().unwrap();
    let mut retry = job("a", 0, 5_000);
    retry.attempt = 2;
    let changes = Changes {
        new_jobs: vec![retry],
        ..Changes::default()
    };
    assert!(s.apply(id, full.version, &changes).await.unwrap());
}

/// A pipeline's reports are those of each job's latest attempt that stored reports or has a
/// `coverage:` value, in position order.
async fn pipeline_reports_read_latest_attempts(h: Harness) {
    let s = &*h.store;
    let (_, id, ag, ids) = three_jobs_ended(s).await;
    let got = s.pipeline_reports(id).await.unwrap();
    let names: Vec<_> = got
        .iter()
        .map(|r| (r.name.as_str(), r.job_coverage))
        .collect();
    assert_eq!(names, [("a", None), ("b", Some(50.0))], "c has neither");
    assert_eq!(got[0].stored, Some(reports(Some(70.0), 3, 1)));
    assert_eq!(got[1].stored, None);

    // A retry of `a` (attempt 2) hides attempt 1's reports until it stores its own.
    retry_a(s, id).await;
    let got = s.pipeline_reports(id).await.unwrap();
    assert_eq!(
        got.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    let j = s.claim(&ag, 6_000, 60_000).await.unwrap().unwrap();
    assert_eq!((j.name.as_str(), j.attempt), ("a", 2));
    let r = JobResult {
        reports: Some(reports(Some(75.0), 3, 0)),
        ..done(JobStatus::Success, 7_000)
    };
    s.finish(j.id, ag.id, &r).await.unwrap();
    let got = s.pipeline_reports(id).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].job_id, got[0].stored.as_ref()),
        (j.id, Some(&reports(Some(75.0), 3, 0)))
    );
    // The first attempt's reports are still its own.
    let first = s.job_reports(ids[0]).await.unwrap().unwrap();
    assert_eq!(first.stored, Some(reports(Some(70.0), 3, 1)));
}

/// Claims the next job at `at` and ends it a success with `r`.
async fn succeed_with(
    s: &dyn Store,
    ag: &gantry_store::AgentRecord,
    at: i64,
    r: NewReports,
) -> gantry_store::JobRecord {
    let j = s.claim(ag, at, 60_000).await.unwrap().unwrap();
    let result = JobResult {
        reports: Some(r),
        ..done(JobStatus::Success, at + 1_000)
    };
    s.finish(j.id, ag.id, &result).await.unwrap();
    j
}

/// The reports of given jobs: each of those (any attempt, of any pipeline) that stored reports
/// or has a `coverage:` value, in position and attempt order; no other job's.
async fn jobs_reports_read_the_given_jobs(h: Harness) {
    let s = &*h.store;
    let (p, id, ag, ids) = three_jobs_ended(s).await;
    // A retry of `a` (attempt 2) with reports of its own: both attempts read when asked for.
    retry_a(s, id).await;
    let j = succeed_with(s, &ag, 6_000, reports(Some(75.0), 3, 0)).await;
    // Another pipeline's job with reports is read only when named.
    let other = create(s, p.id, vec![job("a", 0, 8_000)]).await;
    let o = succeed_with(s, &ag, 9_000, reports(Some(1.0), 1, 0)).await;
    assert_eq!(o.pipeline_id, other);

    let got = s.jobs_reports(&[j.id, ids[1], ids[0]]).await.unwrap();
    let read: Vec<_> = got
        .iter()
        .map(|r| {
            (
                r.job_id,
                r.stored.as_ref().and_then(|x| x.coverage),
                r.job_coverage,
            )
        })
        .collect();
    assert_eq!(
        read,
        [
            (ids[0], Some(70.0), None),
            (j.id, Some(75.0), None),
            (ids[1], None, Some(50.0))
        ],
        "position, then attempt order; c and the other pipeline's job not asked for"
    );
    assert_eq!(got[0].stored, Some(reports(Some(70.0), 3, 1)));
    // A job with neither reports nor coverage, an unknown id and no id read nothing.
    for none in [&[ids[2]][..], &[o.id + 1_000], &[]] {
        let got = s.jobs_reports(none).await.unwrap();
        assert!(got.is_empty(), "{none:?}: {got:?}");
    }
    let c = s.jobs_reports(&[ids[2], o.id]).await.unwrap();
    assert_eq!(
        c.iter().map(|r| r.job_id).collect::<Vec<_>>(),
        [o.id],
        "any pipeline's jobs"
    );
}

/// The coverage trend of a ref: its pipelines with coverage, newest first, each the mean of its
/// jobs' latest attempts (stored coverage, else the regex's), paginated.
async fn coverage_trend_of_a_ref(h: Harness) {
    let s = &*h.store;
    let p = project(s, "p").await;
    let other = project(s, "other").await;
    let ag = agent(s, "a", &[], true).await;
    // (ref, [(stored coverage, regex coverage)] per job)
    type Jobs<'a> = &'a [(Option<f64>, Option<f64>)];
    let runs: [(&str, Jobs); 5] = [
        ("main", &[(Some(60.0), Some(99.0)), (None, Some(80.0))]),
        ("dev", &[(Some(10.0), None)]),
        ("main", &[(None, None)]),
        (
            "main",
            &[(Some(90.0), None), (None, None), (Some(70.0), None)],
        ),
        ("main", &[(None, Some(55.5))]),
    ];
    let mut ids = Vec::new();
    for (git_ref, jobs) in runs {
        let mut new = pipeline(
            p.id,
            (0..jobs.len())
                .map(|i| job(&format!("j{i}"), i as i64, 2_000))
                .collect(),
        );
        new.git_ref = git_ref.to_owned();
        let id = s.create_pipeline(&new).await.unwrap();
        for (stored, regex) in jobs {
            let j = s.claim(&ag, 3_000, 60_000).await.unwrap().unwrap();
            let r = JobResult {
                coverage: *regex,
                reports: Some(NewReports {
                    coverage: *stored,
                    ..NewReports::default()
                }),
                ..done(JobStatus::Success, 4_000)
            };
            s.finish(j.id, ag.id, &r).await.unwrap();
        }
        ids.push(id);
    }
    let mut new = pipeline(other.id, vec![job("x", 0, 2_000)]);
    new.git_ref = "main".to_owned();
    s.create_pipeline(&new).await.unwrap();
    let trend = s.coverage_trend(p.id, "main", page(1, 2)).await.unwrap();
    assert_eq!(trend.total, 3, "pipelines without coverage are left out");
    let points: Vec<_> = trend
        .items
        .iter()
        .map(|c| (c.pipeline_id, c.coverage))
        .collect();
    assert_eq!(points, [(ids[4], 55.5), (ids[3], 80.0)]);
    assert_eq!(
        trend.items[0].sha,
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(trend.items[0].created_at, 2_000);
    let rest = s.coverage_trend(p.id, "main", page(2, 2)).await.unwrap();
    let points: Vec<_> = rest
        .items
        .iter()
        .map(|c| (c.pipeline_id, c.coverage))
        .collect();
    assert_eq!(
        points,
        [(ids[0], 70.0)],
        "stored coverage wins over the regex's"
    );
    let dev = s.coverage_trend(p.id, "dev", page(1, 20)).await.unwrap();
    assert_eq!(dev.items.len(), 1);
    let none = s.coverage_trend(p.id, "nope", page(1, 20)).await.unwrap();
    assert_eq!((none.total, none.items.len()), (0, 0));
}

async fn notifications_wait_retry_and_survive_reopen(h: Harness) {
    let s = h.store.clone();
    let new = |pipeline_id, event: &str| gantry_store::NewNotification {
        pipeline_id,
        target: "sealed target".into(),
        event: event.into(),
        created_at: 1_000,
    };
    let a = s.insert_notification(&new(7, "a")).await.unwrap();
    let b = s.insert_notification(&new(7, "b")).await.unwrap();
    let c = s.insert_notification(&new(8, "c")).await.unwrap();
    assert_eq!(s.next_notification_at().await.unwrap(), Some(1_000));
    let ids = |v: Vec<gantry_store::NotificationRecord>| v.iter().map(|n| n.id).collect::<Vec<_>>();
    assert!(
        s.claim_notifications(999, 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(s.claim_notifications(1_000, 60_000, 2).await.unwrap()),
        [a, b]
    );
    // Claimed ones are not due again before the claim ends; `c` still is.
    assert_eq!(
        ids(s.claim_notifications(1_000, 60_000, 10).await.unwrap()),
        [c]
    );
    assert_eq!(s.next_notification_at().await.unwrap(), Some(60_000));
    // A failed attempt with a retry keeps `a` pending, out of the list until it is due.
    assert!(
        s.notification_attempt(a, Some("cannot connect"), Some(5_000))
            .await
            .unwrap()
    );
    assert!(s.notification_attempt(b, None, None).await.unwrap());
    assert!(
        s.notification_attempt(c, Some("HTTP 404"), None)
            .await
            .unwrap()
    );
    // Neither a sent nor a failed one changes again.
    assert!(!s.notification_attempt(b, Some("late"), None).await.unwrap());
    assert!(
        s.claim_notifications(4_999, 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.next_notification_at().await.unwrap(), Some(5_000));
    drop(s);
    let h = h.reopen().await;
    let s = &*h.store;
    let due = s.claim_notifications(5_000, 9_000, 10).await.unwrap();
    assert_eq!(ids(due.clone()), [a]);
    let n = &due[0];
    assert_eq!(
        (
            n.pipeline_id,
            n.target.as_str(),
            n.event.as_str(),
            n.status.as_str()
        ),
        (7, "sealed target", "a", "pending")
    );
    assert_eq!(
        (n.attempts, n.last_error.as_deref()),
        (1, Some("cannot connect"))
    );
    assert_eq!((n.next_attempt_at, n.created_at), (5_000, 1_000));
    // A sender that died with it claimed: it is due again when the claim ends.
    assert!(
        s.claim_notifications(8_999, 9_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(s.claim_notifications(9_000, 20_000, 10).await.unwrap()),
        [a]
    );
    let of_7 = s.notifications(7).await.unwrap();
    let states: Vec<(&str, i64)> = of_7
        .iter()
        .map(|n| (n.status.as_str(), n.attempts))
        .collect();
    assert_eq!(states, [("pending", 1), ("sent", 1)]);
    let of_8 = s.notifications(8).await.unwrap();
    assert_eq!(
        (of_8[0].status.as_str(), of_8[0].last_error.as_deref()),
        ("failed", Some("HTTP 404"))
    );
    assert!(s.notification_attempt(a, None, None).await.unwrap());
    assert_eq!(s.next_notification_at().await.unwrap(), None);
}

async fn previous_finished_status_of_a_ref(h: Harness) {
    let s = h.store.clone();
    let p = project(&*s, "p").await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(create(&*s, p.id, vec![job("a", 0, 0)]).await);
    }
    let set = |id: i64, git_ref: &str, status: &str| {
        format!("UPDATE pipelines SET git_ref = '{git_ref}', status = '{status}' WHERE id = {id}")
    };
    h.exec(&set(ids[0], "main", "failed")).await;
    h.exec(&set(ids[1], "main", "running")).await;
    h.exec(&set(ids[2], "other", "success")).await;
    h.exec(&set(ids[3], "main", "success")).await;
    let prev = |below| s.previous_finished_status(p.id, "main", below);
    assert_eq!(prev(ids[0]).await.unwrap(), None);
    // The running one and the other ref's are passed over.
    assert_eq!(prev(ids[3]).await.unwrap(), Some(PipelineStatus::Failed));
    assert_eq!(
        prev(ids[3] + 1).await.unwrap(),
        Some(PipelineStatus::Success)
    );
    assert_eq!(
        s.previous_finished_status(p.id, "other", ids[3])
            .await
            .unwrap(),
        Some(PipelineStatus::Success)
    );
}

async fn two_stores_claim_each_notification_once(h: Harness) {
    let (one, two) = (h.store.clone(), h.open_another().await);
    let mut all = Vec::new();
    for i in 0..40 {
        let n = gantry_store::NewNotification {
            pipeline_id: 1,
            target: "t".into(),
            event: format!("e{i}"),
            created_at: 1_000,
        };
        all.push(one.insert_notification(&n).await.unwrap());
    }
    let claim = |s: Arc<dyn Store>| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = s.claim_notifications(1_000, 60_000, 3).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.iter().map(|n| n.id));
            }
        })
    };
    let (a, b) = (claim(one), claim(two));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let mut both: Vec<i64> = a.iter().chain(&b).copied().collect();
    both.sort_unstable();
    assert_eq!(both, all, "each claimed once: {a:?} {b:?}");
}
