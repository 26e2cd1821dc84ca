//! The [`Store`] trait: the server's durable state, each guarantee tested on both databases.

use async_trait::async_trait;

use gantry_api::DeliveryStatus;

use crate::error::{Result, StoreError};
use crate::records::{
    ARTIFACT_CHUNK, AgentJobRecord, AgentRecord, ArtifactsInfo, Changes, CoveragePoint,
    DeliveryRecord, DeploymentRecord, EnvironmentRecord, JobRecord, JobResult, Millis, NewAgent,
    NewDelivery, NewDeployment, NewNotification, NewPipeline, NewProjectToken, NewReports,
    NotificationRecord, Page, Paged, PipelineFilter, PipelineRecord, ProjectRecord,
    ProjectTokenRecord, ReportsRecord,
};

/// The server's durable state. See the crate docs for the guarantees.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;
    /// Checks that the database answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    // --- projects

    /// Adds a project; [`StoreError::Conflict`] when the name is taken.
    async fn create_project(&self, name: &str, spec: &str, now: Millis) -> Result<ProjectRecord>;
    /// Replaces a project's settings; `false` when there is no such project.
    async fn update_project(&self, name: &str, spec: &str) -> Result<bool>;
    /// The project named `name`.
    async fn project(&self, name: &str) -> Result<Option<ProjectRecord>>;
    /// The project with id `id`.
    async fn project_by_id(&self, id: i64) -> Result<Option<ProjectRecord>>;
    /// All projects, by name.
    async fn projects(&self) -> Result<Vec<ProjectRecord>>;

    // --- deliveries

    /// Stores a delivery durably: `(id, false)`, or `(id of the first, true)` when this delivery id
    /// was stored before for the project and forge.
    async fn insert_delivery(&self, delivery: &NewDelivery) -> Result<(i64, bool)>;
    /// Up to `limit` deliveries still `pending` and due at `now` (no `retry_at`, or one not after
    /// `now`), oldest first, with their payloads; none of the projects in `skip` (those whose
    /// deliveries are being processed already).
    async fn pending_deliveries(
        &self,
        limit: i64,
        now: Millis,
        skip: &[i64],
    ) -> Result<Vec<DeliveryRecord>>;
    /// Marks a pending delivery `skipped` or `failed`, with the reason.
    async fn close_delivery(&self, id: i64, status: DeliveryStatus, reason: &str) -> Result<()>;
    /// Records a transient failure of pending delivery `id`: one more attempt, and `error` as its
    /// `last_error`. With `retry_at`, it stays pending and [`Store::pending_deliveries`] skips it
    /// until then; without, it is closed `failed` with `error` as its reason. Answers the attempts
    /// counted now, or 0 when the delivery was not pending (then nothing changes).
    async fn fail_delivery_attempt(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<Millis>,
    ) -> Result<i64>;
    /// The earliest `retry_at` of the pending deliveries, if any waits for a retry.
    async fn next_delivery_retry(&self) -> Result<Option<Millis>>;
    /// A project's deliveries, newest first, without payloads.
    async fn deliveries(&self, project_id: i64, page: Page) -> Result<Paged<DeliveryRecord>>;

    // --- notifications

    /// Stores a notification, pending and due at once; answers its id.
    async fn insert_notification(&self, notification: &NewNotification) -> Result<i64>;
    /// Claims up to `limit` pending notifications due at `now`, oldest first: each is due again
    /// only at `until` (so that another server, or this one after a crash, sends it then) unless
    /// [`Store::notification_attempt`] records its attempt first. Answers them as they were.
    async fn claim_notifications(
        &self,
        now: Millis,
        until: Millis,
        limit: i64,
    ) -> Result<Vec<NotificationRecord>>;
    /// Records an attempt of pending notification `id`: `sent` without `error`; with one, it
    /// stays pending until `retry_at`, or is `failed` for good without `retry_at`. Answers
    /// whether it was pending.
    async fn notification_attempt(
        &self,
        id: i64,
        error: Option<&str>,
        retry_at: Option<Millis>,
    ) -> Result<bool>;
    /// When the earliest pending notification is due, if any is pending.
    async fn next_notification_at(&self) -> Result<Option<Millis>>;
    /// A pipeline's notifications, in the order they were made.
    async fn notifications(&self, pipeline_id: i64) -> Result<Vec<NotificationRecord>>;
    /// The status of the newest finished (`success`, `failed` or `canceled`) pipeline of
    /// `git_ref` in project `project_id` before pipeline `below`, if any.
    async fn previous_finished_status(
        &self,
        project_id: i64,
        git_ref: &str,
        below: i64,
    ) -> Result<Option<gantry_api::PipelineStatus>>;

    // --- pipelines

    /// Creates a pipeline and its jobs in one transaction (see [`NewPipeline::delivery_id`]).
    async fn create_pipeline(&self, pipeline: &NewPipeline) -> Result<i64>;
    /// A pipeline with all its jobs.
    async fn pipeline(&self, id: i64) -> Result<Option<PipelineRecord>>;
    /// The pipeline without its jobs (`jobs` is empty) or its `version` (0): what handing out one
    /// job needs, at a cost that does not grow with the pipeline's size.
    async fn pipeline_head(&self, id: i64) -> Result<Option<PipelineRecord>> {
        Ok(self.pipeline(id).await?.map(|mut p| {
            p.jobs.clear();
            p.version = 0;
            p
        }))
    }
    /// Every attempt of the jobs of pipeline `pipeline_id` named in `names`, in `position`, then
    /// `attempt` order (as in [`PipelineRecord::jobs`]).
    async fn jobs_named(&self, pipeline_id: i64, names: &[String]) -> Result<Vec<JobRecord>> {
        jobs_where(self, pipeline_id, |j| names.contains(&j.name)).await
    }
    /// Whether job `job_id` (named `name`, at `stage_index` of pipeline `pipeline_id`), having just
    /// succeeded, leaves its pipeline as it is: the pipeline is `running` and started, another job
    /// of the same stage is still `pending` or `running` (so the stage is not over and the jobs
    /// after it keep waiting; a rollback's attempt, whose spec has `"rollback":{"from"`, holds
    /// nothing), and no job of the pipeline `needs` it. One query, without reading the
    /// pipeline's jobs into memory; when it answers `true`, advancing the pipeline would change
    /// nothing, so the finish of most jobs of a wide stage costs no full read.
    async fn success_changes_nothing(
        &self,
        pipeline_id: i64,
        stage_index: i64,
        job_id: i64,
        name: &str,
    ) -> Result<bool>;
    /// Every attempt of the jobs of pipeline `pipeline_id` whose stage comes before `stage_index`,
    /// in `position`, then `attempt` order.
    async fn jobs_before_stage(
        &self,
        pipeline_id: i64,
        stage_index: i64,
    ) -> Result<Vec<JobRecord>> {
        jobs_where(self, pipeline_id, |j| j.stage_index < stage_index).await
    }
    /// A project's pipelines, newest first, without jobs or `version` (0).
    async fn pipelines(
        &self,
        project_id: i64,
        filter: &PipelineFilter,
        page: Page,
    ) -> Result<Paged<PipelineRecord>>;
    /// The ids of pipelines that are not over (not `success`, `failed`, `canceled`, `skipped`), oldest
    /// first: the server advances them after a restart and when delayed jobs come due.
    async fn active_pipelines(&self) -> Result<Vec<i64>>;
    /// The ids of `project_id`'s pipelines of `git_ref` that a push started, older than pipeline
    /// `below`, and not over: those a newer push may make redundant. Oldest first.
    async fn unfinished_push_pipelines(
        &self,
        project_id: i64,
        git_ref: &str,
        below: i64,
    ) -> Result<Vec<i64>>;
    /// Applies `changes` (with their notifications) if the pipeline's version is still `version`
    /// (then bumps it, answers `true`); otherwise changes nothing and answers `false`.
    async fn apply(&self, pipeline_id: i64, version: i64, changes: &Changes) -> Result<bool>;

    // --- the queue

    /// Hands the oldest `pending` job that `agent` may run (tags, resource groups, `run_after`) to it:
    /// `running`, `started_at = now`, leased until `lease_until`. `None` when there is none.
    /// Oldest first (by `queued_at`, then id). It also starts the pipeline: `started_at = now` if
    /// unset, and status `running` if it was `created`, `pending`, `manual` or `scheduled` (the
    /// server recomputes the status anyway), and it moves the pipeline's `version`.
    async fn claim(
        &self,
        agent: &AgentRecord,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Option<JobRecord>>;
    /// Extends the lease; answers whether cancel was requested.
    async fn heartbeat(&self, job_id: i64, agent_id: i64, lease_until: Millis) -> Result<bool>;
    /// Appends the part of `bytes` (which start at byte `offset` of the log) past the stored end, and
    /// extends the lease; answers the log's new size.
    async fn append_log(
        &self,
        job_id: i64,
        agent_id: i64,
        offset: i64,
        bytes: &[u8],
        lease_until: Millis,
    ) -> Result<i64>;
    /// Bytes `start..end` of a job's log (fewer at the end of the log).
    async fn read_log(&self, job_id: i64, start: i64, end: i64) -> Result<Vec<u8>>;
    /// Starts an upload of a job's artifacts under the lease (extending it); answers the upload's
    /// id. Unfinished earlier uploads of the job are dropped (their commit then fails).
    async fn begin_artifacts(&self, job_id: i64, agent_id: i64, lease_until: Millis)
    -> Result<i64>;
    /// Stores chunk `seq` (counting from 0) of an upload; storing the same chunk again replaces
    /// it.
    async fn put_artifact_chunk(
        &self,
        job_id: i64,
        upload_id: i64,
        seq: i64,
        data: &[u8],
    ) -> Result<()>;
    /// Makes an upload of `chunks` chunks and `size` bytes the job's artifacts (replacing an
    /// earlier archive, whose chunks are deleted), marks the job as having artifacts and extends
    /// the lease. Fails with [`StoreError::LeaseLost`] if the job is not running on that agent, and
    /// with [`StoreError::UploadGone`] if the upload is not there with exactly that many chunks.
    async fn commit_artifacts(
        &self,
        job_id: i64,
        agent_id: i64,
        upload_id: i64,
        chunks: i64,
        size: i64,
        lease_until: Millis,
    ) -> Result<()>;
    /// Drops an unfinished upload and its chunks (a committed one stays).
    async fn abort_artifacts(&self, job_id: i64, upload_id: i64) -> Result<()>;
    /// Drops the uploads that can never be committed (their job is no longer running) and are not
    /// their job's current archive, with their chunks: what an upload cut off by a crash left.
    /// Answers how many uploads were dropped.
    async fn drop_stale_artifact_uploads(&self) -> Result<u64>;
    /// A job's committed artifacts archive, if it has one.
    async fn artifacts_info(&self, job_id: i64) -> Result<Option<ArtifactsInfo>>;
    /// Chunk `seq` of an upload; `None` once the upload is gone (replaced by a newer one).
    async fn artifact_chunk(
        &self,
        job_id: i64,
        upload_id: i64,
        seq: i64,
    ) -> Result<Option<Vec<u8>>>;

    /// Stores a whole archive in [`ARTIFACT_CHUNK`]-sized chunks and commits it (for callers that
    /// hold it in memory anyway; the server streams instead).
    async fn put_artifacts(
        &self,
        job_id: i64,
        agent_id: i64,
        archive: &[u8],
        lease_until: Millis,
    ) -> Result<()> {
        let upload = self.begin_artifacts(job_id, agent_id, lease_until).await?;
        let mut chunks = 0;
        for (seq, data) in archive.chunks(ARTIFACT_CHUNK).enumerate() {
            let seq = i64::try_from(seq).unwrap_or(i64::MAX);
            self.put_artifact_chunk(job_id, upload, seq, data).await?;
            chunks = seq + 1;
        }
        let size = i64::try_from(archive.len()).unwrap_or(i64::MAX);
        self.commit_artifacts(job_id, agent_id, upload, chunks, size, lease_until)
            .await
    }
    /// A job's whole artifacts archive in memory (for tests and small archives; the server
    /// streams chunks instead).
    async fn artifacts(&self, job_id: i64) -> Result<Option<Vec<u8>>> {
        let Some(info) = self.artifacts_info(job_id).await? else {
            return Ok(None);
        };
        let mut archive = Vec::with_capacity(usize::try_from(info.size).unwrap_or(0));
        for seq in 0..info.chunks {
            match self.artifact_chunk(job_id, info.upload_id, seq).await? {
                Some(data) => archive.extend_from_slice(&data),
                None => return Err(StoreError::UploadGone),
            }
        }
        Ok(Some(archive))
    }
    /// Records how a running job ended and releases its lease, with its reports (if
    /// [`JobResult::reports`]) in the same transaction; answers its pipeline's id.
    async fn finish(&self, job_id: i64, agent_id: i64, result: &JobResult) -> Result<i64>;
    /// Fails every running job whose lease ran out before `now` (`runner_system_failure`); answers
    /// `(job id, pipeline id)` of each.
    async fn expire_leases(&self, now: Millis) -> Result<Vec<(i64, i64)>>;
    /// Moves every running job's lease to at least `until` (a restarted server gives agents time to
    /// reconnect before their leases are judged).
    async fn extend_leases(&self, until: Millis) -> Result<()>;
    /// How many jobs are `pending`.
    async fn queue_depth(&self) -> Result<i64>;
    /// A job by id.
    async fn job(&self, id: i64) -> Result<Option<JobRecord>>;
    /// The project of pipeline `id` (one primary-key read, for authorization).
    async fn pipeline_project(&self, id: i64) -> Result<Option<i64>>;
    /// The project of job `id` (one primary-key read, for authorization).
    async fn job_project(&self, id: i64) -> Result<Option<i64>>;

    // --- reports

    /// Stores job `job_id`'s report summaries, replacing what it stored before (saving them again
    /// changes nothing and does not fail); `false` when there is no such job.
    async fn save_reports(&self, job_id: i64, reports: &NewReports) -> Result<bool>;
    /// Job `job_id` with what it stored; `None` when there is no such job.
    async fn job_reports(&self, job_id: i64) -> Result<Option<ReportsRecord>>;
    /// The latest attempt of each job of pipeline `pipeline_id` that stored reports or has a
    /// `coverage:` value, in `position` order.
    async fn pipeline_reports(&self, pipeline_id: i64) -> Result<Vec<ReportsRecord>>;
    /// Those of jobs `job_ids` (whatever their attempt) that stored reports or have a `coverage:`
    /// value, in `position` and `attempt` order: a gate's sources, in one query.
    async fn jobs_reports(&self, job_ids: &[i64]) -> Result<Vec<ReportsRecord>>;
    /// The latest attempt of each job of pipeline `pipeline_id` that stored a gate verdict, in
    /// `position` order, without its summaries (`reports` is `None`): what a commit status names.
    async fn pipeline_gates(&self, pipeline_id: i64) -> Result<Vec<ReportsRecord>>;
    /// The coverage of `project_id`'s pipelines of `git_ref` that have one (see
    /// [`CoveragePoint`]), newest first.
    async fn coverage_trend(
        &self,
        project_id: i64,
        git_ref: &str,
        page: Page,
    ) -> Result<Paged<CoveragePoint>>;

    // --- deployments

    /// Records the deployment of job `job_id` (a job with `environment:`, `action: start`) and
    /// answers its id; when the job has one already (a repeated claim, or a rollback that recorded
    /// its attempt first), that one stays and its id is answered. Its status and end are read
    /// from its job ever after (see [`DeploymentRecord`]); its measurements come with the job's
    /// finish ([`JobResult::measurements`]).
    async fn record_deployment(&self, deployment: &NewDeployment) -> Result<i64>;
    /// Deployment `id`.
    async fn deployment(&self, id: i64) -> Result<Option<DeploymentRecord>>;
    /// The deployment of job `job_id` (an attempt), if it deploys.
    async fn job_deployment(&self, job_id: i64) -> Result<Option<DeploymentRecord>>;
    /// The deployments of `environment` in project `project_id`, newest first.
    async fn deployments(
        &self,
        project_id: i64,
        environment: &str,
        page: Page,
    ) -> Result<Paged<DeploymentRecord>>;
    /// The environments of project `project_id` (those with a deployment), by name, each with its
    /// count, its newest deployment and its current one (see [`EnvironmentRecord`]).
    async fn environments(&self, project_id: i64) -> Result<Vec<EnvironmentRecord>>;
    /// The newest deployment of the environment of deployment `id`, older than it, that
    /// succeeded and was not rolled back: what a rollback of `id` re-deploys by default.
    async fn last_success_before(&self, id: i64) -> Result<Option<DeploymentRecord>>;
    /// Marks deployment `id` rolled back by deployment `by`, only if it is not marked already;
    /// answers whether it marked it (so of two rollbacks racing, one wins).
    async fn mark_rolled_back(&self, id: i64, by: i64) -> Result<bool>;

    // --- agents

    /// Registers an agent; answers its id.
    async fn register_agent(&self, agent: &NewAgent) -> Result<i64>;
    /// The agent whose token hashes to `token_hash`.
    async fn agent_by_token(&self, token_hash: &str) -> Result<Option<AgentRecord>>;
    /// Records that the agent was heard from, and the protocol version it speaks if it said.
    async fn touch_agent(&self, id: i64, now: Millis, protocol: Option<i64>) -> Result<()>;
    /// All agents, by id.
    async fn agents(&self) -> Result<Vec<AgentRecord>>;
    /// The jobs running on every agent (`running`, leased to it), in one query: by agent, then
    /// claim time.
    async fn agent_jobs(&self) -> Result<Vec<AgentJobRecord>>;
    /// Revokes an agent: its row (and so its token) is gone, and the leases of its running jobs
    /// end now, so that the next [`Store::expire_leases`] fails them as a lost agent's. Answers
    /// whether there was such an agent.
    async fn revoke_agent(&self, id: i64) -> Result<bool>;
    /// A setting that every server shares (`None` when it was never set).
    async fn setting(&self, name: &str) -> Result<Option<String>>;
    /// Sets a setting.
    async fn set_setting(&self, name: &str, value: &str) -> Result<()>;

    // --- project tokens

    /// Stores a project token; [`StoreError::Conflict`] when its hash is taken.
    async fn create_project_token(&self, token: &NewProjectToken) -> Result<ProjectTokenRecord>;
    /// A project's tokens, by id.
    async fn project_tokens(&self, project_id: i64) -> Result<Vec<ProjectTokenRecord>>;
    /// The token whose secret hashes to `token_hash` (expired ones too: the caller judges).
    async fn project_token_by_hash(&self, token_hash: &str) -> Result<Option<ProjectTokenRecord>>;
    /// Deletes token `id` of project `project_id`; `false` when there is no such token.
    async fn delete_project_token(&self, project_id: i64, id: i64) -> Result<bool>;
}

/// The jobs of pipeline `pipeline_id` that `keep` keeps, in `position`, then `attempt` order (as
/// in [`PipelineRecord::jobs`]); none when there is no such pipeline.
async fn jobs_where<S: Store + ?Sized>(
    store: &S,
    pipeline_id: i64,
    keep: impl Fn(&JobRecord) -> bool + Send,
) -> Result<Vec<JobRecord>> {
    Ok(store
        .pipeline(pipeline_id)
        .await?
        .map_or_else(Vec::new, |p| {
            p.jobs.into_iter().filter(|j| keep(j)).collect()
        }))
}
