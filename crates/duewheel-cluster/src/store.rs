//! [`PgStore`]: one connection to the shared timer table, and the fenced
//! statements that write it.
//!
//! Each method is **one SQL statement** in its own implicit transaction; an
//! `Ok` means PostgreSQL committed it (with `synchronous_commit = on`, which
//! the store sets for its session). The fenced ones ([`insert`], [`claim_due`],
//! [`ack`]) all start with the same CTE:
//!
//! ```sql
//! WITH f AS MATERIALIZED (SELECT epoch FROM shards WHERE shard_id = $1 FOR SHARE)
//! ```
//!
//! and write only `WHERE f.epoch = $epoch`. The `FOR SHARE` row lock is held
//! until the statement commits and conflicts with the `UPDATE` that bumps the
//! epoch at takeover, so every fenced write is ordered against every
//! takeover: it either commits before the bump (and the new owner's load,
//! which starts after the bump, sees it), or it waits for the bump, reads the
//! new epoch and writes nothing ([`Fenced`]). An epoch check without the lock
//! reads the epoch from a snapshot that may predate a concurrent bump; the
//! scale-out prototype (`docs/SCALE_OUT.md`) lost 158 acknowledged inserts in 60
//! of 100 takeovers that way, and 0 of 49,309 with the lock.
//!
//! [`insert`]: PgStore::insert
//! [`claim_due`]: PgStore::claim_due
//! [`ack`]: PgStore::ack

use std::collections::HashSet;

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, Row, RowIter, Statement};

use super::config::StoreConfig;
use super::error::{
    AckError, CancelError, ClaimError, Fenced, InsertError, LoadError, OpenError, QueryError,
};
use super::schema;
use super::shard_map::{MAX_SHARDS, ShardMap};

/// At most this many timers per [`insert`](PgStore::insert), ids per
/// [`ack`](PgStore::ack), rows per [`claim_due`](PgStore::claim_due). The
/// measured sweet spot is ~1000 rows per commit (`docs/SCALE_OUT.md`);
/// the limit keeps one statement's memory and lock count bounded.
pub const MAX_BATCH: usize = 10_000;

/// The largest payload a timer may carry, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// A timer to insert. The payload is borrowed: a refused batch is still the
/// caller's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewTimer<'a> {
    /// The timer's id, unique within its shard (stored as `bigint`, bit-cast).
    pub id: u64,
    /// Absolute deadline, UTC milliseconds (at most `i64::MAX`).
    pub deadline_ms: u64,
    /// Opaque bytes, e.g. a [`Codec`](duewheel::Codec) encoding.
    pub payload: &'a [u8],
}

/// Whether a stored timer is still pending or was claimed to be fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowState {
    /// Not yet claimed: it may still be cancelled.
    Pending,
    /// Claimed by the owner at `fired_epoch` and not yet acknowledged. A
    /// new owner redelivers it (at-least-once).
    Claimed {
        /// The epoch of the owner that claimed it.
        fired_epoch: u64,
    },
}

/// A timer as stored, from [`claim_due`](PgStore::claim_due) or
/// [`load`](PgStore::load).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTimer {
    /// The timer's id.
    pub id: u64,
    /// Absolute deadline, UTC milliseconds.
    pub deadline_ms: u64,
    /// Pending or claimed.
    pub state: RowState,
    /// The bytes it was inserted with.
    pub payload: Vec<u8>,
}

/// What an insert wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inserted {
    /// Rows written.
    pub inserted: usize,
    /// Ids of the batch that were *not* written because a timer with that id
    /// already exists in the shard (pending, or claimed and not yet acked),
    /// in batch order. After an in-doubt insert is retried, these may be the
    /// caller's own rows.
    pub duplicates: Vec<u64>,
}

/// What [`cancel`](PgStore::cancel) found. The row decides: a cancel deletes
/// only a pending row and a claim updates only a pending row, so exactly one
/// of them wins.
#[must_use = "the outcome says whether the cancel beat the claim"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cancel {
    /// The timer was pending and is now deleted; it will never be claimed.
    /// Its payload comes back.
    Cancelled(Vec<u8>),
    /// The claim won: the timer was claimed by the owner at `fired_epoch`
    /// and is being (or was) delivered.
    AlreadyClaimed {
        /// The epoch of the owner that claimed it.
        fired_epoch: u64,
    },
    /// No such timer: never inserted, already cancelled, or fired and acked.
    NotFound,
}

pub(super) struct Statements {
    pub(super) insert_fenced: Statement,
    pub(super) insert_unfenced: Statement,
    pub(super) cancel_delete: Statement,
    pub(super) cancel_probe: Statement,
    pub(super) claim: Statement,
    pub(super) ack: Statement,
    pub(super) load: Statement,
    pub(super) acquire: Statement,
    pub(super) owner_of: Statement,
    pub(super) renew: Statement,
    pub(super) release: Statement,
}

const FENCE: &str = "f AS MATERIALIZED (SELECT epoch FROM shards WHERE shard_id = $1 FOR SHARE)";

impl Statements {
    fn prepare(client: &mut Client) -> Result<Self, postgres::Error> {
        Ok(Self {
            insert_fenced: client.prepare(&format!(
                "WITH {FENCE},
                 ins AS (INSERT INTO timers (shard_id, timer_id, deadline_ms, payload)
                   SELECT $1, t.id, t.d, t.p
                   FROM f, unnest($3::bigint[], $4::bigint[], $5::bytea[]) AS t(id, d, p)
                   WHERE f.epoch = $2
                   ON CONFLICT DO NOTHING RETURNING timer_id)
                 SELECT f.epoch, ARRAY(SELECT timer_id FROM ins) FROM f"
            ))?,
            insert_unfenced: client.prepare(
                "INSERT INTO timers (shard_id, timer_id, deadline_ms, payload)
                 SELECT $1::int, t.id, t.d, t.p
                 FROM unnest($2::bigint[], $3::bigint[], $4::bytea[]) AS t(id, d, p)
                 ON CONFLICT DO NOTHING RETURNING timer_id",
            )?,
            cancel_delete: client.prepare(
                "DELETE FROM timers WHERE shard_id = $1 AND timer_id = $2 AND state = 0
                 RETURNING payload",
            )?,
            cancel_probe: client.prepare(
                "SELECT fired_epoch FROM timers
                 WHERE shard_id = $1 AND timer_id = $2 AND state = 1",
            )?,
            claim: client.prepare(&format!(
                "WITH {FENCE},
                 c AS (SELECT t.timer_id FROM timers t, f
                   WHERE f.epoch = $2 AND t.shard_id = $1 AND t.state = 0
                     AND t.deadline_ms <= $3
                   ORDER BY t.deadline_ms LIMIT $4
                   FOR UPDATE OF t SKIP LOCKED),
                 u AS (UPDATE timers t SET state = 1, fired_epoch = $2 FROM c
                   WHERE t.shard_id = $1 AND t.timer_id = c.timer_id AND t.state = 0
                   RETURNING t.timer_id, t.deadline_ms, t.payload)
                 SELECT f.epoch, u.timer_id, u.deadline_ms, u.payload
                 FROM f LEFT JOIN u ON true ORDER BY u.deadline_ms, u.timer_id"
            ))?,
            ack: client.prepare(&format!(
                "WITH {FENCE},
                 d AS (DELETE FROM timers t USING f
                   WHERE f.epoch = $2 AND t.shard_id = $1
                     AND t.timer_id = ANY($3::bigint[]) AND t.state = 1
                   RETURNING t.timer_id)
                 SELECT f.epoch, (SELECT count(*) FROM d) FROM f"
            ))?,
            load: client.prepare(
                "SELECT timer_id, deadline_ms, state, fired_epoch, payload FROM timers
                 WHERE shard_id = $1 AND deadline_ms >= $2 AND deadline_ms < $3
                 ORDER BY deadline_ms, timer_id",
            )?,
            // Lease expiry is judged by the database's clock alone.
            acquire: client.prepare(
                "UPDATE shards SET owner = $2, epoch = epoch + 1,
                   lease_expires_at = now() + $3::bigint * interval '1 millisecond'
                 WHERE shard_id = $1
                   AND (owner IS NULL OR owner = $2 OR lease_expires_at < now())
                 RETURNING epoch",
            )?,
            owner_of: client.prepare(
                "SELECT owner FROM shards WHERE shard_id = $1 AND lease_expires_at >= now()",
            )?,
            renew: client.prepare(
                "UPDATE shards SET lease_expires_at = now() + $4::bigint * interval '1 millisecond'
                 WHERE shard_id = $1 AND epoch = $2 AND owner = $3",
            )?,
            release: client.prepare(
                "UPDATE shards SET owner = NULL, epoch = epoch + 1,
                   lease_expires_at = '-infinity'
                 WHERE shard_id = $1 AND epoch = $2 AND owner = $3",
            )?,
        })
    }
}

/// One connection to duewheel's tables in PostgreSQL.
///
/// A store is one session: its methods take `&mut self` and run one statement
/// each. Use one store per thread; they share nothing but the database.
///
/// ```no_run
/// use duewheel_cluster::{Acquire, NewTimer, StoreConfig};
/// use std::time::Duration;
///
/// let mut store = StoreConfig::new("host=/tmp/pg port=54329 user=postgres").open()?;
/// let shard = store.shard_map().shard_of_id(42);
/// let Acquire::Acquired(lease) = store.acquire(shard, "node-a", Duration::from_secs(10))? else {
///     return Ok(()); // someone else owns it
/// };
/// let order = NewTimer { id: 42, deadline_ms: 1_800_000, payload: b"cancel if unpaid" };
/// store.insert(shard, lease.epoch(), &[order])?;
/// for timer in store.claim_due(shard, lease.epoch(), 1_800_000, 1000)? {
///     // deliver timer.id, then:
///     store.ack(shard, lease.epoch(), &[timer.id])?;
/// }
/// store.release(&lease)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PgStore {
    pub(super) client: Client,
    pub(super) map: ShardMap,
    pub(super) statements: Statements,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("shards", &self.map.shards())
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl PgStore {
    /// Connects, checks (or creates, or migrates) the schema, and prepares
    /// the statements.
    pub fn open(config: &StoreConfig) -> Result<Self, OpenError> {
        let invalid = |m: String| Err(OpenError::InvalidConfig(m));
        if !schema::is_valid_schema_name(&config.schema) {
            return invalid(format!(
                "schema name {:?}: use [a-z_][a-z0-9_]*, at most 63 bytes",
                config.schema
            ));
        }
        let Ok(map) = ShardMap::new(config.shards) else {
            return invalid(format!("{} shards: use 1..={MAX_SHARDS}", config.shards));
        };
        let connect_ms = duration_ms(config.connect_timeout);
        let statement_ms = duration_ms(config.statement_timeout);
        if connect_ms == 0 || statement_ms == 0 {
            return invalid("timeouts must be at least 1 ms".into());
        }
        // DSN, password lookup, TLS: config.rs.
        let mut client = config.connect()?;
        let q = |e: postgres::Error| OpenError::Schema(QueryError::from(e));
        // The name is [a-z0-9_] only, so quoting it is enough. Acks rely on
        // durable commits, whatever the server's default.
        client
            .batch_execute(&format!(
                "SET search_path TO \"{}\";
                 SET synchronous_commit TO on;
                 SET statement_timeout TO {statement_ms};",
                config.schema
            ))
            .map_err(q)?;
        schema::open(&mut client, &config.schema, config.shards)?;
        let statements = Statements::prepare(&mut client).map_err(q)?;
        Ok(Self {
            client,
            map,
            statements,
        })
    }

    /// The shard map this store checked against the database.
    pub fn shard_map(&self) -> ShardMap {
        self.map
    }

    /// `true` once the connection is broken; every call will then fail.
    /// Open a new store.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Inserts timers into `shard` as its owner at `epoch`, in one statement
    /// fenced by the shard row's `FOR SHARE` lock (see the module doc). `Ok`
    /// means committed and visible to any later takeover's
    /// [`load`](Self::load); a stale epoch is [`InsertError::Fenced`] and
    /// writes nothing.
    ///
    /// Ids that already exist in the shard are skipped and reported in
    /// [`Inserted::duplicates`]; an id twice in one batch is refused.
    pub fn insert(
        &mut self,
        shard: u32,
        epoch: u64,
        timers: &[NewTimer<'_>],
    ) -> Result<Inserted, InsertError> {
        let (ids, deadlines, payloads) = self.columns(shard, timers)?;
        let rows = self
            .client
            .query(
                &self.statements.insert_fenced,
                &[
                    &shard_param(shard),
                    &epoch_param(epoch),
                    &ids,
                    &deadlines,
                    &payloads,
                ],
            )
            .map_err(QueryError::from)?;
        let Some(row) = rows.first() else {
            return Err(self.unknown_shard_insert(shard));
        };
        let current = row.try_get::<_, i64>(0).map_err(QueryError::from)?;
        if current != epoch_param(epoch) {
            return Err(fenced(shard, epoch, current).into());
        }
        let written: Vec<i64> = row.try_get(1).map_err(QueryError::from)?;
        Ok(duplicates_of(&ids, &written))
    }

    /// Inserts timers into `shard` without an epoch: for a node that does not
    /// own the shard (a schedule forwarded to the database). The row is
    /// durable once this returns `Ok`, but the owner's in-memory wheel does
    /// not know about it: the owner finds it through
    /// [`claim_due`](Self::claim_due), which reads the table, not the wheel.
    /// See the module doc of [`cluster`](super) for why this needs no fence.
    pub fn insert_unfenced(
        &mut self,
        shard: u32,
        timers: &[NewTimer<'_>],
    ) -> Result<Inserted, InsertError> {
        let (ids, deadlines, payloads) = self.columns(shard, timers)?;
        let rows = self
            .client
            .query(
                &self.statements.insert_unfenced,
                &[&shard_param(shard), &ids, &deadlines, &payloads],
            )
            .map_err(QueryError::from)?;
        let written = rows
            .iter()
            .map(|r| r.try_get::<_, i64>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(QueryError::from)?;
        Ok(duplicates_of(&ids, &written))
    }

    /// Validates a batch and splits it into the three `unnest` arrays.
    #[allow(clippy::type_complexity)]
    fn columns<'t>(
        &self,
        shard: u32,
        timers: &[NewTimer<'t>],
    ) -> Result<(Vec<i64>, Vec<i64>, Vec<&'t [u8]>), InsertError> {
        if !self.map.contains(shard) {
            return Err(self.unknown_shard_insert(shard));
        }
        if timers.len() > MAX_BATCH {
            return Err(InsertError::BatchTooLarge {
                len: timers.len(),
                max: MAX_BATCH,
            });
        }
        let mut seen = HashSet::with_capacity(timers.len());
        let mut ids = Vec::with_capacity(timers.len());
        let mut deadlines = Vec::with_capacity(timers.len());
        let mut payloads = Vec::with_capacity(timers.len());
        for t in timers {
            let invalid = |reason| InsertError::InvalidTimer { id: t.id, reason };
            let deadline = i64::try_from(t.deadline_ms)
                .map_err(|_| invalid("deadline beyond i64::MAX milliseconds"))?;
            if t.payload.len() > MAX_PAYLOAD_BYTES {
                return Err(invalid("payload larger than MAX_PAYLOAD_BYTES"));
            }
            if !seen.insert(t.id) {
                return Err(invalid("the id appears twice in the batch"));
            }
            ids.push(id_param(t.id));
            deadlines.push(deadline);
            payloads.push(t.payload);
        }
        Ok((ids, deadlines, payloads))
    }

    fn unknown_shard_insert(&self, shard: u32) -> InsertError {
        InsertError::UnknownShard {
            shard,
            shards: self.map.shards(),
        }
    }

    /// Cancels timer `id` of `shard` if it is still pending. Needs no epoch:
    /// whoever owns the shard, the row decides between this cancel and a
    /// claim (see [`Cancel`]).
    pub fn cancel(&mut self, shard: u32, id: u64) -> Result<Cancel, CancelError> {
        if !self.map.contains(shard) {
            return Err(CancelError::UnknownShard {
                shard,
                shards: self.map.shards(),
            });
        }
        let params: [&(dyn ToSql + Sync); 2] = [&shard_param(shard), &id_param(id)];
        let deleted = self
            .client
            .query_opt(&self.statements.cancel_delete, &params)
            .map_err(QueryError::from)?;
        if let Some(row) = deleted {
            let payload = row.try_get(0).map_err(QueryError::from)?;
            return Ok(Cancel::Cancelled(payload));
        }
        // A second statement, so a fresh snapshot: a claim that committed
        // while the delete waited on the row lock is visible here.
        let claimed = self
            .client
            .query_opt(&self.statements.cancel_probe, &params)
            .map_err(QueryError::from)?;
        match claimed {
            None => Ok(Cancel::NotFound),
            Some(row) => {
                let fired: i64 = row.try_get(0).map_err(QueryError::from)?;
                let fired_epoch = u64::try_from(fired)
                    .map_err(|_| CancelError::Corrupt(format!("timer {id}: epoch {fired}")))?;
                Ok(Cancel::AlreadyClaimed { fired_epoch })
            }
        }
    }

    /// Claims up to `limit` pending timers of `shard` whose deadline is at or
    /// before `up_to_ms`, earliest first, as the owner at `epoch`: they become
    /// `Claimed { fired_epoch: epoch }` and can no longer be cancelled.
    /// Deliver exactly the returned timers, then [`ack`](Self::ack) them.
    ///
    /// Rows locked by a concurrent cancel are skipped (`SKIP LOCKED`), not
    /// waited for: if the cancel fails they are claimed next time. A stale
    /// epoch is [`ClaimError::Fenced`] and claims nothing.
    pub fn claim_due(
        &mut self,
        shard: u32,
        epoch: u64,
        up_to_ms: u64,
        limit: usize,
    ) -> Result<Vec<StoredTimer>, ClaimError> {
        if !self.map.contains(shard) {
            return Err(ClaimError::UnknownShard {
                shard,
                shards: self.map.shards(),
            });
        }
        if limit == 0 || limit > MAX_BATCH {
            return Err(ClaimError::Invalid("limit must be 1..=MAX_BATCH"));
        }
        let up_to =
            i64::try_from(up_to_ms).map_err(|_| ClaimError::Invalid("up_to_ms beyond i64::MAX"))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                &self.statements.claim,
                &[&shard_param(shard), &epoch_param(epoch), &up_to, &limit],
            )
            .map_err(QueryError::from)?;
        let Some(first) = rows.first() else {
            return Err(ClaimError::UnknownShard {
                shard,
                shards: self.map.shards(),
            });
        };
        let current = first.try_get::<_, i64>(0).map_err(QueryError::from)?;
        if current != epoch_param(epoch) {
            return Err(fenced(shard, epoch, current).into());
        }
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            // One row with NULLs when nothing was due (the LEFT JOIN).
            let Some(id) = row.try_get::<_, Option<i64>>(1).map_err(QueryError::from)? else {
                continue;
            };
            let deadline: i64 = row.try_get(2).map_err(QueryError::from)?;
            let deadline_ms = u64::try_from(deadline)
                .map_err(|_| ClaimError::Corrupt(format!("timer {id}: deadline {deadline}")))?;
            claimed.push(StoredTimer {
                id: id as u64,
                deadline_ms,
                state: RowState::Claimed { fired_epoch: epoch },
                payload: row.try_get(3).map_err(QueryError::from)?,
            });
        }
        Ok(claimed)
    }

    /// Deletes claimed timers of `shard` whose delivery was acknowledged, as
    /// the owner at `epoch`. Returns how many rows were deleted; ids that are
    /// not claimed (unknown, pending, already acked) are ignored. Claims of an
    /// earlier owner may be acked too (a redelivery after takeover). A stale
    /// epoch is [`AckError::Fenced`] and deletes nothing: the new owner
    /// redelivers them.
    pub fn ack(&mut self, shard: u32, epoch: u64, ids: &[u64]) -> Result<u64, AckError> {
        if !self.map.contains(shard) {
            return Err(AckError::UnknownShard {
                shard,
                shards: self.map.shards(),
            });
        }
        if ids.len() > MAX_BATCH {
            return Err(AckError::BatchTooLarge {
                len: ids.len(),
                max: MAX_BATCH,
            });
        }
        let ids: Vec<i64> = ids.iter().map(|&id| id_param(id)).collect();
        let row = self
            .client
            .query_opt(
                &self.statements.ack,
                &[&shard_param(shard), &epoch_param(epoch), &ids],
            )
            .map_err(QueryError::from)?;
        let Some(row) = row else {
            return Err(AckError::UnknownShard {
                shard,
                shards: self.map.shards(),
            });
        };
        let current = row.try_get::<_, i64>(0).map_err(QueryError::from)?;
        if current != epoch_param(epoch) {
            return Err(fenced(shard, epoch, current).into());
        }
        let deleted: i64 = row.try_get(1).map_err(QueryError::from)?;
        Ok(u64::try_from(deleted).unwrap_or(0))
    }

    /// Streams the pending and claimed timers of `shard` with
    /// `from_ms <= deadline_ms < to_ms`, in deadline order (ties in a fixed
    /// order: by the stored `bigint` id), from
    /// one snapshot. A new owner calls it after [`acquire`](Self::acquire)
    /// returned: everything committed before the epoch bump is in it,
    /// including timers claimed but never acked by the previous owner, which
    /// it must redeliver (at-least-once).
    ///
    /// Rows arrive as the server sends them; nothing is buffered beyond the
    /// connection's read buffer.
    pub fn load(&mut self, shard: u32, from_ms: u64, to_ms: u64) -> Result<Load<'_>, LoadError> {
        if !self.map.contains(shard) {
            return Err(LoadError::UnknownShard {
                shard,
                shards: self.map.shards(),
            });
        }
        let range = LoadError::InvalidRange { from_ms, to_ms };
        let (Ok(from), Ok(to)) = (i64::try_from(from_ms), i64::try_from(to_ms)) else {
            return Err(range);
        };
        if from > to {
            return Err(range);
        }
        let shard = shard_param(shard);
        let params: [&dyn ToSql; 3] = [&shard, &from, &to];
        let rows = self
            .client
            .query_raw(&self.statements.load, params)
            .map_err(QueryError::from)?;
        Ok(Load { rows, done: false })
    }
}

/// The rows of one [`PgStore::load`], streamed in deadline order.
pub struct Load<'a> {
    rows: RowIter<'a>,
    done: bool,
}

impl std::fmt::Debug for Load<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Load")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Iterator for Load<'_> {
    type Item = Result<StoredTimer, LoadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = match self.rows.next() {
            Ok(Some(row)) => decode_loaded(&row),
            Ok(None) => {
                self.done = true;
                return None;
            }
            Err(e) => Err(QueryError::from(e).into()),
        };
        // After an error the stream is unusable; end it.
        self.done = item.is_err();
        Some(item)
    }
}

fn decode_loaded(row: &Row) -> Result<StoredTimer, LoadError> {
    let q = |e: postgres::Error| LoadError::Query(QueryError::from(e));
    let id: i64 = row.try_get(0).map_err(q)?;
    let deadline: i64 = row.try_get(1).map_err(q)?;
    let state: i16 = row.try_get(2).map_err(q)?;
    let fired: Option<i64> = row.try_get(3).map_err(q)?;
    let corrupt = |what: &str| LoadError::Corrupt(format!("timer {}: {what}", id as u64));
    let deadline_ms = u64::try_from(deadline).map_err(|_| corrupt("negative deadline"))?;
    let state = match (state, fired) {
        (0, None) => RowState::Pending,
        (1, Some(e)) => RowState::Claimed {
            fired_epoch: u64::try_from(e).map_err(|_| corrupt("negative epoch"))?,
        },
        _ => return Err(corrupt("state and fired_epoch disagree")),
    };
    Ok(StoredTimer {
        id: id as u64,
        deadline_ms,
        state,
        payload: row.try_get(4).map_err(q)?,
    })
}

/// Ids of `batch` that are not in `written`, in batch order.
fn duplicates_of(batch: &[i64], written: &[i64]) -> Inserted {
    let written_set: HashSet<i64> = written.iter().copied().collect();
    Inserted {
        inserted: written.len(),
        duplicates: batch
            .iter()
            .filter(|id| !written_set.contains(id))
            .map(|&id| id as u64)
            .collect(),
    }
}

pub(super) fn fenced(shard: u32, epoch: u64, current: i64) -> Fenced {
    Fenced {
        shard,
        epoch,
        // Epochs are CHECKed >= 0 in the schema.
        current: u64::try_from(current).unwrap_or(0),
    }
}

/// Shards are `int` in the schema; `shard < MAX_SHARDS` is checked first.
pub(super) fn shard_param(shard: u32) -> i32 {
    i32::try_from(shard).unwrap_or(i32::MAX)
}

/// Ids are `bigint`: a `u64` id is stored bit-for-bit (ids above `i64::MAX`
/// read as negative in SQL and come back unchanged).
fn id_param(id: u64) -> i64 {
    id as i64
}

/// Epochs are `bigint >= 0`; an epoch above `i64::MAX` was never issued, and
/// its bit-cast (negative) matches no shard, so it is fenced.
pub(super) fn epoch_param(epoch: u64) -> i64 {
    epoch as i64
}
