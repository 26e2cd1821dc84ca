//! The server's git: one bare mirror per project in the data dir, commits fetched into it, and
//! [`GitSources`], the compiler's view of a commit's files through `git ls-tree` and `git cat-file`.
//!
//! Every git process runs in a process group of its own under a time limit ([`output`]): a
//! repository that accepts a connection and never answers costs one delivery attempt, and no git,
//! ssh or http helper is left behind. A repository's credentials (`https://user:token@host/...`)
//! reach git in its environment only ([`Remote`]), never in its arguments or in a message.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// How long a git command on a mirror of the server's own (reading a commit, its files, an
/// archive) may run.
pub(crate) const LOCAL_TIMEOUT: Duration = Duration::from_secs(120);

/// A git command on `repo` with a clean, non-interactive environment.
pub(crate) fn command(repo: &Path) -> Command {
    let mut c = bare_command();
    c.arg("--git-dir").arg(repo);
    c
}

/// A git command with a clean, non-interactive environment and no repository.
fn bare_command() -> Command {
    let mut c = Command::new("git");
    c.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_COUNT", "0")
        .env_remove("GIT_CONFIG_PARAMETERS")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .stdin(Stdio::null());
    c
}

/// A git command that did not finish in time; it was stopped with every process of its group.
#[derive(Debug)]
pub(crate) struct TimedOut {
    what: String,
    after: Duration,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "git {} did not finish within {}s and was stopped",
            self.what,
            self.after.as_secs_f64()
        )
    }
}

impl std::error::Error for TimedOut {}

/// Reads `r` to its end on a thread of its own; the bytes arrive on the answered channel.
fn drain(r: Option<impl Read + Send + 'static>) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    match r {
        Some(mut r) => {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = r.read_to_end(&mut bytes);
                let _ = tx.send(bytes);
            });
        }
        None => {
            let _ = tx.send(Vec::new());
        }
    }
    rx
}

/// Runs `cmd` (`what` names it in errors) in a process group of its own and collects its output
/// (its standard output goes to `sink` when given); when it has not ended and closed its output
/// after `timeout`, kills the whole group (git with its ssh or http helper) and fails with
/// [`TimedOut`].
pub(crate) fn output(
    cmd: &mut Command,
    sink: Option<std::fs::File>,
    timeout: Duration,
    what: &str,
) -> Result<Output> {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0).stderr(Stdio::piped());
    match sink {
        Some(f) => cmd.stdout(f),
        None => cmd.stdout(Stdio::piped()),
    };
    let deadline = Instant::now() + timeout;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run git {what}"))?;
    let group = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let timed_out = |child: &mut std::process::Child| {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        anyhow::Error::new(TimedOut {
            what: what.to_string(),
            after: timeout,
        })
    };
    // Both pipes close when git and every helper holding them have ended: no polling for the
    // common case. A helper that outlives git keeps them open, and is stopped at the deadline too.
    let left = || deadline.saturating_duration_since(Instant::now());
    let (Ok(stdout), Ok(stderr)) = (stdout.recv_timeout(left()), stderr.recv_timeout(left()))
    else {
        return Err(timed_out(&mut child));
    };
    // Git closed its output; it ends in a moment.
    let mut pause = Duration::from_micros(100);
    let status = loop {
        if let Some(status) = child.try_wait().context("cannot wait for git")? {
            break status;
        }
        if left().is_zero() {
            return Err(timed_out(&mut child));
        }
        std::thread::sleep(pause.min(left()));
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// A project's repository as git reaches it. Credentials in an http(s) URL
/// (`https://user:token@host/repo.git`) are taken out of it and given to git as an
/// `Authorization` header for that URL only, in its environment (`GIT_CONFIG_KEY_0`/`VALUE_0`);
/// a password in any other URL is dropped. So no git argument, and no message that names the
/// URL, holds them.
#[derive(Clone)]
pub(crate) struct Remote {
    url: String,
    authorization: Option<String>,
    /// How long a git command that reaches the repository may run.
    pub timeout: Duration,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// The repository of `repo_url`, reached within `timeout` per command.
    pub fn new(repo_url: &str, timeout: Duration) -> Remote {
        let (url, authorization) = split_credentials(repo_url);
        Remote {
            url,
            authorization,
            timeout,
        }
    }

    /// The URL without its credentials: what git is given, and what messages show.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A git command on `repo` (or on no repository) that reaches this repository.
    fn command(&self, repo: Option<&Path>) -> Command {
        let mut c = match repo {
            Some(repo) => command(repo),
            None => bare_command(),
        };
        if let Some(a) = &self.authorization {
            c.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", format!("http.{}.extraHeader", self.url))
                .env("GIT_CONFIG_VALUE_0", format!("Authorization: {a}"));
        }
        c
    }
}

/// `url` without the credentials in it, and the `Authorization` value that carries them (http and
/// https only); an URL that does not parse (a path, `host:path`) is kept as it is.
fn split_credentials(url: &str) -> (String, Option<String>) {
    use base64::Engine as _;
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return (url.to_string(), None);
    };
    if parsed.username().is_empty() && parsed.password().is_none() {
        return (url.to_string(), None);
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = decode(parsed.username());
    let password = parsed.password().map(decode);
    if !matches!(parsed.scheme(), "http" | "https") {
        // ssh and others: the user name is part of the address; a password git would not use.
        if password.is_some() {
            let _ = parsed.set_password(None);
            return (parsed.to_string(), None);
        }
        return (url.to_string(), None);
    }
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{user}:{}", password.unwrap_or_default()));
    (parsed.to_string(), Some(format!("Basic {basic}")))
}

/// `url` as it may be shown (in the API, a log or an error): without a password, and without the
/// user name of an http(s) URL (often a token itself).
pub(crate) fn redact_url(url: &str) -> String {
    split_credentials(url).0
}

fn run(repo: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let what = args.first().copied().unwrap_or_default();
    let out = output(command(repo).args(args), None, LOCAL_TIMEOUT, what)?;
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
    let out = output(
        Command::new("git")
            .args(["init", "--bare", "--quiet"])
            .arg(path)
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null()),
        None,
        LOCAL_TIMEOUT,
        "init",
    )?;
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
    let out = output(
        command(repo).args([
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{sha}^{{commit}}"),
        ]),
        None,
        LOCAL_TIMEOUT,
        "rev-parse",
    );
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
    let out = output(
        command(repo).args(["archive", "--format=tar", sha]),
        Some(tmp.reopen().context("cannot reopen the archive file")?),
        LOCAL_TIMEOUT,
        "archive",
    )?;
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

/// Fetches `sha` (or, when that fails or there is none, `fetch_ref`) from `remote` into the
/// mirror, and answers the commit's full SHA. A fetch that does not finish within the remote's
/// timeout fails with [`TimedOut`] in its chain, without trying further.
pub(crate) fn fetch(
    repo: &Path,
    remote: &Remote,
    sha: Option<&str>,
    fetch_ref: &str,
) -> Result<String> {
    let url = remote.url();
    if !single_ref(fetch_ref) {
        return Err(anyhow::Error::new(NotARef(fetch_ref.to_string())));
    }
    ensure_mirror(repo)?;
    if let Some(sha) = sha {
        if has_commit(repo, sha) {
            return resolve(repo, sha);
        }
        let direct = match output(
            remote
                .command(Some(repo))
                .args(["fetch", "--quiet", "--no-tags", "--", url, sha]),
            None,
            remote.timeout,
            "fetch",
        ) {
            Ok(out) => out.status.success(),
            Err(e) if e.is::<TimedOut>() => {
                return Err(e.context(format!("cannot fetch {fetch_ref} from {url}")));
            }
            Err(_) => false,
        };
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
        let out = output(
            remote
                .command(Some(repo))
                .args(["fetch", "--quiet", "--no-tags", "--force", "--", url])
                .arg(format!("+{r}:{local}")),
            None,
            remote.timeout,
            "fetch",
        )
        .with_context(|| format!("cannot fetch {fetch_ref} from {url}"))?;
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

/// The tags of `remote`, as `git ls-remote --tags --refs` lists them (`SHA\trefs/tags/NAME`).
pub(crate) fn ls_remote_tags(remote: &Remote) -> Result<String> {
    // No repository: none is looked for above the root directory.
    let mut cmd = remote.command(None);
    cmd.current_dir("/")
        .args(["ls-remote", "--tags", "--refs", "--", remote.url()]);
    let out = output(&mut cmd, None, remote.timeout, "ls-remote")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The best common ancestor of `a` and `b`, when the mirror has both and they have one.
pub(crate) fn merge_base(repo: &Path, a: &str, b: &str) -> Option<String> {
    let out = run(repo, &["merge-base", a, b]).ok()?;
    let sha = String::from_utf8_lossy(&out).trim().to_string();
    (!sha.is_empty()).then_some(sha)
}

/// `git diff --unified=0` of `base...sha` (from their merge base to `sha`), as `gantry run` reads
/// a change's lines: no color, no external diff, no renames, `a/` and `b/` prefixes.
pub(crate) fn diff_unified0(repo: &Path, base: &str, sha: &str) -> Result<String> {
    let range = format!("{base}...{sha}");
    let out = run(
        repo,
        &[
            "diff",
            "--unified=0",
            "--no-color",
            "--no-ext-diff",
            "--no-renames",
            "--src-prefix=a/",
            "--dst-prefix=b/",
            &range,
        ],
    )?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The message of tag `tag` on `remote` (fetched into the mirror): `Some("")` for a lightweight
/// tag, which has none; the signature of a signed tag is left out.
pub(crate) fn tag_message(repo: &Path, remote: &Remote, tag: &str) -> Result<String> {
    let local = format!("refs/gantry/tags/{tag}");
    let out = output(
        remote.command(Some(repo)).args([
            "fetch",
            "--quiet",
            "--no-tags",
            "--force",
            "--",
            remote.url(),
            &format!("+refs/tags/{tag}:{local}"),
        ]),
        None,
        remote.timeout,
        "fetch",
    )?;
    if !out.status.success() {
        bail!(
            "git fetch of tag {tag} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
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
    let out = output(
        command(repo).args(["cat-file", "blob", &format!("{sha}:{path}")]),
        None,
        LOCAL_TIMEOUT,
        "cat-file",
    )
    .map_err(|e| format!("{e:#}"))?;
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

    /// A repository reached without credentials, within the local timeout.
    fn at(url: &str) -> Remote {
        Remote::new(url, LOCAL_TIMEOUT)
    }

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
    fn a_command_past_its_time_is_stopped_with_its_whole_group() {
        // A child that starts a helper of its own and waits for it, as git waits for its ssh or
        // http helper.
        let marker = format!("{}.{}", std::process::id(), 7);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("sleep 3{marker} & wait")]);
        let e = output(&mut cmd, None, Duration::from_millis(300), "fetch").unwrap_err();
        assert_eq!(
            e.to_string(),
            "git fetch did not finish within 0.3s and was stopped"
        );
        assert!(e.is::<TimedOut>());
        // The helper was sent SIGKILL; it is gone as soon as the kernel has torn it down.
        let left = || -> Vec<String> {
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains(&format!("sleep 3{marker}")))
                .collect()
        };
        for _ in 0..250 {
            if left().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(left().is_empty(), "{:?}", left());
        // A quick one answers its output.
        let out = output(
            Command::new("sh").args(["-c", "echo out; echo err >&2"]),
            None,
            Duration::from_secs(30),
            "x",
        )
        .unwrap();
        assert!(out.status.success());
        assert_eq!(
            (&out.stdout[..], &out.stderr[..]),
            (&b"out\n"[..], &b"err\n"[..])
        );
    }

    #[test]
    fn credentials_leave_the_url_for_an_authorization_header() {
        let r = Remote::new(
            "https://ci-bot:s3cr%40t@git.example.com/a/b.git",
            LOCAL_TIMEOUT,
        );
        assert_eq!(r.url(), "https://git.example.com/a/b.git");
        // base64("ci-bot:s3cr@t")
        assert_eq!(
            r.authorization.as_deref(),
            Some("Basic Y2ktYm90OnMzY3JAdA==")
        );
        assert!(!format!("{r:?}").contains("s3cr"));
        let token = Remote::new("http://glpat-token@127.0.0.1:8080/r.git", LOCAL_TIMEOUT);
        assert_eq!(token.url(), "http://127.0.0.1:8080/r.git");
        assert_eq!(
            token.authorization.as_deref(),
            Some("Basic Z2xwYXQtdG9rZW46")
        );
        for plain in [
            "https://git.example.com/a/b.git",
            "/srv/git/a.git",
            "git@git.example.com:a/b.git",
            "ssh://git@git.example.com/a/b.git",
        ] {
            let r = Remote::new(plain, LOCAL_TIMEOUT);
            assert_eq!((r.url(), r.authorization.as_deref()), (plain, None));
        }
        assert_eq!(
            redact_url("ssh://git:hunter2@git.example.com/a/b.git"),
            "ssh://git@git.example.com/a/b.git"
        );
        // The header goes to git in its environment, for that URL only.
        let cmd = r.command(Some(Path::new("m.git")));
        let env: HashMap<String, String> = cmd
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.into(), v?.to_str()?.into())))
            .collect();
        assert_eq!(env["GIT_CONFIG_COUNT"], "1");
        assert_eq!(
            env["GIT_CONFIG_KEY_0"],
            "http.https://git.example.com/a/b.git.extraHeader"
        );
        assert_eq!(
            env["GIT_CONFIG_VALUE_0"],
            "Authorization: Basic Y2ktYm90OnMzY3JAdA=="
        );
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
        let sha = fetch(&mirror, &at(src.to_str().unwrap()), None, "main").unwrap();
        assert_eq!(sha.len(), 40);
        let again = fetch(
            &mirror,
            &at(src.to_str().unwrap()),
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
        assert!(fetch(&mirror, &at(src.to_str().unwrap()), None, "no-such-branch").is_err());
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
            let e = fetch(&mirror, &at(url), None, bad).unwrap_err();
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
        assert!(fetch(&mirror, &at(url), None, "refs/heads/secret").is_ok());
        assert!(fetch(&mirror, &at(url), None, "main").is_ok());
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
        let commit = fetch(&mirror, &at(url), None, "main").unwrap();
        let out = Command::new("git")
            .args(["rev-parse", "v1"])
            .current_dir(&src)
            .output()
            .unwrap();
        let tag = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_ne!(tag, commit);
        assert_eq!(
            fetch(&mirror, &at(url), Some(&tag), "refs/tags/v1").unwrap(),
            commit
        );
        // Asked again, from what was remembered: still the commit.
        assert_eq!(
            fetch(&mirror, &at(url), Some(&tag), "refs/tags/v1").unwrap(),
            commit
        );
        assert_eq!(
            tag_message(&mirror, &at(url), "v1").unwrap(),
            "the tag's message"
        );
        assert_eq!(tag_message(&mirror, &at(url), "light").unwrap(), "");
        let missing = fetch(&mirror, &at(url), None, "refs/heads/gone").unwrap_err();
        assert!(
            missing
                .chain()
                .any(|c| c.downcast_ref::<NoSuchRef>().is_some()),
            "{missing:#}"
        );
        let unreachable = tmp.path().join("nowhere");
        let e = fetch(&mirror, &at(unreachable.to_str().unwrap()), None, "main").unwrap_err();
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
        let sha = fetch(&mirror, &at(src.to_str().unwrap()), None, "main").unwrap();
        assert_eq!(commit_info(&mirror, &sha).unwrap().message, "cached");
        let s = GitSources::new(&mirror, &sha, None).unwrap();
        assert!(s.read(".gitlab-ci.yml").unwrap().contains("script"));
        // Without its objects, the mirror can only answer from what was learnt.
        std::fs::rename(mirror.join("objects"), tmp.path().join("objects")).unwrap();
        assert!(has_commit(&mirror, &sha));
        let again = fetch(&mirror, &at("/nonexistent"), Some(&sha), "main").unwrap();
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
