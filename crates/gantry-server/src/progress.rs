//! Applies `advance` to stored pipelines: optimistic writes with `Store::apply` (read again and retry
//! when another writer won), then the effects: agents woken, metrics, commit statuses. Also the lease
//! reaper, the sweeper (delayed jobs, pipelines left behind by a crash, old source archives),
//! and interruptible auto-cancel. The cancel / retry / play / approve routes (`actions`) drive it.

use std::time::Duration;

use gantry_api::JobStatus;
use gantry_store::{Millis, PipelineRecord};

use crate::advance::{self, Step};
use crate::error::{AppError, AppResult};
use crate::projects::LoadedProject;
use crate::state::AppState;

pub(crate) type Op<'a> =
    &'a (dyn Fn(&PipelineRecord, Millis) -> Result<Step, String> + Send + Sync);

/// Applies `op` (when given) to pipeline `id`, then advances it until nothing changes.
pub(crate) async fn drive(state: &AppState, id: i64, op: Option<Op<'_>>) -> AppResult<()> {
    let mut op = op;
    for _ in 0..100 {
        let Some(p) = state.store.pipeline(id).await? else {
            return Err(AppError::not_found(format!("no pipeline {id}")));
        };
        let now = crate::now_ms();
        let mut step = match op {
            Some(f) => f(&p, now).map_err(AppError::conflict)?,
            None => advance::advance(&p, now),
        };
        // A pipeline's end's notifications are stored with it, in one transaction.
        if let Some(s) = step.changes.status.filter(|s| s.is_final()) {
            step.changes.notifications = crate::notify::pipeline_end(state, &p, s).await;
        }
        if step.is_empty() {
            if op.is_none() {
                if let Some(at) = step.wake_at {
                    remember(state, at, id);
                }
                return Ok(());
            }
            op = None;
            continue;
        }
        if state.store.apply(id, p.version, &step.changes).await? {
            effects(state, &p, &step).await;
            op = None;
        }
    }
    tracing::warn!(pipeline = id, "the pipeline does not settle");
    Ok(())
}

fn remember(state: &AppState, at: Millis, id: i64) {
    state
        .delayed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert((at, id));
}

async fn effects(state: &AppState, before: &PipelineRecord, step: &Step) {
    if step.queued {
        state.jobs_ready.notify_waiters();
    }
    if let Some(at) = step.wake_at {
        remember(state, at, before.id);
    }
    for &s in &step.ended {
        state.metrics.job_ended(s);
    }
    if !step.ended.is_empty() {
        state.logs.notify_waiters();
        // A job canceled before it ran may have a deployment already (a queued rollback's
        // attempt): its end is handled as a finish's. A running job ends by its finish.
        for c in &step.changes.jobs {
            if c.status != Some(JobStatus::Canceled) {
                continue;
            }
            if let Some(j) = before.jobs.iter().find(|j| j.id == c.id) {
                crate::deployments::ended(state, j, JobStatus::Canceled).await;
            }
        }
    }
    if let Some(s) = step.changes.status {
        if s.is_final() {
            state.metrics.pipeline_ended(s);
            crate::notify::pipeline_ended(state, before.id, step.changes.notifications.len());
        }
        tracing::info!(pipeline = before.id, trace_id = %before.trace_id, status = %s, "pipeline status");
        crate::statuses::pipeline_changed(state, before.id).await;
    }
}

/// Advances pipeline `id`, logging failures (for background callers).
pub(crate) async fn advance(state: &AppState, id: i64) {
    if let Err(e) = drive(state, id, None).await {
        tracing::warn!(pipeline = id, error = %e.message, "cannot advance the pipeline");
    }
}

/// Fails jobs whose lease ran out, every quarter of the lease timeout, and advances their pipelines
/// (which retries them where `retry:when` allows `runner_system_failure`).
pub(crate) async fn reaper(state: AppState) {
    let every = (state.config.lease_timeout / 4).max(Duration::from_millis(100));
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        expire(&state).await;
    }
}

/// Fails the running jobs whose lease ran out (`runner_system_failure`) and advances their
/// pipelines: the lost-agent path, also taken at once for a revoked agent's jobs. A deploy job's
/// end is then handled as a finish's ([`crate::deployments::ended`]).
pub(crate) async fn expire(state: &AppState) {
    match state.store.expire_leases(crate::now_ms()).await {
        Ok(expired) => {
            let mut pipelines: Vec<i64> = expired.iter().map(|(_, p)| *p).collect();
            pipelines.sort_unstable();
            pipelines.dedup();
            for (job, pipeline) in &expired {
                tracing::warn!(job, pipeline, "lease expired: runner_system_failure");
                state.metrics.job_ended(JobStatus::Failed);
            }
            if !expired.is_empty() {
                state.logs.notify_waiters();
            }
            for p in pipelines {
                advance(state, p).await;
            }
            // A deployment's end, as a finish has it: its notification, a rollback's failure
            // reported (never an automatic rollback: no verification failed).
            for (job, _) in &expired {
                match state.store.job(*job).await {
                    Ok(Some(j)) => {
                        crate::deployments::ended(state, &j, JobStatus::Failed).await;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(job, error = %e, "cannot read an expired job"),
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot expire leases"),
    }
}

/// How long a commit's source archive is kept after it was made.
const ARCHIVE_AGE: Duration = Duration::from_secs(3600);

/// Advances every active pipeline at start (a crash may have left one behind), delayed jobs when they
/// come due, and every active pipeline once a minute (delayed jobs another server scheduled); once a
/// minute, removes source archives older than [`ARCHIVE_AGE`].
pub(crate) async fn sweeper(state: AppState) {
    let mut shutdown = state.shutdown.clone();
    let mut last_full = None::<std::time::Instant>;
    loop {
        if last_full.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            last_full = Some(std::time::Instant::now());
            let data_dir = state.config.data_dir.clone();
            let _ = tokio::task::spawn_blocking(move || {
                crate::git::prune_archives(&data_dir, ARCHIVE_AGE)
            })
            .await;
            match state.store.drop_stale_artifact_uploads().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(uploads = n, "dropped unfinished artifact uploads"),
                Err(e) => tracing::warn!(error = %e, "cannot drop unfinished artifact uploads"),
            }
            match state.store.active_pipelines().await {
                Ok(ids) => {
                    for id in ids {
                        if state.stopping() {
                            return;
                        }
                        advance(&state, id).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list active pipelines"),
            }
        }
        let now = crate::now_ms();
        let due: Vec<i64> = {
            let mut d = state
                .delayed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut out = Vec::new();
            while let Some(&(at, id)) = d.first() {
                if at > now {
                    break;
                }
                d.pop_first();
                out.push(id);
            }
            out
        };
        for id in due {
            advance(&state, id).await;
        }
        let next = state
            .delayed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .first()
            .map(|(at, _)| *at);
        let wait = next.map_or(Duration::from_secs(1), |at| {
            Duration::from_millis(u64::try_from((at - now).clamp(10, 1000)).unwrap_or(1000))
        });
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Cancels the older pipelines of `git_ref` that a new push made redundant, where every job that
/// started is `interruptible`.
pub(crate) async fn auto_cancel(
    state: &AppState,
    project: &LoadedProject,
    git_ref: &str,
    newer: i64,
) {
    let older = match state
        .store
        .unfinished_push_pipelines(project.record.id, git_ref, newer)
        .await
    {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(newer, error = %e, "cannot list the pipelines a push makes redundant");
            return;
        }
    };
    for old in older {
        let Ok(Some(full)) = state.store.pipeline(old).await else {
            continue;
        };
        let interruptible = advance::latest(&full)
            .iter()
            .filter(|j| j.started_at.is_some())
            .all(|j| j.interruptible);
        if interruptible {
            tracing::info!(
                pipeline = old,
                newer,
                "auto-canceled: a newer pipeline runs the same ref"
            );
            let op = |p: &PipelineRecord, now| Ok(advance::cancel(p, now));
            if let Err(e) = drive(state, old, Some(&op)).await {
                tracing::warn!(pipeline = old, error = %e.message, "cannot auto-cancel");
            }
        }
    }
}
