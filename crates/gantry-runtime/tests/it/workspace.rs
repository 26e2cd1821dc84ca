//! Job workspaces and the snapshot store: isolation, reuse across pipelines, overlays and their
//! cleanup. Overlay workspaces need root and overlayfs, as on the machines these tests run on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use gantry_pipeline::plan::Retry;
use gantry_runtime::{JobStatus, PipelineStatus};
use tokio::sync::watch;

use super::{Rec, Recorder, config, job, plan, repo, run, run_cfg, run_with};

/// Mount points at or below `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(&dir))
        .map(str::to_string)
        .collect()
}

/// The snapshot generation the store would hand out now.
fn generation(project: &Path) -> PathBuf {
    let store = project.join(".gantry/snapshots");
    let current = std::fs::read_to_string(store.join("current")).unwrap();
    store.join(current.trim())
}

fn ino(p: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(p).unwrap())
}

/// Files changed less than a second before a pipeline starts are copied again by the next one
/// whatever their stat says (see the store's racy files); tests of what stat detects wait that out.
fn settle() {
    std::thread::sleep(Duration::from_millis(1100));
}

/// Deletes `dir`, retrying while a background deletion of old builds races with it.
fn delete(dir: &Path) {
    let mut last = None;
    for _ in 0..100 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("cannot delete {}: {last:?}", dir.display());
}

async fn isolated(overlay: bool) {
    let r = repo(&[
        ("tracked.txt", "committed\n"),
        (".gitignore", "ignored.txt\n"),
        ("link-target", "t\n"),
    ]);
    std::os::unix::fs::symlink("link-target", r.path().join("link")).unwrap();
    std::fs::write(r.path().join("tracked.txt"), "uncommitted\n").unwrap();
    std::fs::write(r.path().join("untracked.txt"), "new\n").unwrap();
    std::fs::write(r.path().join("ignored.txt"), "secret").unwrap();
    std::fs::write(r.path().join("script.sh"), "#!/bin/sh\necho exec-ok\n").unwrap();
    std::fs::set_permissions(
        r.path().join("script.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let a = job(
        "a",
        1,
        &[
            "cat tracked.txt untracked.txt",
            "test ! -e ignored.txt",
            "test -L link && cat link",
            "./script.sh",
            "echo created > created.txt",
            "rm untracked.txt",
            "echo $CI_PROJECT_DIR",
        ],
    );
    let b = job("b", 2, &["test ! -e created.txt", "cat untracked.txt"]);
    let run = run_with(&plan(vec![a, b]), r.path(), |c| c.overlay = overlay).await;
    assert_eq!(
        run.result.status,
        PipelineStatus::Success,
        "{:?}",
        run.rec.all()
    );
    let logs = run.logs("a");
    assert_eq!(&logs[..4], ["uncommitted", "new", "t", "exec-ok"]);
    assert_eq!(PathBuf::from(&logs[4]), r.path().join(".gantry/builds/1/a"));
    assert_eq!(run.logs("b"), ["new"]);
    assert!(!r.path().join("created.txt").exists());
    assert!(r.path().join("untracked.txt").exists());
    assert_eq!(
        std::fs::read_to_string(r.path().join("tracked.txt")).unwrap(),
        "uncommitted\n"
    );
}

#[tokio::test]
async fn overlay_workspaces_are_isolated_snapshots() {
    isolated(true).await;
}

#[tokio::test]
async fn hard_link_workspaces_are_isolated_snapshots() {
    isolated(false).await;
}

#[tokio::test]
async fn the_snapshot_is_reused_and_takes_changed_added_and_deleted_files() {
    let r = repo(&[
        ("same.txt", "same\n"),
        ("edit.txt", "before\n"),
        ("gone.txt", "gone\n"),
        ("dir/inner.txt", "inner\n"),
        ("script.sh", "#!/bin/sh\necho ran\n"),
        ("t1", "one\n"),
        ("t2", "two\n"),
    ]);
    std::os::unix::fs::symlink("t1", r.path().join("link")).unwrap();
    settle();
    let check = |script: &[&str]| plan(vec![job("check", 1, script)]);
    let first = run_with(&check(&["cat edit.txt link"]), r.path(), |_| {}).await;
    assert_eq!(first.logs("check"), ["before", "one"]);
    let gen1 = generation(r.path());
    let same_ino = ino(&gen1.join("same.txt"));

    // Unchanged: the same generation, and nothing copied again.
    let again = run_with(&check(&["cat same.txt"]), r.path(), |c| c.pipeline_id = 2).await;
    assert_eq!(again.logs("check"), ["same"]);
    assert_eq!(generation(r.path()), gen1);
    assert_eq!(ino(&gen1.join("same.txt")), same_ino);

    // Edited (same size), deleted, added, a directory gone and one new, a mode and a link changed.
    std::fs::write(r.path().join("edit.txt"), "after!\n").unwrap();
    std::fs::remove_file(r.path().join("gone.txt")).unwrap();
    std::fs::remove_dir_all(r.path().join("dir")).unwrap();
    std::fs::create_dir_all(r.path().join("new/deep")).unwrap();
    std::fs::write(r.path().join("new/deep/added.txt"), "added\n").unwrap();
    std::fs::set_permissions(
        r.path().join("script.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::remove_file(r.path().join("link")).unwrap();
    std::os::unix::fs::symlink("t2", r.path().join("link")).unwrap();
    let changed = run_with(
        &check(&[
            "cat edit.txt new/deep/added.txt link",
            "./script.sh",
            "test ! -e gone.txt",
            "test ! -e dir",
        ]),
        r.path(),
        |c| c.pipeline_id = 3,
    )
    .await;
    assert_eq!(
        changed.status("check"),
        JobStatus::Success,
        "{:?}",
        changed.rec.all()
    );
    assert_eq!(changed.logs("check"), ["after!", "added", "two", "ran"]);
    // Nobody held the generation, so it was updated in place; the unchanged file was not copied.
    assert_eq!(generation(r.path()), gen1);
    assert_eq!(ino(&gen1.join("same.txt")), same_ino);
    assert!(!gen1.join("dir").exists());
}

#[tokio::test]
async fn a_rewrite_in_place_stays_in_its_overlay() {
    let r = repo(&[("t.txt", "orig\n")]);
    let a = job("a", 1, &["echo leaked >> t.txt", "cat t.txt"]);
    let b = job("b", 2, &["cat t.txt"]);
    let run = run_with(&plan(vec![a, b]), r.path(), |_| {}).await;
    assert_eq!(run.logs("a"), ["orig", "leaked"]);
    assert_eq!(run.logs("b"), ["orig"]);
    assert_eq!(
        std::fs::read_to_string(generation(r.path()).join("t.txt")).unwrap(),
        "orig\n"
    );
}

#[tokio::test]
async fn a_rewrite_in_place_through_hard_links_is_gone_in_the_next_pipeline() {
    let r = repo(&[("t.txt", "orig\n")]);
    settle();
    let a = job("a", 1, &["echo leaked >> t.txt"]);
    run_with(&plan(vec![a]), r.path(), |c| c.overlay = false).await;
    let b = job("b", 1, &["cat t.txt"]);
    let run = run_with(&plan(vec![b]), r.path(), |c| {
        c.overlay = false;
        c.pipeline_id = 2;
    })
    .await;
    assert_eq!(run.logs("b"), ["orig"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_in_use_is_never_changed() {
    let r = repo(&[("f.txt", "old\n"), ("other.txt", "other\n")]);
    let flag = tempfile::tempdir().unwrap();
    let go = flag.path().join("go");
    let wait = format!("while [ ! -e '{}' ]; do sleep 0.02; done", go.display());
    let held = plan(vec![
        job("a", 1, &[&wait, "cat f.txt"]),
        job("a2", 2, &["cat f.txt other.txt"]),
    ]);
    let cfg = config(r.path(), &held);
    let rec = Arc::new(Recorder::default());
    let (_tx, rx) = watch::channel(false);
    let first = {
        let rec = rec.clone();
        tokio::spawn(async move {
            gantry_runtime::run(
                &held,
                cfg,
                Arc::new(gantry_executor_shell::ShellExecutor::default()),
                rec,
                rx,
            )
            .await
            .unwrap()
        })
    };
    while !rec
        .all()
        .iter()
        .any(|e| matches!(e, Rec::Started { job, .. } if job == "a"))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    std::fs::write(r.path().join("f.txt"), "new\n").unwrap();
    let second = run_with(
        &plan(vec![job("b", 1, &["cat f.txt other.txt"])]),
        r.path(),
        |c| c.pipeline_id = 2,
    )
    .await;
    assert_eq!(second.logs("b"), ["new", "other"]);

    std::fs::write(&go, "").unwrap();
    let first = first.await.unwrap();
    assert_eq!(first.status, PipelineStatus::Success, "{:?}", rec.all());
    assert_eq!(rec.logs("a"), ["old"]);
    assert_eq!(rec.logs("a2"), ["old", "other"]);

    // The next pipeline finds the newest generation, and the old one is gone.
    let third = run_with(&plan(vec![job("c", 1, &["cat f.txt"])]), r.path(), |c| {
        c.pipeline_id = 3
    })
    .await;
    assert_eq!(third.logs("c"), ["new"]);
    let gens: Vec<_> = std::fs::read_dir(r.path().join(".gantry/snapshots"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(gens.len(), 1, "{gens:?}");
}

#[tokio::test]
async fn overlays_are_detached_when_jobs_end_however_they_end() {
    let r = repo(&[("f.txt", "x\n")]);
    let ok = job("ok", 1, &["cat f.txt"]);
    let mut flaky = job("flaky", 1, &["exit 3"]);
    flaky.retry = Retry {
        max: 1,
        when: Vec::new(),
        exit_codes: Vec::new(),
    };
    // Leaves a process behind in its workspace.
    let stray = job("stray", 1, &["(sleep 5 &)", "true"]);
    let run = run(&plan(vec![ok, flaky, stray]), r.path()).await;
    assert_eq!(run.status("flaky"), JobStatus::Failed);
    assert_eq!(run.rec.started("flaky").len(), 2);
    assert_eq!(mounts_under(r.path()), Vec::<String>::new());

    // Canceled while running.
    let (tx, rx) = watch::channel(false);
    let slow = plan(vec![job("slow", 1, &["sleep 30"])]);
    let mut cfg = config(r.path(), &slow);
    cfg.pipeline_id = 2;
    let canceled = tokio::spawn(async move { run_cfg(&slow, cfg, rx).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while mounts_under(r.path()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "slow was never mounted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.send(true).unwrap();
    let canceled = canceled.await.unwrap();
    assert_eq!(canceled.status("slow"), JobStatus::Canceled);
    assert_eq!(mounts_under(r.path()), Vec::<String>::new());
    delete(&r.path().join(".gantry"));
}

#[tokio::test]
async fn the_next_run_detaches_what_a_killed_run_left_mounted() {
    let r = repo(&[("f.txt", "x\n")]);
    let builds = r.path().join(".gantry/builds/7");
    let dirs = ["lower", "upper", "work", "job"].map(|d| builds.join(d));
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        dirs[0].display(),
        dirs[1].display(),
        dirs[2].display()
    );
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(&dirs[3])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(mounts_under(r.path()).len(), 1);

    let run = run_with(&plan(vec![job("a", 1, &["cat f.txt"])]), r.path(), |c| {
        c.pipeline_id = 8;
    })
    .await;
    assert_eq!(run.logs("a"), ["x"]);
    assert_eq!(mounts_under(r.path()), Vec::<String>::new());
    assert!(!builds.exists());
    delete(&r.path().join(".gantry"));
}
