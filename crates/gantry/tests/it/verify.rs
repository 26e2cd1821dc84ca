//! `verify:` end to end: `gantry run --output json` of a progressive deploy verified by an HTTP
//! check against a health endpoint the test serves.

use std::io::{Read, Write};
use std::net::TcpListener;

use serde_json::{Value, json};

use crate::Repo;

/// Serves `/healthz/<weight>` on 127.0.0.1, answering 503 for weight 100 and 200 otherwise; its
/// address.
fn health() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
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
            let status = if head.starts_with("GET /healthz/100 ") {
                503
            } else {
                200
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    addr
}

#[test]
fn a_progressive_deploy_reports_each_measurement_and_fails_at_the_bad_step() {
    let addr = health();
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
            &json!({"event": "verify", "job": "deploy", "check": url(100), "value": 503.0,
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
    assert_eq!(
        finished["error"],
        format!(
            "verification failed at weight 100: {} = 503 against status 200 (1 consecutive bad \
             answers (consecutive_failures: 1))",
            url(100)
        )
    );
}
