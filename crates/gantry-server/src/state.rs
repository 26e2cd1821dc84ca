//! What every handler and background task shares.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use gantry_store::{Millis, Store};
use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::error::{AppError, AppResult};
use crate::metrics::Metrics;
use crate::projects::LoadedProject;
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
    /// Signalled when a notification was stored: the sender wakes up (see `notify.rs`).
    pub notifications: Notify,
    /// When the last webhook or trigger arrived (see [`Intake`]).
    pub intake: Intake,
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
    /// Projects as webhooks see them, by name, with when they were read (see [`State::project_for_hook`]).
    pub hook_projects: Mutex<HashMap<String, (std::time::Instant, Arc<LoadedProject>)>>,
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
            notifications: Notify::new(),
            intake: Intake::default(),
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

    /// The project named `name`, or `404`.
    pub async fn project(&self, name: &str) -> AppResult<LoadedProject> {
        project(self, name).await
    }

    /// The project named `name` for a webhook: as [`State::project`], read at most
    /// [`HOOK_PROJECT_TTL`] ago.
    pub async fn project_for_hook(&self, name: &str) -> AppResult<Arc<LoadedProject>> {
        project_for_hook(self, name).await
    }
}

/// For how long after a delivery arrived the intake counts as busy.
const INTAKE_BUSY_MS: i64 = 50;

/// When the last delivery (webhook or trigger) arrived.
#[derive(Debug, Default)]
pub(crate) struct Intake {
    last_ms: std::sync::atomic::AtomicI64,
}

impl Intake {
    /// Records a delivery arriving now.
    pub fn arrived(&self) {
        self.last_ms
            .store(crate::now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a delivery arrived in the last [`INTAKE_BUSY_MS`].
    pub fn busy(&self) -> bool {
        crate::now_ms() - self.last_ms.load(std::sync::atomic::Ordering::Relaxed) < INTAKE_BUSY_MS
    }
}

/// How long a webhook may use a project it read before: a burst of deliveries reads it once.
/// Projects have no update or delete route; the bound keeps a change made in the database (or by a
/// later route, on any server) from being missed for longer than this.
const HOOK_PROJECT_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// The most projects webhooks keep.
const HOOK_PROJECTS_KEPT: usize = 10_000;

/// The project named `name` for a webhook: as [`State::project`], read at most
/// [`HOOK_PROJECT_TTL`] ago.
async fn project_for_hook(state: &State, name: &str) -> AppResult<Arc<LoadedProject>> {
    let now = std::time::Instant::now();
    {
        let cache = state
            .hook_projects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, p)) = cache.get(name) {
            if now.duration_since(*at) < HOOK_PROJECT_TTL {
                return Ok(p.clone());
            }
        }
    }
    let project = Arc::new(project(state, name).await?);
    let mut cache = state
        .hook_projects
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if cache.len() >= HOOK_PROJECTS_KEPT {
        cache.retain(|_, (at, _)| now.duration_since(*at) < HOOK_PROJECT_TTL);
        if cache.len() >= HOOK_PROJECTS_KEPT {
            cache.clear();
        }
    }
    cache.insert(name.to_string(), (now, project.clone()));
    Ok(project)
}

/// The project named `name`, or `404`.
async fn project(state: &State, name: &str) -> AppResult<LoadedProject> {
    match state.store.project(name).await? {
        Some(r) => LoadedProject::parse(r, &state.secrets),
        None => Err(AppError::not_found(format!("no project named `{name}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn intake_is_busy_for_a_while_after_a_delivery() {
        let intake = Intake::default();
        assert!(!intake.busy(), "no delivery has arrived");
        intake.arrived();
        assert!(intake.busy());
        std::thread::sleep(Duration::from_millis(
            u64::try_from(INTAKE_BUSY_MS).unwrap() + 20,
        ));
        assert!(!intake.busy(), "the burst is over");
        intake.arrived();
        assert!(intake.busy());
    }
}
