//! What a new user meets first: a missing pipeline file, the README's example, a job that cannot
//! start.

use std::path::Path;

use crate::Repo;

#[test]
fn a_missing_pipeline_file_says_which_where_and_what_to_do() {
    let repo = Repo::new(&[("README.md", "hello\n")]);
    let dir = repo.path().canonicalize().unwrap();
    let expected = format!(
        "no `.gitlab-ci.yml` in {}: create a `.gitlab-ci.yml` (or a `build.yml`), pass `--file PATH` \
         to use another file, or `--cwd DIR` to run in another directory",
        dir.display()
    );
    let out = repo.gantry(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("gantry: {expected}\n")
    );
    let r = repo.run_json(&[]);
    assert_eq!(r.code, 2);
    assert_eq!(r.events[0]["message"], expected.as_str());
    let lint = repo.gantry(&["lint"]);
    assert_eq!(lint.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&lint.stderr).contains(&expected),
        "{lint:?}"
    );
    // Nothing was created for a pipeline that could not be read.
    assert!(!repo.path().join(".gantry").exists());

    // A `--file` that is not there, beside a pipeline file that is.
    let other = Repo::new(&[(
        "build.yml",
        "version: 1.0\nphases:\n  build:\n    commands: [true]\n",
    )]);
    let r = other.run_json(&["--file", "ci.yml"]);
    assert_eq!(r.code, 2);
    assert_eq!(
        r.events[0]["message"],
        format!(
            "no `ci.yml` in {}: this directory has `build.yml`; pass `--file build.yml` to use it",
            other.path().canonicalize().unwrap().display()
        )
        .as_str()
    );
}

/// The README's example, copied into a repository of its own.
fn hello_service() -> Repo {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-service");
    let read = |p: &str| std::fs::read_to_string(example.join(p)).unwrap();
    let files: Vec<(&str, String)> = [
        ".gitlab-ci.yml",
        ".gitignore",
        "Cargo.toml",
        "Cargo.lock",
        "src/main.rs",
    ]
    .into_iter()
    .map(|p| (p, read(p)))
    .collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    Repo::new(&refs)
}

#[test]
fn the_example_passes_its_own_format_check_and_says_so_truthfully() {
    let repo = hello_service();
    let r = repo.run_json(&["fmt"]);
    assert_eq!(r.code, 0, "{}", r.dump());
    assert_eq!(r.status("fmt"), "success");
    assert!(r.log("fmt").is_empty(), "{:?}", r.log("fmt"));

    // Badly formatted code fails the job, with rustfmt's diff and no excuse.
    let main = repo.path().join("src/main.rs");
    let code = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, code.replace("fn health() {", "fn health()   {")).unwrap();
    let r = repo.run_json(&["fmt"]);
    assert_eq!(r.code, 1, "{}", r.dump());
    assert_eq!(r.status("fmt"), "failed");
    let log = r.log("fmt").join("\n");
    assert!(log.contains("Diff in"), "{log}");
    assert!(!log.contains("not installed"), "{log}");
}

#[test]
fn a_job_that_cannot_start_says_why_in_its_finish_event_and_summary() {
    let repo = Repo::ci("job:\n  image: gantry-test/never-there:1\n  script: [echo hi]\n");
    // No engine at this address: the job cannot start.
    let out = crate::gantry_cmd(repo.path())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["run", "--output", "json"])
        .output()
        .unwrap();
    let r = crate::Run::parse(out);
    assert_eq!(r.code, 1, "{}", r.dump());
    let finished = r.finished("job");
    assert_eq!(finished["status"], "failed");
    assert_eq!(finished["exit_code"], serde_json::Value::Null);
    let error = finished["error"].as_str().expect("an error");
    assert!(
        error.starts_with(
            "job has `image: gantry-test/never-there:1`, but no container engine answered"
        ),
        "{error}"
    );

    let ok = Repo::ci("a:\n  script: [\"true\"]\nb:\n  script: [exit 4]\n");
    let r = ok.run_json(&[]);
    assert_eq!(r.finished("a")["error"], serde_json::Value::Null);
    assert_eq!(r.finished("b")["error"], serde_json::Value::Null);
    assert_eq!(r.finished("b")["exit_code"], 4);

    let human = crate::gantry_cmd(repo.path())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .arg("run")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&human.stdout);
    let fail = stdout
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        fail.contains(
            "job has `image: gantry-test/never-there:1`, but no container engine answered"
        ),
        "{fail}"
    );
}
