//! Prometheus queries on a real Prometheus: thresholds, empty results, bad queries, and the canary
//! judge over a range.

use std::time::Duration;

use gantry_pipeline::verify::{Compare, Direction, Prometheus as Block, Query};
use gantry_release::{Kind, Phase, Status, Verify};

use crate::{App, HEALTHY, Load, Prometheus, verify};

const ERROR_RATE: &str =
    "sum(rate(http_requests_total{code=~\"5..\"}[3s])) / sum(rate(http_requests_total[3s]))";
const P99: &str =
    "histogram_quantile(0.99, sum(rate(http_request_duration_seconds_bucket[3s])) by (le))";

fn query(name: &str, text: &str, max: f64) -> Query {
    Query {
        name: name.into(),
        query: text.into(),
        min: None,
        max: Some(max),
        compare: None,
        weight: 1.0,
    }
}

/// Measures `queries` every 500 ms for `duration`, tolerating one failure.
fn spec(address: &str, queries: Vec<Query>, duration: Duration) -> Verify {
    Verify {
        interval: Duration::from_millis(500),
        duration,
        failure_limit: 1,
        prometheus: Some(Block {
            address: address.into(),
            queries,
        }),
        ..Verify::default()
    }
}

#[tokio::test]
async fn a_healthy_series_passes_and_a_degraded_one_fails() {
    let app = App::start(&["app"], HEALTHY).await;
    let prom = Prometheus::start(app.addr).await;
    let queries = vec![
        query("error-rate", ERROR_RATE, 0.05),
        query("p99", P99, 2.0),
    ];

    let (outcome, reported) = verify(&spec(
        &prom.address,
        queries.clone(),
        Duration::from_secs(2),
    ))
    .await;
    assert_eq!(outcome.status, Status::Passed, "{outcome:#?}");
    assert_eq!(outcome.measurements.len(), 8, "{outcome:#?}");
    assert_eq!(reported, outcome.measurements);
    let error_rate = &outcome.measurements[0];
    assert_eq!(
        (
            error_rate.kind,
            error_rate.check.as_str(),
            error_rate.value,
            error_rate.threshold.as_str()
        ),
        (Kind::Prometheus, "error-rate", Some(0.0), "<= 0.05")
    );
    let p99 = outcome.measurements[1].value.unwrap();
    assert!(p99 > 0.0 && p99 <= 0.1, "{p99}");
    assert!(outcome.measurements.iter().all(|m| m.passed));

    app.set_load(
        "app",
        Load {
            errors: 0.5,
            latency: 3.0,
        },
    );
    let (outcome, _) = verify(&spec(&prom.address, queries, Duration::from_secs(30))).await;
    assert_eq!(outcome.status, Status::Failed, "{outcome:#?}");
    let reason = outcome.reason.unwrap();
    assert!(
        reason.ends_with("failed (2) > failure_limit (1)"),
        "{reason}"
    );
    let last = outcome.measurements.last().unwrap();
    assert_eq!(last.phase, Phase::Fail);
    assert!(reason.starts_with(&last.check), "{reason}");
    let failed: Vec<f64> = outcome
        .measurements
        .iter()
        .filter(|m| m.check == "error-rate" && !m.passed)
        .filter_map(|m| m.value)
        .collect();
    assert!(failed.iter().all(|v| *v > 0.05), "{failed:?}");
}

#[tokio::test]
async fn an_empty_result_is_inconclusive_and_a_bad_query_an_error() {
    let app = App::start(&["app"], HEALTHY).await;
    let prom = Prometheus::start(app.addr).await;

    let empty = query("missing", "sum(rate(no_such_metric_total[3s]))", 1.0);
    let mut s = spec(&prom.address, vec![empty], Duration::from_secs(2));
    s.inconclusive_limit = 1;
    let (outcome, _) = verify(&s).await;
    assert_eq!(outcome.status, Status::Failed, "{outcome:#?}");
    assert_eq!(
        outcome.reason.as_deref(),
        Some("missing: inconclusive (2) > inconclusive_limit (1)")
    );
    assert!(
        outcome
            .measurements
            .iter()
            .all(|m| m.phase == Phase::Inconclusive && m.value.is_none())
    );

    let bad = query("bad", "sum(rate(http_requests_total[3s]", 1.0);
    let mut s = spec(&prom.address, vec![bad], Duration::from_secs(2));
    s.error_limit = 0;
    let (outcome, _) = verify(&s).await;
    assert_eq!(
        outcome.reason.as_deref(),
        Some("bad: consecutive errors (1) > error_limit (0)")
    );
    let m = &outcome.measurements[0];
    assert_eq!(m.phase, Phase::Error);
    assert!(m.detail.as_deref().unwrap().contains("bad_data"), "{m:?}");
}

#[tokio::test]
async fn the_canary_judge_passes_the_same_and_fails_a_worse_canary() {
    let app = App::start(
        &["canary", "baseline"],
        Load {
            errors: 0.1,
            latency: 0.05,
        },
    )
    .await;
    let prom = Prometheus::start(app.addr).await;
    let compared = Query {
        compare: Some(Compare {
            canary: "track=\"canary\"".into(),
            baseline: "track=\"baseline\"".into(),
            direction: Direction::Increase,
        }),
        max: None,
        ..query(
            "error-rate",
            "sum(rate(http_requests_total{code=\"500\",$SELECTOR}[3s])) / sum(rate(http_requests_total{$SELECTOR}[3s]))",
            0.0,
        )
    };
    let mut s = spec(&prom.address, vec![compared], Duration::from_secs(4));
    s.interval = Duration::from_secs(1);

    let (outcome, _) = verify(&s).await;
    assert_eq!(outcome.status, Status::Passed, "{outcome:#?}");
    assert_eq!(outcome.score, Some(100.0));
    let kinds: Vec<(Kind, Phase)> = outcome
        .measurements
        .iter()
        .map(|m| (m.kind, m.phase))
        .collect();
    assert_eq!(
        kinds,
        [(Kind::Canary, Phase::Pass), (Kind::Score, Phase::Pass)]
    );

    app.set_load(
        "canary",
        Load {
            errors: 0.5,
            latency: 0.05,
        },
    );
    // The window starts once the canary's rate is all degraded.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (outcome, _) = verify(&s).await;
    assert_eq!(outcome.status, Status::Failed, "{outcome:#?}");
    assert_eq!(outcome.score, Some(0.0));
    assert_eq!(
        outcome.reason.as_deref(),
        Some("canary score: failed (1) > failure_limit (0)")
    );
    let canary = &outcome.measurements[0];
    assert_eq!((canary.kind, canary.phase), (Kind::Canary, Phase::Fail));
    // 50 % errors against 10 %: the canary's mean is 5 times the baseline's.
    let effect = canary.value.unwrap();
    assert!((effect - 4.0).abs() < 0.5, "{canary:?}");
}
