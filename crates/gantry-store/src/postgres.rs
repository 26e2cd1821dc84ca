//! [`PgStore`]: several servers sharing one PostgreSQL database.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::{Connection, PgConnection, Postgres};

use crate::group::DeliveryQueue;
use crate::query::{LogAppend, Sql, VERSION};
use crate::rows::{JOB_COLS, NOT_STARTED};
use crate::{AgentRecord, Changes, JobRecord, Millis, NewDelivery, Result, StoreError, db};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

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
/// first claim of a pipeline writes its row (`started_at`, `running`). [`crate::Store::apply`] locks the
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

/// Stores a group commit's batch of deliveries with one statement (see [`crate::group`]).
async fn insert_deliveries(
    conn: &mut PgConnection,
    batch: &[&NewDelivery],
) -> Result<Vec<(i64, i64, String, String)>> {
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
        .fetch_all(conn)
        .await
        .map_err(db("storing deliveries"))
}

/// What PostgreSQL spells its own way (see [`crate::query`]): lists are arrays.
impl Sql for Postgres {
    type List<'a> = Option<&'a [String]>;
    type Ids<'a> = Option<&'a [i64]>;

    fn list_param(list: Option<&[String]>) -> Option<&[String]> {
        list
    }

    fn ids_param(ids: Option<&[i64]>) -> Option<&[i64]> {
        ids
    }

    fn read_list(row: &PgRow, column: &str) -> Result<Vec<String>> {
        Self::get(row, column)
    }

    fn read_opt_list(row: &PgRow, column: &str) -> Result<Option<Vec<String>>> {
        Self::get(row, column)
    }

    fn read_opt_ids(row: &PgRow, column: &str) -> Result<Option<Vec<i64>>> {
        Self::get(row, column)
    }

    fn affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    const NUMBERED_BATCH: bool = true;
    const BEGIN: &'static str = "BEGIN";
    const LATER_LEASE: &'static str = "GREATEST(lease_until, $1)";
    const NAME_IN_LIST: &'static str = "name = ANY($2)";
    const JOB_ID_IN_LIST: &'static str = "j.id = ANY($1)";
    const SUCCESS_CHANGES_NOTHING: &'static str = "SELECT \
        EXISTS (SELECT 1 FROM pipelines WHERE id = $1 AND status = 'running' \
                AND started_at IS NOT NULL) \
        AND EXISTS (SELECT 1 FROM jobs WHERE pipeline_id = $1 AND stage_index = $2 \
                    AND id <> $3 AND status IN ('pending', 'running') \
                    AND spec NOT LIKE '%\"rollback\":{\"from\"%') \
        AND NOT EXISTS (SELECT 1 FROM jobs WHERE pipeline_id = $1 AND needs IS NOT NULL \
                        AND $4 = ANY (needs))";
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
            .map_err(|e| StoreError::database(format!("migrating the PostgreSQL database: {e}")))?;
        drop(conn);
        Ok(Self {
            pool,
            claims,
            deliveries: DeliveryQueue::default(),
            delivery_turns: tokio::sync::Semaphore::new(DELIVERY_WRITERS),
        })
    }

    /// A pooled connection, for everything but claims.
    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<Postgres>> {
        self.pool
            .acquire()
            .await
            .map_err(db("acquiring a connection"))
    }

    /// Closes the connections (waiting for those in use to come back).
    pub async fn close(&self) {
        self.claims.close().await;
        self.pool.close().await;
    }
}

/// The conditions on a pending job `j` that agent `$3` (tags), `$4` (takes untagged) may run now
/// (`$1`), whose resource group has no running job as of the statement's snapshot.
const CLAIMABLE: &str = "j.status = 'pending' \
     AND (j.run_after IS NULL OR j.run_after <= $1) \
     AND j.tags <@ $3::text[] AND (cardinality(j.tags) > 0 OR $4) \
     AND (j.resource_group IS NULL OR NOT EXISTS (\
        SELECT 1 FROM jobs r WHERE r.project_id = j.project_id \
        AND r.resource_group = j.resource_group AND r.status = 'running'))";

/// Runs `$body` with `$conn: &mut PgConnection`, a pooled connection (for reads and writes
/// alike: each statement is durable once it returns; `sweeping!` is the same).
macro_rules! read {
    ($self:ident, $conn:ident => $body:expr) => {{
        let mut pooled = $self.conn().await?;
        let $conn: &mut PgConnection = &mut pooled;
        $body
    }};
}

macro_rules! writing {
    ($self:ident, $conn:ident => $body:expr) => {
        read!($self, $conn => $body)
    };
}

macro_rules! sweeping {
    ($self:ident, $conn:ident => $body:expr, $changed:expr) => {
        read!($self, $conn => $body)
    };
}

/// What PostgreSQL does its own way; [`crate::query::store!`] writes the rest of the
/// [`crate::Store`] impl.
impl PgStore {
    async fn insert_delivery(&self, d: &NewDelivery) -> Result<(i64, bool)> {
        self.deliveries
            .store(d, || async {
                let turn =
                    self.delivery_turns.acquire().await.map_err(|_| {
                        StoreError::Database("the store is closed".to_owned().into())
                    })?;
                let conn = self.conn().await?;
                Ok(DeliveryTurn { conn, _turn: turn })
            })
            .await
    }

    async fn apply(&self, pipeline_id: i64, version: i64, changes: &Changes) -> Result<bool> {
        let mut conn = self.conn().await?;
        // Cheap early answer for a stale version, without locks.
        let current: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT {VERSION} FROM pipelines p WHERE p.id = $1"
        ))
        .bind(pipeline_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("reading a pipeline's version"))?;
        if current != Some(version) {
            return Ok(false);
        }
        let mut tx = conn.begin().await.map_err(db("beginning a transaction"))?;
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
            return Postgres::apply_at(tx, pipeline_id, version, None, changes).await;
        };
        // A new statement, so a new snapshot: every claim or finish committed before the locks
        // were granted counts.
        let bumps = Postgres::id_of(
            &mut *tx,
            "SELECT COALESCE(SUM(bumps), 0)::bigint FROM jobs WHERE pipeline_id = $1",
            pipeline_id,
            "reading a pipeline's version",
        )
        .await?;
        let current = Some((own + bumps.unwrap_or(0), project_id));
        Postgres::apply_at(tx, pipeline_id, version, current, changes).await
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
        let claimed: Option<i64> = Postgres::get(&row, "id")?;
        if claimed.is_some() {
            return Ok(Some(Postgres::job_row(&row)?));
        }
        self.claim_in_group(agent, now, lease_until).await
    }

    async fn append_log(&self, chunk: LogAppend<'_>) -> Result<i64> {
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
        .bind(chunk.job_id)
        .bind(chunk.agent_id)
        .bind(chunk.bytes)
        .bind(chunk.offset)
        .bind(chunk.lease_until)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("appending to a log"))?;
        match row {
            None => Err(StoreError::LeaseLost),
            Some((size, None)) => Err(StoreError::LogGap(size)),
            Some((_, Some(after))) => Ok(after),
        }
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
}

crate::query::store!(PgStore, Postgres, PgConnection, "postgres");

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
            let job = Postgres::mark_claimed(&mut *tx, id, agent, now, lease_until).await?;
            Postgres::start_pipeline(&mut *tx, job.pipeline_id, now).await?;
            tx.commit().await.map_err(db("committing a claim"))?;
            return Ok(Some(job));
        }
        tx.rollback().await.map_err(db("rolling back"))?;
        Ok(None)
    }
}
