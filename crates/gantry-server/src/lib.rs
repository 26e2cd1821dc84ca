//! `gantry server`: webhooks in, pipelines compiled with `gantry-pipeline`, a durable job queue in a
//! [`gantry_store::Store`], the REST API, the agent protocol, commit statuses out, and metrics. It never
//! links an executor: jobs run on agents.
//!
//! [`serve`] starts everything on a [`Config`] and answers a [`RunningServer`] (its address and a
//! shutdown handle); [`config::load`] resolves a `Config` in layers. The `gantry` binary owns the
//! command line, logging, the async runtime and the signals.
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
use std::time::{SystemTime, UNIX_EPOCH};

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
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A civil date to days since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 time (`2027-01-31T12:00:00Z`, `…T12:00:00.5+02:00`) or a date (`2027-01-31`,
/// its start in UTC) into milliseconds since the epoch; `None` when it is neither.
pub(crate) fn parse_time(s: &str) -> Option<Millis> {
    fn num(s: &str) -> Option<i64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
    let s = s.trim();
    let (date, time) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d) = (
        num(y)?,
        u32::try_from(num(m)?).ok()?,
        u32::try_from(num(d)?).ok()?,
    );
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if d == 0 || d > days_in_month {
        return None;
    }
    let day_ms = days_from_civil(y, m, d) * 86_400_000;
    let Some(time) = time else {
        return Some(day_ms);
    };
    // HH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)
    let (clock, offset_ms) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let i = time.rfind(['+', '-'])?;
        let (c, off) = (&time[..i], &time[i..]);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        if oh.len() != 2 || om.len() != 2 {
            return None;
        }
        let (oh, om) = (num(oh)?, num(om)?);
        if oh > 23 || om > 59 {
            return None;
        }
        (c, sign * (oh * 60 + om) * 60_000)
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (clock, None),
    };
    let mut hms = hms.split(':');
    let (h, mi, sec) = (hms.next()?, hms.next()?, hms.next()?);
    if hms.next().is_some() || h.len() != 2 || mi.len() != 2 || sec.len() != 2 {
        return None;
    }
    let (h, mi, sec) = (num(h)?, num(mi)?, num(sec)?);
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let millis = match frac {
        Some(f) => {
            if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let f = format!("{f:0<3}");
            num(&f[..3])?
        }
        None => 0,
    };
    Some(day_ms + ((h * 60 + mi) * 60 + sec) * 1000 + millis - offset_ms)
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
