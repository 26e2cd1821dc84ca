//! Notifications of `notify:` rules: stored when a pipeline ends, then sent to a local recording
//! server, retried when it fails, and sent by a restarted server when they were still pending.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{App, Backend, eventually, spawn_with, text_of};

/// A local HTTP server that answers `500` to its first `failing` requests and `200` after, and
/// keeps every body with the status it answered.
pub struct Recorder {
    pub url: String,
    seen: Arc<Mutex<Vec<(u16, Value)>>>,
}

#[derive(Clone)]
struct RecorderState {
    seen: Arc<Mutex<Vec<(u16, Value)>>>,
    failing: Arc<AtomicUsize>,
}

impl Recorder {
    pub async fn start(failing: usize) -> Recorder {
        async fn record(
            axum::extract::State(s): axum::extract::State<RecorderState>,
            body: axum::Json<Value>,
        ) -> axum::http::StatusCode {
            let fail = s
                .failing
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let status = if fail { 500 } else { 200 };
            s.seen.lock().unwrap().push((status, body.0));
            axum::http::StatusCode::from_u16(status).unwrap()
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = RecorderState {
            seen: seen.clone(),
            failing: Arc::new(AtomicUsize::new(failing)),
        };
        let app = axum::Router::new().fallback(record).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook/TOKEN", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Recorder { url, seen }
    }

    pub fn seen(&self) -> Vec<(u16, Value)> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<(u16, Value)> {
        eventually(|| async {
            let s = self.seen();
            (s.len() >= n).then_some(s)
        })
        .await
    }
}

/// A pipeline whose `build` job fails or passes as the agent says, with a webhook rule whose URL
/// is the masked project variable `HOOK_URL`.
const CI: &str = "
notify:
  - on: [pipeline_failed, pipeline_fixed]
    webhook: {url: $HOOK_URL}
build:
  script: [make]
";

/// A server whose failed notifications are retried after `backoff`, with project `demo` whose
/// masked `HOOK_URL` is `hook`'s URL.
async fn app(b: Backend, hook: &Recorder, backoff: Duration) -> App {
    let app = spawn_with(b, |c| c.notify_backoff = backoff).await;
    app.project(
        "demo",
        json!({"variables": [{"key": "HOOK_URL", "value": hook.url, "masked": true}]}),
    )
    .await;
    app
}

/// Pushes a new commit of [`CI`] and runs its job to `outcome`; answers the pipeline's id.
async fn run(app: &App, outcome: &str, n: usize) -> i64 {
    let sha = app.commit(&[(".gitlab-ci.yml", CI), ("n", &n.to_string())]);
    let d = app.push_and_wait("demo", &sha).await;
    let id = d["pipeline_id"].as_i64().unwrap();
    let agent = app.register(&format!("agent-{n}"), &[]).await;
    let spec = app.take(&agent, 5000).await.unwrap();
    app.run_job(&agent, spec["job_id"].as_i64().unwrap(), "log\n", outcome)
        .await;
    app.pipeline_status(id, outcome).await;
    id
}

/// The `gantry_notifications_total` count of `result`.
async fn counted(app: &App, result: &str) -> String {
    let text = text_of(app.anon("/metrics")).await;
    let prefix = format!("gantry_notifications_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or("none")
        .to_string()
}

async fn a_failed_pipeline_notifies_and_a_fixed_one_too(b: Backend) {
    let hook = Recorder::start(0).await;
    let app = app(b, &hook, Duration::from_millis(50)).await;
    let first = run(&app, "failed", 1).await;
    let seen = hook.wait_for(1).await;
    let body = &seen[0].1;
    assert_eq!(body["event"], "pipeline_failed", "{body}");
    assert_eq!(body["project"], "demo");
    assert_eq!(body["ref"], "main");
    assert_eq!(body["failed_jobs"], json!(["build"]));
    assert_eq!(body["pipeline"]["id"], first);
    assert_eq!(body["commit"]["title"], "a commit");
    let sha = app.pipeline(first).await["sha"].clone();
    assert_eq!(body["commit"]["sha"], sha);
    assert_eq!(
        eventually(|| async { Some(counted(&app, "sent").await).filter(|c| c == "1") }).await,
        "1"
    );
    // A passing pipeline after the failed one is news; the next passing one is not.
    run(&app, "success", 2).await;
    let seen = hook.wait_for(2).await;
    assert_eq!(seen[1].1["event"], "pipeline_fixed", "{}", seen[1].1);
    assert_eq!(seen[1].1["failed_jobs"], json!([]));
    let third = run(&app, "success", 3).await;
    let store = gantry_store::connect(&app.database_url).await.unwrap();
    assert!(store.notifications(third).await.unwrap().is_empty());
    let stored = store.notifications(first).await.unwrap();
    assert_eq!(stored.len(), 1);
    // The target is stored sealed: the hook's URL (its token) is not in the row.
    assert!(!stored[0].target.contains("TOKEN"), "{}", stored[0].target);
    assert_eq!(hook.seen().len(), 2);
}
crate::both!(a_failed_pipeline_notifies_and_a_fixed_one_too);

async fn a_failing_target_is_retried_until_it_recovers(b: Backend) {
    let hook = Recorder::start(2).await;
    let app = app(b, &hook, Duration::from_millis(50)).await;
    let id = run(&app, "failed", 1).await;
    let seen = hook.wait_for(3).await;
    let statuses: Vec<u16> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [500, 500, 200]);
    assert!(seen.iter().all(|(_, b)| b["event"] == "pipeline_failed"));
    let store = gantry_store::connect(&app.database_url).await.unwrap();
    let n = eventually(|| async {
        let n = store.notifications(id).await.unwrap().remove(0);
        (n.status == "sent").then_some(n)
    })
    .await;
    assert_eq!(n.attempts, 3);
    assert!(n.last_error.is_none(), "{:?}", n.last_error);
    assert_eq!(
        eventually(|| async { Some(counted(&app, "sent").await).filter(|c| c == "1") }).await,
        "1"
    );
    assert_eq!(counted(&app, "failed").await, "none");
}
crate::both!(a_failing_target_is_retried_until_it_recovers);

async fn a_pending_notification_is_sent_after_a_restart(b: Backend) {
    let hook = Recorder::start(1).await;
    // The retry waits long enough for the server to be stopped before it.
    let mut app = app(b, &hook, Duration::from_secs(4)).await;
    let id = run(&app, "failed", 1).await;
    assert_eq!(hook.wait_for(1).await[0].0, 500);
    let store = gantry_store::connect(&app.database_url).await.unwrap();
    eventually(|| async {
        let n = store.notifications(id).await.unwrap().remove(0);
        (n.attempts == 1).then_some(())
    })
    .await;
    app.stop().await;
    let n = store.notifications(id).await.unwrap().remove(0);
    assert_eq!((n.status.as_str(), n.attempts), ("pending", 1));
    assert_eq!(hook.seen().len(), 1, "the stopped server sent nothing more");
    let server = gantry_server::serve(app.config.clone()).await.unwrap();
    app.url = server.url();
    app.server = Some(server);
    let seen = hook.wait_for(2).await;
    assert_eq!(seen[1].0, 200);
    assert_eq!(seen[1].1["event"], "pipeline_failed");
    let n = eventually(|| async {
        let n = store.notifications(id).await.unwrap().remove(0);
        (n.status == "sent").then_some(n)
    })
    .await;
    assert_eq!(n.attempts, 2);
}
crate::both!(a_pending_notification_is_sent_after_a_restart);
