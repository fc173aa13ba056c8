//! [`PgStore`]: one connection to the shared timer table, and the fenced
//! statements that write it.
//!
//! Each write is **one SQL statement** in its own implicit transaction
//! (the node's, from `node/sql.rs`, called with one shard: there is one SQL
//! text per operation in the crate; [`claim_due`] reads the due rows first,
//! then claims them by id as the node does); an `Ok` means PostgreSQL
//! committed it (with `synchronous_commit = on`, which
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
use postgres::{Client, Row, RowIter};

use super::config::StoreConfig;
use super::error::{
    AckError, CancelError, ClaimError, Fenced, InsertError, LoadError, OpenError, QueryError,
};
use super::node::sql::NodeDb;
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
    /// already exists in the shard (pending, claimed and not yet acked, or
    /// fired and acked with this very deadline and payload: a tombstone of
    /// another timer is replaced), in batch order. After an in-doubt insert
    /// is retried, these may be the caller's own rows.
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
    /// and is being delivered, or was delivered and acked (its tombstone,
    /// kept for the node's `tombstone_ttl`).
    AlreadyClaimed {
        /// The epoch of the owner that claimed it.
        fired_epoch: u64,
    },
    /// No such timer: never inserted, already cancelled, or fired and acked
    /// longer ago than the tombstone retention (reaped).
    NotFound,
}

/// How the fenced statements lock the shard row. A test seam: everything
/// but the fencing race test's negative control uses [`FenceMode::LOCKED`].
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceMode {
    /// Take the `FOR SHARE` lock on the shard rows (the fence). `false`
    /// leaves only the epoch comparison, which is known to be unsafe.
    pub lock: bool,
    /// Sleep this long inside each fenced statement, after its snapshot
    /// and before the lock, to widen the race (0 in production).
    pub pause_ms: u32,
}

impl FenceMode {
    /// The production fence: locked, no pause.
    pub const LOCKED: Self = Self {
        lock: true,
        pause_ms: 0,
    };
}

impl Default for FenceMode {
    fn default() -> Self {
        Self::LOCKED
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
    pub(super) db: NodeDb,
    pub(super) map: ShardMap,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("shards", &self.map.shards())
            .field("closed", &self.db.is_closed())
            .finish_non_exhaustive()
    }
}

fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Validates `config`, connects, sets the session up and checks (or
/// creates, or migrates) the schema: what every connection does first.
pub(super) fn connect(config: &StoreConfig) -> Result<(Client, ShardMap), OpenError> {
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
    Ok((client, map))
}

impl PgStore {
    /// Connects, checks (or creates, or migrates) the schema, and prepares
    /// the statements.
    pub fn open(config: &StoreConfig) -> Result<Self, OpenError> {
        Self::open_with_fence(config, FenceMode::LOCKED)
    }

    /// [`open`](Self::open) with the fenced statements built as `mode`
    /// says: the fencing race test's seam. Never use it outside tests.
    #[doc(hidden)]
    pub fn open_with_fence(config: &StoreConfig, mode: FenceMode) -> Result<Self, OpenError> {
        let db = NodeDb::open_with(config, mode)?;
        let map = db.map;
        Ok(Self { db, map })
    }

    /// The shard map this store checked against the database.
    pub fn shard_map(&self) -> ShardMap {
        self.map
    }

    /// `true` once the connection is broken; every call will then fail.
    /// Open a new store.
    pub fn is_closed(&self) -> bool {
        self.db.is_closed()
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
        let shards = vec![shard_param(shard); ids.len()];
        let epochs = vec![epoch_param(epoch); ids.len()];
        let (written, current) = self.db.insert_fenced(
            &[shard_param(shard)],
            (&shards, &ids, &deadlines, &payloads),
            &epochs,
        )?;
        match current.first() {
            None => Err(self.unknown_shard_insert(shard)),
            Some(&(_, now)) if now != epoch => Err(fenced(shard, epoch, now).into()),
            Some(_) => Ok(duplicates_of(&ids, &written)),
        }
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
        let shards = vec![shard_param(shard); ids.len()];
        let no_reminders = vec!["{}"; ids.len()];
        let written: Vec<i64> = self
            .db
            .insert(&shards, &ids, &deadlines, &payloads, &no_reminders)?
            .into_iter()
            .map(|id| id as i64)
            .collect();
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
        let (deleted, fired) = self.db.cancel(&[shard_param(shard)], &[id_param(id)])?;
        if let Some((_, payload)) = deleted.into_iter().next() {
            return Ok(Cancel::Cancelled(payload));
        }
        Ok(match fired.first() {
            None => Cancel::NotFound,
            Some(&(_, fired_epoch, _)) => Cancel::AlreadyClaimed { fired_epoch },
        })
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
        if i64::try_from(up_to_ms).is_err() {
            return Err(ClaimError::Invalid("up_to_ms beyond i64::MAX"));
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // The node's two steps: read the due rows, then claim them by id
        // (fenced). A row cancelled or claimed in between is skipped by the
        // claim, which re-checks each row under its lock.
        let mut due = Vec::new();
        self.db
            .sweep(&[shard], up_to_ms, limit, &mut |row| due.push(row))?;
        let items: Vec<(u32, u64, u64)> = due.iter().map(|t| (shard, epoch, t.id)).collect();
        let redeliver = vec![false; items.len()];
        let (ids, current, _) = self
            .db
            .claim_in(&items, &redeliver, up_to_ms, Some(shard))?;
        match current.first() {
            None => {
                return Err(ClaimError::UnknownShard {
                    shard,
                    shards: self.map.shards(),
                });
            }
            Some(&(_, now)) if now != epoch => {
                return Err(fenced(shard, epoch, now).into());
            }
            Some(_) => {}
        }
        let claimed: HashSet<u64> = ids.into_iter().map(|(id, _)| id).collect();
        Ok(due
            .into_iter()
            .filter(|t| claimed.contains(&t.id))
            .map(|t| StoredTimer {
                id: t.id,
                deadline_ms: t.deadline_ms,
                state: RowState::Claimed { fired_epoch: epoch },
                payload: t.payload,
            })
            .collect())
    }

    /// Ends claimed timers of `shard` whose delivery was acknowledged, as
    /// the owner at `epoch`: each row becomes a tombstone (state 2,
    /// `ended_at_ms` = the database's now), invisible to claims and loads,
    /// still telling a late [`cancel`](Self::cancel) that the timer fired,
    /// until a node's reaper deletes it. Returns how many rows were ended;
    /// ids that are not claimed (unknown, pending, already acked) are
    /// ignored. Claims of an earlier owner may be acked too (a redelivery
    /// after takeover). A stale epoch is [`AckError::Fenced`] and changes
    /// nothing: the new owner redelivers them.
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
        let items: Vec<(u32, u64, u64)> = ids.iter().map(|&id| (shard, epoch, id)).collect();
        let (acked, current) = self.db.ack_in(&items, Some(shard))?;
        match current.first() {
            None => Err(AckError::UnknownShard {
                shard,
                shards: self.map.shards(),
            }),
            Some(&(_, now)) if now != epoch => Err(fenced(shard, epoch, now).into()),
            Some(_) => Ok(acked),
        }
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
        let rows = self.db.load_shard(shard, from, to)?;
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

pub(super) fn fenced(shard: u32, epoch: u64, current: u64) -> Fenced {
    Fenced {
        shard,
        epoch,
        current,
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
