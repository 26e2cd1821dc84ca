//! What the compiler is told about the world: file contents (through [`Sources`]), git facts and
//! caller variables (in a [`Context`]). The caller does the IO; this crate only reads what it is given.

use crate::plan::Variable;
use crate::vars::slug;

/// Read access to the project's files, provided by the caller.
pub trait Sources {
    /// The content of `path` (relative to the project directory), or why it cannot be read.
    ///
    /// # Errors
    /// The file does not exist or cannot be read.
    fn read(&self, path: &str) -> Result<String, String>;
    /// Every file of the project (relative paths with `/`), for `include:local` globs and `rules:exists`.
    fn files(&self) -> &[String];
    /// The cached content of a remote include (`include:remote`, `include:project`, `include:template`,
    /// `include:component`), keyed by a description such as the URL. `None` when it is not cached.
    fn remote(&self, _key: &str) -> Option<String> {
        None
    }
    /// Why the remote include `key` is not available, when [`Sources::remote`] answered `None` and
    /// the implementation knows (say, the fetch failed); it becomes the include's error message.
    /// `None` keeps the default message about the local include cache.
    fn remote_unavailable(&self, _key: &str) -> Option<String> {
        None
    }
    /// Where a local include (`path`, without its leading `/`) inside the remote include `parent`
    /// (a key as for [`Sources::remote`]) is read: GitLab keeps the project and the commit of the
    /// file that includes it. `Ok(None)`: in this project ([`Sources::read`]); `Ok(Some(key))`: the
    /// remote include `key`; `Err`: nowhere, and why. See [`nested_local_key`] for the default.
    ///
    /// # Errors
    /// `parent` has no project (a remote file or a template).
    fn nested_local(&self, parent: &str, path: &str) -> Result<Option<String>, String> {
        nested_local_key(parent, path, None).map(Some)
    }
    /// Files changed, for `rules:changes` and `only:changes`; `None` means "treat every `changes` as
    /// true". Asked only when the pipeline uses `changes`, so that an implementation can compute it
    /// lazily.
    fn changed_files(&self) -> Option<&[String]> {
        None
    }
}

/// The remote includes that a [`Sources`] was asked for and could not answer yet, each once, in
/// the order asked: what its caller fetches before it compiles again.
#[derive(Debug, Default)]
pub struct MissingRemotes(std::sync::Mutex<Vec<String>>);

impl MissingRemotes {
    /// Records `key`, unless it is recorded already.
    pub fn add(&self, key: &str) {
        let mut keys = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !keys.iter().any(|k| k == key) {
            keys.push(key.to_string());
        }
    }

    /// The keys recorded, in the order first asked; clears the list.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// An error with its causes, `a: b: c` (a cause whose text the message holds already is left
/// out): how a failed fetch of a remote include says why, in [`Sources::remote_unavailable`].
#[must_use]
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

/// The key of local include `path` inside the remote include `parent`, as GitLab resolves it
/// (gitlab-foss MR 24356): in a `project:PROJECT@REF:FILE` file it is `project:PROJECT@REF:PATH`; in
/// a `component:FQDN/PROJECT/NAME@VERSION` file it is `project:PROJECT@VERSION:PATH`, with
/// `version` (what a `~latest` or partial version resolved to) in place of `VERSION` when given. A
/// remote file or a template has no project: an error, as in GitLab ("does not have project").
///
/// # Errors
/// `parent` has no project, or is not a remote include key.
pub fn nested_local_key(parent: &str, path: &str, version: Option<&str>) -> Result<String, String> {
    let (kind, target) = parent.split_once(':').unwrap_or((parent, ""));
    match kind {
        "project" => {
            // Project paths hold no `@`, and refs no `:`.
            let (project, rest) = target.split_once('@').unwrap_or((target, "HEAD"));
            let git_ref = rest.split_once(':').map_or(rest, |(r, _)| r);
            Ok(format!("project:{project}@{git_ref}:{path}"))
        }
        "component" => {
            let c = crate::component::Address::parse(target, 1)?;
            let version = version.unwrap_or(&c.version);
            Ok(format!("project:{}@{version}:{path}", c.project))
        }
        "remote" | "template" => Err(format!(
            "a local include is read in the project of the file that includes it, and an \
             `include:{kind}` file has no project; include it with `include:project` or \
             `include:{kind}` instead"
        )),
        _ => Err(format!("`{parent}` is not a remote include")),
    }
}

/// In-memory [`Sources`], for tests and fuzzing.
#[derive(Clone, Debug, Default)]
pub struct MemSources {
    /// `(path, content)` pairs.
    pub files: Vec<(String, String)>,
    /// What [`Sources::changed_files`] answers.
    pub changed: Option<Vec<String>>,
    names: Vec<String>,
}

impl MemSources {
    /// Sources holding `files`.
    #[must_use]
    pub fn new(files: Vec<(String, String)>) -> MemSources {
        let names = files.iter().map(|(n, _)| n.clone()).collect();
        MemSources {
            files,
            changed: None,
            names,
        }
    }
}

impl Sources for MemSources {
    fn read(&self, path: &str) -> Result<String, String> {
        self.files
            .iter()
            .find(|(n, _)| n == path)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| "no such file".to_string())
    }
    fn files(&self) -> &[String] {
        &self.names
    }
    fn changed_files(&self) -> Option<&[String]> {
        self.changed.as_deref()
    }
}

/// Facts about the repository and the user, read from git by the caller.
#[derive(Clone, Debug, Default)]
pub struct GitFacts {
    /// `HEAD`'s full SHA.
    pub sha: String,
    /// The parent commit's SHA (or 40 zeros).
    pub before_sha: String,
    /// The current branch, unless detached.
    pub branch: Option<String>,
    /// The tag of a tag pipeline: set when `HEAD` is detached at a tag (a branch checked out is a
    /// branch pipeline, as a push of it to GitLab is, whatever tags point at its commit).
    pub tag: Option<String>,
    /// The full commit message.
    pub message: String,
    /// Commit time as ISO 8601 (`2024-01-02T03:04:05+00:00`).
    pub timestamp: String,
    /// Commit author as `Name <email>`.
    pub author: String,
    /// The default branch (`origin/HEAD`, else `main`).
    pub default_branch: String,
    /// The `origin` remote URL, if any.
    pub remote_url: Option<String>,
    /// `user.name`.
    pub user_name: String,
    /// `user.email`.
    pub user_email: String,
}

/// Everything the compiler needs besides the files.
#[derive(Clone, Debug)]
pub struct Context {
    /// The pipeline file, relative to the project directory.
    pub file: String,
    /// The project directory's absolute path (`CI_PROJECT_DIR` for rules and `--preview`).
    pub project_dir: String,
    /// The project directory's name, used when there is no remote to name the project.
    pub project_dir_name: String,
    /// Facts from git.
    pub git: GitFacts,
    /// `CI_PIPELINE_SOURCE` (`push` locally by default).
    pub pipeline_source: String,
    /// `CI_PIPELINE_ID` / `CI_PIPELINE_IID`.
    pub pipeline_id: u64,
    /// The caller's variables (`--variable`, variables files), highest precedence.
    pub cli_variables: Vec<Variable>,
    /// The GitLab instance's URL (`--gitlab-url`), for `CI_SERVER_URL` and the variables derived
    /// from it; `None`: `https://` and the host of the remote.
    pub server_url: Option<String>,
}

impl Default for Context {
    fn default() -> Context {
        Context {
            file: ".gitlab-ci.yml".into(),
            project_dir: "/builds/project".into(),
            project_dir_name: "project".into(),
            git: GitFacts::default(),
            pipeline_source: "push".into(),
            pipeline_id: 1,
            cli_variables: Vec::new(),
            server_url: None,
        }
    }
}

/// Where the project lives on its forge, derived from the remote URL.
struct ProjectLocation {
    server_host: String,
    server_url: String,
    namespace: String,
    name: String,
}

fn project_location(ctx: &Context) -> ProjectLocation {
    let fallback = || ProjectLocation {
        server_host: "gitlab.com".into(),
        server_url: "https://gitlab.com".into(),
        namespace: "local".into(),
        name: ctx.project_dir_name.clone(),
    };
    let Some(url) = ctx.git.remote_url.as_deref() else {
        return fallback();
    };
    // git@host:group/sub/project.git, ssh://git@host:22/group/project.git, https://host/group/project.git
    let (host, path) = if let Some(rest) = url.split_once("://").map(|(_, r)| r) {
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        match rest.split_once('/') {
            Some((h, p)) => (h.split(':').next().unwrap_or(h).to_string(), p.to_string()),
            None => return fallback(),
        }
    } else if let Some((left, p)) = url.split_once(':') {
        let h = left.rsplit_once('@').map_or(left, |(_, h)| h);
        (h.to_string(), p.to_string())
    } else {
        return fallback();
    };
    let path = path.trim_end_matches('/').trim_end_matches(".git");
    let Some((namespace, name)) = path.rsplit_once('/') else {
        return fallback();
    };
    if host.is_empty() || name.is_empty() {
        return fallback();
    }
    ProjectLocation {
        server_url: format!("https://{host}"),
        server_host: host,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

/// The GitLab instance as its `CI_SERVER_*` variables describe it.
struct Server {
    url: String,
    host: String,
    protocol: String,
    port: String,
    /// The host, with the port when the URL names one (GitLab: `gitlab.example.com:8080`).
    fqdn: String,
}

impl Server {
    /// `SCHEME://HOST[:PORT][/PATH]`; `None` when `url` is not such a URL.
    fn parse(url: &str) -> Option<Server> {
        let url = url.trim_end_matches('/');
        let (protocol, rest) = url.split_once("://")?;
        let authority = rest.split('/').next().unwrap_or_default();
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
            _ => (authority, None),
        };
        if host.is_empty() || protocol.is_empty() {
            return None;
        }
        let default_port = if protocol == "http" { "80" } else { "443" };
        Some(Server {
            url: url.to_string(),
            host: host.to_string(),
            protocol: protocol.to_string(),
            port: port.unwrap_or(default_port).to_string(),
            fqdn: authority.to_string(),
        })
    }
}

/// The predefined pipeline variables GitLab documents that can be derived locally.
#[must_use]
pub fn predefined_variables(ctx: &Context) -> Vec<Variable> {
    let g = &ctx.git;
    let loc = project_location(ctx);
    let project_path = format!("{}/{}", loc.namespace, loc.name);
    // A `CI_COMMIT_TAG` the caller sets makes a tag pipeline, as a checked-out tag does.
    let tag = ctx
        .cli_variables
        .iter()
        .rev()
        .find(|v| v.key == "CI_COMMIT_TAG")
        .map(|v| v.value.clone())
        .filter(|t| !t.is_empty())
        .or_else(|| g.tag.clone());
    let ref_name = tag
        .clone()
        .or_else(|| g.branch.clone())
        .unwrap_or_else(|| g.sha.clone());
    let short_sha: String = g.sha.chars().take(8).collect();
    let title = g.message.lines().next().unwrap_or_default().to_string();
    let description = g
        .message
        .split_once('\n')
        .map(|(_, d)| d.trim_start_matches('\n').to_string())
        .unwrap_or_default();
    let login = g
        .user_email
        .split('@')
        .next()
        .unwrap_or_default()
        .to_string();
    let server = ctx
        .server_url
        .as_deref()
        .and_then(Server::parse)
        .unwrap_or_else(|| Server {
            url: loc.server_url.clone(),
            host: loc.server_host.clone(),
            protocol: "https".into(),
            port: "443".into(),
            fqdn: loc.server_host.clone(),
        });
    let project_url = format!("{}/{}", server.url, project_path);
    let mut v = vec![
        ("CI", "true".to_string()),
        ("GITLAB_CI", "true".to_string()),
        ("CI_SERVER", "yes".to_string()),
        ("CI_SERVER_NAME", "GitLab".to_string()),
        ("CI_SERVER_URL", server.url.clone()),
        ("CI_SERVER_HOST", server.host.clone()),
        ("CI_SERVER_PROTOCOL", server.protocol),
        ("CI_SERVER_PORT", server.port),
        ("CI_SERVER_FQDN", server.fqdn),
        ("CI_API_V4_URL", format!("{}/api/v4", server.url)),
        ("CI_REGISTRY", format!("registry.{}", loc.server_host)),
        (
            "CI_REGISTRY_IMAGE",
            format!(
                "registry.{}/{}",
                loc.server_host,
                project_path.to_lowercase()
            ),
        ),
        ("CI_COMMIT_SHA", g.sha.clone()),
        ("CI_COMMIT_SHORT_SHA", short_sha),
        ("CI_COMMIT_BEFORE_SHA", g.before_sha.clone()),
        ("CI_COMMIT_REF_NAME", ref_name.clone()),
        ("CI_COMMIT_REF_SLUG", slug(&ref_name)),
        ("CI_COMMIT_REF_PROTECTED", "false".to_string()),
        ("CI_COMMIT_MESSAGE", g.message.clone()),
        ("CI_COMMIT_TITLE", title),
        ("CI_COMMIT_DESCRIPTION", description),
        ("CI_COMMIT_TIMESTAMP", g.timestamp.clone()),
        ("CI_COMMIT_AUTHOR", g.author.clone()),
        ("CI_DEFAULT_BRANCH", g.default_branch.clone()),
        ("CI_PIPELINE_ID", ctx.pipeline_id.to_string()),
        ("CI_PIPELINE_IID", ctx.pipeline_id.to_string()),
        ("CI_PIPELINE_SOURCE", ctx.pipeline_source.clone()),
        (
            "CI_PIPELINE_URL",
            format!("{project_url}/-/pipelines/{}", ctx.pipeline_id),
        ),
        ("CI_PIPELINE_CREATED_AT", g.timestamp.clone()),
        ("CI_PROJECT_DIR", ctx.project_dir.clone()),
        ("CI_PROJECT_NAME", loc.name.clone()),
        ("CI_PROJECT_TITLE", loc.name.clone()),
        ("CI_PROJECT_PATH", project_path.clone()),
        ("CI_PROJECT_PATH_SLUG", slug(&project_path)),
        ("CI_PROJECT_NAMESPACE", loc.namespace.clone()),
        (
            "CI_PROJECT_ROOT_NAMESPACE",
            loc.namespace
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        ("CI_PROJECT_URL", project_url),
        ("CI_PROJECT_VISIBILITY", "internal".to_string()),
        ("CI_PROJECT_ID", "1".to_string()),
        ("CI_CONFIG_PATH", ctx.file.clone()),
        (
            "CI_BUILDS_DIR",
            ctx.project_dir
                .rsplit_once('/')
                .map(|(d, _)| d.to_string())
                .unwrap_or_default(),
        ),
        ("GITLAB_USER_LOGIN", login),
        ("GITLAB_USER_EMAIL", g.user_email.clone()),
        ("GITLAB_USER_NAME", g.user_name.clone()),
        ("GITLAB_USER_ID", "1".to_string()),
        ("CI_RUNNER_DESCRIPTION", "gantry".to_string()),
        ("CI_RUNNER_TAGS", "[]".to_string()),
        (
            "CI_RUNNER_EXECUTABLE_ARCH",
            format!("{}/{}", std::env::consts::OS, arch()),
        ),
        ("CI_JOB_MANUAL", String::new()),
    ];
    if let Some(b) = &g.branch {
        if tag.is_none() {
            v.push(("CI_COMMIT_BRANCH", b.clone()));
        }
    }
    if let Some(t) = &tag {
        v.push(("CI_COMMIT_TAG", t.clone()));
        v.push(("CI_COMMIT_TAG_MESSAGE", g.message.clone()));
    }
    v.retain(|(k, val)| !(val.is_empty() && *k == "CI_JOB_MANUAL"));
    v.into_iter()
        .map(|(k, val)| Variable::new(k, val))
        .map(|mut var| {
            // Predefined values are literal: a `$` in a commit message must not be expanded.
            var.expand = false;
            var
        })
        .collect()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(url: Option<&str>) -> std::collections::HashMap<String, String> {
        let ctx = Context {
            git: GitFacts {
                sha: "0123456789abcdef0123456789abcdef01234567".into(),
                branch: Some("Feature/X".into()),
                message: "Title line\n\nBody $HOME".into(),
                remote_url: url.map(str::to_string),
                user_email: "jane@example.com".into(),
                ..GitFacts::default()
            },
            ..Context::default()
        };
        predefined_variables(&ctx)
            .into_iter()
            .map(|v| (v.key, v.value))
            .collect()
    }

    #[test]
    fn the_instance_url_sets_the_server_variables() {
        let with = |server: &str| {
            let ctx = Context {
                server_url: Some(server.into()),
                git: GitFacts {
                    remote_url: Some("git@gitlab.example.com:g/p.git".into()),
                    ..GitFacts::default()
                },
                ..Context::default()
            };
            let v: std::collections::HashMap<String, String> = predefined_variables(&ctx)
                .into_iter()
                .map(|v| (v.key, v.value))
                .collect();
            [
                "CI_SERVER_URL",
                "CI_SERVER_HOST",
                "CI_SERVER_PORT",
                "CI_SERVER_PROTOCOL",
                "CI_SERVER_FQDN",
                "CI_API_V4_URL",
                "CI_PROJECT_URL",
            ]
            .map(|k| v[k].clone())
        };
        assert_eq!(
            with("http://127.0.0.1:8080/gitlab/"),
            [
                "http://127.0.0.1:8080/gitlab",
                "127.0.0.1",
                "8080",
                "http",
                "127.0.0.1:8080",
                "http://127.0.0.1:8080/gitlab/api/v4",
                "http://127.0.0.1:8080/gitlab/g/p",
            ]
        );
        assert_eq!(
            with("https://git.example.org"),
            [
                "https://git.example.org",
                "git.example.org",
                "443",
                "https",
                "git.example.org",
                "https://git.example.org/api/v4",
                "https://git.example.org/g/p",
            ]
        );
    }

    #[test]
    fn project_from_ssh_and_https_remotes() {
        for url in [
            "git@gitlab.example.com:group/sub/proj.git",
            "https://gitlab.example.com/group/sub/proj.git",
            "ssh://git@gitlab.example.com:2222/group/sub/proj.git",
        ] {
            let v = vars(Some(url));
            assert_eq!(v["CI_PROJECT_PATH"], "group/sub/proj", "{url}");
            assert_eq!(v["CI_PROJECT_NAMESPACE"], "group/sub", "{url}");
            assert_eq!(v["CI_SERVER_HOST"], "gitlab.example.com", "{url}");
            assert_eq!(
                v["CI_PROJECT_URL"], "https://gitlab.example.com/group/sub/proj",
                "{url}"
            );
        }
    }

    #[test]
    fn commit_variables() {
        let v = vars(None);
        assert_eq!(v["CI_COMMIT_SHORT_SHA"], "01234567");
        assert_eq!(v["CI_COMMIT_REF_SLUG"], "feature-x");
        assert_eq!(v["CI_COMMIT_BRANCH"], "Feature/X");
        assert_eq!(v["CI_COMMIT_TITLE"], "Title line");
        assert_eq!(v["CI_COMMIT_DESCRIPTION"], "Body $HOME");
        assert_eq!(v["GITLAB_USER_LOGIN"], "jane");
        assert!(!v.contains_key("CI_COMMIT_TAG"));
    }
}
