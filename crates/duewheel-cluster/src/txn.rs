//! Scheduling and cancelling inside the caller's own transaction: the order
//! row and its deadline commit together, or neither does; a payment and the
//! cancel of its deadline commit together, and the cancel says whether the
//! expiry already won.
//!
//! The statements run on the caller's connection (any
//! [`postgres::GenericClient`]: a `Transaction`, or a `Client` for an
//! implicit one) to the database the nodes use, so every table is qualified
//! with the schema: the caller's `search_path` is its own.
//!
//! Invariants:
//! - a schedule writes its row in the caller's transaction and nothing
//!   else: the owning node learns of it only once it commits, from a
//!   `NOTIFY` sent in the same transaction (PostgreSQL delivers it at the
//!   commit, never for a rollback) or, if that is lost, from its sweep;
//! - a cancel locks the timer row (`FOR UPDATE`) before it decides, so it
//!   and a node's claim of the same row serialize: either the cancel finds
//!   it pending and deletes it (the claim then finds nothing), or it waits
//!   for the claim's commit and answers `AlreadyFired`. The lock is held to
//!   the caller's commit, so the claim of a row the caller's transaction
//!   cancelled waits for that transaction, and fires only if it rolls back.
//!   Like the node's cancel, it takes no shard lock (a cancel is not
//!   fenced; see the crate doc).

use crate::config::StoreConfig;
use crate::error::OpenError;
use crate::schema::is_valid_schema_name;
use crate::shard_map::ShardMap;
use crate::store::MAX_PAYLOAD_BYTES;
use duewheel::{Cancel, Codec, Deadline};
use postgres::GenericClient;
use postgres::types::Type;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Schedules and cancels timers in the caller's own PostgreSQL
/// transaction. Holds no connection: the statements run on the client the
/// caller passes. `Clone + Send + Sync`.
///
/// ```no_run
/// use duewheel::Cancel;
/// use duewheel_cluster::{StoreConfig, TxTimers};
/// use std::time::Duration;
///
/// let store = StoreConfig::new("host=/run/postgresql dbname=shop");
/// let timers = TxTimers::new(&store)?;
/// let mut db = postgres::Client::connect("host=/run/postgresql dbname=shop", postgres::NoTls)?;
///
/// // The order and its deadline commit together, or neither does.
/// let mut tx = db.transaction()?;
/// tx.execute("INSERT INTO orders (id, status) VALUES ($1, 'open')", &[&42_i64])?;
/// timers.schedule(&mut tx, 42, Duration::from_secs(15 * 60), &"release 42".to_string())?;
/// tx.commit()?;
///
/// // Payment: lock the order first, then cancel its deadline.
/// let mut tx = db.transaction()?;
/// tx.execute("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE", &[&42_i64])?;
/// match timers.cancel::<_, String>(&mut tx, 42)? {
///     Cancel::Cancelled(_) => {
///         tx.execute("UPDATE orders SET status = 'paid' WHERE id = $1", &[&42_i64])?;
///     }
///     // The expiry won (its handler cancelled the order, or will): refund.
///     Cancel::AlreadyFired | Cancel::NotFound => {
///         tx.execute("UPDATE orders SET status = 'refund' WHERE id = $1", &[&42_i64])?;
///     }
/// }
/// tx.commit()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct TxTimers {
    map: ShardMap,
    channel: String,
    notify_within_ms: u64,
    insert_sql: String,
    cancel_sql: String,
}

/// Why [`TxTimers::schedule`] did not write a row. Nothing was written;
/// after [`Query`](Self::Query) the caller's transaction is aborted (roll
/// it back), after the others it is usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxScheduleError {
    /// The id has a row already: pending, firing, or fired (a tombstone).
    #[error("timer {0} is already scheduled (or fired and not yet reaped)")]
    AlreadyScheduled(u64),
    /// The deadline or payload cannot be stored.
    #[error("invalid schedule: {0}")]
    Invalid(&'static str),
    /// The statement failed; the transaction is aborted.
    #[error("database: {0}")]
    Query(#[from] postgres::Error),
}

/// Why [`TxTimers::cancel`] has no answer. The caller's transaction is
/// aborted by [`Query`](Self::Query) (roll it back); after
/// [`Corrupt`](Self::Corrupt) the row is deleted in the transaction, so
/// roll back unless the payload does not matter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxCancelError {
    /// The statement failed; the transaction is aborted.
    #[error("database: {0}")]
    Query(#[from] postgres::Error),
    /// The row was deleted but its payload does not decode as `P`.
    #[error("the cancelled timer's payload does not decode: {0}")]
    Corrupt(String),
}

impl TxTimers {
    /// For the nodes of `store` (its schema and shard count; its DSN is not
    /// used: the caller brings the connection). No database access.
    pub fn new(store: &StoreConfig) -> Result<Self, OpenError> {
        if !is_valid_schema_name(&store.schema) {
            return Err(OpenError::InvalidConfig(format!(
                "schema name {:?}: use [a-z_][a-z0-9_]*, at most 63 bytes",
                store.schema
            )));
        }
        let map = ShardMap::new(store.shards).map_err(|_| {
            OpenError::InvalidConfig(format!(
                "{} shards: use 1..={}",
                store.shards,
                crate::MAX_SHARDS
            ))
        })?;
        let s = &store.schema;
        Ok(Self {
            map,
            channel: s.clone(),
            notify_within_ms: 300_000,
            // The owners LISTEN on the schema's name for comma-separated
            // ids (node/pager.rs); the id text is the u64 form ($6).
            insert_sql: format!(
                "WITH i AS (INSERT INTO \"{s}\".timers (shard_id, timer_id, deadline_ms, payload)
                   VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING timer_id)
                 SELECT i.timer_id, CASE WHEN $7 THEN pg_notify($5, $6) END FROM i"
            ),
            // Locks first (waiting for a claim in progress), then deletes
            // only a pending row; the locked row's state is the answer.
            cancel_sql: format!(
                "WITH l AS MATERIALIZED (SELECT shard_id, timer_id, state, payload
                   FROM \"{s}\".timers WHERE shard_id = $1 AND timer_id = $2 FOR UPDATE),
                 d AS (DELETE FROM \"{s}\".timers t USING l
                   WHERE t.shard_id = l.shard_id AND t.timer_id = l.timer_id AND l.state = 0
                   RETURNING 1)
                 SELECT l.state, l.payload, (SELECT count(*) FROM d) FROM l"
            ),
        })
    }

    /// Notifies the owner only of rows due within this long (default 5
    /// minutes, the node's default horizon); later ones are paged in by the
    /// owner. Use the nodes' horizon.
    #[must_use]
    pub fn notify_within(mut self, window: Duration) -> Self {
        self.notify_within_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// The shard map (to route ids as the nodes do).
    pub fn shard_map(&self) -> ShardMap {
        self.map
    }

    /// Inserts `id`'s timer in the caller's transaction: it exists (and
    /// fires at least once, unless cancelled) exactly if that transaction
    /// commits. A relative `deadline` counts from this host's clock.
    pub fn schedule<C: GenericClient, P: Codec>(
        &self,
        tx: &mut C,
        id: u64,
        deadline: impl Into<Deadline>,
        payload: &P,
    ) -> Result<(), TxScheduleError> {
        let row = self.row(id, deadline.into(), payload)?;
        let rows = tx.query_typed(&self.insert_sql, &row.params())?;
        row.inserted(rows.len())
    }

    /// [`schedule`](Self::schedule) on a `tokio_postgres` client or
    /// transaction (feature `tokio`).
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn schedule_async<C: tokio_postgres::GenericClient, P: Codec>(
        &self,
        tx: &C,
        id: u64,
        deadline: impl Into<Deadline>,
        payload: &P,
    ) -> Result<(), TxScheduleError> {
        let row = self.row(id, deadline.into(), payload)?;
        let rows = tx.query_typed(&self.insert_sql, &row.params()).await?;
        row.inserted(rows.len())
    }

    fn row<P: Codec>(
        &self,
        id: u64,
        deadline: Deadline,
        payload: &P,
    ) -> Result<InsertRow, TxScheduleError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let deadline_ms = deadline.to_unix_ms(now_ms);
        let deadline = i64::try_from(deadline_ms)
            .map_err(|_| TxScheduleError::Invalid("deadline beyond i64::MAX milliseconds"))?;
        let mut bytes = Vec::new();
        payload.encode(&mut bytes);
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(TxScheduleError::Invalid(
                "payload larger than 1 MiB encoded",
            ));
        }
        Ok(InsertRow {
            shard: shard_i32(self.map.shard_of_id(id)),
            id,
            stored_id: id as i64,
            deadline,
            bytes,
            channel: self.channel.clone(),
            id_text: id.to_string(),
            notify: deadline_ms < now_ms.saturating_add(self.notify_within_ms),
        })
    }

    /// Cancels `id`'s timer in the caller's transaction, holding its row
    /// lock until that transaction ends:
    ///
    /// - `Cancelled(payload)`: it was pending and is deleted (it will never
    ///   fire if the transaction commits);
    /// - `AlreadyFired`: a node claimed it (its expiry is being handled, or
    ///   was: a tombstone);
    /// - `NotFound`: no row (never scheduled, cancelled, or reaped).
    ///
    /// Take your own rows' locks *before* this one (e.g. `SELECT ... FOR
    /// UPDATE` the order first), as an expiry handler does in
    /// [`TxConsumer`](crate::TxConsumer): the same order on both sides means
    /// no deadlock between a payment and its expiry.
    pub fn cancel<C: GenericClient, P: Codec>(
        &self,
        tx: &mut C,
        id: u64,
    ) -> Result<Cancel<P>, TxCancelError> {
        let (shard, stored_id) = (shard_i32(self.map.shard_of_id(id)), id as i64);
        let row = tx.query_typed_opt(
            &self.cancel_sql,
            &[(&shard, Type::INT4), (&stored_id, Type::INT8)],
        )?;
        cancelled(row)
    }

    /// [`cancel`](Self::cancel) on a `tokio_postgres` client or
    /// transaction (feature `tokio`).
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn cancel_async<C: tokio_postgres::GenericClient, P: Codec>(
        &self,
        tx: &C,
        id: u64,
    ) -> Result<Cancel<P>, TxCancelError> {
        let (shard, stored_id) = (shard_i32(self.map.shard_of_id(id)), id as i64);
        let row = tx
            .query_typed_opt(
                &self.cancel_sql,
                &[(&shard, Type::INT4), (&stored_id, Type::INT8)],
            )
            .await?;
        cancelled(row)
    }
}

/// The cancel's answer from the locked row (state, payload, deleted).
fn cancelled<P: Codec>(row: Option<postgres::Row>) -> Result<Cancel<P>, TxCancelError> {
    let Some(row) = row else {
        return Ok(Cancel::NotFound);
    };
    let state: i16 = row.try_get(0)?;
    let deleted: i64 = row.try_get(2)?;
    if state != 0 || deleted == 0 {
        return Ok(Cancel::AlreadyFired);
    }
    let bytes: Vec<u8> = row.try_get(1)?;
    P::decode(&bytes)
        .map(Cancel::Cancelled)
        .map_err(|e| TxCancelError::Corrupt(e.to_string()))
}

/// One schedule's parameters, owned so both client kinds can borrow them.
struct InsertRow {
    shard: i32,
    id: u64,
    stored_id: i64,
    deadline: i64,
    bytes: Vec<u8>,
    channel: String,
    id_text: String,
    notify: bool,
}

impl InsertRow {
    fn params(&self) -> [(&(dyn postgres::types::ToSql + Sync), Type); 7] {
        [
            (&self.shard, Type::INT4),
            (&self.stored_id, Type::INT8),
            (&self.deadline, Type::INT8),
            (&self.bytes, Type::BYTEA),
            (&self.channel, Type::TEXT),
            (&self.id_text, Type::TEXT),
            (&self.notify, Type::BOOL),
        ]
    }

    fn inserted(&self, rows: usize) -> Result<(), TxScheduleError> {
        if rows == 0 {
            return Err(TxScheduleError::AlreadyScheduled(self.id));
        }
        Ok(())
    }
}

/// Shards are < MAX_SHARDS, so they fit an int.
fn shard_i32(shard: u32) -> i32 {
    i32::try_from(shard).unwrap_or(i32::MAX)
}
