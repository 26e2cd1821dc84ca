//! `gantry agent`: registers with a Gantry server, takes jobs from its queue, and runs each with
//! `gantry-runtime` and an executor, streaming logs and uploading artifacts.
//!
//! The protocol is `gantry_api::agent`'s. The agent:
//! 1. registers with the registration token on its first start and keeps its own token in
//!    `work_dir/agent.json` (mode 0600), which later starts reuse;
//! 2. runs `concurrency` workers, each long-polling for a job; while the server cannot be reached
//!    it retries with capped exponential backoff and jitter, forever, and says so once per outage;
//! 3. runs each job as `job.rs` describes: a git checkout of the commit (`checkout.rs`) and the
//!    dependencies' artifacts in, the runtime on the one job in place, the log through a spool file
//!    to the server, artifacts out, `finish`;
//! 4. on SIGQUIT drains: asks the server to end its long polls, runs a job that comes anyway, takes
//!    no other, and exits with 0 once its jobs have ended;
//! 5. on SIGTERM or Ctrl-C aborts, as GitLab Runner's forceful shutdown does: takes no new job,
//!    stops the running ones (and one that a poll brings in that instant), reports each as failed
//!    with `runner_system_failure` and a line in its log, so that the server retries it where
//!    `retry:when` allows without waiting for its lease to run out, and exits (130 or 143). A second
//!    signal, or [`ABORT_GRACE`] without an answer from the server, exits at once.
//!
//! A job whose lease is lost (`409`) is stopped and dropped: the server has failed it already.
//!
//! [`run_agent`] runs an agent on a [`Config`]; the `gantry` binary owns the command line, logging
//! and the async runtime:
//!
//! ```text
//! gantry agent --server http://127.0.0.1:8080 --token-file /etc/gantry/registration-token --concurrency 2
//! ```

mod archive;
mod backoff;
mod checkout;
mod client;
pub mod executors;
#[cfg(test)]
mod finish_tests;
mod job;
mod reports;
mod spool;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use gantry_api::agent::{RegisterAgent, RequestJob};
use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::client::{CallError, Client};
use crate::executors::Executors;
use crate::job::Env;

/// How long one job request waits on the server for a job.
const LONG_POLL: Duration = Duration::from_secs(30);
/// The file in the work dir that holds the agent's identity.
const IDENTITY_FILE: &str = "agent.json";
/// How long an abort (SIGTERM) may take to report the running jobs before the agent exits anyway.
pub const ABORT_GRACE: Duration = Duration::from_secs(15);

/// Which executor runs jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorKind {
    /// Each job in `bash` on this machine; jobs that name an `image:` fail, as with `gantry run`.
    Shell,
    /// Each job in a container (Docker or Podman, at `DOCKER_HOST` or the default socket); jobs
    /// must name an `image:`.
    Docker,
}

impl ExecutorKind {
    fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Shell => "shell",
            ExecutorKind::Docker => "docker",
        }
    }
}

/// What an agent runs with: `gantry agent`'s options (the `gantry` binary parses them; see its
/// help for each).
#[derive(Clone, Debug)]
pub struct Config {
    /// The server's URL.
    pub server: String,
    /// The server's registration token, from the command line (discouraged: it shows in `ps`).
    pub token: Option<String>,
    /// A file holding the server's registration token.
    pub token_file: Option<PathBuf>,
    /// Register for these projects only.
    pub projects: Vec<String>,
    /// Register for protected refs only.
    pub protected_only: bool,
    /// What runs the jobs.
    pub executor: ExecutorKind,
    /// How many jobs run at once (at least 1).
    pub concurrency: u32,
    /// The agent takes jobs whose tags are all among these.
    pub tags: Vec<String>,
    /// Whether the agent takes jobs without tags.
    pub run_untagged: bool,
    /// Where the agent keeps its token and the jobs' directories.
    pub work_dir: PathBuf,
    /// The agent's name (default: the host name).
    pub name: Option<String>,
}

/// The registration token: from `--token-file`, else `--token` (with a warning: the command line
/// shows in `ps`), else `GANTRY_AGENT_TOKEN`. Jobs never see it: the executors give a job a
/// clean environment, and the agent keeps the token in no file of a job's directory.
fn registration_token(args: &Config) -> anyhow::Result<Option<String>> {
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            bail!("the token file {} is empty", path.display());
        }
        return Ok(Some(token.to_string()));
    }
    if let Some(token) = &args.token {
        tracing::warn!(
            "--token shows the registration token to every user of this machine (ps); \
             use --token-file or GANTRY_AGENT_TOKEN"
        );
        return Ok(Some(token.clone()));
    }
    Ok(std::env::var("GANTRY_AGENT_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// The agent's identity, kept in the work dir.
#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    /// The server it registered with.
    server: String,
    /// Its id there.
    id: i64,
    /// Its token.
    token: String,
}

/// Runs the agent until it is stopped (SIGQUIT drains, SIGTERM or Ctrl-C aborts; see the crate
/// docs); answers the process exit code. Runs on the caller's async runtime.
///
/// # Errors
/// When it cannot start, or the server rejects its token (the binary exits with 2 then).
pub async fn run_agent(config: Config) -> anyhow::Result<u8> {
    let (drain_tx, drain) = tokio::sync::watch::channel(false);
    let (abort_tx, abort) = tokio::sync::watch::channel(false);
    let run = agent(config, drain, abort);
    tokio::pin!(run);
    let code = tokio::select! {
        r = &mut run => return r,
        code = stopped() => code,
        () = quit() => {
            // SIGQUIT, as for GitLab Runner: take no new job, let the running ones end, exit.
            tracing::info!("SIGQUIT: finishing the running jobs and taking no new ones");
            let _ = drain_tx.send(true);
            tokio::select! {
                r = &mut run => return r,
                code = stopped() => code,
            }
        }
    };
    tracing::info!(
        "stopping: the running jobs are aborted and reported failed (runner_system_failure)"
    );
    let _ = drain_tx.send(true);
    let _ = abort_tx.send(true);
    tokio::select! {
        _ = &mut run => {}
        _ = stopped() => tracing::warn!("stopping at once: jobs not reported yet fail when their leases run out"),
        () = tokio::time::sleep(ABORT_GRACE) => tracing::warn!(
            "the jobs could not be reported within {}s; those not reported fail when their leases run out",
            ABORT_GRACE.as_secs()
        ),
    }
    Ok(code)
}

/// Resolves on SIGQUIT (a graceful stop).
async fn quit() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::quit()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// Resolves with the exit code when the process is asked to stop (Ctrl-C or SIGTERM).
async fn stopped() -> u8 {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => 130,
        () = term => 143,
    }
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gantry-agent".to_string())
}

/// Runs the agent; answers 0 once `drain` turns true and the running jobs have ended (stopped
/// and reported failed, once `abort` turns true).
async fn agent(
    args: Config,
    drain: tokio::sync::watch::Receiver<bool>,
    abort: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<u8> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let exec = Arc::new(Executors::for_agent(args.executor, &args.work_dir.join("builds")).await?);
    let work_dir = args.work_dir.clone();
    let builds = work_dir.join("builds");
    tokio::task::spawn_blocking({
        let (work_dir, builds) = (work_dir.clone(), builds.clone());
        move || -> anyhow::Result<()> {
            std::fs::create_dir_all(&work_dir)
                .with_context(|| format!("cannot create {}", work_dir.display()))?;
            // What a killed agent left behind: those jobs' leases are gone. The checkouts stay,
            // for the next jobs of their projects (each job cleans its checkout first).
            if let Ok(entries) = std::fs::read_dir(&builds) {
                for e in entries.flatten() {
                    if e.file_name() != job::CHECKOUTS {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
            Ok(())
        }
    })
    .await??;
    let name = args.name.clone().unwrap_or_else(host_name);
    let client = Client::new(&args.server, String::new())?;
    let identity_path = work_dir.join(IDENTITY_FILE);
    let identity = match read_identity(&identity_path)? {
        Some(id) => {
            tracing::info!(agent_id = id.id, file = %identity_path.display(), "using the stored agent token");
            id
        }
        None => {
            let Some(token) = registration_token(&args)? else {
                bail!(
                    "no agent token in {}: give the server's registration token with --token-file or GANTRY_AGENT_TOKEN to register",
                    identity_path.display()
                );
            };
            let body = RegisterAgent {
                token,
                name: name.clone(),
                tags: args.tags.clone(),
                run_untagged: args.run_untagged,
                executor: args.executor.as_str().to_string(),
                concurrency: args.concurrency,
                version: env!("CARGO_PKG_VERSION").to_string(),
                protocol: gantry_api::agent::PROTOCOL,
                projects: args
                    .projects
                    .iter()
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect(),
                protected_only: args.protected_only,
            };
            let registered = register(&client, &body).await?;
            let id = Identity {
                server: args.server.clone(),
                id: registered.id,
                token: registered.token,
            };
            write_identity(&identity_path, &id)?;
            tracing::info!(agent_id = id.id, name = %name, "registered");
            id
        }
    };
    let git = tokio::task::spawn_blocking(checkout::git_available).await?;
    if !git {
        tracing::warn!(
            "git is not installed: jobs get the commit's files without a repository (.git)"
        );
    }
    let env = Arc::new(Env {
        client: client.with_token(identity.token.clone()),
        work_dir,
        name,
        exec,
        git,
        abort,
    });
    let shared = Arc::new(Shared::default());
    tracing::info!(
        server = %args.server,
        concurrency = args.concurrency,
        executor = args.executor.as_str(),
        "waiting for jobs"
    );
    let mut workers = tokio::task::JoinSet::new();
    for slot in 0..args.concurrency {
        let slot = usize::try_from(slot).unwrap_or(usize::MAX);
        workers.spawn(worker(env.clone(), shared.clone(), drain.clone(), slot));
    }
    // On SIGQUIT the workers' long polls are not dropped (a job the server hands out in that
    // instant would wait for its lease to run out): the server is asked to end them with `204`,
    // and a job that comes anyway runs.
    let stopper = tokio::spawn({
        let (env, shared, mut drain) = (env.clone(), shared.clone(), drain.clone());
        async move {
            if drain.wait_for(|d| *d).await.is_err() {
                return;
            }
            for _ in 0..3 {
                match env.client.stop_polling(&shared.session).await {
                    Ok(()) => return,
                    Err(e) if e.is_transient() => {
                        tracing::debug!(error = %e, "cannot end the long polls; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot end the long polls; they end within {}s", LONG_POLL.as_secs());
                        return;
                    }
                }
            }
        }
    });
    let _stopper = AbortOnDrop(stopper);
    // Workers end when the agent drains, or on a fatal error.
    while let Some(ended) = workers.join_next().await {
        let e = match ended {
            Ok(None) => continue,
            Ok(Some(e)) => e.context(format!(
                "the agent token in {} was rejected; remove the file to register again",
                identity_path.display()
            )),
            Err(e) => anyhow::anyhow!("a worker stopped: {e}"),
        };
        return Err(e);
    }
    tracing::info!("drained: every job ended");
    Ok(0)
}

/// Registers, retrying while the server cannot be reached.
async fn register(
    client: &Client,
    body: &RegisterAgent,
) -> anyhow::Result<gantry_api::agent::Registered> {
    let mut backoff = Backoff::default();
    let mut told = false;
    loop {
        match client.register(body).await {
            Ok(r) => return Ok(r),
            Err(CallError::Unauthorized(m)) => {
                bail!("the server rejected the registration token: {m}")
            }
            Err(e) if e.is_transient() => {
                if !told {
                    tracing::warn!(error = %e, "cannot register yet; retrying");
                    told = true;
                }
                backoff.wait().await;
            }
            Err(e) => bail!("cannot register: {e}"),
        }
    }
}

fn read_identity(path: &Path) -> anyhow::Result<Option<Identity>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("cannot read {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the identity readable by the owner only, replacing the file in one step.
fn write_identity(path: &Path, id: &Identity) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("json.new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(id)?)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A new random session id for this process's long polls.
fn new_session() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}-{nanos:x}", std::process::id())
}

/// What the workers share.
struct Shared {
    /// This process's session (see `StopPolling`).
    session: String,
    /// The jobs running now.
    running: Mutex<Vec<i64>>,
    /// The server cannot be reached (said once per outage).
    outage: AtomicBool,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            session: new_session(),
            running: Mutex::default(),
            outage: AtomicBool::default(),
        }
    }
}

impl Shared {
    fn running(&self) -> std::sync::MutexGuard<'_, Vec<i64>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reachable(&self) {
        if self.outage.swap(false, Ordering::SeqCst) {
            tracing::info!("the server answers again");
        }
    }

    fn unreachable(&self, e: &CallError) {
        if !self.outage.swap(true, Ordering::SeqCst) {
            tracing::warn!(error = %e, "the server cannot be reached; retrying until it can");
        }
    }
}

/// Takes jobs and runs them, one at a time, until `drain` turns true (then `None`, after the job
/// it runs) or the token is rejected (the error). `slot` numbers the worker.
///
/// A long poll in flight when the agent drains is not dropped: the server ends it (see `agent`),
/// and a job it brings runs. Dropping it could lose a job that the server claimed for the agent in
/// that instant until its lease ran out.
async fn worker(
    env: Arc<Env>,
    shared: Arc<Shared>,
    mut drain: tokio::sync::watch::Receiver<bool>,
    slot: usize,
) -> Option<anyhow::Error> {
    let mut backoff = Backoff::default();
    loop {
        if *drain.borrow() {
            return None;
        }
        let body = RequestJob {
            running: shared.running().clone(),
            session: Some(shared.session.clone()),
            protocol: Some(gantry_api::agent::PROTOCOL),
        };
        let asked = env.client.request_job(LONG_POLL, &body).await;
        match asked {
            Ok(None) => {
                shared.reachable();
                backoff.reset();
            }
            Ok(Some(spec)) => {
                shared.reachable();
                backoff.reset();
                let id = spec.job_id;
                shared.running().push(id);
                job::run(env.clone(), spec, slot).await;
                shared.running().retain(|j| *j != id);
            }
            Err(CallError::Unauthorized(m)) => {
                return Some(anyhow::anyhow!("the server rejected the agent token: {m}"));
            }
            Err(_) if *drain.borrow() => return None,
            Err(e) => {
                shared.unreachable(&e);
                tokio::select! {
                    () = backoff.wait() => {}
                    _ = drain.wait_for(|d| *d) => return None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_private_and_round_trips() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(IDENTITY_FILE);
        assert!(read_identity(&path).unwrap().is_none());
        let id = Identity {
            server: "http://x".into(),
            id: 3,
            token: "secret".into(),
        };
        write_identity(&path, &id).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = read_identity(&path).unwrap().unwrap();
        assert_eq!((back.id, back.token.as_str()), (3, "secret"));
    }
}
