//! Remote includes for `gantry run` and `gantry lint`: `include:remote`, `include:project`,
//! `include:template` and `include:component`, fetched from the network and kept in a cache.
//!
//! The compiler does no IO: it asks [`gantry_pipeline::Sources::remote`] for a key
//! (`remote:URL`, `project:PATH@REF:FILE` with `HEAD` for no ref, `template:NAME`,
//! `component:FQDN/PATH/NAME@VERSION`). [`Includes`] answers from the cache, records what it could not
//! answer, and [`Includes::fetch`] fetches that, concurrently; the caller compiles again, for at most
//! [`MAX_ROUNDS`] rounds (a fetched file may include more).
//!
//! - `remote`: an HTTP GET of the URL, without a token (GitLab fetches remote includes as a public user).
//! - `project`, `template` and `component` come from the GitLab instance: `CI_SERVER_URL` (a
//!   `--variable` or the environment), else `--gitlab-url` / `GANTRY_GITLAB_URL`, else the `origin`
//!   remote's host (https). A file is read with the repository files API
//!   (`/api/v4/projects/:path/repository/files/:file/raw?ref=REF`), with `PRIVATE-TOKEN: $GITLAB_TOKEN`
//!   or `JOB-TOKEN: $CI_JOB_TOKEN` when one is set. When the API answers 404 for the project (not
//!   for the file), or is no GitLab API at all, the file comes from a shallow `git fetch` of
//!   `INSTANCE/PATH.git` at the ref instead.
//! - `template:NAME` is `lib/gitlab/ci/templates/NAME` of project `gitlab-org/gitlab` at `master`.
//! - `component:FQDN/PATH/NAME@VERSION` is `templates/NAME.yml`, else `templates/NAME/template.yml`,
//!   of project `PATH` at `VERSION`, from the instance when `FQDN` is its host (and port), else from
//!   `https://FQDN`. `~latest`, `1` and `1.2` select the highest release (by semantic version, no
//!   pre-releases) that matches, from the releases API, else from the repository's tags.
//!
//! - A local include inside a project file or a component is a file of that project at that ref
//!   ([`Includes::nested_local`]): a `project:` key (a component's at the version it resolved to),
//!   or, for a component of another host, that host's `/-/raw/` URL.
//!
//! Every fetch has a timeout ([`DEFAULT_TIMEOUT`], `GANTRY_INCLUDE_TIMEOUT`) and a size limit
//! ([`MAX_BYTES`]).
//!
//! **The cache** (`$XDG_CACHE_HOME/gantry/includes/`, by default `~/.cache/gantry/includes/`; the
//! layout is documented in README.md):
//! - `remote/SCHEME/HOST[:PORT]/PATH` for `include:remote` (a query is appended to the file name as
//!   `%3FQUERY`);
//! - `project/HOST[:PORT]/PROJECT/-/REF/FILE` for files of a project (`REF` is `HEAD` when the include
//!   names none; a `/` in it is written `%2F`); templates and components are files of their projects;
//! - `project/HOST[:PORT]/PROJECT/-/REF/.tag`: an empty file saying that `REF` is a tag;
//! - `latest/HOST[:PORT]/PROJECT/-/SELECTOR`: the version that `~latest`, `1` or `1.2` resolved to.
//!
//! A file's age is its modification time. Files at a full commit SHA or at a tag never go stale (a ref
//! is known to be a tag when the instance's tags API, or `git ls-remote`, said so when the file was
//! fetched); everything else (branches, `HEAD`, remote URLs, templates, resolved versions) is fetched
//! again once older than the TTL ([`DEFAULT_TTL`], `GANTRY_INCLUDE_TTL`). When that fetch fails, the
//! stale copy is used, with a warning. `--offline` never fetches: it uses cached files of any age and
//! says which file is missing. The project's `.gantry/include-cache/` (files named after the key with
//! every character outside `[A-Za-z0-9._-]` replaced by `_`) is looked at first, as before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use gantry_pipeline::Context;
use gantry_pipeline::component::{self, is_selector, is_sha, select_version};
use gantry_pipeline::context::{MissingRemotes, error_chain};
use gantry_pipeline::plan::Variable;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{StatusCode, Url};

/// The largest include, in bytes.
pub const MAX_BYTES: usize = 1 << 20;
/// How long one HTTP request may take, unless `GANTRY_INCLUDE_TIMEOUT` says otherwise. A git fetch may
/// take six times as long.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a fetched branch file, remote URL or template is used before it is fetched again, unless
/// `GANTRY_INCLUDE_TTL` says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// How many times a pipeline is compiled at most, fetching what the previous compile asked for.
pub const MAX_ROUNDS: usize = 6;

/// Characters written as is in a URL path segment or query value; everything else is escaped, `/` too.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A token sent to the GitLab instance.
#[derive(Clone, Debug)]
struct Token {
    /// The header of the API (`PRIVATE-TOKEN`, `JOB-TOKEN`).
    header: &'static str,
    /// The user name of git's HTTP Basic authentication.
    git_user: &'static str,
    value: String,
    /// The variable it came from.
    from: &'static str,
}

/// How includes are fetched: the instance, the token, the cache, the limits.
#[derive(Clone, Debug)]
pub struct Options {
    /// The GitLab instance's URL.
    pub instance: Url,
    /// Use the cache only.
    pub offline: bool,
    /// How long a mutable cached file stays fresh.
    pub ttl: Duration,
    /// The timeout of one HTTP request.
    pub timeout: Duration,
    /// The cache directory, when there is one (`XDG_CACHE_HOME` or `HOME` is set).
    pub cache_dir: Option<PathBuf>,
    token: Option<Token>,
}

impl Options {
    /// The options for a run: `flag_url` is `--gitlab-url` (or `GANTRY_GITLAB_URL`), `cli_vars` the
    /// `--variable`s, `env` reads the environment.
    ///
    /// # Errors
    /// An instance URL that is not http(s), or a TTL or timeout that is not a duration.
    pub fn new(
        flag_url: Option<&str>,
        offline: bool,
        cli_vars: &[Variable],
        ctx: &Context,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Options, String> {
        let var = |k: &str| {
            cli_vars
                .iter()
                .rev()
                .find(|v| v.key == k)
                .map(|v| v.value.clone())
                .or_else(|| env(k))
                .filter(|v| !v.is_empty())
        };
        let (text, from) = if let Some(u) = var("CI_SERVER_URL") {
            (u, "CI_SERVER_URL")
        } else if let Some(u) = flag_url.filter(|u| !u.is_empty()) {
            (u.to_string(), "--gitlab-url")
        } else {
            let u = gantry_pipeline::context::predefined_variables(ctx)
                .into_iter()
                .find(|v| v.key == "CI_SERVER_URL")
                .map(|v| v.value)
                .unwrap_or_else(|| "https://gitlab.com".into());
            (u, "the origin remote")
        };
        let instance = Url::parse(text.trim_end_matches('/'))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                format!("the GitLab instance `{text}` (from {from}) is not an http or https URL")
            })?;
        let duration = |name: &str, default: Duration| match env(name) {
            Some(s) => gantry_pipeline::duration::parse(&s).map_err(|e| format!("{name}: {e}")),
            None => Ok(default),
        };
        let ttl = duration("GANTRY_INCLUDE_TTL", DEFAULT_TTL)?;
        let timeout = duration("GANTRY_INCLUDE_TIMEOUT", DEFAULT_TIMEOUT)?;
        let cache_dir = env("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| env("HOME").map(|h| Path::new(&h).join(".cache")))
            .map(|d| d.join("gantry").join("includes"));
        let token = if let Some(t) = var("GITLAB_TOKEN") {
            Some(Token {
                header: "PRIVATE-TOKEN",
                git_user: "oauth2",
                value: t,
                from: "GITLAB_TOKEN",
            })
        } else {
            var("CI_JOB_TOKEN").map(|t| Token {
                header: "JOB-TOKEN",
                git_user: "gitlab-ci-token",
                value: t,
                from: "CI_JOB_TOKEN",
            })
        };
        Ok(Options {
            instance,
            offline,
            ttl,
            timeout,
            cache_dir,
            token,
        })
    }

    /// The token for `url`: only the instance gets it, never another host.
    fn token_for(&self, url: &Url) -> Option<&Token> {
        let same =
            url.scheme() == self.instance.scheme() && host_port(url) == host_port(&self.instance);
        self.token.as_ref().filter(|_| same)
    }

    /// Whether a token went to `url`, for messages.
    fn token_note(&self, url: &Url) -> String {
        match (self.token_for(url), &self.token) {
            (Some(t), _) => format!("with the token from {}", t.from),
            (None, Some(t)) => format!(
                "no token sent: {} is only sent to the GitLab instance",
                t.from
            ),
            (None, None) => {
                "no token sent; set GITLAB_TOKEN or CI_JOB_TOKEN for a private project".into()
            }
        }
    }
}

/// What a key asks for.
#[derive(Clone, Debug)]
enum Spec {
    /// `include:remote`.
    Remote(Url),
    /// A project's file (`include:project`, `include:template`, a component at a version).
    File(ProjectFile),
    /// A component whose version is `~latest` or a partial semantic version: resolved first.
    Latest(LatestComponent),
}

/// The first of `candidates` that exists in `project` at `git_ref` (`None`: the default branch),
/// on the instance at `base`.
#[derive(Clone, Debug)]
struct ProjectFile {
    base: Url,
    project: String,
    git_ref: Option<String>,
    candidates: Vec<String>,
}

/// Component `name` of `project` (on the instance at `base`) at the newest version that
/// `selector` (`~latest` or a partial semantic version) selects.
#[derive(Clone, Debug)]
struct LatestComponent {
    base: Url,
    project: String,
    name: String,
    selector: String,
}

impl ProjectFile {
    /// Its instance, project, ref and candidates, as borrowed.
    fn parts(&self) -> (&Url, &str, Option<&str>, &[String]) {
        (
            &self.base,
            &self.project,
            self.git_ref.as_deref(),
            &self.candidates,
        )
    }
}

/// `host` or `host:port` of a URL.
fn host_port(u: &Url) -> String {
    let host = u.host_str().unwrap_or_default();
    match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// A relative path from an include, as path segments: no empty, `.` or `..` segment survives.
fn rel_segments(path: &str) -> Option<Vec<&str>> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    (!segs.is_empty() && segs.iter().all(|s| *s != "." && *s != "..")).then_some(segs)
}

fn join_segments(mut base: PathBuf, segs: &[&str]) -> PathBuf {
    for s in segs {
        base.push(s);
    }
    base
}

fn enc_ref(r: &str) -> String {
    r.replace('%', "%25").replace('/', "%2F")
}

/// A file of the cache, with its age.
struct Cached {
    content: String,
    fresh: bool,
    age: Duration,
}

/// The remote includes of one invocation: the cache, what was fetched, what is missing.
pub struct Includes {
    opts: Options,
    legacy: PathBuf,
    fetched: HashMap<String, Result<String, String>>,
    /// What the `~latest` or partial versions of components fetched in this run resolved to.
    versions: HashMap<String, String>,
    missing: MissingRemotes,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Includes {
    /// Includes with `opts`; `legacy` is the project's `.gantry/include-cache/`.
    #[must_use]
    pub fn new(opts: Options, legacy: PathBuf) -> Includes {
        Includes {
            opts,
            legacy,
            fetched: HashMap::new(),
            versions: HashMap::new(),
            missing: MissingRemotes::default(),
            runtime: None,
        }
    }

    /// The content for `key`, from this run's fetches or the cache; records the key as missing when
    /// it must be fetched.
    pub fn get(&self, key: &str) -> Option<String> {
        if let Some(c) = self.legacy(key) {
            return Some(c);
        }
        match self.fetched.get(key) {
            Some(Ok(c)) => return Some(c.clone()),
            Some(Err(_)) => return None,
            None => {}
        }
        if let Some(c) = self.cached(key) {
            if c.fresh || self.opts.offline {
                return Some(c.content);
            }
        }
        if !self.opts.offline {
            self.missing.add(key);
        }
        None
    }

    /// Why `key` is not available.
    pub fn unavailable(&self, key: &str) -> Option<String> {
        if let Some(Err(why)) = self.fetched.get(key) {
            return Some(why.clone());
        }
        if self.opts.offline {
            let place = match self.spec(key) {
                Ok(spec) => match self.paths(&spec).first() {
                    Some(p) => format!(" (looked for {})", p.display()),
                    None => String::new(),
                },
                Err(e) => return Some(e),
            };
            return Some(format!(
                "not in the include cache, and --offline fetches nothing{place}"
            ));
        }
        Some(format!(
            "not fetched: remote includes nest more than {} levels deep",
            MAX_ROUNDS - 1
        ))
    }

    /// Where local include `path` inside the remote include `parent` is read (see
    /// [`gantry_pipeline::Sources::nested_local`]): in a component, the component's project at
    /// the version it resolved to, from the instance as `project:` key, or from another host as
    /// that host's raw file URL.
    ///
    /// # Errors
    /// `parent` has no project.
    pub fn nested_local(&self, parent: &str, path: &str) -> Result<String, String> {
        let Some(target) = parent.strip_prefix("component:") else {
            return gantry_pipeline::context::nested_local_key(parent, path, None);
        };
        let c = component::Address::parse(target, 2)?;
        let spec = self.spec(parent)?;
        let version = match &spec {
            Spec::Latest(_) => self
                .resolved(parent, &spec)
                .ok_or_else(|| format!("the version that `{}` selects is not known", c.version))?,
            _ => c.version.clone(),
        };
        match &spec {
            Spec::File(ProjectFile { base, .. }) | Spec::Latest(LatestComponent { base, .. })
                if *base != self.opts.instance =>
            {
                Ok(format!(
                    "remote:{}/{}/-/raw/{}/{}",
                    base.as_str().trim_end_matches('/'),
                    c.project,
                    version,
                    path
                ))
            }
            _ => gantry_pipeline::context::nested_local_key(parent, path, Some(&version)),
        }
    }

    /// The version that the `~latest` or partial version of component `key` resolved to: in this
    /// run, else in the cache (offline: the highest cached version that matches).
    fn resolved(&self, key: &str, spec: &Spec) -> Option<String> {
        if let Some(v) = self.versions.get(key) {
            return Some(v.clone());
        }
        let Spec::Latest(LatestComponent {
            base,
            project,
            name,
            selector,
        }) = spec
        else {
            return None;
        };
        if let Some(v) = self
            .paths(spec)
            .first()
            .and_then(|p| std::fs::read_to_string(p).ok())
        {
            return Some(v.trim().to_string());
        }
        let cache = self.opts.cache_dir.as_deref()?;
        let dir = Self::ref_dir(cache, base, project, None);
        let names: Vec<String> = std::fs::read_dir(dir.parent()?)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
        while let Some(v) = select_version(selector, names.iter().copied()) {
            if self
                .cached_spec(&Spec::File(component_file(
                    base,
                    project,
                    name,
                    v.to_string(),
                )))
                .is_some()
            {
                return Some(v.to_string());
            }
            names.retain(|n| *n != v);
        }
        None
    }

    /// The keys asked for and not available, each once; clears the list.
    pub fn take_missing(&self) -> Vec<String> {
        self.missing.take()
    }

    fn legacy(&self, key: &str) -> Option<String> {
        let name: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        std::fs::read_to_string(self.legacy.join(name)).ok()
    }

    /// What `key` asks for.
    fn spec(&self, key: &str) -> Result<Spec, String> {
        let (kind, target) = key.split_once(':').unwrap_or((key, ""));
        let instance = &self.opts.instance;
        match kind {
            "remote" => {
                let url = Url::parse(target).map_err(|e| format!("not a valid URL: {e}"))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err("only http and https URLs can be included".into());
                }
                Ok(Spec::Remote(url))
            }
            "project" => {
                // Project paths hold no `@`, and refs no `:`.
                let (project, rest) = target
                    .split_once('@')
                    .ok_or_else(|| "names no project".to_string())?;
                let (git_ref, file) = rest.split_once(':').unwrap_or((rest, ""));
                let file = rel_segments(file)
                    .ok_or_else(|| format!("`{file}` is not a file path"))?
                    .join("/");
                rel_segments(project)
                    .ok_or_else(|| format!("`{project}` is not a project path"))?;
                Ok(Spec::File(ProjectFile {
                    base: instance.clone(),
                    project: project.trim_matches('/').to_string(),
                    git_ref: (git_ref != "HEAD" && !git_ref.is_empty())
                        .then(|| git_ref.to_string()),
                    candidates: vec![file],
                }))
            }
            "template" => {
                let name = rel_segments(target)
                    .ok_or_else(|| format!("`{target}` is not a template name"))?
                    .join("/");
                Ok(Spec::File(ProjectFile {
                    base: instance.clone(),
                    project: "gitlab-org/gitlab".into(),
                    git_ref: Some("master".into()),
                    candidates: vec![format!("lib/gitlab/ci/templates/{name}")],
                }))
            }
            "component" => {
                let c = component::Address::parse(target, 2)?;
                let base = if c.fqdn.eq_ignore_ascii_case(&host_port(instance)) {
                    instance.clone()
                } else {
                    Url::parse(&format!("https://{}", c.fqdn))
                        .map_err(|e| format!("`{}` is not a host: {e}", c.fqdn))?
                };
                if is_selector(&c.version) {
                    return Ok(Spec::Latest(LatestComponent {
                        base,
                        project: c.project,
                        name: c.name,
                        selector: c.version,
                    }));
                }
                Ok(Spec::File(component_file(
                    &base, &c.project, &c.name, c.version,
                )))
            }
            _ => Err(format!("`include:{kind}` is not supported")),
        }
    }

    fn ref_dir(cache: &Path, base: &Url, project: &str, git_ref: Option<&str>) -> PathBuf {
        let segs = rel_segments(project).unwrap_or_default();
        join_segments(cache.join("project").join(host_port(base)), &segs)
            .join("-")
            .join(enc_ref(git_ref.unwrap_or("HEAD")))
    }

    fn latest_file(cache: &Path, base: &Url, project: &str, selector: &str) -> PathBuf {
        let segs = rel_segments(project).unwrap_or_default();
        join_segments(cache.join("latest").join(host_port(base)), &segs)
            .join("-")
            .join(enc_ref(selector))
    }

    /// Where the cache keeps what `spec` asks for (the first is where it is written).
    fn paths(&self, spec: &Spec) -> Vec<PathBuf> {
        let Some(cache) = &self.opts.cache_dir else {
            return Vec::new();
        };
        match spec {
            Spec::Remote(url) => vec![remote_path(cache, url)],
            Spec::File(f) => {
                let dir = Self::ref_dir(cache, &f.base, &f.project, f.git_ref.as_deref());
                f.candidates
                    .iter()
                    .map(|c| join_segments(dir.clone(), &rel_segments(c).unwrap_or_default()))
                    .collect()
            }
            Spec::Latest(l) => vec![Self::latest_file(cache, &l.base, &l.project, &l.selector)],
        }
    }

    /// The cached content for `key`, fresh or not.
    fn cached(&self, key: &str) -> Option<Cached> {
        let spec = self.spec(key).ok()?;
        self.cached_spec(&spec)
    }

    fn cached_spec(&self, spec: &Spec) -> Option<Cached> {
        let cache = self.opts.cache_dir.as_deref()?;
        let ttl = self.opts.ttl;
        let read = |p: &Path| -> Option<(String, Duration)> {
            let content = std::fs::read_to_string(p).ok()?;
            let age = std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            Some((content, age))
        };
        match spec {
            Spec::Remote(_) => {
                let (content, age) = read(&self.paths(spec)[0])?;
                Some(Cached {
                    content,
                    fresh: age < ttl,
                    age,
                })
            }
            Spec::File(f) => {
                let (content, age) = self.paths(spec).iter().find_map(|p| read(p))?;
                let dir = Self::ref_dir(cache, &f.base, &f.project, f.git_ref.as_deref());
                let immutable =
                    f.git_ref.as_deref().is_some_and(is_sha) || dir.join(".tag").exists();
                Some(Cached {
                    content,
                    fresh: immutable || age < ttl,
                    age,
                })
            }
            Spec::Latest(LatestComponent {
                base,
                project,
                name,
                selector,
            }) => {
                let file_spec =
                    |version: String| Spec::File(component_file(base, project, name, version));
                if let Some((version, age)) = read(&self.paths(spec)[0]) {
                    let file = self.cached_spec(&file_spec(version.trim().to_string()))?;
                    return Some(Cached {
                        content: file.content,
                        fresh: file.fresh && age < ttl,
                        age: age.max(file.age),
                    });
                }
                if !self.opts.offline {
                    return None;
                }
                // Offline without a resolution: the highest cached version that matches.
                let dir = Self::ref_dir(cache, base, project, None);
                let dir = dir.parent()?;
                let names: Vec<String> = std::fs::read_dir(dir)
                    .ok()?
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect();
                let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
                while let Some(v) = select_version(selector, names.iter().copied()) {
                    if let Some(c) = self.cached_spec(&file_spec(v.to_string())) {
                        return Some(c);
                    }
                    names.retain(|n| *n != v);
                }
                None
            }
        }
    }

    /// Fetches `keys` concurrently; what fails keeps its reason for [`Includes::unavailable`], unless
    /// a stale cached copy can stand in (with a warning).
    pub fn fetch(&mut self, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        if self.runtime.is_none() {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => self.runtime = Some(rt),
                Err(e) => {
                    for k in keys {
                        self.fetched
                            .insert(k, Err(format!("cannot start the async runtime: {e}")));
                    }
                    return;
                }
            }
        }
        let mut specs = Vec::new();
        for key in keys {
            match self.spec(&key) {
                Ok(s) => specs.push((key, s)),
                Err(e) => {
                    self.fetched.insert(key, Err(e));
                }
            }
        }
        let fetcher = match Fetcher::new(self.opts.clone()) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                for (k, _) in specs {
                    self.fetched.insert(k, Err(e.clone()));
                }
                return;
            }
        };
        let rt = self.runtime.as_ref().expect("runtime");
        let results: Vec<(String, Spec, Result<Fetched, String>)> = rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (i, (key, spec)) in specs.into_iter().enumerate() {
                let f = fetcher.clone();
                set.spawn(async move {
                    let r = f.fetch(&spec).await;
                    (i, key, spec, r)
                });
            }
            let mut out = Vec::new();
            while let Some(joined) = set.join_next().await {
                if let Ok(r) = joined {
                    out.push(r);
                }
            }
            out.sort_by_key(|r| r.0);
            out.into_iter().map(|(_, k, s, r)| (k, s, r)).collect()
        });
        for (key, spec, result) in results {
            let answer = match result {
                Ok(f) => {
                    if let (Spec::Latest(_), Some(v)) = (&spec, &f.version) {
                        self.versions.insert(key.clone(), v.clone());
                    }
                    self.store(&spec, &f);
                    Ok(f.content)
                }
                Err(why) => match self.cached_spec(&spec) {
                    Some(stale) => {
                        eprintln!(
                            "gantry: warning: include `{key}`: {why}; using the cached copy fetched {} ago",
                            human_age(stale.age)
                        );
                        Ok(stale.content)
                    }
                    None => Err(why),
                },
            };
            self.fetched.insert(key, answer);
        }
    }

    /// Writes a fetched file into the cache (a failure is a warning: the run goes on without it).
    fn store(&self, spec: &Spec, f: &Fetched) {
        let Some(cache) = &self.opts.cache_dir else {
            return;
        };
        let file_spec = match spec {
            Spec::Remote(_) => {
                write_atomic(&self.paths(spec)[0], &f.content);
                return;
            }
            Spec::File(_) => spec.clone(),
            Spec::Latest(l) => {
                let version = f.version.clone().unwrap_or_default();
                write_atomic(&self.paths(spec)[0], &version);
                Spec::File(component_file(&l.base, &l.project, &l.name, version))
            }
        };
        if let Some(p) = self.paths(&file_spec).get(f.candidate) {
            write_atomic(p, &f.content);
        }
        if let Spec::File(file) = &file_spec {
            if let Some(r) = file.git_ref.as_deref().filter(|r| f.tag && !is_sha(r)) {
                let dir = Self::ref_dir(cache, &file.base, &file.project, Some(r));
                write_atomic(&dir.join(".tag"), "");
            }
        }
    }
}

/// The files of component `name` of `project` at `version`.
fn component_file(base: &Url, project: &str, name: &str, version: String) -> ProjectFile {
    ProjectFile {
        base: base.clone(),
        project: project.to_string(),
        git_ref: Some(version),
        candidates: component::files(name),
    }
}

fn remote_path(cache: &Path, url: &Url) -> PathBuf {
    let mut p = cache.join("remote").join(url.scheme()).join(host_port(url));
    let segs: Vec<String> = url
        .path_segments()
        .map(|s| {
            s.map(|seg| match seg {
                "" => "%".to_string(),
                s => s.to_string(),
            })
            .collect()
        })
        .unwrap_or_default();
    let n = segs.len();
    for (i, s) in segs.into_iter().enumerate() {
        if i + 1 == n {
            match url.query() {
                Some(q) => p.push(format!("{s}%3F{}", q.replace('/', "%2F"))),
                None => p.push(s),
            }
        } else {
            p.push(s);
        }
    }
    p
}

fn write_atomic(path: &Path, content: &str) {
    let res = (|| -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("include"),
            std::process::id()
        ));
        std::fs::write(&tmp, content)?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        eprintln!(
            "gantry: warning: cannot write the include cache {}: {e}",
            path.display()
        );
    }
}

fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

/// A fetched file.
struct Fetched {
    content: String,
    /// Which candidate file it is.
    candidate: usize,
    /// The ref is a tag.
    tag: bool,
    /// The version a selector resolved to.
    version: Option<String>,
}

/// Why a file could not be read through the files API.
enum ApiMiss {
    /// The API answered that the file does not exist (the project does).
    NoFile(String),
    /// The API does not know the project, or is no GitLab API: try git.
    TryGit(String),
}

/// A shallow fetch of one ref of one repository, shared by the files read from it.
struct Checkout {
    dir: tempfile::TempDir,
    sha: String,
    tag: bool,
}

type CheckoutCell = Arc<tokio::sync::OnceCell<Result<Checkout, String>>>;

struct Fetcher {
    opts: Options,
    client: reqwest::Client,
    /// The git fallback's fetches, by repository and ref: files of one ref cost one fetch.
    checkouts: Mutex<HashMap<String, CheckoutCell>>,
}

impl Fetcher {
    fn new(opts: Options) -> Result<Fetcher, String> {
        let client = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout)
            .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Fetcher {
            opts,
            client,
            checkouts: Mutex::new(HashMap::new()),
        })
    }

    async fn fetch(&self, spec: &Spec) -> Result<Fetched, String> {
        match spec {
            Spec::Remote(url) => {
                let (status, body) = self.get(url, false).await?;
                if !status.is_success() {
                    return Err(format!(
                        "GET {url} answered {status} (no token is sent to remote URLs)"
                    ));
                }
                Ok(Fetched {
                    content: body,
                    candidate: 0,
                    tag: false,
                    version: None,
                })
            }
            Spec::File(f) => self.file(f).await,
            Spec::Latest(l) => {
                let version = self.resolve(&l.base, &l.project, &l.selector).await?;
                let file = component_file(&l.base, &l.project, &l.name, version.clone());
                let mut f = self.file(&file).await?;
                f.version = Some(version);
                Ok(f)
            }
        }
    }

    /// GET `url` (with the token when `token`): the status and the body (at most [`MAX_BYTES`]).
    async fn get(&self, url: &Url, token: bool) -> Result<(StatusCode, String), String> {
        let mut req = self.client.get(url.clone());
        if token {
            if let Some(t) = self.opts.token_for(url) {
                req = req.header(t.header, &t.value);
            }
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| format!("GET {url} failed: {}", error_chain(&e)))?;
        let status = resp.status();
        let too_big = || format!("GET {url}: the file is larger than {} KiB", MAX_BYTES >> 10);
        if resp.content_length().is_some_and(|n| n > MAX_BYTES as u64) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("GET {url} failed: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_BYTES {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        let body = String::from_utf8(body).map_err(|_| format!("GET {url}: not UTF-8 text"))?;
        Ok((status, body))
    }

    fn api(base: &Url, rest: &str) -> Url {
        let mut s = base.as_str().trim_end_matches('/').to_string();
        s.push_str("/api/v4/");
        s.push_str(rest);
        Url::parse(&s).unwrap_or_else(|_| base.clone())
    }

    /// The first of `f`'s candidates in its project at its ref: the files API, else git.
    async fn file(&self, f: &ProjectFile) -> Result<Fetched, String> {
        let (base, project, git_ref, candidates) = f.parts();
        let enc = utf8_percent_encode(project, SEGMENT).to_string();
        let mut no_file = Vec::new();
        for (i, file) in candidates.iter().enumerate() {
            let mut url = Self::api(
                base,
                &format!(
                    "projects/{enc}/repository/files/{}/raw",
                    utf8_percent_encode(file, SEGMENT)
                ),
            );
            if let Some(r) = git_ref {
                url.query_pairs_mut().append_pair("ref", r);
            }
            match self.api_file(&url).await {
                Ok(content) => {
                    let tag = match git_ref {
                        Some(r) if is_sha(r) => true,
                        Some(r) => self.is_tag(base, &enc, r).await,
                        None => false,
                    };
                    return Ok(Fetched {
                        content,
                        candidate: i,
                        tag,
                        version: None,
                    });
                }
                Err(ApiMiss::NoFile(why)) => no_file.push(why),
                Err(ApiMiss::TryGit(why)) => {
                    return self.git(f).await.map_err(|g| format!("{why}; then {g}"));
                }
            }
        }
        let at = git_ref.unwrap_or("its default branch");
        Err(format!(
            "project `{project}` has no file {} at `{at}` ({})",
            either(candidates),
            no_file.join("; ")
        ))
    }

    async fn api_file(&self, url: &Url) -> Result<String, ApiMiss> {
        let (status, body) = self.get(url, true).await.map_err(ApiMiss::TryGit)?;
        if status.is_success() {
            return Ok(body);
        }
        let why = format!(
            "GET {url} answered {status} ({})",
            self.opts.token_note(url)
        );
        if status == StatusCode::NOT_FOUND {
            // GitLab says which: `{"message":"404 File Not Found"}` or `404 Project Not Found`.
            if body.contains("File Not Found") {
                return Err(ApiMiss::NoFile(why));
            }
            return Err(ApiMiss::TryGit(why));
        }
        Err(ApiMiss::TryGit(why))
    }

    /// Whether `git_ref` is a tag of project `enc` (URL-encoded), as the tags API says.
    async fn is_tag(&self, base: &Url, enc: &str, git_ref: &str) -> bool {
        let url = Self::api(
            base,
            &format!(
                "projects/{enc}/repository/tags/{}",
                utf8_percent_encode(git_ref, SEGMENT)
            ),
        );
        matches!(self.get(&url, true).await, Ok((s, _)) if s.is_success())
    }

    /// The release that `selector` selects: from the releases API, else the repository's tags.
    async fn resolve(&self, base: &Url, project: &str, selector: &str) -> Result<String, String> {
        let enc = utf8_percent_encode(project, SEGMENT).to_string();
        let url = Self::api(base, &format!("projects/{enc}/releases?per_page=100"));
        let tags: Vec<String> = match self.get(&url, true).await {
            Ok((s, body)) if s.is_success() => {
                serde_json::from_str::<Vec<serde_json::Value>>(&body)
                    .map_err(|e| format!("GET {url}: not a list of releases: {e}"))?
                    .iter()
                    .filter_map(|r| r["tag_name"].as_str().map(String::from))
                    .collect()
            }
            api => {
                let why = match api {
                    Ok((s, _)) => {
                        format!("GET {url} answered {s} ({})", self.opts.token_note(&url))
                    }
                    Err(e) => e,
                };
                let repo = repo_url(base, project);
                let out = self
                    .run_git(
                        None,
                        self.opts.token_for(base),
                        &["ls-remote", "--tags", "--refs", repo.as_str()],
                    )
                    .await
                    .map_err(|g| format!("{why}; then {g}"))?;
                out.lines()
                    .filter_map(|l| l.split_once("refs/tags/").map(|(_, t)| t.to_string()))
                    .collect()
            }
        };
        select_version(selector, tags.iter().map(String::as_str))
            .map(String::from)
            .ok_or_else(|| {
                format!("project `{project}` has no release that `{selector}` selects (no semantic version tag matches)")
            })
    }

    /// The environment of git processes: no prompt, the token in an HTTP header (never in argv).
    fn git_env(token: Option<&Token>) -> Vec<(String, String)> {
        use base64::Engine as _;
        let mut env = vec![("GIT_TERMINAL_PROMPT".to_string(), "0".to_string())];
        if let Some(t) = token {
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", t.git_user, t.value));
            env.push(("GIT_CONFIG_COUNT".into(), "1".into()));
            env.push(("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into()));
            env.push((
                "GIT_CONFIG_VALUE_0".into(),
                format!("Authorization: Basic {basic}"),
            ));
        }
        env
    }

    async fn run_git(
        &self,
        dir: Option<&Path>,
        token: Option<&Token>,
        args: &[&str],
    ) -> Result<String, String> {
        let mut cmd = tokio::process::Command::new("git");
        if let Some(d) = dir {
            cmd.arg("-C").arg(d);
        }
        cmd.args(args)
            .envs(Self::git_env(token))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let what = format!("`git {}`", args.join(" "));
        let out = tokio::time::timeout(self.opts.timeout * 6, cmd.output())
            .await
            .map_err(|_| format!("{what} timed out"))?
            .map_err(|e| format!("{what} cannot start: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err.trim().lines().last().unwrap_or("").to_string();
            return Err(format!("{what} failed: {err}"));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The git fallback: a shallow fetch of the ref (blobs on demand where the server can), then the
    /// file.
    async fn git(&self, f: &ProjectFile) -> Result<Fetched, String> {
        let (base, project, git_ref, candidates) = f.parts();
        let repo = repo_url(base, project);
        let auth = self.opts.token_for(base);
        let cell = {
            let mut m = self
                .checkouts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            m.entry(format!("{repo}\n{}", git_ref.unwrap_or("HEAD")))
                .or_default()
                .clone()
        };
        let co = cell
            .get_or_init(|| self.shallow(&repo, auth, git_ref))
            .await
            .as_ref()
            .map_err(Clone::clone)?;
        let (d, tag) = (Some(co.dir.path()), co.tag);
        for (i, file) in candidates.iter().enumerate() {
            let object = format!("{}:{file}", co.sha);
            let Ok(size) = self.run_git(d, auth, &["cat-file", "-s", &object]).await else {
                continue;
            };
            if size.trim().parse::<usize>().unwrap_or(usize::MAX) > MAX_BYTES {
                return Err(format!(
                    "`{file}` of project `{project}` is larger than {} KiB",
                    MAX_BYTES >> 10
                ));
            }
            let content = self
                .run_git(d, auth, &["cat-file", "blob", &object])
                .await?;
            return Ok(Fetched {
                content,
                candidate: i,
                tag,
                version: None,
            });
        }
        Err(format!(
            "project `{project}` has no file {} at `{}` (git at {repo})",
            either(candidates),
            git_ref.unwrap_or("HEAD")
        ))
    }

    /// A shallow fetch of `git_ref` (`None`: `HEAD`) of `repo` into a scratch repository, blobs on
    /// demand where the server can filter them; whether the ref is a tag comes from `git ls-remote`.
    async fn shallow(
        &self,
        repo: &str,
        auth: Option<&Token>,
        git_ref: Option<&str>,
    ) -> Result<Checkout, String> {
        let token = match auth {
            Some(t) => format!("with the token from {}", t.from),
            None => "no token sent".into(),
        };
        let (want, tag) = match git_ref {
            None => ("HEAD".to_string(), false),
            Some(r) if is_sha(r) => (r.to_string(), true),
            Some(r) => {
                let out = self
                    .run_git(None, auth, &["ls-remote", repo, r])
                    .await
                    .map_err(|e| format!("git at {repo} ({token}): {e}"))?;
                let tag_ref = format!("refs/tags/{r}");
                let head_ref = format!("refs/heads/{r}");
                let refs: Vec<&str> = out.lines().filter_map(|l| l.split('\t').nth(1)).collect();
                if refs.contains(&tag_ref.as_str()) {
                    (tag_ref, true)
                } else if refs.contains(&head_ref.as_str()) {
                    (head_ref, false)
                } else {
                    return Err(format!("git at {repo} ({token}): no branch or tag `{r}`"));
                }
            }
        };
        let dir =
            tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let d = Some(dir.path());
        let setup: [&[&str]; 4] = [
            &["init", "-q", "--bare"],
            &["remote", "add", "origin", repo],
            &["config", "remote.origin.promisor", "true"],
            &["config", "remote.origin.partialclonefilter", "blob:none"],
        ];
        for args in setup {
            self.run_git(d, None, args).await?;
        }
        self.run_git(
            d,
            auth,
            &[
                "fetch",
                "-q",
                "--no-tags",
                "--depth",
                "1",
                "--filter=blob:none",
                "origin",
                &want,
            ],
        )
        .await
        .map_err(|e| format!("git at {repo} ({token}): {e}"))?;
        let sha = self
            .run_git(d, None, &["rev-parse", "FETCH_HEAD^{commit}"])
            .await?
            .trim()
            .to_string();
        Ok(Checkout { dir, sha, tag })
    }
}

fn repo_url(base: &Url, project: &str) -> String {
    format!("{}/{project}.git", base.as_str().trim_end_matches('/'))
}

/// The candidate files of an include, `` `a` or `b` ``.
fn either(candidates: &[String]) -> String {
    candidates
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_to_the_instance_only() {
        let env = |k: &str| match k {
            "GITLAB_TOKEN" => Some("secret".to_string()),
            "HOME" => Some("/home/u".to_string()),
            _ => None,
        };
        let ctx = Context::default();
        let o = Options::new(Some("https://gitlab.example.com"), false, &[], &ctx, &env).unwrap();
        let at = |u: &str| o.token_for(&Url::parse(u).unwrap()).map(|t| t.header);
        assert_eq!(
            at("https://gitlab.example.com/api/v4/x"),
            Some("PRIVATE-TOKEN")
        );
        assert_eq!(at("https://other.example.com/api/v4/x"), None);
        assert_eq!(at("http://gitlab.example.com/api/v4/x"), None);
        assert_eq!(at("https://gitlab.example.com:8443/x"), None);
        assert_eq!(
            o.cache_dir.as_deref(),
            Some(Path::new("/home/u/.cache/gantry/includes"))
        );
        // CI_SERVER_URL, from a variable, wins over the flag.
        let vars = [Variable {
            key: "CI_SERVER_URL".into(),
            value: "http://127.0.0.1:1234".into(),
            expand: false,
            masked: false,
        }];
        let o = Options::new(Some("https://gitlab.example.com"), false, &vars, &ctx, &env).unwrap();
        assert_eq!(o.instance.as_str(), "http://127.0.0.1:1234/");
        assert!(Options::new(Some("ftp://x"), false, &[], &ctx, &env).is_err());
    }

    #[test]
    fn remote_urls_map_to_cache_paths() {
        let c = Path::new("/c");
        let p = |u: &str| remote_path(c, &Url::parse(u).unwrap());
        assert_eq!(
            p("https://example.com/a/b.yml"),
            Path::new("/c/remote/https/example.com/a/b.yml")
        );
        assert_eq!(
            p("http://127.0.0.1:8080/x.yml?ref=a/b"),
            Path::new("/c/remote/http/127.0.0.1:8080/x.yml%3Fref=a%2Fb")
        );
    }
}
