//! The container executor against a real engine: the one `scripts/engine.sh` starts, found through
//! `DOCKER_HOST`. Without an engine these tests fail, saying how to start one.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use gantry_executor_docker::{Config, DockerExecutor, DockerSession};
use gantry_pipeline::plan::Image;
use gantry_runtime::executor::{
    Executor, JobContext, OutputLine, Session, Step, StepEvent, StepKind, StepOutcome, Stream,
};
use tokio::sync::{mpsc, watch};

async fn executor() -> DockerExecutor {
    match DockerExecutor::connect(Config::default()).await {
        Ok(e) => e,
        Err(e) => panic!(
            "{e}\nthese tests need a container engine: run `eval \"$(scripts/engine.sh)\"` first"
        ),
    }
}

fn image(name: &str) -> Image {
    Image {
        name: name.into(),
        ..Image::default()
    }
}

async fn session(ws: &Path) -> DockerSession {
    let ctx = JobContext {
        name: "job".into(),
        workspace: ws.to_path_buf(),
        image: Some(image("gantry-test/base:1")),
        services: Vec::new(),
    };
    executor().await.prepare(&ctx).await.unwrap()
}

fn step(ws: &Path, kind: StepKind, commands: &[&str], timeout: Option<Duration>) -> Step {
    Step {
        kind,
        commands: commands.iter().map(|c| (*c).to_string()).collect(),
        env: vec![
            ("CI_PROJECT_DIR".into(), ws.to_string_lossy().into_owned()),
            ("CI_PROJECT_PATH".into(), "group/project".into()),
            ("CI_JOB_NAME".into(), "job".into()),
            ("OUT".into(), format!("{}/out.txt", ws.display())),
        ],
        workdir: ws.to_path_buf(),
        timeout,
        echo: true,
    }
}

async fn run(
    s: &mut DockerSession,
    step: &Step,
    cancel: watch::Receiver<bool>,
) -> (StepOutcome, Vec<StepEvent>) {
    let (tx, mut rx) = mpsc::channel(16);
    let collect = async {
        let mut v = Vec::new();
        while let Some(e) = rx.recv().await {
            v.push(e);
        }
        v
    };
    let (outcome, events) = tokio::join!(s.run_step(step, tx, cancel), collect);
    (outcome, events)
}

/// Runs the script `commands` in `ws`, with no timeout and no cancel.
async fn run_script(
    s: &mut DockerSession,
    ws: &Path,
    commands: &[&str],
) -> (StepOutcome, Vec<StepEvent>) {
    run_step(s, &step(ws, StepKind::Script, commands, None)).await
}

/// Runs `step` in `s`, with no cancel.
async fn run_step(s: &mut DockerSession, step: &Step) -> (StepOutcome, Vec<StepEvent>) {
    let (_tx, never) = watch::channel(false);
    run(s, step, never).await
}

fn out(line: &str) -> StepEvent {
    StepEvent::Output(OutputLine {
        stream: Stream::Stdout,
        line: line.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_echo_and_paths_as_the_shell_executor() {
    let ws = tempfile::tempdir().unwrap();
    let mut s = session(ws.path()).await;
    let st = step(
        ws.path(),
        StepKind::Script,
        &[
            "echo \"$CI_PROJECT_DIR $(pwd) $OUT\"",
            "echo to-stderr >&2",
            "exit 3",
            "echo not reached",
        ],
        None,
    );
    let (outcome, events) = run_step(&mut s, &st).await;
    assert_eq!(outcome, StepOutcome::Exited(3));
    assert_eq!(
        events,
        [
            StepEvent::Echo(st.commands[0].clone()),
            out("/builds/group/project /builds/group/project /builds/group/project/out.txt"),
            StepEvent::Echo(st.commands[1].clone()),
            StepEvent::Output(OutputLine {
                stream: Stream::Stderr,
                line: "to-stderr".into()
            }),
            StepEvent::Echo(st.commands[2].clone()),
        ]
    );
    // A pipe fails on its first failing command where the shell has pipefail (busybox sh has).
    let st = step(ws.path(), StepKind::Script, &["false | true"], None);
    assert_eq!(run_step(&mut s, &st).await.0, StepOutcome::Exited(1));
    // A shell killed by a signal exits with 128 + the signal.
    let st = step(ws.path(), StepKind::Script, &["kill -9 $$"], None);
    assert_eq!(run_step(&mut s, &st).await.0, StepOutcome::Exited(137));
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_and_cancel_kill_the_step_and_after_script_runs_fresh() {
    let ws = tempfile::tempdir().unwrap();
    let mut s = session(ws.path()).await;
    let st = step(
        ws.path(),
        StepKind::Script,
        &["trap '' TERM; echo started; sleep 100"],
        Some(Duration::from_secs(2)),
    );
    let (outcome, events) = run_step(&mut s, &st).await;
    assert_eq!(outcome, StepOutcome::TimedOut);
    assert!(events.contains(&out("started")), "{events:?}");

    let after = step(ws.path(), StepKind::AfterScript, &["echo after"], None);
    let (outcome, events) = run_step(&mut s, &after).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert!(events.contains(&out("after")), "{events:?}");

    let (cancel_tx, cancel) = watch::channel(false);
    let st = step(ws.path(), StepKind::Script, &["sleep 100"], None);
    let canceler = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = cancel_tx.send(true);
        cancel_tx
    });
    assert_eq!(run(&mut s, &st, cancel).await.0, StepOutcome::Canceled);
    drop(canceler.await);
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_a_root_container_creates_go_back_to_the_workspace_owner() {
    let ws = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(ws.path(), Some(4321), Some(4322)).unwrap();
    let mut s = session(ws.path()).await;
    let (outcome, events) = run_script(
        &mut s,
        ws.path(),
        &["mkdir -p made/deep && echo x > made/deep/file && id -u"],
    )
    .await;
    assert_eq!(outcome, StepOutcome::Exited(0), "{events:?}");
    assert!(events.contains(&out("0")), "runs as root: {events:?}");
    s.cleanup().await;
    for p in ["made", "made/deep", "made/deep/file"] {
        let m = std::fs::metadata(ws.path().join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 4322), "{p}");
    }
}

/// A container that runs as another user than root cannot give the workspace back itself; a root
/// helper does, after each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_a_non_root_container_creates_go_back_to_the_workspace_owner() {
    use std::os::unix::fs::PermissionsExt;
    let ws = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(ws.path(), Some(4321), Some(4322)).unwrap();
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut img = image("gantry-test/base:1");
    img.docker_user = Some("1000:1000".into());
    let ctx = JobContext {
        name: "job".into(),
        workspace: ws.path().to_path_buf(),
        image: Some(img),
        services: Vec::new(),
    };
    let mut s = executor().await.prepare(&ctx).await.unwrap();
    let (outcome, events) = run_script(
        &mut s,
        ws.path(),
        &["mkdir -p made && echo x > made/file && id -u"],
    )
    .await;
    assert_eq!(outcome, StepOutcome::Exited(0), "{events:?}");
    assert!(events.contains(&out("1000")), "runs as 1000: {events:?}");
    // Given back after the step, before cleanup.
    for p in ["made", "made/file"] {
        let m = std::fs::metadata(ws.path().join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 4322), "{p}");
    }
    s.cleanup().await;
}

/// How many containers, running or not, the engine holds for the workspace `ws`.
async fn containers_of(e: &DockerExecutor, ws: &Path) -> usize {
    let filters = std::collections::HashMap::from([(
        "label",
        vec![format!("gantry.workspace={}", ws.display())],
    )]);
    e.client()
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_leftovers_removes_labelled_objects() {
    let e = executor().await;
    // Leftovers of a "crashed" session: a labelled container and network that nobody cleans up.
    let ws = tempfile::tempdir().unwrap();
    let mut s = session(ws.path()).await;
    assert_eq!(
        run_script(&mut s, ws.path(), &["true"]).await.0,
        StepOutcome::Exited(0)
    );
    assert_eq!(containers_of(&e, ws.path()).await, 1);
    std::mem::forget(s);
    // Other tests may be running jobs on the same engine: this removes only this workspace's
    // objects, as cleanup_leftovers removes all managed ones.
    let label = format!("gantry.workspace={}", ws.path().display());
    assert!(e.remove_labelled(&label).await.unwrap() >= 1);
    assert_eq!(containers_of(&e, ws.path()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_under_removes_only_that_directorys_leftovers() {
    let e = executor().await;
    // Two "crashed" sessions: one whose workspace lies under `mine`, one elsewhere.
    let mine = tempfile::tempdir().unwrap();
    let inside = mine.path().join("builds").join("7");
    std::fs::create_dir_all(&inside).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    for ws in [inside.as_path(), elsewhere.path()] {
        let mut s = session(ws).await;
        assert_eq!(
            run_script(&mut s, ws, &["true"]).await.0,
            StepOutcome::Exited(0)
        );
        std::mem::forget(s);
    }
    assert_eq!(containers_of(&e, &inside).await, 1);
    assert_eq!(containers_of(&e, elsewhere.path()).await, 1);
    assert!(e.cleanup_under(mine.path()).await.unwrap() >= 1);
    assert_eq!(containers_of(&e, &inside).await, 0);
    assert_eq!(
        containers_of(&e, elsewhere.path()).await,
        1,
        "another directory's job stays"
    );
    let label = format!("gantry.workspace={}", elsewhere.path().display());
    assert!(e.remove_labelled(&label).await.unwrap() >= 1);
}
