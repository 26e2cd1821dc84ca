//! The job's source as a git checkout, as GitLab Runner makes it: the commit fetched from the
//! server's mirror of the project (git's smart HTTP protocol, authenticated with the agent's token)
//! into a repository kept per project and worker, and checked out as a detached `HEAD`, so that
//! `git log`, `git describe` and `git rev-parse HEAD` work in jobs.
//!
//! GitLab's variables choose how: `GIT_STRATEGY` (`fetch`, the default: reuse the repository;
//! `clone`: start from an empty directory; `none`: leave the directory as it is), `GIT_DEPTH`
//! (default 20, `0` for the whole history), `GIT_CHECKOUT` (default `true`) and `GIT_CLEAN_FLAGS`
//! (default `-ffdx`, `none` to skip `git clean`).
//!
//! A commit that the repository already has is not fetched again: a job of a commit that an
//! earlier job of the same worker fetched costs a `git cat-file`, a checkout and a clean.
//!
//! The token travels in the environment of the agent's own `git fetch` (`GIT_CONFIG_*`), never on a
//! command line, in the repository's configuration, or in the log.
//!
//! A job can write its checkout's `.git`. So the agent's git never runs code that the repository
//! names (`git` sets no hooks, no `core.fsmonitor`, no system or user configuration) and, before
//! each job, the agent rewrites the repository's configuration and removes hooks, attributes and
//! alternates (`reset_control`), so neither the token nor the agent's machine is reached from a
//! job's planted hooks, filters or helpers.
//!
//! The repository's `origin` is the project's repository on the server for jobs
//! (`/api/v1/projects/NAME/git`), which a job reads with its own `CI_JOB_TOKEN` while it runs
//! (the agent gives the job the header for that URL only, see `job::runnable`), so that
//! `git fetch origin` works in jobs.

use std::path::Path;
use std::process::{Command, Stdio};

/// GitLab's default `GIT_DEPTH`.
pub(crate) const DEFAULT_DEPTH: u32 = 20;

/// `GIT_STRATEGY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// Reuse the repository of earlier jobs, fetch what is missing.
    Fetch,
    /// A fresh repository.
    Clone,
    /// No git at all: the directory stays as it is.
    None,
}

/// How the job wants its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Options {
    pub strategy: Strategy,
    /// `0`: the whole history.
    pub depth: u32,
    pub checkout: bool,
    /// The arguments of `git clean`; `None` skips it.
    pub clean: Option<Vec<String>>,
}

impl Options {
    /// The options from the job's variables (`get` answers a variable's value).
    pub(crate) fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Options, String> {
        let value = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let strategy = match value("GIT_STRATEGY").as_deref() {
            None | Some("fetch") => Strategy::Fetch,
            Some("clone") => Strategy::Clone,
            Some("none" | "empty") => Strategy::None,
            Some(other) => {
                return Err(format!(
                    "GIT_STRATEGY must be fetch, clone or none, not `{other}`"
                ));
            }
        };
        let depth = match value("GIT_DEPTH") {
            None => DEFAULT_DEPTH,
            Some(d) => d
                .parse::<u32>()
                .map_err(|_| format!("GIT_DEPTH must be a number, not `{d}`"))?,
        };
        let checkout = match value("GIT_CHECKOUT").as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(format!("GIT_CHECKOUT must be true or false, not `{other}`"));
            }
        };
        let clean = match value("GIT_CLEAN_FLAGS") {
            None => Some(vec!["-ffdx".to_string()]),
            Some(f) if f == "none" => None,
            Some(f) => Some(f.split_whitespace().map(str::to_string).collect()),
        };
        Ok(Options {
            strategy,
            depth,
            checkout,
            clean,
        })
    }
}

/// What to check out, and from where.
pub(crate) struct Source<'a> {
    /// The repository's URL on the server, for the agent.
    pub url: String,
    /// The repository's URL for jobs: the `origin` remote.
    pub origin: String,
    /// The agent's token, sent as `Authorization: Bearer`.
    pub token: &'a str,
    pub sha: &'a str,
    /// The pipeline's branch or tag (`CI_COMMIT_REF_NAME`).
    pub ref_name: Option<String>,
    /// Whether `ref_name` is a tag.
    pub tag: bool,
}

/// Whether `git` can be run on this machine.
pub(crate) fn git_available() -> bool {
    Command::new("git")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A git command in `dir`, never asking for anything, ignoring the agent's own `GIT_DIR`, and
/// never running code that the repository (that is, an earlier job) controls: no hooks, no
/// `core.fsmonitor`, no system or user configuration (the repository's own configuration is the
/// agent's, rewritten before each job by `reset_control`).
fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ATTR_NOSYSTEM", "1")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_OBJECT_DIRECTORY")
        .env_remove("GIT_ALTERNATE_OBJECT_DIRECTORIES")
        .env_remove("GIT_CONFIG")
        .env_remove("GIT_CONFIG_PARAMETERS")
        .env_remove("GIT_CONFIG_COUNT")
        .env_remove("GIT_SSH")
        .env_remove("GIT_SSH_COMMAND")
        .env_remove("GIT_ASKPASS")
        .env_remove("GIT_EXTERNAL_DIFF")
        .env_remove("GIT_TEMPLATE_DIR")
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "core.sshCommand=false",
            "-c",
            "credential.helper=",
            "-c",
            "gc.auto=0",
            "-c",
            "maintenance.auto=false",
        ])
        .stdin(Stdio::null());
    c
}

/// Runs `c`; its standard output, or its standard error as the error.
fn run(c: &mut Command, what: &str) -> Result<String, String> {
    let out = c
        .output()
        .map_err(|e| format!("cannot run git {what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "git {what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Fetches `src.sha` from the server into the repository in `dir`.
fn fetch(dir: &Path, opts: &Options, src: &Source<'_>, shallow: bool) -> Result<(), String> {
    let mut c = git(dir);
    // The token reaches git through its environment only.
    c.env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "http.extraHeader")
        .env(
            "GIT_CONFIG_VALUE_0",
            format!("Authorization: Bearer {}", src.token),
        )
        .args(["fetch", "--quiet", "--no-tags", "--no-recurse-submodules"]);
    if opts.depth > 0 {
        c.arg(format!("--depth={}", opts.depth));
    } else if shallow {
        c.arg("--unshallow");
    }
    c.arg(&src.url)
        .arg(format!("+{}:refs/gantry/head", src.sha));
    run(&mut c, "fetch").map(drop)
}

/// Whether the loose ref `name` of the repository in `git_dir` already names `sha`.
fn ref_is(git_dir: &Path, name: &str, sha: &str) -> bool {
    std::fs::read_to_string(git_dir.join(name)).is_ok_and(|v| v.trim() == sha)
}

/// Makes `dir` hold the commit as `opts` say; `say` writes a line to the job's log.
pub(crate) fn prepare(
    dir: &Path,
    opts: &Options,
    src: &Source<'_>,
    say: &dyn Fn(&str),
) -> Result<(), String> {
    let io = |e: std::io::Error| format!("cannot prepare {}: {e}", dir.display());
    if opts.strategy == Strategy::None {
        say("Skipping Git repository setup");
        std::fs::create_dir_all(dir).map_err(io)?;
        return Ok(());
    }
    if opts.strategy == Strategy::Clone && dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io)?;
    }
    match (opts.strategy, opts.depth) {
        (Strategy::Clone, 0) => say("Cloning repository..."),
        (Strategy::Clone, d) => say(&format!("Cloning repository with git depth set to {d}...")),
        (_, 0) => say("Fetching changes..."),
        (_, d) => say(&format!("Fetching changes with git depth set to {d}...")),
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let git_dir = dir.join(".git");
    // A `.git` that a job replaced by a file or a link (to a repository of its own), or whose
    // control files cannot be reset, is not the agent's: start over.
    let real = std::fs::symlink_metadata(&git_dir).is_ok_and(|m| m.is_dir());
    if !real || reset_control(&git_dir, &src.origin).is_err() {
        std::fs::remove_dir_all(dir).map_err(io)?;
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if !git_dir.join("HEAD").exists() {
        // A directory left without a repository (by `none`, or a crash) starts over.
        if std::fs::read_dir(dir).map_err(io)?.next().is_some() {
            std::fs::remove_dir_all(dir).map_err(io)?;
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        run(git(dir).args(["init", "--quiet"]), "init")?;
        reset_control(&git_dir, &src.origin).map_err(io)?;
        say("Created fresh repository.");
    }
    // A commit already fetched into this repository is checked out at once; only a missing one (or a
    // full history asked of a shallow repository) is fetched. The checkout itself says whether the
    // commit is there, so a job of a known commit runs two git processes: checkout and clean.
    let shallow = git_dir.join("shallow").exists();
    let mut fetched = false;
    if opts.depth == 0 && shallow || !opts.checkout && !has_commit(dir, src.sha) {
        fetch(dir, opts, src, shallow)?;
        fetched = true;
    }
    if opts.checkout {
        let short: String = src.sha.chars().take(8).collect();
        match &src.ref_name {
            Some(r) => say(&format!(
                "Checking out {short} as detached HEAD (ref is {r})..."
            )),
            None => say(&format!("Checking out {short} as detached HEAD...")),
        }
        let checkout = || {
            run(
                git(dir).args([
                    "-c",
                    "advice.detachedHead=false",
                    "checkout",
                    "--force",
                    "--quiet",
                    "--detach",
                    src.sha,
                ]),
                "checkout",
            )
        };
        if let Err(e) = checkout() {
            if fetched {
                return Err(e);
            }
            fetch(dir, opts, src, shallow)?;
            checkout()?;
        }
    }
    // The pipeline's branch or tag points at the commit, as after GitLab Runner's fetch.
    if let Some(name) = &src.ref_name {
        let r = if src.tag {
            format!("refs/tags/{name}")
        } else {
            format!("refs/remotes/origin/{name}")
        };
        if !ref_is(&git_dir, &r, src.sha) {
            let _ = run(git(dir).args(["update-ref", &r, src.sha]), "update-ref");
        }
    }
    if !opts.checkout {
        say("Skipping Git checkout");
        return Ok(());
    }
    if let Some(flags) = &opts.clean {
        run(git(dir).arg("clean").args(flags), "clean")?;
    }
    Ok(())
}

/// The files of the repository in `git_dir` through which a job could make git run its code (or
/// read another repository's) are the agent's again: the configuration is rewritten whole (only
/// `core` and the `origin` remote at `url`: no `include.path`, filters, helpers or commands), and
/// hooks, attributes, alternates and links to other repositories are removed. Objects, refs, the
/// index and `shallow` stay, so a kept checkout stays fast.
fn reset_control(git_dir: &Path, url: &str) -> std::io::Result<()> {
    let quoted = url.replace('\\', "\\\\").replace('"', "\\\"");
    // Removed first and created anew, so that a link planted as `config` is not followed.
    let config = git_dir.join("config");
    match std::fs::remove_file(&config) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::io::Write::write_all(
        &mut std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&config)?,
        format!(
            "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\
             \tlogallrefupdates = true\n[remote \"origin\"]\n\turl = \"{quoted}\"\n\
             \tfetch = +refs/heads/*:refs/remotes/origin/*\n"
        )
        .as_bytes(),
    )?;
    for dir in ["hooks", "worktrees"] {
        match std::fs::remove_dir_all(git_dir.join(dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    // An empty one, as `git init` leaves it for tools that install hooks for the job's own git.
    std::fs::create_dir(git_dir.join("hooks"))?;
    for file in [
        "info/attributes",
        "objects/info/alternates",
        "objects/info/http-alternates",
        "commondir",
        "config.worktree",
    ] {
        match std::fs::remove_file(git_dir.join(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Whether the repository in `dir` has commit `sha`.
fn has_commit(dir: &Path, sha: &str) -> bool {
    git(dir)
        .args(["cat-file", "-e", &format!("{sha}^{{commit}}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn opts(pairs: &[(&str, &str)]) -> Result<Options, String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        Options::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn gitlab_defaults_and_variables() {
        let o = opts(&[]).unwrap();
        assert_eq!(o.strategy, Strategy::Fetch);
        assert_eq!(o.depth, 20);
        assert!(o.checkout);
        assert_eq!(o.clean, Some(vec!["-ffdx".to_string()]));
        let o = opts(&[
            ("GIT_STRATEGY", "clone"),
            ("GIT_DEPTH", "0"),
            ("GIT_CHECKOUT", "false"),
            ("GIT_CLEAN_FLAGS", "none"),
        ])
        .unwrap();
        assert_eq!(
            (o.strategy, o.depth, o.checkout, o.clean),
            (Strategy::Clone, 0, false, None)
        );
        assert_eq!(
            opts(&[("GIT_STRATEGY", "none")]).unwrap().strategy,
            Strategy::None
        );
        assert_eq!(
            opts(&[("GIT_CLEAN_FLAGS", "-ffdx -e keep/")])
                .unwrap()
                .clean,
            Some(vec!["-ffdx".into(), "-e".into(), "keep/".into()])
        );
        assert!(opts(&[("GIT_STRATEGY", "rsync")]).is_err());
        assert!(opts(&[("GIT_DEPTH", "deep")]).is_err());
    }

    /// A repository `origin` under `tmp` with `n` commits of one file: its head and `file://` URL.
    fn origin_with_commits(tmp: &Path, n: usize) -> (String, String) {
        let origin = tmp.join("origin");
        std::fs::create_dir_all(&origin).unwrap();
        sh(&origin, &["init", "-q", "-b", "main"]);
        for i in 0..n {
            std::fs::write(origin.join("f"), i.to_string()).unwrap();
            sh(&origin, &["add", "f"]);
            sh(&origin, &["commit", "-q", "-m", &format!("c{i}")]);
        }
        let sha = sh(&origin, &["rev-parse", "HEAD"]);
        (sha, format!("file://{}", origin.display()))
    }

    fn sh(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=T", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `main` of the repository at `url`, at `sha`, fetched with the token `secret-token`.
    fn main_source<'a>(url: &str, sha: &'a str) -> Source<'a> {
        Source {
            url: url.to_string(),
            origin: url.to_string(),
            token: "secret-token",
            sha,
            ref_name: Some("main".into()),
            tag: false,
        }
    }

    /// Over a local path (the same code path as HTTP but for the transport): depth, reuse without
    /// a fetch, clean, and a detached HEAD at the commit.
    #[test]
    fn fetches_checks_out_and_reuses() {
        let tmp = tempfile::tempdir().unwrap();
        let (sha, url) = origin_with_commits(tmp.path(), 4);
        let origin = tmp.path().join("origin");
        let dir = tmp.path().join("work");
        let lines = std::cell::RefCell::new(Vec::new());
        let say = |l: &str| lines.borrow_mut().push(l.to_string());
        let mut src = main_source(&url, &sha);
        let mut o = opts(&[("GIT_DEPTH", "2")]).unwrap();
        prepare(&dir, &o, &src, &say).unwrap();
        assert_eq!(sh(&dir, &["rev-parse", "HEAD"]), sha);
        assert_eq!(sh(&dir, &["log", "--oneline"]).lines().count(), 2);
        assert_eq!(sh(&dir, &["rev-parse", "origin/main"]), sha);
        assert!(
            lines
                .borrow()
                .contains(&"Fetching changes with git depth set to 2...".to_string())
        );
        // The token is nowhere in the repository; `origin` is the URL for jobs, and fetching from
        // it works as in any clone.
        let config = std::fs::read_to_string(dir.join(".git/config")).unwrap();
        assert!(!config.contains("secret-token"));
        assert_eq!(sh(&dir, &["remote", "get-url", "origin"]), url);
        sh(&dir, &["fetch", "-q", "origin"]);
        assert_eq!(sh(&dir, &["rev-parse", "origin/main"]), sha);
        // A new URL for jobs (the agent now talks to another address) replaces the old one.
        src.origin = format!("{url}/");
        prepare(&dir, &o, &src, &say).unwrap();
        assert_eq!(sh(&dir, &["remote", "get-url", "origin"]), src.origin);
        src.origin = url.clone();
        // Again, with junk in the directory and the origin gone: no fetch, a clean tree.
        std::fs::write(dir.join("junk"), "x").unwrap();
        std::fs::write(dir.join("f"), "changed").unwrap();
        std::fs::rename(&origin, tmp.path().join("gone")).unwrap();
        prepare(&dir, &o, &src, &say).unwrap();
        assert!(!dir.join("junk").exists());
        assert_eq!(std::fs::read_to_string(dir.join("f")).unwrap(), "3");
        // The whole history needs the origin.
        o.depth = 0;
        assert!(prepare(&dir, &o, &src, &say).is_err());
        std::fs::rename(tmp.path().join("gone"), &origin).unwrap();
        prepare(&dir, &o, &src, &say).unwrap();
        assert_eq!(sh(&dir, &["log", "--oneline"]).lines().count(), 4);
        // `none` leaves the directory as it is.
        o.strategy = Strategy::None;
        std::fs::write(dir.join("junk"), "x").unwrap();
        prepare(&dir, &o, &src, &say).unwrap();
        assert!(dir.join("junk").exists());
    }

    /// Code that a job plants in its kept checkout (hooks, also under a `core.hooksPath` of its
    /// own, `core.fsmonitor`, an `include.path`, a filter, `gc.auto` for `pre-auto-gc`, a link as
    /// `config`) never runs in the agent's next fetch, checkout and clean, and the token stays out of
    /// the planted programs' reach.
    #[test]
    fn planted_code_never_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let (sha, url) = origin_with_commits(tmp.path(), 3);
        let dir = tmp.path().join("work");
        let src = main_source(&url, &sha);
        let say = |_: &str| {};
        let mut o = opts(&[("GIT_DEPTH", "1")]).unwrap();
        prepare(&dir, &o, &src, &say).unwrap();
        // The job plants.
        let mark = tmp.path().join("ran");
        let evil = tmp.path().join("evil");
        std::fs::create_dir_all(evil.join("hooks")).unwrap();
        let run = evil.join("run");
        std::fs::write(&run, format!("#!/bin/sh\nenv >> {}\n", mark.display())).unwrap();
        let exec = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        exec(&run);
        let git_dir = dir.join(".git");
        std::fs::create_dir_all(git_dir.join("hooks")).unwrap();
        for h in [
            "post-checkout",
            "reference-transaction",
            "pre-auto-gc",
            "post-merge",
        ] {
            std::fs::copy(&run, git_dir.join("hooks").join(h)).unwrap();
            exec(&git_dir.join("hooks").join(h));
            std::fs::copy(&run, evil.join("hooks").join(h)).unwrap();
            exec(&evil.join("hooks").join(h));
        }
        let r = run.display();
        std::fs::write(
            evil.join("config"),
            format!(
                "[core]\n\thooksPath = {}\n\tfsmonitor = {r}\n",
                evil.join("hooks").display()
            ),
        )
        .unwrap();
        let config = std::fs::read_to_string(git_dir.join("config")).unwrap();
        std::fs::write(
            git_dir.join("config"),
            format!(
                "{config}[core]\n\tfsmonitor = {r}\n\tsshCommand = {r}\n[gc]\n\tauto = 1\n\
                 [credential]\n\thelper = !{r}\n[filter \"evil\"]\n\tclean = {r}\n\tsmudge = {r}\n\
                 [include]\n\tpath = {}\n",
                evil.join("config").display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(git_dir.join("info")).unwrap();
        std::fs::write(git_dir.join("info/attributes"), "* filter=evil\n").unwrap();
        std::fs::write(dir.join("junk"), "x").unwrap();
        // The next job: a fetch of the whole history, a checkout and a clean.
        o.depth = 0;
        prepare(&dir, &o, &src, &say).unwrap();
        assert!(
            !mark.exists(),
            "planted code ran: {}",
            std::fs::read_to_string(&mark).unwrap_or_default()
        );
        assert_eq!(sh(&dir, &["log", "--oneline"]).lines().count(), 3);
        assert!(!dir.join("junk").exists());
        let config = std::fs::read_to_string(git_dir.join("config")).unwrap();
        assert!(
            !config.contains("evil") && !config.contains("include"),
            "{config}"
        );
        // A link planted as `config` is replaced, not written through.
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        std::fs::remove_file(git_dir.join("config")).unwrap();
        std::os::unix::fs::symlink(&outside, git_dir.join("config")).unwrap();
        prepare(&dir, &o, &src, &say).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        // A `.git` replaced by a link to another repository is started over.
        let other = tmp.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        sh(&other, &["init", "-q"]);
        std::fs::remove_dir_all(&git_dir).unwrap();
        std::os::unix::fs::symlink(other.join(".git"), &git_dir).unwrap();
        prepare(&dir, &o, &src, &say).unwrap();
        assert!(std::fs::symlink_metadata(&git_dir).unwrap().is_dir());
        assert_eq!(sh(&dir, &["rev-parse", "HEAD"]), sha);
        assert!(!mark.exists());
    }
}
