//! Notifications against a local recording server: each request is checked against the fields its
//! service documents, and each signature is computed again here, independently of the crate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use gantry_notify::{
    Commit, Event, EventKind, Pipeline, Policy, Rollback, Rule, Sender, Target, TargetKind,
};
use gantry_pipeline::Variable;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// One request the server received.
#[derive(Clone, Debug)]
struct Got {
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// The decoded value of query parameter `name`.
    fn query(&self, name: &str) -> Option<String> {
        let url = reqwest::Url::parse(&format!("http://host{}", self.uri)).ok()?;
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

#[derive(Default)]
struct Recorder {
    got: Mutex<Vec<Got>>,
    /// The answers to give, in order; the last one repeats. Empty: `200 {}`.
    answers: Mutex<Vec<(StatusCode, &'static str)>>,
}

/// A recording server on 127.0.0.1 answering `answers` in turn (the last one repeats).
async fn server(answers: Vec<(StatusCode, &'static str)>) -> (String, Arc<Recorder>) {
    let rec = Arc::new(Recorder {
        got: Mutex::default(),
        answers: Mutex::new(answers),
    });
    async fn record(
        State(rec): State<Arc<Recorder>>,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, &'static str) {
        rec.got.lock().unwrap().push(Got { uri, headers, body });
        let mut answers = rec.answers.lock().unwrap();
        match answers.len() {
            0 => (StatusCode::OK, "{}"),
            1 => answers[0],
            _ => answers.remove(0),
        }
    }
    let app = Router::new().fallback(record).with_state(Arc::clone(&rec));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), rec)
}

fn fast() -> Policy {
    Policy {
        attempts: 3,
        timeout: Duration::from_secs(10),
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
    }
}

fn rollback_event() -> Event {
    Event {
        kind: EventKind::Rollback,
        project: "acme/shop".into(),
        git_ref: "main".into(),
        commit: Commit {
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            title: "Serve v2".into(),
        },
        pipeline: Pipeline {
            id: 42,
            url: Some("https://ci.example.com/acme/shop/pipelines/42".into()),
        },
        failed_jobs: vec!["deploy-production".into(), "smoke <test>".into()],
        environment: Some("production".into()),
        rollback: Some(Rollback {
            from: "17".into(),
            to: "16".into(),
        }),
    }
}

fn target(kind: TargetKind, url: String, secret: Option<&str>) -> Target {
    Target {
        kind,
        url,
        secret: secret.map(Into::into),
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// Asserts that `text` names everything a message must carry about [`rollback_event`].
#[track_caller]
fn assert_carries_everything(text: &str) {
    for part in [
        "acme/shop",
        "main",
        "01234567",
        "Serve v2",
        "#42",
        "https://ci.example.com/acme/shop/pipelines/42",
        "deploy-production",
        "production",
        "from deployment 17 to deployment 16",
    ] {
        assert!(text.contains(part), "`{part}` missing from {text}");
    }
}

/// Sends `event` to `target` once and answers the delivery and the one request received.
async fn send_one(
    kind: TargetKind,
    path: &str,
    secret: Option<&str>,
) -> (gantry_notify::Delivery, Got) {
    let (base, rec) = server(Vec::new()).await;
    let sender = Sender::new(fast()).unwrap();
    let d = sender
        .deliver(
            &target(kind, format!("{base}{path}"), secret),
            &rollback_event(),
        )
        .await;
    let got = rec.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].headers["content-type"], "application/json",
        "every target takes JSON"
    );
    (d, got.into_iter().next().unwrap())
}

#[tokio::test]
async fn slack_gets_text_and_blocks() {
    let (d, got) = send_one(TargetKind::Slack, "/services/T0/B0/XXXX", None).await;
    assert!(d.delivered(), "{d:?}");
    assert_eq!((d.attempts, d.host.as_str()), (1, "127.0.0.1"));
    assert_eq!(got.uri.path(), "/services/T0/B0/XXXX");
    let v = got.json();
    let text = v["text"].as_str().unwrap();
    assert!(
        text.starts_with("Rollback of production: acme/shop"),
        "{text}"
    );
    assert!(
        text.contains("smoke &lt;test&gt;"),
        "mrkdwn escapes `<` and `>`: {text}"
    );
    let blocks = v["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "section");
    assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
    let fields = blocks[1]["fields"].as_array().unwrap();
    assert!(fields.len() <= 10, "a section holds at most 10 fields");
    assert!(fields.iter().all(|f| f["type"] == "mrkdwn"));
    let all: Vec<&str> = fields.iter().map(|f| f["text"].as_str().unwrap()).collect();
    let all = all.join("\n");
    assert!(
        all.contains("<https://ci.example.com/acme/shop/pipelines/42|#42>"),
        "links are <url|text>: {all}"
    );
    assert_carries_everything(&all);
}

#[tokio::test]
async fn wecom_gets_markdown() {
    let (d, got) = send_one(TargetKind::Wecom, "/cgi-bin/webhook/send?key=k1", None).await;
    assert!(d.delivered(), "{d:?}");
    assert_eq!(
        got.query("key").as_deref(),
        Some("k1"),
        "the hook's key stays"
    );
    let v = got.json();
    assert_eq!(v["msgtype"], "markdown");
    let content = v["markdown"]["content"].as_str().unwrap();
    assert!(content.len() <= 4096);
    assert!(content.contains("[#42](https://ci.example.com/acme/shop/pipelines/42)"));
    assert_carries_everything(content);
}

#[tokio::test]
async fn dingtalk_signed_robot_gets_markdown_with_timestamp_and_sign() {
    let secret = "SECabc+/=";
    let (d, got) = send_one(
        TargetKind::Dingtalk,
        "/robot/send?access_token=t1",
        Some(secret),
    )
    .await;
    assert!(d.delivered(), "{d:?}");
    assert_eq!(got.query("access_token").as_deref(), Some("t1"));
    let timestamp = got.query("timestamp").expect("a timestamp query");
    assert_eq!(timestamp.len(), 13, "milliseconds: {timestamp}");
    assert!(timestamp.bytes().all(|b| b.is_ascii_digit()));
    let expected = BASE64.encode(hmac(
        secret.as_bytes(),
        format!("{timestamp}\n{secret}").as_bytes(),
    ));
    assert_eq!(got.query("sign"), Some(expected.clone()));
    // URL-encoded: base64's `+`, `/` and `=` never appear raw in the query.
    let encoded = expected
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    assert!(
        got.uri
            .query()
            .unwrap()
            .contains(&format!("sign={encoded}")),
        "{}",
        got.uri
    );
    let v = got.json();
    assert_eq!(v["msgtype"], "markdown");
    assert_eq!(v["markdown"]["title"], "Rollback of production: acme/shop");
    assert_carries_everything(v["markdown"]["text"].as_str().unwrap());
}

#[tokio::test]
async fn dingtalk_without_secret_is_not_signed() {
    let (d, got) = send_one(TargetKind::Dingtalk, "/robot/send?access_token=t1", None).await;
    assert!(d.delivered(), "{d:?}");
    assert_eq!(got.uri.query(), Some("access_token=t1"));
}

#[tokio::test]
async fn feishu_signed_bot_gets_a_post_with_timestamp_and_sign_in_the_body() {
    let secret = "feishu-secret";
    let (d, got) = send_one(
        TargetKind::Feishu,
        "/open-apis/bot/v2/hook/h1",
        Some(secret),
    )
    .await;
    assert!(d.delivered(), "{d:?}");
    let v = got.json();
    let timestamp = v["timestamp"].as_str().expect("the timestamp, a string");
    assert_eq!(timestamp.len(), 10, "seconds: {timestamp}");
    let expected = BASE64.encode(hmac(format!("{timestamp}\n{secret}").as_bytes(), b""));
    assert_eq!(v["sign"], expected);
    assert_eq!(v["msg_type"], "post");
    let post = &v["content"]["post"]["zh_cn"];
    assert_eq!(post["title"], "Rollback of production: acme/shop");
    let mut text = String::new();
    for paragraph in post["content"].as_array().unwrap() {
        for el in paragraph.as_array().unwrap() {
            match el["tag"].as_str().unwrap() {
                "text" => text.push_str(el["text"].as_str().unwrap()),
                "a" => {
                    text.push_str(el["text"].as_str().unwrap());
                    text.push(' ');
                    text.push_str(el["href"].as_str().unwrap());
                }
                other => panic!("unexpected tag {other}"),
            }
        }
        text.push('\n');
    }
    assert_carries_everything(&text);
}

#[tokio::test]
async fn feishu_without_secret_has_no_signature() {
    let (_, got) = send_one(TargetKind::Feishu, "/hook", None).await;
    let v = got.json();
    assert!(
        v.get("sign").is_none() && v.get("timestamp").is_none(),
        "{v}"
    );
}

#[tokio::test]
async fn webhook_gets_versioned_json_signed_over_its_body() {
    let secret = "hook-secret";
    let (d, got) = send_one(TargetKind::Webhook, "/hook", Some(secret)).await;
    assert!(d.delivered(), "{d:?}");
    let expected = format!("sha256={}", hex::encode(hmac(secret.as_bytes(), &got.body)));
    assert_eq!(got.headers["x-gantry-signature"], expected.as_str());
    assert_eq!(got.headers["x-gantry-event"], "rollback");
    let v = got.json();
    assert_eq!(v["version"], 1);
    assert_eq!(v["event"], "rollback");
    assert_eq!(v["title"], "Rollback of production: acme/shop");
    assert_eq!(v["project"], "acme/shop");
    assert_eq!(v["ref"], "main");
    assert_eq!(
        v["commit"]["sha"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(v["commit"]["title"], "Serve v2");
    assert_eq!(v["pipeline"]["id"], 42);
    assert_eq!(
        v["pipeline"]["url"],
        "https://ci.example.com/acme/shop/pipelines/42"
    );
    assert_eq!(v["failed_jobs"][0], "deploy-production");
    assert_eq!(v["environment"], "production");
    assert_eq!(v["rollback"]["from"], "17");
    assert_eq!(v["rollback"]["to"], "16");
}

#[tokio::test]
async fn webhook_without_secret_has_no_signature_header() {
    let (_, got) = send_one(TargetKind::Webhook, "/hook", None).await;
    assert!(got.headers.get("x-gantry-signature").is_none());
}

#[tokio::test]
async fn a_500_is_retried_until_it_succeeds() {
    let (base, rec) = server(vec![
        (StatusCode::INTERNAL_SERVER_ERROR, "down"),
        (StatusCode::OK, "ok"),
    ])
    .await;
    let sender = Sender::new(fast()).unwrap();
    let d = sender
        .deliver(
            &target(TargetKind::Slack, format!("{base}/s"), None),
            &rollback_event(),
        )
        .await;
    assert_eq!(d.attempts, 2, "{d:?}");
    assert_eq!((d.status, d.error), (Some(200), None));
    assert_eq!(rec.got.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn attempts_run_out_with_the_last_error_returned() {
    let (base, rec) = server(vec![(StatusCode::SERVICE_UNAVAILABLE, "busy")]).await;
    let sender = Sender::new(fast()).unwrap();
    let d = sender
        .deliver(
            &target(TargetKind::Webhook, format!("{base}/h"), None),
            &rollback_event(),
        )
        .await;
    assert_eq!(d.attempts, 3, "{d:?}");
    assert_eq!(d.status, Some(503));
    assert_eq!(
        d.error.as_deref(),
        Some("HTTP 503 Service Unavailable: busy")
    );
    assert_eq!(rec.got.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_404_is_not_retried() {
    let (base, rec) = server(vec![(StatusCode::NOT_FOUND, "no such hook")]).await;
    let d = Sender::new(fast())
        .unwrap()
        .deliver(
            &target(TargetKind::Slack, format!("{base}/s"), None),
            &rollback_event(),
        )
        .await;
    assert_eq!((d.attempts, d.status), (1, Some(404)));
    assert!(!d.delivered());
    assert_eq!(rec.got.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_chat_service_error_code_is_a_failure() {
    let (base, _) = server(vec![(
        StatusCode::OK,
        r#"{"errcode":310000,"errmsg":"sign not match"}"#,
    )])
    .await;
    let d = Sender::new(fast())
        .unwrap()
        .deliver(
            &target(
                TargetKind::Dingtalk,
                format!("{base}/robot/send"),
                Some("s"),
            ),
            &rollback_event(),
        )
        .await;
    assert_eq!(d.attempts, 3, "{d:?}");
    assert_eq!(
        d.error.as_deref(),
        Some("dingtalk refused the message: errcode 310000: sign not match")
    );
}

#[tokio::test]
async fn an_unreachable_target_fails_without_showing_its_token() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/cgi-bin/webhook/send?key=TOPSECRETKEY");
    let d = Sender::new(fast())
        .unwrap()
        .deliver(&target(TargetKind::Wecom, url, None), &rollback_event())
        .await;
    assert_eq!(d.attempts, 3, "{d:?}");
    let error = d.error.unwrap();
    assert!(error.starts_with("cannot connect"), "{error}");
    assert!(!error.contains("TOPSECRETKEY"), "{error}");
}

#[tokio::test]
async fn a_bad_url_or_an_empty_secret_is_an_error_without_a_request() {
    let sender = Sender::new(fast()).unwrap();
    for (kind, url, error) in [
        (
            TargetKind::Slack,
            "",
            "the slack url is empty (is its variable set?)",
        ),
        (
            TargetKind::Wecom,
            "ftp://host/x?key=K",
            "the wecom url must be http or https",
        ),
        (
            TargetKind::Feishu,
            "hooks/K",
            "the feishu url is not a valid URL: relative URL without a base",
        ),
        (
            TargetKind::Webhook,
            "http://127.0.0.1:9/h",
            "the webhook secret is empty (is its variable set?)",
        ),
    ] {
        let secret = (kind == TargetKind::Webhook).then_some(" ");
        let d = sender
            .deliver(&target(kind, url.into(), secret), &rollback_event())
            .await;
        assert_eq!((d.attempts, d.error.as_deref()), (0, Some(error)));
    }
}

#[tokio::test]
async fn spawn_sends_to_the_rules_that_want_the_event_with_variables_expanded() {
    let (base, rec) = server(Vec::new()).await;
    let rules = vec![
        Rule {
            on: vec![EventKind::PipelineFailed],
            target: target(TargetKind::Slack, "$SLACK_URL/never".into(), None),
        },
        Rule {
            on: vec![EventKind::Rollback],
            target: target(
                TargetKind::Webhook,
                "${HOOK_BASE}/hook".into(),
                Some("$HOOK_SECRET"),
            ),
        },
    ];
    let variables = vec![
        Variable::new("HOOK_BASE", base.clone()),
        Variable::new("HOOK_SECRET", "s3"),
        Variable::new("SLACK_URL", base),
    ];
    let sender = Sender::new(fast()).unwrap();
    let handle = sender.spawn(rules, variables, rollback_event());
    let deliveries = handle.await.unwrap();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].target, TargetKind::Webhook);
    assert!(deliveries[0].delivered(), "{deliveries:?}");
    let got = rec.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].uri.path(), "/hook");
    let expected = format!("sha256={}", hex::encode(hmac(b"s3", &got[0].body)));
    assert_eq!(got[0].headers["x-gantry-signature"], expected.as_str());
}
