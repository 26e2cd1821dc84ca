//! HTTP checks, an unreachable Prometheus, cancellation, and many verifications over one client.

use std::time::Duration;

use gantry_pipeline::verify::{HttpCheck, Prometheus as Block, Query};
use gantry_release::{Kind, Phase, Status, Verifier, Verify};

use crate::{App, HEALTHY, free_port, verify};

fn http(url: String, timeout: Duration) -> Verify {
    Verify {
        interval: Duration::from_millis(100),
        duration: Duration::from_millis(600),
        http: vec![HttpCheck {
            url,
            expect_status: 200,
            consecutive_failures: 3,
            timeout,
        }],
        ..Verify::default()
    }
}

#[tokio::test]
async fn an_http_check_fails_after_consecutive_bad_answers() {
    let app = App::start(&[], HEALTHY).await;
    let mut spec = http(app.url("/healthz"), Duration::from_secs(5));
    let (outcome, reported) = verify(&spec).await;
    assert_eq!(outcome.status, Status::Passed, "{outcome:#?}");
    assert_eq!(reported.len(), 6);
    let m = &reported[0];
    assert_eq!(
        (m.kind, m.value, m.threshold.as_str(), m.passed),
        (Kind::Http, Some(200.0), "status 200", true)
    );

    app.set_health(503);
    spec.duration = Duration::from_secs(60);
    let (outcome, reported) = verify(&spec).await;
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(
        outcome.reason.unwrap(),
        format!(
            "{}: 3 consecutive bad answers (consecutive_failures: 3)",
            app.url("/healthz")
        )
    );
    let values: Vec<(Option<f64>, bool)> = reported.iter().map(|m| (m.value, m.passed)).collect();
    assert_eq!(values, [(Some(503.0), false); 3]);
}

#[tokio::test]
async fn a_timeout_and_a_refused_connection_are_bad_answers() {
    let app = App::start(&[], HEALTHY).await;
    let (outcome, reported) = verify(&http(app.url("/slow"), Duration::from_millis(200))).await;
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(reported.len(), 3);
    let m = &reported[0];
    assert_eq!((m.phase, m.value), (Phase::Fail, None));
    assert!(
        m.detail.as_deref().unwrap().starts_with("no answer within"),
        "{m:?}"
    );

    let closed = format!("http://127.0.0.1:{}/healthz", free_port());
    let (outcome, reported) = verify(&http(closed, Duration::from_secs(1))).await;
    assert_eq!(outcome.status, Status::Failed);
    assert!(
        reported
            .iter()
            .all(|m| m.phase == Phase::Fail && m.detail.is_some())
    );
}

#[tokio::test]
async fn an_unreachable_prometheus_is_an_error() {
    let spec = Verify {
        interval: Duration::from_millis(100),
        duration: Duration::from_secs(10),
        error_limit: 2,
        prometheus: Some(Block {
            address: format!("http://127.0.0.1:{}", free_port()),
            queries: vec![Query {
                name: "up".into(),
                query: "up".into(),
                min: Some(1.0),
                max: None,
                compare: None,
                weight: 1.0,
            }],
        }),
        ..Verify::default()
    };
    let (outcome, reported) = verify(&spec).await;
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(
        outcome.reason.as_deref(),
        Some("up: consecutive errors (3) > error_limit (2)")
    );
    assert_eq!(reported.len(), 3);
    assert!(
        reported
            .iter()
            .all(|m| m.phase == Phase::Error && m.value.is_none())
    );
    assert!(
        reported[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("/api/v1/query")
    );
}

#[tokio::test]
async fn cancel_stops_a_waiting_verification() {
    let app = App::start(&[], HEALTHY).await;
    let mut spec = http(app.url("/healthz"), Duration::from_secs(5));
    spec.interval = Duration::from_secs(3600);
    spec.duration = Duration::from_secs(7200);
    let verifier = Verifier::new(reqwest::Client::new());
    let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(async move { verifier.verify(&spec, |_| {}, cancel).await });
    cancel_tx.send(true).unwrap();
    let outcome = run.await.unwrap();
    assert_eq!(outcome.status, Status::Canceled);
    assert!(outcome.measurements.is_empty());
}

#[tokio::test]
async fn fifty_verifications_share_one_client() {
    let app = App::start(&[], HEALTHY).await;
    let verifier = Verifier::new(reqwest::Client::new());
    let spec = http(app.url("/healthz"), Duration::from_secs(5));
    let runs = (0..50).map(|_| {
        let (verifier, spec) = (verifier.clone(), spec.clone());
        tokio::spawn(async move {
            let (_tx, cancel) = tokio::sync::watch::channel(false);
            verifier.verify(&spec, |_| {}, cancel).await
        })
    });
    for run in runs.collect::<Vec<_>>() {
        let outcome = run.await.unwrap();
        assert_eq!(outcome.status, Status::Passed, "{outcome:#?}");
    }
    assert_eq!(app.health_asked(), 50 * 6);
}
