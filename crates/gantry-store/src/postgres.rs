//! [`PgStore`]: several servers sharing one PostgreSQL database.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};

use crate::group::{DeliveryQueue, DeliveryWriter, expire_push_key, select_id, select_push_id};
use crate::rows::{
    AGENT_COLS, DELIVERY_COLS, INSERT_BATCH, JOB_COLS, NOT_STARTED, OVER, PIPELINE_COLS,
    PROJECT_COLS, PROJECT_TOKEN_COLS, assemble, limit_offset, queued_at,
};
use crate::{
    AgentRecord, ArtifactsInfo, Changes, DeliveryRecord, JobRecord, JobResult, Millis, NewAgent,
    NewDelivery, NewJob, NewPipeline, NewProjectToken, Page, Paged, PipelineFilter, PipelineRecord,
    ProjectRecord, ProjectTokenRecord, Result, Store, StoreError, db, skip_projects,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A pipeline's version (see [`PIPELINE_COLS`]).
const VERSION: &str = "p.version + COALESCE((SELECT SUM(j.bumps) FROM jobs j \
     WHERE j.pipeline_id = p.id), 0)::bigint AS version";
/// In place of [`VERSION`] where the record is only read (heads and lists): the sum walks every
/// job of the pipeline, and nothing that only reads uses it.
const NO_VERSION: &str = "0::bigint AS version";

/// Connections per server, for everything but claims.
const CONNECTIONS: u32 = 16;

/// How many delivery batches one server commits at once: while one waits for its commit to be
/// flushed, the next one fills.
const DELIVERY_WRITERS: usize = 2;

/// Connections per server for claims.
const CLAIM_CONNECTIONS: u32 = 8;

/// How many candidates one claim looks at when jobs of resource groups are being claimed at the
/// same moment by other servers.
const CLAIM_TRIES: usize = 32;

/// The store on PostgreSQL.
///
/// **The queue.** A claim selects the oldest pending job it may run with
/// `FOR UPDATE SKIP LOCKED`: a row another server's claim has locked is skipped rather than waited
/// for, and the one that locked it marks it running before anyone else can see it pending again. A
/// job is thus handed out once however many servers claim at the same moment, and they do not queue
/// behind each other. When the oldest candidate has no resource group (the common case), choosing
/// it, marking it running and bumping its pipeline's version is one statement.
///
/// **Resource groups across servers.** "No other job of the group is running" cannot be checked by
/// the claim's own snapshot: two servers could each lock a different job of one group, each see no
/// running job, and both start theirs. So a claim of a job in a group first takes a transaction-level
/// advisory lock on `(project, group)` (`pg_try_advisory_xact_lock`, held until commit), and only
/// then checks for a running job of the group, in a new statement whose snapshot therefore includes
/// every claim of the group that committed before. Two claims of one group are serialized by the
/// lock, and the second sees the first's job running. A claim that finds the lock taken skips that
/// job (another server is claiming in that group right now) instead of waiting, like `SKIP LOCKED`.
///
/// **Versions without a hot row.** Claims, finishes and lease expiry bump the job's own `bumps`,
/// not the pipeline row: a pipeline's version is `pipelines.version + SUM(jobs.bumps)`. Otherwise
/// every agent working on one pipeline would update its row, and each would hold that row's lock
/// until its commit is flushed to disk, which caps a pipeline at one commit per fsync. Only the
/// first claim of a pipeline writes its row (`started_at`, `running`). [`Store::apply`] locks the
/// jobs it changes (claims skip them, finishes wait), then the pipeline row (applies queue), then
/// sums the jobs' bumps in a new statement, so that everything committed before it holds the locks
/// is counted: a stale version changes nothing. A claim or finish of *another* job of the pipeline
/// that commits after that check changes only rows the apply does not write, so the outcome is
/// that of the apply running first.
///
/// **Lock order.** Every transaction locks jobs before pipelines, several jobs in ascending id
/// order (or with `SKIP LOCKED`), and at most one pipeline, so concurrent claims, finishes,
/// applies and lease expiries cannot deadlock.
///
/// **Claim plans.** Claims run on their own few connections, on which the planner may not sort
/// or bitmap-scan: the claim must walk the `jobs_pending` index in queue order and stop at the
/// first job it can lock. With statistics that underestimate the pending jobs (a burst of
/// thousands queued at once, before `ANALYZE` catches up), the planner would otherwise fetch and
/// sort every pending job on every claim.
///
/// **Group commit of deliveries** (see [`crate::group`]): one batch at a time per server, on a
/// pooled connection, so that a burst of webhooks costs one commit (one WAL flush) per batch
/// rather than one per delivery. Several servers each commit their own batches.
pub struct PgStore {
    pool: PgPool,
    claims: PgPool,
    deliveries: DeliveryQueue,
    /// The delivery writers' turns.
    delivery_turns: tokio::sync::Semaphore,
}

/// A pooled connection during the delivery writer's turn.
struct DeliveryTurn<'a> {
    conn: sqlx::pool::PoolConnection<Postgres>,
    _turn: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for DeliveryTurn<'_> {
    type Target = sqlx::PgConnection;
    fn deref(&self) -> &sqlx::PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for DeliveryTurn<'_> {
    fn deref_mut(&mut self) -> &mut sqlx::PgConnection {
        &mut self.conn
    }
}

/// A batch of deliveries as one `INSERT` of arrays: one statement text for every batch size, so
/// each connection parses and plans it once. (A `VALUES` row per delivery made a statement per
/// batch size, each parsed and planned again: `base_yyparse` and the planner were on the profile
/// of PostgreSQL's backends during intake.) Same rows and answer as `group::insert_batch`.
const INSERT_DELIVERIES: &str = "INSERT INTO deliveries (project_id, forge, delivery_id, event, \
     payload, trace_id, received_at, push_key) \
     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bytea[], \
     $6::text[], $7::bigint[], $8::text[]) \
     ON CONFLICT DO NOTHING \
     RETURNING id, project_id, forge, delivery_id";

#[async_trait]
impl DeliveryWriter for sqlx::PgConnection {
    async fn insert(&mut self, batch: &[&NewDelivery]) -> Result<Vec<(i64, i64, String, String)>> {
        let column = |f: fn(&NewDelivery) -> &str| batch.iter().map(|d| f(d)).collect::<Vec<_>>();
        sqlx::query_as(INSERT_DELIVERIES)
            .bind(batch.iter().map(|d| d.project_id).collect::<Vec<_>>())
            .bind(column(|d| &d.forge))
            .bind(column(|d| &d.delivery_id))
            .bind(column(|d| &d.event))
            .bind(
                batch
                    .iter()
                    .map(|d| d.payload.as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(column(|d| &d.trace_id))
            .bind(batch.iter().map(|d| d.received_at).collect::<Vec<_>>())
            .bind(
                batch
                    .iter()
                    .map(|d| d.push_key.as_deref())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(self)
            .await
            .map_err(db("storing deliveries"))
    }

    async fn stored_id(&mut self, delivery: &NewDelivery) -> Result<(i64, bool)> {
        let by_id: Option<i64> = select_id::<Postgres>(delivery)
            .build_query_scalar()
            .fetch_optional(&mut *self)
            .await
            .map_err(db("reading a duplicate delivery"))?;
        if let Some(id) = by_id {
            return Ok((id, false));
        }
        let (id, at): (i64, i64) = select_push_id::<Postgres>(delivery)
            .build_query_as()
            .fetch_one(self)
            .await
            .map_err(db("reading a duplicate delivery"))?;
        Ok((id, at < delivery.push_key_since))
    }

    async fn expire(&mut self, delivery: &NewDelivery) -> Result<()> {
        expire_push_key::<Postgres>(delivery)
            .build()
            .execute(self)
            .await
            .map_err(db("expiring a push key"))?;
        Ok(())
    }
}

/// Extends the lease of job `job_id` held by agent `agent_id` inside an artifacts transaction, and
/// with `mark`, records that the job has artifacts. `false`: the agent does not hold the job.
async fn lease_for_artifacts(
    conn: &mut sqlx::PgConnection,
    job_id: i64,
    agent_id: i64,
    lease_until: Millis,
    mark: bool,
) -> Result<bool> {
    let leased = sqlx::query(
        "UPDATE jobs SET has_artifacts = (has_artifacts OR $4), lease_until = GREATEST(lease_until, $1) WHERE id = $2 AND status = 'running' AND agent_id = $3",
    )
    .bind(lease_until)
    .bind(job_id)
    .bind(agent_id)
    .bind(mark)
    .execute(&mut *conn)
    .await
    .map_err(db("extending a lease"))?;
    Ok(leased.rows_affected() > 0)
}

/// A typed column read.
fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(column)
        .map_err(|e| StoreError::Database(format!("reading column {column}: {e}")))
}

/// A list column (`text[]`).
fn list(row: &PgRow, column: &str) -> Result<Vec<String>> {
    get(row, column)
}

/// A nullable list column.
fn opt_list(row: &PgRow, column: &str) -> Result<Option<Vec<String>>> {
    get(row, column)
}

/// A nullable list of ids (`bigint[]`).
fn opt_ids(row: &PgRow, column: &str) -> Result<Option<Vec<i64>>> {
    get(row, column)
}

/// A connection idle for longer than this is pinged before it is handed out.
const PING_IF_IDLE: Duration = Duration::from_secs(1);

/// The options of both pools. sqlx pings a connection before handing it out by default: a round
/// trip to the server before every statement outside a transaction, which under load is as much as
/// the statement itself. A connection in steady use is known to work (a broken one fails its
/// statement and is closed, since sqlx pings it when it comes back), so only one that has been idle
/// for [`PING_IF_IDLE`] is pinged first, as HikariCP does: one the server dropped meanwhile (a
/// restart, an idle timeout) is replaced before it fails a statement.
fn pool_options(max: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .idle_timeout(Some(Duration::from_secs(300)))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

impl PgStore {
    /// Connects to `url` and runs the migrations (which take an advisory lock, so that servers
    /// starting together migrate once).
    ///
    /// # Errors
    /// When the database cannot be reached or a migration fails.
    pub async fn connect(url: &str) -> Result<Self> {
        let options: PgConnectOptions = url.parse().map_err(db("parsing the PostgreSQL URL"))?;
        let pool = pool_options(CONNECTIONS)
            .min_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(db("connecting to PostgreSQL"))?;
        let claims = pool_options(CLAIM_CONNECTIONS)
            .min_connections(0)
            .connect_lazy_with(options.options([
                ("enable_sort", "off"),
                ("enable_bitmapscan", "off"),
                ("enable_seqscan", "off"),
            ]));
        let mut conn = pool
            .acquire()
            .await
            .map_err(db("connecting to PostgreSQL"))?;
        MIGRATOR
            .run_direct(&mut *conn)
            .await
            .map_err(|e| StoreError::Database(format!("migrating the PostgreSQL database: {e}")))?;
        drop(conn);
        Ok(Self {
            pool,
            claims,
            deliveries: DeliveryQueue::default(),
            delivery_turns: tokio::sync::Semaphore::new(DELIVERY_WRITERS),
        })
    }

    /// Closes the connections (waiting for those in use to come back).
    pub async fn close(&self) {
        self.claims.close().await;
        self.pool.close().await;
    }
}

/// Inserts `jobs` of a pipeline, in batches.
async fn insert_jobs(
    conn: &mut sqlx::PgConnection,
    pipeline_id: i64,
    project_id: i64,
    jobs: &[NewJob],
) -> Result<()> {
    for batch in jobs.chunks(INSERT_BATCH) {
        let mut q = QueryBuilder::<Postgres>::new(
            "INSERT INTO jobs (pipeline_id, project_id, name, stage, stage_index, position, \
             attempt, status, job_when, allow_failure, needs, tags, resource_group, interruptible, \
             spec, created_at, queued_at) ",
        );
        q.push_values(batch, |mut b, job| {
            b.push_bind(pipeline_id)
                .push_bind(project_id)
                .push_bind(&job.name)
                .push_bind(&job.stage)
                .push_bind(job.stage_index)
                .push_bind(job.position)
                .push_bind(job.attempt)
                .push_bind(&job.status)
                .push_bind(&job.when)
                .push_bind(job.allow_failure)
                .push_bind(&job.needs)
                .push_bind(&job.tags)
                .push_bind(&job.resource_group)
                .push_bind(job.interruptible)
                .push_bind(&job.spec)
                .push_bind(job.created_at)
                .push_bind(queued_at(job));
        });
        q.build()
            .execute(&mut *conn)
            .await
            .map_err(db("inserting jobs"))?;
    }
    Ok(())
}

/// The conditions on a pending job `j` that agent `$3` (tags), `$4` (takes untagged) may run now
/// (`$1`), whose resource group has no running job as of the statement's snapshot.
const CLAIMABLE: &str = "j.status = 'pending' \
     AND (j.run_after IS NULL OR j.run_after <= $1) \
     AND j.tags <@ $3::text[] AND (cardinality(j.tags) > 0 OR $4) \
     AND (j.resource_group IS NULL OR NOT EXISTS (\
        SELECT 1 FROM jobs r WHERE r.project_id = j.project_id \
        AND r.resource_group = j.resource_group AND r.status = 'running'))";

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db("ping"))?;
        Ok(())
    }

    async fn create_project(&self, name: &str, spec: &str, now: Millis) -> Result<ProjectRecord> {
        let row = sqlx::query(&format!(
            "INSERT INTO projects (name, spec, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING RETURNING {PROJECT_COLS}"
        ))
        .bind(name)
        .bind(spec)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("creating a project"))?;
        match row {
            Some(row) => Ok(project_record!(&row)),
            None => Err(StoreError::Conflict(format!("project {name}"))),
        }
    }

    async fn update_project(&self, name: &str, spec: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE projects SET spec = $1 WHERE name = $2")
            .bind(spec)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db("updating a project"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn project(&self, name: &str) -> Result<Option<ProjectRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {PROJECT_COLS} FROM projects WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a project"))?;
        Ok(match row {
            Some(row) => Some(project_record!(&row)),
            None => None,
        })
    }

    async fn project_by_id(&self, id: i64) -> Result<Option<ProjectRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {PROJECT_COLS} FROM projects WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a project"))?;
        Ok(match row {
            Some(row) => Some(project_record!(&row)),
            None => None,
        })
    }

    async fn projects(&self) -> Result<Vec<ProjectRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {PROJECT_COLS} FROM projects ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing projects"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(project_record!(row));
        }
        Ok(out)
    }

    async fn insert_delivery(&self, d: &NewDelivery) -> Result<(i64, bool)> {
        self.deliveries
            .store(d, || async {
                let turn = self
                    .delivery_turns
                    .acquire()
                    .await
                    .map_err(|_| StoreError::Database("the store is closed".into()))?;
                let conn = self
                    .pool
                    .acquire()
                    .await
                    .map_err(db("acquiring a connection"))?;
                Ok(DeliveryTurn { conn, _turn: turn })
            })
            .await
    }

    async fn pending_deliveries(
        &self,
        limit: i64,
        now: Millis,
        skip: &[i64],
    ) -> Result<Vec<DeliveryRecord>> {
        let skip = skip_projects(skip);
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLS}, payload FROM deliveries WHERE status = 'pending' \
             AND (retry_at IS NULL OR retry_at <= $1){skip} ORDER BY id LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing pending deliveries"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(delivery_record!(row, get(row, "payload")?));
        }
        Ok(out)
    }

    async fn close_delivery(&self, id: i64, status: &str, reason: &str) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET status = $1, reason = $2 WHERE id = $3 AND status = 'pending'",
        )
        .bind(status)
        .bind(reason)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db("closing a delivery"))?;
        Ok(())
    }

    async fn fail_delivery_attempt(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<Millis>,
    ) -> Result<i64> {
        let attempts: Option<i64> = sqlx::query_scalar(
            "UPDATE deliveries SET attempts = attempts + 1, last_error = $1, retry_at = $2, \
             status = CASE WHEN $2::BIGINT IS NULL THEN 'failed' ELSE 'pending' END, \
             reason = CASE WHEN $2::BIGINT IS NULL THEN $1 ELSE reason END \
             WHERE id = $3 AND status = 'pending' RETURNING attempts",
        )
        .bind(error)
        .bind(retry_at)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("recording a failed delivery attempt"))?;
        Ok(attempts.unwrap_or(0))
    }

    async fn next_delivery_retry(&self) -> Result<Option<Millis>> {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT MIN(retry_at) FROM deliveries WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db("reading the next delivery retry"))
    }

    async fn deliveries(&self, project_id: i64, page: Page) -> Result<Paged<DeliveryRecord>> {
        let (limit, offset) = limit_offset(page);
        let total: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE project_id = $1")
                .bind(project_id)
                .fetch_one(&self.pool)
                .await
                .map_err(db("counting deliveries"))?;
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLS} FROM deliveries WHERE project_id = $1 \
             ORDER BY id DESC LIMIT $2 OFFSET $3"
        ))
        .bind(project_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing deliveries"))?;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            items.push(delivery_record!(row, Vec::new()));
        }
        Ok(Paged { items, total })
    }

    async fn create_pipeline(&self, p: &NewPipeline) -> Result<i64> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("beginning a transaction"))?;
        // A concurrent creation for the same delivery waits on the unique index, then does nothing.
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO pipelines (project_id, delivery_id, git_ref, tag, sha, before_sha, source, \
             status, trace_id, errors, spec, created_at, protected) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (delivery_id) DO NOTHING RETURNING id",
        )
        .bind(p.project_id)
        .bind(p.delivery_id)
        .bind(&p.git_ref)
        .bind(p.tag)
        .bind(&p.sha)
        .bind(&p.before_sha)
        .bind(&p.source)
        .bind(&p.status)
        .bind(&p.trace_id)
        .bind(&p.errors)
        .bind(&p.spec)
        .bind(p.created_at)
        .bind(p.protected)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("creating a pipeline"))?;
        let Some(id) = id else {
            let id: i64 = sqlx::query_scalar("SELECT id FROM pipelines WHERE delivery_id = $1")
                .bind(p.delivery_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("reading a delivery's pipeline"))?;
            return Ok(id);
        };
        insert_jobs(&mut tx, id, p.project_id, &p.jobs).await?;
        if let Some(delivery) = p.delivery_id {
            sqlx::query(
                "UPDATE deliveries SET status = 'created', reason = NULL, pipeline_id = $1 \
                 WHERE id = $2",
            )
            .bind(id)
            .bind(delivery)
            .execute(&mut *tx)
            .await
            .map_err(db("marking a delivery created"))?;
        }
        tx.commit().await.map_err(db("committing a pipeline"))?;
        Ok(id)
    }

    async fn pipeline(&self, id: i64) -> Result<Option<PipelineRecord>> {
        // The pipeline row (and its version) is read before the jobs: jobs read later can only be
        // newer, so an `apply` computed from them with this version fails rather than applying over
        // changes it did not see.
        let row = sqlx::query(&format!(
            "SELECT {PIPELINE_COLS}, {VERSION} FROM pipelines p JOIN projects pr ON pr.id = p.project_id \
             WHERE p.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a pipeline"))?;
        let Some(row) = row else { return Ok(None) };
        let mut pipeline = pipeline_record!(&row);
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE pipeline_id = $1 ORDER BY position, attempt, id"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading a pipeline's jobs"))?;
        pipeline.jobs.reserve(rows.len());
        for row in &rows {
            pipeline.jobs.push(job_record!(row));
        }
        Ok(Some(pipeline))
    }

    async fn pipeline_head(&self, id: i64) -> Result<Option<PipelineRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {PIPELINE_COLS}, {NO_VERSION} FROM pipelines p JOIN projects pr ON pr.id = p.project_id \
             WHERE p.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a pipeline"))?;
        Ok(match row {
            Some(row) => Some(pipeline_record!(&row)),
            None => None,
        })
    }

    async fn jobs_named(&self, pipeline_id: i64, names: &[String]) -> Result<Vec<JobRecord>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE pipeline_id = $1 AND name = ANY($2) \
             ORDER BY position, attempt, id"
        ))
        .bind(pipeline_id)
        .bind(names)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading jobs by name"))?;
        rows.iter().map(|row| Ok(job_record!(row))).collect()
    }

    async fn success_changes_nothing(
        &self,
        pipeline_id: i64,
        stage_index: i64,
        job_id: i64,
        name: &str,
    ) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pipelines WHERE id = $1 AND status = 'running' \
                            AND started_at IS NOT NULL) \
                AND EXISTS (SELECT 1 FROM jobs WHERE pipeline_id = $1 AND stage_index = $2 \
                            AND id <> $3 AND status IN ('pending', 'running')) \
                AND NOT EXISTS (SELECT 1 FROM jobs WHERE pipeline_id = $1 AND needs IS NOT NULL \
                                AND $4 = ANY (needs))",
        )
        .bind(pipeline_id)
        .bind(stage_index)
        .bind(job_id)
        .bind(name)
        .fetch_one(&self.pool)
        .await
        .map_err(db("checking what a job's success changes"))
    }

    async fn jobs_before_stage(
        &self,
        pipeline_id: i64,
        stage_index: i64,
    ) -> Result<Vec<JobRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE pipeline_id = $1 AND stage_index < $2 \
             ORDER BY position, attempt, id"
        ))
        .bind(pipeline_id)
        .bind(stage_index)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading the jobs of earlier stages"))?;
        rows.iter().map(|row| Ok(job_record!(row))).collect()
    }

    async fn pipelines(
        &self,
        project_id: i64,
        filter: &PipelineFilter,
        page: Page,
    ) -> Result<Paged<PipelineRecord>> {
        let (limit, offset) = limit_offset(page);
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pipelines WHERE project_id = $1 \
             AND ($2::text IS NULL OR git_ref = $2) AND ($3::text IS NULL OR status = $3)",
        )
        .bind(project_id)
        .bind(&filter.git_ref)
        .bind(&filter.status)
        .fetch_one(&self.pool)
        .await
        .map_err(db("counting pipelines"))?;
        let rows = sqlx::query(&format!(
            "SELECT {PIPELINE_COLS}, {NO_VERSION} FROM pipelines p JOIN projects pr ON pr.id = p.project_id \
             WHERE p.project_id = $1 AND ($2::text IS NULL OR p.git_ref = $2) \
             AND ($3::text IS NULL OR p.status = $3) ORDER BY p.id DESC LIMIT $4 OFFSET $5"
        ))
        .bind(project_id)
        .bind(&filter.git_ref)
        .bind(&filter.status)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing pipelines"))?;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            items.push(pipeline_record!(row));
        }
        Ok(Paged { items, total })
    }

    async fn active_pipelines(&self) -> Result<Vec<i64>> {
        sqlx::query_scalar(&format!(
            "SELECT id FROM pipelines WHERE status NOT IN {OVER} ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing active pipelines"))
    }

    async fn unfinished_push_pipelines(
        &self,
        project_id: i64,
        git_ref: &str,
        below: i64,
    ) -> Result<Vec<i64>> {
        sqlx::query_scalar(&format!(
            "SELECT id FROM pipelines WHERE status NOT IN {OVER} AND project_id = $1 \
             AND git_ref = $2 AND source = 'push' AND id < $3 ORDER BY id"
        ))
        .bind(project_id)
        .bind(git_ref)
        .bind(below)
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing the pipelines of a ref"))
    }

    async fn apply(&self, pipeline_id: i64, version: i64, changes: &Changes) -> Result<bool> {
        // Cheap early answer for a stale version, without locks.
        let current: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT {VERSION} FROM pipelines p WHERE p.id = $1"
        ))
        .bind(pipeline_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a pipeline's version"))?;
        if current != Some(version) {
            return Ok(false);
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("beginning a transaction"))?;
        // Lock order (see `PgStore`): the jobs to change, by id, then the pipeline. Once locked,
        // the jobs to change cannot be claimed (claims skip locked rows) or finished under us.
        let mut ids: Vec<i64> = changes.jobs.iter().map(|job| job.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            sqlx::query("SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                .bind(&ids)
                .execute(&mut *tx)
                .await
                .map_err(db("locking jobs"))?;
        }
        let locked: Option<(i64, i64)> =
            sqlx::query_as("SELECT version, project_id FROM pipelines WHERE id = $1 FOR UPDATE")
                .bind(pipeline_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("locking a pipeline"))?;
        let Some((own, project_id)) = locked else {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Ok(false);
        };
        // A new statement, so a new snapshot: every claim or finish committed before the locks
        // were granted counts.
        let bumps: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(bumps), 0)::bigint FROM jobs WHERE pipeline_id = $1",
        )
        .bind(pipeline_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("reading a pipeline's version"))?;
        if own + bumps != version {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Ok(false);
        }
        for job in &changes.jobs {
            sqlx::query(
                "UPDATE jobs SET status = COALESCE($1, status), \
                 queued_at = COALESCE($2, queued_at), finished_at = COALESCE($3, finished_at), \
                 run_after = COALESCE($4, run_after), \
                 failure_reason = COALESCE($5, failure_reason), \
                 cancel_requested = COALESCE($6, cancel_requested), \
                 retried = COALESCE($7, retried) \
                 WHERE id = $8 AND pipeline_id = $9",
            )
            .bind(&job.status)
            .bind(job.queued_at)
            .bind(job.finished_at)
            .bind(job.run_after)
            .bind(&job.failure_reason)
            .bind(job.cancel_requested)
            .bind(job.retried)
            .bind(job.id)
            .bind(pipeline_id)
            .execute(&mut *tx)
            .await
            .map_err(db("updating a job"))?;
        }
        insert_jobs(&mut tx, pipeline_id, project_id, &changes.new_jobs).await?;
        sqlx::query(
            "UPDATE pipelines SET version = version + 1, status = COALESCE($1, status), \
             started_at = COALESCE($2, started_at), finished_at = COALESCE($3, finished_at), \
             spec = COALESCE($4, spec) WHERE id = $5",
        )
        .bind(&changes.status)
        .bind(changes.started_at)
        .bind(changes.finished_at)
        .bind(&changes.spec)
        .bind(pipeline_id)
        .execute(&mut *tx)
        .await
        .map_err(db("updating a pipeline"))?;
        tx.commit().await.map_err(db("committing changes"))?;
        Ok(true)
    }

    async fn claim(
        &self,
        agent: &AgentRecord,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Option<JobRecord>> {
        let scope = agent.scope_sql("TRUE");
        // Fast path, one statement: lock the oldest candidate; if it has no resource group, mark it
        // running (its `bumps` moves the pipeline's version) and start its pipeline if it is the
        // first. `candidate` is NULL when there is none; the job columns
        // are NULL when the candidate is in a resource group (then the slow path decides).
        let row = sqlx::query(&format!(
            "WITH c AS (\
                SELECT j.id AS cand_id, j.resource_group AS cand_group FROM jobs j \
                WHERE {CLAIMABLE}{scope} \
                ORDER BY j.queued_at, j.id LIMIT 1 FOR UPDATE OF j SKIP LOCKED), \
             u AS (\
                UPDATE jobs SET status = 'running', started_at = $1, lease_until = $2, \
                agent_id = $5, agent_name = $6, bumps = jobs.bumps + 1 \
                FROM c WHERE jobs.id = c.cand_id AND c.cand_group IS NULL \
                RETURNING {JOB_COLS}), \
             p AS (\
                UPDATE pipelines SET started_at = COALESCE(pipelines.started_at, $1), \
                status = CASE WHEN pipelines.status IN {NOT_STARTED} THEN 'running' \
                    ELSE pipelines.status END \
                FROM u WHERE pipelines.id = u.pipeline_id \
                AND (pipelines.started_at IS NULL OR pipelines.status IN {NOT_STARTED})) \
             SELECT c.cand_id, u.* FROM c LEFT JOIN u ON TRUE"
        ))
        .bind(now)
        .bind(lease_until)
        .bind(&agent.tags)
        .bind(agent.run_untagged)
        .bind(agent.id)
        .bind(&agent.name)
        .fetch_optional(&self.claims)
        .await
        .map_err(db("claiming a job"))?;
        let Some(row) = row else { return Ok(None) };
        let claimed: Option<i64> = get(&row, "id")?;
        if claimed.is_some() {
            return Ok(Some(job_record!(&row)));
        }
        self.claim_in_group(agent, now, lease_until).await
    }

    async fn heartbeat(&self, job_id: i64, agent_id: i64, lease_until: Millis) -> Result<bool> {
        let cancel: Option<bool> = sqlx::query_scalar(
            "UPDATE jobs SET lease_until = GREATEST(lease_until, $1) \
             WHERE id = $2 AND status = 'running' AND agent_id = $3 RETURNING cancel_requested",
        )
        .bind(lease_until)
        .bind(job_id)
        .bind(agent_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("extending a lease"))?;
        cancel.ok_or(StoreError::LeaseLost)
    }

    async fn append_log(
        &self,
        job_id: i64,
        agent_id: i64,
        offset: i64,
        bytes: &[u8],
        lease_until: Millis,
    ) -> Result<i64> {
        // One statement (one round trip, its own transaction): lock the job's row, append the
        // bytes past what the log holds, and move the size and the lease. No row: the lease is
        // gone; no `after`: the chunk starts past the end (or before 0), a gap.
        let row: Option<(i64, Option<i64>)> = sqlx::query_as(
            "WITH j AS (SELECT log_size FROM jobs \
                        WHERE id = $1 AND status = 'running' AND agent_id = $2 FOR UPDATE), \
                  fresh AS (SELECT j.log_size AS pos, \
                                   substring($3::bytea FROM LEAST(j.log_size - $4, length($3::bytea)) \
                                                         ::int + 1) AS bytes \
                            FROM j WHERE $4 >= 0 AND $4 <= j.log_size), \
                  ins AS (INSERT INTO log_chunks (job_id, pos, bytes) \
                          SELECT $1, pos, bytes FROM fresh WHERE length(bytes) > 0), \
                  upd AS (UPDATE jobs SET log_size = fresh.pos + length(fresh.bytes), \
                                          lease_until = GREATEST(lease_until, $5) \
                          FROM fresh WHERE jobs.id = $1 RETURNING jobs.log_size) \
             SELECT j.log_size, (SELECT log_size FROM upd) FROM j",
        )
        .bind(job_id)
        .bind(agent_id)
        .bind(bytes)
        .bind(offset)
        .bind(lease_until)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("appending to a log"))?;
        match row {
            None => Err(StoreError::LeaseLost),
            Some((size, None)) => Err(StoreError::LogGap(size)),
            Some((_, Some(after))) => Ok(after),
        }
    }

    async fn read_log(&self, job_id: i64, start: i64, end: i64) -> Result<Vec<u8>> {
        let start = start.max(0);
        if end <= start {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT pos, bytes FROM log_chunks WHERE job_id = $1 AND pos < $3 \
             AND pos >= COALESCE((SELECT MAX(pos) FROM log_chunks \
                WHERE job_id = $1 AND pos <= $2), 0) \
             ORDER BY pos",
        )
        .bind(job_id)
        .bind(start)
        .bind(end)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading a log"))?;
        Ok(assemble(rows, start, end))
    }

    async fn begin_artifacts(
        &self,
        job_id: i64,
        agent_id: i64,
        lease_until: Millis,
    ) -> Result<i64> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("beginning a transaction"))?;
        if !lease_for_artifacts(&mut tx, job_id, agent_id, lease_until, false).await? {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::LeaseLost);
        }
        // Unfinished earlier uploads of the job (a retried or abandoned request) go.
        sqlx::query(
            "DELETE FROM artifact_uploads WHERE job_id = $1 AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.job_id = $1 AND a.upload_id = artifact_uploads.id)",
        )
        .bind(job_id)
        .execute(&mut *tx)
        .await
        .map_err(db("dropping unfinished uploads"))?;
        let id: i64 =
            sqlx::query_scalar("INSERT INTO artifact_uploads (job_id) VALUES ($1) RETURNING id")
                .bind(job_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("starting an upload"))?;
        tx.commit()
            .await
            .map_err(db("committing an upload's start"))?;
        Ok(id)
    }

    async fn put_artifact_chunk(
        &self,
        job_id: i64,
        upload_id: i64,
        seq: i64,
        data: &[u8],
    ) -> Result<()> {
        let stored = sqlx::query(
            "INSERT INTO artifact_chunks (upload_id, seq, data) SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM artifact_uploads WHERE id = $1 AND job_id = $4) ON CONFLICT (upload_id, seq) DO UPDATE SET data = excluded.data",
        )
        .bind(upload_id)
        .bind(seq)
        .bind(data)
        .bind(job_id)
        .execute(&self.pool)
        .await
        .map_err(db("storing an artifacts chunk"))?;
        if stored.rows_affected() == 0 {
            return Err(StoreError::UploadGone);
        }
        Ok(())
    }

    async fn commit_artifacts(
        &self,
        job_id: i64,
        agent_id: i64,
        upload_id: i64,
        chunks: i64,
        size: i64,
        lease_until: Millis,
    ) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("beginning a transaction"))?;
        if !lease_for_artifacts(&mut tx, job_id, agent_id, lease_until, true).await? {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::LeaseLost);
        }
        let (count, first, last, bytes): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(c.seq), COALESCE(MIN(c.seq), 0), COALESCE(MAX(c.seq), -1), CAST(COALESCE(SUM(length(c.data)), 0) AS BIGINT) FROM artifact_uploads u LEFT JOIN artifact_chunks c ON c.upload_id = u.id WHERE u.id = $1 AND u.job_id = $2",
        )
        .bind(upload_id)
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("checking an upload"))?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM artifact_uploads WHERE id = $1 AND job_id = $2)",
        )
        .bind(upload_id)
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("checking an upload"))?;
        if !exists || count != chunks || first != 0 || last != chunks - 1 || bytes != size {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::UploadGone);
        }
        let old: Option<i64> =
            sqlx::query_scalar("SELECT upload_id FROM artifacts WHERE job_id = $1")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("reading artifacts"))?;
        sqlx::query(
            "INSERT INTO artifacts (job_id, upload_id, size, chunks) VALUES ($1, $2, $3, $4) ON CONFLICT (job_id) DO UPDATE SET upload_id = excluded.upload_id, size = excluded.size, chunks = excluded.chunks",
        )
        .bind(job_id)
        .bind(upload_id)
        .bind(size)
        .bind(chunks)
        .execute(&mut *tx)
        .await
        .map_err(db("storing artifacts"))?;
        if let Some(old) = old.filter(|old| *old != upload_id) {
            sqlx::query("DELETE FROM artifact_uploads WHERE id = $1")
                .bind(old)
                .execute(&mut *tx)
                .await
                .map_err(db("dropping replaced artifacts"))?;
        }
        tx.commit().await.map_err(db("committing artifacts"))?;
        Ok(())
    }

    async fn drop_stale_artifact_uploads(&self) -> Result<u64> {
        // Chunks go with their upload (`ON DELETE CASCADE`).
        let dropped = sqlx::query(
            "DELETE FROM artifact_uploads WHERE id IN (SELECT u.id FROM artifact_uploads u JOIN jobs j ON j.id = u.job_id WHERE j.status <> 'running' AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.upload_id = u.id))",
        )
        .execute(&self.pool)
        .await
        .map_err(db("dropping stale artifact uploads"))?
        .rows_affected();
        Ok(dropped)
    }

    async fn abort_artifacts(&self, job_id: i64, upload_id: i64) -> Result<()> {
        // The committed upload stays; chunks go with their upload (`ON DELETE CASCADE`).
        sqlx::query(
            "DELETE FROM artifact_uploads WHERE id = $1 AND job_id = $2 AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.job_id = $2 AND a.upload_id = $1)",
        )
        .bind(upload_id)
        .bind(job_id)
        .execute(&self.pool)
        .await
        .map_err(db("dropping an upload"))?;
        Ok(())
    }

    async fn artifacts_info(&self, job_id: i64) -> Result<Option<ArtifactsInfo>> {
        let row: Option<(i64, i64, i64)> =
            sqlx::query_as("SELECT upload_id, size, chunks FROM artifacts WHERE job_id = $1")
                .bind(job_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading artifacts"))?;
        Ok(row.map(|(upload_id, size, chunks)| ArtifactsInfo {
            upload_id,
            size,
            chunks,
        }))
    }

    async fn artifact_chunk(
        &self,
        job_id: i64,
        upload_id: i64,
        seq: i64,
    ) -> Result<Option<Vec<u8>>> {
        sqlx::query_scalar(
            "SELECT c.data FROM artifact_chunks c JOIN artifact_uploads u ON u.id = c.upload_id \
             WHERE c.upload_id = $1 AND c.seq = $2 AND u.job_id = $3",
        )
        .bind(upload_id)
        .bind(seq)
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading an artifacts chunk"))
    }

    async fn finish(&self, job_id: i64, agent_id: i64, result: &JobResult) -> Result<i64> {
        let pipeline_id: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET status = $1, exit_code = $2, failure_reason = $3, coverage = $4, \
             finished_at = $5, lease_until = NULL, bumps = bumps + 1 \
             WHERE id = $6 AND status = 'running' AND agent_id = $7 RETURNING pipeline_id",
        )
        .bind(&result.status)
        .bind(result.exit_code)
        .bind(&result.failure_reason)
        .bind(result.coverage)
        .bind(result.finished_at)
        .bind(job_id)
        .bind(agent_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("finishing a job"))?;
        pipeline_id.ok_or(StoreError::LeaseLost)
    }

    async fn expire_leases(&self, now: Millis) -> Result<Vec<(i64, i64)>> {
        // Jobs locked by a concurrent finish or heartbeat are skipped: the next round sees them.
        let mut expired: Vec<(i64, i64)> = sqlx::query_as(
            "WITH e AS (\
                SELECT id FROM jobs WHERE status = 'running' AND lease_until < $1 \
                ORDER BY id FOR UPDATE SKIP LOCKED) \
             UPDATE jobs SET status = 'failed', failure_reason = 'runner_system_failure', \
             finished_at = $1, lease_until = NULL, bumps = jobs.bumps + 1 \
             FROM e WHERE jobs.id = e.id RETURNING jobs.id, jobs.pipeline_id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db("expiring leases"))?;
        expired.sort_unstable();
        Ok(expired)
    }

    async fn extend_leases(&self, until: Millis) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET lease_until = $1 \
             WHERE status = 'running' AND (lease_until IS NULL OR lease_until < $1)",
        )
        .bind(until)
        .execute(&self.pool)
        .await
        .map_err(db("extending leases"))?;
        Ok(())
    }

    async fn queue_depth(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await
            .map_err(db("counting pending jobs"))
    }

    async fn job(&self, id: i64) -> Result<Option<JobRecord>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a job"))?;
        Ok(match row {
            Some(row) => Some(job_record!(&row)),
            None => None,
        })
    }

    async fn pipeline_project(&self, id: i64) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT project_id FROM pipelines WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a pipeline's project"))
    }

    async fn job_project(&self, id: i64) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT project_id FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a job's project"))
    }

    async fn register_agent(&self, a: &NewAgent) -> Result<i64> {
        sqlx::query_scalar(
            "INSERT INTO agents (name, token_hash, tags, run_untagged, executor, concurrency, \
             version, registered_at, projects, protected_only) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(&a.name)
        .bind(&a.token_hash)
        .bind(&a.tags)
        .bind(a.run_untagged)
        .bind(&a.executor)
        .bind(a.concurrency)
        .bind(&a.version)
        .bind(a.registered_at)
        .bind(&a.projects)
        .bind(a.protected_only)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if e.as_database_error()
                .is_some_and(sqlx::error::DatabaseError::is_unique_violation)
            {
                StoreError::Conflict(format!("an agent with the token of {}", a.name))
            } else {
                db("registering an agent")(e)
            }
        })
    }

    async fn agent_by_token(&self, token_hash: &str) -> Result<Option<AgentRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLS} FROM agents WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading an agent"))?;
        Ok(match row {
            Some(row) => Some(agent_record!(&row)),
            None => None,
        })
    }

    async fn touch_agent(&self, id: i64, now: Millis) -> Result<()> {
        sqlx::query("UPDATE agents SET last_seen_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db("touching an agent"))?;
        Ok(())
    }

    async fn agents(&self) -> Result<Vec<AgentRecord>> {
        let rows = sqlx::query(&format!("SELECT {AGENT_COLS} FROM agents ORDER BY id"))
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing agents"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(agent_record!(row));
        }
        Ok(out)
    }

    async fn revoke_agent(&self, id: i64) -> Result<bool> {
        // One statement: the agent's row goes, and its running jobs' leases end now (a
        // data-modifying `WITH` runs whether or not the query reads it).
        let (gone,): (bool,) = sqlx::query_as(
            "WITH a AS (DELETE FROM agents WHERE id = $1 RETURNING id), \
                  j AS (UPDATE jobs SET lease_until = 0 \
                        WHERE agent_id = $1 AND status = 'running' RETURNING id) \
             SELECT EXISTS (SELECT 1 FROM a)",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .map_err(db("revoking an agent"))?;
        Ok(gone)
    }

    async fn setting(&self, name: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a setting"))
    }

    async fn set_setting(&self, name: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(db("writing a setting"))?;
        Ok(())
    }

    async fn create_project_token(&self, t: &NewProjectToken) -> Result<ProjectTokenRecord> {
        let row = sqlx::query(&format!(
            "WITH t AS (INSERT INTO project_tokens (project_id, name, token_hash, created_at, \
             expires_at, read_only) VALUES ($1, $2, $3, $4, $5, $6) RETURNING *) \
             SELECT {PROJECT_TOKEN_COLS} FROM t JOIN projects pr ON pr.id = t.project_id"
        ))
        .bind(t.project_id)
        .bind(&t.name)
        .bind(&t.token_hash)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.read_only)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if e.as_database_error()
                .is_some_and(sqlx::error::DatabaseError::is_unique_violation)
            {
                StoreError::Conflict(format!("a project token with the secret of {}", t.name))
            } else {
                db("creating a project token")(e)
            }
        })?;
        Ok(project_token_record!(&row))
    }

    async fn project_tokens(&self, project_id: i64) -> Result<Vec<ProjectTokenRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {PROJECT_TOKEN_COLS} FROM project_tokens t \
             JOIN projects pr ON pr.id = t.project_id WHERE t.project_id = $1 ORDER BY t.id"
        ))
        .bind(project_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing project tokens"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(project_token_record!(row));
        }
        Ok(out)
    }

    async fn project_token_by_hash(&self, token_hash: &str) -> Result<Option<ProjectTokenRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {PROJECT_TOKEN_COLS} FROM project_tokens t \
             JOIN projects pr ON pr.id = t.project_id WHERE t.token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a project token"))?;
        Ok(match row {
            Some(row) => Some(project_token_record!(&row)),
            None => None,
        })
    }

    async fn delete_project_token(&self, project_id: i64, id: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM project_tokens WHERE id = $1 AND project_id = $2")
            .bind(id)
            .bind(project_id)
            .execute(&self.pool)
            .await
            .map_err(db("deleting a project token"))?;
        Ok(done.rows_affected() > 0)
    }
}

impl PgStore {
    /// The claim's slow path, for when the oldest candidate is in a resource group: one
    /// transaction that walks candidates in queue order, and takes one in a group only under the
    /// group's advisory lock and after seeing, in a statement that started after the lock was
    /// taken, that no job of the group runs.
    async fn claim_in_group(
        &self,
        agent: &AgentRecord,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Option<JobRecord>> {
        let mut tx = self
            .claims
            .begin()
            .await
            .map_err(db("beginning a transaction"))?;
        let scope = agent.scope_sql("TRUE");
        let mut passed: Vec<i64> = Vec::new();
        for _ in 0..CLAIM_TRIES {
            let candidate: Option<(i64, i64, Option<String>)> = sqlx::query_as(&format!(
                "SELECT j.id, j.project_id, j.resource_group FROM jobs j \
                 WHERE {CLAIMABLE}{scope} AND j.id <> ALL($2) \
                 ORDER BY j.queued_at, j.id LIMIT 1 FOR UPDATE OF j SKIP LOCKED"
            ))
            .bind(now)
            .bind(&passed)
            .bind(&agent.tags)
            .bind(agent.run_untagged)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("choosing a job"))?;
            let Some((id, project_id, group)) = candidate else {
                break;
            };
            if let Some(group) = group {
                let locked: bool = sqlx::query_scalar(
                    "SELECT pg_try_advisory_xact_lock(\
                        hashtextextended($1::bigint::text || '/' || $2, 0))",
                )
                .bind(project_id)
                .bind(&group)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("locking a resource group"))?;
                let busy = !locked || {
                    sqlx::query_scalar::<_, bool>(
                        "SELECT EXISTS (SELECT 1 FROM jobs WHERE project_id = $1 \
                         AND resource_group = $2 AND status = 'running')",
                    )
                    .bind(project_id)
                    .bind(&group)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db("checking a resource group"))?
                };
                if busy {
                    passed.push(id);
                    continue;
                }
            }
            let row = sqlx::query(&format!(
                "UPDATE jobs SET status = 'running', started_at = $1, lease_until = $2, \
                 agent_id = $3, agent_name = $4, bumps = bumps + 1 WHERE id = $5 \
                 RETURNING {JOB_COLS}"
            ))
            .bind(now)
            .bind(lease_until)
            .bind(agent.id)
            .bind(&agent.name)
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("claiming a job"))?;
            let job = job_record!(&row);
            sqlx::query(&format!(
                "UPDATE pipelines SET started_at = COALESCE(started_at, $1), \
                 status = CASE WHEN status IN {NOT_STARTED} THEN 'running' ELSE status END \
                 WHERE id = $2 AND (started_at IS NULL OR status IN {NOT_STARTED})"
            ))
            .bind(now)
            .bind(job.pipeline_id)
            .execute(&mut *tx)
            .await
            .map_err(db("starting a pipeline"))?;
            tx.commit().await.map_err(db("committing a claim"))?;
            return Ok(Some(job));
        }
        tx.rollback().await.map_err(db("rolling back"))?;
        Ok(None)
    }
}
