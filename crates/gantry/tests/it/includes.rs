//! Remote includes fetched for real, from servers on 127.0.0.1: `include:remote`, `include:project`
//! (files API, and `git http-backend` for the git fallback), `include:template`,
//! `include:component`; the cache, `--offline`, and what failures say.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use crate::{Repo, gantry_cmd, git};

/// One request the forge answered.
#[derive(Clone, Debug)]
struct Req {
    path: String,
    headers: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    requests: Vec<Req>,
    /// Projects the files API knows; the others are reachable over git only.
    api: HashSet<String>,
    /// Release tags of projects, for the releases API.
    releases: HashMap<String, Vec<String>>,
    /// Other paths: status and body.
    files: HashMap<String, (u16, Vec<u8>)>,
    /// Paths that are never answered.
    hang: HashSet<String>,
}

/// A tiny GitLab on 127.0.0.1: the repository files, tags and releases APIs over bare repositories,
/// `git http-backend` for `*.git`, and plain files.
struct Forge {
    port: u16,
    root: tempfile::TempDir,
    state: Arc<Mutex<State>>,
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl Forge {
    /// Runs `gantry ARGS` in `repo` against this forge, with `cache` as the cache home.
    fn gantry(&self, repo: &Repo, cache: &Path, args: &[&str]) -> Output {
        gantry(repo, cache, &self.url(), args, &[])
    }

    fn start() -> Forge {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let root = tempfile::tempdir().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (st, dir) = (state.clone(), root.path().to_path_buf());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (st, dir) = (st.clone(), dir.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &st, &dir);
                });
            }
        });
        Forge { port, root, state }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn work(&self, project: &str) -> PathBuf {
        self.root.path().join("work").join(project)
    }

    /// Creates `project` on `branch` with `files` (one commit); `api`: the files API knows it.
    fn project(&self, project: &str, branch: &str, files: &[(&str, &str)], api: bool) {
        let work = self.work(project);
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", branch]);
        let bare = self.root.path().join(format!("{project}.git"));
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare", "-b", branch]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        self.commit(project, files);
        if api {
            self.state.lock().unwrap().api.insert(project.to_string());
        }
    }

    /// Commits `files` to the checked-out branch of `project` and pushes it.
    fn commit(&self, project: &str, files: &[(&str, &str)]) {
        let work = self.work(project);
        for (p, c) in files {
            let p = work.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "change"]);
        git(&work, &["push", "-q", "origin", "HEAD"]);
    }

    /// Tags the head of `project` (and pushes the tag).
    fn tag(&self, project: &str, tag: &str) {
        let work = self.work(project);
        git(&work, &["tag", tag]);
        git(&work, &["push", "-q", "origin", tag]);
    }

    fn file(&self, path: &str, status: u16, body: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), (status, body.to_vec()));
    }

    fn requests(&self) -> Vec<Req> {
        self.state.lock().unwrap().requests.clone()
    }

    /// How many requests asked for a path containing `part`.
    fn count(&self, part: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path.contains(part))
            .count()
    }
}

fn respond(conn: &mut TcpStream, status: u16, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(body)
}

fn serve(conn: TcpStream, state: &Mutex<State>, root: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if let Some(n) = headers.get("content-length") {
        body.resize(n.parse().unwrap_or(0), 0);
        reader.read_exact(&mut body)?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut conn = conn;
    {
        let mut st = state.lock().unwrap();
        st.requests.push(Req {
            path: target.clone(),
            headers: headers.clone(),
        });
        if st.hang.contains(path) {
            drop(st);
            std::thread::sleep(std::time::Duration::from_secs(30));
            return Ok(());
        }
        if let Some((status, b)) = st.files.get(path).cloned() {
            drop(st);
            return respond(&mut conn, status, "text/plain", &b);
        }
    }
    if let Some(rest) = path.strip_prefix("/api/v4/projects/") {
        let (project, rest) = rest.split_once('/').unwrap_or((rest, ""));
        let project = decode(project);
        let st = state.lock().unwrap();
        let not_found = br#"{"message":"404 Project Not Found"}"#;
        if !st.api.contains(&project) {
            return respond(&mut conn, 404, "application/json", not_found);
        }
        let bare = root.join(format!("{project}.git"));
        if rest == "releases" {
            let list: Vec<String> = st
                .releases
                .get(&project)
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|t| format!(r#"{{"tag_name":"{t}"}}"#))
                .collect();
            return respond(
                &mut conn,
                200,
                "application/json",
                format!("[{}]", list.join(",")).as_bytes(),
            );
        }
        drop(st);
        if let Some(tag) = rest.strip_prefix("repository/tags/") {
            let ok = Command::new("git")
                .arg("--git-dir")
                .arg(&bare)
                .args([
                    "show-ref",
                    "--verify",
                    "-q",
                    &format!("refs/tags/{}", decode(tag)),
                ])
                .status()?
                .success();
            return if ok {
                respond(&mut conn, 200, "application/json", b"{}")
            } else {
                respond(
                    &mut conn,
                    404,
                    "application/json",
                    br#"{"message":"404 Tag Not Found"}"#,
                )
            };
        }
        if let Some(file) = rest
            .strip_prefix("repository/files/")
            .and_then(|f| f.strip_suffix("/raw"))
        {
            let git_ref = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ref="))
                .map_or_else(|| "HEAD".to_string(), decode);
            let out = Command::new("git")
                .arg("--git-dir")
                .arg(&bare)
                .args(["show", &format!("{git_ref}:{}", decode(file))])
                .output()?;
            return if out.status.success() {
                respond(&mut conn, 200, "text/plain", &out.stdout)
            } else {
                respond(
                    &mut conn,
                    404,
                    "application/json",
                    br#"{"message":"404 File Not Found"}"#,
                )
            };
        }
        return respond(&mut conn, 404, "application/json", b"{}");
    }
    if path.contains(".git/") {
        return http_backend(&mut conn, &method, path, query, &headers, &body, root);
    }
    respond(&mut conn, 404, "text/html", b"<html>not found</html>")
}

/// `git http-backend` as a CGI.
fn http_backend(
    conn: &mut TcpStream,
    method: &str,
    path: &str,
    query: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
    root: &Path,
) -> std::io::Result<()> {
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path)
        .env("REQUEST_METHOD", method)
        .env("QUERY_STRING", query)
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (cgi, h) in [
        ("CONTENT_TYPE", "content-type"),
        ("HTTP_CONTENT_ENCODING", "content-encoding"),
        ("GIT_PROTOCOL", "git-protocol"),
    ] {
        if let Some(v) = headers.get(h) {
            cmd.env(cgi, v);
        }
    }
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let body = body.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            out.stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        })
        .unwrap_or((0, 0));
    let head = String::from_utf8_lossy(&out.stdout[..split.0]).into_owned();
    let content = &out.stdout[split.0 + split.1..];
    let mut status = "200 OK".to_string();
    let mut lines = Vec::new();
    for l in head.lines() {
        if let Some(s) = l.strip_prefix("Status:") {
            status = s.trim().to_string();
        } else if !l.is_empty() {
            lines.push(l.to_string());
        }
    }
    write!(conn, "HTTP/1.1 {status}\r\n")?;
    for l in lines {
        write!(conn, "{l}\r\n")?;
    }
    write!(
        conn,
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        content.len()
    )?;
    conn.write_all(content)
}

/// Runs gantry in `repo` with `XDG_CACHE_HOME` = `cache` and `--gitlab-url` = the forge.
fn gantry(
    repo: &Repo,
    cache: &Path,
    forge_url: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut c = gantry_cmd(repo.path());
    c.env("XDG_CACHE_HOME", cache)
        .env("GANTRY_GITLAB_URL", forge_url)
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("gantry runs")
}

/// Runs `gantry ARGS` in `repo` with `cache` as the cache home and no forge to reach.
fn no_forge(repo: &Repo, cache: &Path, args: &[&str]) -> Output {
    gantry(repo, cache, "http://127.0.0.1:9", args, &[])
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The job names of a `--list-json` run.
fn jobs(o: &Output) -> Vec<String> {
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(o), stderr(o));
    crate::job_names(&o.stdout)
}

#[test]
fn remote_include_is_fetched_then_served_from_the_cache() {
    let forge = Forge::start();
    forge.file(
        "/ci/remote.yml",
        200,
        b"remote-job:\n  script: [echo remote]\n",
    );
    let url = format!("{}/ci/remote.yml", forge.url());
    let repo = Repo::new(&[(
        ".gitlab-ci.yml",
        &format!("include:\n  - remote: {url}\nlocal-job:\n  script: [echo local]\n"),
    )]);
    let cache = tempfile::tempdir().unwrap();
    let out = forge.gantry(&repo, cache.path(), &["run", "--list-json"]);
    assert_eq!(jobs(&out), ["remote-job", "local-job"]);
    let cached = cache.path().join(format!(
        "gantry/includes/remote/http/{}/ci/remote.yml",
        forge.host()
    ));
    assert_eq!(
        std::fs::read_to_string(&cached).unwrap(),
        "remote-job:\n  script: [echo remote]\n"
    );
    assert_eq!(forge.count("/ci/remote.yml"), 1);
    // Fresh in the cache: not fetched again, by `run` or `lint`.
    let out = forge.gantry(&repo, cache.path(), &["lint"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("valid (2 jobs)"), "{}", stdout(&out));
    assert_eq!(forge.count("/ci/remote.yml"), 1);
    // No token is sent to a remote URL.
    let out = gantry(
        &repo,
        tempfile::tempdir().unwrap().path(),
        &forge.url(),
        &["lint"],
        &[("GITLAB_TOKEN", "secret")],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        forge
            .requests()
            .iter()
            .all(|r| !r.headers.contains_key("private-token"))
    );
}

#[test]
fn include_project_with_a_file_list_uses_the_files_api_with_the_token() {
    let forge = Forge::start();
    forge.project(
        "group/lib",
        "main",
        &[
            ("ci/a.yml", "a-job:\n  script: [echo a]\n"),
            ("ci/b.yml", ".b:\n  script: [echo b]\n"),
        ],
        true,
    );
    let repo = Repo::ci(
        "include:\n  - project: group/lib\n    ref: main\n    file:\n      - /ci/a.yml\n      - ci/b.yml\njob:\n  extends: .b\n",
    );
    let cache = tempfile::tempdir().unwrap();
    let out = gantry(
        &repo,
        cache.path(),
        &forge.url(),
        &["run", "--list-json"],
        &[("GITLAB_TOKEN", "glpat-secret")],
    );
    assert_eq!(jobs(&out), ["a-job", "job"]);
    let api: Vec<Req> = forge
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/repository/files/"))
        .collect();
    assert_eq!(api.len(), 2, "{api:?}");
    for r in &api {
        assert!(
            r.path
                .starts_with("/api/v4/projects/group%2Flib/repository/files/ci%2F"),
            "{}",
            r.path
        );
        assert!(r.path.ends_with("/raw?ref=main"), "{}", r.path);
        assert_eq!(
            r.headers.get("private-token").map(String::as_str),
            Some("glpat-secret")
        );
    }
    assert!(
        cache
            .path()
            .join(format!(
                "gantry/includes/project/{}/group/lib/-/main/ci/b.yml",
                forge.host()
            ))
            .exists()
    );
    // CI_JOB_TOKEN is sent as JOB-TOKEN.
    let out = gantry(
        &repo,
        tempfile::tempdir().unwrap().path(),
        &forge.url(),
        &["lint"],
        &[("CI_JOB_TOKEN", "job-secret")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        forge
            .requests()
            .iter()
            .any(|r| r.headers.get("job-token").map(String::as_str) == Some("job-secret"))
    );
}

#[test]
fn include_project_falls_back_to_git_when_the_api_does_not_know_the_project() {
    let forge = Forge::start();
    forge.project(
        "group/mirror",
        "trunk",
        &[
            ("ci.yml", "from-git:\n  script: [echo git]\n"),
            ("more.yml", "more:\n  script: [echo more]\n"),
        ],
        false,
    );
    let repo = Repo::ci(
        "include:\n  - project: group/mirror\n    file: ci.yml\n  - project: group/mirror\n    ref: trunk\n    file: [ci.yml, more.yml]\n",
    );
    let cache = tempfile::tempdir().unwrap();
    let out = forge.gantry(&repo, cache.path(), &["run", "--list-json"]);
    assert_eq!(jobs(&out), ["from-git", "more"]);
    // One fetch per ref (`HEAD`; `trunk`, after an `ls-remote` that says it is a branch), shared by
    // the files read at it.
    assert_eq!(
        forge.count("/group/mirror.git/info/refs"),
        3,
        "{:#?}",
        forge.requests()
    );
    let dir = cache.path().join(format!(
        "gantry/includes/project/{}/group/mirror/-",
        forge.host()
    ));
    assert!(dir.join("HEAD/ci.yml").exists());
    assert!(dir.join("trunk/ci.yml").exists());
}

#[test]
fn include_component_resolves_latest_and_both_layouts_with_inputs() {
    let forge = Forge::start();
    let deploy = |v: &str| {
        format!(
            "spec:\n  inputs:\n    env:\n      default: dev\n---\ndeploy-{v}-$[[ inputs.env ]]:\n  script: [echo deploy]\n"
        )
    };
    forge.project(
        "group/comps",
        "main",
        &[("templates/deploy/template.yml", &deploy("1.0"))],
        true,
    );
    forge.tag("group/comps", "1.0.0");
    forge.commit(
        "group/comps",
        &[("templates/deploy/template.yml", &deploy("1.2"))],
    );
    forge.tag("group/comps", "1.2.0");
    forge.commit(
        "group/comps",
        &[
            ("templates/deploy/template.yml", &deploy("2.0")),
            ("templates/lint.yml", "lint-2:\n  script: [echo lint]\n"),
        ],
    );
    forge.tag("group/comps", "2.0.0-rc1");
    forge.state.lock().unwrap().releases.insert(
        "group/comps".into(),
        vec!["2.0.0-rc1".into(), "1.2.0".into(), "1.0.0".into()],
    );
    let host = forge.host();
    let repo = Repo::new(&[(
        ".gitlab-ci.yml",
        &format!(
            "include:\n  - component: {host}/group/comps/deploy@~latest\n    inputs:\n      env: prod\n  - component: {host}/group/comps/deploy@1.0.0\n  - component: {host}/group/comps/lint@main\n"
        ),
    )]);
    let cache = tempfile::tempdir().unwrap();
    let out = forge.gantry(&repo, cache.path(), &["run", "--list-json"]);
    assert_eq!(jobs(&out), ["deploy-1.2-prod", "deploy-1.0-dev", "lint-2"]);
    let base = cache
        .path()
        .join(format!("gantry/includes/project/{host}/group/comps/-"));
    assert!(base.join("1.2.0/templates/deploy/template.yml").exists());
    assert!(base.join("1.2.0/.tag").exists());
    assert!(base.join("main/templates/lint.yml").exists());
    assert!(!base.join("main/.tag").exists());
    assert_eq!(
        std::fs::read_to_string(cache.path().join(format!(
            "gantry/includes/latest/{host}/group/comps/-/~latest"
        )))
        .unwrap(),
        "1.2.0"
    );
    // A partial version selects within its major version.
    let repo = Repo::new(&[(
        ".gitlab-ci.yml",
        &format!("include:\n  - component: {host}/group/comps/deploy@1\n"),
    )]);
    let out = forge.gantry(&repo, cache.path(), &["run", "--list-json"]);
    assert_eq!(jobs(&out), ["deploy-1.2-dev"]);
}

#[test]
fn include_template_comes_from_gitlab_org_gitlab() {
    let forge = Forge::start();
    forge.project(
        "gitlab-org/gitlab",
        "master",
        &[(
            "lib/gitlab/ci/templates/Jobs/Hello.gitlab-ci.yml",
            "hello:\n  script: [echo hello]\n",
        )],
        true,
    );
    let repo = Repo::ci("include:\n  - template: Jobs/Hello.gitlab-ci.yml\n");
    let cache = tempfile::tempdir().unwrap();
    let out = forge.gantry(&repo, cache.path(), &["run", "--list-json"]);
    assert_eq!(jobs(&out), ["hello"]);
    assert_eq!(
        forge.count("/api/v4/projects/gitlab-org%2Fgitlab/repository/files/lib%2Fgitlab%2Fci%2Ftemplates%2FJobs%2FHello.gitlab-ci.yml/raw?ref=master"),
        1
    );
}

#[test]
fn offline_uses_only_the_cache_and_says_what_is_missing() {
    let forge = Forge::start();
    forge.project(
        "group/lib",
        "main",
        &[("a.yml", "a:\n  script: [echo a]\n")],
        true,
    );
    let repo = Repo::ci("include:\n  - project: group/lib\n    file: a.yml\n");
    let cache = tempfile::tempdir().unwrap();
    let out = forge.gantry(&repo, cache.path(), &["lint", "--offline"]);
    assert_eq!(out.status.code(), Some(1));
    let expected = format!(
        ".gitlab-ci.yml:2:5: `include:project` `group/lib` file `a.yml`: not in the include cache, and --offline fetches nothing (looked for {}/gantry/includes/project/{}/group/lib/-/HEAD/a.yml)",
        cache.path().display(),
        forge.host()
    );
    assert_eq!(stdout(&out).trim(), expected);
    assert!(forge.requests().is_empty());
    let out = forge.gantry(&repo, cache.path(), &["lint"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // Offline, a cached file of any age is used; the forge is not asked.
    let before = forge.requests().len();
    let out = gantry(
        &repo,
        cache.path(),
        &forge.url(),
        &["run", "--list-json", "--offline"],
        &[("GANTRY_INCLUDE_TTL", "0")],
    );
    assert_eq!(jobs(&out), ["a"]);
    assert_eq!(forge.requests().len(), before);
}

#[test]
fn tags_are_reused_and_branches_refreshed_after_the_ttl() {
    let forge = Forge::start();
    forge.project(
        "group/lib",
        "main",
        &[("a.yml", "old:\n  script: [echo a]\n")],
        true,
    );
    forge.tag("group/lib", "v1");
    let repo = Repo::ci(
        "include:\n  - project: group/lib\n    ref: v1\n    file: a.yml\n  - project: group/lib\n    ref: main\n    file: a.yml\n",
    );
    let cache = tempfile::tempdir().unwrap();
    let out = forge.gantry(&repo, cache.path(), &["run", "--list-json"]);
    assert_eq!(jobs(&out), ["old"]);
    forge.commit("group/lib", &[("a.yml", "new:\n  script: [echo a]\n")]);
    // Within the TTL, neither is fetched again.
    let out = forge.gantry(&repo, cache.path(), &["run", "--list-json"]);
    assert_eq!(jobs(&out), ["old"]);
    assert_eq!(forge.count("raw?ref=main"), 1);
    // Past it, the branch is fetched again; the tag is not.
    let out = gantry(
        &repo,
        cache.path(),
        &forge.url(),
        &["run", "--list-json"],
        &[("GANTRY_INCLUDE_TTL", "0")],
    );
    assert_eq!(jobs(&out), ["old", "new"]);
    assert_eq!(forge.count("raw?ref=main"), 2);
    assert_eq!(forge.count("raw?ref=v1"), 1);
}

#[test]
fn a_stale_copy_stands_in_when_the_refresh_fails() {
    let forge = Forge::start();
    forge.file("/ci.yml", 200, b"remote:\n  script: [echo remote]\n");
    let url = format!("{}/ci.yml", forge.url());
    let repo = Repo::new(&[(".gitlab-ci.yml", &format!("include: {url}\n"))]);
    let cache = tempfile::tempdir().unwrap();
    let out = forge.gantry(&repo, cache.path(), &["run", "--list-json"]);
    assert_eq!(jobs(&out), ["remote"]);
    forge.file("/ci.yml", 503, b"down");
    let out = gantry(
        &repo,
        cache.path(),
        &forge.url(),
        &["run", "--list-json"],
        &[("GANTRY_INCLUDE_TTL", "0")],
    );
    assert_eq!(jobs(&out), ["remote"]);
    assert!(
        stderr(&out).contains(&format!(
            "gantry: warning: include `remote:{url}`: GET {url} answered 503 Service Unavailable"
        )) && stderr(&out).contains("using the cached copy fetched"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn failures_say_the_url_the_status_and_the_token() {
    let forge = Forge::start();
    forge.file("/missing.yml", 404, b"no");
    let url = format!("{}/missing.yml", forge.url());
    let repo = Repo::new(&[(
        ".gitlab-ci.yml",
        &format!("include:\n  - remote: {url}\n  - project: group/nowhere\n    file: ci.yml\n"),
    )]);
    let cache = tempfile::tempdir().unwrap();
    let out = gantry(
        &repo,
        cache.path(),
        &forge.url(),
        &["lint"],
        &[("GITLAB_TOKEN", "t")],
    );
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(
        lines[0],
        format!(
            ".gitlab-ci.yml:2:5: `include:remote` `{url}`: GET {url} answered 404 Not Found (no token is sent to remote URLs)"
        )
    );
    let api = format!(
        "{}/api/v4/projects/group%2Fnowhere/repository/files/ci.yml/raw",
        forge.url()
    );
    assert!(
        lines[1].starts_with(&format!(
            ".gitlab-ci.yml:3:5: `include:project` `group/nowhere` file `ci.yml`: GET {api} answered 404 Not Found (with the token from GITLAB_TOKEN); then git at {}/group/nowhere.git (with the token from GITLAB_TOKEN):",
            forge.url()
        )),
        "{}",
        lines[1]
    );
    // A file the project does not have: the API says so, and git is not tried.
    forge.project(
        "group/lib",
        "main",
        &[("a.yml", "a:\n  script: [x]\n")],
        true,
    );
    let repo = Repo::ci("include:\n  - project: group/lib\n    file: nope.yml\n");
    let out = forge.gantry(&repo, cache.path(), &["lint"]);
    assert_eq!(
        stdout(&out).trim(),
        format!(
            ".gitlab-ci.yml:2:5: `include:project` `group/lib` file `nope.yml`: project `group/lib` has no file `nope.yml` at `its default branch` (GET {}/api/v4/projects/group%2Flib/repository/files/nope.yml/raw answered 404 Not Found (no token sent; set GITLAB_TOKEN or CI_JOB_TOKEN for a private project))",
            forge.url()
        )
    );
    assert_eq!(forge.count("/group/lib.git"), 0);
}

#[test]
fn fetches_have_a_size_limit_and_a_timeout() {
    let forge = Forge::start();
    forge.file("/big.yml", 200, &vec![b'#'; (1 << 20) + 1]);
    forge.state.lock().unwrap().hang.insert("/slow.yml".into());
    let repo = Repo::new(&[(
        ".gitlab-ci.yml",
        &format!(
            "include:\n  - remote: {0}/big.yml\n  - remote: {0}/slow.yml\njob:\n  script: [x]\n",
            forge.url()
        ),
    )]);
    let cache = tempfile::tempdir().unwrap();
    let out = gantry(
        &repo,
        cache.path(),
        &forge.url(),
        &["lint"],
        &[("GANTRY_INCLUDE_TIMEOUT", "1")],
    );
    let text = stdout(&out);
    assert!(
        text.contains("big.yml: the file is larger than 1024 KiB"),
        "{text}"
    );
    assert!(
        text.contains("slow.yml failed:") && text.contains("timed out"),
        "{text}"
    );
}

#[test]
fn the_project_include_cache_still_works_with_a_file_list() {
    let repo = Repo::new(&[
        (
            ".gitlab-ci.yml",
            "include:\n  - project: group/p\n    ref: v1\n    file: [a.yml, b.yml]\njob:\n  extends: .b\n",
        ),
        (
            ".gantry/include-cache/project_group_p_v1_a.yml",
            "a:\n  script: [echo a]\n",
        ),
        (
            ".gantry/include-cache/project_group_p_v1_b.yml",
            ".b:\n  script: [echo b]\n",
        ),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let out = no_forge(&repo, cache.path(), &["run", "--list-json", "--offline"]);
    assert_eq!(jobs(&out), ["a", "job"]);
    let out = no_forge(&repo, cache.path(), &["lint", "--offline"]);
    assert_eq!(stdout(&out).trim(), ".gitlab-ci.yml: valid (2 jobs)");
}

#[test]
fn a_component_of_this_project_at_head_is_read_from_the_working_tree() {
    let repo = Repo::new(&[
        (
            ".gitlab-ci.yml",
            "include:\n  - component: $CI_SERVER_FQDN/$CI_PROJECT_PATH/deploy@$CI_COMMIT_SHA\n    inputs:\n      stage: test\n",
        ),
        (
            "templates/deploy/template.yml",
            "spec:\n  inputs:\n    stage:\n---\ninclude: /templates/common.yml\ndeploy-$[[ inputs.stage ]]:\n  stage: $[[ inputs.stage ]]\n  script: [echo deploy]\n",
        ),
        // A local include of the component is this project's, from the working tree too.
        ("templates/common.yml", "common:\n  script: [echo common]\n"),
    ]);
    repo.git(&[
        "remote",
        "add",
        "origin",
        "git@gitlab.example.com:group/comps.git",
    ]);
    let cache = tempfile::tempdir().unwrap();
    let out = no_forge(&repo, cache.path(), &["run", "--list-json", "--offline"]);
    assert_eq!(jobs(&out), ["common", "deploy-test"]);
}

// GitLab (gitlab-foss MR 24356): a local include inside an `include:project` file is read in that
// project at that ref, and so are its own local includes; its project includes work as usual.
#[test]
fn a_local_include_in_a_project_file_is_read_in_that_project_at_that_ref() {
    let forge = Forge::start();
    forge.project(
        "group/lib",
        "main",
        &[
            (
                "ci/main.yml",
                "include:\n  - local: /ci/jobs.yml\n  - project: group/other\n    file: o.yml\n",
            ),
            (
                "ci/jobs.yml",
                "include: ci/deeper.yml\nlib-v1:\n  script: [echo v1]\n",
            ),
            ("ci/deeper.yml", "deeper-v1:\n  script: [echo v1]\n"),
        ],
        true,
    );
    forge.tag("group/lib", "v1");
    forge.commit(
        "group/lib",
        &[
            ("ci/jobs.yml", "lib-main:\n  script: [echo main]\n"),
            ("ci/deeper.yml", "deeper-main:\n  script: [echo main]\n"),
        ],
    );
    // Over git only: the nested file of a project the API does not know comes the same way.
    forge.project(
        "group/other",
        "main",
        &[("o.yml", "other:\n  script: [x]\n")],
        false,
    );
    let repo = Repo::new(&[
        (
            ".gitlab-ci.yml",
            "include:\n  - project: group/lib\n    ref: v1\n    file: /ci/main.yml\n",
        ),
        ("ci/jobs.yml", "ours:\n  script: [echo wrong]\n"),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let out = forge.gantry(&repo, cache.path(), &["run", "--list-json"]);
    assert_eq!(jobs(&out), ["deeper-v1", "lib-v1", "other"]);
    let cached = cache.path().join(format!(
        "gantry/includes/project/{}/group/lib/-/v1/ci/deeper.yml",
        forge.host()
    ));
    assert!(cached.exists(), "{}", cached.display());
}

// A local include inside a component is a file of the component's project at the version the
// component resolved to (the opentofu component's `full-pipeline.yml` includes `/templates/fmt.yml`).
#[test]
fn a_local_include_in_a_component_is_read_in_its_project_at_the_resolved_version() {
    let forge = Forge::start();
    let full = "include:\n  - local: /templates/fmt.yml\nplan:\n  script: [x]\n";
    forge.project(
        "group/tofu",
        "main",
        &[
            ("templates/full-pipeline.yml", full),
            ("templates/fmt.yml", "fmt-1:\n  script: [x]\n"),
        ],
        true,
    );
    forge.tag("group/tofu", "1.0.0");
    forge.commit(
        "group/tofu",
        &[("templates/fmt.yml", "fmt-main:\n  script: [x]\n")],
    );
    forge
        .state
        .lock()
        .unwrap()
        .releases
        .insert("group/tofu".into(), vec!["1.0.0".into()]);
    let host = forge.host();
    for version in ["~latest", "1.0.0"] {
        let repo = Repo::new(&[
            (
                ".gitlab-ci.yml",
                &format!(
                    "include:\n  - component: $CI_SERVER_FQDN/group/tofu/full-pipeline@{version}\n"
                ),
            ),
            ("templates/fmt.yml", "ours:\n  script: [echo wrong]\n"),
        ]);
        let cache = tempfile::tempdir().unwrap();
        let out = forge.gantry(&repo, cache.path(), &["run", "--list-json"]);
        assert_eq!(jobs(&out), ["fmt-1", "plan"], "{version}");
        let cached = cache.path().join(format!(
            "gantry/includes/project/{host}/group/tofu/-/1.0.0/templates/fmt.yml"
        ));
        assert!(cached.exists(), "{version}: {}", cached.display());
        // From the cache, offline, the same.
        let out = forge.gantry(&repo, cache.path(), &["run", "--list-json", "--offline"]);
        assert_eq!(jobs(&out), ["fmt-1", "plan"], "{version} offline");
    }
}

// A remote file has no project (GitLab: "Local file ... does not have project!").
#[test]
fn a_local_include_in_a_remote_file_is_an_error() {
    let forge = Forge::start();
    forge.file("/ci/remote.yml", 200, b"include: /ci/jobs.yml\n");
    let url = format!("{}/ci/remote.yml", forge.url());
    let repo = Repo::new(&[
        (
            ".gitlab-ci.yml",
            &format!("include: {url}\njob:\n  script: [x]\n"),
        ),
        ("ci/jobs.yml", "ours:\n  script: [x]\n"),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let out = forge.gantry(&repo, cache.path(), &["lint"]);
    assert_ne!(out.status.code(), Some(0));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains(&format!(
            "remote:{url}:1:10: local include `/ci/jobs.yml` in `include:remote` `{url}`"
        )),
        "{text}"
    );
}

// `--gitlab-url` (here `GANTRY_GITLAB_URL`) is the instance the pipeline sees in `CI_SERVER_*`.
#[test]
fn the_gitlab_url_sets_the_ci_server_variables() {
    let url = "http://127.0.0.1:9/gitlab";
    let cond = [
        "$CI_SERVER_URL == \"http://127.0.0.1:9/gitlab\"",
        "$CI_SERVER_HOST == \"127.0.0.1\"",
        "$CI_SERVER_PORT == \"9\"",
        "$CI_SERVER_PROTOCOL == \"http\"",
        "$CI_SERVER_FQDN == \"127.0.0.1:9\"",
        "$CI_API_V4_URL == \"http://127.0.0.1:9/gitlab/api/v4\"",
    ]
    .join(" && ");
    let repo = Repo::new(&[(
        ".gitlab-ci.yml",
        &format!("job:\n  rules:\n    - if: '{cond}'\n  script: [x]\nother:\n  script: [x]\n"),
    )]);
    let cache = tempfile::tempdir().unwrap();
    let out = gantry(&repo, cache.path(), url, &["run", "--list-json"], &[]);
    assert_eq!(jobs(&out), ["job", "other"]);
    // The origin remote's host when nothing else names the instance.
    repo.git(&[
        "remote",
        "add",
        "origin",
        "git@gitlab.example.com:group/p.git",
    ]);
    let out = gantry(&repo, cache.path(), "", &["run", "--list-json"], &[]);
    assert_eq!(jobs(&out), ["other"]);
    // What the user sets wins.
    let out = gantry(
        &repo,
        cache.path(),
        url,
        &["run", "--list-json", "--variable", "CI_SERVER_PORT=1"],
        &[],
    );
    assert_eq!(jobs(&out), ["other"]);
}
