//! The server's configuration, in layers: defaults < `gantry.toml` < `GANTRY_*` environment variables
//! < flags. Tokens come from the environment or from files in the data dir, generated on first start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

/// `gantry server`'s options, as given on its command line (the `gantry` binary parses them). Every
/// option can also be set in the configuration file and through a `GANTRY_*` environment variable
/// (flags win over the environment, which wins over the file).
#[derive(Debug, Default)]
pub struct Args {
    /// The address to listen on (default `127.0.0.1:8080`; port 0 picks a free port). Env: `GANTRY_LISTEN`
    pub listen: Option<String>,
    /// Where the server keeps its database, tokens and git mirrors (default `./gantry-data`). Env: `GANTRY_DATA_DIR`
    pub data_dir: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://...` (default: `sqlite://DATA_DIR/gantry.db`). Env: `GANTRY_DATABASE_URL`
    pub database_url: Option<String>,
    /// How long a job stays leased to an agent without a heartbeat (default `30s`). Env: `GANTRY_LEASE_TIMEOUT`
    pub lease_timeout: Option<String>,
    /// `text` (default) or `json`. Env: `GANTRY_LOG_FORMAT`
    pub log_format: Option<String>,
    /// The server's public URL, for links in commit statuses. Env: `GANTRY_EXTERNAL_URL`
    pub external_url: Option<String>,
    /// The configuration file (default: `gantry.toml` in the current directory, when it exists). Env: `GANTRY_CONFIG`
    pub config: Option<PathBuf>,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `gantry.toml`: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    lease_timeout: Option<String>,
    log_format: Option<String>,
    external_url: Option<String>,
    max_body_bytes: Option<usize>,
    max_artifacts_bytes: Option<usize>,
    max_job_log: Option<i64>,
    delivery_max_attempts: Option<u32>,
    delivery_retry_backoff: Option<String>,
    delivery_retry_max_backoff: Option<String>,
    delivery_concurrency: Option<usize>,
    git_timeout: Option<String>,
    allow_local_includes: Option<bool>,
    templates_url: Option<String>,
    metrics_token: Option<String>,
    secret_key_file: Option<PathBuf>,
    secret_key_previous_file: Option<PathBuf>,
    webhook_max_body_bytes: Option<FileBodyLimits>,
    webhook_body_budget_bytes: Option<usize>,
    webhook_body_timeout: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    push_dedupe_window: Option<String>,
}

/// `[webhook_max_body_bytes]` in `gantry.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBodyLimits {
    gitlab: Option<usize>,
    github: Option<usize>,
    gitea: Option<usize>,
}

/// The largest webhook body each forge may send, in bytes (`[webhook_max_body_bytes]` in
/// `gantry.toml`: `gitlab`, `github`, `gitea`). A body over it is answered `413`, before it is
/// read when `Content-Length` says so. The defaults follow what each forge sends: GitHub
/// documents that it caps payloads at 25 MB and drops events above (`github`: 25 MiB); GitLab
/// lists at most 20 commits in a push event and sends no files (`gitlab`: 10 MiB, the limit every
/// webhook had before); Gitea lists a push's commits up to its own payload commit limit
/// (`gitea`: 10 MiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookBodyLimits {
    /// GitLab's webhooks.
    pub gitlab: usize,
    /// GitHub's webhooks.
    pub github: usize,
    /// Gitea's (and Forgejo's) webhooks.
    pub gitea: usize,
}

impl WebhookBodyLimits {
    /// The limit of `forge`'s webhooks.
    pub(crate) fn of(&self, forge: gantry_api::ForgeKind) -> usize {
        match forge {
            gantry_api::ForgeKind::Gitlab => self.gitlab,
            gantry_api::ForgeKind::Github => self.github,
            gantry_api::ForgeKind::Gitea => self.gitea,
            gantry_api::ForgeKind::Api | gantry_api::ForgeKind::Schedule => {
                self.gitlab.min(self.github).min(self.gitea)
            }
        }
    }
}

/// A secret that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The address to listen on.
    pub listen: String,
    /// The data dir (database, tokens, git mirrors).
    pub data_dir: PathBuf,
    /// The database URL.
    pub database_url: String,
    /// The lease timeout.
    pub lease_timeout: Duration,
    /// The log format.
    pub log_format: LogFormat,
    /// The public URL for links (`target_url` of commit statuses).
    pub external_url: Option<String>,
    /// The admin API token.
    pub admin_token: Secret,
    /// The token agents register with.
    pub registration_token: Secret,
    /// The largest request body (webhooks, log chunks, JSON), in bytes; an agent's finish, which
    /// carries the job's report summaries, may take up to `reports::FINISH_MIN_LIMIT` when this
    /// is smaller.
    pub max_body_bytes: usize,
    /// The largest artifacts archive, in bytes.
    pub max_artifacts_bytes: usize,
    /// The most log a job keeps, in bytes (GitLab Runner's `output_limit`): past it the server
    /// stores a line saying that the log was truncated and drops the rest, and the job goes on.
    /// File: `max_job_log`; env: `GANTRY_MAX_JOB_LOG`.
    pub max_job_log: i64,
    /// How often pending deliveries, delayed jobs and schedules are looked at.
    pub sweep_interval: Duration,
    /// How many times a delivery is attempted when its attempts fail transiently (the repository
    /// cannot be fetched, the store fails, a remote include's server is unreachable) before it is
    /// closed `failed`. File: `delivery_max_attempts`; env: `GANTRY_DELIVERY_MAX_ATTEMPTS`.
    pub delivery_max_attempts: u32,
    /// The pause after a delivery's first transient failure, doubled after each further one.
    /// File: `delivery_retry_backoff`; env: `GANTRY_DELIVERY_RETRY_BACKOFF`.
    pub delivery_retry_backoff: Duration,
    /// The longest pause between two attempts at a delivery. File: `delivery_retry_max_backoff`;
    /// env: `GANTRY_DELIVERY_RETRY_MAX_BACKOFF`.
    pub delivery_retry_max_backoff: Duration,
    /// How many projects' deliveries are processed at once (each project's one after the other).
    /// File: `delivery_concurrency`; env: `GANTRY_DELIVERY_CONCURRENCY`.
    pub delivery_concurrency: usize,
    /// How long a git command that reaches a project's repository (a fetch, a tag listing) may
    /// run; then it is stopped with every process it started, and the delivery is retried later.
    /// Git commands on the server's own mirrors have a shorter limit of their own
    /// (`git::LOCAL_TIMEOUT`). File: `git_timeout`; env: `GANTRY_GIT_TIMEOUT`.
    pub git_timeout: Duration,
    /// The first pause between attempts to post a commit status (doubled each time, 5 attempts).
    pub status_backoff: Duration,
    /// The first pause before a failed notification is sent again (doubled each time, up to
    /// `notify_max_backoff`).
    pub notify_backoff: Duration,
    /// The longest pause between attempts of a notification.
    pub notify_max_backoff: Duration,
    /// Attempts of a notification, the first included, before it is failed for good.
    pub notify_max_attempts: u32,
    /// Whether `include:remote` may reach loopback, private, link-local and other non-public
    /// addresses (off by default, as GitLab's "Allow requests to the local network" outbound
    /// setting): a repository's author must not be able to make the server read its own network.
    /// File: `allow_local_includes`; env: `GANTRY_ALLOW_LOCAL_INCLUDES` (`true` or `false`).
    pub allow_local_includes: bool,
    /// The GitLab instance whose `gitlab-org/gitlab` project serves `include:template`
    /// (`https://gitlab.com`, say); `None`: `include:template` is an error that says to set it.
    /// File: `templates_url`; env: `GANTRY_TEMPLATES_URL`.
    pub templates_url: Option<String>,
    /// When set, `GET /metrics` needs it as a bearer token (`Authorization: Bearer TOKEN`);
    /// `None` (the default): `/metrics` is open, as a Prometheus scrape target usually is.
    /// File: `metrics_token`; env: `GANTRY_METRICS_TOKEN`.
    pub metrics_token: Option<Secret>,
    /// The key that encrypts the secrets stored in the database (webhook secrets, variable
    /// values, forge tokens; see `secrets.rs`): 32 bytes as 64 hex digits or base64. Env:
    /// `GANTRY_SECRET_KEY` (never the file: a key does not belong in a configuration file).
    pub secret_key: Option<Secret>,
    /// The file holding that key, when `secret_key` is not set. File: `secret_key_file`; env:
    /// `GANTRY_SECRET_KEY_FILE`. Neither set: `DATA_DIR/secret-key`, generated on the first start.
    pub secret_key_file: Option<PathBuf>,
    /// The key before a rotation: what it encrypted is read and encrypted again under the current
    /// key at startup. Env: `GANTRY_SECRET_KEY_PREVIOUS`.
    pub secret_key_previous: Option<Secret>,
    /// The file holding the previous key. File: `secret_key_previous_file`; env:
    /// `GANTRY_SECRET_KEY_PREVIOUS_FILE`.
    pub secret_key_previous_file: Option<PathBuf>,
    /// The largest webhook body per forge; see [`WebhookBodyLimits`].
    pub webhook_body_limits: WebhookBodyLimits,
    /// How many bytes the webhook bodies being read at once may hold together (default 64 MiB):
    /// each body takes its `Content-Length` (its forge's limit when chunked) from this budget
    /// before it is read, and gives it back when its request ends; one body larger than the
    /// budget is read alone. Connections that hold bodies back thus cost bounded memory.
    /// File: `webhook_body_budget_bytes`.
    pub webhook_body_budget_bytes: usize,
    /// How long a webhook may wait for room in the budget (else `503`), and then how long its
    /// body may take to arrive (else `408`); default `30s`. File: `webhook_body_timeout`; env:
    /// `GANTRY_WEBHOOK_BODY_TIMEOUT`.
    pub webhook_body_timeout: Duration,
    /// How long a client has to send a request's headers, from the connection's start or from
    /// the first byte of a request on a kept-alive connection (default `10s`); then the server
    /// closes the connection. File: `header_read_timeout`; env: `GANTRY_HEADER_READ_TIMEOUT`.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may stay idle between requests (default `120s`: longer
    /// than the 90 s for which reqwest, the agents' client, keeps an idle connection, so that the
    /// client, not the server, closes it, and no request races a close; long polls are requests,
    /// not idle time). File: `idle_timeout`; env: `GANTRY_IDLE_TIMEOUT`.
    pub idle_timeout: Duration,
    /// How many connections the server holds at once (default 10000); further clients wait in
    /// the listen backlog until one closes. Keep it below the open-file limit (`ulimit -n`), so
    /// that the database and git always get a file descriptor. File: `max_connections`; env:
    /// `GANTRY_MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// How long a push is remembered to refuse its replays (issue 16, finding 12; default `24h`):
    /// a push webhook with the project, ref, `before` and `after` of one received within this
    /// window is answered as a duplicate of it and runs nothing. File: `push_dedupe_window`; env:
    /// `GANTRY_PUSH_DEDUPE_WINDOW`.
    pub push_dedupe_window: Duration,
}

impl Config {
    /// A configuration with every default, the data dir `data_dir` (SQLite inside it) and the given
    /// tokens; for tests and embedding.
    #[must_use]
    pub fn new(data_dir: &Path, admin_token: &str, registration_token: &str) -> Config {
        Config {
            listen: "127.0.0.1:0".into(),
            data_dir: data_dir.to_path_buf(),
            database_url: default_database_url(data_dir),
            lease_timeout: Duration::from_secs(30),
            log_format: LogFormat::Text,
            external_url: None,
            admin_token: Secret(admin_token.into()),
            registration_token: Secret(registration_token.into()),
            max_body_bytes: 10 << 20,
            max_artifacts_bytes: 100 << 20,
            max_job_log: DEFAULT_MAX_JOB_LOG,
            sweep_interval: Duration::from_secs(5),
            delivery_max_attempts: 5,
            delivery_retry_backoff: Duration::from_secs(2),
            delivery_retry_max_backoff: Duration::from_secs(600),
            delivery_concurrency: 4,
            git_timeout: Duration::from_secs(600),
            status_backoff: Duration::from_secs(1),
            notify_backoff: Duration::from_secs(5),
            notify_max_backoff: Duration::from_secs(600),
            notify_max_attempts: 10,
            allow_local_includes: false,
            templates_url: None,
            metrics_token: None,
            secret_key: None,
            secret_key_file: None,
            secret_key_previous: None,
            secret_key_previous_file: None,
            webhook_body_limits: WebhookBodyLimits {
                gitlab: 10 << 20,
                github: 25 << 20,
                gitea: 10 << 20,
            },
            webhook_body_budget_bytes: 64 << 20,
            webhook_body_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 10_000,
            push_dedupe_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// The default [`Config::max_job_log`]: 16 MiB. GitLab Runner's `output_limit` defaults to 4 MiB,
/// which verbose builds (compilers, test suites with logs) often pass, so runners raise it; four
/// times that keeps such builds whole while a runaway job still costs a bounded, small share of
/// the database.
pub const DEFAULT_MAX_JOB_LOG: i64 = 16 << 20;

fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("gantry.db").display())
}

/// What [`load`] found besides the configuration: tokens it generated, to print once.
#[derive(Debug, Default)]
pub struct Generated {
    /// The admin token, when it was generated now.
    pub admin_token: Option<String>,
    /// The registration token, when it was generated now.
    pub registration_token: Option<String>,
}

/// Resolves the configuration from `args`, the environment (`env` looks a variable up) and the
/// configuration file, creating the data dir and the token files it needs.
///
/// # Errors
/// An unreadable or invalid configuration file, an invalid value, or a data dir that cannot be written.
pub fn load(args: &Args, env: &dyn Fn(&str) -> Option<String>) -> Result<(Config, Generated)> {
    let file_path = args
        .config
        .clone()
        .or_else(|| env("GANTRY_CONFIG").map(PathBuf::from));
    let file: FileConfig = match &file_path {
        Some(p) => read_file(p)?,
        None if Path::new("gantry.toml").exists() => read_file(Path::new("gantry.toml"))?,
        None => FileConfig::default(),
    };
    let pick = |flag: &Option<String>, var: &str, file: &Option<String>| {
        flag.clone().or_else(|| env(var)).or_else(|| file.clone())
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| env("GANTRY_DATA_DIR").map(PathBuf::from))
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("gantry-data"));
    let listen = pick(&args.listen, "GANTRY_LISTEN", &file.listen)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let database_url = pick(
        &args.database_url,
        "GANTRY_DATABASE_URL",
        &file.database_url,
    )
    .unwrap_or_else(|| default_database_url(&data_dir));
    let lease_timeout = match pick(
        &args.lease_timeout,
        "GANTRY_LEASE_TIMEOUT",
        &file.lease_timeout,
    ) {
        Some(s) => parse_duration(&s).with_context(|| format!("invalid lease timeout `{s}`"))?,
        None => Duration::from_secs(30),
    };
    let log_format = match pick(&args.log_format, "GANTRY_LOG_FORMAT", &file.log_format).as_deref()
    {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => bail!("invalid log format `{other}`: use text or json"),
    };
    let external_url = pick(
        &args.external_url,
        "GANTRY_EXTERNAL_URL",
        &file.external_url,
    );
    crate::secure_data_dir(&data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    let mut generated = Generated::default();
    let admin_token = token(
        env("GANTRY_ADMIN_TOKEN"),
        &data_dir.join("admin-token"),
        &mut generated.admin_token,
    )?;
    let registration_token = token(
        env("GANTRY_REGISTRATION_TOKEN"),
        &data_dir.join("registration-token"),
        &mut generated.registration_token,
    )?;
    let mut config = Config::new(&data_dir, &admin_token, &registration_token);
    config.listen = listen;
    config.database_url = database_url;
    config.lease_timeout = lease_timeout;
    config.log_format = log_format;
    config.external_url = external_url;
    if let Some(n) = file.max_body_bytes {
        config.max_body_bytes = n;
    }
    if let Some(n) = file.max_artifacts_bytes {
        config.max_artifacts_bytes = n;
    }
    let none = None;
    if let Some(s) = pick(
        &none,
        "GANTRY_MAX_JOB_LOG",
        &file.max_job_log.map(|n| n.to_string()),
    ) {
        config.max_job_log = s
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("invalid max_job_log `{s}`: a number of bytes above 0"))?;
    }
    if let Some(s) = pick(
        &none,
        "GANTRY_DELIVERY_MAX_ATTEMPTS",
        &file.delivery_max_attempts.map(|n| n.to_string()),
    ) {
        config.delivery_max_attempts =
            s.trim().parse().ok().filter(|n| *n > 0).with_context(|| {
                format!("invalid delivery_max_attempts `{s}`: a number above 0")
            })?;
    }
    if let Some(s) = pick(
        &none,
        "GANTRY_DELIVERY_RETRY_BACKOFF",
        &file.delivery_retry_backoff,
    ) {
        config.delivery_retry_backoff =
            parse_duration(&s).with_context(|| format!("invalid delivery_retry_backoff `{s}`"))?;
    }
    if let Some(s) = pick(
        &none,
        "GANTRY_DELIVERY_RETRY_MAX_BACKOFF",
        &file.delivery_retry_max_backoff,
    ) {
        config.delivery_retry_max_backoff = parse_duration(&s)
            .with_context(|| format!("invalid delivery_retry_max_backoff `{s}`"))?;
    }
    if let Some(s) = pick(
        &none,
        "GANTRY_DELIVERY_CONCURRENCY",
        &file.delivery_concurrency.map(|n| n.to_string()),
    ) {
        config.delivery_concurrency = s
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("invalid delivery_concurrency `{s}`: a number above 0"))?;
    }
    if let Some(s) = pick(&none, "GANTRY_GIT_TIMEOUT", &file.git_timeout) {
        config.git_timeout = parse_duration(&s)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| format!("invalid git_timeout `{s}`: a duration above 0"))?;
    }
    if let Some(s) = pick(
        &none,
        "GANTRY_ALLOW_LOCAL_INCLUDES",
        &file.allow_local_includes.map(|b| b.to_string()),
    ) {
        config.allow_local_includes = match s.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => anyhow::bail!("invalid allow_local_includes `{s}`: true or false"),
        };
    }
    config.metrics_token = pick(&none, "GANTRY_METRICS_TOKEN", &file.metrics_token)
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .map(Secret);
    config.secret_key = env("GANTRY_SECRET_KEY")
        .filter(|k| !k.trim().is_empty())
        .map(Secret);
    if let Some(k) = &config.secret_key {
        crate::secrets::parse_key(&k.0).context("invalid GANTRY_SECRET_KEY")?;
    }
    config.secret_key_file = env("GANTRY_SECRET_KEY_FILE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or(file.secret_key_file);
    config.secret_key_previous = env("GANTRY_SECRET_KEY_PREVIOUS")
        .filter(|k| !k.trim().is_empty())
        .map(Secret);
    if let Some(k) = &config.secret_key_previous {
        crate::secrets::parse_key(&k.0).context("invalid GANTRY_SECRET_KEY_PREVIOUS")?;
    }
    config.secret_key_previous_file = env("GANTRY_SECRET_KEY_PREVIOUS_FILE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or(file.secret_key_previous_file);
    if let Some(l) = &file.webhook_max_body_bytes {
        let w = &mut config.webhook_body_limits;
        w.gitlab = l.gitlab.unwrap_or(w.gitlab);
        w.github = l.github.unwrap_or(w.github);
        w.gitea = l.gitea.unwrap_or(w.gitea);
    }
    if let Some(n) = file.webhook_body_budget_bytes {
        config.webhook_body_budget_bytes = n;
    }
    for (var, key, from_file, slot) in [
        (
            "GANTRY_WEBHOOK_BODY_TIMEOUT",
            "webhook_body_timeout",
            &file.webhook_body_timeout,
            &mut config.webhook_body_timeout,
        ),
        (
            "GANTRY_HEADER_READ_TIMEOUT",
            "header_read_timeout",
            &file.header_read_timeout,
            &mut config.header_read_timeout,
        ),
        (
            "GANTRY_IDLE_TIMEOUT",
            "idle_timeout",
            &file.idle_timeout,
            &mut config.idle_timeout,
        ),
        (
            "GANTRY_PUSH_DEDUPE_WINDOW",
            "push_dedupe_window",
            &file.push_dedupe_window,
            &mut config.push_dedupe_window,
        ),
    ] {
        if let Some(s) = pick(&none, var, from_file) {
            *slot = parse_duration(&s).with_context(|| format!("invalid {key} `{s}`"))?;
        }
    }
    if let Some(s) = pick(
        &none,
        "GANTRY_MAX_CONNECTIONS",
        &file.max_connections.map(|n| n.to_string()),
    ) {
        config.max_connections = s
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("invalid max_connections `{s}`: a number above 0"))?;
    }
    config.templates_url = pick(&none, "GANTRY_TEMPLATES_URL", &file.templates_url)
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty());
    if let Some(u) = &config.templates_url {
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            bail!("invalid templates_url `{u}`: an http or https URL");
        }
    }
    Ok((config, generated))
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid configuration in {}", path.display()))
}

/// Parses `30s`, `500ms`, `2m`, `1h` (jiff's friendly durations, so also `1h 30m` or `90 seconds`),
/// or a plain number of seconds.
///
/// # Errors
/// Anything else, or not more than zero.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let d = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(s.parse().context("too many seconds")?)
    } else {
        let d: jiff::SignedDuration = s
            .parse()
            .map_err(|_| anyhow::anyhow!("expected a number with a unit: ms, s, m or h (30s)"))?;
        Duration::try_from(d).context("must be more than zero")?
    };
    if d.is_zero() {
        bail!("must be more than zero");
    }
    Ok(d)
}

/// The token from the environment, else from `path`, else a new one written to `path` (mode 0600)
/// and reported in `generated`.
fn token(from_env: Option<String>, path: &Path, generated: &mut Option<String>) -> Result<String> {
    if let Some(t) = from_env.filter(|t| !t.is_empty()) {
        return Ok(t);
    }
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let t = crate::random_token();
    write_private(path, &t).with_context(|| format!("cannot write {}", path.display()))?;
    *generated = Some(t.clone());
    Ok(t)
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration(" 1h ").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn layers_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gantry.toml");
        std::fs::write(
            &file,
            format!(
                "listen = \"127.0.0.1:9000\"\nlease_timeout = \"20s\"\nlog_format = \"json\"\ndata_dir = \"{}\"\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let args = Args {
            config: Some(file.clone()),
            ..Args::default()
        };
        let env = |k: &str| match k {
            "GANTRY_LEASE_TIMEOUT" => Some("15s".to_string()),
            "GANTRY_LISTEN" => Some("127.0.0.1:9001".to_string()),
            _ => None,
        };
        let (c, generated) = load(&args, &env).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9001", "env beats the file");
        assert_eq!(c.lease_timeout, Duration::from_secs(15));
        assert_eq!(c.log_format, LogFormat::Json, "the file beats the default");
        assert_eq!(c.delivery_max_attempts, 5);
        assert_eq!(c.delivery_retry_backoff, Duration::from_secs(2));
        assert!(c.database_url.ends_with("data/gantry.db"));
        let admin = generated.admin_token.expect("generated on first start");
        assert_eq!(c.admin_token.0, admin);
        assert!(generated.registration_token.is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("data/admin-token"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Second start: the same tokens, nothing generated; flags beat the environment.
        let args = Args {
            config: Some(file),
            listen: Some("127.0.0.1:9002".into()),
            ..Args::default()
        };
        let (c2, generated) = load(&args, &env).unwrap();
        assert_eq!(c2.listen, "127.0.0.1:9002");
        assert!(generated.admin_token.is_none());
        assert_eq!(c2.admin_token, c.admin_token);
        assert_eq!(c2.registration_token, c.registration_token);
    }

    #[test]
    fn delivery_retry_knobs_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gantry.toml");
        std::fs::write(
            &file,
            format!(
                "delivery_max_attempts = 3\ndelivery_retry_backoff = \"1s\"\ndata_dir = \"{}\"\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let args = Args {
            config: Some(file),
            ..Args::default()
        };
        let env = |k: &str| match k {
            "GANTRY_DELIVERY_RETRY_BACKOFF" => Some("250ms".to_string()),
            "GANTRY_DELIVERY_RETRY_MAX_BACKOFF" => Some("2s".to_string()),
            _ => None,
        };
        let (c, _) = load(&args, &env).unwrap();
        assert_eq!(c.delivery_max_attempts, 3);
        assert_eq!(c.delivery_retry_backoff, Duration::from_millis(250));
        assert_eq!(c.delivery_retry_max_backoff, Duration::from_secs(2));
        let bad = |k: &str| (k == "GANTRY_DELIVERY_MAX_ATTEMPTS").then(|| "0".to_string());
        let err = load(&args, &bad).unwrap_err();
        assert!(
            format!("{err:#}").contains("delivery_max_attempts"),
            "{err:#}"
        );
    }

    #[test]
    fn git_timeout_and_delivery_concurrency_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gantry.toml");
        std::fs::write(
            &file,
            format!(
                "git_timeout = \"90s\"\ndelivery_concurrency = 2\ndata_dir = \"{}\"\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let args = Args {
            config: Some(file),
            ..Args::default()
        };
        let (c, _) = load(&args, &|_| None).unwrap();
        assert_eq!(c.git_timeout, Duration::from_secs(90));
        assert_eq!(c.delivery_concurrency, 2);
        let env = |k: &str| (k == "GANTRY_GIT_TIMEOUT").then(|| "5m".to_string());
        assert_eq!(
            load(&args, &env).unwrap().0.git_timeout,
            Duration::from_secs(300)
        );
        for (key, value) in [
            ("GANTRY_GIT_TIMEOUT", "0s"),
            ("GANTRY_DELIVERY_CONCURRENCY", "0"),
        ] {
            let bad = |k: &str| (k == key).then(|| value.to_string());
            let err = load(&args, &bad).unwrap_err();
            let name = key.trim_start_matches("GANTRY_").to_ascii_lowercase();
            assert!(format!("{err:#}").contains(&name), "{err:#}");
        }
        let defaults = Config::new(dir.path(), "a", "r");
        assert_eq!(defaults.git_timeout, Duration::from_secs(600));
        assert_eq!(defaults.delivery_concurrency, 4);
    }

    #[test]
    fn templates_url_from_the_file_or_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gantry.toml");
        let data = dir.path().join("data");
        std::fs::write(
            &file,
            format!(
                "templates_url = \"https://gitlab.example.com/\"\ndata_dir = \"{}\"\n",
                data.display()
            ),
        )
        .unwrap();
        let args = Args {
            config: Some(file.clone()),
            ..Args::default()
        };
        let (c, _) = load(&args, &|_: &str| None).unwrap();
        assert_eq!(
            c.templates_url.as_deref(),
            Some("https://gitlab.example.com")
        );
        let env = |k: &str| (k == "GANTRY_TEMPLATES_URL").then(|| "http://127.0.0.1:1".to_string());
        let (c, _) = load(&args, &env).unwrap();
        assert_eq!(c.templates_url.as_deref(), Some("http://127.0.0.1:1"));
        let bad = |k: &str| (k == "GANTRY_TEMPLATES_URL").then(|| "gitlab.com".to_string());
        let err = load(&args, &bad).unwrap_err();
        assert!(format!("{err:#}").contains("templates_url"), "{err:#}");
    }

    #[test]
    fn local_includes_are_refused_unless_the_file_or_env_allows_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gantry.toml");
        let data = dir.path().join("data");
        std::fs::write(&file, format!("data_dir = \"{}\"\n", data.display())).unwrap();
        let args = Args {
            config: Some(file.clone()),
            ..Args::default()
        };
        let (c, _) = load(&args, &|_: &str| None).unwrap();
        assert!(!c.allow_local_includes);
        std::fs::write(
            &file,
            format!(
                "allow_local_includes = true\ndata_dir = \"{}\"\n",
                data.display()
            ),
        )
        .unwrap();
        let (c, _) = load(&args, &|_: &str| None).unwrap();
        assert!(c.allow_local_includes);
        let off = |k: &str| (k == "GANTRY_ALLOW_LOCAL_INCLUDES").then(|| "false".to_string());
        let (c, _) = load(&args, &off).unwrap();
        assert!(
            !c.allow_local_includes,
            "the environment wins over the file"
        );
        let bad = |k: &str| (k == "GANTRY_ALLOW_LOCAL_INCLUDES").then(|| "yes".to_string());
        let err = load(&args, &bad).unwrap_err();
        assert!(
            format!("{err:#}").contains("allow_local_includes"),
            "{err:#}"
        );
    }

    #[test]
    fn secret_keys_from_the_environment_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let args = Args {
            data_dir: Some(dir.path().join("data")),
            ..Args::default()
        };
        let key = "cd".repeat(32);
        let env = |k: &str| (k == "GANTRY_SECRET_KEY").then(|| key.clone());
        let (c, _) = load(&args, &env).unwrap();
        assert_eq!(c.secret_key, Some(Secret(key.clone())));
        assert!(c.secret_key_file.is_none());
        for var in ["GANTRY_SECRET_KEY", "GANTRY_SECRET_KEY_PREVIOUS"] {
            let bad = |k: &str| (k == var).then(|| "sixteen-byte-key".to_string());
            let err = format!("{:#}", load(&args, &bad).unwrap_err());
            assert!(err.contains(&format!("invalid {var}")), "{err}");
            assert!(err.contains("must be 32 bytes"), "{err}");
            assert!(
                !err.contains("sixteen-byte-key"),
                "the key is not echoed: {err}"
            );
        }
        let file = |k: &str| (k == "GANTRY_SECRET_KEY_FILE").then(|| "/etc/gantry/key".to_string());
        let (c, _) = load(&args, &file).unwrap();
        assert_eq!(c.secret_key_file, Some(PathBuf::from("/etc/gantry/key")));
    }

    #[test]
    fn intake_and_connection_knobs_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gantry.toml");
        std::fs::write(
            &file,
            format!(
                "data_dir = \"{}\"\nwebhook_body_budget_bytes = 1000\nheader_read_timeout = \"3s\"\n\
                 max_connections = 50\npush_dedupe_window = \"1h\"\n\
                 [webhook_max_body_bytes]\ngithub = 2048\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let args = Args {
            config: Some(file),
            ..Args::default()
        };
        let env = |k: &str| (k == "GANTRY_IDLE_TIMEOUT").then(|| "5m".to_string());
        let (c, _) = load(&args, &env).unwrap();
        assert_eq!(c.webhook_body_limits.github, 2048);
        assert_eq!(c.webhook_body_limits.gitlab, 10 << 20, "the default stays");
        assert_eq!(c.webhook_body_budget_bytes, 1000);
        assert_eq!(c.header_read_timeout, Duration::from_secs(3));
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.max_connections, 50);
        assert_eq!(c.push_dedupe_window, Duration::from_secs(3600));
        let bad = |k: &str| (k == "GANTRY_MAX_CONNECTIONS").then(|| "0".to_string());
        let err = load(&args, &bad).unwrap_err();
        assert!(format!("{err:#}").contains("max_connections"), "{err:#}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gantry.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let args = Args {
            config: Some(file),
            ..Args::default()
        };
        let err = load(&args, &|_| None).unwrap_err();
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
    }
}
