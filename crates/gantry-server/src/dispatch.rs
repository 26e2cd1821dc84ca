//! The agent protocol (see `gantry_api::agent`): registration, long-poll job requests, heartbeats, log
//! chunks, sources, artifacts, and finishing a job.

use gantry_api::{ErrorBody, Job, JobStatus, PipelineStatus, ProjectVariable};
use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gantry_api::agent::{
    Dependency, FinishJob, Heartbeat, JobSpec, LogAck, Outcome, RegisterAgent, Registered,
    RequestJob, StopPolling,
};
use gantry_pipeline::plan::Retry;
use gantry_pipeline::{Plan, Variable, vars};
use gantry_store::{
    ARTIFACT_CHUNK, AgentRecord, JobRecord, JobResult, Millis, NewAgent, PipelineRecord, StoreError,
};
use serde::Deserialize;

use crate::error::{AppError, AppResult};
use crate::http::{AgentAuth, JsonBody, PathParam, QueryParams, RawBody, same, token_hash};
use crate::spec::{JobDoc, PipelineDoc};
use crate::state::AppState;
use crate::views::artifacts_body;

/// `POST /api/v1/agents/register`.
#[utoipa::path(post, path = "/api/v1/agents/register", tag = "agent protocol", request_body = RegisterAgent,
    responses((status = 201, description = "Registered", body = Registered), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 413, description = "The body is over the limit", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)))]
pub(crate) async fn register(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RegisterAgent>,
) -> AppResult<(StatusCode, Json<Registered>)> {
    if !registration_token_valid(&state, &body.token).await? {
        return Err(AppError::unauthorized("invalid registration token"));
    }
    let name = body.name.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(AppError::bad_request(
            "the name must be 1 to 200 printable characters",
        ));
    }
    if body.tags.iter().any(|t| t.is_empty() || t.len() > 200) || body.tags.len() > 100 {
        return Err(AppError::bad_request(
            "tags must be 1 to 200 characters, at most 100 of them",
        ));
    }
    if body.projects.len() > 1000 {
        return Err(AppError::bad_request("at most 1000 projects"));
    }
    // Project names become ids: a project deleted and created again under its name is another.
    let mut projects = Vec::new();
    for name in &body.projects {
        let Some(p) = state.store.project(name).await? else {
            return Err(AppError::bad_request(format!(
                "projects: no project `{name}`"
            )));
        };
        projects.push(p.id);
    }
    let token = crate::random_token();
    let now = crate::now_ms();
    let id = state
        .store
        .register_agent(&NewAgent {
            name: name.to_string(),
            token_hash: token_hash(&token),
            tags: body.tags,
            run_untagged: body.run_untagged,
            executor: body.executor,
            concurrency: i64::from(body.concurrency.max(1)),
            version: body.version,
            registered_at: now,
            projects: (!projects.is_empty()).then_some(projects),
            protected_only: body.protected_only,
            protocol: i64::from(body.protocol),
        })
        .await?;
    state.store.touch_agent(id, now, None).await?;
    tracing::info!(agent = id, name, projects = ?body.projects, protected_only = body.protected_only, "agent registered");
    Ok((StatusCode::CREATED, Json(Registered { id, token })))
}

/// Whether `token` is the current registration token: the rotated one in the store, else the
/// configured one. Read from the store on every registration, so every server agrees at once.
async fn registration_token_valid(state: &AppState, token: &str) -> AppResult<bool> {
    Ok(
        match state
            .store
            .setting(crate::http::REGISTRATION_TOKEN_SETTING)
            .await?
        {
            Some(hash) => same(&token_hash(token), &hash),
            None => same(token, &state.config.registration_token.0),
        },
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct WaitQuery {
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// `POST /api/v1/agent/jobs/request?wait_ms=N`: a job, or `204` when none came within `wait_ms`.
#[utoipa::path(post, path = "/api/v1/agent/jobs/request", tag = "agent protocol",
    params(("wait_ms" = Option<u64>, Query, description = "How long to wait for a job (at most 60000)")),
    request_body(content = Option<RequestJob>, description = "What the agent runs"),
    responses((status = 200, description = "A job", body = JobSpec), (status = 204, description = "No job came in time"), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 413, description = "The body is over the limit", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn request(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    QueryParams(q): QueryParams<WaitQuery>,
    RawBody(body): RawBody,
) -> AppResult<Response> {
    let asked = if body.is_empty() {
        RequestJob::default()
    } else {
        serde_json::from_slice::<RequestJob>(&body)
            .map_err(|e| AppError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let session = asked.session.as_deref();
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(60_000));
    let start = tokio::time::Instant::now();
    let deadline = start + wait;
    touch(&state, &agent, crate::now_ms(), asked.protocol).await?;
    let mut shutdown = state.shutdown.clone();
    loop {
        // Listen before claiming, so that a job queued between the claim and the wait is not missed.
        let notified = state.jobs_ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // The same for a stop of this agent's session: checked after listening.
        let stop = state.polls_stopped.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        if state.polls_stopped(agent.id, session) {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        let now = crate::now_ms();
        if let Some(job) = state
            .store
            .claim(&agent, now, state.lease_until(now))
            .await?
        {
            // A rollback's attempt that a newer deployment superseded fails at once.
            if crate::rollback::superseded(&state, &agent, &job).await? {
                continue;
            }
            return handed_out(&state, &agent, job).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() || state.stopping() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        // Wake on a local signal, or every second for jobs that another server queued.
        tokio::select! {
            () = &mut notified => {}
            () = &mut stop => {}
            () = tokio::time::sleep(left.min(Duration::from_secs(1))) => {}
            _ = shutdown.changed() => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

/// `POST /api/v1/agent/jobs/request/stop`: the agent drains. Its long polls of the session end with
/// `204` (on this server: a poll held by another server ends when its wait does, and a job it
/// claims goes to the agent, which runs it).
#[utoipa::path(post, path = "/api/v1/agent/jobs/request/stop", tag = "agent protocol", request_body = StopPolling,
    responses((status = 204, description = "The session's polls end"), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 413, description = "The body is over the limit", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn stop_polling(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    JsonBody(body): JsonBody<StopPolling>,
) -> AppResult<StatusCode> {
    if body.session.is_empty() || body.session.len() > 200 {
        return Err(AppError::bad_request(
            "the session must be 1 to 200 characters",
        ));
    }
    state.stop_polls(agent.id, &body.session);
    tracing::info!(agent = agent.id, "the agent drains: its long polls end");
    Ok(StatusCode::NO_CONTENT)
}

async fn handed_out(state: &AppState, agent: &AgentRecord, job: JobRecord) -> AppResult<Response> {
    if let (Some(q), Some(s)) = (job.queued_at, job.started_at) {
        state
            .metrics
            .queue_wait
            .observe(crate::metrics::seconds(s - q));
    }
    // Only the pipeline's own row and the records of the jobs this one takes artifacts from: the
    // cost does not grow with the pipeline's size.
    let Some(p) = state.store.pipeline_head(job.pipeline_id).await? else {
        return Err(AppError::internal("a claimed job has no pipeline"));
    };
    // A rollback's attempt runs its job turned into the rollback (`JobDoc::runnable`).
    let main = serde_json::from_str::<JobDoc>(&job.spec)
        .map_err(AppError::internal)?
        .runnable();
    let deps = match dependency_names(&main) {
        Some(names) => state.store.jobs_named(p.id, &names).await?,
        // The first stage that has jobs is 0 (see `intake::new_jobs`): no earlier jobs to read.
        None if job.stage_index == 0 => Vec::new(),
        None => state.store.jobs_before_stage(p.id, job.stage_index).await?,
    };
    let lease_ms = u64::try_from(state.config.lease_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut doc: PipelineDoc = serde_json::from_str(&p.spec).map_err(AppError::internal)?;
    // A fork pipeline's jobs get no credential beyond what the fork could read anyway: no
    // `CI_JOB_TOKEN` (the project's mirror) and no project variable, until it is approved.
    let token = if doc.fork.as_ref().is_some_and(|f| !f.secrets()) {
        doc.project_variables.clear();
        None
    } else {
        crate::jobtoken::mint(&state.config.admin_token.0, &job)
    };
    // Masked and protected project variables are stored without their value; the project's
    // current one is handed out, read only when the pipeline has such a variable.
    let secrets = if doc
        .project_variables
        .iter()
        .any(|v| (v.masked || v.protected) && v.value.is_none())
    {
        state.project(&p.project_name).await?.spec.variables
    } else {
        Vec::new()
    };
    // A gate job's inputs: read only for gate jobs (decoding summaries takes milliseconds). The
    // change's lines were read when the pipeline was created: no git here, but for a pipeline
    // created before its doc kept them (no `changes`), which reads them now as intake does.
    let needs_changes = !main.gate.is_empty() && crate::reports::needs_changes(&main);
    let kept = match doc.changes.take() {
        None if needs_changes => {
            let project = state.project(&p.project_name).await?;
            let before = p.before_sha.as_deref();
            Some(crate::reports::pipeline_changes(state, &project, &doc, &p.sha, before).await)
        }
        kept => kept,
    };
    let gate = (!main.gate.is_empty()).then(|| {
        let changes = needs_changes.then(|| match &kept {
            Some(c) => c.lines(),
            None => Err("the pipeline was created without its change's lines".to_owned()),
        });
        (crate::reports::gate_source_names(&main), changes)
    });
    let mut spec = job_spec(&p, doc, &secrets, &job, main, &deps, lease_ms, token)
        .map_err(AppError::internal)?;
    if let Some((names, changes)) = gate {
        spec.gate_reports = Some(gate_reports(state, &p, &job, names).await?);
        spec.changes = match changes {
            Some(Ok(lines)) => Some(lines),
            Some(Err(why)) => {
                tracing::warn!(job = job.id, pipeline = p.id, %why, "new_coverage has no data");
                None
            }
            None => None,
        };
    }
    crate::deployments::record(&*state.store, &p, &job, &spec).await?;
    tracing::info!(job = job.id, pipeline = p.id, agent = agent.id, trace_id = %p.trace_id, "job handed out");
    // The pipeline becomes running (and started); not on the agent's time.
    if p.status != PipelineStatus::Running || p.started_at.is_none() {
        let (s, id) = (state.clone(), p.id);
        tokio::spawn(async move { crate::progress::advance(&s, id).await });
    }
    Ok(Json(spec).into_response())
}

/// The merged summaries of gate job `job`'s sources (`names`, else every job of the earlier
/// stages), as the runtime merges them locally.
async fn gate_reports(
    state: &AppState,
    p: &PipelineRecord,
    job: &JobRecord,
    names: Option<Vec<String>>,
) -> AppResult<gantry_reports::Reports> {
    let sources = match names {
        Some(names) => state.store.jobs_named(p.id, &names).await?,
        None => state.store.jobs_before_stage(p.id, job.stage_index).await?,
    };
    // Only the counted attempts' reports, in one query (never the whole pipeline's).
    let ids: Vec<i64> = crate::advance::counted_of(&sources)
        .iter()
        .map(|j| j.id)
        .collect();
    let stored = state.store.jobs_reports(&ids).await?;
    tokio::task::spawn_blocking(move || crate::reports::gate_inputs(&stored))
        .await
        .map_err(AppError::internal)?
}

/// The names of the jobs whose artifacts `job` takes: `None` for every job of the earlier stages.
fn dependency_names(job: &gantry_pipeline::Job) -> Option<Vec<String>> {
    match (&job.dependencies, &job.needs) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(needs)) => Some(
            needs
                .iter()
                .filter(|n| n.artifacts)
                .map(|n| n.job.clone())
                .collect(),
        ),
        (None, None) => None,
    }
}

/// The job as handed to an agent: its plan holds the job and the jobs it takes artifacts from, with
/// every variable resolved into the plan's layers. `p` is the pipeline (its jobs are not needed),
/// `doc` its decoded spec, `secrets` the project's variables, where the values of the masked ones
/// that `doc` names without a value are read (empty when it names none), `main` the job's decoded
/// spec, `deps` the records (any attempts) of at least the jobs named by
/// [`dependency_names`] (every job of the earlier stages when that is `None`); of each, the latest
/// attempt that counts is taken (`advance::counted_of`: never a rollback's).
#[allow(clippy::too_many_arguments)]
pub(crate) fn job_spec(
    p: &PipelineRecord,
    doc: PipelineDoc,
    secrets: &[ProjectVariable],
    job: &JobRecord,
    mut main: gantry_pipeline::Job,
    deps: &[JobRecord],
    lease_ms: u64,
    job_token: Option<String>,
) -> anyhow::Result<JobSpec> {
    main.retry = Retry::default();
    let latest = crate::advance::counted_of(deps);
    let by_name: HashMap<&str, &JobRecord> = latest.iter().map(|j| (j.name.as_str(), *j)).collect();
    let names: Vec<String> = dependency_names(&main).unwrap_or_else(|| {
        latest
            .iter()
            .filter(|j| j.stage_index < job.stage_index)
            .map(|j| j.name.clone())
            .collect()
    });
    let mut dependencies = Vec::new();
    let mut dep_jobs = Vec::new();
    for name in names {
        let Some(d) = by_name.get(name.as_str()) else {
            continue;
        };
        dependencies.push(Dependency {
            job_id: d.id,
            name: d.name.clone(),
            has_artifacts: d.has_artifacts,
        });
        let mut dj = serde_json::from_str::<JobDoc>(&d.spec)?.job;
        dj.retry = Retry::default();
        dep_jobs.push(dj);
    }
    let lit = |k: &str, v: String| {
        let mut var = Variable::new(k, v);
        var.expand = false;
        var
    };
    let mut predefined = doc.predefined.clone();
    let pipeline_url_base = predefined
        .iter()
        .find(|v| v.key == "CI_PROJECT_URL")
        .map(|v| v.value.clone())
        .unwrap_or_default();
    for v in &mut predefined {
        match v.key.as_str() {
            "CI_PIPELINE_ID" | "CI_PIPELINE_IID" => v.value = p.id.to_string(),
            "CI_PIPELINE_URL" => v.value = format!("{pipeline_url_base}/-/pipelines/{}", p.id),
            _ => {}
        }
    }
    main.predefined.extend([
        lit("CI_JOB_ID", job.id.to_string()),
        lit(
            "CI_JOB_URL",
            format!("{pipeline_url_base}/-/jobs/{}", job.id),
        ),
        lit("CI_PIPELINE_ID", p.id.to_string()),
        lit("CI_PIPELINE_IID", p.id.to_string()),
        lit("GANTRY_TRACE_ID", p.trace_id.clone()),
    ]);
    if job.attempt > 1 {
        main.predefined
            .push(lit("CI_JOB_RETRY", (job.attempt - 1).to_string()));
    }
    if let Some(token) = job_token {
        let mut var = lit("CI_JOB_TOKEN", token);
        var.masked = true;
        main.predefined.push(var);
    }
    // Caches of protected and unprotected refs are kept apart, as on GitLab: a pipeline of an
    // unprotected ref (a fork's merge request, say) must not write what a protected one restores.
    let protected = predefined
        .iter()
        .any(|v| v.key == "CI_COMMIT_REF_PROTECTED" && v.value == "true");
    for c in &mut main.cache {
        c.key_suffix = if protected && !c.unprotect {
            "-protected"
        } else {
            "-non_protected"
        }
        .into();
    }
    // The job's environment, expanded, picks the project variables whose scope matches.
    let env_name = main.environment.as_ref().map(|e| {
        let plan = Plan {
            stages: Vec::new(),
            jobs: vec![main.clone()],
            predefined: predefined.clone(),
            variables: doc.variables.clone(),
            cli_variables: doc.cli_variables.clone(),
            scoped_variables: Vec::new(),
        };
        let resolved: HashMap<String, String> = vars::resolve(&plan.job_variables(0, &[], &[]))
            .into_iter()
            .collect();
        vars::expand(&e.name, &|k| resolved.get(k).cloned())
    });
    // Per key, the most specific scope wins (GitLab's rule), as in `--variables-file`.
    let scoped = gantry_pipeline::plan::most_specific(
        &doc.project_variables,
        |v| (&v.key, &v.environment_scope),
        env_name.as_deref(),
    );
    let mut cli_variables: Vec<Variable> = scoped
        .into_iter()
        .map(|v| Variable {
            key: v.key.clone(),
            value: v
                .value
                .clone()
                .or_else(|| {
                    secrets
                        .iter()
                        .find(|s| s.key == v.key && s.environment_scope == v.environment_scope)
                        .and_then(|s| s.value.clone())
                })
                .unwrap_or_default(),
            expand: true,
            masked: v.masked,
        })
        .collect();
    cli_variables.extend(doc.cli_variables.iter().cloned());
    let name = main.name.clone();
    let mut jobs = vec![main];
    jobs.extend(dep_jobs);
    Ok(JobSpec {
        job_id: job.id,
        pipeline_id: p.id,
        project: p.project_name.clone(),
        attempt: u32::try_from(job.attempt).unwrap_or(1),
        trace_id: p.trace_id.clone(),
        sha: p.sha.clone(),
        lease_timeout_ms: lease_ms,
        job: name,
        plan: Plan {
            stages: doc.stages,
            jobs,
            predefined,
            variables: doc.variables,
            cli_variables,
            scoped_variables: Vec::new(),
        },
        dependencies,
        gate_reports: None,
        changes: None,
    })
}

fn lease_error(e: StoreError) -> AppError {
    match e {
        StoreError::LeaseLost => AppError::conflict("the job is no longer leased to this agent"),
        other => other.into(),
    }
}

/// `POST /api/v1/agent/jobs/{id}/heartbeat`.
#[utoipa::path(post, path = "/api/v1/agent/jobs/{id}/heartbeat", tag = "agent protocol", params(("id" = i64, Path, description = "The id")),
    responses((status = 200, description = "The lease is extended", body = Heartbeat), (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 409, description = "The lease is lost", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    PathParam(id): PathParam<i64>,
) -> AppResult<Json<Heartbeat>> {
    let now = crate::now_ms();
    let cancel = state
        .store
        .heartbeat(id, agent.id, state.lease_until(now))
        .await
        .map_err(lease_error)?;
    touch(&state, &agent, now, None).await?;
    Ok(Json(Heartbeat { cancel }))
}

/// Records that `agent` was seen (and the `protocol` version it says it speaks, if it said), unless
/// that was recorded less than a tenth of the lease timeout ago and its protocol is the recorded
/// one: an agent counts as online for a whole lease timeout, and an agent busy with short jobs
/// would otherwise write its row on every request.
async fn touch(
    state: &AppState,
    agent: &AgentRecord,
    now: Millis,
    protocol: Option<u32>,
) -> AppResult<()> {
    let fresh = i64::try_from(state.config.lease_timeout.as_millis() / 10).unwrap_or(i64::MAX);
    let protocol = protocol
        .map(i64::from)
        .filter(|p| agent.protocol != Some(*p));
    if protocol.is_some() || agent.last_seen_at.is_none_or(|t| now - t >= fresh) {
        state.store.touch_agent(agent.id, now, protocol).await?;
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub(crate) struct OffsetQuery {
    offset: i64,
}

/// `PUT /api/v1/agent/jobs/{id}/log?offset=N`.
#[utoipa::path(put, path = "/api/v1/agent/jobs/{id}/log", tag = "agent protocol",
    params(("id" = i64, Path, description = "The id"), ("offset" = i64, Query, description = "Where the bytes start in the log")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "Log bytes"),
    responses((status = 200, description = "Appended", body = LogAck), (status = 416, description = "The offset is past the stored end", body = LogAck),
        (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 409, description = "The lease is lost", body = ErrorBody), (status = 413, description = "The body is over the limit", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn log(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    PathParam(id): PathParam<i64>,
    QueryParams(q): QueryParams<OffsetQuery>,
    RawBody(body): RawBody,
) -> AppResult<Response> {
    if q.offset < 0 {
        return Err(AppError::bad_request("offset must not be negative"));
    }
    let now = crate::now_ms();
    let end = q
        .offset
        .saturating_add(i64::try_from(body.len()).unwrap_or(i64::MAX));
    let limit = state.config.max_job_log;
    if end > limit {
        return log_past_limit(&state, &agent, id, q.offset, &body, end).await;
    }
    match state
        .store
        .append_log(id, agent.id, q.offset, &body, state.lease_until(now))
        .await
    {
        Ok(size) => {
            // The bytes of this chunk that the log holds (a resent chunk counts again).
            let appended = (size.min(end) - q.offset).max(0);
            state
                .metrics
                .log_bytes
                .inc_by(u64::try_from(appended).unwrap_or(0));
            state.logs.notify_waiters();
            Ok(Json(LogAck {
                size,
                truncated: false,
            })
            .into_response())
        }
        Err(StoreError::LogGap(size)) => Ok((
            StatusCode::RANGE_NOT_SATISFIABLE,
            Json(LogAck {
                size,
                truncated: false,
            }),
        )
            .into_response()),
        Err(e) => Err(lease_error(e)),
    }
}

/// The line that ends a log cut at `limit` bytes.
pub(crate) fn truncated_line(limit: i64) -> String {
    format!(
        "\n[gantry] log truncated at {limit} bytes: the job's log reached the server's max_job_log; \
         the job goes on, and its further output is not kept\n"
    )
}

/// Whether a log of `size` bytes was cut at `limit`: only the truncation line takes a log past it.
fn log_truncated(size: i64, limit: i64) -> bool {
    size > limit
}

/// A log chunk that ends past `max_job_log`: the bytes up to the limit are stored, then the
/// truncation line, once; the rest, and every later chunk, is taken and dropped (`truncated`), so
/// that storage stays bounded and the agent carries on with the job.
async fn log_past_limit(
    state: &AppState,
    agent: &AgentRecord,
    id: i64,
    offset: i64,
    body: &[u8],
    end: i64,
) -> AppResult<Response> {
    let limit = state.config.max_job_log;
    let job = leased(state, agent, id).await?;
    let now = crate::now_ms();
    if log_truncated(job.log_size, limit) {
        // Already cut: only the lease moves (as any log chunk moves it).
        state
            .store
            .heartbeat(id, agent.id, state.lease_until(now))
            .await
            .map_err(lease_error)?;
        return Ok(Json(LogAck {
            size: end,
            truncated: true,
        })
        .into_response());
    }
    if offset > job.log_size {
        return Ok((
            StatusCode::RANGE_NOT_SATISFIABLE,
            Json(LogAck {
                size: job.log_size,
                truncated: false,
            }),
        )
            .into_response());
    }
    // Here `offset <= log_size <= limit < end`: the chunk's bytes up to the limit, then the line.
    let keep = usize::try_from(limit - offset).unwrap_or(0).min(body.len());
    let mut bytes = body[..keep].to_vec();
    bytes.extend_from_slice(truncated_line(limit).as_bytes());
    match state
        .store
        .append_log(id, agent.id, offset, &bytes, state.lease_until(now))
        .await
    {
        Ok(size) => {
            state
                .metrics
                .log_bytes
                .inc_by(u64::try_from(size - job.log_size).unwrap_or(0));
            state.logs.notify_waiters();
            tracing::warn!(job = id, limit, "job log truncated at max_job_log");
            Ok(Json(LogAck {
                size: end,
                truncated: true,
            })
            .into_response())
        }
        Err(StoreError::LogGap(size)) => Ok((
            StatusCode::RANGE_NOT_SATISFIABLE,
            Json(LogAck {
                size,
                truncated: false,
            }),
        )
            .into_response()),
        Err(e) => Err(lease_error(e)),
    }
}

/// The job, if it is running on `agent`; `409` otherwise.
pub(crate) async fn leased(state: &AppState, agent: &AgentRecord, id: i64) -> AppResult<JobRecord> {
    match state.store.job(id).await? {
        Some(j) if j.agent_id == Some(agent.id) && j.status == JobStatus::Running => Ok(j),
        Some(_) => Err(AppError::conflict(
            "the job is no longer leased to this agent",
        )),
        None => Err(AppError::not_found(format!("no job {id}"))),
    }
}

/// `GET /api/v1/agent/jobs/{id}/source`: `git archive` of the commit, made once per commit from the
/// mirror and kept in the data dir (the sweeper removes archives an hour after they were made).
#[utoipa::path(get, path = "/api/v1/agent/jobs/{id}/source", tag = "agent protocol", params(("id" = i64, Path, description = "The id")),
    responses((status = 200, description = "A tar archive of the commit's tree", body = Vec<u8>, content_type = "application/x-tar"),
        (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "The lease is lost", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn source(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    PathParam(id): PathParam<i64>,
) -> AppResult<Response> {
    let job = leased(&state, &agent, id).await?;
    let Some(p) = state.store.pipeline_head(job.pipeline_id).await? else {
        return Err(AppError::not_found("no such pipeline"));
    };
    let Some(cached) = crate::git::archive_path(&state.config.data_dir, p.project_id, &p.sha)
    else {
        return Err(AppError::internal(format!(
            "the pipeline's commit {:?} is not a full SHA",
            p.sha
        )));
    };
    // The archive is written once per commit and served from the file to every job of it. A file
    // removed by the sweeper between the check and the open is written again.
    let mut file = None;
    for _ in 0..2 {
        if !cached.exists() {
            let dest = cached.clone();
            crate::mirror::with_commit(&state, &p, move |mirror, sha| {
                if dest.exists() {
                    return Ok(());
                }
                crate::git::write_archive(mirror, sha, &dest)
            })
            .await?;
        }
        match tokio::fs::File::open(&cached).await {
            Ok(f) => {
                file = Some(f);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(AppError::internal(e)),
        }
    }
    let Some(file) = file else {
        return Err(AppError::internal("the source archive keeps disappearing"));
    };
    let len = file.metadata().await.map_err(AppError::internal)?.len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

/// `GET /api/v1/agent/jobs/{id}/dependencies/{dep}/artifacts`.
#[utoipa::path(get, path = "/api/v1/agent/jobs/{id}/dependencies/{dep}/artifacts", tag = "agent protocol",
    params(("id" = i64, Path, description = "The running job"), ("dep" = i64, Path, description = "The job whose artifacts it takes")),
    responses((status = 200, description = "The artifacts, a tar archive", body = Vec<u8>, content_type = "application/x-tar"),
        (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "The lease is lost", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn dependency_artifacts(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    PathParam((id, dep)): PathParam<(i64, i64)>,
) -> AppResult<Response> {
    let job = leased(&state, &agent, id).await?;
    match state.store.job(dep).await? {
        Some(d) if d.pipeline_id == job.pipeline_id => {}
        _ => {
            return Err(AppError::not_found(format!(
                "no job {dep} in this pipeline"
            )));
        }
    }
    match state.store.artifacts_info(dep).await? {
        Some(info) => Ok((
            [
                (header::CONTENT_TYPE, "application/x-tar".to_string()),
                (header::CONTENT_LENGTH, info.size.to_string()),
            ],
            artifacts_body(&state, dep, info),
        )
            .into_response()),
        None => Err(AppError::not_found(format!("job {dep} has no artifacts"))),
    }
}

/// Reads a tar archive from the frames a channel delivers (a blocking [`Read`](std::io::Read) for
/// [`check_archive_from`] while the upload streams in).
struct ChannelReader {
    frames: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.frames.blocking_recv() {
                Some(frame) => self.current = frame,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Checks that an artifacts archive is a tar whose entries stay inside the job's directory.
#[cfg(test)]
pub(crate) fn check_archive(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("the archive is empty".into());
    }
    check_archive_from(bytes)
}

/// What an extractor has made of a path so far (see [`ArchiveTree`]).
#[derive(Clone, Debug, PartialEq)]
enum Made {
    Dir,
    File,
    Symlink(std::path::PathBuf),
}

/// The tree an extractor builds from an archive, entry by entry, so that each entry's path is
/// resolved as the extractor's `open` would resolve it: through the links made before it. Keys are
/// resolved paths (no link in them), relative to the archive's directory.
///
/// Two rules keep what it answers true after the extraction too, when later entries have changed
/// the tree: a path that is a link or a directory is never made into anything else, and a link's
/// target may go up (`..`) only out of a directory that exists when the link is made. Then a link
/// that resolves inside when it is made resolves inside for ever.
#[derive(Default)]
struct ArchiveTree {
    made: std::collections::HashMap<std::path::PathBuf, Made>,
}

/// How many links one path may pass through (Linux's limit).
const MAX_LINK_HOPS: u32 = 40;

impl ArchiveTree {
    /// Walks `components` from `start` (a resolved path) through the tree, following every link;
    /// the resolved path, or why it leaves the archive's directory.
    fn walk(
        &self,
        start: std::path::PathBuf,
        components: std::path::Components<'_>,
        hops: &mut u32,
    ) -> Result<std::path::PathBuf, &'static str> {
        use std::path::Component;
        let mut cur = start;
        for c in components {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    let is_dir =
                        cur.as_os_str().is_empty() || self.made.get(&cur) == Some(&Made::Dir);
                    if !is_dir {
                        return Err("goes up out of something that is not a directory yet");
                    }
                    if !cur.pop() {
                        return Err("leaves the archive's directory");
                    }
                }
                Component::Normal(name) => {
                    cur.push(name);
                    if let Some(Made::Symlink(target)) = self.made.get(&cur) {
                        *hops += 1;
                        if *hops > MAX_LINK_HOPS {
                            return Err("passes through too many links");
                        }
                        let target = target.clone();
                        cur.pop();
                        cur = self.walk(cur, target.components(), hops)?;
                    }
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err("leaves the archive's directory");
                }
            }
        }
        Ok(cur)
    }

    /// Records entry `path` of kind `kind` (`link`: a link's target), or answers why an extractor
    /// would write outside the archive's directory (or could later).
    fn add(
        &mut self,
        path: &std::path::Path,
        kind: tar::EntryType,
        link: Option<&std::path::Path>,
    ) -> Result<(), String> {
        let shown = path.display();
        let name = path.file_name();
        let parent = path.parent().unwrap_or(std::path::Path::new(""));
        let mut hops = 0;
        let dir = self
            .walk(std::path::PathBuf::new(), parent.components(), &mut hops)
            .map_err(|why| format!("the entry `{shown}` {why} through a link"))?;
        // The directories an extractor makes on the way.
        let mut made = std::path::PathBuf::new();
        for c in dir.components() {
            made.push(c);
            self.made.entry(made.clone()).or_insert(Made::Dir);
        }
        let Some(name) = name else {
            // `.` or an empty name: the archive's directory itself.
            return if kind.is_dir() {
                Ok(())
            } else {
                Err(format!("the entry `{shown}` is not a directory"))
            };
        };
        let full = dir.join(name);
        let new = if kind.is_symlink() {
            let target = link.ok_or("a link without a target")?;
            let mut hops = 0;
            self.walk(dir.clone(), target.components(), &mut hops)
                .map_err(|why| format!("the link `{shown}` {why}"))?;
            Made::Symlink(target.to_path_buf())
        } else if kind.is_hard_link() {
            let target = link.ok_or("a link without a target")?;
            let mut hops = 0;
            self.walk(std::path::PathBuf::new(), target.components(), &mut hops)
                .map_err(|why| format!("the link `{shown}` {why}"))?;
            Made::File
        } else if kind.is_dir() {
            Made::Dir
        } else {
            Made::File
        };
        match (self.made.get(&full), &new) {
            (Some(Made::Symlink(_)), _) => Err(format!(
                "the entry `{shown}` replaces a link made earlier in the archive"
            )),
            (Some(Made::Dir), Made::Dir) | (None, _) | (Some(Made::File), _) => {
                self.made.insert(full, new);
                Ok(())
            }
            (Some(Made::Dir), _) => Err(format!(
                "the entry `{shown}` replaces a directory made earlier in the archive"
            )),
        }
    }
}

/// Checks that the tar archive `reader` yields keeps its entries inside the job's directory as an
/// extractor would make them (paths resolved through the links made before them), and that
/// nothing but zeros follows its end; reads it once from start to end (so that it can check an
/// upload as it streams in).
pub(crate) fn check_archive_from(reader: impl std::io::Read) -> Result<(), String> {
    let mut archive = tar::Archive::new(reader);
    let mut tree = ArchiveTree::default();
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("not a tar archive: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("an entry has an invalid name: {e}"))?
            .into_owned();
        if gantry_api::paths::inside(&path).is_none() {
            return Err(format!(
                "the entry `{}` leaves the archive's directory",
                path.display()
            ));
        }
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(|e| format!("an entry has an invalid link: {e}"))?
                .ok_or("a link without a target")?;
            tree.add(&path, kind, Some(&target))?;
        } else if kind.is_file() || kind.is_dir() {
            tree.add(&path, kind, None)?;
        } else if !(kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink())
        {
            return Err(format!(
                "the entry `{}` is not a file or a directory",
                path.display()
            ));
        }
    }
    // After the end-of-archive block: zeros only (the second block and the record's padding).
    let mut rest = archive.into_inner();
    let mut buf = [0u8; 8192];
    loop {
        match rest.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) if buf[..n].iter().all(|b| *b == 0) => {}
            Ok(_) => return Err("data follows the end of the archive".into()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("not a tar archive: {e}")),
        }
    }
}

/// `PUT /api/v1/agent/jobs/{id}/artifacts`.
#[utoipa::path(put, path = "/api/v1/agent/jobs/{id}/artifacts", tag = "agent protocol", params(("id" = i64, Path, description = "The id")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "A tar archive"),
    responses((status = 201, description = "Stored; `size` is the archive's size", body = LogAck),
        (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "The lease is lost", body = ErrorBody), (status = 413, description = "The body is over the limit", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn upload_artifacts(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    PathParam(id): PathParam<i64>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> AppResult<Response> {
    leased(&state, &agent, id).await?;
    let max = state.config.max_artifacts_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let upload = state
        .store
        .begin_artifacts(id, agent.id, state.lease_until(crate::now_ms()))
        .await
        .map_err(lease_error)?;
    let (chunks, size) = match receive_artifacts(&state, id, upload, body, max).await {
        Ok(received) => received,
        Err(e) => {
            if let Err(abort) = state.store.abort_artifacts(id, upload).await {
                tracing::warn!(job = id, error = %abort, "dropping an unfinished artifacts upload");
            }
            return Err(e);
        }
    };
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    state
        .store
        .commit_artifacts(
            id,
            agent.id,
            upload,
            chunks,
            size,
            state.lease_until(crate::now_ms()),
        )
        .await
        .map_err(lease_error)?;
    Ok((
        StatusCode::CREATED,
        Json(LogAck {
            size,
            truncated: false,
        }),
    )
        .into_response())
}

/// `413`: an artifacts upload over `max_artifacts_bytes`.
fn too_large() -> AppError {
    AppError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "the body is over the size limit",
    )
}

/// Streams an upload's body into the store in [`ARTIFACT_CHUNK`]-sized chunks of `upload` while a
/// blocking task checks it as a tar archive; answers the number of chunks and bytes. Holds at most
/// a chunk and a few frames in memory.
async fn receive_artifacts(
    state: &AppState,
    id: i64,
    upload: i64,
    body: Body,
    max: usize,
) -> AppResult<(i64, usize)> {
    use futures_util::StreamExt;
    let (frames, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let mut check = Some(tokio::task::spawn_blocking(move || {
        check_archive_from(ChannelReader {
            frames: rx,
            current: Bytes::new(),
        })
    }));
    let mut frames = Some(frames);
    let mut verdict: Option<Result<(), String>> = None;
    let mut stream = body.into_data_stream();
    let mut chunk: Vec<u8> = Vec::with_capacity(ARTIFACT_CHUNK);
    let mut seq = 0i64;
    let mut size = 0usize;
    while let Some(frame) = stream.next().await {
        let frame =
            frame.map_err(|e| AppError::bad_request(format!("reading the archive: {e}")))?;
        size += frame.len();
        if size > max {
            return Err(too_large());
        }
        if let Some(tx) = &frames {
            if tx.send(frame.clone()).await.is_err() {
                // The check is over: the archive is refused (a valid one is read to its end).
                frames = None;
                if let Some(task) = check.take() {
                    let v = task.await.map_err(AppError::internal)?;
                    if let Err(e) = &v {
                        return Err(AppError::bad_request(e.clone()));
                    }
                    verdict = Some(v);
                }
            }
        }
        let mut rest = &frame[..];
        while !rest.is_empty() {
            let take = rest.len().min(ARTIFACT_CHUNK - chunk.len());
            chunk.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if chunk.len() == ARTIFACT_CHUNK {
                state
                    .store
                    .put_artifact_chunk(id, upload, seq, &chunk)
                    .await
                    .map_err(lease_error)?;
                seq += 1;
                chunk.clear();
            }
        }
    }
    if size == 0 {
        return Err(AppError::bad_request("the archive is empty"));
    }
    if !chunk.is_empty() {
        state
            .store
            .put_artifact_chunk(id, upload, seq, &chunk)
            .await
            .map_err(lease_error)?;
        seq += 1;
    }
    drop(frames);
    let verdict = match (verdict, check) {
        (Some(v), _) => v,
        (None, Some(task)) => task.await.map_err(AppError::internal)?,
        (None, None) => Ok(()),
    };
    verdict.map_err(AppError::bad_request)?;
    Ok((seq, size))
}

/// `POST /api/v1/agent/jobs/{id}/finish`.
#[utoipa::path(post, path = "/api/v1/agent/jobs/{id}/finish", tag = "agent protocol", params(("id" = i64, Path, description = "The id")), request_body = FinishJob,
    responses((status = 200, description = "Recorded", body = Job),
        (status = 400, description = "Invalid path, query or body", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "The lease is lost, or the log is incomplete", body = ErrorBody), (status = 413, description = "The body is over the limit", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn finish(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    PathParam(id): PathParam<i64>,
    RawBody(bytes): RawBody,
) -> AppResult<Json<gantry_api::Job>> {
    // A finish carrying summaries can be megabytes of JSON: read it off the async workers.
    let read = |bytes: &[u8]| -> AppResult<_> {
        let body = crate::reports::finish_body(bytes)?;
        let reports = crate::reports::to_store(&body);
        Ok((body, reports))
    };
    let (body, reports) = if bytes.len() <= crate::reports::INLINE_FINISH {
        read(&bytes)?
    } else {
        tokio::task::spawn_blocking(move || read(&bytes))
            .await
            .map_err(AppError::internal)??
    };
    let job = leased(&state, &agent, id).await?;
    // A truncated log holds less than the agent wrote, and all that it will.
    if job.log_size < body.log_size && !log_truncated(job.log_size, state.config.max_job_log) {
        return Err(AppError::conflict(format!(
            "the server holds {} bytes of the log, not {}: send the rest first",
            job.log_size, body.log_size
        )));
    }
    let status = match body.outcome {
        Outcome::Success => JobStatus::Success,
        Outcome::Failed => JobStatus::Failed,
        Outcome::Canceled => JobStatus::Canceled,
    };
    let failure_reason = match body.outcome {
        Outcome::Failed => Some(
            body.failure_reason
                .clone()
                .unwrap_or_else(|| "script_failure".into()),
        ),
        _ => None,
    };
    let now = crate::now_ms();
    let pipeline = state
        .store
        .finish(
            id,
            agent.id,
            &JobResult {
                status,
                exit_code: body.exit_code,
                failure_reason,
                coverage: body.coverage.filter(|c| c.is_finite()),
                finished_at: now,
                reports,
                measurements: crate::deployments::measurements(&body),
            },
        )
        .await
        .map_err(lease_error)?;
    state.metrics.job_ended(status);
    if let Some(s) = job.started_at {
        state
            .metrics
            .job_duration
            .observe(crate::metrics::seconds(now - s));
    }
    state.logs.notify_waiters();
    tracing::info!(job = id, pipeline, status = status.as_str(), "job finished");
    // Most jobs of a wide stage end while others of it still run: then nothing else changes, and
    // the full read that advancing takes (every job of the pipeline) is skipped.
    let quiet = status == JobStatus::Success
        && state
            .store
            .success_changes_nothing(pipeline, job.stage_index, id, &job.name)
            .await
            .unwrap_or(false);
    if !quiet {
        crate::progress::advance(&state, pipeline).await;
    }
    // A deployment's end: its notifications, a rollback's outcome, an automatic rollback.
    let reason = body.failure_reason.as_deref().unwrap_or("script_failure");
    crate::rollback::job_finished(&state, &job, status, Some(reason)).await;
    let job = crate::views::load_job(&state, id).await?;
    Ok(Json(crate::views::job_api(&job)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(path: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(if kind.is_file() { 2 } else { 0 });
        h.set_mode(0o644);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        // Bypass the builder's own path checks: write the raw name.
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        let data: &[u8] = if kind.is_file() { b"hi" } else { b"" };
        b.append(&h, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn archives_stay_inside() {
        assert!(check_archive(&tar_with("out/a.txt", tar::EntryType::Regular, None)).is_ok());
        assert!(check_archive(&tar_with("../evil", tar::EntryType::Regular, None)).is_err());
        assert!(check_archive(&tar_with("/etc/passwd", tar::EntryType::Regular, None)).is_err());
        assert!(
            check_archive(&tar_with(
                "out/link",
                tar::EntryType::Symlink,
                Some("../../x")
            ))
            .is_err()
        );
        assert!(
            check_archive(&tar_with("out/link", tar::EntryType::Symlink, Some("/etc"))).is_err()
        );
        assert!(
            check_archive(&tar_with("out/link", tar::EntryType::Symlink, Some("../a"))).is_ok()
        );
        assert!(check_archive(b"not a tar at all, just some bytes").is_err());
        assert!(check_archive(b"").is_err());
    }

    /// An archive of `entries` (name, kind, link target) as written, with no checks of the
    /// builder's, ended by the two zero blocks.
    fn tar_of(entries: &[(&str, tar::EntryType, Option<&str>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, kind, link) in entries {
            let one = tar_with(path, *kind, *link);
            // Without the builder's end-of-archive blocks.
            out.extend_from_slice(&one[..one.len() - 1024]);
        }
        out.extend_from_slice(&[0; 1024]);
        out
    }

    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as L};

    #[test]
    fn a_link_made_through_a_link_cannot_climb_out() {
        // `d/a` is the archive's directory, so `d/a/b` is a link in it that points at its parent.
        let chain = tar_of(&[
            ("d", D, None),
            ("d/a", L, Some("..")),
            ("d/a/b", L, Some("..")),
            ("d/a/b/x", F, None),
        ]);
        let e = check_archive(&chain).unwrap_err();
        assert_eq!(e, "the link `d/a/b` leaves the archive's directory", "{e}");
    }

    #[test]
    fn an_entry_through_a_link_that_leads_outside_is_refused() {
        // `l` climbs out through `d/a`, which is the archive's directory.
        let through = tar_of(&[
            ("d/a", L, Some("..")),
            ("l", L, Some("d/a/..")),
            ("l/x", F, None),
        ]);
        let e = check_archive(&through).unwrap_err();
        assert_eq!(e, "the link `l` leaves the archive's directory");
        // A hard link whose target climbs out through a link.
        let hard = tar_of(&[("d/a", L, Some("..")), ("h", H, Some("d/a/../x"))]);
        let e = check_archive(&hard).unwrap_err();
        assert_eq!(e, "the link `h` leaves the archive's directory");
        // `d/p` is inside when made, but would climb out once `d/q` points at the top: going up out
        // of a path that is not a directory yet is refused.
        let later = tar_of(&[
            ("d/p", L, Some("q/../..")),
            ("d/q", L, Some("..")),
            ("d/p/x", F, None),
        ]);
        let e = check_archive(&later).unwrap_err();
        assert_eq!(
            e,
            "the link `d/p` goes up out of something that is not a directory yet"
        );
        // A link that is replaced, or a directory made a link, could change where earlier links
        // lead.
        let replaced = tar_of(&[("d/a", L, Some("b")), ("d/a", L, Some(".."))]);
        let e = check_archive(&replaced).unwrap_err();
        assert_eq!(
            e,
            "the entry `d/a` replaces a link made earlier in the archive"
        );
        let dir = tar_of(&[("d/a", D, None), ("d/a", L, Some(".."))]);
        let e = check_archive(&dir).unwrap_err();
        assert_eq!(
            e,
            "the entry `d/a` replaces a directory made earlier in the archive"
        );
        let looped = tar_of(&[("x", L, Some("x")), ("x/f", F, None)]);
        let e = check_archive(&looped).unwrap_err();
        assert_eq!(
            e,
            "the entry `x/f` passes through too many links through a link"
        );
    }

    #[test]
    fn data_after_the_end_of_the_archive_is_refused() {
        let mut garbage = tar_with("a.txt", F, None);
        garbage.extend_from_slice(b"hidden");
        assert_eq!(
            check_archive(&garbage).unwrap_err(),
            "data follows the end of the archive"
        );
        // A second archive after the first's end: an extractor told to ignore zero blocks
        // (`tar -i`) would make `../evil`.
        let mut second = tar_with("a.txt", F, None);
        second.extend_from_slice(&tar_with("../evil", F, None));
        assert_eq!(
            check_archive(&second).unwrap_err(),
            "data follows the end of the archive"
        );
    }

    #[test]
    fn valid_archives_with_links_inside_are_accepted() {
        let mut padded = tar_of(&[
            ("out", D, None),
            ("out/a.txt", F, None),
            ("out/a.txt", F, None),
            ("out/link", L, Some("../a")),
            ("out/sub/up", L, Some("../../out/./a.txt")),
            ("lib/libfoo.so", L, Some("libfoo.so.1")),
            ("lib/libfoo.so.1", F, None),
            ("v1/bin", D, None),
            ("current", L, Some("v1")),
            ("current/bin/tool", F, None),
            ("current/bin/up", L, Some("../../lib/libfoo.so")),
            ("hard", H, Some("current/bin/tool")),
            ("./dot", F, None),
        ]);
        // GNU tar pads the archive to a 10 KiB record.
        padded.resize(10240, 0);
        assert_eq!(check_archive(&padded), Ok(()));
        // The builder's own archive, read as an upload streams in.
        assert_eq!(check_archive_from(&padded[..]), Ok(()));
    }
}
