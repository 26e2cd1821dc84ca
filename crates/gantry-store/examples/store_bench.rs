//! A rough throughput check of the store's hot paths (not a test: it asserts nothing about time).
//!
//! ```text
//! cargo run --release -p gantry-store --example store_bench -- sqlite:///tmp/bench/gantry.db
//! cargo run --release -p gantry-store --example store_bench -- postgres://postgres@127.0.0.1:55432/bench
//! ```
//!
//! 1. Webhook intake: 20,000 deliveries stored by 64 concurrent tasks; rate and p50/p99 latency.
//! 2. Dispatch: 10,000 pending jobs claimed and finished by 10 concurrent "agents"; rate.
//!
//! The database should be empty (a new SQLite path, or a new PostgreSQL database).

#![allow(clippy::print_stdout)]

#[path = "../tests/it/records.rs"]
mod records;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_store::{
    JobResult, JobStatus, NewAgent, NewDelivery, NewJob, NewPipeline, Store, connect,
};

const DELIVERIES: usize = 20_000;
const INTAKE_TASKS: usize = 64;
const PIPELINES: usize = 100;
const JOBS_PER_PIPELINE: usize = 100;
const AGENTS: usize = 10;

#[tokio::main]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sqlite://target/store-bench/gantry.db".to_owned());
    let store = connect(&url).await.expect("connecting");
    let project = store
        .create_project(&format!("bench-{}", now()), "{}", now())
        .await
        .expect("project");
    intake(&store, project.id).await;
    dispatch(&store, project.id).await;
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn intake(store: &Arc<dyn Store>, project_id: i64) {
    let payload = vec![b'x'; 2_000];
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..INTAKE_TASKS {
        let store = store.clone();
        let payload = payload.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for i in (t..DELIVERIES).step_by(INTAKE_TASKS) {
                let delivery = NewDelivery {
                    project_id,
                    forge: "github".to_owned(),
                    delivery_id: format!("delivery-{i}"),
                    event: "push".to_owned(),
                    payload: payload.clone(),
                    trace_id: format!("trace-{i}"),
                    received_at: now(),
                    push_key: None,
                    push_key_since: 0,
                };
                let began = Instant::now();
                store.insert_delivery(&delivery).await.expect("delivery");
                latencies.push(began.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.expect("task"));
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    println!(
        "intake: {DELIVERIES} deliveries in {:.2} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms ({INTAKE_TASKS} tasks)",
        elapsed.as_secs_f64(),
        DELIVERIES as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
}

async fn dispatch(store: &Arc<dyn Store>, project_id: i64) {
    for p in 0..PIPELINES {
        let created_at = now();
        let jobs = (0..JOBS_PER_PIPELINE)
            .map(|i| NewJob {
                spec: "{\"script\":[\"true\"]}".to_owned(),
                ..records::job(&format!("job-{i}"), i as i64, created_at)
            })
            .collect();
        store
            .create_pipeline(&NewPipeline {
                sha: format!("{p:040}"),
                trace_id: String::new(),
                created_at,
                ..records::pipeline(project_id, jobs)
            })
            .await
            .expect("pipeline");
    }
    let total = PIPELINES * JOBS_PER_PIPELINE;
    let start = Instant::now();
    let mut handles = Vec::new();
    for a in 0..AGENTS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let token_hash = format!("bench-agent-{a}-{}", now());
            let id = store
                .register_agent(&NewAgent {
                    name: format!("agent-{a}"),
                    token_hash: token_hash.clone(),
                    tags: Vec::new(),
                    run_untagged: true,
                    executor: "shell".to_owned(),
                    concurrency: 1,
                    version: "bench".to_owned(),
                    registered_at: now(),
                    projects: None,
                    protected_only: false,
                    protocol: 3,
                })
                .await
                .expect("agent");
            let agent = store
                .agent_by_token(&token_hash)
                .await
                .expect("agent")
                .expect("agent");
            assert_eq!(agent.id, id);
            let mut done = 0;
            loop {
                let t = now();
                let Some(job) = store.claim(&agent, t, t + 30_000).await.expect("claim") else {
                    break;
                };
                let result = JobResult {
                    status: JobStatus::Success,
                    exit_code: Some(0),
                    failure_reason: None,
                    coverage: None,
                    finished_at: now(),
                    reports: None,
                    measurements: None,
                };
                store
                    .finish(job.id, agent.id, &result)
                    .await
                    .expect("finish");
                done += 1;
            }
            done
        }));
    }
    let mut claimed = 0;
    for handle in handles {
        claimed += handle.await.expect("task");
    }
    let elapsed = start.elapsed();
    assert_eq!(claimed, total, "every job claimed once");
    println!(
        "dispatch: {total} claims + finishes in {:.2} s = {:.0} jobs/s ({AGENTS} agents)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
    );
}
