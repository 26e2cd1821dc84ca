//! Group commit of webhook deliveries, for both stores.
//!
//! Deliveries arrive many at once and each must be committed before its `202`. A caller queues
//! its delivery, then waits for its turn at the store's delivery writer; whoever gets the turn
//! stores every queued delivery (up to [`DELIVERY_BATCH`]) in one transaction with one statement,
//! and hands each caller its answer. One commit, and one sync, then serves a burst.

use std::ops::DerefMut;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;

use crate::{NewDelivery, Result};

/// How many queued deliveries one transaction stores at most.
pub(crate) const DELIVERY_BATCH: usize = 256;

/// The batch's `INSERT`, one row per delivery; it skips the ones stored before and returns
/// `id, project_id, forge, delivery_id` of those it stored. SQLite's; PostgreSQL binds the batch as
/// arrays instead (`postgres::INSERT_DELIVERIES`), one statement for every batch size.
pub(crate) fn insert_batch<'a, DB>(batch: &'a [&NewDelivery]) -> sqlx::QueryBuilder<'a, DB>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a [u8]: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<&'a str>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut q = sqlx::QueryBuilder::new(
        "INSERT INTO deliveries (project_id, forge, delivery_id, event, payload, trace_id, \
         received_at, push_key) ",
    );
    q.push_values(batch, |mut b, d| {
        b.push_bind(d.project_id)
            .push_bind(d.forge.as_str())
            .push_bind(d.delivery_id.as_str())
            .push_bind(d.event.as_str())
            .push_bind(d.payload.as_slice())
            .push_bind(d.trace_id.as_str())
            .push_bind(d.received_at)
            .push_bind(d.push_key.as_deref());
    });
    q.push(" ON CONFLICT DO NOTHING RETURNING id, project_id, forge, delivery_id");
    q
}

/// What a store's connection does for a group commit.
#[async_trait]
pub(crate) trait DeliveryWriter: Send {
    /// Runs [`insert_batch`], which skips a delivery whose id or push key is stored: the rows it
    /// returns.
    async fn insert(&mut self, batch: &[&NewDelivery]) -> Result<Vec<(i64, i64, String, String)>>;

    /// The delivery that `delivery` repeats, and whether that one is a push received before
    /// `delivery`'s window (then it does not count): `Sql::stored_delivery`.
    async fn stored_id(&mut self, delivery: &NewDelivery) -> Result<(i64, bool)>;

    /// Clears the push key that `delivery` repeats: `Sql::expire_push_key`.
    async fn expire(&mut self, delivery: &NewDelivery) -> Result<()>;

    /// Stores `batch` with one statement (atomic on its own: one round trip and one commit), then
    /// reads the id of each delivery it did not store (stored before, or earlier in the batch):
    /// one `(id, duplicate)` per delivery, in order, or an error. Should reading a duplicate's id
    /// fail after the statement, the batch is stored again one by one, which finds every delivery
    /// stored (their ids are right, but the new ones of the batch are then answered as
    /// duplicates: the processor's sweep still finds them, since they are pending).
    async fn store_batch(&mut self, batch: &[&NewDelivery]) -> Result<Vec<(i64, bool)>> {
        let mut ids: std::collections::HashMap<(i64, String, String), i64> = self
            .insert(batch)
            .await?
            .into_iter()
            .map(|(id, project, forge, delivery)| ((project, forge, delivery), id))
            .collect();
        let mut out = Vec::with_capacity(batch.len());
        for d in batch {
            let key = (d.project_id, d.forge.clone(), d.delivery_id.clone());
            out.push(match ids.remove(&key) {
                Some(id) => (id, false),
                None => match self.stored_id(d).await? {
                    // The same push, but before the window: clear its key and store this one.
                    // Keys are cleared only here, when one is met, so a batch costs no extra
                    // statement otherwise.
                    (_, true) => {
                        self.expire(d).await?;
                        match self.insert(&[d]).await?.first() {
                            Some(row) => (row.0, false),
                            None => (self.stored_id(d).await?.0, true),
                        }
                    }
                    (id, false) => (id, true),
                },
            });
        }
        Ok(out)
    }

    /// Stores one delivery on its own.
    async fn store_one(&mut self, delivery: &NewDelivery) -> Result<(i64, bool)> {
        let mut answer = self.store_batch(&[delivery]).await?;
        answer.pop().ok_or_else(|| {
            crate::StoreError::Database("storing a delivery answered nothing".into())
        })
    }
}

/// A delivery waiting for the next group commit, and where its answer goes.
struct Queued {
    delivery: NewDelivery,
    answer: oneshot::Sender<Result<(i64, bool)>>,
}

/// The deliveries waiting for a group commit.
#[derive(Default)]
pub(crate) struct DeliveryQueue {
    queue: std::sync::Mutex<Vec<Queued>>,
}

impl DeliveryQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Queued>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores `delivery`, in a batch with the others queued meanwhile: `(id, duplicate)`.
    /// `writer` waits for a turn at the delivery writer; a caller whose delivery another caller's
    /// batch stores meanwhile gives up its wait.
    pub(crate) async fn store<W, F, Fut>(
        &self,
        delivery: &NewDelivery,
        writer: F,
    ) -> Result<(i64, bool)>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<W>>,
        W: DerefMut,
        W::Target: DeliveryWriter,
    {
        let (answer, mut answered) = oneshot::channel();
        self.lock().push(Queued {
            delivery: delivery.clone(),
            answer,
        });
        loop {
            // Whoever stores our delivery answers it: wait for that or for a turn at the writer,
            // whichever comes first, so that a delivery stored by another caller's batch costs no
            // turn (and, on PostgreSQL, no connection).
            let mut conn = tokio::select! {
                biased;
                answer = &mut answered => match answer {
                    Ok(result) => return result,
                    // The caller that took it was canceled midway: store it alone (idempotent).
                    Err(_) => return writer().await?.store_one(delivery).await,
                },
                conn = writer() => conn?,
            };
            match answered.try_recv() {
                Ok(result) => return result,
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Closed) => return conn.store_one(delivery).await,
            }
            // Ours is still queued: store the oldest queued ones, in one transaction.
            let batch: Vec<Queued> = {
                let mut queue = self.lock();
                let take = queue.len().min(DELIVERY_BATCH);
                let rest = queue.split_off(take);
                std::mem::replace(&mut *queue, rest)
            };
            if batch.is_empty() {
                // Another writer (PostgreSQL has several) took ours and is storing it.
                continue;
            }
            let deliveries: Vec<&NewDelivery> = batch.iter().map(|q| &q.delivery).collect();
            match conn.store_batch(&deliveries).await {
                Ok(results) => {
                    for (queued, result) in batch.into_iter().zip(results) {
                        let _ = queued.answer.send(Ok(result));
                    }
                }
                // One bad delivery (say, of a project deleted meanwhile) must not fail the others:
                // store them one by one, each with its own answer.
                Err(_) => {
                    for queued in batch {
                        let result = conn.store_one(&queued.delivery).await;
                        let _ = queued.answer.send(result);
                    }
                }
            }
            drop(conn);
            if let Ok(result) = answered.try_recv() {
                return result;
            }
        }
    }
}
