//! `gantry server`: webhooks in, pipelines compiled with `gantry-pipeline`, a durable job queue in a
//! [`gantry_store::Store`], the REST API, the agent protocol, commit statuses out, and metrics. It never
//! links an executor: jobs run on agents.
//!
//! [`serve`] starts everything on a [`Config`] and answers a [`RunningServer`] (its address and a
//! shutdown handle); [`config::load`] resolves a `Config` in layers. The `gantry` binary owns the
//! command line, logging, the async runtime and the signals.
//!
//! Modules, in floors: imports point down (`cargo xtask imports gantry-server` prints them).
//! - the top: this file (`serve`, the background tasks); `router`, the only module that names
//!   handlers, with `openapi`; `conn`: the accept loop, with header-read and idle timeouts and a
//!   connection cap;
//! - the handlers, one module per area, never importing each other: `admin` (projects), `tokens`,
//!   `hooks` (webhooks, API triggers), `actions` (cancel, retry, play, approve), `read` (the read
//!   API), `dispatch` (the agent protocol), `githttp` (the mirrors over git's smart HTTP), `health`;
//! - what handlers share: `intake` (deliveries → pipelines, the background processor, with `events`
//!   to read a delivery and `includes` to fetch what the compiler includes); `advance` (pure: a
//!   pipeline's next state with GitLab's semantics), which `progress` applies; `spec` (the stored
//!   JSON documents), `projects`, `secrets`, `git`, `mirror`, `jobtoken`, `statuses`, `schedules`;
//!   `http` (extractors, auth, middleware), `views`, `state`, `error`, `metrics`, `config`,
//!   `data_dir`, `clock`, `ids`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use gantry_store::Store;
use tokio::sync::watch;

mod actions;
mod admin;
mod advance;
mod clock;
pub mod config;
mod conn;
mod data_dir;
mod deployments;
mod dispatch;
mod error;
mod events;
mod git;
mod githttp;
mod health;
mod hooks;
mod http;
mod ids;
mod includes;
mod intake;
mod jobtoken;
mod metrics;
mod mirror;
mod notify;
mod openapi;
mod progress;
mod projects;
mod read;
mod reports;
mod rollback;
mod router;
mod schedules;
mod secrets;
mod spec;
mod state;
mod statuses;
mod tokens;
mod views;

pub use config::{Args, Config, LogFormat, Secret, WebhookBodyLimits};

pub(crate) use clock::{now_ms, parse_time, rfc3339};
pub(crate) use data_dir::secure_data_dir;
pub(crate) use ids::{random_id, random_token};

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
    let background = spawn_background(&state);
    let app = router::router(state.clone());
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

/// Starts the background tasks: the delivery processor, the lease reaper, the progress sweeper (delayed
/// jobs, pipelines left behind by a crash), the cron scheduler, the commit status poster and the
/// notification sender.
fn spawn_background(state: &state::AppState) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(crate::intake::run(state.clone())),
        tokio::spawn(crate::progress::reaper(state.clone())),
        tokio::spawn(crate::progress::sweeper(state.clone())),
        tokio::spawn(crate::schedules::run(state.clone())),
        tokio::spawn(crate::statuses::run(state.clone())),
        tokio::spawn(crate::notify::run(state.clone())),
    ]
}
