//! The `verify:` and `rollback_script:` keywords: what the plan holds, and each lint error at its
//! line and column.

use std::time::Duration;

use gantry_pipeline::verify::{Compare, Direction, HttpCheck, OnFailure, Verify};

use crate::{assert_error, compile_one, errors};

const DEPLOY: &str = "deploy:
  script: ./deploy.sh
  environment: {name: production, url: \"http://127.0.0.1:18080\"}
";

/// The `deploy` job's `verify`, compiled from `DEPLOY` plus `block` (indented under the job).
fn verify_of(block: &str) -> Verify {
    let c = compile_one(&format!("{DEPLOY}{block}"));
    let errs = errors(&c);
    assert!(errs.is_empty(), "{errs:#?}");
    c.plan.unwrap().jobs[0].verify.clone().unwrap()
}

/// Asserts that `DEPLOY` plus `block` has the error `expected`.
#[track_caller]
fn assert_verify_error(block: &str, expected: &str) {
    assert_error(&compile_one(&format!("{DEPLOY}{block}")), expected);
}

#[test]
fn the_issue_example_compiles_with_its_values() {
    let v = verify_of(
        "  verify:
    interval: 5s
    duration: 60s
    failure_limit: 1
    prometheus:
      address: http://127.0.0.1:9090
      queries:
        - name: error-rate
          query: sum(rate(http_requests_total{code=~\"5..\"}[1m])) / sum(rate(http_requests_total[1m]))
          max: 0.05
        - name: p99-latency-seconds
          query: histogram_quantile(0.99, sum(rate(http_request_duration_seconds_bucket[1m])) by (le))
          max: 2
    http:
      - url: http://127.0.0.1:18080/healthz
        expect_status: 200
        consecutive_failures: 3
    on_failure: rollback
",
    );
    assert_eq!(v.interval, Duration::from_secs(5));
    assert_eq!(v.duration, Duration::from_secs(60));
    assert_eq!(v.failure_limit, 1);
    assert_eq!(v.on_failure, OnFailure::Rollback);
    let p = v.prometheus.unwrap();
    assert_eq!(p.address, "http://127.0.0.1:9090");
    let names: Vec<&str> = p.queries.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["error-rate", "p99-latency-seconds"]);
    assert_eq!((p.queries[0].min, p.queries[0].max), (None, Some(0.05)));
    assert_eq!(p.queries[1].max, Some(2.0));
    assert_eq!(
        v.http,
        [HttpCheck {
            url: "http://127.0.0.1:18080/healthz".into(),
            expect_status: 200,
            consecutive_failures: 3,
            timeout: Duration::from_secs(5),
        }]
    );
}

#[test]
fn defaults_steps_and_the_canary_judge() {
    let v = verify_of(
        "  verify:
    http: [{url: http://127.0.0.1/healthz}]
",
    );
    let d = Verify::default();
    assert_eq!(
        (
            v.interval,
            v.duration,
            v.failure_limit,
            v.inconclusive_limit
        ),
        (Duration::from_secs(10), Duration::from_secs(60), 0, 0)
    );
    assert_eq!(v.error_limit, 4);
    assert_eq!(v.on_failure, OnFailure::Fail);
    assert_eq!(v.steps, [100]);
    assert_eq!(v.judge, d.judge);
    assert_eq!(v.judge.confidence, 0.95);

    let v = verify_of(
        "  verify:
    interval: 1m
    duration: 1h 30m
    steps: [10, 50, 100]
    confidence: 0.99
    min_effect: 0.2
    pass_score: 90
    marginal_score: 60
    inconclusive_limit: 2
    error_limit: 0
    prometheus:
      address: https://prom.example.com:9090/
      queries:
        - name: errors
          query: sum(rate(errors_total{$SELECTOR}[1m]))
          compare: {canary: 'track=\"canary\"', baseline: 'track=\"stable\"', direction: increase}
          weight: 2
",
    );
    assert_eq!(v.duration, Duration::from_secs(5400));
    assert_eq!(v.steps, [10, 50, 100]);
    assert_eq!(
        (
            v.judge.confidence,
            v.judge.min_effect,
            v.judge.pass_score,
            v.judge.marginal_score
        ),
        (0.99, 0.2, 90.0, 60.0)
    );
    assert_eq!((v.inconclusive_limit, v.error_limit), (2, 0));
    let q = &v.prometheus.unwrap().queries[0];
    assert_eq!(q.weight, 2.0);
    assert_eq!(
        q.compare,
        Some(Compare {
            canary: "track=\"canary\"".into(),
            baseline: "track=\"stable\"".into(),
            direction: Direction::Increase,
        })
    );
}

#[test]
fn urls_with_variables_are_kept_for_the_runtime() {
    let v = verify_of(
        "  verify:
    http: [{url: $CI_ENVIRONMENT_URL/healthz}]
",
    );
    assert_eq!(v.http[0].url, "$CI_ENVIRONMENT_URL/healthz");
}

#[test]
fn rollback_script_is_a_script() {
    let c = compile_one(&format!(
        "{DEPLOY}  rollback_script: helm rollback my-release\nb:\n  script: x\n  rollback_script: [a, [b, c]]\n"
    ));
    let plan = c.plan.unwrap();
    assert_eq!(plan.jobs[0].rollback_script, ["helm rollback my-release"]);
    assert_eq!(plan.jobs[1].rollback_script, ["a", "b", "c"]);
    assert!(plan.jobs[1].verify.is_none());
    assert_error(
        &compile_one("a:\n  script: x\n  rollback_script: 5\n"),
        ".gitlab-ci.yml:3:20: `a`: `rollback_script` must be a string or a nested array of strings up to 10 levels deep, not a number",
    );
}

#[test]
fn bad_durations() {
    assert_verify_error(
        "  verify:\n    interval: soon\n    http: [{url: http://h/}]\n",
        ".gitlab-ci.yml:5:15: `deploy`: invalid `verify:interval`: `soon` is not a duration",
    );
    assert_verify_error(
        "  verify:\n    duration: 0s\n    http: [{url: http://h/}]\n",
        ".gitlab-ci.yml:5:15: `deploy`: invalid `verify:duration`: it must be longer than 0s",
    );
    assert_verify_error(
        "  verify:\n    interval: 2m\n    duration: 1m\n    http: [{url: http://h/}]\n",
        ".gitlab-ci.yml:5:15: `deploy`: `verify:interval` (120s) is longer than `verify:duration` (60s)",
    );
    assert_verify_error(
        "  verify:\n    http: [{url: http://h/, timeout: 3 parsecs}]\n",
        ".gitlab-ci.yml:5:38: `deploy`: invalid `timeout`: `3 parsecs` is not a duration: unknown unit `parsecs`",
    );
}

#[test]
fn bad_urls() {
    assert_verify_error(
        "  verify:\n    http: [{url: ftp://h/}]\n",
        ".gitlab-ci.yml:5:18: `deploy`: `verify:http:url` must be an http:// or https:// URL with a host, not `ftp://h/`",
    );
    assert_verify_error(
        "  verify:\n    prometheus:\n      address: http://:9090\n      queries: [{name: a, query: up, min: 1}]\n",
        ".gitlab-ci.yml:6:16: `deploy`: `verify:prometheus:address` must be an http:// or https:// URL with a host, not `http://:9090`",
    );
    assert_verify_error(
        "  verify:\n    http: [{url: \"http://h:99999/\"}]\n",
        ".gitlab-ci.yml:5:18: `deploy`: `verify:http:url` must be an http:// or https:// URL with a host, not `http://h:99999/`",
    );
    assert!(
        errors(&compile_one(&format!(
            "{DEPLOY}  verify:\n    http: [{{url: \"http://[::1]:8080/healthz\"}}, {{url: \"https://u@h\"}}]\n"
        )))
        .is_empty()
    );
}

#[test]
fn bad_steps() {
    assert_verify_error(
        "  verify:\n    steps: [10, 50]\n    http: [{url: http://h/}]\n",
        ".gitlab-ci.yml:5:17: `deploy`: `verify:steps` must end at 100",
    );
    assert_verify_error(
        "  verify:\n    steps: [50, 10, 100]\n    http: [{url: http://h/}]\n",
        ".gitlab-ci.yml:5:17: `deploy`: `verify:steps` must be in ascending order",
    );
    assert_verify_error(
        "  verify:\n    steps: [0, 100]\n    http: [{url: http://h/}]\n",
        ".gitlab-ci.yml:5:13: `deploy`: a `verify:steps` weight must be an integer from 1 to 100, not `0`",
    );
    assert_verify_error(
        "  verify:\n    steps: 100\n    http: [{url: http://h/}]\n",
        ".gitlab-ci.yml:5:12: `deploy`: `verify:steps` must be a non-empty array of weights such as [10, 50, 100], not a number",
    );
}

#[test]
fn a_query_needs_a_bound_or_a_comparison() {
    assert_verify_error(
        "  verify:\n    prometheus:\n      address: http://p:9090\n      queries:\n        - {name: a, query: up}\n",
        ".gitlab-ci.yml:8:11: `deploy`: query `a` needs a `min`, a `max` or a `compare`",
    );
    assert_verify_error(
        "  verify:\n    prometheus:\n      address: http://p:9090\n      queries:\n        - {name: a, query: up, compare: {canary: x, baseline: y}}\n",
        ".gitlab-ci.yml:8:28: `deploy`: a query with `compare` must hold `$SELECTOR`, which each selector replaces",
    );
    assert_verify_error(
        "  verify:\n    prometheus:\n      address: http://p:9090\n      queries:\n        - {name: a, query: up, min: 2, max: 1}\n",
        ".gitlab-ci.yml:8:37: `deploy`: `min` (2) is above `max` (1)",
    );
    assert_verify_error(
        "  verify:\n    prometheus:\n      address: http://p:9090\n      queries:\n        - {name: a, query: up, max: lots}\n",
        ".gitlab-ci.yml:8:37: `deploy`: `max` must be a number, not `lots`",
    );
    assert_verify_error(
        "  verify:\n    prometheus:\n      address: http://p:9090\n      queries:\n        - {name: a, query: up, max: 1}\n        - {name: a, query: down, max: 1}\n",
        ".gitlab-ci.yml:9:18: `deploy`: `verify:prometheus:queries`: `a` is named twice",
    );
    assert_verify_error(
        "  verify:\n    prometheus:\n      address: http://p:9090\n      queries:\n        - {name: a, query: \"up{$SELECTOR}\", compare: {canary: x, baseline: y, direction: up}}\n",
        ".gitlab-ci.yml:8:90: `deploy`: `compare:direction` must be `increase`, `decrease` or `either`, not `up`",
    );
}

#[test]
fn no_check_at_all() {
    assert_verify_error(
        "  verify:\n    interval: 5s\n",
        ".gitlab-ci.yml:5:5: `deploy`: `verify` needs at least one check: `prometheus` queries or `http` checks",
    );
    assert_verify_error(
        "  verify:\n    http: []\n",
        ".gitlab-ci.yml:5:11: `deploy`: `verify:http` must be a non-empty array of checks, not an array",
    );
    assert_verify_error(
        "  verify:\n    prometheus: {address: http://p:9090}\n",
        ".gitlab-ci.yml:5:17: `deploy`: `verify:prometheus` needs `queries`",
    );
}

#[test]
fn unknown_keys_with_did_you_mean() {
    assert_verify_error(
        "  verify:\n    intervall: 5s\n    http: [{url: http://h/}]\n",
        ".gitlab-ci.yml:5:5: `deploy`: unknown `verify` keyword `intervall`; did you mean `interval`?",
    );
    assert_verify_error(
        "  verify:\n    http: [{url: http://h/, status: 200}]\n",
        ".gitlab-ci.yml:5:29: `deploy`: unknown `verify:http` keyword `status`",
    );
    assert_verify_error(
        "  verify:\n    prometheus:\n      adress: http://p:9090\n      queries: [{name: a, query: up, max: 1}]\n",
        ".gitlab-ci.yml:6:7: `deploy`: unknown `verify:prometheus` keyword `adress`; did you mean `address`?",
    );
    assert_error(
        &compile_one("a:\n  script: x\n  verfiy: {}\n"),
        ".gitlab-ci.yml:3:3: `a`: unknown keyword `verfiy`; did you mean `verify`?",
    );
}

#[test]
fn bad_limits_scores_and_on_failure() {
    assert_verify_error(
        "  verify:\n    failure_limit: -1\n    http: [{url: http://h/}]\n",
        ".gitlab-ci.yml:5:20: `deploy`: `verify:failure_limit` must be an integer of at least 0, not `-1`",
    );
    assert_verify_error(
        "  verify:\n    on_failure: retry\n    http: [{url: http://h/}]\n",
        ".gitlab-ci.yml:5:17: `deploy`: `verify:on_failure` must be `rollback` or `fail`, not `retry`",
    );
    assert_verify_error(
        "  verify:\n    confidence: 95\n    http: [{url: http://h/}]\n",
        ".gitlab-ci.yml:5:17: `deploy`: `verify:confidence` must be between 0 and 1 (for example 0.95)",
    );
    assert_verify_error(
        "  verify:\n    pass_score: 70\n    http: [{url: http://h/}]\n",
        ".gitlab-ci.yml:5:17: `deploy`: `verify:marginal_score` (75) is above `verify:pass_score` (70)",
    );
    assert_verify_error(
        "  verify:\n    http: [{url: http://h/, expect_status: 999, consecutive_failures: 0}]\n",
        ".gitlab-ci.yml:5:44: `deploy`: `expect_status` must be an HTTP status, from 100 to 599",
    );
    assert_verify_error(
        "  verify:\n    http: [{url: http://h/, expect_status: 999, consecutive_failures: 0}]\n",
        ".gitlab-ci.yml:5:71: `deploy`: `consecutive_failures` must be an integer of at least 1, not `0`",
    );
    assert_error(
        &compile_one(
            "a:\n  script: x\n  verify:\n    on_failure: rollback\n    http: [{url: http://h/}]\n",
        ),
        ".gitlab-ci.yml:4:17: `a`: `verify:on_failure: rollback` needs an `environment` to roll back",
    );
}

#[test]
fn a_job_with_verify_round_trips_through_json() {
    // Agents receive their job as JSON: the block must survive it.
    let c = compile_one(&format!(
        "{DEPLOY}  rollback_script: [helm rollback r]\n  verify:\n    steps: [50, 100]\n    prometheus:\n      address: http://p:9090\n      queries: [{{name: a, query: \"up{{$SELECTOR}}\", min: 1, compare: {{canary: x, baseline: y}}}}]\n"
    ));
    let job = &c.plan.unwrap().jobs[0];
    let json = serde_json::to_string(job).unwrap();
    let back: gantry_pipeline::Job = serde_json::from_str(&json).unwrap();
    assert_eq!(back.verify, job.verify);
    assert!(back.verify.is_some());
    assert_eq!(back.rollback_script, ["helm rollback r"]);
}

#[test]
fn a_rollback_job_runs_whole_unverified_with_the_rollback_variables() {
    let c = compile_one(&format!(
        "{DEPLOY}  when: manual\n  variables: {{GANTRY_ROLLBACK: \"no\"}}\n  rollback_script: helm rollback r\n  verify:\n    steps: [10, 100]\n    http: [{{url: http://h/}}]\n"
    ));
    let job = c.plan.unwrap().jobs[0].clone();
    let vars = |j: &gantry_pipeline::Job| -> Vec<(String, String)> {
        j.variables
            .iter()
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect()
    };
    let mut redeploy = job.clone();
    gantry_pipeline::verify::into_rollback(&mut redeploy, "7", "5", None);
    assert_eq!(redeploy.script, ["./deploy.sh"]);
    assert!(redeploy.verify.is_none() && redeploy.rollback_script.is_empty());
    assert_eq!(redeploy.when, gantry_pipeline::plan::When::OnSuccess);
    assert_eq!(
        vars(&redeploy),
        [
            ("GANTRY_ROLLBACK", "true"),
            ("GANTRY_ROLLBACK_FROM", "7"),
            ("GANTRY_ROLLBACK_TO", "5"),
            ("GANTRY_DEPLOY_WEIGHT", "100"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    let mut scripted = job.clone();
    let script = job.rollback_script.clone();
    gantry_pipeline::verify::into_rollback(&mut scripted, "7", "5", Some(&script));
    assert_eq!(scripted.script, ["helm rollback r"]);
}
