//! `gantry server`: webhooks in, pipelines compiled with `gantry-pipeline`, a durable job queue in a
//! [`gantry_store::Store`], the REST API, the agent protocol, commit statuses out, and metrics. It never
//! links an executor: jobs run on agents.
//!
//! [`serve`] starts everything on a [`Config`] and answers a [`RunningServer`] (its address and a
//! shutdown handle); [`main`] is `gantry server`, which loads the configuration in layers (see
//! [`config`]) and runs until SIGTERM or Ctrl-C.
//!
//! Modules:
//! - `conn`: the accept loop, with header-read and idle timeouts and a connection cap;
//! - `http`: the router, authentication, the trace-id and metrics middleware, JSON errors;
//! - `projects`, `hooks`, `triggers`: projects, webhooks (signatures, events), API triggers;
//! - `process`: deliveries → pipelines (git mirror, compile, create), the background processor;
//! - `advance` (pure): a pipeline's next state with GitLab's semantics; `progress` applies it;
//! - `dispatch`: the agent protocol; `githttp`: the mirrors, read-only over git's smart HTTP, for
//!   agents' checkouts; `read`: the read API; `statuses`: commit statuses to forges;
//! - `schedules`: cron pipelines; `metrics`; `openapi`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use gantry_store::{Millis, Store};
use tokio::sync::watch;

mod advance;
pub mod config;
mod conn;
mod dispatch;
mod error;
mod git;
mod githttp;
mod hooks;
mod http;
mod jobtoken;
mod metrics;
mod openapi;
mod process;
mod progress;
mod projects;
mod read;
mod remote;
mod schedules;
mod secrets;
mod state;
mod statuses;
mod tokens;

pub use config::{Args, Config, LogFormat, Secret, WebhookBodyLimits};

/// The current time in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// RFC 3339 in UTC with milliseconds (`2026-11-27T19:42:01.123Z`).
pub(crate) fn rfc3339(ms: Millis) -> String {
    let t = jiff::Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    });
    jiff::fmt::temporal::DateTimePrinter::new()
        .precision(Some(3))
        .timestamp_to_string(&t)
}

/// Parses an RFC 3339 time (`2027-01-31T12:00:00Z`, `…T12:00:00.5+02:00`) or a date (`2027-01-31`,
/// its start in UTC) into milliseconds since the epoch; `None` when it is neither.
pub(crate) fn parse_time(s: &str) -> Option<Millis> {
    let s = s.trim();
    if s.len() == 10 {
        let date: jiff::civil::Date = s.parse().ok()?;
        let t = date.to_zoned(jiff::tz::TimeZone::UTC).ok()?;
        return Some(t.timestamp().as_millisecond());
    }
    // jiff reads the wider ISO 8601 forms too; RFC 3339 wants the seconds and a `Z` or `±HH:MM`.
    let b = s.as_bytes();
    let zulu = s.ends_with(['Z', 'z']);
    let colon_offset =
        b.len() > 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':';
    if b.len() < 20 || b[4] != b'-' || b[13] != b':' || b[16] != b':' || !(zulu || colon_offset) {
        return None;
    }
    let t: jiff::Timestamp = s.parse().ok()?;
    Some(t.as_millisecond())
}

/// A random token: 32 bytes, hex.
pub(crate) fn random_token() -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A random id: 16 bytes, hex (trace ids, generated delivery ids).
pub(crate) fn random_id() -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A server started by [`serve`].
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// `http://ADDR`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting requests, lets running ones finish, stops the background tasks.
    ///
    /// # Errors
    /// When the server failed while it ran.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.context("the server task panicked")?
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    ///
    /// # Errors
    /// When the server failed.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the server task panicked")?
    }

    /// Stops the server abruptly, as a crash would: no graceful shutdown (for tests).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Connects to the configured database and starts the server.
///
/// # Errors
/// When the database cannot be reached or the address cannot be bound.
pub async fn serve(config: Config) -> anyhow::Result<RunningServer> {
    // Before the database is opened, since a SQLite database is usually in the data dir.
    secure_data_dir(&config.data_dir)?;
    let store = gantry_store::connect(&config.database_url)
        .await
        .with_context(|| "cannot open the database")?;
    serve_with(config, store).await
}

/// Starts the server on `store`.
///
/// # Errors
/// When the address cannot be bound, the data dir cannot be created, or the secret key is invalid
/// or not the one the stored secrets were encrypted with.
pub async fn serve_with(config: Config, store: Arc<dyn Store>) -> anyhow::Result<RunningServer> {
    secure_data_dir(&config.data_dir)?;
    let (secrets, generated) = secrets::Secrets::load(&config)?;
    if let Some(path) = generated {
        tracing::warn!(
            path = %path.display(),
            "generated the key that encrypts stored secrets; back it up apart from the database: without it they cannot be read"
        );
    }
    let upgraded = secrets::check_and_upgrade(store.as_ref(), &secrets).await?;
    if upgraded > 0 {
        tracing::info!(
            projects = upgraded,
            "encrypted the secrets of projects stored in plaintext"
        );
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let state = state::State::new(config, secrets, store, shutdown_rx.clone());
    // A restarted server gives agents a full lease to come back before their jobs are judged.
    let lease = i64::try_from(state.config.lease_timeout.as_millis()).unwrap_or(i64::MAX);
    if let Err(e) = state.store.extend_leases(now_ms() + lease).await {
        tracing::warn!(error = %e, "cannot extend the leases of running jobs");
    }
    let background = state::spawn_background(&state);
    let app = http::router(state.clone());
    let rx = shutdown_rx;
    let limits = conn::Limits {
        header_read: state.config.header_read_timeout,
        idle: state.config.idle_timeout,
        max_connections: state.config.max_connections,
    };
    let task = tokio::spawn(async move {
        conn::serve(listener, app, limits, rx).await;
        for t in background {
            t.abort();
        }
        Ok(())
    });
    Ok(RunningServer {
        addr,
        shutdown,
        task,
    })
}

/// Creates the data dir when missing, and makes it and the secrets in it private to the server's
/// user (issue 16, finding 8): the dir `0700`, the token files and a SQLite database with its
/// `-wal` and `-shm` files `0600`. Also fixes what an older server left readable.
///
/// # Errors
/// When the dir cannot be created, or a mode cannot be set.
pub(crate) fn secure_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let private = |path: &std::path::Path, mode: u32| -> anyhow::Result<()> {
            match std::fs::metadata(path) {
                Ok(m) if m.permissions().mode() & 0o777 != mode => {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                        .with_context(|| format!("cannot make {} private", path.display()))
                }
                _ => Ok(()),
            }
        };
        private(dir, 0o700)?;
        for f in [
            "admin-token",
            "registration-token",
            secrets::KEY_FILE,
            "gantry.db",
            "gantry.db-wal",
            "gantry.db-shm",
        ] {
            private(&dir.join(f), 0o600)?;
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(())
}

/// Runs `gantry server` until SIGTERM or Ctrl-C; returns the process exit code.
///
/// # Errors
/// When it cannot start.
pub fn main(args: Args) -> anyhow::Result<u8> {
    let (config, generated) = config::load(&args, &|k| std::env::var(k).ok())?;
    init_logging(config.log_format);
    if let Some(t) = &generated.admin_token {
        eprintln!(
            "gantry server: generated the admin token (stored in {}): {t}",
            config.data_dir.join("admin-token").display()
        );
    }
    if let Some(t) = &generated.registration_token {
        eprintln!(
            "gantry server: generated the registration token (stored in {}): {t}",
            config.data_dir.join("registration-token").display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let server = serve(config).await?;
        eprintln!("gantry server: listening on {}", server.url());
        let stop = async {
            #[cfg(unix)]
            {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = term.recv() => {}
                    r = tokio::signal::ctrl_c() => r?,
                }
            }
            #[cfg(not(unix))]
            tokio::signal::ctrl_c().await?;
            Ok::<(), std::io::Error>(())
        };
        tokio::select! {
            r = stop => {
                r.context("cannot wait for signals")?;
                tracing::info!("shutting down");
                tokio::time::timeout(Duration::from_secs(30), server.shutdown()).await.ok();
            }
        }
        Ok::<u8, anyhow::Error>(0)
    })
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("GANTRY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(1_795_809_721_123),
            "2026-11-27T20:02:01.123Z"
        );
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn times_parse() {
        use super::parse_time;
        for ms in [0, 951_782_400_000, 1_795_809_721_123, 4_102_444_800_000] {
            assert_eq!(parse_time(&super::rfc3339(ms)), Some(ms));
        }
        assert_eq!(parse_time("2000-02-29"), Some(951_782_400_000));
        assert_eq!(
            parse_time("2000-02-29T02:00:00+02:00"),
            Some(951_782_400_000)
        );
        assert_eq!(
            parse_time("2000-02-28T23:30:00-00:30"),
            Some(951_782_400_000)
        );
        assert_eq!(parse_time("1970-01-01T00:00:00.5Z"), Some(500));
        for bad in [
            "",
            "2000-02-30",
            "2001-02-29",
            "2000-13-01",
            "2000-1-01",
            "2000-01-01T25:00:00Z",
            "2000-01-01T00:00:00",
            "2000-01-01T00:00Z",
            "tomorrow",
            "2000-01-01T00:00:00+0200",
            "+200-01-01",
            "2000-01-01T00:00:00.Z",
            "2000-01-01T00:00:00.1x2Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
