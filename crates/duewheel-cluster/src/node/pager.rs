//! The pager: what of the table the wheel holds.
//!
//! - **Takeover**: a newly acquired shard's claimed rows (an earlier
//!   owner's deliveries that were never acked) go into the wheel due at
//!   once, and its pending rows due before the horizon's end as they are,
//!   and those with reminders still to deliver whatever their deadline
//!   (see `remind`), with their pending reminders.
//! - **Horizon**: every `page_every` the horizon's end moves to `now +
//!   horizon` and the rows between the old and the new end are paged in, so
//!   the wheel never needs the whole table.
//! - **Sweep**: every `sweep_every` the pending rows of owned shards that
//!   are due now are read, and those the wheel lacks are put in (due at
//!   once). This is what fires rows written by other nodes, or committed
//!   after a takeover's load or a page; it bounds how late they fire. While
//!   the wheel has overdue timers it reads only rows due before the oldest
//!   of them (the rest would fire behind that backlog anyway).
//!
//! Invariant: the pager only ever *adds* to the wheel; whether anything
//! fires is the gate's claim's decision.

use super::sql::{Loaded, NodeDb};
use super::{Shared, bump, ms};
use crate::error::QueryError;
use crossbeam_channel::Receiver;
use duewheel::{Codec, Deadline, ScheduleError, Scheduler};
use std::time::{Duration, Instant};

/// Most due rows one sweep reads (split evenly over the owned shards).
const SWEEP_LIMIT: i64 = 10_000;

/// Least due rows one sweep reads per shard.
const SWEEP_PER_SHARD_MIN: i64 = 100;

/// How overdue a pending row must be to count in the alarm.
const OVERDUE_MS: u64 = 60_000;

/// A takeover loads the rows due within this much of now first, in one
/// small query, so firing resumes before the rest of a large shard is read.
const FIRST_SPAN_MS: u64 = 5_000;

pub(super) fn run<P: Codec + Clone + Send + 'static>(
    shared: &Shared,
    db: NodeDb,
    rx: &Receiver<(u32, u64)>,
    refetch: &Receiver<Vec<u64>>,
    engine: &Scheduler<u64, P>,
) {
    let mut db =
        Some(db).and_then(|mut conn| conn.listen(&shared.config.store.schema).ok().map(|()| conn));
    let mut fresh: Vec<(u32, u64)> = Vec::new();
    let mut next_page = Instant::now() + shared.config.page_every;
    let mut next_sweep = Instant::now() + shared.config.sweep_every;
    let mut next_alarm = Instant::now();
    let mut next_reap = Instant::now() + reap_every(shared);
    let mut retries = Retries::default();
    loop {
        if shared.stopping() {
            return;
        }
        if db.as_ref().is_none_or(NodeDb::is_closed) {
            // Notifications sent while we were away are lost; the sweep
            // finds their rows.
            db = shared
                .reconnect(Some(Instant::now() + shared.config.sweep_every))
                .and_then(|mut conn| conn.listen(&shared.config.store.schema).ok().map(|()| conn));
        }
        let Some(conn) = db.as_mut() else {
            continue;
        };
        let wait = next_page
            .min(next_sweep)
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(20));
        let mut put = Put {
            shared,
            engine,
            busy: Vec::new(),
        };
        let retrying = retries.take_due();
        let result = (|| -> Result<(), QueryError> {
            if !retrying.is_empty() {
                let ids: Vec<u64> = retrying.iter().map(|&(id, _)| id).collect();
                fetch_claimed_again(shared, conn, &ids, &mut put)?;
            }
            // Rows other nodes wrote into our shards, due soon.
            let notified = conn.notified(wait)?;
            if !notified.is_empty() {
                fetch_notified(shared, conn, &notified, &mut put)?;
            }
            while let Ok(shard) = rx.try_recv() {
                fresh.push(shard);
            }
            while let Ok(ids) = refetch.try_recv() {
                fetch_claimed_again(shared, conn, &ids, &mut put)?;
            }
            if !fresh.is_empty() {
                take_over(shared, conn, &mut fresh, &mut put)?;
            }
            if Instant::now() >= next_page {
                next_page = Instant::now() + shared.config.page_every;
                page(shared, conn, &mut put)?;
            }
            if Instant::now() >= next_reap {
                next_reap = Instant::now() + reap_every(shared);
                reap_tombstones(shared, conn)?;
            }
            if Instant::now() >= next_sweep {
                next_sweep = Instant::now() + shared.config.sweep_every;
                let shards = owned(shared);
                if !shards.is_empty() {
                    let now = shared.now_ms();
                    let per_shard = (SWEEP_LIMIT / i64::try_from(shards.len()).unwrap_or(1))
                        .max(SWEEP_PER_SHARD_MIN);
                    // Not past the wheel's own backlog (perf, #16): what is
                    // due after its oldest overdue timer would fire behind
                    // that backlog anyway, and during a burst the sweep
                    // otherwise re-reads, every time, due rows the wheel
                    // holds. A row the wheel lacks fires at most one sweep
                    // after the dispatcher passes its deadline.
                    let until = engine.stats().oldest_overdue_ms.map_or(now, |o| o.min(now));
                    conn.sweep(&shards, until, per_shard, &mut |row| {
                        if put.row(row) {
                            bump(&shared.counters.swept, 1);
                        }
                    })?;
                    if Instant::now() >= next_alarm {
                        next_alarm = Instant::now() + Duration::from_secs(10);
                        let overdue = conn.overdue(&shards, now.saturating_sub(OVERDUE_MS))?;
                        shared
                            .counters
                            .overdue
                            .store(overdue, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            Ok(())
        })();
        // Refused rows come back with their tries; a failed statement
        // tries its batch again.
        let tries: rustc_hash::FxHashMap<u64, u32> = retrying.iter().copied().collect();
        let mut again: Vec<(u64, u32)> = put
            .busy
            .iter()
            .map(|id| (*id, tries.get(id).copied().unwrap_or(0)))
            .collect();
        if result.is_err() {
            again.extend(retrying.iter().copied());
        }
        retries.add(again);
        if let Err(e) = result {
            bump(&shared.counters.db_errors, 1);
            crate::trace::warning!(error = e.to_string(), "pager statement failed; retrying");
            if matches!(e, QueryError::InDoubt(_)) {
                db = None;
            }
        }
    }
}

/// Tombstones deleted per statement, and statements per round: a round
/// holds few row locks at a time and ends; a backlog is finished by the
/// next rounds.
const REAP_BATCH: i64 = 1000;
const REAP_BATCHES: usize = 20;

/// How often tombstones are reaped: a fraction of their retention, so one
/// lives at most ~1.25 × `tombstone_ttl`, and between 1 s and 1 min.
fn reap_every(shared: &Shared) -> Duration {
    (shared.config.tombstone_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Deletes the owned shards' tombstones older than `tombstone_ttl`, in
/// batches of `REAP_BATCH`. Unfenced: a tombstone is needed by no delivery,
/// only by a late cancel's answer, so a stale owner reaping is harmless.
fn reap_tombstones(shared: &Shared, conn: &mut NodeDb) -> Result<(), QueryError> {
    let shards = owned(shared);
    if shards.is_empty() {
        return Ok(());
    }
    let ttl_ms = i64::try_from(shared.config.tombstone_ttl.as_millis()).unwrap_or(i64::MAX);
    for _ in 0..REAP_BATCHES {
        let reaped = conn.reap(&shards, ttl_ms, REAP_BATCH)?;
        if reaped < REAP_BATCH as u64 {
            break;
        }
    }
    Ok(())
}

fn owned(shared: &Shared) -> Vec<u32> {
    shared.owned.read().keys().copied().collect()
}

/// Puts rows into the wheel.
struct Put<'a, P> {
    shared: &'a Shared,
    engine: &'a Scheduler<u64, P>,
    /// Claimed rows the wheel refused because it still held their id: to
    /// fetch again later (see [`Retries`]).
    busy: Vec<u64>,
}

/// Claimed rows to put in the wheel again, because the wheel still held
/// their id when they were loaded.
///
/// Why: a claim that comes back in doubt, or after the lease lapsed by the
/// node's clock, drops its events and asks the keeper to take the shard
/// again; the engine forgets the dropped ids only after the gate returns.
/// If the new epoch's load put the (claimed) rows in first, the wheel
/// refused them as already held, then forgot the ids, and nothing would
/// ever load those rows again while this node keeps the shard: the sweep
/// reads pending rows only. Seen as "answered ok, never delivered" in the
/// database-restart test. A row the engine holds legitimately (in flight,
/// waiting for its acks) is refused again until that delivery ends; once
/// it is acked, the row is no longer claimed and the fetch finds nothing.
#[derive(Default)]
struct Retries {
    /// (when to try, id, tries so far), oldest first.
    due: std::collections::VecDeque<(Instant, u64, u32)>,
}

impl Retries {
    const EVERY: Duration = Duration::from_millis(250);
    /// About two minutes of tries: beyond any ack timeout's redelivery.
    const MOST: u32 = 480;

    fn add(&mut self, ids: impl IntoIterator<Item = (u64, u32)>) {
        let at = Instant::now() + Self::EVERY;
        self.due.extend(
            ids.into_iter()
                .filter(|&(_, tries)| tries < Self::MOST)
                .map(|(id, tries)| (at, id, tries)),
        );
    }

    /// The ids due for another try, with their tries so far.
    fn take_due(&mut self) -> Vec<(u64, u32)> {
        let now = Instant::now();
        let mut out = Vec::new();
        while let Some(&(at, id, tries)) = self.due.front() {
            if at > now {
                break;
            }
            self.due.pop_front();
            out.push((id, tries + 1));
        }
        out
    }
}

impl<P: Codec + Clone + Send + 'static> Put<'_, P> {
    /// Puts one row in the wheel at its deadline (one already past fires at
    /// once); `true` if the wheel did not hold it. Rows of shards no longer
    /// ours are skipped.
    fn row(&mut self, row: Loaded) -> bool {
        self.put(row, false)
    }

    /// [`row`](Self::row), and if the wheel holds the timer already, moves
    /// it to the row's deadline (a reschedule through another node; one
    /// in flight stays as it is).
    fn row_or_move(&mut self, row: Loaded) -> bool {
        self.put(row, true)
    }

    fn put(&mut self, row: Loaded, move_held: bool) -> bool {
        if self.shared.epoch_of(row.shard).is_none() {
            return false;
        }
        let payload = match P::decode(&row.payload) {
            Ok(p) => p,
            Err(e) => {
                // It stays in the table (and in the overdue alarm).
                bump(&self.shared.counters.db_errors, 1);
                crate::trace::error!(
                    id = row.id,
                    error = e.to_string(),
                    "stored payload does not decode"
                );
                return false;
            }
        };
        // With the reminders not yet delivered (see `remind`).
        let reminders = super::remind::offsets(row.deadline_ms, &row.reminders_ms);
        let deadline = Deadline::at_unix_ms(row.deadline_ms);
        match self
            .engine
            .schedule_with_reminders(row.id, deadline, &reminders, payload)
        {
            Ok(()) => true,
            Err(ScheduleError::AlreadyScheduled(_)) => {
                if row.claimed {
                    self.busy.push(row.id);
                }
                if move_held {
                    let _ = self.engine.reschedule(&row.id, deadline);
                }
                false
            }
            Err(e) => {
                bump(&self.shared.counters.db_errors, 1);
                crate::trace::error!(
                    id = row.id,
                    error = e.to_string(),
                    "the wheel refused a row"
                );
                false
            }
        }
    }
}

/// Puts claimed rows back in the wheel, marked for redelivery (see the
/// acker: their delivery was claimed under an older epoch).
fn fetch_claimed_again<P: Codec + Clone + Send + 'static>(
    shared: &Shared,
    conn: &mut NodeDb,
    ids: &[u64],
    put: &mut Put<'_, P>,
) -> Result<(), QueryError> {
    let mut keys: Vec<(i32, i64)> = ids
        .iter()
        .map(|&id| {
            (
                i32::try_from(shared.map.shard_of_id(id)).unwrap_or(i32::MAX),
                id as i64,
            )
        })
        .collect();
    keys.sort_unstable();
    let (shards, ids): (Vec<i32>, Vec<i64>) = keys.into_iter().unzip();
    conn.fetch(&shards, &ids, 1, &mut |mut row| {
        shared.redeliver.lock().insert(row.id);
        row.claimed = true;
        put.row(row);
    })
}

/// Puts the pending rows named in notifications (comma-separated ids) into
/// the wheel, for the shards this node owns.
fn fetch_notified<P: Codec + Clone + Send + 'static>(
    shared: &Shared,
    conn: &mut NodeDb,
    notified: &[String],
    put: &mut Put<'_, P>,
) -> Result<(), QueryError> {
    let (mut shards, mut ids) = (Vec::new(), Vec::new());
    for id in notified.iter().flat_map(|n| n.split(',')) {
        let Ok(id) = id.parse::<u64>() else { continue };
        let shard = shared.map.shard_of_id(id);
        if shared.epoch_of(shard).is_some() {
            shards.push(i32::try_from(shard).unwrap_or(i32::MAX));
            ids.push(id as i64);
        }
    }
    for (s, i) in shards
        .chunks(crate::MAX_BATCH)
        .zip(ids.chunks(crate::MAX_BATCH))
    {
        conn.fetch(s, i, 0, &mut |row| {
            if put.row_or_move(row) {
                bump(&shared.counters.notified, 1);
            }
        })?;
    }
    Ok(())
}

/// Loads newly acquired shards: the rows due within [`FIRST_SPAN_MS`]
/// (overdue ones, and claimed ones to redeliver at once), then the rest:
/// pending rows up to the horizon's end, and claimed ones. The wheel fires what it holds
/// while the rest streams in: the first two queries read a few rows, the
/// last may read millions (perf, #16). The split point is one value, so
/// each row is read by exactly one of the two pending queries; a row that
/// falls due while the rest is read fires as soon as it is put in.
fn take_over<P: Codec + Clone + Send + 'static>(
    shared: &Shared,
    conn: &mut NodeDb,
    fresh: &mut Vec<(u32, u64)>,
    put: &mut Put<'_, P>,
) -> Result<(), QueryError> {
    let shards: Vec<u32> = fresh
        .iter()
        .filter(|&&(s, e)| shared.epoch_of(s) == Some(e))
        .map(|&(s, _)| s)
        .collect();
    if !shards.is_empty() {
        let mut loaded = 0;
        let mut each = |row: Loaded| {
            if row.claimed {
                shared.redeliver.lock().insert(row.id);
            }
            loaded += u64::from(put.row(row));
        };
        let end = shared
            .horizon_end_ms
            .load(std::sync::atomic::Ordering::SeqCst);
        let split = shared.now_ms().saturating_add(FIRST_SPAN_MS).min(end);
        conn.load_first(&shards, split, &mut each)?;
        conn.load_rest(&shards, split, end, &mut each)?;
        conn.load_reminding(&shards, end, &mut each)?;
        bump(&shared.counters.loaded, loaded);
        crate::trace::info!(
            shards = shards.len(),
            rows = loaded,
            "loaded acquired shards"
        );
    }
    fresh.clear();
    Ok(())
}

/// Moves the horizon's end forward and pages in the rows it passed.
fn page<P: Codec + Clone + Send + 'static>(
    shared: &Shared,
    conn: &mut NodeDb,
    put: &mut Put<'_, P>,
) -> Result<(), QueryError> {
    use std::sync::atomic::Ordering::SeqCst;
    let new_end = shared.now_ms().saturating_add(ms(shared.config.horizon));
    // Moved before the read: a schedule committed after this read sees the
    // new end and hints the wheel itself (see `NodeScheduler::hint`).
    let old_end = shared.horizon_end_ms.fetch_max(new_end, SeqCst);
    if new_end <= old_end {
        return Ok(());
    }
    let shards = owned(shared);
    if shards.is_empty() {
        return Ok(());
    }
    let mut loaded = 0;
    let result = conn.load_pending(&shards, old_end, new_end, &mut |row| {
        loaded += u64::from(put.row(row));
    });
    bump(&shared.counters.loaded, loaded);
    if result.is_err() {
        // Page the same span again next time (the sweep covers it meanwhile).
        let _ = shared
            .horizon_end_ms
            .compare_exchange(new_end, old_end, SeqCst, SeqCst);
    }
    result
}
