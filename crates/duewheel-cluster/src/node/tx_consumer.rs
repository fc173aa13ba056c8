//! Expiry effects in the handler's own transaction: the handler's writes
//! and the fenced end of each delivered timer's row commit together, or
//! neither does.
//!
//! [`TxConsumer::handle_batch`] takes up to a batch of delivered events,
//! opens a transaction on its own connection (to the nodes' database), runs
//! the handler in it, then, in the same transaction, ends every expiry's
//! row with the node's fence: the touched shard rows `FOR SHARE` (by
//! `shard_id`), each shard still at the epoch that claimed the event, then
//! the timer rows `FOR UPDATE` (by `(shard_id, timer_id)`), each still
//! claimed (`state = 1`), set to a tombstone (`state = 2`, `ended_at_ms`).
//!
//! Invariants:
//! - the transaction commits only if **every** expiry in it was ended by
//!   it. An event whose row cannot be ended (another delivery's transaction
//!   ended it first, or its shard moved to another epoch) must not have its
//!   effect committed: the transaction rolls back, that event leaves the
//!   batch (it is done, or the shard's new owner redelivers it), and the
//!   rest runs again in a new transaction. So a commit means each effect
//!   happened exactly once, with its row ended;
//! - a crash, a lost connection or a handler error before the commit leaves
//!   neither effect nor end: the row stays claimed and is delivered again
//!   (by the engine after its ack timeout, or by the next owner);
//! - a stale owner's transaction cannot commit an effect: its fence finds
//!   the new epoch (or waits for the takeover's epoch bump to commit, which
//!   waits for this transaction's `FOR SHARE`), so it rolls back, the
//!   handler's writes with it;
//! - only after the commit are the events acked in the engine's memory; the
//!   acker's later fenced delete then finds a tombstone, not a claimed row,
//!   and changes nothing.
//!
//! Reminders are not ended here: a node delivers each reminder at most
//! once, by a fenced statement that removes its time from the row before
//! delivery (see `super::remind`). They are handed to the handler with the
//! expiries and acked in memory after the commit, so a reminder's effect
//! commits at most once, never twice; a crash before the commit loses it
//! (the reminder is not delivered again).

use super::{KeeperMsg, Shared, bump};
use crate::config::StoreConfig;
use crate::store::{epoch_param, shard_param};
use duewheel::{Consumer, Event, EventKind};
use postgres::{Client, Statement, Transaction};
use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::Arc;
use std::time::Duration;

/// A consumer whose handler runs in a PostgreSQL transaction that also
/// ends the delivered timers' rows (see [`Node::subscribe_tx`]).
///
/// ```no_run
/// use duewheel_cluster::{NodeConfig, StoreConfig};
/// use std::time::Duration;
///
/// let store = StoreConfig::new("host=/run/postgresql dbname=shop");
/// let node = NodeConfig::new(store, "node-a").group("expiry").start::<u64>()?;
/// let mut expiries = node.subscribe_tx("expiry")?;
/// loop {
///     // Unconditional writes: the commit carries the fenced end of each
///     // row, so each expiry's effect commits exactly once.
///     expiries.handle_batch(500, Duration::from_millis(100), |events, tx| {
///         for e in events {
///             tx.execute("UPDATE orders SET status = 'cancelled' WHERE id = $1", &[&(e.id as i64)])?;
///         }
///         Ok::<(), postgres::Error>(())
///     })?;
/// #   break;
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`Node::subscribe_tx`]: crate::Node::subscribe_tx
pub struct TxConsumer<P: Clone + Send + 'static> {
    consumer: Consumer<u64, P>,
    shared: Arc<Shared>,
    store: StoreConfig,
    conn: Option<(Client, Statement)>,
    /// Received but not yet handled (a receive may return more than `max`).
    held: std::collections::VecDeque<Event<u64, P>>,
}

impl<P: Clone + Send + 'static> std::fmt::Debug for TxConsumer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxConsumer")
            .field("group", &self.consumer.group())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

/// Why [`TxConsumer::handle_batch`] committed nothing. The events of the
/// batch stay unacked and are delivered again after the ack timeout (or by
/// the shard's next owner), except where said.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxConsumeError<E> {
    /// The handler failed; its transaction was rolled back.
    #[error("the handler failed")]
    Handler(#[source] E),
    /// A statement failed or the database could not be reached; the
    /// transaction was rolled back (or never began).
    #[error("database: {0}")]
    Database(#[source] postgres::Error),
    /// The connection failed during the commit: it may have committed. If it
    /// did, the rows are tombstones and the redelivery finds nothing to
    /// claim; if not, they are claimed and delivered again.
    #[error("the commit is in doubt: {0}")]
    InDoubt(#[source] postgres::Error),
    /// The node is shutting down and delivers nothing more.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Why [`Node::subscribe_tx`](crate::Node::subscribe_tx) gave no consumer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeTxError {
    /// The engine refused the subscription.
    #[error(transparent)]
    Subscribe(#[from] duewheel::SubscribeError),
    /// The node has other groups: a transactional ack ends the timer for
    /// every group (its tombstone is final), so it needs the only one.
    #[error("a transactional consumer needs its group to be the node's only group")]
    NotSoleGroup,
    /// The consumer's connection could not be opened.
    #[error("database: {0}")]
    Connect(#[source] postgres::Error),
}

/// Ends the claimed rows of a batch, fenced; returns the touched shards'
/// epochs (kind 0) and the ended ids (kind 1). Same locks, same order, as
/// the node's claim and ack (see node/sql.rs).
fn end_sql(schema: &str) -> String {
    format!(
        "WITH f AS MATERIALIZED (SELECT shard_id, epoch FROM \"{schema}\".shards
                       WHERE shard_id = ANY($1::int[]) ORDER BY shard_id FOR SHARE),
         l AS (SELECT t.shard_id, t.timer_id FROM \"{schema}\".timers t
           JOIN unnest($2::int[], $3::bigint[], $4::bigint[]) AS x(s, id, e)
             ON t.shard_id = x.s AND t.timer_id = x.id
           JOIN f ON f.shard_id = x.s AND f.epoch = x.e
           WHERE t.state = 1
           ORDER BY t.shard_id, t.timer_id FOR UPDATE OF t),
         u AS (UPDATE \"{schema}\".timers t SET state = 2, ended_at_ms = $5
           FROM l WHERE t.shard_id = l.shard_id AND t.timer_id = l.timer_id
           RETURNING t.timer_id)
         SELECT 0, f.shard_id::bigint, f.epoch FROM f
         UNION ALL SELECT 1, u.timer_id, 0 FROM u"
    )
}

impl<P: Clone + Send + 'static> TxConsumer<P> {
    pub(super) fn new(
        consumer: Consumer<u64, P>,
        shared: Arc<Shared>,
        store: StoreConfig,
    ) -> Result<Self, SubscribeTxError> {
        let mut me = Self {
            consumer,
            shared,
            store,
            conn: None,
            held: std::collections::VecDeque::new(),
        };
        me.connect().map_err(SubscribeTxError::Connect)?;
        Ok(me)
    }

    /// The group this consumer takes events of.
    pub fn group(&self) -> &str {
        self.consumer.group()
    }

    /// A connection of our own, with the node's timeouts and durable
    /// commits, and the caller's `search_path` (the database default): the
    /// handler's statements name its own tables.
    fn connect(&mut self) -> Result<(), postgres::Error> {
        let mut pg: postgres::Config = self.store.dsn.parse()?;
        pg.connect_timeout(self.store.connect_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("duewheel-tx");
        }
        let mut client = pg.connect(postgres::NoTls)?;
        let statement_ms = self.store.statement_timeout.as_millis().max(1);
        client.batch_execute(&format!(
            "SET synchronous_commit TO on; SET statement_timeout TO {statement_ms};"
        ))?;
        let end = client.prepare(&end_sql(&self.store.schema))?;
        self.conn = Some((client, end));
        Ok(())
    }

    /// Waits up to `wait` for events, then handles up to `max` of them in
    /// one transaction: `f` runs with the events and the open transaction;
    /// if it returns `Ok`, every expiry's row is ended (fenced) in the same
    /// transaction, which then commits. Returns how many events were
    /// handled and committed (0 if none came).
    ///
    /// `f` may run more than once for some events (never with a commit in
    /// between): when an event's row can no longer be ended by this node,
    /// the transaction is rolled back and `f` runs again without it (see
    /// the module doc). Write `f` so that a rolled-back run leaves nothing
    /// outside the transaction.
    pub fn handle_batch<E, F>(
        &mut self,
        max: usize,
        wait: Duration,
        mut f: F,
    ) -> Result<usize, TxConsumeError<E>>
    where
        F: FnMut(&[Event<u64, P>], &mut Transaction<'_>) -> Result<(), E>,
    {
        let max = max.max(1);
        if self.held.is_empty() {
            match self.consumer.recv_timeout(wait) {
                Ok(first) => self.held.push_back(first),
                Err(duewheel::RecvTimeoutError::Timeout) => return Ok(0),
                Err(_) => return Err(TxConsumeError::ShuttingDown),
            }
        }
        if self.held.len() < max {
            self.held.extend(self.consumer.drain_ready());
        }
        let take = self.held.len().min(max);
        let mut batch: Vec<Event<u64, P>> = self.held.drain(..take).collect();
        // A redelivery received while its first copy was held: one copy is
        // enough (never ack the other before the commit: the acker would
        // delete the claimed row under us).
        let mut seen = FxHashSet::default();
        batch.retain(|e| e.kind != EventKind::Expired || seen.insert(e.id));

        // The claim epoch of each expiry: the event carries it (set by the
        // gate when it claimed the row), so an ack of another copy of the
        // same id (which ends the node's own record of the claim) cannot
        // leave this one without it. A lookup in that record here once
        // dropped such events unhandled, and their rows stayed claimed.
        let claims: FxHashMap<u64, u64> = batch
            .iter()
            .filter(|e| e.kind == EventKind::Expired)
            .map(|e| (e.id, e.claim))
            .collect();
        let mut deadlocks = 0;
        loop {
            if batch.is_empty() {
                return Ok(0);
            }
            match self.attempt(&batch, &claims, &mut f)? {
                Attempt::Committed => {
                    let _ = self.consumer.ack_batch(&batch);
                    return Ok(batch.len());
                }
                Attempt::Retry(_) if deadlocks < 5 => deadlocks += 1,
                Attempt::Retry(e) => return Err(TxConsumeError::Database(e)),
                Attempt::Unended(gone) => {
                    // Done elsewhere, or the new owner's: never commit
                    // their effects here. Acked in memory so the engine
                    // forgets them; the acker's fenced delete of a
                    // tombstone (or of a row of a shard no longer held at
                    // that epoch) changes nothing.
                    let (left, dropped): (Vec<_>, Vec<_>) = batch
                        .into_iter()
                        .partition(|e| !gone.contains(&e.id) || e.kind != EventKind::Expired);
                    let _ = self.consumer.ack_batch(&dropped);
                    batch = left;
                }
            }
        }
    }
}

/// How one transaction ended.
enum Attempt {
    Committed,
    /// A deadlock or serialization victim: nothing happened; run it again.
    Retry(postgres::Error),
    /// Rolled back: these expiries' rows could not be ended here.
    Unended(FxHashSet<u64>),
}

fn is_transient(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

impl<P: Clone + Send + 'static> TxConsumer<P> {
    fn attempt<E, F>(
        &mut self,
        batch: &[Event<u64, P>],
        claims: &FxHashMap<u64, u64>,
        f: &mut F,
    ) -> Result<Attempt, TxConsumeError<E>>
    where
        F: FnMut(&[Event<u64, P>], &mut Transaction<'_>) -> Result<(), E>,
    {
        if self.conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            self.conn = None;
            self.connect().map_err(|e| {
                bump(&self.shared.counters.db_errors, 1);
                TxConsumeError::Database(e)
            })?;
        }
        let shared = &*self.shared;
        let (client, end) = self.conn.as_mut().expect("connected above");
        let db = |e: postgres::Error| {
            bump(&shared.counters.db_errors, 1);
            if is_transient(&e) {
                Ok(Attempt::Retry(e))
            } else {
                Err(TxConsumeError::Database(e))
            }
        };
        let mut tx = match client.transaction() {
            Ok(tx) => tx,
            Err(e) => return db(e),
        };
        f(batch, &mut tx).map_err(TxConsumeError::Handler)?;

        // In lock order: by shard, then by the stored id.
        let mut items: Vec<(i32, i64, i64, u32)> = batch
            .iter()
            .filter(|e| e.kind == EventKind::Expired)
            .map(|e| {
                let shard = shared.map.shard_of_id(e.id);
                (
                    shard_param(shard),
                    e.id as i64,
                    epoch_param(claims.get(&e.id).copied().unwrap_or(0)),
                    shard,
                )
            })
            .collect();
        items.sort_unstable_by_key(|&(s, id, _, _)| (s, id));
        let mut touched: Vec<i32> = items.iter().map(|i| i.0).collect();
        touched.dedup();
        let s: Vec<i32> = items.iter().map(|i| i.0).collect();
        let ids: Vec<i64> = items.iter().map(|i| i.1).collect();
        let epochs: Vec<i64> = items.iter().map(|i| i.2).collect();
        let now = i64::try_from(shared.now_ms()).unwrap_or(i64::MAX);
        let rows = if items.is_empty() {
            Vec::new()
        } else {
            match tx.query(&*end, &[&touched, &s, &ids, &epochs, &now]) {
                Ok(rows) => rows,
                Err(e) => return db(e),
            }
        };
        let mut current: FxHashMap<i32, i64> = FxHashMap::default();
        let mut ended: FxHashSet<i64> = FxHashSet::default();
        for row in &rows {
            let parsed = (|| -> Result<(), postgres::Error> {
                let kind: i32 = row.try_get(0)?;
                let a: i64 = row.try_get(1)?;
                if kind == 0 {
                    current.insert(i32::try_from(a).unwrap_or(i32::MAX), row.try_get(2)?);
                } else {
                    ended.insert(a);
                }
                Ok(())
            })();
            if let Err(e) = parsed {
                return db(e);
            }
        }
        if ended.len() == items.len() {
            return match tx.commit() {
                Ok(()) => {
                    bump(&shared.counters.acked, items.len() as u64);
                    Ok(Attempt::Committed)
                }
                Err(e) if client.is_closed() => {
                    bump(&shared.counters.db_errors, 1);
                    Err(TxConsumeError::InDoubt(e))
                }
                Err(e) => db(e),
            };
        }
        drop(tx);
        let mut gone = FxHashSet::default();
        let mut lost: Vec<(u32, u64)> = Vec::new();
        for &(s, id, e, shard) in &items {
            if ended.contains(&id) {
                continue;
            }
            gone.insert(id as u64);
            if current.get(&s) != Some(&e) {
                lost.push((shard, u64::try_from(e).unwrap_or(0)));
            }
        }
        lost.sort_unstable();
        lost.dedup();
        for (shard, epoch) in lost {
            bump(&shared.counters.fenced, 1);
            // Only if we still think we hold it at the claim's epoch.
            if shared.epoch_of(shard) == Some(epoch) {
                let _ = shared.keeper.send(KeeperMsg::Lost { shard, epoch });
            }
        }
        Ok(Attempt::Unended(gone))
    }
}
