//! `verify:` in the runtime: deploy jobs verified with HTTP checks against a health endpoint the
//! test controls (Prometheus queries are `gantry-release`'s tests, against a real Prometheus).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gantry_pipeline::plan::{FailureReason, Job, Variable};
use gantry_pipeline::verify::{HttpCheck, OnFailure, Verify};
use gantry_runtime::JobStatus;
use gantry_runtime::gantry_release::Measurement;
use tokio::sync::watch;

use super::{Rec, Run, config, job, plan, repo, run, run_cfg};

/// A health endpoint on 127.0.0.1: each request's status is `answer(path, n)`, `n` counting the
/// requests from 1.
struct Health {
    url: String,
    asked: Arc<AtomicU64>,
}

impl Health {
    fn start(answer: impl Fn(&str, u64) -> u16 + Send + 'static) -> Health {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asked = Arc::new(AtomicU64::new(0));
        let count = asked.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                let status = answer(&path, n);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Health { url, asked }
    }
}

/// A deploy job whose script echoes its weight, with `after_script` echoing the job's status,
/// verified by one HTTP check of `url` every 100 ms for `duration`.
fn deploy(health: &Health, url: &str, duration: Duration, consecutive: u32) -> Job {
    let mut j = job(
        "deploy",
        3,
        &["echo \"deploying at weight $GANTRY_DEPLOY_WEIGHT\""],
    );
    j.after_script = vec!["echo \"after: $CI_JOB_STATUS\"".into()];
    j.variables = vec![Variable::new("HEALTH", health.url.clone())];
    j.verify = Some(Verify {
        interval: Duration::from_millis(100),
        duration,
        http: vec![HttpCheck {
            url: url.into(),
            expect_status: 200,
            consecutive_failures: consecutive,
            timeout: Duration::from_secs(2),
        }],
        ..Verify::default()
    });
    j
}

/// The job's measurements, with their weights, in order.
fn measurements(run: &Run, of: &str) -> Vec<(Option<u8>, Measurement)> {
    run.rec.picked(|r| match r {
        Rec::Verify {
            job,
            weight,
            measurement,
        } if job == of => Some((weight, measurement)),
        _ => None,
    })
}

/// Where the first record that `is` picks is, among all the records.
fn position(run: &Run, is: impl Fn(&Rec) -> bool) -> usize {
    run.rec
        .all()
        .iter()
        .position(is)
        .expect("the record is there")
}

#[tokio::test]
async fn a_healthy_deploy_passes_after_its_measurements() {
    let health = Health::start(|_, _| 200);
    let dir = repo(&[]);
    let mut j = deploy(
        &health,
        "$HEALTH/healthz?token=$TOKEN",
        Duration::from_millis(300),
        3,
    );
    j.variables.push(Variable {
        masked: true,
        ..Variable::new("TOKEN", "s3cret-token-value")
    });
    let r = run(&plan(vec![j]), dir.path()).await;
    assert_eq!(r.status("deploy"), JobStatus::Success);
    let ms = measurements(&r, "deploy");
    assert_eq!(ms.len(), 3, "one measurement every 100ms for 300ms: {ms:?}");
    for (weight, m) in &ms {
        assert_eq!(*weight, None, "no progressive steps, no weight");
        assert!(m.passed, "{m:?}");
        assert_eq!(m.value, Some(200.0));
        assert_eq!(m.threshold, "status 200");
        // The URL was expanded with the job's variables, and the masked one is masked.
        assert_eq!(
            m.check,
            format!("{}/healthz?token=[MASKED]", health.url),
            "{m:?}"
        );
    }
    assert_eq!(health.asked.load(Ordering::SeqCst), 3);
    // Script, then the measurements, then after_script.
    assert_eq!(
        r.logs("deploy"),
        ["deploying at weight 100", "after: success"]
    );
    let script = position(
        &r,
        |x| matches!(x, Rec::Log { line, .. } if line.starts_with("deploying")),
    );
    let first = position(&r, |x| matches!(x, Rec::Verify { .. }));
    let after = position(
        &r,
        |x| matches!(x, Rec::Log { line, .. } if line.starts_with("after")),
    );
    assert!(script < first && first < after);
    assert!(
        r.rec
            .has_info("deploy", "verification passed (3 measurements)")
    );
}

#[tokio::test]
async fn a_health_check_that_turns_bad_fails_the_job_naming_the_check() {
    // Healthy twice, then 503 for good.
    let health = Health::start(|_, n| if n <= 2 { 200 } else { 503 });
    let dir = repo(&[]);
    let mut j = deploy(&health, "$HEALTH/healthz", Duration::from_secs(20), 2);
    j.verify.as_mut().unwrap().on_failure = OnFailure::Rollback;
    let r = run(&plan(vec![j]), dir.path()).await;
    assert_eq!(r.status("deploy"), JobStatus::Failed);
    assert_eq!(
        r.job("deploy").reason,
        Some(FailureReason::VerificationFailure)
    );
    let error = r.rec.finished_error("deploy").expect("an error line");
    assert_eq!(
        error,
        format!(
            "verification failed: {}/healthz = 503 against status 200 (2 consecutive bad answers \
             (consecutive_failures: 2))",
            health.url
        )
    );
    let passed: Vec<bool> = measurements(&r, "deploy")
        .iter()
        .map(|(_, m)| m.passed)
        .collect();
    assert_eq!(passed, [true, true, false, false], "stops at the limit");
    // after_script runs after the verification, and sees the failure.
    assert_eq!(
        r.logs("deploy"),
        ["deploying at weight 100", "after: failed"]
    );
}

#[tokio::test]
async fn steps_run_the_script_at_each_weight_and_stop_at_the_first_failing_step() {
    // Bad at weight 50 only.
    let health = Health::start(|path, _| if path.ends_with("/50") { 503 } else { 200 });
    let dir = repo(&[]);
    let mut j = deploy(
        &health,
        "$HEALTH/healthz/$GANTRY_DEPLOY_WEIGHT",
        Duration::from_millis(200),
        1,
    );
    j.verify.as_mut().unwrap().steps = vec![10, 50, 100];
    let r = run(&plan(vec![j]), dir.path()).await;
    assert_eq!(r.status("deploy"), JobStatus::Failed);
    assert_eq!(
        r.logs("deploy"),
        [
            "deploying at weight 10",
            "deploying at weight 50",
            "after: failed"
        ]
    );
    let ms = measurements(&r, "deploy");
    let seen: Vec<(Option<u8>, String, bool)> = ms
        .into_iter()
        .map(|(w, m)| (w, m.check.replace(&health.url, ""), m.passed))
        .collect();
    assert_eq!(
        seen,
        [
            (Some(10), "/healthz/10".to_string(), true),
            (Some(10), "/healthz/10".to_string(), true),
            (Some(50), "/healthz/50".to_string(), false),
        ]
    );
    let error = r.rec.finished_error("deploy").expect("an error line");
    assert!(
        error.starts_with("verification failed at weight 50: "),
        "{error}"
    );
}

#[tokio::test]
async fn cancel_stops_a_verification_at_once() {
    let health = Health::start(|_, _| 200);
    let dir = repo(&[]);
    let p = plan(vec![deploy(
        &health,
        "$HEALTH/healthz",
        Duration::from_secs(60),
        3,
    )]);
    let (tx, rx) = watch::channel(false);
    let asked = health.asked.clone();
    // Cancels once the verification has measured.
    tokio::spawn(async move {
        while asked.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tx.send(true).unwrap();
    });
    let r = run_cfg(&p, config(dir.path(), &p), rx).await;
    assert_eq!(r.status("deploy"), JobStatus::Canceled);
    assert_eq!(
        r.logs("deploy"),
        ["deploying at weight 100", "after: canceled"]
    );
}

#[tokio::test]
async fn the_job_timeout_stops_a_verification() {
    let health = Health::start(|_, _| 200);
    let dir = repo(&[]);
    let mut j = deploy(&health, "$HEALTH/healthz", Duration::from_secs(60), 3);
    j.timeout = Some(Duration::from_secs(1));
    let r = run(&plan(vec![j]), dir.path()).await;
    assert_eq!(r.status("deploy"), JobStatus::Failed);
    assert_eq!(
        r.job("deploy").reason,
        Some(FailureReason::JobExecutionTimeout)
    );
    assert_eq!(
        r.rec.finished_error("deploy").as_deref(),
        Some("timed out after 1s (verifying)")
    );
}
