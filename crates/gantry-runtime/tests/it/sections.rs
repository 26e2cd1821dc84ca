//! The log sections of `before_script`, `script` and `after_script`.

use super::*;

/// The log of `run`'s only job as it was reported: the runtime's section markers as `start NAME`
/// and `end NAME`, echoes as `$ COMMAND`, runtime notes as `! MESSAGE`, output as it is.
fn trace(run: &Run) -> Vec<String> {
    run.rec.picked(|r| match r {
        Rec::Section { line, .. } => {
            let (kind, rest) = line.split_once(':')?;
            let name = rest.split(':').nth(1)?.split('\r').next()?;
            let kind = kind.trim_start_matches("\x1b[0Ksection_");
            Some(format!("{kind} {name}"))
        }
        Rec::Echo { command } => Some(format!("$ {command}")),
        Rec::Log { line, .. } => Some(line),
        Rec::Info { message, .. } => Some(format!("! {message}")),
        _ => None,
    })
}

/// The time of each of the runtime's section markers, in order.
fn times(run: &Run) -> Vec<u64> {
    run.rec.picked(|r| match r {
        Rec::Section { line, .. } => line.split(':').nth(1)?.parse().ok(),
        _ => None,
    })
}

#[tokio::test]
async fn each_part_is_a_section_ended_even_after_a_failing_command() {
    let r = repo(&[]);
    let mut j = job("j", 1, &["echo s1", "exit 3", "echo never"]);
    j.before_script = vec!["echo b".into()];
    j.after_script = vec!["echo a".into()];
    let run = run(&plan(vec![j]), r.path()).await;
    assert_eq!(run.status("j"), JobStatus::Failed);
    assert_eq!(
        trace(&run),
        [
            "start before_script",
            "$ echo b",
            "b",
            "end before_script",
            "start step_script",
            "$ echo s1",
            "s1",
            "$ exit 3",
            "end step_script",
            "start after_script",
            "$ echo a",
            "a",
            "end after_script",
        ]
    );
    let t = times(&run);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        t.is_sorted() && t[0] > now - 3600 && t[t.len() - 1] <= now,
        "{t:?}"
    );
}

#[tokio::test]
async fn without_before_script_the_script_section_starts_first_and_a_job_nests_its_own() {
    let r = repo(&[]);
    let j = job(
        "j",
        1,
        &[
            r"printf '\033[0Ksection_start:1:mine[collapsed=true]\r\033[0KMine\n'",
            "echo inside",
            r"printf '\033[0Ksection_end:2:mine\r\033[0K\n'",
        ],
    );
    let run = run(&plan(vec![j]), r.path()).await;
    assert_eq!(run.status("j"), JobStatus::Success);
    let t = trace(&run);
    assert_eq!(t.first().map(String::as_str), Some("start step_script"));
    assert_eq!(t.last().map(String::as_str), Some("end step_script"));
    // The job's own markers are its output, untouched, inside the script's section.
    assert_eq!(
        run.logs("j"),
        [
            "\x1b[0Ksection_start:1:mine[collapsed=true]\r\x1b[0KMine",
            "inside",
            "\x1b[0Ksection_end:2:mine\r\x1b[0K",
        ]
    );
}

#[tokio::test]
async fn a_timed_out_script_ends_its_section_before_the_timeout_note() {
    let r = repo(&[]);
    let mut j = job("j", 1, &["echo started", "sleep 30"]);
    j.timeout = Some(Duration::from_millis(500));
    let run = run(&plan(vec![j]), r.path()).await;
    assert_eq!(
        run.job("j").reason,
        Some(FailureReason::JobExecutionTimeout)
    );
    let t = trace(&run);
    let end = t.iter().position(|l| l == "end step_script");
    let note = t.iter().position(|l| l.starts_with("! timed out"));
    assert!(end.is_some() && end < note, "{t:?}");
}

#[tokio::test]
async fn a_canceled_script_ends_its_section_and_after_script_has_its_own() {
    let r = repo(&[]);
    let mut j = job("j", 1, &["sleep 30"]);
    j.after_script = vec!["echo after".into()];
    let p = plan(vec![j]);
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let run = run_cfg(&p, config(r.path(), &p), rx).await;
    assert_eq!(run.status("j"), JobStatus::Canceled);
    assert_eq!(
        trace(&run),
        [
            "start step_script",
            "$ sleep 30",
            "end step_script",
            "start after_script",
            "$ echo after",
            "after",
            "end after_script",
        ]
    );
}

#[tokio::test]
async fn sections_need_no_reported_echo_and_masking_leaves_them_alone() {
    let r = repo(&[]);
    let mut j = job("j", 1, &["echo script"]);
    j.before_script = vec!["echo before".into()];
    let mut p = plan(vec![j]);
    // A masked value that the markers contain.
    p.variables = vec![Variable {
        key: "SECRET".into(),
        value: "script".into(),
        expand: true,
        masked: true,
    }];
    let run = run_with(&p, r.path(), |c| c.echo = false).await;
    assert_eq!(
        trace(&run),
        [
            "start before_script",
            "before",
            "end before_script",
            "start step_script",
            "[MASKED]",
            "end step_script",
        ]
    );
}
