//! What `gantry run` reads from git: facts for predefined variables, the file list, and changed files.
//! One `git` process per question, run once per pipeline.

use std::path::Path;
use std::process::Command;

use gantry_pipeline::GitFacts;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn line(dir: &Path, args: &[&str]) -> Option<String> {
    git(dir, args)
        .map(|s| s.trim_end_matches('\n').to_string())
        .filter(|s| !s.is_empty())
}

/// Whether `dir` is inside a git work tree.
pub fn is_repo(dir: &Path) -> bool {
    line(dir, &["rev-parse", "--is-inside-work-tree"]).as_deref() == Some("true")
}

/// Reads the facts for predefined variables. Missing facts (no commits, no remote) stay empty.
pub fn facts(dir: &Path) -> GitFacts {
    // One `git log` for the commit fields; separated by NUL so that messages can hold anything.
    let log = git(
        dir,
        &["log", "-1", "--format=%H%x00%P%x00%aI%x00%an <%ae>%x00%B"],
    )
    .unwrap_or_default();
    let mut parts = log.splitn(5, '\0');
    let sha = parts.next().unwrap_or_default().to_string();
    let parents = parts.next().unwrap_or_default().to_string();
    let timestamp = parts.next().unwrap_or_default().to_string();
    let author = parts.next().unwrap_or_default().to_string();
    let message = parts.next().unwrap_or_default().trim_end().to_string();
    let before_sha = parents
        .split_whitespace()
        .next()
        .map_or_else(|| "0".repeat(40), str::to_string);
    let branch = line(dir, &["symbolic-ref", "--quiet", "--short", "HEAD"]);
    let tag = line(dir, &["tag", "--points-at", "HEAD"])
        .and_then(|t| t.lines().next().map(str::to_string));
    let default_branch = line(
        dir,
        &[
            "symbolic-ref",
            "--quiet",
            "--short",
            "refs/remotes/origin/HEAD",
        ],
    )
    .map(|s| s.trim_start_matches("origin/").to_string())
    .unwrap_or_else(|| "main".to_string());
    let config = git(
        dir,
        &[
            "config",
            "--get-regexp",
            "^(user\\.name|user\\.email|remote\\.origin\\.url)$",
        ],
    )
    .unwrap_or_default();
    let get = |k: &str| {
        config.lines().find_map(|l| {
            l.strip_prefix(k)
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_string)
        })
    };
    GitFacts {
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
    }
}

/// Every file of the project: tracked, plus untracked files that are not ignored.
pub fn files(dir: &Path) -> Vec<String> {
    match git(
        dir,
        &[
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
    ) {
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
