//! Integration tests of the runtime: hand-built plans, run in temporary git repositories with the
//! real shell executor, or with the fake one (`gantry_runtime::fake`, no process) where a test is
//! about scheduling only.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_executor_shell::ShellExecutor;
use gantry_pipeline::plan::{
    AllowFailure, Artifacts, ArtifactsWhen, Cache, CacheKey, CachePolicy, FailureReason, Job, Need,
    Plan, Retry, Variable, When,
};
use gantry_runtime::executor::Executor;
use gantry_runtime::fake::FakeExecutor;
use gantry_runtime::{
    Event, JobStatus, PipelineResult, PipelineStatus, Reporter, RunConfig, Stream,
};
use tokio::sync::watch;

mod gates;
mod sections;
mod verify;
mod workspace;

// ---------------------------------------------------------------------------------------------------
// Helpers

/// A git repository with these files committed.
fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["add", "-A"]);
    git(
        dir.path(),
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-q",
            "-m",
            "init",
            "--allow-empty",
        ],
    );
    dir
}

fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "git {args:?}");
}

const STAGES: [&str; 5] = [".pre", "build", "test", "deploy", ".post"];

fn job(name: &str, stage: usize, script: &[&str]) -> Job {
    Job {
        script: script.iter().map(|s| (*s).to_string()).collect(),
        predefined: vec![Variable::new("CI_JOB_NAME", name)],
        ..Job::new(name, STAGES[stage], stage)
    }
}

fn needs(names: &[&str]) -> Option<Vec<Need>> {
    Some(
        names
            .iter()
            .map(|n| Need {
                job: (*n).into(),
                artifacts: true,
                optional: false,
            })
            .collect(),
    )
}

fn artifacts(paths: &[&str]) -> Option<Artifacts> {
    Some(Artifacts {
        name: None,
        paths: paths.iter().map(|s| (*s).to_string()).collect(),
        exclude: Vec::new(),
        untracked: false,
        when: ArtifactsWhen::OnSuccess,
        expire_in: Some("1 week".into()),
        reports: Vec::new(),
    })
}

fn cache(key: &str, paths: &[&str], policy: CachePolicy) -> Cache {
    Cache {
        key: CacheKey::Literal(key.into()),
        paths: paths.iter().map(|s| (*s).to_string()).collect(),
        untracked: false,
        policy,
        when: ArtifactsWhen::OnSuccess,
        fallback_keys: Vec::new(),
        unprotect: false,
        key_suffix: String::new(),
    }
}

fn plan(jobs: Vec<Job>) -> Plan {
    Plan {
        stages: STAGES.iter().map(|s| (*s).to_string()).collect(),
        jobs,
        predefined: vec![Variable::new("CI", "true")],
        variables: Vec::new(),
        cli_variables: Vec::new(),
        scoped_variables: Vec::new(),
    }
}

/// An event, owned, with the time it arrived.
#[derive(Clone, Debug)]
enum Rec {
    Started {
        job: String,
        attempt: u32,
        at: Instant,
    },
    Echo {
        command: String,
    },
    Log {
        job: String,
        stream: Stream,
        line: String,
    },
    /// A log line that is one of the runtime's own section markers.
    Section {
        line: String,
    },
    Info {
        job: String,
        message: String,
    },
    Finished {
        job: String,
        at: Instant,
        error: Option<String>,
    },
    Report {
        job: String,
        kind: &'static str,
        reports: gantry_runtime::gantry_reports::Reports,
    },
    Gate {
        job: String,
        outcome: gantry_runtime::gantry_reports::GateOutcome,
    },
    Verify {
        job: String,
        weight: Option<u8>,
        measurement: gantry_runtime::gantry_release::Measurement,
    },
    Pipeline,
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Rec>>);

impl Reporter for Recorder {
    fn event(&self, event: Event<'_>) {
        let now = Instant::now();
        let rec = match event {
            Event::JobStarted { job, attempt, .. } => Rec::Started {
                job: job.into(),
                attempt,
                at: now,
            },
            Event::JobEcho { command, .. } => Rec::Echo {
                command: command.into(),
            },
            Event::JobLog { line, .. } if gantry_runtime::section::is_own_marker(line) => {
                Rec::Section { line: line.into() }
            }
            Event::JobLog { job, stream, line } => Rec::Log {
                job: job.into(),
                stream,
                line: line.into(),
            },
            Event::JobInfo { job, message } => Rec::Info {
                job: job.into(),
                message: message.into(),
            },
            Event::JobFinished { job, error, .. } => Rec::Finished {
                job: job.into(),
                at: now,
                error: error.map(str::to_string),
            },
            Event::Report { job, kind, reports } => Rec::Report {
                job: job.into(),
                kind: kind.as_str(),
                reports: reports.clone(),
            },
            Event::Gate { job, outcome } => Rec::Gate {
                job: job.into(),
                outcome: outcome.clone(),
            },
            Event::Verify {
                job,
                weight,
                measurement,
            } => Rec::Verify {
                job: job.into(),
                weight,
                measurement: measurement.clone(),
            },
            Event::PipelineFinished { .. } => Rec::Pipeline,
        };
        self.0.lock().unwrap().push(rec);
    }
}

impl Recorder {
    fn all(&self) -> Vec<Rec> {
        self.0.lock().unwrap().clone()
    }
    /// What `pick` takes from each record, in order.
    fn picked<T>(&self, pick: impl FnMut(Rec) -> Option<T>) -> Vec<T> {
        self.all().into_iter().filter_map(pick).collect()
    }
    fn logs(&self, job: &str) -> Vec<String> {
        self.picked(|r| match r {
            Rec::Log { job: j, line, .. } if j == job => Some(line),
            _ => None,
        })
    }
    fn infos(&self, job: &str) -> Vec<String> {
        self.picked(|r| match r {
            Rec::Info { job: j, message } if j == job => Some(message),
            _ => None,
        })
    }
    fn has_info(&self, job: &str, part: &str) -> bool {
        self.infos(job).iter().any(|m| m.contains(part))
    }
    fn started(&self, job: &str) -> Vec<(u32, Instant)> {
        self.picked(|r| match r {
            Rec::Started {
                job: j,
                attempt,
                at,
            } if j == job => Some((attempt, at)),
            _ => None,
        })
    }
    fn first_start(&self, job: &str) -> Instant {
        self.started(job)
            .first()
            .unwrap_or_else(|| panic!("{job} never started"))
            .1
    }
    /// The `error` of `job`'s finish event.
    fn finished_error(&self, job: &str) -> Option<String> {
        self.finished(job, |r| match r {
            Rec::Finished { error, .. } => Some(error),
            _ => None,
        })
    }
    fn finished_at(&self, job: &str) -> Instant {
        self.finished(job, |r| match r {
            Rec::Finished { at, .. } => Some(at),
            _ => None,
        })
    }
    /// What `pick` takes from `job`'s first finish event.
    fn finished<T>(&self, job: &str, pick: impl Fn(Rec) -> Option<T>) -> T {
        self.all()
            .into_iter()
            .find_map(|r| match r {
                Rec::Finished { job: ref j, .. } if j == job => pick(r),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{job} never finished"))
    }
}

fn config(project: &Path, plan: &Plan) -> RunConfig {
    RunConfig {
        project_dir: project.to_path_buf(),
        state_dir: project.join(".gantry"),
        pipeline_id: 1,
        concurrency: 4,
        in_place: false,
        selected: vec![true; plan.jobs.len()],
        play_manual: Vec::new(),
        echo: true,
        default_timeout: Duration::from_secs(60),
        files: None,
        overlay: true,
        changes: None,
        max_report_bytes: gantry_runtime::gantry_reports::DEFAULT_MAX_BYTES,
        gate_reports: None,
    }
}

struct Run {
    result: PipelineResult,
    rec: Arc<Recorder>,
}

impl Run {
    fn status(&self, job: &str) -> JobStatus {
        self.job(job).status
    }
    fn job(&self, job: &str) -> &gantry_runtime::JobResult {
        self.result
            .jobs
            .iter()
            .find(|j| j.name == job)
            .unwrap_or_else(|| panic!("no result for {job}"))
    }
    fn logs(&self, job: &str) -> Vec<String> {
        self.rec.logs(job)
    }
}

async fn run_cfg(plan: &Plan, cfg: RunConfig, cancel: watch::Receiver<bool>) -> Run {
    run_on(plan, cfg, cancel, ShellExecutor::default()).await
}

async fn run_on(
    plan: &Plan,
    cfg: RunConfig,
    cancel: watch::Receiver<bool>,
    executor: impl Executor,
) -> Run {
    let rec = Arc::new(Recorder::default());
    let result = gantry_runtime::run(plan, cfg, Arc::new(executor), rec.clone(), cancel)
        .await
        .expect("pipeline runs");
    let pipeline = rec
        .all()
        .into_iter()
        .filter(|r| matches!(r, Rec::Pipeline))
        .count();
    assert_eq!(pipeline, 1, "exactly one PipelineFinished");
    Run { result, rec }
}

async fn run_with(plan: &Plan, project: &Path, tweak: impl FnOnce(&mut RunConfig)) -> Run {
    let mut cfg = config(project, plan);
    tweak(&mut cfg);
    let (tx, rx) = watch::channel(false);
    let run = run_cfg(plan, cfg, rx).await;
    drop(tx);
    run
}

async fn run(plan: &Plan, project: &Path) -> Run {
    run_with(plan, project, |_| {}).await
}

/// Runs `plan` with the fake executor, `tweak`ed.
async fn fake_with(plan: &Plan, project: &Path, tweak: impl FnOnce(&mut RunConfig)) -> Run {
    let mut cfg = config(project, plan);
    tweak(&mut cfg);
    let (tx, rx) = watch::channel(false);
    let run = run_on(plan, cfg, rx, FakeExecutor).await;
    drop(tx);
    run
}

/// Runs `plan` with the fake executor.
async fn fake(plan: &Plan, project: &Path) -> Run {
    fake_with(plan, project, |_| {}).await
}

// ---------------------------------------------------------------------------------------------------
// Scheduling

#[tokio::test]
async fn needs_start_early_and_stages_wait() {
    let r = repo(&[("README", "x")]);
    let mut needy = job("needy", 2, &["echo needy"]);
    needy.needs = needs(&["fast"]);
    let p = plan(vec![
        job("slow", 1, &["sleep 0.6"]),
        job("fast", 1, &["true"]),
        needy,
        job("barrier", 2, &["true"]),
        job("last", 3, &["true"]),
    ]);
    let run = fake(&p, r.path()).await;
    assert_eq!(run.result.status, PipelineStatus::Success);
    let rec = &run.rec;
    assert!(
        rec.first_start("needy") < rec.finished_at("slow"),
        "needy waited for the slow job"
    );
    assert!(
        rec.first_start("barrier") >= rec.finished_at("slow"),
        "barrier did not wait for its stage"
    );
    assert!(
        rec.first_start("last") >= rec.finished_at("needy")
            && rec.first_start("last") >= rec.finished_at("barrier")
    );
    assert_eq!(run.logs("needy"), ["needy"]);
    let names: Vec<&str> = run.result.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        ["slow", "fast", "needy", "barrier", "last"],
        "results come in plan order"
    );
}

#[tokio::test]
async fn concurrency_limits_running_jobs() {
    let r = repo(&[]);
    let p = plan(vec![
        job("a", 1, &["sleep 0.3"]),
        job("b", 1, &["sleep 0.3"]),
    ]);
    let run = fake_with(&p, r.path(), |c| c.concurrency = 1).await;
    let (first, second) = if run.rec.first_start("a") < run.rec.first_start("b") {
        ("a", "b")
    } else {
        ("b", "a")
    };
    assert!(run.rec.first_start(second) >= run.rec.finished_at(first));
}

#[tokio::test]
async fn when_on_failure_always_and_skips() {
    let r = repo(&[]);
    let mut on_failure = job("on_failure", 2, &["echo cleanup"]);
    on_failure.when = When::OnFailure;
    let mut always = job("always", 2, &["true"]);
    always.when = When::Always;
    let mut late_failure = job("late_on_failure", 3, &["true"]);
    late_failure.when = When::OnFailure;
    let mut after_needs = job("needs_skipped", 3, &["true"]);
    after_needs.needs = needs(&["skipped"]);
    let p = plan(vec![
        job("ok", 1, &["true"]),
        job("broken", 1, &["exit 1"]),
        job("skipped", 2, &["true"]),
        on_failure,
        always,
        job("late", 3, &["true"]),
        late_failure,
        after_needs,
    ]);
    let run = fake(&p, r.path()).await;
    assert_eq!(run.result.status, PipelineStatus::Failed);
    assert_eq!(run.status("ok"), JobStatus::Success);
    assert_eq!(run.status("broken"), JobStatus::Failed);
    assert_eq!(run.job("broken").exit_code, Some(1));
    assert_eq!(run.job("broken").reason, Some(FailureReason::ScriptFailure));
    assert_eq!(run.status("skipped"), JobStatus::Skipped);
    assert_eq!(run.status("on_failure"), JobStatus::Success);
    assert_eq!(run.logs("on_failure"), ["cleanup"]);
    assert_eq!(run.status("always"), JobStatus::Success);
    assert_eq!(run.status("late"), JobStatus::Skipped);
    assert_eq!(run.status("late_on_failure"), JobStatus::Success);
    assert_eq!(
        run.status("needs_skipped"),
        JobStatus::Skipped,
        "skipped by failure propagates"
    );

    // Nothing failed: on_failure jobs are skipped, and skipped jobs do not stop on_success ones.
    let mut on_failure = job("on_failure", 1, &["true"]);
    on_failure.when = When::OnFailure;
    let p = plan(vec![on_failure, job("next", 2, &["true"])]);
    let run = fake(&p, r.path()).await;
    assert_eq!(run.result.status, PipelineStatus::Success);
    assert_eq!(run.status("on_failure"), JobStatus::Skipped);
    assert_eq!(run.status("next"), JobStatus::Success);
}

#[tokio::test]
async fn manual_jobs() {
    let r = repo(&[]);
    let mut optional = job("optional", 1, &["exit 1"]);
    optional.when = When::Manual;
    optional.allow_failure = AllowFailure::Bool(true);
    let mut played = job("played", 1, &["echo played"]);
    played.when = When::Manual;
    played.allow_failure = AllowFailure::Bool(true);
    let mut gate = job("gate", 2, &["true"]);
    gate.when = When::Manual;
    let p = plan(vec![
        optional,
        played,
        job("after_optional", 2, &["true"]),
        gate,
        job("after_gate", 3, &["true"]),
    ]);
    let run = fake_with(&p, r.path(), |c| c.play_manual = vec!["played".into()]).await;
    assert_eq!(run.status("optional"), JobStatus::Manual);
    assert!(run.rec.started("optional").is_empty());
    assert_eq!(run.status("played"), JobStatus::Success);
    assert_eq!(run.logs("played"), ["played"]);
    assert_eq!(
        run.status("after_optional"),
        JobStatus::Success,
        "a non-blocking manual job counts as success"
    );
    assert_eq!(run.status("gate"), JobStatus::Manual);
    assert_eq!(
        run.status("after_gate"),
        JobStatus::Success,
        "a manual job that is not played holds nothing up, even with allow_failure: false"
    );
    assert_eq!(run.result.status, PipelineStatus::Success);
}

#[tokio::test]
async fn delayed_jobs_wait() {
    let r = repo(&[]);
    let mut delayed = job("delayed", 1, &["true"]);
    delayed.when = When::Delayed;
    delayed.start_in = Some(Duration::from_millis(400));
    let p = plan(vec![delayed]);
    let t0 = Instant::now();
    let run = run(&p, r.path()).await;
    assert_eq!(run.status("delayed"), JobStatus::Success);
    assert!(run.rec.first_start("delayed") - t0 >= Duration::from_millis(400));
    assert!(
        run.rec.has_info("delayed", "waiting 0.4s (when: delayed)"),
        "{:?}",
        run.rec.infos("delayed")
    );
}

#[tokio::test]
async fn retries_count_and_match() {
    let r = repo(&[]);
    let counter = tempfile::tempdir().unwrap();
    let c = counter.path().join("n");
    let mut flaky = job(
        "flaky",
        1,
        &[&format!(
            "echo x >> {0}; test $(wc -l < {0}) -ge 2",
            c.display()
        )],
    );
    flaky.retry = Retry {
        max: 2,
        when: Vec::new(),
        exit_codes: Vec::new(),
    };
    let mut hopeless = job("hopeless", 1, &["exit 1"]);
    hopeless.retry = Retry {
        max: 2,
        when: vec!["script_failure".into()],
        exit_codes: Vec::new(),
    };
    let mut wrong_code = job("wrong_code", 1, &["exit 4"]);
    wrong_code.retry = Retry {
        max: 2,
        when: Vec::new(),
        exit_codes: vec![3],
    };
    let p = plan(vec![flaky, hopeless, wrong_code]);
    let run = run(&p, r.path()).await;
    assert_eq!(run.status("flaky"), JobStatus::Success);
    assert_eq!(
        run.rec
            .started("flaky")
            .iter()
            .map(|s| s.0)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(run.rec.has_info("flaky", "retrying (attempt 2 of 3)"));
    assert_eq!(run.status("hopeless"), JobStatus::Failed);
    assert_eq!(run.rec.started("hopeless").len(), 3);
    assert_eq!(run.rec.started("wrong_code").len(), 1);
}

#[tokio::test]
async fn allow_failure_exit_codes() {
    let r = repo(&[]);
    let mut allowed = job("allowed", 1, &["exit 3"]);
    allowed.allow_failure = AllowFailure::ExitCodes(vec![3]);
    let p = plan(vec![allowed.clone(), job("next", 2, &["true"])]);
    let run = fake(&p, r.path()).await;
    assert_eq!(run.status("allowed"), JobStatus::Failed);
    assert!(run.job("allowed").allow_failure);
    assert_eq!(run.status("next"), JobStatus::Success);
    assert_eq!(run.result.status, PipelineStatus::Success);

    allowed.script = vec!["exit 4".into()];
    let p = plan(vec![allowed, job("next", 2, &["true"])]);
    let run = fake(&p, r.path()).await;
    assert!(!run.job("allowed").allow_failure);
    assert_eq!(run.status("next"), JobStatus::Skipped);
    assert_eq!(run.result.status, PipelineStatus::Failed);
}

#[tokio::test]
async fn timeout_fails_the_job() {
    let r = repo(&[]);
    let mut slow = job("slow", 1, &["sleep 30"]);
    slow.timeout = Some(Duration::from_millis(300));
    let t0 = Instant::now();
    let run = fake(&plan(vec![slow]), r.path()).await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(run.status("slow"), JobStatus::Failed);
    assert_eq!(
        run.job("slow").reason,
        Some(FailureReason::JobExecutionTimeout)
    );
    assert_eq!(run.job("slow").exit_code, None);
}

#[tokio::test]
async fn after_script_runs_with_the_job_status() {
    let r = repo(&[]);
    let mut failing = job("failing", 1, &["export FROM_SCRIPT=1", "exit 2"]);
    failing.after_script = vec![
        "echo status=$CI_JOB_STATUS from_script=${FROM_SCRIPT-unset}".into(),
        "exit 5".into(),
    ];
    let mut passing = job("passing", 1, &["true"]);
    passing.after_script = vec!["echo status=$CI_JOB_STATUS".into()];
    let run = run(&plan(vec![failing, passing]), r.path()).await;
    assert_eq!(run.status("failing"), JobStatus::Failed);
    assert_eq!(
        run.job("failing").exit_code,
        Some(2),
        "after_script does not change the job's result"
    );
    assert_eq!(run.logs("failing"), ["status=failed from_script=unset"]);
    assert!(
        run.rec
            .has_info("failing", "after_script failed with exit code 5")
    );
    assert_eq!(run.status("passing"), JobStatus::Success);
    assert_eq!(run.logs("passing"), ["status=success"]);
}

// ---------------------------------------------------------------------------------------------------
// Files

#[tokio::test]
async fn artifacts_pass_between_jobs() {
    let r = repo(&[("src.txt", "source")]);
    let mut producer = job(
        "producer",
        1,
        &[
            "mkdir -p out/sub",
            "echo a > out/a.txt",
            "echo b > out/sub/b.log",
            "echo n > notes",
        ],
    );
    producer.artifacts = artifacts(&["$CI_PROJECT_DIR/out/", "notes"]);
    producer.artifacts.as_mut().unwrap().exclude = vec!["out/**/*.log".into()];
    let consumer = job(
        "consumer",
        2,
        &["cat out/a.txt notes", "test ! -e out/sub/b.log"],
    );
    let mut nothing = job("nothing", 2, &["test ! -e out/a.txt", "test ! -e notes"]);
    nothing.dependencies = Some(Vec::new());
    let mut by_needs = job("by_needs", 2, &["cat out/a.txt"]);
    by_needs.needs = needs(&["producer"]);
    let mut needs_no_artifacts = job("needs_no_artifacts", 2, &["test ! -e out/a.txt"]);
    needs_no_artifacts.needs = Some(vec![Need {
        job: "producer".into(),
        artifacts: false,
        optional: false,
    }]);
    let p = plan(vec![
        producer,
        consumer,
        nothing,
        by_needs,
        needs_no_artifacts,
    ]);
    let run = run(&p, r.path()).await;
    assert_eq!(
        run.result.status,
        PipelineStatus::Success,
        "{:?}",
        run.rec.all()
    );
    assert!(
        run.rec.has_info("producer", "artifacts: 2 files"),
        "{:?}",
        run.rec.infos("producer")
    );
    assert_eq!(run.logs("consumer"), ["a", "n"]);
    assert_eq!(run.logs("by_needs"), ["a"]);
    assert!(
        !r.path().join("out").exists(),
        "the user's tree is untouched"
    );

    // Stored artifacts outlive the run: a later run of the consumer alone gets them.
    let p2 = plan(vec![p.jobs[0].clone(), p.jobs[1].clone()]);
    let run = run_with(&p2, r.path(), |c| {
        c.pipeline_id = 2;
        c.selected = vec![false, true];
    })
    .await;
    assert_eq!(run.status("consumer"), JobStatus::Success);
    assert_eq!(run.logs("consumer"), ["a", "n"]);
    let meta =
        std::fs::read_to_string(r.path().join(".gantry/artifacts/producer/meta.json")).unwrap();
    assert!(meta.contains("1 week"), "{meta}");
}

#[tokio::test]
async fn failed_jobs_replace_stale_artifacts() {
    let r = repo(&[]);
    let mut producer = job("producer", 1, &["echo v1 > out.txt"]);
    producer.artifacts = artifacts(&["out.txt"]);
    let p = plan(vec![producer.clone()]);
    run(&p, r.path()).await;
    producer.script = vec!["echo v2 > out.txt".into(), "exit 1".into()];
    producer.allow_failure = AllowFailure::Bool(true);
    let consumer = job("consumer", 2, &["test ! -e out.txt"]);
    let run = self::run(&plan(vec![producer, consumer]), r.path()).await;
    assert_eq!(
        run.status("consumer"),
        JobStatus::Success,
        "{:?}",
        run.logs("consumer")
    );
}

#[tokio::test]
async fn skipped_jobs_pass_no_stale_artifacts() {
    let r = repo(&[]);
    let mut producer = job("producer", 1, &["echo old > out.txt"]);
    producer.artifacts = artifacts(&["out.txt"]);
    run(&plan(vec![producer.clone()]), r.path()).await;
    assert!(
        r.path()
            .join(".gantry/artifacts/producer/files/out.txt")
            .exists()
    );

    // Now the producer is a manual job that is not played: its consumers get nothing.
    producer.when = When::Manual;
    producer.allow_failure = AllowFailure::Bool(true);
    let mut by_needs = job("by_needs", 2, &["test ! -e out.txt"]);
    by_needs.needs = needs(&["producer"]);
    let mut by_dependencies = job("by_dependencies", 2, &["test ! -e out.txt"]);
    by_dependencies.dependencies = Some(vec!["producer".into()]);
    let by_stage = job("by_stage", 2, &["test ! -e out.txt"]);
    let run = self::run(
        &plan(vec![producer, by_needs, by_dependencies, by_stage]),
        r.path(),
    )
    .await;
    assert_eq!(run.status("producer"), JobStatus::Manual);
    for j in ["by_needs", "by_dependencies", "by_stage"] {
        assert_eq!(run.status(j), JobStatus::Success, "{j} got stale artifacts");
    }
    assert!(
        run.rec
            .has_info("by_dependencies", "producer has no artifacts to restore")
    );
}

#[tokio::test]
async fn artifacts_when_and_untracked() {
    let r = repo(&[("tracked.txt", "t")]);
    let mut failing = job(
        "failing",
        1,
        &[
            "echo log > debug.log",
            "mkdir -p gen && echo g > gen/x",
            "exit 1",
        ],
    );
    failing.allow_failure = AllowFailure::Bool(true);
    failing.artifacts = artifacts(&[]);
    let a = failing.artifacts.as_mut().unwrap();
    a.when = ArtifactsWhen::OnFailure;
    a.untracked = true;
    let check = job("check", 2, &["cat debug.log gen/x"]);
    let run = run(&plan(vec![failing, check]), r.path()).await;
    assert_eq!(run.logs("check"), ["log", "g"]);
    let stored = r.path().join(".gantry/artifacts/failing/files");
    assert!(
        !stored.join("tracked.txt").exists(),
        "tracked files are not untracked"
    );
}

/// Runs `make` in place in `dir`, keeping its untracked files as artifacts, and checks that it
/// passed; answers where its files are stored.
async fn untracked_in_place(mut make: Job, dir: &Path) -> std::path::PathBuf {
    make.artifacts = artifacts(&[]);
    make.artifacts.as_mut().unwrap().untracked = true;
    let run = run_with(&plan(vec![make]), dir, |c| c.in_place = true).await;
    assert_eq!(run.status("make"), JobStatus::Success);
    dir.join(".gantry/artifacts/make/files")
}

/// In place in a checkout (as agents run), `untracked` asks git what it tracks: a tracked file the
/// job changed is not untracked, a file the job made is.
#[tokio::test]
async fn in_place_untracked_is_what_git_does_not_track() {
    let r = repo(&[("tracked.txt", "t"), ("src/lib.txt", "l")]);
    let make = job(
        "make",
        1,
        &[
            "echo changed > tracked.txt",
            "mkdir -p gen && echo g > gen/x",
        ],
    );
    let stored = untracked_in_place(make, r.path()).await;
    assert_eq!(
        std::fs::read_to_string(stored.join("gen/x")).unwrap(),
        "g\n"
    );
    assert!(!stored.join("tracked.txt").exists());
    assert!(!stored.join("src/lib.txt").exists());
    assert!(!stored.join(".git").exists());
}

/// In place in a directory that is not a checkout (an agent's `GIT_STRATEGY: none`), `untracked`
/// is every file the job made: the files there before it ran are listed first.
#[tokio::test]
async fn in_place_untracked_without_git_is_what_the_job_made() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("before.txt"), "b\n").unwrap();
    let make = job("make", 1, &["echo m > made.txt", "echo c > before.txt"]);
    let stored = untracked_in_place(make, dir.path()).await;
    assert_eq!(
        std::fs::read_to_string(stored.join("made.txt")).unwrap(),
        "m\n"
    );
    assert!(!stored.join("before.txt").exists());
}

#[tokio::test]
async fn dotenv_reports_become_variables() {
    let r = repo(&[]);
    let mut producer = job(
        "producer",
        1,
        &["printf 'VERSION=1.2.3\\n# comment\\nQUOTED=\"a b\"\\n' > build.env"],
    );
    producer.artifacts = artifacts(&[]);
    producer.artifacts.as_mut().unwrap().reports =
        vec![("dotenv".into(), vec!["build.env".into()])];
    let consumer = job(
        "consumer",
        2,
        &["echo \"$VERSION|$QUOTED\"", "test ! -e build.env"],
    );
    let mut isolated = job("isolated", 2, &["echo \"[${VERSION-}]\""]);
    isolated.dependencies = Some(Vec::new());
    let p = plan(vec![producer, consumer, isolated]);
    let run = run(&p, r.path()).await;
    assert_eq!(run.logs("consumer"), ["1.2.3|a b"]);
    assert_eq!(run.logs("isolated"), ["[]"]);

    // A later run of the consumer alone still gets them.
    let run = run_with(&p, r.path(), |c| {
        c.pipeline_id = 2;
        c.selected = vec![false, true, false];
    })
    .await;
    assert_eq!(run.logs("consumer"), ["1.2.3|a b"]);
}

#[tokio::test]
async fn caches_push_and_pull() {
    let r = repo(&[]);
    let mut fill = job(
        "fill",
        1,
        &[
            "mkdir -p vendor",
            "echo v1 > vendor/lib",
            "echo junk > other",
        ],
    );
    fill.cache = vec![cache(
        "deps-$CI_JOB_STAGE",
        &["vendor/"],
        CachePolicy::PullPush,
    )];
    fill.variables = vec![Variable::new("CI_JOB_STAGE", "build")];
    let run = run(&plan(vec![fill]), r.path()).await;
    assert!(
        run.rec
            .has_info("fill", "cache saved under key deps-build (1 files)"),
        "{:?}",
        run.rec.infos("fill")
    );

    let mut reader = job(
        "reader",
        1,
        &[
            "cat vendor/lib",
            "test ! -e other",
            "echo changed > vendor/lib",
        ],
    );
    reader.cache = vec![cache("deps-build", &["vendor/"], CachePolicy::Pull)];
    let mut missing = job("missing", 1, &["test ! -e vendor/lib"]);
    missing.cache = vec![cache("nothing-here", &["vendor/"], CachePolicy::Pull)];
    let mut fallback = job("fallback", 1, &["cat vendor/lib"]);
    fallback.cache = vec![Cache {
        fallback_keys: vec!["deps-build".into()],
        ..cache("new-key", &["vendor/"], CachePolicy::Pull)
    }];
    let run = self::run(&plan(vec![reader, missing, fallback]), r.path()).await;
    assert_eq!(
        run.result.status,
        PipelineStatus::Success,
        "{:?}",
        run.rec.all()
    );
    assert_eq!(run.logs("reader"), ["v1"]);
    assert!(run.rec.has_info("missing", "no cache for key nothing-here"));
    assert_eq!(run.logs("fallback"), ["v1"]);

    // The pull-only job changed its copy, not the cache.
    let mut again = job("again", 1, &["cat vendor/lib"]);
    again.cache = vec![cache("deps-build", &["vendor/"], CachePolicy::Pull)];
    let run = self::run(&plan(vec![again]), r.path()).await;
    assert_eq!(run.logs("again"), ["v1"]);

    let mut bad = job("bad", 1, &["true"]);
    bad.cache = vec![cache("a/b", &["x"], CachePolicy::PullPush)];
    let run = self::run(&plan(vec![bad]), r.path()).await;
    assert_eq!(run.status("bad"), JobStatus::Failed);
    assert!(run.rec.has_info("bad", "must not contain `/`"));
}

#[tokio::test]
async fn a_key_suffix_keeps_caches_apart() {
    let r = repo(&[]);
    let suffixed = |key: &str, suffix: &str, policy: CachePolicy| Cache {
        key_suffix: suffix.into(),
        ..cache(key, &["vendor/"], policy)
    };
    let mut fill = job("fill", 1, &["mkdir -p vendor", "echo v1 > vendor/lib"]);
    fill.cache = vec![suffixed("deps", "-protected", CachePolicy::PullPush)];
    let run = self::run(&plan(vec![fill]), r.path()).await;
    assert!(
        run.rec
            .has_info("fill", "cache saved under key deps-protected (1 files)"),
        "{:?}",
        run.rec.infos("fill")
    );

    let mut other = job("other", 1, &["test ! -e vendor/lib"]);
    other.cache = vec![suffixed("deps", "-non_protected", CachePolicy::Pull)];
    let mut same = job("same", 1, &["cat vendor/lib"]);
    same.cache = vec![suffixed("deps", "-protected", CachePolicy::Pull)];
    let mut fallback = job("fallback", 1, &["cat vendor/lib"]);
    fallback.cache = vec![Cache {
        fallback_keys: vec!["deps".into()],
        ..suffixed("new", "-protected", CachePolicy::Pull)
    }];
    let mut no_fallback = job("no_fallback", 1, &["test ! -e vendor/lib"]);
    no_fallback.cache = vec![Cache {
        fallback_keys: vec!["deps".into()],
        ..suffixed("new", "-non_protected", CachePolicy::Pull)
    }];
    let run = self::run(&plan(vec![other, same, fallback, no_fallback]), r.path()).await;
    assert_eq!(
        run.result.status,
        PipelineStatus::Success,
        "{:?}",
        run.rec.all()
    );
    assert!(
        run.rec
            .has_info("other", "no cache for key deps-non_protected")
    );
    assert_eq!(run.logs("same"), ["v1"]);
    assert_eq!(run.logs("fallback"), ["v1"]);
    assert!(
        run.rec
            .has_info("fallback", "cache restored from key deps-protected")
    );
}

#[tokio::test]
async fn old_builds_are_removed_and_in_place_runs_in_the_project() {
    let r = repo(&[]);
    run(&plan(vec![job("a", 1, &["true"])]), r.path()).await;
    assert!(r.path().join(".gantry/builds/1/a").is_dir());
    assert_eq!(
        std::fs::read_to_string(r.path().join(".gantry/.gitignore")).unwrap(),
        "*\n"
    );
    let run = run_with(
        &plan(vec![job("a", 1, &["pwd", "touch made-here"])]),
        r.path(),
        |c| {
            c.pipeline_id = 2;
            c.in_place = true;
        },
    )
    .await;
    assert_eq!(run.status("a"), JobStatus::Success);
    assert!(r.path().join("made-here").exists());
    assert!(!r.path().join(".gantry/builds/1").exists());
}

// ---------------------------------------------------------------------------------------------------
// Output

#[tokio::test]
async fn masked_values_never_show() {
    let r = repo(&[]);
    let mut p = plan(vec![job(
        "leak",
        1,
        &["echo \"token is $SECRET\"", "echo hunter2hunter2 >&2"],
    )]);
    p.variables = vec![Variable {
        key: "SECRET".into(),
        value: "hunter2".into(),
        expand: true,
        masked: true,
    }];
    p.cli_variables = vec![Variable {
        key: "EMPTY".into(),
        value: String::new(),
        expand: true,
        masked: true,
    }];
    let run = run(&p, r.path()).await;
    assert_eq!(run.logs("leak"), ["token is [MASKED]", "[MASKED][MASKED]"]);
    let all = format!("{:?}", run.rec.all());
    assert!(!all.contains("hunter2"), "{all}");
    let echoes: Vec<String> = run
        .rec
        .all()
        .into_iter()
        .filter_map(|r| match r {
            Rec::Echo { command, .. } => Some(command),
            _ => None,
        })
        .collect();
    assert_eq!(echoes[0], "echo \"token is $SECRET\"");
    assert!(run.rec.all().iter().any(|r| matches!(
        r,
        Rec::Log {
            stream: Stream::Stderr,
            ..
        }
    )));
}

#[tokio::test]
async fn coverage_takes_the_last_match() {
    let r = repo(&[]);
    let mut covered = job(
        "covered",
        1,
        &[
            "echo 'Coverage: 50.5%'",
            "echo 'Coverage: 81.25%'",
            "echo done",
        ],
    );
    covered.coverage = Some(r"Coverage: (\d+(?:\.\d+)?)%".into());
    let mut invalid = job("invalid", 1, &["echo 'Coverage: 1%'"]);
    invalid.coverage = Some("(".into());
    let run = run(&plan(vec![covered, invalid]), r.path()).await;
    assert_eq!(run.job("covered").coverage, Some(81.25));
    assert_eq!(run.job("invalid").coverage, None);
    assert!(run.rec.has_info("invalid", "coverage regex"));
}

#[tokio::test]
async fn job_variables_reach_the_script() {
    let r = repo(&[]);
    let mut j = job(
        "vars",
        1,
        &[
            "echo \"$CI|$CI_JOB_NAME|$GREETING|$CI_PIPELINE_ID\"",
            "test -n \"$CI_JOB_ID\"",
            "echo $CI_JOB_STARTED_AT",
        ],
    );
    j.variables = vec![Variable::new("GREETING", "hi $CI_JOB_NAME")];
    let run = run(&plan(vec![j]), r.path()).await;
    let logs = run.logs("vars");
    assert_eq!(logs[0], "true|vars|hi vars|1");
    assert!(logs[1].ends_with('Z') && logs[1].len() == 20, "{}", logs[1]);
}

// ---------------------------------------------------------------------------------------------------
// Concurrency control

#[tokio::test]
async fn resource_groups_are_mutually_exclusive() {
    let r = repo(&[]);
    let shared = tempfile::tempdir().unwrap();
    let log = shared.path().join("log");
    let script = format!(
        "echo start >> {0}; sleep 0.2; echo end >> {0}",
        log.display()
    );
    let mut jobs = Vec::new();
    for name in ["one", "two", "three"] {
        let mut j = job(name, 1, &[&script]);
        j.resource_group = Some("deploy-$TARGET".into());
        j.variables = vec![Variable::new("TARGET", "prod")];
        jobs.push(j);
    }
    let run = run(&plan(jobs), r.path()).await;
    assert_eq!(run.result.status, PipelineStatus::Success);
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        lines,
        "start\nend\n".repeat(3),
        "jobs of one resource group overlapped"
    );
}

#[tokio::test]
async fn cancel_stops_the_pipeline() {
    let r = repo(&[]);
    let mut long = job("long", 1, &["sleep 30"]);
    long.after_script = vec!["echo after=$CI_JOB_STATUS".into()];
    let mut waiting = job("waiting", 1, &["true"]);
    waiting.when = When::Delayed;
    waiting.start_in = Some(Duration::from_secs(30));
    let p = plan(vec![long, waiting, job("later", 2, &["true"])]);
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let t0 = Instant::now();
    let run = run_on(&p, config(r.path(), &p), rx, FakeExecutor).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(run.result.status, PipelineStatus::Canceled);
    assert_eq!(run.status("long"), JobStatus::Canceled);
    assert_eq!(run.logs("long"), ["after=canceled"]);
    assert_eq!(run.status("waiting"), JobStatus::Canceled);
    assert_eq!(run.status("later"), JobStatus::Canceled);
    assert!(run.rec.started("later").is_empty());
}

#[tokio::test]
async fn images_fail_without_the_container_executor() {
    let r = repo(&[]);
    let mut j = job("imaged", 1, &["true"]);
    j.image = Some(gantry_pipeline::plan::Image {
        name: "alpine".into(),
        ..gantry_pipeline::plan::Image::default()
    });
    let run = run(&plan(vec![j]), r.path()).await;
    assert_eq!(run.status("imaged"), JobStatus::Failed);
    assert_eq!(
        run.job("imaged").reason,
        Some(FailureReason::RunnerSystemFailure)
    );
    assert!(run.rec.has_info("imaged", "container executor"));
    // The reason is in the finish event too, not only in the log.
    let error = run.rec.finished_error("imaged").expect("an error");
    assert!(error.contains("container executor"), "{error}");
}

#[tokio::test]
async fn a_script_failure_or_success_has_no_error_and_a_timeout_has_one() {
    let r = repo(&[]);
    let mut slow = job("slow", 1, &["sleep 5"]);
    slow.timeout = Some(Duration::from_millis(200));
    let run = run(
        &plan(vec![
            job("ok", 1, &["true"]),
            job("bad", 1, &["exit 3"]),
            slow,
        ]),
        r.path(),
    )
    .await;
    assert_eq!(run.rec.finished_error("ok"), None);
    assert_eq!(run.rec.finished_error("bad"), None);
    let error = run.rec.finished_error("slow").expect("an error");
    assert!(error.starts_with("timed out after"), "{error}");
}

#[tokio::test]
async fn ci_job_image_is_the_expanded_image_and_a_job_variable_wins() {
    let r = repo(&[]);
    let image = |name: &str| gantry_pipeline::plan::Image {
        name: name.into(),
        ..gantry_pipeline::plan::Image::default()
    };
    let mut imaged = job("imaged", 1, &["echo image=$CI_JOB_IMAGE"]);
    imaged.image = Some(image("alpine:$ALPINE_VERSION"));
    imaged.variables = vec![Variable::new("ALPINE_VERSION", "3.20")];
    let mut own = job("own", 1, &["echo image=$CI_JOB_IMAGE"]);
    own.image = Some(image("alpine"));
    own.variables = vec![Variable::new("CI_JOB_IMAGE", "mine")];
    let plain = job("plain", 1, &["echo image=${CI_JOB_IMAGE-unset}"]);
    let p = plan(vec![imaged, own, plain]);
    let rec = Arc::new(Recorder::default());
    let (_tx, rx) = watch::channel(false);
    // The shell executor runs image jobs when asked to (`--shell-executor`); GitLab Runner sets
    // `CI_JOB_IMAGE` whatever the executor.
    gantry_runtime::run(
        &p,
        config(r.path(), &p),
        Arc::new(ShellExecutor { allow_image: true }),
        rec.clone(),
        rx,
    )
    .await
    .expect("pipeline runs");
    assert_eq!(rec.logs("imaged"), ["image=alpine:3.20"]);
    assert_eq!(rec.logs("own"), ["image=mine"]);
    assert_eq!(rec.logs("plain"), ["image=unset"]);
}

#[tokio::test]
async fn many_lines_stream_through() {
    let r = repo(&[]);
    let p = plan(vec![job("chatty", 1, &["seq 1 200000"])]);
    let rec = Arc::new(Counter::default());
    let (_tx, rx) = watch::channel(false);
    let t0 = Instant::now();
    let result = gantry_runtime::run(
        &p,
        config(r.path(), &p),
        Arc::new(ShellExecutor::default()),
        rec.clone(),
        rx,
    )
    .await
    .unwrap();
    assert_eq!(result.status, PipelineStatus::Success);
    assert_eq!(*rec.0.lock().unwrap(), (200_000, "200000".to_string()));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
}

/// Counts log lines and keeps the last one, without storing the log.
#[derive(Default)]
struct Counter(Mutex<(usize, String)>);

impl Reporter for Counter {
    fn event(&self, event: Event<'_>) {
        if let Event::JobLog { line, .. } = event
            && !gantry_runtime::section::is_own_marker(line)
        {
            let mut c = self.0.lock().unwrap();
            c.0 += 1;
            c.1.clear();
            c.1.push_str(line);
        }
    }
}
