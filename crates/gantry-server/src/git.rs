//! The server's git: one bare mirror per project in the data dir, commits fetched into it, and
//! [`GitSources`], the compiler's view of a commit's files through `git ls-tree` and `git cat-file`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context as _, Result, bail};

/// A git command on `repo` with a clean, non-interactive environment.
pub(crate) fn command(repo: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("--git-dir")
        .arg(repo)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .stdin(Stdio::null());
    c
}

fn run(repo: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = command(repo)
        .args(args)
        .output()
        .with_context(|| format!("cannot run git {}", args.first().unwrap_or(&"")))?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The mirror of project `id`.
pub(crate) fn mirror_path(data_dir: &Path, id: i64) -> PathBuf {
    data_dir.join("mirrors").join(format!("{id}.git"))
}

/// Creates the bare mirror when it does not exist.
pub(crate) fn ensure_mirror(path: &Path) -> Result<()> {
    if path.join("HEAD").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    let out = Command::new("git")
        .args(["init", "--bare", "--quiet"])
        .arg(path)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .context("cannot run git init")?;
    if !out.status.success() {
        bail!(
            "git init failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// How many commits [`known`] keeps.
const KEPT_COMMITS: usize = 64;
/// The most file content [`known`] keeps per commit.
const KEPT_BYTES: usize = 1 << 20;

/// What the server learnt about one commit of one mirror. A commit never changes and a mirror only
/// gains objects, so these facts stay true: repeated deliveries of a commit (a push and its merge
/// request event, a redelivery, many pushes of one commit) run no git process.
#[derive(Default)]
struct Known {
    repo: PathBuf,
    sha: String,
    info: Option<Arc<CommitInfo>>,
    files: Option<Arc<Vec<String>>>,
    blobs: HashMap<String, Arc<str>>,
    blob_bytes: usize,
}

/// The last [`KEPT_COMMITS`] commits found in a mirror, newest last.
static KNOWN: Mutex<VecDeque<Known>> = Mutex::new(VecDeque::new());

/// Whether `sha` is a full object name (only those are remembered: an abbreviation can become
/// ambiguous as the mirror grows).
fn full_sha(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64)
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Runs `f` on what is known of `sha` in `repo`, if it was found there before.
fn known<R>(repo: &Path, sha: &str, f: impl FnOnce(&mut Known) -> R) -> Option<R> {
    let mut all = KNOWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    all.iter_mut()
        .rev()
        .find(|k| k.sha == sha && k.repo == repo)
        .map(f)
}

/// Remembers that `repo` has commit `sha`.
fn remember(repo: &Path, sha: &str) {
    if !full_sha(sha) || known(repo, sha, |_| ()).is_some() {
        return;
    }
    let mut all = KNOWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if all.len() >= KEPT_COMMITS {
        all.pop_front();
    }
    all.push_back(Known {
        repo: repo.to_path_buf(),
        sha: sha.to_string(),
        ..Known::default()
    });
}

/// Whether the mirror has commit `sha` (or a tag object that points at a commit it has). Only the
/// commit is remembered: a tag object's name is never answered as a commit's.
pub(crate) fn has_commit(repo: &Path, sha: &str) -> bool {
    if known(repo, sha, |_| ()).is_some() {
        return true;
    }
    let out = command(repo)
        .args([
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{sha}^{{commit}}"),
        ])
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            remember(repo, String::from_utf8_lossy(&o.stdout).trim());
            true
        }
        _ => false,
    }
}

/// The remote has no such ref: another attempt fails the same way (unlike a remote that cannot be
/// reached). Found in [`fetch`]'s error chain with `downcast_ref`.
#[derive(Debug)]
pub(crate) struct NoSuchRef(pub String);

impl std::fmt::Display for NoSuchRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the remote has no ref `{}`", self.0)
    }
}

impl std::error::Error for NoSuchRef {}

/// Whether git's message says that the remote answered but has no such ref (`git fetch` exits 128
/// both for that and for a remote it cannot reach; only the message tells them apart).
fn missing_ref_message(stderr: &str) -> bool {
    stderr.contains("couldn't find remote ref")
}

/// Where the cached `git archive` of commit `sha` of project `id` lives, or `None` when `sha` is
/// not a full hexadecimal object name (then it is never used as a file name).
pub(crate) fn archive_path(data_dir: &Path, id: i64, sha: &str) -> Option<PathBuf> {
    let full = matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
    full.then(|| {
        data_dir
            .join("archives")
            .join(id.to_string())
            .join(format!("{sha}.tar"))
    })
}

/// Writes `git archive` of `sha` to `dest` (through a temporary file beside it and a rename, so a
/// reader never sees a partial archive).
pub(crate) fn write_archive(repo: &Path, sha: &str, dest: &Path) -> Result<()> {
    let dir = dest.parent().context("an archive path has a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let out = command(repo)
        .args(["archive", "--format=tar", sha])
        .stdout(tmp.reopen().context("cannot reopen the archive file")?)
        .stderr(Stdio::piped())
        .output()
        .context("cannot run git archive")?;
    if !out.status.success() {
        bail!(
            "git archive {sha} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    tmp.persist(dest)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(())
}

/// Removes cached archives not written for `age` (a job that needs one again writes it again);
/// answers how many were removed.
pub(crate) fn prune_archives(data_dir: &Path, age: std::time::Duration) -> usize {
    let mut removed = 0;
    let Ok(projects) = std::fs::read_dir(data_dir.join("archives")) else {
        return 0;
    };
    for project in projects.flatten() {
        let Ok(files) = std::fs::read_dir(project.path()) else {
            continue;
        };
        for f in files.flatten() {
            let old = f
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|e| e >= age);
            if old && std::fs::remove_file(f.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// A ref that [`fetch`] refuses: a pattern (`refs/heads/*`), a refspec (`a:b`, `+a`, `^a`), a
/// revision expression (`a~1`, `a@{1}`) or anything else that is not one valid ref name, so that
/// a pipeline's `include:project` ref fetches one ref and nothing else.
#[derive(Debug)]
pub(crate) struct NotARef(pub String);

impl std::fmt::Display for NotARef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` is not a single ref", self.0)
    }
}

impl std::error::Error for NotARef {}

/// Whether `r` is one ref name as `git check-ref-format` allows it (a short name included), and
/// none of git's pattern, refspec or revision characters.
fn single_ref(r: &str) -> bool {
    !r.is_empty()
        && !r.starts_with(['-', '/', '+', '^', '.'])
        && !r.ends_with(['/', '.'])
        && !r.ends_with(".lock")
        && !r.contains("..")
        && !r.contains("//")
        && !r.contains("@{")
        && r != "@"
        && !r
            .split('/')
            .any(|c| c.starts_with('.') || c.ends_with(".lock"))
        && !r.chars().any(|c| {
            c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
        })
}

/// Fetches `sha` (or, when that fails or there is none, `fetch_ref`) from `url` into the mirror, and
/// answers the commit's full SHA.
pub(crate) fn fetch(repo: &Path, url: &str, sha: Option<&str>, fetch_ref: &str) -> Result<String> {
    if !single_ref(fetch_ref) {
        return Err(anyhow::Error::new(NotARef(fetch_ref.to_string())));
    }
    ensure_mirror(repo)?;
    if let Some(sha) = sha {
        if has_commit(repo, sha) {
            return resolve(repo, sha);
        }
        let direct = command(repo)
            .args(["fetch", "--quiet", "--no-tags", url, sha])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if direct && has_commit(repo, sha) {
            return resolve(repo, sha);
        }
    }
    // A ref: `refs/...` as is; a short name as a branch, then as a tag.
    let candidates: Vec<String> = if fetch_ref.starts_with("refs/") {
        vec![fetch_ref.to_string()]
    } else {
        vec![
            format!("refs/heads/{fetch_ref}"),
            format!("refs/tags/{fetch_ref}"),
        ]
    };
    let mut last = None;
    let mut missing = 0;
    for r in &candidates {
        let local = format!("refs/gantry/{}", r.trim_start_matches("refs/"));
        let out = command(repo)
            .args(["fetch", "--quiet", "--no-tags", "--force", url])
            .arg(format!("+{r}:{local}"))
            .output()
            .context("cannot run git fetch")?;
        if out.status.success() {
            let head = resolve(repo, &local)?;
            return match sha {
                Some(s) if has_commit(repo, s) => resolve(repo, s),
                Some(s) => bail!("commit {s} is not on {r} in {url}"),
                None => Ok(head),
            };
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if missing_ref_message(&stderr) {
            missing += 1;
        }
        last = Some(anyhow::anyhow!("git fetch {r} failed: {stderr}"));
    }
    let err = last.unwrap_or_else(|| anyhow::anyhow!("nothing to fetch"));
    if missing == candidates.len() {
        return Err(anyhow::Error::new(NoSuchRef(fetch_ref.to_string()))
            .context(format!("cannot fetch {fetch_ref} from {url}")));
    }
    Err(err).with_context(|| format!("cannot fetch {fetch_ref} from {url}"))
}

/// The best common ancestor of `a` and `b`, when the mirror has both and they have one.
pub(crate) fn merge_base(repo: &Path, a: &str, b: &str) -> Option<String> {
    let out = run(repo, &["merge-base", a, b]).ok()?;
    let sha = String::from_utf8_lossy(&out).trim().to_string();
    (!sha.is_empty()).then_some(sha)
}

/// The message of tag `tag` on `url` (fetched into the mirror): `Some("")` for a lightweight tag,
/// which has none; the signature of a signed tag is left out.
pub(crate) fn tag_message(repo: &Path, url: &str, tag: &str) -> Result<String> {
    let local = format!("refs/gantry/tags/{tag}");
    run(
        repo,
        &[
            "fetch",
            "--quiet",
            "--no-tags",
            "--force",
            url,
            &format!("+refs/tags/{tag}:{local}"),
        ],
    )?;
    let out = run(
        repo,
        &[
            "for-each-ref",
            "--format=%(objecttype)%00%(contents)",
            &local,
        ],
    )?;
    let text = String::from_utf8_lossy(&out);
    let (kind, contents) = text.split_once('\0').unwrap_or((text.trim(), ""));
    if kind != "tag" {
        return Ok(String::new());
    }
    let message = contents
        .find("-----BEGIN ")
        .map_or(contents, |i| &contents[..i]);
    Ok(message.trim_end().to_string())
}

fn resolve(repo: &Path, rev: &str) -> Result<String> {
    if known(repo, rev, |_| ()).is_some() {
        return Ok(rev.to_string());
    }
    let out = run(
        repo,
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )?;
    let sha = String::from_utf8_lossy(&out).trim().to_string();
    remember(repo, &sha);
    Ok(sha)
}

/// A commit's message, committer time (ISO 8601) and author.
#[derive(Clone, Debug, Default)]
pub(crate) struct CommitInfo {
    pub message: String,
    pub timestamp: String,
    pub author: String,
}

/// Reads a commit's facts.
pub(crate) fn commit_info(repo: &Path, sha: &str) -> Result<CommitInfo> {
    if let Some(Some(info)) = known(repo, sha, |k| k.info.clone()) {
        return Ok((*info).clone());
    }
    let info = read_commit_info(repo, sha)?;
    known(repo, sha, |k| k.info = Some(Arc::new(info.clone())));
    Ok(info)
}

fn read_commit_info(repo: &Path, sha: &str) -> Result<CommitInfo> {
    let out = run(
        repo,
        &["show", "-s", "--format=%cI%x00%an <%ae>%x00%B", sha],
    )?;
    let text = String::from_utf8_lossy(&out);
    let mut parts = text.splitn(3, '\0');
    let timestamp = parts.next().unwrap_or_default().to_string();
    let author = parts.next().unwrap_or_default().to_string();
    let message = parts.next().unwrap_or_default().trim_end().to_string();
    Ok(CommitInfo {
        message,
        timestamp,
        author,
    })
}

/// The text of file `path` (relative to the repository's root) at commit `sha`.
///
/// # Errors
/// A path that leaves the repository, no such file, or a file that is not UTF-8.
pub(crate) fn read_file(repo: &Path, sha: &str, path: &str) -> Result<String, String> {
    let path = path.trim_start_matches("./");
    if path.split('/').any(|c| c == "..") || path.starts_with('/') {
        return Err("the path must stay inside the project".into());
    }
    if let Some(Some(text)) = known(repo, sha, |k| k.blobs.get(path).cloned()) {
        return Ok(text.to_string());
    }
    let out = command(repo)
        .args(["cat-file", "blob", &format!("{sha}:{path}")])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err("no such file".into());
    }
    let text = String::from_utf8(out.stdout).map_err(|_| "the file is not UTF-8".to_string())?;
    known(repo, sha, |k| {
        if k.blob_bytes + text.len() <= KEPT_BYTES {
            k.blob_bytes += text.len();
            k.blobs.insert(path.to_string(), Arc::from(text.as_str()));
        }
    });
    Ok(text)
}

/// A commit's files, for the compiler.
pub(crate) struct GitSources {
    repo: PathBuf,
    sha: String,
    files: Arc<Vec<String>>,
    /// The commit to compare with for `rules:changes` (the push's `before`, an MR's target).
    base: Option<String>,
    changed: OnceLock<Option<Vec<String>>>,
}

impl GitSources {
    /// The files of `sha` in `repo`.
    pub fn new(repo: &Path, sha: &str, base: Option<String>) -> Result<GitSources> {
        let files = match known(repo, sha, |k| k.files.clone()) {
            Some(Some(files)) => files,
            _ => {
                let out = run(repo, &["ls-tree", "-r", "-z", "--name-only", sha])?;
                let files: Arc<Vec<String>> = Arc::new(
                    out.split(|b| *b == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect(),
                );
                known(repo, sha, |k| k.files = Some(files.clone()));
                files
            }
        };
        Ok(GitSources {
            repo: repo.to_path_buf(),
            sha: sha.to_string(),
            files,
            base,
            changed: OnceLock::new(),
        })
    }
}

impl gantry_pipeline::Sources for GitSources {
    fn read(&self, path: &str) -> Result<String, String> {
        read_file(&self.repo, &self.sha, path)
    }

    fn files(&self) -> &[String] {
        &self.files
    }

    fn changed_files(&self) -> Option<&[String]> {
        self.changed
            .get_or_init(|| {
                let base = self.base.as_deref()?;
                if !has_commit(&self.repo, base) {
                    return None;
                }
                let out = run(&self.repo, &["diff", "--name-only", "-z", base, &self.sha]).ok()?;
                Some(
                    out.split(|b| *b == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect(),
                )
            })
            .as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_pipeline::Sources as _;

    fn sh(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "T")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "T")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    #[test]
    fn fetch_and_read() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("ci")).unwrap();
        sh(&src, &["init", "-q", "-b", "main"]);
        std::fs::write(src.join(".gitlab-ci.yml"), "a:\n  script: [x]\n").unwrap();
        std::fs::write(src.join("ci/more.yml"), "b: {script: [y]}\n").unwrap();
        sh(&src, &["add", "."]);
        sh(&src, &["commit", "-q", "-m", "first"]);
        let mirror = tmp.path().join("m.git");
        let sha = fetch(&mirror, src.to_str().unwrap(), None, "main").unwrap();
        assert_eq!(sha.len(), 40);
        let again = fetch(
            &mirror,
            src.to_str().unwrap(),
            Some(&sha),
            "refs/heads/main",
        )
        .unwrap();
        assert_eq!(again, sha);
        let info = commit_info(&mirror, &sha).unwrap();
        assert_eq!(info.message, "first");
        assert_eq!(info.author, "T <t@example.com>");
        let s = GitSources::new(&mirror, &sha, None).unwrap();
        assert_eq!(s.files(), [".gitlab-ci.yml", "ci/more.yml"]);
        assert!(s.read("ci/more.yml").unwrap().contains("script"));
        assert!(s.read("../etc/passwd").is_err());
        assert!(s.read("nope").is_err());
        assert!(fetch(&mirror, src.to_str().unwrap(), None, "no-such-branch").is_err());
    }

    #[test]
    fn a_pattern_or_refspec_is_refused_and_fetches_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        sh(&src, &["init", "-q", "-b", "main"]);
        sh(&src, &["commit", "-q", "--allow-empty", "-m", "one"]);
        sh(&src, &["branch", "secret"]);
        let url = src.to_str().unwrap();
        let mirror = tmp.path().join("m.git");
        for bad in [
            "refs/heads/*",
            "refs/heads/se?ret",
            "refs/heads/[s]ecret",
            "*",
            "secret:refs/heads/x",
            "refs/heads/main:refs/gantry/heads/secret",
            "+refs/heads/secret",
            "^refs/heads/secret",
            "-refs/heads/main",
            "refs/heads/../heads/secret",
            "main@{1}",
            "main~1",
            "main secret",
            "",
        ] {
            let e = fetch(&mirror, url, None, bad).unwrap_err();
            assert!(
                e.chain().any(|c| c.downcast_ref::<NotARef>().is_some()),
                "{bad}: {e:#}"
            );
        }
        let out = command(&mirror)
            .args(["for-each-ref", "--format=%(refname)"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "",
            "nothing was fetched"
        );
        assert!(fetch(&mirror, url, None, "refs/heads/secret").is_ok());
        assert!(fetch(&mirror, url, None, "main").is_ok());
    }

    #[test]
    fn a_tag_object_is_peeled_and_a_missing_ref_is_told_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        sh(&src, &["init", "-q", "-b", "main"]);
        sh(&src, &["commit", "-q", "--allow-empty", "-m", "tagged"]);
        sh(&src, &["tag", "-a", "v1", "-m", "the tag's message"]);
        sh(&src, &["tag", "light"]);
        let url = src.to_str().unwrap();
        let mirror = tmp.path().join("m.git");
        let commit = fetch(&mirror, url, None, "main").unwrap();
        let out = Command::new("git")
            .args(["rev-parse", "v1"])
            .current_dir(&src)
            .output()
            .unwrap();
        let tag = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_ne!(tag, commit);
        assert_eq!(
            fetch(&mirror, url, Some(&tag), "refs/tags/v1").unwrap(),
            commit
        );
        // Asked again, from what was remembered: still the commit.
        assert_eq!(
            fetch(&mirror, url, Some(&tag), "refs/tags/v1").unwrap(),
            commit
        );
        assert_eq!(
            tag_message(&mirror, url, "v1").unwrap(),
            "the tag's message"
        );
        assert_eq!(tag_message(&mirror, url, "light").unwrap(), "");
        let missing = fetch(&mirror, url, None, "refs/heads/gone").unwrap_err();
        assert!(
            missing
                .chain()
                .any(|c| c.downcast_ref::<NoSuchRef>().is_some()),
            "{missing:#}"
        );
        let unreachable = tmp.path().join("nowhere");
        let e = fetch(&mirror, unreachable.to_str().unwrap(), None, "main").unwrap_err();
        assert!(
            !e.chain().any(|c| c.downcast_ref::<NoSuchRef>().is_some()),
            "{e:#}"
        );
    }

    #[test]
    fn a_known_commit_is_answered_without_git() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        sh(&src, &["init", "-q", "-b", "main"]);
        std::fs::write(src.join(".gitlab-ci.yml"), "a:\n  script: [x]\n").unwrap();
        sh(&src, &["add", "."]);
        sh(&src, &["commit", "-q", "-m", "cached"]);
        let mirror = tmp.path().join("m.git");
        let sha = fetch(&mirror, src.to_str().unwrap(), None, "main").unwrap();
        assert_eq!(commit_info(&mirror, &sha).unwrap().message, "cached");
        let s = GitSources::new(&mirror, &sha, None).unwrap();
        assert!(s.read(".gitlab-ci.yml").unwrap().contains("script"));
        // Without its objects, the mirror can only answer from what was learnt.
        std::fs::rename(mirror.join("objects"), tmp.path().join("objects")).unwrap();
        assert!(has_commit(&mirror, &sha));
        let again = fetch(&mirror, "/nonexistent", Some(&sha), "main").unwrap();
        assert_eq!(again, sha);
        assert_eq!(commit_info(&mirror, &sha).unwrap().message, "cached");
        let s = GitSources::new(&mirror, &sha, None).unwrap();
        assert_eq!(s.files(), [".gitlab-ci.yml"]);
        assert!(s.read(".gitlab-ci.yml").unwrap().contains("script"));
        // What was never read is not made up.
        assert!(s.read("other.yml").is_err());
        // Another mirror does not share what this one has.
        assert!(!has_commit(&tmp.path().join("other.git"), &sha));
    }
}
