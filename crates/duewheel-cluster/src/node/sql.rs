//! The statements: every SQL text the crate runs against the timer and
//! shard tables, one per operation, prepared once per connection.
//!
//! They are the node's, batched: each takes parallel arrays (`unnest`), so a
//! commit carries up to a batch of rows whatever shards they fall in (with
//! 1024 shards a batch of 1000 schedules touches ~630 of them; one statement
//! per shard would spend a commit per row). [`PgStore`](crate::PgStore)'s per-shard methods
//! are thin wrappers that call these with one shard, so the fencing race
//! test (`tests/pg_store.rs`) runs the very statements the node runs. Each
//! statement is one implicit transaction: `Ok` means committed.
//!
//! The fenced ones (claim, ack, and the store's fenced insert) take one
//! `FOR SHARE` lock on *every* shard row the statement touches, in the same
//! statement, and write a row only where the shard's epoch is the one the
//! caller holds (see `crate::store`'s module doc for why the lock, not the
//! comparison alone, makes the fence). [`FenceMode`] is the test seam that
//! can drop the lock, so a test can show that the race then loses writes.
//!
//! Rows in state 2 (tombstones: fired and acked) are invisible to every
//! statement here except the cancel's probe (which answers "already fired"
//! from them), the insert (which replaces a tombstone of a *different* timer
//! under a reused id), `same_rows`, and the reaper (which deletes old ones).
//! A tombstone's deadline is stored mirrored, `-1 - deadline_ms` (< 0), so
//! tombstones sort before every live row in the `(shard_id, deadline_ms)`
//! index: a scan for due rows starts at `deadline_ms >= 0` and never walks
//! the retention's worth of fired rows (it did, every sweep, with the
//! deadline left as it was), and the reaper walks only them. Every scan by
//! deadline therefore bounds it below by 0.

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, Row, RowIter, Statement};

use crate::config::StoreConfig;
use crate::error::{OpenError, QueryError};
use crate::shard_map::ShardMap;
use crate::store::{FenceMode, epoch_param, shard_param};

/// A row read back for the wheel.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) shard: u32,
    pub(crate) id: u64,
    pub(crate) deadline_ms: u64,
    pub(crate) payload: Vec<u8>,
    /// Reminder times not yet delivered, ascending (UTC ms).
    pub(crate) reminders_ms: Vec<u64>,
    /// Claimed (an earlier delivery never acked), not pending.
    pub(crate) claimed: bool,
}

/// What a fenced statement found for each shard it touched.
#[derive(Debug, Default)]
pub(super) struct Fence {
    /// Shards whose epoch is no longer the one the node sent: lost.
    pub(super) fenced: Vec<u32>,
}

/// What a claim returned.
#[derive(Debug, Default)]
pub(super) struct Claimed {
    /// Claimed ids and the row's attempt count after this claim.
    pub(super) ids: Vec<(u64, u32)>,
    pub(super) fence: Fence,
}

/// Every prepared statement of one connection.
pub(crate) struct Statements {
    insert: Statement,
    insert_fenced: Statement,
    same_rows: Statement,
    cancel: Statement,
    claimed_of: Statement,
    claim: Statement,
    ack: Statement,
    renew: Statement,
    acquire_some: Statement,
    next_takeable: Statement,
    release: Statement,
    heartbeat: Statement,
    leave: Statement,
    load_pending: Statement,
    load_first: Statement,
    load_rest: Statement,
    sweep: Statement,
    overdue: Statement,
    notify: Statement,
    fetch: Statement,
    reap: Statement,
    load_shard: Statement,
    acquire: Statement,
    owner_of: Statement,
}

/// Locks every touched shard row and reads its epoch (the fence).
///
/// Every statement here takes its row locks in one global order, shard
/// rows first and by `shard_id`, then timer rows by `(shard_id, timer_id)`
/// (the node sorts the arrays it sends; the locking subqueries sort before
/// they lock, and the claim's and the ack's `UPDATE`s are driven by a
/// sorted subquery, which the planner keeps whole, through a nested loop),
/// so two of them never wait on each other in a cycle. That order is the
/// plan's, not a promise of SQL: a deadlock that happens anyway
/// (PostgreSQL picks a victim) is refused, changed nothing, and is retried
/// by the caller (see [`is_transient`]).
fn fence(mode: FenceMode) -> String {
    // The pause (tests only) sits between the statement's snapshot and the
    // lock: without the lock, the epoch it reads is the snapshot's.
    let pause = match mode.pause_ms {
        0 => String::new(),
        ms => format!(", pg_sleep({})", f64::from(ms) / 1000.0),
    };
    let lock = if mode.lock {
        " FOR SHARE OF shards"
    } else {
        ""
    };
    format!(
        "f AS MATERIALIZED (SELECT shard_id, epoch FROM shards{pause}
                       WHERE shard_id = ANY($1::int[]) ORDER BY shard_id{lock})"
    )
}

/// The database's clock in UTC milliseconds (the statement's start): when
/// a tombstone was written, and how old it is.
const NOW_MS: &str = "(extract(epoch FROM now()) * 1000)::bigint";

/// What an insert does with an id already stored: nothing (the id is
/// reported as not written), except over a tombstone of a *different* timer
/// (another deadline or payload), which it replaces: a new timer under a
/// reused id. A tombstone of this very timer stays, so a schedule retried
/// after its first try committed, fired and was acked is not fired again
/// (the writer then finds it with `same_rows` and answers `Stored`).
const REPLACE: &str = "ON CONFLICT (shard_id, timer_id) DO UPDATE
                 SET deadline_ms = excluded.deadline_ms, payload = excluded.payload,
                   state = 0, fired_epoch = NULL, attempt = 0, ended_at_ms = NULL,
                   reminders_ms = excluded.reminders_ms
                 WHERE timers.state = 2
                   AND (-1 - timers.deadline_ms, timers.payload)
                     IS DISTINCT FROM (excluded.deadline_ms, excluded.payload)";

/// The shard rows `owner` ($3) still holds at the epochs sent (`$1`
/// shards, `$2` epochs), locked in shard order: what renew and release
/// update.
const HELD: &str = "(SELECT sh.shard_id FROM shards sh
                      JOIN unnest($1::int[], $2::bigint[]) AS x(id, e)
                        ON sh.shard_id = x.id AND sh.epoch = x.e
                      WHERE sh.owner = $3
                      ORDER BY sh.shard_id FOR NO KEY UPDATE OF sh)";

impl Statements {
    /// Prepares every statement; `mode` is [`FenceMode::LOCKED`] outside tests.
    pub(crate) fn prepare(c: &mut Client, mode: FenceMode) -> Result<Self, postgres::Error> {
        #[allow(non_snake_case)]
        let FENCE = fence(mode);
        Ok(Self {
            // Unfenced on purpose: firing never trusts a wheel, it claims
            // from the table (see the node's module doc). A tombstone of a
            // different timer under the same id is replaced (see REPLACE).
            insert: c.prepare(&format!(
                "INSERT INTO timers (shard_id, timer_id, deadline_ms, payload, reminders_ms)
                 SELECT t.s, t.id, t.d, t.p, t.r::bigint[]
                 FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bytea[], $5::text[])
                   AS t(s, id, d, p, r)
                 {REPLACE} RETURNING timer_id"
            ))?,
            // The store's fenced insert: a row goes in only where its
            // shard's epoch ($6) is the current one, under the fence's lock.
            insert_fenced: c.prepare(&format!(
                "WITH {FENCE},
                 ins AS (INSERT INTO timers (shard_id, timer_id, deadline_ms, payload)
                   SELECT t.s, t.id, t.d, t.p
                   FROM unnest($2::int[], $3::bigint[], $4::bigint[], $5::bytea[], $6::bigint[])
                     AS t(s, id, d, p, e), f
                   WHERE f.shard_id = t.s AND f.epoch = t.e
                   {REPLACE} RETURNING timer_id)
                 SELECT 0, f.shard_id::bigint, f.epoch FROM f
                 UNION ALL SELECT 1, ins.timer_id, 0 FROM ins"
            ))?,
            same_rows: c.prepare(
                "SELECT t.timer_id FROM timers t
                 JOIN unnest($1::int[], $2::bigint[], $3::bigint[], $4::bytea[]) AS u(s, id, d, p)
                   ON t.shard_id = u.s AND t.timer_id = u.id
                 WHERE CASE WHEN t.state = 2 THEN -1 - t.deadline_ms ELSE t.deadline_ms END = u.d
                   AND t.payload = u.p",
            )?,
            // Locks first, in (shard, id) order (see FENCE), then deletes.
            cancel: c.prepare(
                "WITH l AS (SELECT t.shard_id, t.timer_id FROM timers t
                   JOIN unnest($1::int[], $2::bigint[]) AS u(s, id)
                     ON t.shard_id = u.s AND t.timer_id = u.id
                   WHERE t.state = 0
                   ORDER BY t.shard_id, t.timer_id FOR UPDATE OF t)
                 DELETE FROM timers t USING l
                 WHERE t.shard_id = l.shard_id AND t.timer_id = l.timer_id
                 RETURNING t.timer_id, t.payload",
            )?,
            // Claimed (firing) or a tombstone (fired and acked): either way
            // the fire won.
            claimed_of: c.prepare(
                "SELECT t.timer_id, t.fired_epoch, t.state FROM timers t
                 JOIN unnest($1::int[], $2::bigint[]) AS u(s, id)
                   ON t.shard_id = u.s AND t.timer_id = u.id
                 WHERE t.state IN (1, 2)",
            )?,
            // A pending row is claimed once due; a claimed one only when the
            // node redelivers it (`x.r`: loaded as claimed at takeover, or
            // unacked past the ack timeout), attempt + 1. A first fire never
            // takes a claimed row: it may be a stale copy of one just
            // delivered and acked, whose delete is not committed yet.
            //
            // One `UPDATE` whose conditions are on the row it updates (perf,
            // #16: a locking `SELECT … FOR UPDATE` and then the update cost
            // a third more database time per row). Correct under races
            // because PostgreSQL re-checks an `UPDATE`'s own conditions on
            // the row's newest version after waiting for its lock (a row
            // cancelled meanwhile is gone, one rescheduled is checked at its
            // new deadline, one claimed is left to redeliveries). `x` is
            // sorted, and an ordered subquery is not flattened, so the nested
            // loop takes the row locks in `(shard_id, timer_id)` order (see
            // `fence`); `x.epoch` carries the fenced epoch to the update.
            claim: c.prepare(&format!(
                "WITH {FENCE},
                 u AS (UPDATE timers t SET state = 1, fired_epoch = x.epoch, attempt = t.attempt + 1
                   FROM (SELECT x.s, x.id, x.r, f.epoch
                     FROM unnest($2::int[], $3::bigint[], $4::bigint[], $6::bool[]) AS x(s, id, e, r)
                     JOIN f ON f.shard_id = x.s AND f.epoch = x.e
                     ORDER BY x.s, x.id) AS x
                   WHERE t.shard_id = x.s AND t.timer_id = x.id
                     AND ((t.state = 0 AND t.deadline_ms <= $5) OR (t.state = 1 AND x.r))
                   RETURNING t.timer_id, t.attempt)
                 SELECT 0, f.shard_id::bigint, f.epoch FROM f
                 UNION ALL SELECT 1, u.timer_id, u.attempt::bigint FROM u"
            ))?,
            // Like the claim: one `UPDATE`, its condition on the row itself,
            // row locks in key order.
            ack: c.prepare(&format!(
                "WITH {FENCE},
                 d AS (UPDATE timers t SET state = 2, ended_at_ms = {NOW_MS},
                   deadline_ms = -1 - t.deadline_ms
                   FROM (SELECT x.s, x.id
                     FROM unnest($2::int[], $3::bigint[], $4::bigint[]) AS x(s, id, e)
                     JOIN f ON f.shard_id = x.s AND f.epoch = x.e
                     ORDER BY x.s, x.id) AS x
                   WHERE t.shard_id = x.s AND t.timer_id = x.id AND t.state = 1
                   RETURNING 1)
                 SELECT f.shard_id, f.epoch, (SELECT count(*) FROM d) FROM f"
            ))?,
            renew: c.prepare(&format!(
                "UPDATE shards s SET lease_expires_at = now() + $4::bigint * interval '1 millisecond'
                 FROM {HELD} c WHERE s.shard_id = c.shard_id RETURNING s.shard_id"
            ))?,
            // The backstop sweeper and the balancer in one: free shards, our
            // own from an earlier incarnation, and shards whose lease expired
            // more than `grace` ago, skipping rows another node is taking.
            // The epoch is bumped before anything of the shard is fired.
            acquire_some: c.prepare(
                "UPDATE shards s SET owner = $1, epoch = s.epoch + 1,
                   lease_expires_at = now() + $2::bigint * interval '1 millisecond'
                 FROM (SELECT shard_id FROM shards
                       WHERE NOT (shard_id = ANY($3::int[]))
                         AND (owner IS NULL OR owner = $1
                              OR lease_expires_at < now() - $4::bigint * interval '1 millisecond')
                       ORDER BY CASE WHEN owner = $1 THEN 0 WHEN owner IS NULL THEN 1 ELSE 2 END,
                                shard_id
                       LIMIT $5
                       FOR UPDATE SKIP LOCKED) c
                 WHERE s.shard_id = c.shard_id
                 RETURNING s.shard_id, s.epoch",
            )?,
            // Milliseconds (database clock) until another owner's
            // earliest lease is past its grace ($2), so a node short of
            // its share can be there at that moment rather than at its
            // next round; NULL if no other node holds a shard.
            next_takeable: c.prepare(
                "SELECT (extract(epoch FROM min(lease_expires_at) - now()) * 1000)::bigint + $2
                 FROM shards WHERE owner IS NOT NULL AND owner <> $1",
            )?,
            release: c.prepare(&format!(
                "UPDATE shards s SET owner = NULL, epoch = s.epoch + 1,
                   lease_expires_at = '-infinity'
                 FROM {HELD} c WHERE s.shard_id = c.shard_id RETURNING s.shard_id"
            ))?,
            // The upsert runs whether or not the query reads it (a
            // data-modifying CTE always runs to completion); the count sees
            // the table as it was, so it counts the others and adds one.
            heartbeat: c.prepare(
                "WITH hb AS (INSERT INTO nodes (node_id, seen_at) VALUES ($1, now())
                   ON CONFLICT (node_id) DO UPDATE SET seen_at = now())
                 SELECT 1 + count(*) FROM nodes
                 WHERE node_id <> $1 AND seen_at > now() - $2::bigint * interval '1 millisecond'",
            )?,
            leave: c.prepare("DELETE FROM nodes WHERE node_id = $1")?,
            load_pending: c.prepare(
                "SELECT shard_id, timer_id, deadline_ms, payload, reminders_ms FROM timers
                 WHERE shard_id = ANY($1::int[]) AND state = 0
                   AND deadline_ms >= $2 AND deadline_ms < $3",
            )?,
            // A takeover's load, nearest first (perf, #16): the rows due
            // before $2, pending or claimed, through the deadline index (a
            // few rows: firing resumes after this one), then one scan for
            // the rest: pending ones up to the horizon's end $3 and claimed
            // ones at any deadline (a claim needs the row due, so these are
            // rare: a claiming node's clock ahead of ours). `state = 1` is
            // not indexed; the old separate claimed query scanned the
            // shards before anything could fire.
            load_first: c.prepare(
                "SELECT shard_id, timer_id, deadline_ms, payload,
                   CASE WHEN state = 0 THEN reminders_ms ELSE '{}' END, state FROM timers
                 WHERE shard_id = ANY($1::int[]) AND deadline_ms >= 0 AND deadline_ms < $2
                   AND state IN (0, 1)",
            )?,
            load_rest: c.prepare(
                "SELECT shard_id, timer_id, deadline_ms, payload,
                   CASE WHEN state = 0 THEN reminders_ms ELSE '{}' END, state FROM timers
                 WHERE shard_id = ANY($1::int[]) AND deadline_ms >= $2
                   AND (state = 1 OR (state = 0 AND deadline_ms < $3))",
            )?,
            // The earliest due rows of each shard (perf, #16): one ordered
            // index range per shard, `$3` rows at most. Ordering all shards'
            // due rows together sorted every due row: during a burst of
            // 200k due timers each sweep seq-scanned every partition
            // (~140 ms, two parallel workers), back to back on every node.
            sweep: c.prepare(
                "SELECT t.shard_id, t.timer_id, t.deadline_ms, t.payload, t.reminders_ms
                 FROM unnest($1::int[]) AS s(id)
                 CROSS JOIN LATERAL (SELECT shard_id, timer_id, deadline_ms, payload, reminders_ms FROM timers
                   WHERE shard_id = s.id AND state = 0
                     AND deadline_ms >= 0 AND deadline_ms <= $2
                   ORDER BY deadline_ms LIMIT $3) t",
            )?,
            // One notification per chunk of ids (a payload holds < 8000 bytes).
            notify: c.prepare("SELECT pg_notify($1, x) FROM unnest($2::text[]) AS x")?,
            fetch: c.prepare(
                "SELECT t.shard_id, t.timer_id, t.deadline_ms, t.payload,
                   CASE WHEN t.state = 0 THEN t.reminders_ms ELSE '{}' END
                 FROM timers t
                 JOIN unnest($1::int[], $2::bigint[]) AS u(s, id)
                   ON t.shard_id = u.s AND t.timer_id = u.id
                 WHERE t.state = $3",
            )?,
            overdue: c.prepare(
                "SELECT count(*) FROM timers
                 WHERE shard_id = ANY($1::int[]) AND state = 0
                   AND deadline_ms >= 0 AND deadline_ms < $2",
            )?,
            // Tombstones older than the retention ($2 ms, database clock),
            // at most $3 of them. Re-checked under the row lock: a tombstone
            // replaced by a new timer meanwhile is not one any more.
            reap: c.prepare(&format!(
                "DELETE FROM timers t USING (SELECT shard_id, timer_id FROM timers
                   WHERE shard_id = ANY($1::int[]) AND state = 2 AND deadline_ms < 0
                     AND ended_at_ms < {NOW_MS} - $2::bigint
                   LIMIT $3) old
                 WHERE t.shard_id = old.shard_id AND t.timer_id = old.timer_id AND t.state = 2"
            ))?,
            // The store's `load`: one shard's live rows, pending and
            // claimed, in deadline order.
            load_shard: c.prepare(
                "SELECT timer_id, deadline_ms, state, fired_epoch, payload FROM timers
                 WHERE shard_id = $1 AND state < 2 AND deadline_ms >= $2 AND deadline_ms < $3
                 ORDER BY deadline_ms, timer_id",
            )?,
            // One shard, by name (the store's `acquire`, and a node taking
            // back a shard after an in-doubt fenced write). Lease expiry is
            // judged by the database's clock alone.
            acquire: c.prepare(
                "UPDATE shards SET owner = $2, epoch = epoch + 1,
                   lease_expires_at = now() + $3::bigint * interval '1 millisecond'
                 WHERE shard_id = $1
                   AND (owner IS NULL OR owner = $2 OR lease_expires_at < now())
                 RETURNING epoch",
            )?,
            owner_of: c.prepare(
                "SELECT owner FROM shards WHERE shard_id = $1 AND lease_expires_at >= now()",
            )?,
        })
    }
}

/// One connection and its prepared statements: a node thread's, or the
/// inside of a [`PgStore`](crate::PgStore).
pub(crate) struct NodeDb {
    pub(crate) client: Client,
    pub(crate) map: ShardMap,
    st: Statements,
    ft: FeatureStatements,
}

/// A time or span in milliseconds as a `bigint` parameter (saturating).
fn ms_param(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn shards_param(shards: &[u32]) -> Vec<i32> {
    shards.iter().map(|&s| shard_param(s)).collect()
}

/// Epochs are `bigint >= 0` in the schema.
fn epoch_of(e: i64) -> u64 {
    u64::try_from(e).unwrap_or(0)
}

fn shard_of_row(s: i64) -> u32 {
    u32::try_from(s).unwrap_or(u32::MAX)
}

impl NodeDb {
    /// Connects and checks the schema (see [`PgStore::open`]).
    pub(crate) fn open(config: &StoreConfig) -> Result<Self, OpenError> {
        Self::connect(config, FenceMode::LOCKED, false)
    }

    /// [`open`](Self::open), for the threads that send rows by the
    /// thousand (writers, gate, acker): every statement runs its generic
    /// plan, planned once per connection.
    ///
    /// Why (perf, #16): with a 1000-element array PostgreSQL's custom plan
    /// for a cancel (or an ack) hash-joins the array against a sequential
    /// scan of every partition (~400 ms at 200k rows, against ~25 ms for
    /// the generic plan's index probes), and each custom plan costs ~2-3 ms
    /// of planning over the 16 partitions. A connection ran its first five
    /// executions that way before the plan cache settled, so every extra
    /// node (and every reconnect) paid it again: cancels through 3 nodes ran
    /// at 35-60% of one node's rate. The pager keeps custom plans: its
    /// sweep's `deadline_ms <= now` is selective only with the value known.
    pub(crate) fn open_for_rows(config: &StoreConfig) -> Result<Self, OpenError> {
        Self::connect(config, FenceMode::LOCKED, true)
    }

    /// [`open`](Self::open) with the fence built as `mode` says (tests).
    pub(crate) fn open_with(config: &StoreConfig, mode: FenceMode) -> Result<Self, OpenError> {
        Self::connect(config, mode, false)
    }

    fn connect(config: &StoreConfig, mode: FenceMode, generic: bool) -> Result<Self, OpenError> {
        let (mut client, map) = crate::store::connect(config)?;
        if generic {
            client
                .batch_execute("SET plan_cache_mode = force_generic_plan")
                .map_err(|e| OpenError::Schema(QueryError::from(e)))?;
        }
        let st = Statements::prepare(&mut client, mode)
            .map_err(|e| OpenError::Schema(QueryError::from(e)))?;
        let ft = FeatureStatements::prepare(&mut client, mode)
            .map_err(|e| OpenError::Schema(QueryError::from(e)))?;
        Ok(Self {
            client,
            map,
            st,
            ft,
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Inserts rows (shard, id, deadline, payload) each fenced by its
    /// shard's epoch (`epochs`), locking the `touched` shard rows; returns
    /// the ids written and the current epoch of each touched shard.
    #[allow(clippy::type_complexity)]
    pub(crate) fn insert_fenced(
        &mut self,
        touched: &[i32],
        rows: (&[i32], &[i64], &[i64], &[&[u8]]),
        epochs: &[i64],
    ) -> Result<(Vec<i64>, Vec<(u32, u64)>), QueryError> {
        let (shards, ids, deadlines, payloads) = rows;
        let rows = self.client.query(
            &self.st.insert_fenced,
            &[&touched, &shards, &ids, &deadlines, &payloads, &epochs],
        )?;
        let (mut written, mut current) = (Vec::new(), Vec::new());
        for row in &rows {
            let kind: i32 = row.try_get(0)?;
            let a: i64 = row.try_get(1)?;
            if kind == 0 {
                current.push((shard_of_row(a), epoch_of(row.try_get(2)?)));
            } else {
                written.push(a);
            }
        }
        Ok((written, current))
    }

    /// The connection, for the session's statements (`session.rs`).
    pub(super) fn client(&mut self) -> &mut postgres::Client {
        &mut self.client
    }

    /// Inserts rows (shard, id, deadline, payload); returns the ids written.
    /// Ids that existed already are skipped.
    pub(crate) fn insert(
        &mut self,
        shards: &[i32],
        ids: &[i64],
        deadlines: &[i64],
        payloads: &[&[u8]],
        reminders: &[&str],
    ) -> Result<Vec<u64>, QueryError> {
        let rows = self.client.query(
            &self.st.insert,
            &[&shards, &ids, &deadlines, &payloads, &reminders],
        )?;
        rows.iter()
            .map(|r| Ok(r.try_get::<_, i64>(0)? as u64))
            .collect()
    }

    /// Of the given rows, the ids stored with exactly this deadline and
    /// payload (resolving an insert that was in doubt).
    pub(crate) fn same_rows(
        &mut self,
        shards: &[i32],
        ids: &[i64],
        deadlines: &[i64],
        payloads: &[&[u8]],
    ) -> Result<Vec<u64>, QueryError> {
        let rows = self
            .client
            .query(&self.st.same_rows, &[&shards, &ids, &deadlines, &payloads])?;
        rows.iter()
            .map(|r| Ok(r.try_get::<_, i64>(0)? as u64))
            .collect()
    }

    /// Deletes the pending rows among `ids`; returns the deleted ids with
    /// their payloads, then the rest that fired: `(id, fired_epoch, acked)`
    /// (a fresh snapshot, so a claim that won the row lock is seen).
    #[allow(clippy::type_complexity)]
    pub(crate) fn cancel(
        &mut self,
        shards: &[i32],
        ids: &[i64],
    ) -> Result<(Vec<(u64, Vec<u8>)>, Vec<(u64, u64, bool)>), QueryError> {
        let deleted = self
            .client
            .query(&self.st.cancel, &[&shards, &ids])?
            .iter()
            .map(|r| Ok((r.try_get::<_, i64>(0)? as u64, r.try_get(1)?)))
            .collect::<Result<Vec<_>, postgres::Error>>()?;
        if deleted.len() == ids.len() {
            return Ok((deleted, Vec::new()));
        }
        let fired = self
            .client
            .query(&self.st.claimed_of, &[&shards, &ids])?
            .iter()
            .map(|r| {
                let epoch: Option<i64> = r.try_get(1)?;
                let state: i16 = r.try_get(2)?;
                Ok((
                    r.try_get::<_, i64>(0)? as u64,
                    epoch_of(epoch.unwrap_or(0)),
                    state == 2,
                ))
            })
            .collect::<Result<Vec<_>, postgres::Error>>()?;
        Ok((deleted, fired))
    }

    /// Claims `(shard, epoch, id)` rows, fenced: each due pending row, and
    /// each claimed one marked in `redeliver`, of a shard whose epoch is
    /// still the given.
    pub(super) fn claim(
        &mut self,
        items: &[(u32, u64, u64)],
        redeliver: &[bool],
        now_ms: u64,
    ) -> Result<Claimed, QueryError> {
        let (ids, current, items) = self.claim_in(items, redeliver, now_ms, None)?;
        Ok(Claimed {
            ids,
            fence: fence_of(&items, &current),
        })
    }

    /// [`claim`](Self::claim), also locking and reading shard `also` (so a
    /// claim of nothing still reports that shard's epoch); returns the
    /// claimed ids, the current epoch of each touched shard, and the items
    /// in lock order.
    #[allow(clippy::type_complexity)]
    pub(crate) fn claim_in(
        &mut self,
        items: &[(u32, u64, u64)],
        redeliver: &[bool],
        now_ms: u64,
        also: Option<u32>,
    ) -> Result<(Vec<(u64, u32)>, Vec<(u32, u64)>, Vec<(u32, u64, u64)>), QueryError> {
        // Sorted into lock order together with their flags.
        let mut both: Vec<((u32, u64, u64), bool)> = items
            .iter()
            .copied()
            .zip(redeliver.iter().copied())
            .collect();
        both.sort_unstable_by_key(|&((s, _, id), _)| (shard_param(s), id as i64));
        let (items, redeliver): (Vec<_>, Vec<bool>) = both.into_iter().unzip();
        let (touched, s, e, i) = columns(&items);
        let touched = with_shard(touched, also);
        let now = ms_param(now_ms);
        let rows = self
            .client
            .query(&self.st.claim, &[&touched, &s, &i, &e, &now, &redeliver])?;
        let mut ids = Vec::new();
        let mut current = Vec::new();
        for row in &rows {
            let kind: i32 = row.try_get(0)?;
            let a: i64 = row.try_get(1)?;
            let b: i64 = row.try_get(2)?;
            if kind == 0 {
                current.push((shard_of_row(a), epoch_of(b)));
            } else {
                ids.push((a as u64, u32::try_from(b).unwrap_or(u32::MAX)));
            }
        }
        Ok((ids, current, items))
    }

    /// Ends acknowledged claimed rows (state 2, a tombstone, `ended_at_ms`
    /// the database's now), fenced like [`claim`](Self::claim).
    pub(super) fn ack(&mut self, items: &[(u32, u64, u64)]) -> Result<(u64, Fence), QueryError> {
        let (n, current) = self.ack_in(items, None)?;
        Ok((n, fence_of(items, &current)))
    }

    /// [`ack`](Self::ack), also locking and reading shard `also`; returns
    /// the rows acked and the current epoch of each touched shard.
    pub(crate) fn ack_in(
        &mut self,
        items: &[(u32, u64, u64)],
        also: Option<u32>,
    ) -> Result<(u64, Vec<(u32, u64)>), QueryError> {
        let (touched, s, e, i) = columns(items);
        let touched = with_shard(touched, also);
        let rows = self.client.query(&self.st.ack, &[&touched, &s, &i, &e])?;
        let mut current = Vec::new();
        let mut deleted = 0;
        for row in &rows {
            let shard: i32 = row.try_get(0)?;
            let epoch: i64 = row.try_get(1)?;
            deleted = row.try_get::<_, i64>(2)?;
            current.push((u32::try_from(shard).unwrap_or(u32::MAX), epoch_of(epoch)));
        }
        Ok((u64::try_from(deleted).unwrap_or(0), current))
    }

    /// Extends the leases of `held` (shard, epoch); returns the shards still
    /// ours.
    pub(crate) fn renew(
        &mut self,
        owner: &str,
        held: &[(u32, u64)],
        ttl_ms: i64,
    ) -> Result<Vec<u32>, QueryError> {
        let (s, e) = pairs(held);
        let rows = self
            .client
            .query(&self.st.renew, &[&s, &e, &owner, &ttl_ms])?;
        rows.iter()
            .map(|r| Ok(shard_of_row(i64::from(r.try_get::<_, i32>(0)?))))
            .collect()
    }

    /// Takes up to `n` shards that are free, ours from an earlier
    /// incarnation, or expired more than `grace_ms` ago; bumps each epoch.
    pub(super) fn acquire_some(
        &mut self,
        owner: &str,
        ttl_ms: i64,
        held: &[u32],
        grace_ms: i64,
        n: i64,
    ) -> Result<Vec<(u32, u64)>, QueryError> {
        let held = shards_param(held);
        let rows = self.client.query(
            &self.st.acquire_some,
            &[&owner, &ttl_ms, &held, &grace_ms, &n],
        )?;
        rows.iter()
            .map(|r| {
                let s: i32 = r.try_get(0)?;
                let e: i64 = r.try_get(1)?;
                Ok((shard_of_row(i64::from(s)), epoch_of(e)))
            })
            .collect()
    }

    /// How long until the earliest lease held by another node is past
    /// `grace_ms` (database clock; at most 0 if one is already), or `None`
    /// if no other node holds a shard.
    pub(super) fn next_takeable(
        &mut self,
        owner: &str,
        grace_ms: i64,
    ) -> Result<Option<i64>, QueryError> {
        let row = self
            .client
            .query_one(&self.st.next_takeable, &[&owner, &grace_ms])?;
        Ok(row.try_get(0)?)
    }

    /// Takes `shard` again (bumping its epoch) if it is ours, free or
    /// expired: after an in-doubt fenced write.
    pub(super) fn reacquire(
        &mut self,
        owner: &str,
        shard: u32,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>, QueryError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.acquire_one(owner, shard, ttl_ms)
    }

    /// Takes `shard` (bumping its epoch) if it is `owner`'s, free or
    /// expired; returns the new epoch, or `None` if another owner holds it.
    pub(crate) fn acquire_one(
        &mut self,
        owner: &str,
        shard: u32,
        ttl_ms: i64,
    ) -> Result<Option<u64>, QueryError> {
        let row = self
            .client
            .query_opt(&self.st.acquire, &[&shard_param(shard), &owner, &ttl_ms])?;
        match row {
            Some(row) => Ok(Some(epoch_of(row.try_get(0)?))),
            None => Ok(None),
        }
    }

    /// Who holds a live lease on `shard` (`None`: nobody, or it ran out).
    pub(crate) fn owner_of(&mut self, shard: u32) -> Result<Option<String>, QueryError> {
        let row = self
            .client
            .query_opt(&self.st.owner_of, &[&shard_param(shard)])?;
        match row {
            Some(row) => Ok(row.try_get(0)?),
            None => Ok(None),
        }
    }

    /// Deletes up to `limit` tombstones of `shards` older than `ttl_ms`
    /// (database clock); returns how many.
    pub(crate) fn reap(
        &mut self,
        shards: &[u32],
        ttl_ms: i64,
        limit: i64,
    ) -> Result<u64, QueryError> {
        let s = shards_param(shards);
        Ok(self.client.execute(&self.st.reap, &[&s, &ttl_ms, &limit])?)
    }

    /// Streams one shard's pending and claimed rows with `from <= deadline
    /// < to`, in deadline order (the store's `load`).
    pub(crate) fn load_shard(
        &mut self,
        shard: u32,
        from: i64,
        to: i64,
    ) -> Result<RowIter<'_>, QueryError> {
        let shard = shard_param(shard);
        let params: [&dyn ToSql; 3] = [&shard, &from, &to];
        Ok(self.client.query_raw(&self.st.load_shard, params)?)
    }

    /// Gives shards up (bumping their epochs); returns those that were
    /// still ours.
    pub(crate) fn release(
        &mut self,
        owner: &str,
        held: &[(u32, u64)],
    ) -> Result<Vec<u32>, QueryError> {
        let (s, e) = pairs(held);
        let rows = self.client.query(&self.st.release, &[&s, &e, &owner])?;
        rows.iter()
            .map(|r| Ok(shard_of_row(i64::from(r.try_get::<_, i32>(0)?))))
            .collect()
    }

    /// Announces `owner` and returns how many nodes (itself included) were
    /// seen within `ttl_ms`.
    pub(super) fn heartbeat(&mut self, owner: &str, ttl_ms: i64) -> Result<u32, QueryError> {
        let row = self
            .client
            .query_one(&self.st.heartbeat, &[&owner, &ttl_ms])?;
        Ok(u32::try_from(row.try_get::<_, i64>(0)?).unwrap_or(1).max(1))
    }

    pub(super) fn leave(&mut self, owner: &str) -> Result<(), QueryError> {
        self.client.execute(&self.st.leave, &[&owner])?;
        Ok(())
    }

    /// Streams the pending rows of `shards` with `from <= deadline < to`.
    pub(super) fn load_pending(
        &mut self,
        shards: &[u32],
        from_ms: u64,
        to_ms: u64,
        each: &mut dyn FnMut(Loaded),
    ) -> Result<(), QueryError> {
        stream_span(
            &mut self.client,
            &self.st.load_pending,
            shards,
            from_ms,
            to_ms,
            each,
        )
    }

    /// Streams the pending and claimed rows of `shards` due before
    /// `split_ms` (a takeover's first load).
    pub(super) fn load_first(
        &mut self,
        shards: &[u32],
        split_ms: u64,
        each: &mut dyn FnMut(Loaded),
    ) -> Result<(), QueryError> {
        let s = shards_param(shards);
        let split = ms_param(split_ms);
        let params: [&dyn ToSql; 2] = [&s, &split];
        stream(&mut self.client, &self.st.load_first, &params, each)
    }

    /// Streams the rest of a takeover's load: the pending rows of `shards`
    /// with `split <= deadline < to`, and the claimed ones from `split` on.
    pub(crate) fn load_rest(
        &mut self,
        shards: &[u32],
        split_ms: u64,
        to_ms: u64,
        each: &mut dyn FnMut(Loaded),
    ) -> Result<(), QueryError> {
        stream_span(
            &mut self.client,
            &self.st.load_rest,
            shards,
            split_ms,
            to_ms,
            each,
        )
    }

    /// The earliest `per_shard` pending rows of each of `shards` due at
    /// `now_ms`.
    pub(crate) fn sweep(
        &mut self,
        shards: &[u32],
        now_ms: u64,
        per_shard: i64,
        each: &mut dyn FnMut(Loaded),
    ) -> Result<(), QueryError> {
        let s = shards_param(shards);
        let now = ms_param(now_ms);
        let params: [&dyn ToSql; 3] = [&s, &now, &per_shard];
        stream(&mut self.client, &self.st.sweep, &params, each)
    }

    /// Pending rows of `shards` whose deadline is before `before_ms`.
    pub(super) fn overdue(&mut self, shards: &[u32], before_ms: u64) -> Result<u64, QueryError> {
        let s = shards_param(shards);
        let before = ms_param(before_ms);
        let row = self.client.query_one(&self.st.overdue, &[&s, &before])?;
        Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
    }

    /// Tells the owners listening on `channel` that these ids were written
    /// (each chunk a comma-separated list, one notification each).
    pub(super) fn notify(&mut self, channel: &str, chunks: &[String]) -> Result<(), QueryError> {
        self.client.query(&self.st.notify, &[&channel, &chunks])?;
        Ok(())
    }

    /// Starts receiving `channel`'s notifications on this connection.
    pub(super) fn listen(&mut self, channel: &str) -> Result<(), QueryError> {
        // The channel is a schema name: [a-z0-9_] only, so quoting suffices.
        self.client
            .batch_execute(&format!("LISTEN \"{channel}\""))?;
        Ok(())
    }

    /// Waits up to `timeout` for the first notification, then returns every
    /// one already received (their payloads).
    pub(super) fn notified(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<Vec<String>, QueryError> {
        let mut out = Vec::new();
        let mut notifications = self.client.notifications();
        let first = notifications.timeout_iter(timeout).next()?;
        if let Some(first) = first {
            out.push(first.payload().to_owned());
            let mut rest = notifications.iter();
            while let Some(n) = rest.next()? {
                out.push(n.payload().to_owned());
            }
        }
        Ok(out)
    }

    /// The rows among `(shard, id)` in `state` (0 pending, 1 claimed).
    pub(crate) fn fetch(
        &mut self,
        shards: &[i32],
        ids: &[i64],
        state: i16,
        each: &mut dyn FnMut(Loaded),
    ) -> Result<(), QueryError> {
        for row in self
            .client
            .query(&self.st.fetch, &[&shards, &ids, &state])?
        {
            each(loaded(&row)?);
        }
        Ok(())
    }
}

/// Runs a row-returning statement, handing each row to `each` as it
/// arrives (a takeover's load may read millions).
fn stream(
    client: &mut Client,
    statement: &Statement,
    params: &[&dyn ToSql],
    each: &mut dyn FnMut(Loaded),
) -> Result<(), QueryError> {
    let mut rows = client.query_raw(statement, params.iter().copied())?;
    while let Some(row) = rows.next()? {
        each(loaded(&row)?);
    }
    Ok(())
}

/// [`stream`] of a statement over `shards` and two times (ms): the
/// parameters every deadline-range load takes.
fn stream_span(
    client: &mut Client,
    statement: &Statement,
    shards: &[u32],
    a_ms: u64,
    b_ms: u64,
    each: &mut dyn FnMut(Loaded),
) -> Result<(), QueryError> {
    let s = shards_param(shards);
    let (a, b) = (ms_param(a_ms), ms_param(b_ms));
    let params: [&dyn ToSql; 3] = [&s, &a, &b];
    stream(client, statement, &params, each)
}

fn loaded(row: &Row) -> Result<Loaded, postgres::Error> {
    let s: i32 = row.try_get(0)?;
    let id: i64 = row.try_get(1)?;
    let d: i64 = row.try_get(2)?;
    Ok(Loaded {
        shard: shard_of_row(i64::from(s)),
        id: id as u64,
        // CHECK (deadline_ms >= 0) in the schema.
        deadline_ms: u64::try_from(d).unwrap_or(0),
        payload: row.try_get(3)?,
        reminders_ms: row
            .try_get::<_, Vec<i64>>(4)?
            .into_iter()
            .map(|r| u64::try_from(r).unwrap_or(0))
            .collect(),
        // Only the takeover's loads return the state.
        claimed: row.len() > 5 && row.try_get::<_, i16>(5)? == 1,
    })
}

/// The touched shards (deduplicated) and the `unnest` columns, in lock
/// order: by shard, then by the stored `bigint` id. (A caller that sends a
/// column of its own alongside sorts it the same way first; see `claim`.)
fn columns(items: &[(u32, u64, u64)]) -> (Vec<i32>, Vec<i32>, Vec<i64>, Vec<i64>) {
    let mut sorted: Vec<(i32, i64, i64)> = items
        .iter()
        .map(|&(s, e, id)| (shard_param(s), id as i64, epoch_param(e)))
        .collect();
    // Stable, and by (shard, id) only: an input already in this order keeps it.
    sorted.sort_by_key(|&(s, id, _)| (s, id));
    let mut touched: Vec<i32> = sorted.iter().map(|&(s, _, _)| s).collect();
    touched.dedup();
    let s = sorted.iter().map(|&(s, _, _)| s).collect();
    let i = sorted.iter().map(|&(_, id, _)| id).collect();
    let e = sorted.iter().map(|&(_, _, e)| e).collect();
    (touched, s, e, i)
}

/// A refusal worth retrying: PostgreSQL broke a deadlock or a
/// serialization conflict by aborting this statement, which changed
/// nothing.
pub(super) fn is_transient(e: &QueryError) -> bool {
    use postgres::error::SqlState;
    match e {
        QueryError::Refused(e) => e.code().is_some_and(|c| {
            *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        }),
        QueryError::InDoubt(_) => false,
    }
}

/// `touched` with `also` added, still sorted and without duplicates.
fn with_shard(mut touched: Vec<i32>, also: Option<u32>) -> Vec<i32> {
    if let Some(shard) = also.map(shard_param)
        && let Err(at) = touched.binary_search(&shard)
    {
        touched.insert(at, shard);
    }
    touched
}

fn pairs(held: &[(u32, u64)]) -> (Vec<i32>, Vec<i64>) {
    let mut held = held.to_vec();
    held.sort_unstable();
    (
        held.iter().map(|&(s, _)| shard_param(s)).collect(),
        held.iter().map(|&(_, e)| epoch_param(e)).collect(),
    )
}

/// The shards of `items` whose current epoch is not the one sent.
fn fence_of(items: &[(u32, u64, u64)], current: &[(u32, u64)]) -> Fence {
    let current: rustc_hash::FxHashMap<u32, u64> = current.iter().copied().collect();
    let mut fenced: Vec<u32> = items
        .iter()
        .filter(|&&(s, e, _)| current.get(&s) != Some(&e))
        .map(|&(s, _, _)| s)
        .collect();
    fenced.sort_unstable();
    fenced.dedup();
    Fence { fenced }
}

// ---------------------------------------------------------------------
// Reminders, reschedule and snooze (see `super::remind`): their own
// statements, in their own block.
// ---------------------------------------------------------------------

/// What [`NodeDb::reschedule`] found.
#[derive(Debug)]
pub(super) enum Rescheduled {
    /// The row was pending: its deadline moved. Its payload bytes and its
    /// pending reminder times after the move, ascending.
    Moved {
        payload: Vec<u8>,
        reminders_ms: Vec<u64>,
    },
    /// The row is claimed (or ended): the fire won.
    Claimed,
    /// No row.
    Absent,
}

struct FeatureStatements {
    remind: Statement,
    snooze: Statement,
    reschedule: Statement,
    state_of: Statement,
    load_reminding: Statement,
}

impl FeatureStatements {
    fn prepare(c: &mut Client, mode: FenceMode) -> Result<Self, postgres::Error> {
        #[allow(non_snake_case)]
        let FENCE = fence(mode);
        Ok(Self {
            // "Reminder delivered": the earliest pending reminder time, if
            // due, leaves the row, fenced like a claim; only a pending row
            // (never a claimed one: its expiry won) delivers a reminder.
            remind: c.prepare(&format!(
                "WITH {FENCE},
                 l AS (SELECT t.shard_id, t.timer_id FROM timers t
                   JOIN unnest($2::int[], $3::bigint[], $4::bigint[]) AS x(s, id, e)
                     ON t.shard_id = x.s AND t.timer_id = x.id
                   JOIN f ON f.shard_id = x.s AND f.epoch = x.e
                   WHERE t.state = 0 AND t.reminders_ms[1] <= $5
                   ORDER BY t.shard_id, t.timer_id FOR UPDATE OF t),
                 u AS (UPDATE timers t SET reminders_ms = t.reminders_ms[2:]
                   FROM l
                   WHERE t.shard_id = l.shard_id AND t.timer_id = l.timer_id
                   RETURNING t.timer_id)
                 SELECT 0, f.shard_id::bigint, f.epoch FROM f
                 UNION ALL SELECT 1, u.timer_id, 0::bigint FROM u"
            ))?,
            // A snoozed delivery becomes pending again, due at the snooze's
            // end: only the claim this node holds (its epoch, still the
            // shard's, and its attempt: a redelivery that claimed it again
            // meanwhile is not undone). Reminders are over once it fired.
            snooze: c.prepare(&format!(
                "WITH {FENCE},
                 l AS (SELECT t.shard_id, t.timer_id FROM timers t
                   JOIN f ON f.shard_id = t.shard_id AND f.epoch = $4
                   WHERE t.shard_id = $2 AND t.timer_id = $3 AND t.state = 1
                     AND t.fired_epoch = $4 AND t.attempt = $5
                   FOR UPDATE OF t),
                 u AS (UPDATE timers t SET state = 0, fired_epoch = NULL,
                     deadline_ms = $6, reminders_ms = '{{}}'
                   FROM l
                   WHERE t.shard_id = l.shard_id AND t.timer_id = l.timer_id
                   RETURNING 1)
                 SELECT (SELECT f.epoch FROM f), (SELECT count(*) FROM u)"
            ))?,
            // Moves a pending row's deadline, and its pending reminders by
            // as much (each keeps its offset before the deadline). The row
            // lock decides against a concurrent claim, as for a cancel: a
            // claim that committed first leaves `state = 1`, and this
            // updates nothing.
            reschedule: c.prepare(
                "UPDATE timers t SET deadline_ms = $3::bigint,
                   reminders_ms = ARRAY(SELECT GREATEST(u.r + ($3::bigint - t.deadline_ms), 0)
                                        FROM unnest(t.reminders_ms) AS u(r) ORDER BY 1)
                 WHERE t.shard_id = $1 AND t.timer_id = $2 AND t.state = 0
                 RETURNING t.payload, t.reminders_ms",
            )?,
            state_of: c
                .prepare("SELECT state FROM timers WHERE shard_id = $1 AND timer_id = $2")?,
            // Pending rows due at or past `$2` with reminders still to
            // deliver: the wheel holds them whatever their deadline (see
            // `super::remind`). Read at takeover only; it reads the
            // acquired shards' rows due past `$2` (no index serves
            // `reminders_ms`).
            load_reminding: c.prepare(
                "SELECT shard_id, timer_id, deadline_ms, payload, reminders_ms FROM timers
                 WHERE shard_id = ANY($1::int[]) AND state = 0 AND deadline_ms >= $2
                   AND cardinality(reminders_ms) > 0",
            )?,
        })
    }
}

impl NodeDb {
    /// Delivers due reminders of `(shard, epoch, id)` rows, fenced: the ids
    /// whose earliest pending reminder time (at or before `now_ms`) this
    /// statement removed.
    pub(super) fn remind(
        &mut self,
        items: &[(u32, u64, u64)],
        now_ms: u64,
    ) -> Result<(Vec<u64>, Fence), QueryError> {
        let (touched, s, e, i) = columns(items);
        let now = ms_param(now_ms);
        let rows = self
            .client
            .query(&self.ft.remind, &[&touched, &s, &i, &e, &now])?;
        let (mut ids, mut current) = (Vec::new(), Vec::new());
        for row in &rows {
            let kind: i32 = row.try_get(0)?;
            let a: i64 = row.try_get(1)?;
            let b: i64 = row.try_get(2)?;
            if kind == 0 {
                current.push((shard_of_row(a), epoch_of(b)));
            } else {
                ids.push(a as u64);
            }
        }
        Ok((ids, fence_of(items, &current)))
    }

    /// Writes a snoozed delivery back as pending, due at `until_ms`, if
    /// this node's claim (`epoch`, `attempt`) still holds the row. Returns
    /// the shard's epoch now (`None`: no shard row) and whether it wrote.
    pub(super) fn snooze(
        &mut self,
        shard: u32,
        id: u64,
        epoch: u64,
        attempt: u32,
        until_ms: u64,
    ) -> Result<(Option<u64>, bool), QueryError> {
        let touched = vec![shard_param(shard)];
        let row = self.client.query_one(
            &self.ft.snooze,
            &[
                &touched,
                &shard_param(shard),
                &(id as i64),
                &epoch_param(epoch),
                &i32::try_from(attempt).unwrap_or(i32::MAX),
                &ms_param(until_ms),
            ],
        )?;
        let current: Option<i64> = row.try_get(0)?;
        let written: i64 = row.try_get(1)?;
        Ok((current.map(epoch_of), written > 0))
    }

    /// Moves `id`'s pending row to `deadline_ms` (see [`Rescheduled`]).
    pub(super) fn reschedule(
        &mut self,
        shard: u32,
        id: u64,
        deadline_ms: i64,
    ) -> Result<Rescheduled, QueryError> {
        let (s, i) = (shard_param(shard), id as i64);
        let rows = self
            .client
            .query(&self.ft.reschedule, &[&s, &i, &deadline_ms])?;
        if let Some(row) = rows.first() {
            let reminders: Vec<i64> = row.try_get(1)?;
            return Ok(Rescheduled::Moved {
                payload: row.try_get(0)?,
                reminders_ms: reminders
                    .into_iter()
                    .map(|r| u64::try_from(r).unwrap_or(0))
                    .collect(),
            });
        }
        // A fresh snapshot: a claim that won the row lock is seen.
        let state = self.client.query_opt(&self.ft.state_of, &[&s, &i])?;
        Ok(match state {
            Some(_) => Rescheduled::Claimed,
            None => Rescheduled::Absent,
        })
    }

    /// Streams the pending rows of `shards` due at or past `from_ms` that
    /// have reminders still to deliver.
    pub(super) fn load_reminding(
        &mut self,
        shards: &[u32],
        from_ms: u64,
        each: &mut dyn FnMut(Loaded),
    ) -> Result<(), QueryError> {
        let s = shards_param(shards);
        let from = ms_param(from_ms);
        let params: [&dyn ToSql; 2] = [&s, &from];
        stream(&mut self.client, &self.ft.load_reminding, &params, each)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_deduplicate_the_touched_shards_and_sort_the_rows_in_lock_order() {
        let items = [(3, 7, 30), (1, 5, 10), (3, 7, 31)];
        let (touched, s, e, i) = columns(&items);
        assert_eq!(touched, vec![1, 3]);
        assert_eq!(s, vec![1, 3, 3]);
        assert_eq!(e, vec![5, 7, 7]);
        assert_eq!(i, vec![10, 30, 31]);
    }

    #[test]
    fn a_shard_is_fenced_when_its_epoch_moved_on_or_its_row_is_missing() {
        let items = [(1, 5, 10), (2, 9, 20), (3, 4, 30), (2, 9, 21)];
        // Shard 1 still at 5; shard 2 moved to 10; shard 3 not returned.
        let fence = fence_of(&items, &[(1, 5), (2, 10)]);
        assert_eq!(fence.fenced, vec![2, 3]);
        assert!(fence_of(&items[..1], &[(1, 5)]).fenced.is_empty());
    }
}
