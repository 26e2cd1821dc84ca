//! End-to-end tests: the real `gantry` binary runs real pipelines in temporary git repositories.

mod buildyml;
mod cli;
mod client;
mod deployments;
mod docker;
mod drill;
mod firstrun;
mod gates;
mod includes;
mod keywords;
mod notify;
mod podman;
mod proxy;
mod real_world;
mod rollback;
mod server;
mod ui;
mod ui_log;
mod ui_tour;
mod verify;
mod webdriver;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// A temporary git repository with one commit.
pub struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    /// A repository holding `files` (path, content), committed on branch `main`.
    pub fn new(files: &[(&str, &str)]) -> Repo {
        let dir = tempfile::tempdir().expect("temp dir");
        for (path, content) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let repo = Repo { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["add", "-A"]);
        repo.git(&["commit", "-q", "-m", "Initial commit"]);
        repo
    }

    /// A repository holding only `.gitlab-ci.yml` with `ci`, committed on branch `main`.
    pub fn ci(ci: &str) -> Repo {
        Repo::new(&[(".gitlab-ci.yml", ci)])
    }

    /// Runs git in the repository.
    pub fn git(&self, args: &[&str]) -> String {
        git(self.path(), args)
    }

    /// The repository's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `gantry ARGS` in the repository.
    pub fn gantry(&self, args: &[&str]) -> Output {
        gantry_cmd(self.path())
            .args(args)
            .output()
            .expect("gantry runs")
    }

    /// Runs `gantry run --output json ARGS` and parses the events.
    pub fn run_json(&self, args: &[&str]) -> Run {
        let mut all = vec!["run", "--output", "json"];
        all.extend_from_slice(args);
        let out = self.gantry(&all);
        Run::parse(out)
    }
}

/// Runs git in `dir`, as Test User; answers its standard output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).args([
        "-c",
        "user.name=Test User",
        "-c",
        "user.email=test@example.com",
    ]);
    run_ok(cmd.args(args), &format!("git {args:?}"))
}

/// Runs `cmd`, which must succeed (`what` and its standard error are in the failure); answers its
/// standard output.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `gantry` command, with a clean environment, in `dir`.
pub fn gantry_cmd(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gantry"));
    c.current_dir(dir).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("CI_") || k.starts_with("GITLAB_") || k.starts_with("GANTRY_") {
            c.env_remove(k);
        }
    }
    c
}

/// The result of a JSON run.
pub struct Run {
    /// The exit code.
    pub code: i32,
    /// The events, in order.
    pub events: Vec<Value>,
    /// Standard error.
    pub stderr: String,
    /// Standard output, raw.
    pub stdout: String,
}

impl Run {
    /// Parses the output of `gantry run --output json`.
    pub fn parse(out: Output) -> Run {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let events = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect();
        Run {
            code: out.status.code().unwrap_or(-1),
            events,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            stdout,
        }
    }

    /// The log lines of `job`.
    pub fn log(&self, job: &str) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["event"] == "job_log" && e["job"] == job)
            .map(|e| e["line"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The last `job_finished` event of `job`.
    pub fn finished(&self, job: &str) -> &Value {
        self.events
            .iter()
            .rev()
            .find(|e| e["event"] == "job_finished" && e["job"] == job)
            .unwrap_or_else(|| {
                panic!(
                    "no job_finished for {job}: {}\n{}",
                    self.stdout, self.stderr
                )
            })
    }

    /// The status of `job`.
    pub fn status(&self, job: &str) -> String {
        self.finished(job)["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// How many times `job` started.
    pub fn starts(&self, job: &str) -> usize {
        self.events
            .iter()
            .filter(|e| e["event"] == "job_started" && e["job"] == job)
            .count()
    }

    /// The pipeline's final status.
    pub fn pipeline(&self) -> String {
        self.events
            .iter()
            .find(|e| e["event"] == "pipeline_finished")
            .and_then(|e| e["status"].as_str())
            .unwrap_or("none")
            .to_string()
    }

    /// Index of the first event matching `pred`.
    pub fn index(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.events.iter().position(pred).unwrap_or(usize::MAX)
    }

    /// Asserts that the first event's message (an error's) holds `part`.
    pub fn assert_message_has(&self, part: &str) {
        let message = self.events[0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(part), "{}", self.dump());
    }

    /// A readable dump for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Sends signal `name` (`INT`, `TERM`, `QUIT`) to `child`.
pub fn signal(child: &std::process::Child, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name} failed");
}

/// A `gantry run --output json ARGS` in the background, read up to the first job's start.
pub struct Started {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    /// The lines read so far.
    pub seen: Vec<String>,
}

/// Starts `gantry run --output json ARGS` in `dir` and reads until a job has started.
pub fn start_run(dir: &Path, args: &[&str]) -> Started {
    use std::io::BufRead as _;
    let mut child = gantry_cmd(dir)
        .args(["run", "--output", "json"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let started = line.contains("\"line\":\"started\"");
        seen.push(line);
        if started {
            break;
        }
    }
    Started { child, lines, seen }
}

impl Started {
    /// Kills the run with SIGKILL (it cannot clean up) and waits for it.
    pub fn kill(mut self) {
        signal(&self.child, "KILL");
        let _ = self.child.wait();
    }

    /// Sends Ctrl-C (SIGINT) and reads to the end; answers the exit status and every line.
    pub fn interrupt(mut self) -> (std::process::ExitStatus, String) {
        signal(&self.child, "INT");
        self.seen.extend(self.lines.map_while(Result::ok));
        let status = self.child.wait().unwrap();
        (status, self.seen.join("\n"))
    }
}

/// The job names of `gantry run --list-json`'s output.
pub fn job_names(list_json: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(list_json).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap().to_string())
        .collect()
}

/// A scratch path outside any repository, for files that jobs share on purpose.
pub fn scratch() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_path_buf();
    (d, p)
}
