//! The node's statements: the [`PgStore`] ones, widened to many shards per
//! statement, so a commit carries up to a batch of rows whatever shards they
//! fall in.
//!
//! With 1024 shards a batch of 1000 schedules touches ~630 of them; one
//! statement per shard would spend a commit per row. Each statement here
//! takes parallel arrays (`unnest`) and is still one implicit transaction:
//! `Ok` means committed. The fenced ones (claim, ack) keep the store's rule,
//! widened: one `FOR SHARE` lock on *every* shard row the statement touches,
//! taken in the same statement, and a row is written only where the shard's
//! epoch is the one the node holds (see `crate::store`'s module doc
//! for why the lock, not the comparison alone, makes the fence).

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Row, Statement};

use crate::config::StoreConfig;
use crate::error::{OpenError, QueryError};
use crate::store::{PgStore, epoch_param, shard_param};

/// A row read back for the wheel.
#[derive(Debug)]
pub(super) struct Loaded {
    pub(super) shard: u32,
    pub(super) id: u64,
    pub(super) deadline_ms: u64,
    pub(super) payload: Vec<u8>,
    /// Reminder times not yet delivered, ascending (UTC ms).
    pub(super) reminders_ms: Vec<u64>,
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

struct Statements {
    insert: Statement,
    same_rows: Statement,
    cancel: Statement,
    claimed_of: Statement,
    claim: Statement,
    ack: Statement,
    renew: Statement,
    acquire_some: Statement,
    release: Statement,
    heartbeat: Statement,
    leave: Statement,
    load_pending: Statement,
    load_claimed: Statement,
    sweep: Statement,
    overdue: Statement,
    notify: Statement,
    fetch: Statement,
}

/// Locks every touched shard row and reads its epoch (the fence).
///
/// Every statement here takes its row locks in one global order, shard
/// rows first and by `shard_id`, then timer rows by `(shard_id, timer_id)`
/// (the node sorts the arrays it sends, and the locking subqueries sort
/// before they lock), so two of them never wait on each other in a cycle.
/// A deadlock that happens anyway (PostgreSQL picks a victim) is refused,
/// changed nothing, and is retried by the caller (see [`is_transient`]).
const FENCE: &str = "f AS MATERIALIZED (SELECT shard_id, epoch FROM shards
                       WHERE shard_id = ANY($1::int[]) ORDER BY shard_id FOR SHARE)";

/// The shard rows `owner` ($3) still holds at the epochs sent (`$1`
/// shards, `$2` epochs), locked in shard order: what renew and release
/// update.
const HELD: &str = "(SELECT sh.shard_id FROM shards sh
                      JOIN unnest($1::int[], $2::bigint[]) AS x(id, e)
                        ON sh.shard_id = x.id AND sh.epoch = x.e
                      WHERE sh.owner = $3
                      ORDER BY sh.shard_id FOR NO KEY UPDATE OF sh)";

impl Statements {
    fn prepare(c: &mut postgres::Client) -> Result<Self, postgres::Error> {
        Ok(Self {
            // Unfenced on purpose: firing never trusts a wheel, it claims
            // from the table (see the node's module doc).
            insert: c.prepare(
                "INSERT INTO timers (shard_id, timer_id, deadline_ms, payload, reminders_ms)
                 SELECT t.s, t.id, t.d, t.p, t.r::bigint[]
                 FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bytea[], $5::text[])
                   AS t(s, id, d, p, r)
                 ON CONFLICT DO NOTHING RETURNING timer_id",
            )?,
            same_rows: c.prepare(
                "SELECT t.timer_id FROM timers t
                 JOIN unnest($1::int[], $2::bigint[], $3::bigint[], $4::bytea[]) AS u(s, id, d, p)
                   ON t.shard_id = u.s AND t.timer_id = u.id
                 WHERE t.deadline_ms = u.d AND t.payload = u.p",
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
            claimed_of: c.prepare(
                "SELECT t.timer_id FROM timers t
                 JOIN unnest($1::int[], $2::bigint[]) AS u(s, id)
                   ON t.shard_id = u.s AND t.timer_id = u.id
                 WHERE t.state = 1",
            )?,
            // A pending row is claimed once due; a claimed one only when the
            // node redelivers it (`x.r`: loaded as claimed at takeover, or
            // unacked past the ack timeout), attempt + 1. A first fire never
            // takes a claimed row: it may be a stale copy of one just
            // delivered and acked, whose delete is not committed yet.
            claim: c.prepare(&format!(
                "WITH {FENCE},
                 l AS (SELECT t.shard_id, t.timer_id FROM timers t
                   JOIN unnest($2::int[], $3::bigint[], $4::bigint[], $6::bool[]) AS x(s, id, e, r)
                     ON t.shard_id = x.s AND t.timer_id = x.id
                   JOIN f ON f.shard_id = x.s AND f.epoch = x.e
                   WHERE (t.state = 0 AND t.deadline_ms <= $5) OR (t.state = 1 AND x.r)
                   ORDER BY t.shard_id, t.timer_id FOR UPDATE OF t),
                 u AS (UPDATE timers t SET state = 1, fired_epoch = f.epoch, attempt = t.attempt + 1
                   FROM l, f
                   WHERE t.shard_id = l.shard_id AND t.timer_id = l.timer_id
                     AND f.shard_id = l.shard_id
                   RETURNING t.timer_id, t.attempt)
                 SELECT 0, f.shard_id::bigint, f.epoch FROM f
                 UNION ALL SELECT 1, u.timer_id, u.attempt::bigint FROM u"
            ))?,
            ack: c.prepare(&format!(
                "WITH {FENCE},
                 l AS (SELECT t.shard_id, t.timer_id FROM timers t
                   JOIN unnest($2::int[], $3::bigint[], $4::bigint[]) AS x(s, id, e)
                     ON t.shard_id = x.s AND t.timer_id = x.id
                   JOIN f ON f.shard_id = x.s AND f.epoch = x.e
                   WHERE t.state = 1
                   ORDER BY t.shard_id, t.timer_id FOR UPDATE OF t),
                 d AS (DELETE FROM timers t USING l
                   WHERE t.shard_id = l.shard_id AND t.timer_id = l.timer_id
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
            load_claimed: c.prepare(
                "SELECT shard_id, timer_id, deadline_ms, payload, '{}'::bigint[] FROM timers
                 WHERE shard_id = ANY($1::int[]) AND state = 1",
            )?,
            sweep: c.prepare(
                "SELECT shard_id, timer_id, deadline_ms, payload, reminders_ms FROM timers
                 WHERE shard_id = ANY($1::int[]) AND state = 0 AND deadline_ms <= $2
                 ORDER BY deadline_ms LIMIT $3",
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
                 WHERE shard_id = ANY($1::int[]) AND state = 0 AND deadline_ms < $2",
            )?,
        })
    }
}

/// One connection for one of the node's threads.
pub(super) struct NodeDb {
    store: PgStore,
    st: Statements,
    ft: FeatureStatements,
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
    pub(super) fn open(config: &StoreConfig) -> Result<Self, OpenError> {
        let mut store = PgStore::open(config)?;
        let st = Statements::prepare(&mut store.client)
            .map_err(|e| OpenError::Schema(QueryError::from(e)))?;
        let ft = FeatureStatements::prepare(&mut store.client)
            .map_err(|e| OpenError::Schema(QueryError::from(e)))?;
        Ok(Self { store, st, ft })
    }

    pub(super) fn is_closed(&self) -> bool {
        self.store.is_closed()
    }

    /// Inserts rows (shard, id, deadline, payload); returns the ids written.
    /// Ids that existed already are skipped.
    pub(super) fn insert(
        &mut self,
        shards: &[i32],
        ids: &[i64],
        deadlines: &[i64],
        payloads: &[&[u8]],
        reminders: &[&str],
    ) -> Result<Vec<u64>, QueryError> {
        let rows = self.store.client.query(
            &self.st.insert,
            &[&shards, &ids, &deadlines, &payloads, &reminders],
        )?;
        rows.iter()
            .map(|r| Ok(r.try_get::<_, i64>(0)? as u64))
            .collect()
    }

    /// Of the given rows, the ids stored with exactly this deadline and
    /// payload (resolving an insert that was in doubt).
    pub(super) fn same_rows(
        &mut self,
        shards: &[i32],
        ids: &[i64],
        deadlines: &[i64],
        payloads: &[&[u8]],
    ) -> Result<Vec<u64>, QueryError> {
        let rows = self
            .store
            .client
            .query(&self.st.same_rows, &[&shards, &ids, &deadlines, &payloads])?;
        rows.iter()
            .map(|r| Ok(r.try_get::<_, i64>(0)? as u64))
            .collect()
    }

    /// Deletes the pending rows among `ids`; returns the deleted ids with
    /// their payloads, then which of the rest are claimed (a fresh snapshot,
    /// so a claim that won the row lock is seen).
    #[allow(clippy::type_complexity)]
    pub(super) fn cancel(
        &mut self,
        shards: &[i32],
        ids: &[i64],
    ) -> Result<(Vec<(u64, Vec<u8>)>, Vec<u64>), QueryError> {
        let deleted = self
            .store
            .client
            .query(&self.st.cancel, &[&shards, &ids])?
            .iter()
            .map(|r| Ok((r.try_get::<_, i64>(0)? as u64, r.try_get(1)?)))
            .collect::<Result<Vec<_>, postgres::Error>>()?;
        if deleted.len() == ids.len() {
            return Ok((deleted, Vec::new()));
        }
        let claimed = self
            .store
            .client
            .query(&self.st.claimed_of, &[&shards, &ids])?
            .iter()
            .map(|r| Ok(r.try_get::<_, i64>(0)? as u64))
            .collect::<Result<Vec<_>, postgres::Error>>()?;
        Ok((deleted, claimed))
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
        // Sorted into lock order together with their flags.
        let mut both: Vec<((u32, u64, u64), bool)> = items
            .iter()
            .copied()
            .zip(redeliver.iter().copied())
            .collect();
        both.sort_unstable_by_key(|&((s, _, id), _)| (shard_param(s), id as i64));
        let (items, redeliver): (Vec<_>, Vec<bool>) = both.into_iter().unzip();
        let (touched, s, e, i) = columns(&items);
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let rows = self
            .store
            .client
            .query(&self.st.claim, &[&touched, &s, &i, &e, &now, &redeliver])?;
        let mut out = Claimed::default();
        let mut current = Vec::new();
        for row in &rows {
            let kind: i32 = row.try_get(0)?;
            let a: i64 = row.try_get(1)?;
            let b: i64 = row.try_get(2)?;
            if kind == 0 {
                current.push((shard_of_row(a), epoch_of(b)));
            } else {
                out.ids
                    .push((a as u64, u32::try_from(b).unwrap_or(u32::MAX)));
            }
        }
        out.fence = fence_of(&items, &current);
        Ok(out)
    }

    /// Deletes acknowledged claimed rows, fenced like [`claim`](Self::claim).
    pub(super) fn ack(&mut self, items: &[(u32, u64, u64)]) -> Result<(u64, Fence), QueryError> {
        let (touched, s, e, i) = columns(items);
        let rows = self
            .store
            .client
            .query(&self.st.ack, &[&touched, &s, &i, &e])?;
        let mut current = Vec::new();
        let mut deleted = 0;
        for row in &rows {
            let shard: i32 = row.try_get(0)?;
            let epoch: i64 = row.try_get(1)?;
            deleted = row.try_get::<_, i64>(2)?;
            current.push((u32::try_from(shard).unwrap_or(u32::MAX), epoch_of(epoch)));
        }
        Ok((
            u64::try_from(deleted).unwrap_or(0),
            fence_of(items, &current),
        ))
    }

    /// Extends the leases of `held` (shard, epoch); returns the shards still
    /// ours.
    pub(super) fn renew(
        &mut self,
        owner: &str,
        held: &[(u32, u64)],
        ttl_ms: i64,
    ) -> Result<Vec<u32>, QueryError> {
        let (s, e) = pairs(held);
        let rows = self
            .store
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
        let rows = self.store.client.query(
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

    /// Takes `shard` again (bumping its epoch) if it is ours, free or
    /// expired: after an in-doubt fenced write.
    pub(super) fn reacquire(
        &mut self,
        owner: &str,
        shard: u32,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>, QueryError> {
        match self.store.acquire(shard, owner, ttl) {
            Ok(crate::Acquire::Acquired(lease)) => Ok(Some(lease.epoch())),
            Ok(crate::Acquire::Held { .. }) => Ok(None),
            Err(crate::LeaseError::Query(q)) => Err(q),
            // Shard and owner were validated at start.
            Err(_) => Ok(None),
        }
    }

    /// Gives shards up (bumping their epochs).
    pub(super) fn release(&mut self, owner: &str, held: &[(u32, u64)]) -> Result<(), QueryError> {
        let (s, e) = pairs(held);
        self.store
            .client
            .query(&self.st.release, &[&s, &e, &owner])?;
        Ok(())
    }

    /// Announces `owner` and returns how many nodes (itself included) were
    /// seen within `ttl_ms`.
    pub(super) fn heartbeat(&mut self, owner: &str, ttl_ms: i64) -> Result<u32, QueryError> {
        let row = self
            .store
            .client
            .query_one(&self.st.heartbeat, &[&owner, &ttl_ms])?;
        Ok(u32::try_from(row.try_get::<_, i64>(0)?).unwrap_or(1).max(1))
    }

    pub(super) fn leave(&mut self, owner: &str) -> Result<(), QueryError> {
        self.store.client.execute(&self.st.leave, &[&owner])?;
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
        let s = shards_param(shards);
        let from = i64::try_from(from_ms).unwrap_or(i64::MAX);
        let to = i64::try_from(to_ms).unwrap_or(i64::MAX);
        let params: [&dyn ToSql; 3] = [&s, &from, &to];
        self.stream(StatementKind::Pending, &params, each)
    }

    /// Streams the claimed rows of `shards` (to redeliver after takeover).
    pub(super) fn load_claimed(
        &mut self,
        shards: &[u32],
        each: &mut dyn FnMut(Loaded),
    ) -> Result<(), QueryError> {
        let s = shards_param(shards);
        let params: [&dyn ToSql; 1] = [&s];
        self.stream(StatementKind::Claimed, &params, each)
    }

    /// The earliest `limit` pending rows of `shards` due at `now_ms`.
    pub(super) fn sweep(
        &mut self,
        shards: &[u32],
        now_ms: u64,
        limit: i64,
        each: &mut dyn FnMut(Loaded),
    ) -> Result<(), QueryError> {
        let s = shards_param(shards);
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let params: [&dyn ToSql; 3] = [&s, &now, &limit];
        self.stream(StatementKind::Sweep, &params, each)
    }

    /// Pending rows of `shards` whose deadline is before `before_ms`.
    pub(super) fn overdue(&mut self, shards: &[u32], before_ms: u64) -> Result<u64, QueryError> {
        let s = shards_param(shards);
        let before = i64::try_from(before_ms).unwrap_or(i64::MAX);
        let row = self
            .store
            .client
            .query_one(&self.st.overdue, &[&s, &before])?;
        Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
    }

    /// Tells the owners listening on `channel` that these ids were written
    /// (each chunk a comma-separated list, one notification each).
    pub(super) fn notify(&mut self, channel: &str, chunks: &[String]) -> Result<(), QueryError> {
        self.store
            .client
            .query(&self.st.notify, &[&channel, &chunks])?;
        Ok(())
    }

    /// Starts receiving `channel`'s notifications on this connection.
    pub(super) fn listen(&mut self, channel: &str) -> Result<(), QueryError> {
        // The channel is a schema name: [a-z0-9_] only, so quoting suffices.
        self.store
            .client
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
        let mut notifications = self.store.client.notifications();
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
    pub(super) fn fetch(
        &mut self,
        shards: &[i32],
        ids: &[i64],
        state: i16,
        each: &mut dyn FnMut(Loaded),
    ) -> Result<(), QueryError> {
        for row in self
            .store
            .client
            .query(&self.st.fetch, &[&shards, &ids, &state])?
        {
            each(loaded(&row)?);
        }
        Ok(())
    }

    fn stream(
        &mut self,
        kind: StatementKind,
        params: &[&dyn ToSql],
        each: &mut dyn FnMut(Loaded),
    ) -> Result<(), QueryError> {
        let statement = match kind {
            StatementKind::Pending => &self.st.load_pending,
            StatementKind::Claimed => &self.st.load_claimed,
            StatementKind::Sweep => &self.st.sweep,
        };
        let mut rows = self
            .store
            .client
            .query_raw(statement, params.iter().copied())?;
        while let Some(row) = rows.next()? {
            each(loaded(&row)?);
        }
        Ok(())
    }
}

enum StatementKind {
    Pending,
    Claimed,
    Sweep,
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
    fn prepare(c: &mut postgres::Client) -> Result<Self, postgres::Error> {
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
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let rows = self
            .store
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
        let row = self.store.client.query_one(
            &self.ft.snooze,
            &[
                &touched,
                &shard_param(shard),
                &(id as i64),
                &epoch_param(epoch),
                &i32::try_from(attempt).unwrap_or(i32::MAX),
                &i64::try_from(until_ms).unwrap_or(i64::MAX),
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
            .store
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
        let state = self.store.client.query_opt(&self.ft.state_of, &[&s, &i])?;
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
        let from = i64::try_from(from_ms).unwrap_or(i64::MAX);
        let params: [&dyn ToSql; 2] = [&s, &from];
        let mut rows = self
            .store
            .client
            .query_raw(&self.ft.load_reminding, params.iter().copied())?;
        while let Some(row) = rows.next()? {
            each(loaded(&row)?);
        }
        Ok(())
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
