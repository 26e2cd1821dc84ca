//! Integration tests of the shell executor: real processes, real pipes.

use std::path::Path;
use std::time::{Duration, Instant};

use gantry_executor_shell::ShellExecutor;
use gantry_runtime::executor::{
    Executor, JobContext, OutputLine, Session, Step, StepEvent, StepKind, StepOutcome, Stream,
};
use tokio::sync::{mpsc, watch};

fn step(dir: &Path, commands: &[&str]) -> Step {
    Step {
        kind: StepKind::Script,
        commands: commands.iter().map(|c| (*c).to_string()).collect(),
        env: vec![("GREETING".into(), "hello".into())],
        workdir: dir.to_path_buf(),
        timeout: None,
        echo: false,
    }
}

fn context(dir: &Path) -> JobContext {
    JobContext {
        name: "job".into(),
        workspace: dir.to_path_buf(),
        image: None,
        services: Vec::new(),
    }
}

/// Runs `step`, canceling after `cancel_after` if set; returns the outcome and every event.
async fn run_with(step: &Step, cancel_after: Option<Duration>) -> (StepOutcome, Vec<StepEvent>) {
    let mut session = ShellExecutor::default()
        .prepare(&context(&step.workdir))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let (cancel_tx, cancel_rx) = watch::channel(false);
    if let Some(after) = cancel_after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = cancel_tx.send(true);
        });
    } else {
        std::mem::forget(cancel_tx);
    }
    let collect = async {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        events
    };
    let (outcome, events) = tokio::join!(session.run_step(step, tx, cancel_rx), collect);
    session.cleanup().await;
    (outcome, events)
}

async fn run(step: &Step) -> (StepOutcome, Vec<StepEvent>) {
    run_with(step, None).await
}

fn out(line: &str) -> StepEvent {
    StepEvent::Output(OutputLine {
        stream: Stream::Stdout,
        line: line.into(),
    })
}

fn err(line: &str) -> StepEvent {
    StepEvent::Output(OutputLine {
        stream: Stream::Stderr,
        line: line.into(),
    })
}

fn echo(command: &str) -> StepEvent {
    StepEvent::Echo(command.into())
}

fn stdout_lines(events: &[StepEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            StepEvent::Output(OutputLine {
                stream: Stream::Stdout,
                line,
            }) => Some(line.clone()),
            _ => None,
        })
        .collect()
}

/// Waits up to two seconds for `pid` to be gone: killed and reaped (not even a zombie).
async fn gone(pid: i32) -> bool {
    for _ in 0..200 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn exit_codes_are_returned() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        run(&step(dir.path(), &["true"])).await.0,
        StepOutcome::Exited(0)
    );
    assert_eq!(
        run(&step(dir.path(), &["exit 3"])).await.0,
        StepOutcome::Exited(3)
    );
    assert_eq!(
        run(&step(dir.path(), &["echo ok", "(exit 42)"])).await.0,
        StepOutcome::Exited(42)
    );
    assert_eq!(run(&step(dir.path(), &[])).await.0, StepOutcome::Exited(0));
}

#[tokio::test]
async fn stops_at_the_first_failing_command() {
    let dir = tempfile::tempdir().unwrap();
    let (outcome, events) = run(&step(
        dir.path(),
        &[
            "echo a",
            "false || true",
            "echo b",
            "sh -c 'exit 7'",
            "echo c",
        ],
    ))
    .await;
    assert_eq!(outcome, StepOutcome::Exited(7));
    assert_eq!(stdout_lines(&events), ["a", "b"]);
    // pipefail: a failure inside a pipeline fails the step.
    let (outcome, events) = run(&step(dir.path(), &["false | cat", "echo never"])).await;
    assert_eq!(outcome, StepOutcome::Exited(1));
    assert!(stdout_lines(&events).is_empty());
}

#[tokio::test]
async fn multi_line_commands_are_one_command() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = step(
        dir.path(),
        &[
            "if true; then\n  echo one\n  echo 'it''s'\nfi",
            "cat <<EOF\nheredoc $GREETING\nEOF",
            "echo \"it's\" done",
        ],
    );
    s.echo = true;
    let (outcome, events) = run(&s).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert_eq!(
        events,
        [
            echo("if true; then\n  echo one\n  echo 'it''s'\nfi"),
            out("one"),
            out("its"),
            echo("cat <<EOF\nheredoc $GREETING\nEOF"),
            out("heredoc hello"),
            echo("echo \"it's\" done"),
            out("it's done"),
        ]
    );
}

#[tokio::test]
async fn a_syntax_error_fails_only_its_command() {
    let dir = tempfile::tempdir().unwrap();
    let (outcome, events) = run(&step(dir.path(), &["echo before", "if then", "echo after"])).await;
    assert_ne!(outcome, StepOutcome::Exited(0));
    assert_eq!(stdout_lines(&events), ["before"]);
}

#[tokio::test]
async fn echo_is_ordered_with_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = step(
        dir.path(),
        &["echo a; echo b", "printf 'no newline'", "echo c", "true"],
    );
    s.echo = true;
    let (outcome, events) = run(&s).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert_eq!(
        events,
        [
            echo("echo a; echo b"),
            out("a"),
            out("b"),
            echo("printf 'no newline'"),
            out("no newline"),
            echo("echo c"),
            out("c"),
            echo("true"),
        ]
    );
    // Without echo there are no echo events and no marker lines.
    s.echo = false;
    let (_, events) = run(&s).await;
    assert_eq!(events, [out("a"), out("b"), out("no newlinec")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_is_ordered_with_stderr_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = step(
        dir.path(),
        &[
            "echo e1 >&2",
            "echo o2",
            "echo e3 >&2; echo o3",
            "printf e4 >&2",
        ],
    );
    s.echo = true;
    for _ in 0..30 {
        let (outcome, events) = run(&s).await;
        assert_eq!(outcome, StepOutcome::Exited(0));
        assert_eq!(
            events,
            [
                echo("echo e1 >&2"),
                err("e1"),
                echo("echo o2"),
                out("o2"),
                echo("echo e3 >&2; echo o3"),
                // Within one command the two streams keep only their own order.
                events[5].clone(),
                events[6].clone(),
                echo("printf e4 >&2"),
                err("e4"),
            ]
        );
        let mut within = vec![events[5].clone(), events[6].clone()];
        within.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(within, [err("e3"), out("o3")]);
    }
}

#[tokio::test]
async fn echo_survives_redirected_streams() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = step(
        dir.path(),
        &["exec 2>&1", "echo a >&2", "exec 2>/dev/null", "echo b"],
    );
    s.echo = true;
    let start = Instant::now();
    let (outcome, events) = run(&s).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(
        events,
        [
            echo("exec 2>&1"),
            echo("echo a >&2"),
            out("a"),
            echo("exec 2>/dev/null"),
            echo("echo b"),
            out("b")
        ]
    );
}

#[tokio::test]
async fn stderr_and_stdout_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (outcome, events) = run(&step(dir.path(), &["echo to-out", "echo to-err >&2"])).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert_eq!(events, [out("to-out"), err("to-err")]);
}

#[tokio::test]
async fn lines_are_split_robustly() {
    let dir = tempfile::tempdir().unwrap();
    let (_, events) = run(&step(
        dir.path(),
        &[
            "printf 'crlf\\r\\nbad \\377 utf8\\n\\nlast'",
            "head -c 2500000 /dev/zero | tr '\\0' x; echo; echo end",
        ],
    ))
    .await;
    let lines = stdout_lines(&events);
    assert_eq!(&lines[..3], ["crlf", "bad \u{fffd} utf8", ""]);
    // The final unterminated `last` runs into the next command's output, as on a terminal.
    let long: usize = lines[3..lines.len() - 1].iter().map(String::len).sum();
    assert_eq!(long, "last".len() + 2_500_000);
    assert!(
        lines[3..lines.len() - 1]
            .iter()
            .all(|l| l.len() <= gantry_executor_shell::MAX_LINE)
    );
    assert_eq!(lines.last().unwrap(), "end");
}

#[tokio::test]
async fn env_is_isolated() {
    let dir = tempfile::tempdir().unwrap();
    // Cargo and nextest set CARGO_MANIFEST_DIR for test processes; the step must not see it.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let (outcome, events) = run(&step(
        dir.path(),
        &[
            "echo \"[${CARGO_MANIFEST_DIR-unset}]\"",
            "echo \"$GREETING\"",
            "test -n \"$PATH\" && echo path",
            "pwd",
        ],
    ))
    .await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    let pwd = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(
        stdout_lines(&events),
        ["[unset]", "hello", "path", pwd.to_str().unwrap()]
    );
}

#[tokio::test]
async fn commands_do_not_read_the_script_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let (outcome, events) = run(&step(dir.path(), &["cat", "echo after"])).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert_eq!(stdout_lines(&events), ["after"]);
}

#[tokio::test]
async fn big_scripts_work() {
    let dir = tempfile::tempdir().unwrap();
    let big = format!("x='{}'; echo ${{#x}}", "y".repeat(300_000));
    let (outcome, events) = run(&step(dir.path(), &[&big])).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert_eq!(stdout_lines(&events), ["300000"]);
}

#[tokio::test]
async fn timeout_kills_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = step(dir.path(), &["sleep 100 &", "echo $!", "sleep 100"]);
    s.timeout = Some(Duration::from_millis(300));
    let start = Instant::now();
    let (outcome, events) = run(&s).await;
    assert_eq!(outcome, StepOutcome::TimedOut);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    let pid: i32 = stdout_lines(&events)[0].parse().unwrap();
    assert!(
        gone(pid).await,
        "background sleep {pid} survived the timeout"
    );
}

#[tokio::test]
async fn timeout_escalates_to_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = step(
        dir.path(),
        &[
            "trap '' TERM",
            "sh -c 'trap \"\" TERM; echo $$; while :; do sleep 0.05; done'",
        ],
    );
    s.timeout = Some(Duration::from_millis(200));
    let start = Instant::now();
    let (outcome, events) = run(&s).await;
    assert_eq!(outcome, StepOutcome::TimedOut);
    let took = start.elapsed();
    assert!(
        took >= gantry_executor_shell::KILL_GRACE && took < Duration::from_secs(5),
        "took {took:?}"
    );
    let pid: i32 = stdout_lines(&events)[0].parse().unwrap();
    assert!(gone(pid).await);
}

#[tokio::test]
async fn cancel_kills_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let (outcome, events) = run_with(
        &step(dir.path(), &["sh -c 'echo $$; exec sleep 100'"]),
        Some(Duration::from_millis(300)),
    )
    .await;
    assert_eq!(outcome, StepOutcome::Canceled);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    let pid: i32 = stdout_lines(&events)[0].parse().unwrap();
    assert!(gone(pid).await);
}

#[tokio::test]
async fn a_canceled_signal_before_start_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut session = ShellExecutor::default()
        .prepare(&context(dir.path()))
        .await
        .unwrap();
    let (tx, _rx) = mpsc::channel(4);
    let (_cancel_tx, cancel_rx) = watch::channel(true);
    let outcome = session
        .run_step(&step(dir.path(), &["touch ran"]), tx, cancel_rx)
        .await;
    assert_eq!(outcome, StepOutcome::Canceled);
    assert!(!dir.path().join("ran").exists());
}

#[tokio::test]
async fn background_processes_do_not_hang_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let (outcome, events) = run(&step(dir.path(), &["sleep 100 &", "echo $!", "echo done"])).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    let lines = stdout_lines(&events);
    assert_eq!(lines[1], "done");
    let pid: i32 = lines[0].parse().unwrap();
    assert!(gone(pid).await, "background sleep {pid} survived the step");
}

#[tokio::test]
async fn an_escaped_process_holding_the_pipe_does_not_hang_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let (outcome, events) = run(&step(dir.path(), &["setsid sleep 3 &", "echo done"])).await;
    assert_eq!(outcome, StepOutcome::Exited(0));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(stdout_lines(&events), ["done"]);
}

#[tokio::test]
async fn images_need_the_container_executor() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = context(dir.path());
    ctx.image = Some(gantry_pipeline::plan::Image {
        name: "alpine:3".into(),
        ..gantry_pipeline::plan::Image::default()
    });
    let err = ShellExecutor::default().prepare(&ctx).await.unwrap_err();
    assert!(
        err.contains("`image: alpine:3`") && err.contains("--shell-executor"),
        "{err}"
    );
    assert!(
        ShellExecutor { allow_image: true }
            .prepare(&ctx)
            .await
            .is_ok()
    );
}
