//! A project's bare mirror holding a pipeline's commit, for the handlers that read it (sources,
//! git over HTTP): [`with_commit`].

use gantry_store::PipelineRecord;

use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// Runs `then(mirror, sha)` (blocking) under the project's mirror lock once the mirror holds the
/// pipeline's commit: another server may have created the pipeline, so a mirror that lacks the
/// commit fetches it from the project's repository first.
pub(crate) async fn with_commit(
    state: &AppState,
    p: &PipelineRecord,
    then: impl FnOnce(&std::path::Path, &str) -> anyhow::Result<()> + Send + 'static,
) -> AppResult<()> {
    let mirror = crate::git::mirror_path(&state.config.data_dir, p.project_id);
    let sha = p.sha.clone();
    // The common case: the mirror has the commit; no lock (readers of a repository need none).
    let present = {
        let (mirror, sha) = (mirror.clone(), sha.clone());
        tokio::task::spawn_blocking(move || crate::git::has_commit(&mirror, &sha))
            .await
            .map_err(AppError::internal)?
    };
    if present {
        return tokio::task::spawn_blocking(move || then(&mirror, &sha))
            .await
            .map_err(AppError::internal)?
            .map_err(|e| AppError::internal(format!("{e:#}")));
    }
    let project = match state.store.project_by_id(p.project_id).await? {
        Some(r) => crate::projects::LoadedProject::parse(r, &state.secrets)?,
        None => return Err(AppError::not_found("the project no longer exists")),
    };
    let lock = state.mirror_lock(p.project_id);
    let _guard = lock.lock().await;
    let remote = crate::git::Remote::new(&project.spec.repo_url, state.config.git_timeout);
    let r = if p.tag {
        format!("refs/tags/{}", p.git_ref)
    } else {
        format!("refs/heads/{}", p.git_ref)
    };
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        if !crate::git::has_commit(&mirror, &sha) {
            crate::git::fetch(&mirror, &remote, Some(&sha), &r)?;
        }
        then(&mirror, &sha)
    })
    .await
    .map_err(AppError::internal)?
    .map_err(|e| AppError::internal(format!("{e:#}")))
}
