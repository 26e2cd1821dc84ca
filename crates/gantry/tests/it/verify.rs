//! `verify:` end to end: `gantry run --output json` of a progressive deploy verified by an HTTP
//! check against a health endpoint the test serves (healthy at weight 50 only: 404 at 100).

use serde_json::{Value, json};

use crate::Repo;
use crate::server::HttpStub;

#[test]
fn a_progressive_deploy_reports_each_measurement_and_fails_at_the_bad_step() {
    let health = HttpStub::serve(vec![("/healthz/50", String::new())]);
    let addr = format!("127.0.0.1:{}", health.port);
    let repo = Repo::ci(&format!(
        r#"
deploy:
  stage: deploy
  variables:
    HEALTH: http://{addr}
  script: echo "deploying at weight $GANTRY_DEPLOY_WEIGHT"
  verify:
    interval: 0.1s
    duration: 0.2s
    steps: [50, 100]
    http:
      - url: $HEALTH/healthz/$GANTRY_DEPLOY_WEIGHT
        consecutive_failures: 1
"#
    ));
    let run = repo.run_json(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.log("deploy"),
        ["deploying at weight 50", "deploying at weight 100"]
    );
    let verify: Vec<&Value> = run
        .events
        .iter()
        .filter(|e| e["event"] == "verify")
        .collect();
    let url = |w: u8| format!("http://{addr}/healthz/{w}");
    assert_eq!(
        verify,
        [
            &json!({"event": "verify", "job": "deploy", "check": url(50), "value": 200.0,
                    "threshold": "status 200", "passed": true, "weight": 50, "kind": "http",
                    "phase": "pass"}),
            &json!({"event": "verify", "job": "deploy", "check": url(50), "value": 200.0,
                    "threshold": "status 200", "passed": true, "weight": 50, "kind": "http",
                    "phase": "pass"}),
            &json!({"event": "verify", "job": "deploy", "check": url(100), "value": 404.0,
                    "threshold": "status 200", "passed": false, "weight": 100, "kind": "http",
                    "phase": "fail"}),
        ]
    );
    let finished = run
        .events
        .iter()
        .find(|e| e["event"] == "job_finished")
        .expect("job_finished");
    assert_eq!(finished["status"], "failed");
    assert_eq!(finished["reason"], "verification_failure");
    assert_eq!(
        finished["error"],
        format!(
            "verification failed at weight 100: {} = 404 against status 200 (1 consecutive bad \
             answers (consecutive_failures: 1))",
            url(100)
        )
    );
    // The human output shows each measurement, its value against its threshold, as it is taken.
    let human = repo.gantry(&["run"]);
    let stdout = String::from_utf8_lossy(&human.stdout);
    let shown: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("deploy > verify at weight "))
        .collect();
    assert_eq!(
        shown,
        [
            format!("50: {} = 200 against status 200: pass", url(50)),
            format!("50: {} = 200 against status 200: pass", url(50)),
            format!("100: {} = 404 against status 200: FAIL", url(100)),
        ],
        "{stdout}"
    );
}
