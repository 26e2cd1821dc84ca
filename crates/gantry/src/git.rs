//! What `gantry run` reads from git: facts for predefined variables, the file list, and (only when a
//! pipeline uses `changes`) the changed files. The independent questions run as concurrent `git`
//! processes, so that reading the repository costs one process's time, not the sum.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use gantry_pipeline::GitFacts;

fn spawn(dir: &Path, args: &[&str]) -> Option<Child> {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

fn wait(child: Option<Child>) -> Option<String> {
    let out = child?.wait_with_output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    wait(spawn(dir, args))
}

fn line(dir: &Path, args: &[&str]) -> Option<String> {
    git(dir, args)
        .map(|s| s.trim_end_matches('\n').to_string())
        .filter(|s| !s.is_empty())
}

/// What was read from the repository at the start of a run.
pub struct RepoInfo {
    /// Facts for predefined variables.
    pub facts: GitFacts,
    /// Every file: tracked, plus untracked files that are not ignored.
    pub files: Vec<String>,
    /// Whether `dir` is a git work tree.
    pub is_repo: bool,
}

/// Reads facts and the file list with three concurrent git processes.
pub fn read(dir: &Path) -> RepoInfo {
    // %D names the refs at HEAD: `HEAD -> main, tag: v1.0, origin/main`.
    let log = spawn(
        dir,
        &[
            "log",
            "-1",
            "--format=%H%x00%P%x00%aI%x00%an <%ae>%x00%D%x00%B",
        ],
    );
    let config = spawn(
        dir,
        &[
            "config",
            "--get-regexp",
            "^(user\\.name|user\\.email|remote\\.origin\\.url)$",
        ],
    );
    let origin_head = spawn(
        dir,
        &[
            "symbolic-ref",
            "--quiet",
            "--short",
            "refs/remotes/origin/HEAD",
        ],
    );
    let ls = spawn(
        dir,
        &[
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
    );

    let log = wait(log).unwrap_or_default();
    let config = wait(config).unwrap_or_default();
    let origin_head = wait(origin_head);
    let listing = wait(ls);
    let is_repo = listing.is_some();

    let mut parts = log.splitn(6, '\0');
    let sha = parts.next().unwrap_or_default().to_string();
    let parents = parts.next().unwrap_or_default().to_string();
    let timestamp = parts.next().unwrap_or_default().to_string();
    let author = parts.next().unwrap_or_default().to_string();
    let refs = parts.next().unwrap_or_default().to_string();
    let message = parts.next().unwrap_or_default().trim_end().to_string();
    let before_sha = parents
        .split_whitespace()
        .next()
        .map_or_else(|| "0".repeat(40), str::to_string);
    let mut branch = None;
    let mut tag = None;
    for r in refs.split(", ") {
        if let Some(b) = r.strip_prefix("HEAD -> ") {
            branch = Some(b.to_string());
        } else if let Some(t) = r.strip_prefix("tag: ") {
            tag.get_or_insert_with(|| t.to_string());
        }
    }
    // As a push to GitLab: HEAD on a branch is a branch pipeline even when tags point at the
    // commit; only a detached HEAD at a tag is a tag pipeline.
    if branch.is_some() {
        tag = None;
    }
    if branch.is_none() && sha.is_empty() {
        // No commits yet: HEAD still names the unborn branch.
        branch = line(dir, &["symbolic-ref", "--quiet", "--short", "HEAD"]);
    }
    let default_branch = origin_head
        .map(|s| s.trim().trim_start_matches("origin/").to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "main".to_string());
    let get = |k: &str| {
        config.lines().find_map(|l| {
            l.strip_prefix(k)
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_string)
        })
    };
    let facts = GitFacts {
        sha,
        before_sha,
        branch,
        tag,
        message,
        timestamp,
        author,
        default_branch,
        remote_url: get("remote.origin.url"),
        user_name: get("user.name").unwrap_or_default(),
        user_email: get("user.email").unwrap_or_default(),
    };
    let files = match listing {
        Some(out) => {
            let mut v: Vec<String> = out
                .split('\0')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            v.dedup();
            v
        }
        None => walk(dir),
    };
    RepoInfo {
        facts,
        files,
        is_repo,
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name();
            if name == ".git" || name == ".gantry" {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

/// Files changed relative to the default branch (like a merge request's diff), plus uncommitted changes.
/// `None` when that cannot be told (no default branch to compare with): then every `changes` is true.
pub fn changed_files(dir: &Path, default_branch: &str) -> Option<Vec<String>> {
    let remote = format!("origin/{default_branch}");
    let base = line(dir, &["merge-base", "HEAD", &remote])
        .or_else(|| line(dir, &["merge-base", "HEAD", default_branch]))?;
    let mut files: Vec<String> = git(dir, &["diff", "--name-only", &base])?
        .lines()
        .map(str::to_string)
        .collect();
    if let Some(untracked) = git(dir, &["ls-files", "--others", "--exclude-standard"]) {
        files.extend(untracked.lines().map(str::to_string));
    }
    files.sort();
    files.dedup();
    Some(files)
}

/// The lines the change added or modified, for gates' `new_coverage`: `git diff --unified=0` of
/// the working tree against `base`, or when `base` is `None` against the merge base of `HEAD`
/// with the default branch (`origin/BRANCH`, else `BRANCH`); `Ok(None)` when there is no such
/// merge base.
///
/// # Errors
/// `base` is not a revision of the repository, or git's diff cannot be read.
pub fn changed_lines(
    dir: &Path,
    base: Option<&str>,
    default_branch: &str,
) -> Result<Option<gantry_runtime::gantry_reports::ChangedLines>, String> {
    let base = match base {
        Some(b) => {
            let rev = format!("{b}^{{commit}}");
            line(dir, &["rev-parse", "--verify", "--quiet", &rev])
                .ok_or_else(|| format!("--diff-base: `{b}` is not a commit of this repository"))?
        }
        None => {
            let remote = format!("origin/{default_branch}");
            let found = line(dir, &["merge-base", "HEAD", &remote])
                .or_else(|| line(dir, &["merge-base", "HEAD", default_branch]));
            match found {
                Some(b) => b,
                None => return Ok(None),
            }
        }
    };
    let diff = git(
        dir,
        &[
            "diff",
            "--unified=0",
            "--no-color",
            "--no-ext-diff",
            "--no-renames",
            "--src-prefix=a/",
            "--dst-prefix=b/",
            &base,
        ],
    )
    .ok_or_else(|| format!("cannot diff the working tree against {base}"))?;
    gantry_runtime::gantry_reports::ChangedLines::parse(&diff).map(Some)
}
