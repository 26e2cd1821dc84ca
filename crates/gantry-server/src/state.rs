//! What every handler and background task shares.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use gantry_store::{Millis, Store};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::statuses::StatusQueue;

/// The server's shared state.
pub(crate) struct State {
    pub store: Arc<dyn Store>,
    pub config: Config,
    /// The key of the secrets stored in projects' settings (see `secrets.rs`).
    pub secrets: crate::secrets::Secrets,
    /// Signalled (to every waiter) when jobs may have become pending: long polls wake up and claim.
    pub jobs_ready: Notify,
    /// Signalled when a delivery was stored: the processor wakes up.
    pub deliveries: Notify,
    /// When the last webhook or trigger arrived (see `intake::Intake`).
    pub intake: crate::intake::Intake,
    /// Signalled when a log grew or a job ended: live log streams wake up.
    pub logs: Notify,
    pub metrics: Metrics,
    /// One lock per project's git mirror.
    pub mirrors: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// Delayed jobs waiting for their time: `(run_after, pipeline id)`.
    pub delayed: Mutex<BTreeSet<(Millis, i64)>>,
    pub statuses: StatusQueue,
    pub shutdown: watch::Receiver<bool>,
    /// Agent sessions whose long polls must end (`(agent id, session)` → when the agent asked).
    pub stopped_polls: Mutex<HashMap<(i64, String), std::time::Instant>>,
    /// Signalled when a session was stopped: long polls wake up and check theirs.
    pub polls_stopped: Notify,
    /// Projects as webhooks see them, by name, with when they were read (see `projects::for_hook`).
    pub hook_projects:
        Mutex<HashMap<String, (std::time::Instant, Arc<crate::projects::LoadedProject>)>>,
    /// The bytes that webhook bodies being read may hold (`Config::webhook_body_budget_bytes`).
    pub hook_bodies: tokio::sync::Semaphore,
}

/// How long a stopped session is remembered: longer than any long poll (60 s), so that a poll
/// that reaches the server after the stop also ends at once.
pub(crate) const STOPPED_POLLS_KEPT: std::time::Duration = std::time::Duration::from_secs(120);

/// The state as handlers hold it.
pub(crate) type AppState = Arc<State>;

impl State {
    pub fn new(
        config: Config,
        secrets: crate::secrets::Secrets,
        store: Arc<dyn Store>,
        shutdown: watch::Receiver<bool>,
    ) -> AppState {
        let hook_bodies = tokio::sync::Semaphore::new(
            config
                .webhook_body_budget_bytes
                .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        );
        Arc::new(State {
            hook_bodies,
            store,
            config,
            secrets,
            jobs_ready: Notify::new(),
            deliveries: Notify::new(),
            intake: crate::intake::Intake::default(),
            logs: Notify::new(),
            metrics: Metrics::new(),
            mirrors: Mutex::new(HashMap::new()),
            delayed: Mutex::new(BTreeSet::new()),
            statuses: StatusQueue::new(),
            hook_projects: Mutex::new(HashMap::new()),
            shutdown,
            stopped_polls: Mutex::new(HashMap::new()),
            polls_stopped: Notify::new(),
        })
    }

    /// The lock of project `id`'s mirror.
    pub fn mirror_lock(&self, id: i64) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self
            .mirrors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.entry(id).or_default().clone()
    }

    /// The lease deadline of a call made now.
    pub fn lease_until(&self, now: Millis) -> Millis {
        now + i64::try_from(self.config.lease_timeout.as_millis()).unwrap_or(i64::MAX / 2)
    }

    /// Whether the long polls of `session` of agent `agent` must end.
    pub fn polls_stopped(&self, agent: i64, session: Option<&str>) -> bool {
        let Some(session) = session else {
            return false;
        };
        self.stopped_polls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&(agent, session.to_string()))
    }

    /// Ends the long polls of `session` of agent `agent`, now and for [`STOPPED_POLLS_KEPT`].
    pub fn stop_polls(&self, agent: i64, session: &str) {
        {
            let mut m = self
                .stopped_polls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            m.retain(|_, at| at.elapsed() < STOPPED_POLLS_KEPT);
            m.insert((agent, session.to_string()), std::time::Instant::now());
        }
        self.polls_stopped.notify_waiters();
    }

    /// Whether the server is shutting down.
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Starts the background tasks: the delivery processor, the lease reaper, the progress sweeper (delayed
/// jobs, pipelines left behind by a crash), the cron scheduler and the commit status poster.
pub(crate) fn spawn_background(state: &AppState) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(crate::intake::run(state.clone())),
        tokio::spawn(crate::progress::reaper(state.clone())),
        tokio::spawn(crate::progress::sweeper(state.clone())),
        tokio::spawn(crate::schedules::run(state.clone())),
        tokio::spawn(crate::statuses::run(state.clone())),
    ]
}
