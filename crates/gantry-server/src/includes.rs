//! The includes the server's compiler fetches from elsewhere than the pipeline's commit (`remote`,
//! `project`, `component`, `template`), for the processor in `intake`.
//!
//! The compiler is synchronous and does no IO: it asks [`Sources::remote`] for an include's content
//! by key (`remote:URL`, `project:NAME@REF:FILE`, `template:NAME`, `component:PATH`). The processor
//! therefore compiles, collects the keys the compile asked for and did not get ([`WithRemotes`]),
//! fetches them here, and compiles again with them, for a bounded number of rounds (an included
//! file may include more).
//!
//! - `include:remote`: an `http` or `https` URL, fetched with a 10 s timeout and at most 1 MiB.
//!   Only from public addresses unless `allow_local_includes` is set, as GitLab's outbound
//!   requests: the URL comes from a repository, and whoever can push must not make the server
//!   read its own network (`http://127.0.0.1:8080/…`, a cloud metadata address, an internal host).
//!   The URL's host is resolved and refused when any of its addresses is not public (a permanent
//!   failure, naming the address); the HTTP client itself resolves through [`PublicOnly`], which
//!   drops non-public addresses, so a name that changes its answer between the two lookups or a
//!   redirect to an internal name gets nowhere; a redirect to a non-public IP literal is refused
//!   by the redirect policy.
//! - `include:project`: a file of another project registered on this server (by its name), at the
//!   given ref (`HEAD`: the project's default branch), read from that project's mirror after
//!   fetching the ref into it. Only when that project allows it: a project may include its own
//!   files; another's only when its `include_allowed_from` lists the including project's name or a
//!   pattern matching it (the included project decides, as GitLab's CI/CD job token scope does).
//!   The check is against the pipeline's project, for nested includes too.
//! - `include:component`: `HOST/NAME/COMPONENT@VERSION`, where `HOST` is this server's own (the host and
//!   port of `external_url`, or the listen address) and `NAME` a project registered here: the
//!   file `templates/COMPONENT.yml`, else `templates/COMPONENT/template.yml`, read from that project
//!   as for `include:project` (the same `include_allowed_from` check). `VERSION` is a commit SHA, a
//!   tag or a branch; `~latest`, `1` or `1.2` select the highest semantic version tag of the project's
//!   repository that matches (pre-releases excluded; the server has no releases, so every such tag
//!   counts as released). A component of another host is refused: the server cannot ask another
//!   instance for its projects. A local include inside a component (or inside an `include:project`
//!   file) is a file of that project at that version, asked for as `project:NAME@VERSION:FILE`;
//!   for `~latest`, `1` or `1.2` that is the tag the version selects.
//! - `include:template`: `lib/gitlab/ci/templates/NAME` of project `gitlab-org/gitlab` at `master`,
//!   through the repository files API of the GitLab instance set as `templates_url`, fetched as an
//!   `include:remote` (the same limits and address checks). Without `templates_url`, the error says
//!   to set it.
//!
//! A failure is [`Fetched::Transient`] when another attempt may succeed (the host cannot be
//! reached, a timeout, an answer of 5xx or 429, a repository that cannot be fetched, a store
//! error): the delivery is retried later, and on its last attempt the error becomes the include's
//! positioned compile error. Every other failure (a 404, a file too large, no such project or file,
//! a project that does not allow the include, a URL that is not http or https) is
//! [`Fetched::Permanent`]: the compile error at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use gantry_pipeline::Sources;
use gantry_pipeline::context::{MissingRemotes, error_chain};

use crate::git;
use crate::projects::LoadedProject;
use crate::state::AppState;

/// How many times a delivery's configuration is compiled at most, fetching the remote includes
/// each compile asked for in between (an included file may include more).
pub(crate) const MAX_INCLUDE_ROUNDS: usize = 6;

/// The largest remote include, in bytes.
pub(crate) const MAX_BYTES: usize = 1 << 20;
/// How long fetching one remote include may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the fetch of one remote include gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fetched {
    /// The content.
    Content(String),
    /// Why not, when another attempt later may succeed.
    Transient(String),
    /// Why not, when another attempt would fail the same way.
    Permanent(String),
}

/// Remote includes by key: the content, or why it is not available.
pub(crate) type Remotes = HashMap<String, Result<String, String>>;

/// A commit's files plus the remote includes fetched so far; records the keys asked for that were
/// not fetched yet.
pub(crate) struct WithRemotes<'a> {
    inner: &'a git::GitSources,
    remotes: &'a Remotes,
    /// The last round: keys not fetched yet will not be, and say why.
    last_round: bool,
    missing: MissingRemotes,
}

impl<'a> WithRemotes<'a> {
    pub(crate) fn new(
        inner: &'a git::GitSources,
        remotes: &'a Remotes,
        last_round: bool,
    ) -> WithRemotes<'a> {
        WithRemotes {
            inner,
            remotes,
            last_round,
            missing: MissingRemotes::default(),
        }
    }

    /// The keys the compiler asked for that are not fetched yet, each once, in the order asked.
    pub(crate) fn missing(self) -> Vec<String> {
        self.missing.take()
    }
}

impl Sources for WithRemotes<'_> {
    fn read(&self, path: &str) -> Result<String, String> {
        self.inner.read(path)
    }

    fn files(&self) -> &[String] {
        self.inner.files()
    }

    fn changed_files(&self) -> Option<&[String]> {
        self.inner.changed_files()
    }

    fn remote(&self, key: &str) -> Option<String> {
        match self.remotes.get(key) {
            Some(Ok(content)) => Some(content.clone()),
            Some(Err(_)) => None,
            None => {
                self.missing.add(key);
                None
            }
        }
    }

    fn remote_unavailable(&self, key: &str) -> Option<String> {
        match self.remotes.get(key) {
            Some(Err(why)) => Some(why.clone()),
            Some(Ok(_)) => None,
            None if self.last_round => Some(format!(
                "not fetched: remote includes nest more than {} levels deep",
                MAX_INCLUDE_ROUNDS - 1
            )),
            None => Some("not fetched".into()),
        }
    }
}

/// Fetches every key for a pipeline of project `from`, concurrently.
pub(crate) async fn fetch_all(
    state: &AppState,
    from: &str,
    keys: Vec<String>,
) -> Vec<(String, Fetched)> {
    let mut set = tokio::task::JoinSet::new();
    for (i, key) in keys.iter().enumerate() {
        let state = state.clone();
        let key = key.clone();
        let from = from.to_string();
        set.spawn(async move { (i, fetch(&state, &from, &key).await) });
    }
    let mut out: Vec<Option<Fetched>> = vec![None; keys.len()];
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, f)) => out[i] = Some(f),
            Err(e) => tracing::warn!(error = %e, "a remote include fetch panicked"),
        }
    }
    keys.into_iter()
        .zip(out)
        .map(|(k, f)| {
            let f = f.unwrap_or_else(|| Fetched::Permanent("the fetch panicked".into()));
            (k, f)
        })
        .collect()
}

/// Fetches one remote include for a pipeline of project `from`.
pub(crate) async fn fetch(state: &AppState, from: &str, key: &str) -> Fetched {
    let (kind, target) = key.split_once(':').unwrap_or((key, ""));
    match kind {
        "remote" => fetch_url(target, state.config.allow_local_includes).await,
        "project" => fetch_project(state, from, target).await,
        "component" => fetch_component(state, from, target).await,
        "template" => fetch_template(state, target).await,
        _ => Fetched::Permanent(format!(
            "`include:{kind}` is not supported by gantry server"
        )),
    }
}

/// `include:template`: from the `gitlab-org/gitlab` project of the instance at `templates_url`.
async fn fetch_template(state: &AppState, name: &str) -> Fetched {
    let Some(base) = &state.config.templates_url else {
        return Fetched::Permanent(
            "gantry server needs the setting `templates_url` (a GitLab instance, such as \
             https://gitlab.com) to include templates; or copy the template into the repository \
             and use `include:local`"
                .into(),
        );
    };
    if name
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Fetched::Permanent(format!("`{name}` is not a template name"));
    }
    // Everything but unreserved characters escaped, `/` too, as GitLab's API wants a file path.
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let file =
        percent_encoding::utf8_percent_encode(&format!("lib/gitlab/ci/templates/{name}"), SEGMENT)
            .to_string();
    let url = format!(
        "{base}/api/v4/projects/gitlab-org%2Fgitlab/repository/files/{file}/raw?ref=master"
    );
    match fetch_url(&url, state.config.allow_local_includes).await {
        Fetched::Content(c) => Fetched::Content(c),
        Fetched::Transient(why) => Fetched::Transient(format!("{url} {why}")),
        Fetched::Permanent(why) => Fetched::Permanent(format!("{url} {why}")),
    }
}

/// This server's own hosts, as `host[:port]`: that of `external_url`, and the listen address.
fn own_hosts(state: &AppState) -> Vec<String> {
    let mut hosts = vec![state.config.listen.clone()];
    if let Some(u) = state
        .config
        .external_url
        .as_deref()
        .and_then(|u| reqwest::Url::parse(u).ok())
    {
        if let Some(h) = u.host_str() {
            hosts.push(match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            });
        }
    }
    hosts
}

/// `include:component`: a component of a project registered on this server.
async fn fetch_component(state: &AppState, from: &str, address: &str) -> Fetched {
    let c = match gantry_pipeline::component::Address::parse(address, 1) {
        Ok(c) => c,
        Err(e) => return Fetched::Permanent(e),
    };
    let hosts = own_hosts(state);
    if c.project.contains('/') || !hosts.iter().any(|h| h.eq_ignore_ascii_case(&c.fqdn)) {
        return Fetched::Permanent(format!(
            "gantry server includes components of its own projects only: `{}/PROJECT/{}@{}`, \
             where PROJECT is a project of this server and the host is this server's (`{}`; set \
             `external_url` to name it)",
            hosts.last().map_or("", String::as_str),
            c.name,
            c.version,
            hosts.last().map_or("", String::as_str),
        ));
    }
    let version = if gantry_pipeline::component::is_selector(&c.version) {
        match latest_tag(state, from, &c.project, &c.version).await {
            Ok(v) => v,
            Err(f) => return f,
        }
    } else {
        c.version.clone()
    };
    read_from_project(state, from, &c.project, &version, c.files()).await
}

/// The highest semantic version tag of project `name` that `selector` selects.
async fn latest_tag(
    state: &AppState,
    from: &str,
    name: &str,
    selector: &str,
) -> Result<String, Fetched> {
    let project = match allowed_project(state, from, name).await {
        Ok(p) => p,
        Err(f) => return Err(f),
    };
    let remote = git::Remote::new(&project.spec.repo_url, state.config.git_timeout);
    let out = tokio::task::spawn_blocking(move || git::ls_remote_tags(&remote)).await;
    let out = match out {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return Err(Fetched::Transient(format!(
                "cannot list the tags of project `{name}`: {e:#}"
            )));
        }
        Err(e) => return Err(Fetched::Permanent(format!("the fetch panicked: {e}"))),
    };
    let tags: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once("refs/tags/").map(|(_, t)| t))
        .collect();
    gantry_pipeline::component::select_version(selector, tags.into_iter())
        .map(String::from)
        .ok_or_else(|| {
            Fetched::Permanent(format!(
                "project `{name}` has no tag that `{selector}` selects (a semantic version such as 1.2.0)"
            ))
        })
}

/// The HTTP client for remote includes: `local` may reach any address, otherwise only public
/// ones (see the module docs).
fn client(local: bool) -> Result<&'static reqwest::Client, String> {
    static ANY: OnceLock<reqwest::Client> = OnceLock::new();
    static PUBLIC: OnceLock<reqwest::Client> = OnceLock::new();
    let cell = if local { &ANY } else { &PUBLIC };
    if let Some(c) = cell.get() {
        return Ok(c);
    }
    let mut builder = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")));
    if !local {
        builder = builder
            .dns_resolver(std::sync::Arc::new(PublicOnly))
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if let Some(ip) = ip_literal(attempt.url()).filter(|ip| !is_public(*ip)) {
                    let why = format!("redirected to {ip}, which is not a public address");
                    attempt.error(why)
                } else if attempt.previous().len() >= 10 {
                    attempt.error("more than 10 redirects")
                } else {
                    attempt.follow()
                }
            }));
    }
    let c = builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    Ok(cell.get_or_init(|| c))
}

/// Whether `ip` is a public unicast address: not loopback, private, link-local, shared (CGNAT),
/// unspecified, broadcast, multicast, documentation, benchmarking or reserved; IPv6 not unique
/// local or link-local either. An IPv6 address that carries an IPv4 address is judged by it:
/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated (`::ffff:0:a.b.c.d`) and 6to4
/// (`2002:AABB:CCDD::/48`). IPv4-compatible (`::a.b.c.d`, deprecated), NAT64 (`64:ff9b::/96`,
/// `64:ff9b:1::/48`) and Teredo (`2001::/32`, whose IPv4 address is obscured) are never public,
/// since a gateway on the way may turn them into any IPv4 address, the server's own included.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                std::net::Ipv4Addr::new(a, b, c, d)
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            // IPv4-translated, ::ffff:0:0:0/96.
            if s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
                return is_public(IpAddr::V4(embedded(s[6], s[7])));
            }
            // 6to4, 2002::/16: the IPv4 address is in the next 32 bits.
            if s[0] == 0x2002 {
                return is_public(IpAddr::V4(embedded(s[1], s[2])));
            }
            !(s[..6] == [0; 6]
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                || s[0] == 0x2001 && s[1] == 0x0db8
                || s[0] == 0x2001 && s[1] == 0
                || s[0] == 0x0064 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1))
        }
    }
}

/// The URL's host when it is an IP address (`[…]` for IPv6).
fn ip_literal(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// A resolver that keeps a name's public addresses only; a name with none fails to resolve.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let e = std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host} has no public address"),
                );
                return Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Why `url` may not be fetched without `allow_local_includes`: its host is, or resolves to, an
/// address that is not public. `Err` when the name does not resolve (transient).
async fn local_address(url: &reqwest::Url) -> Result<Option<IpAddr>, String> {
    let port = url.port_or_known_default().unwrap_or(80);
    if let Some(ip) = ip_literal(url) {
        return Ok((!is_public(ip)).then_some(ip));
    }
    let Some(name) = url.host_str() else {
        return Ok(None);
    };
    match tokio::net::lookup_host((name, port)).await {
        Ok(addrs) => Ok(addrs.map(|a| a.ip()).find(|ip| !is_public(*ip))),
        Err(e) => Err(format!("cannot be fetched: cannot resolve {name}: {e}")),
    }
}

/// `include:remote`: GET the URL; `local`: also from addresses that are not public.
async fn fetch_url(url: &str, local: bool) -> Fetched {
    let parsed = match reqwest::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return Fetched::Permanent(format!("not a valid URL: {e}")),
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return Fetched::Permanent("only http and https URLs can be included".into());
    }
    if !local {
        match local_address(&parsed).await {
            Ok(None) => {}
            Ok(Some(ip)) => {
                return Fetched::Permanent(format!(
                    "is refused: {} is not a public address ({ip}); remote includes may only \
                     reach public addresses unless the server sets `allow_local_includes`",
                    parsed.host_str().unwrap_or_default()
                ));
            }
            Err(e) => return Fetched::Transient(e),
        }
    }
    let client = match client(local) {
        Ok(c) => c,
        Err(e) => return Fetched::Transient(e),
    };
    let mut resp = match client.get(parsed).send().await {
        Ok(r) => r,
        Err(e) => return Fetched::Transient(format!("cannot be fetched: {}", error_chain(&e))),
    };
    let status = resp.status();
    if !status.is_success() {
        let why = format!("cannot be fetched: the server answered {status}");
        return if status.is_server_error() || status.as_u16() == 429 {
            Fetched::Transient(why)
        } else {
            Fetched::Permanent(why)
        };
    }
    let too_big = || Fetched::Permanent(format!("is larger than {} KiB", MAX_BYTES >> 10));
    if resp.content_length().is_some_and(|n| n > MAX_BYTES as u64) {
        return too_big();
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BYTES {
                    return too_big();
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Fetched::Transient(format!("cannot be fetched: {}", error_chain(&e)));
            }
        }
    }
    match String::from_utf8(body) {
        Ok(s) => Fetched::Content(s),
        Err(_) => Fetched::Permanent("is not UTF-8 text".into()),
    }
}

/// `include:project`: `NAME@REF:FILE` from the mirror of project `NAME` of this server, for a
/// pipeline of project `from`, if project `NAME` allows that.
/// Why project `from` cannot include the files of project `name` (absent or not allowing it).
fn not_allowed(name: &str, from: &str) -> String {
    format!(
        "project `{name}` does not exist or does not allow project `{from}` to include its files: \
         add `{from}` (or a pattern matching it, such as `*`) to the `include_allowed_from` \
         setting of project `{name}`"
    )
}

async fn fetch_project(state: &AppState, from: &str, spec: &str) -> Fetched {
    // Project names hold no `@`, and refs no `:`.
    let Some((name, rest)) = spec.split_once('@') else {
        return Fetched::Permanent("names no project".into());
    };
    let (git_ref, file) = rest.split_once(':').unwrap_or((rest, ""));
    let file = file.trim_start_matches('/').to_string();
    if file.is_empty() {
        return Fetched::Permanent("names no `file`".into());
    }
    // A local include inside a component whose version is `~latest`, `1` or `1.2` is asked for at
    // that version (see `gantry_pipeline::context::nested_local_key`): the tag it selects. `~latest`
    // is no ref name; a ref such as `1` is tried as written first.
    if gantry_pipeline::component::is_selector(git_ref) {
        if git_ref != "~latest" {
            let read = read_from_project(state, from, name, git_ref, vec![file.clone()]).await;
            if !matches!(read, Fetched::Permanent(_)) {
                return read;
            }
        }
        return match latest_tag(state, from, name, git_ref).await {
            Ok(tag) => read_from_project(state, from, name, &tag, vec![file]).await,
            Err(f) => f,
        };
    }
    read_from_project(state, from, name, git_ref, vec![file]).await
}

/// Project `name` of this server, when project `from` may include its files.
async fn allowed_project(
    state: &AppState,
    from: &str,
    name: &str,
) -> Result<LoadedProject, Fetched> {
    let record = match state.store.project(name).await {
        Ok(Some(r)) => r,
        // The same answer as a denial, as GitLab's "not found or access denied": a pipeline must not
        // learn which project names exist.
        Ok(None) => return Err(Fetched::Permanent(not_allowed(name, from))),
        Err(e) => {
            return Err(Fetched::Transient(format!(
                "cannot read project `{name}`: {e}"
            )));
        }
    };
    let project =
        LoadedProject::parse(record, &state.secrets).map_err(|e| Fetched::Permanent(e.message))?;
    if !project.allows_include_from(from) {
        return Err(Fetched::Permanent(not_allowed(name, from)));
    }
    Ok(project)
}

/// The first of `files` that project `name` has at `git_ref` (`HEAD`: its default branch), read
/// from its mirror after fetching the ref into it, if project `from` may include its files.
async fn read_from_project(
    state: &AppState,
    from: &str,
    name: &str,
    git_ref: &str,
    files: Vec<String>,
) -> Fetched {
    let project = match allowed_project(state, from, name).await {
        Ok(p) => p,
        Err(f) => return f,
    };
    let git_ref = if git_ref == "HEAD" || git_ref.is_empty() {
        project.spec.default_branch.clone()
    } else {
        git_ref.to_string()
    };
    let lock = state.mirror_lock(project.record.id);
    let _guard = lock.lock().await;
    let mirror = git::mirror_path(&state.config.data_dir, project.record.id);
    let remote = git::Remote::new(&project.spec.repo_url, state.config.git_timeout);
    let name = name.to_string();
    let read = tokio::task::spawn_blocking(move || {
        let full_sha = gantry_pipeline::component::is_sha(&git_ref);
        let sha = match git::fetch(&mirror, &remote, full_sha.then_some(&*git_ref), &git_ref) {
            Ok(sha) => sha,
            Err(e) => {
                let e = format!("{e:#}");
                let why = format!("cannot fetch `{git_ref}` of project `{name}`: {e}");
                // The repository answered, and has no such ref, or the ref is a pattern or a
                // refspec (refused before any fetch): another attempt will not help.
                return if e.contains("couldn't find remote ref")
                    || e.contains(" is not on ")
                    || e.contains(" is not a single ref")
                {
                    Fetched::Permanent(why)
                } else {
                    Fetched::Transient(why)
                };
            }
        };
        let mut last = String::new();
        for file in &files {
            match git::read_file(&mirror, &sha, file) {
                Ok(content) if content.len() > MAX_BYTES => {
                    return Fetched::Permanent(format!("is larger than {} KiB", MAX_BYTES >> 10));
                }
                Ok(content) => return Fetched::Content(content),
                Err(e) => last = e,
            }
        }
        let names: Vec<String> = files.iter().map(|f| format!("`{f}`")).collect();
        Fetched::Permanent(format!(
            "project `{name}` has no readable {} at `{git_ref}`: {last}",
            names.join(" or ")
        ))
    })
    .await;
    read.unwrap_or_else(|e| Fetched::Permanent(format!("the fetch panicked: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Serves one canned HTTP answer per connection; answers the base URL.
    async fn stub(status: &'static str, body: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn fetch_url_classifies_failures() {
        let ok = stub("200 OK", b"job:\n  script: [x]\n".to_vec()).await;
        assert_eq!(
            fetch_url(&format!("{ok}/ci.yml"), true).await,
            Fetched::Content("job:\n  script: [x]\n".into())
        );
        let missing = stub("404 Not Found", b"no".to_vec()).await;
        assert!(matches!(
            fetch_url(&missing, true).await,
            Fetched::Permanent(m) if m.contains("404")
        ));
        let down = stub("503 Service Unavailable", b"later".to_vec()).await;
        assert!(matches!(
            fetch_url(&down, true).await,
            Fetched::Transient(m) if m.contains("503")
        ));
        let big = stub("200 OK", vec![b'a'; MAX_BYTES + 1]).await;
        assert!(matches!(
            fetch_url(&big, true).await,
            Fetched::Permanent(m) if m.contains("larger than 1024 KiB")
        ));
        let binary = stub("200 OK", vec![0xff, 0xfe]).await;
        assert!(
            matches!(fetch_url(&binary, true).await, Fetched::Permanent(m) if m.contains("UTF-8"))
        );
        assert!(matches!(
            fetch_url("file:///etc/passwd", true).await,
            Fetched::Permanent(m) if m.contains("only http and https")
        ));
        assert!(matches!(
            fetch_url("not a url", true).await,
            Fetched::Permanent(_)
        ));
        // Nobody listens: transient.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(matches!(
            fetch_url(&format!("http://127.0.0.1:{port}/x.yml"), true).await,
            Fetched::Transient(m) if m.starts_with("cannot be fetched")
        ));
    }

    #[test]
    fn only_public_addresses_are_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:0:7f00:1",
            "::ffff:0:a00:1",
            "2002:7f00:1::1",
            "2002:a00:1::1",
            "2002:c0a8:101::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is not public");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "::ffff:0:808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn local_addresses_are_refused_unless_allowed() {
        let ok = stub("200 OK", b"job:\n  script: [x]\n".to_vec()).await;
        let port = ok.rsplit(':').next().unwrap();
        for url in [
            format!("{ok}/ci.yml"),
            format!("http://localhost:{port}/ci.yml"),
            format!("http://[::1]:{port}/ci.yml"),
        ] {
            match fetch_url(&url, false).await {
                Fetched::Permanent(m) => assert!(m.contains("is not a public address"), "{m}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        assert!(matches!(
            fetch_url(&format!("{ok}/ci.yml"), true).await,
            Fetched::Content(_)
        ));
        // The client's own resolver keeps public addresses only, whatever was checked before.
        use reqwest::dns::Resolve as _;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = PublicOnly.resolve(name).await.err().unwrap();
        assert!(err.to_string().contains("has no public address"), "{err}");
    }
}
