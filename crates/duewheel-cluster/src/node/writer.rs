//! Writer threads: schedules and cancels from every caller, batched into
//! commits of up to `batch_rows` rows or `batch_wait`, and answered only
//! after the commit.
//!
//! Invariant: an `Outcome::Stored` answer is given only for a row a
//! committed statement inserted (or, after a connection failure, that a
//! later statement found stored with the same deadline and payload); an
//! `Unavailable` answer only when no statement carrying the row can have
//! committed. Anything else is `InDoubt`.
//!
//! In doubt, the row decides where it can. A schedule whose commit was in
//! doubt is run again; a row found with the same deadline and payload
//! (pending, claimed, or its tombstone: it already fired) is `Stored`. A
//! cancel in doubt is run again after the reconnect: a pending row is
//! deleted now (`Cancelled`), a claimed row or a tombstone (state 2, fired
//! and acked, kept for `tombstone_ttl`) means the fire won (`AlreadyFired`:
//! our first try cannot have deleted a row that is still there). Only an
//! absent row stays `InDoubt`: our first try may have deleted it, or it
//! never existed, or another cancel deleted it, and nothing in the table
//! tells these apart (the payload a `Cancelled` answer carries is gone with
//! the row, too). Caveat: an id re-scheduled, fired and acked between the
//! two tries would answer `AlreadyFired` for the new timer.

use super::sql::{NodeDb, is_transient};
use super::{Shared, bump};
use crate::error::QueryError;
use crate::{MAX_PAYLOAD_BYTES, ShardMap};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use duewheel::CancelError;
use duewheel::Codec;
use rustc_hash::{FxHashMap, FxHashSet};
use std::time::{Duration, Instant};

/// A timer ready for the table.
pub(super) struct Row {
    shard: i32,
    id: i64,
    deadline: i64,
    bytes: Vec<u8>,
    /// The pending reminder times as an array literal (`{}` for none).
    reminders: String,
    /// From when the owner's wheel holds it (see `remind::held_from_ms`).
    held_from_ms: u64,
}

impl Row {
    /// Validates and encodes one schedule.
    pub(super) fn new<P: Codec>(
        map: &ShardMap,
        id: u64,
        deadline_ms: u64,
        reminders_ms: &[u64],
        payload: &P,
    ) -> Result<Self, &'static str> {
        let deadline =
            i64::try_from(deadline_ms).map_err(|_| "deadline beyond i64::MAX milliseconds")?;
        let mut bytes = Vec::new();
        payload.encode(&mut bytes);
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err("payload larger than 1 MiB encoded");
        }
        Ok(Self {
            // Shards are < MAX_SHARDS, so they fit an int.
            shard: i32::try_from(map.shard_of_id(id)).unwrap_or(i32::MAX),
            id: id as i64,
            deadline,
            bytes,
            reminders: super::remind::array_literal(reminders_ms)?,
            held_from_ms: super::remind::held_from_ms(deadline_ms, reminders_ms),
        })
    }
}

/// What became of one row of a schedule.
#[derive(Debug)]
pub(super) enum Outcome {
    Stored,
    Duplicate,
    Unavailable(String),
    InDoubt,
    ShuttingDown,
}

/// What a cancel found.
#[derive(Debug)]
pub(super) enum Cancelled {
    /// The row was pending; deleted. Its payload bytes.
    Deleted(Vec<u8>),
    /// The row is claimed: the fire won.
    Claimed,
    /// No row.
    Absent,
}

pub(super) enum Request {
    Schedule {
        rows: Vec<Row>,
        reply: Reply,
    },
    Cancel {
        shard: u32,
        id: u64,
        reply: CancelReply,
    },
    Reschedule(super::reschedule::Request),
}

impl Request {
    fn rows(&self) -> usize {
        match self {
            Self::Schedule { rows, .. } => rows.len(),
            Self::Cancel { .. } | Self::Reschedule(_) => 1,
        }
    }

    fn refuse(self) {
        match self {
            Self::Schedule { rows, reply } => {
                let _ = reply.send(rows.iter().map(|_| Outcome::ShuttingDown).collect());
            }
            Self::Cancel { reply, .. } => {
                let _ = reply.send(Err(CancelError::ShuttingDown));
            }
            Self::Reschedule(r) => {
                let _ = r.reply.send(Err(duewheel::RescheduleError::ShuttingDown));
            }
        }
    }
}

pub(super) fn run(shared: &Shared, db: NodeDb, rx: &Receiver<Request>) {
    let mut db = Some(db);
    let poll = Duration::from_millis(100);
    loop {
        let first = match rx.recv_timeout(poll) {
            Ok(request) => request,
            // Handles may outlive the node; their requests then find the
            // channel closed, or no reply, and answer `ShuttingDown`.
            Err(RecvTimeoutError::Timeout) if shared.stopping() => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if shared.stopping() {
            first.refuse();
            while let Ok(request) = rx.try_recv() {
                request.refuse();
            }
            continue;
        }
        // Gather a commit's worth: up to `batch_rows` rows, or what arrives
        // within `batch_wait` of the first.
        let until = Instant::now() + shared.config.batch_wait;
        let mut rows = first.rows();
        let mut batch = vec![first];
        while rows < shared.config.batch_rows {
            match rx.recv_deadline(until) {
                Ok(request) => {
                    rows += request.rows();
                    batch.push(request);
                }
                Err(_) => break,
            }
        }
        let mut schedules = Vec::new();
        let mut cancels = Vec::new();
        let mut reschedules = Vec::new();
        for request in batch {
            match request {
                Request::Schedule { rows, reply } => schedules.push((rows, reply)),
                Request::Cancel { shard, id, reply } => cancels.push((shard, id, reply)),
                Request::Reschedule(r) => reschedules.push(r),
            }
        }
        if !schedules.is_empty() {
            write_schedules(shared, &mut db, schedules);
        }
        if !cancels.is_empty() {
            write_cancels(shared, &mut db, cancels);
        }
        if !reschedules.is_empty() {
            super::reschedule::write(shared, &mut db, reschedules);
        }
    }
}

/// A connection that is open, reconnecting until `deadline` if needed.
fn connected<'a>(
    shared: &Shared,
    db: &'a mut Option<NodeDb>,
    deadline: Instant,
) -> Option<&'a mut NodeDb> {
    if db.as_ref().is_none_or(NodeDb::is_closed) {
        *db = shared.reconnect_for_rows(Some(deadline));
    }
    db.as_mut()
}

pub(super) type Reply = super::reply::Reply<Vec<Outcome>>;

fn write_schedules(shared: &Shared, db: &mut Option<NodeDb>, requests: Vec<(Vec<Row>, Reply)>) {
    let all: Vec<&Row> = requests.iter().flat_map(|(rows, _)| rows).collect();
    let mut outcomes: Vec<Option<Outcome>> = (0..all.len()).map(|_| None).collect();
    // The same id twice in one commit: the later ones are duplicates.
    let mut seen = FxHashSet::default();
    let mut send = Vec::with_capacity(all.len());
    for (at, row) in all.iter().enumerate() {
        if seen.insert(row.id) {
            send.push(at);
        } else {
            outcomes[at] = Some(Outcome::Duplicate);
        }
    }
    for chunk in send.chunks(shared.config.batch_rows) {
        let rows: Vec<&Row> = chunk.iter().map(|&at| all[at]).collect();
        for (&at, outcome) in chunk.iter().zip(insert(shared, db, &rows)) {
            outcomes[at] = Some(outcome);
        }
    }
    notify_owners(shared, db, &all, &outcomes);
    let mut outcomes = outcomes.into_iter();
    for (rows, reply) in &requests {
        let mine = outcomes
            .by_ref()
            .take(rows.len())
            .map(|o| o.unwrap_or(Outcome::InDoubt))
            .collect();
        let _ = reply.send(mine);
    }
}

/// Most bytes of ids in one notification (PostgreSQL's limit is 8000).
const NOTIFY_BYTES: usize = 7900;

/// Tells the owners of stored rows due within the horizon that they exist,
/// so a row written on a node that does not own its shard fires on time,
/// not at the owner's next sweep. Best effort: a lost notification (a
/// failed statement, an owner reconnecting) leaves the row to the sweep.
fn notify_owners(
    shared: &Shared,
    db: &mut Option<NodeDb>,
    rows: &[&Row],
    outcomes: &[Option<Outcome>],
) {
    let near = shared
        .now_ms()
        .saturating_add(super::ms(shared.config.horizon));
    let mut chunks = vec![String::new()];
    for (row, outcome) in rows.iter().zip(outcomes) {
        let stored = matches!(outcome, Some(Outcome::Stored));
        // Our own shards' rows go into our wheel (`NodeScheduler::hint`).
        let ours = || {
            shared
                .epoch_of(u32::try_from(row.shard).unwrap_or(u32::MAX))
                .is_some()
        };
        if !stored || row.held_from_ms >= near || ours() {
            continue;
        }
        let chunk = chunks.last_mut().expect("never empty");
        if chunk.len() > NOTIFY_BYTES {
            chunks.push(String::new());
        }
        let chunk = chunks.last_mut().expect("never empty");
        if !chunk.is_empty() {
            chunk.push(',');
        }
        chunk.push_str(&(row.id as u64).to_string());
    }
    if chunks[0].is_empty() {
        return;
    }
    let Some(conn) = db.as_mut() else {
        return;
    };
    if conn.notify(&shared.config.store.schema, &chunks).is_err() {
        bump(&shared.counters.db_errors, 1);
    }
}

/// Inserts one chunk; resolves a connection failure by retrying until the
/// operation timeout (an insert of the same rows is idempotent).
fn insert(shared: &Shared, db: &mut Option<NodeDb>, rows: &[&Row]) -> Vec<Outcome> {
    let shards: Vec<i32> = rows.iter().map(|r| r.shard).collect();
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let deadlines: Vec<i64> = rows.iter().map(|r| r.deadline).collect();
    let payloads: Vec<&[u8]> = rows.iter().map(|r| &r.bytes[..]).collect();
    let reminders: Vec<&str> = rows.iter().map(|r| &r.reminders[..]).collect();
    let deadline = Instant::now() + shared.config.op_timeout;
    let all = |o: &dyn Fn() -> Outcome| rows.iter().map(|_| o()).collect();
    let mut in_doubt = false;
    loop {
        let Some(conn) = connected(shared, db, deadline) else {
            return if in_doubt {
                all(&|| Outcome::InDoubt)
            } else {
                all(&|| Outcome::Unavailable("cannot reach the database".into()))
            };
        };
        let written = conn.insert(&shards, &ids, &deadlines, &payloads, &reminders);
        let written = match written {
            Ok(written) => written,
            Err(e) if !in_doubt && !is_transient(&e) && matches!(e, QueryError::Refused(_)) => {
                bump(&shared.counters.db_errors, 1);
                let reason = e.to_string();
                return all(&|| Outcome::Unavailable(reason.clone()));
            }
            Err(e) => {
                bump(&shared.counters.db_errors, 1);
                crate::trace::warning!(error = e.to_string(), "insert failed; retrying");
                in_doubt |= matches!(e, QueryError::InDoubt(_));
                // Refused on a retry: still in doubt about the first try.
                if Instant::now() >= deadline {
                    return all(&|| Outcome::InDoubt);
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let written: FxHashSet<u64> = written.into_iter().collect();
        let mut ours: FxHashSet<u64> = FxHashSet::default();
        if written.len() < rows.len() {
            // A row skipped as existing with the same deadline and payload
            // is this schedule's (our own first try's, if the connection
            // failed, or the caller's earlier try): scheduling is idempotent.
            match conn.same_rows(&shards, &ids, &deadlines, &payloads) {
                Ok(same) => ours = same.into_iter().collect(),
                Err(_) => return all(&|| Outcome::InDoubt),
            }
        }
        return rows
            .iter()
            .map(|r| {
                let id = r.id as u64;
                if written.contains(&id) || ours.contains(&id) {
                    Outcome::Stored
                } else {
                    Outcome::Duplicate
                }
            })
            .collect();
    }
}

pub(super) type CancelReply = super::reply::Reply<Result<Cancelled, CancelError>>;

fn write_cancels(shared: &Shared, db: &mut Option<NodeDb>, cancels: Vec<(u32, u64, CancelReply)>) {
    let deadline = Instant::now() + shared.config.op_timeout;
    // In lock order (see `sql`): by shard, then by the stored id.
    let mut keys: Vec<(i32, i64)> = cancels
        .iter()
        .map(|&(shard, id, _)| (i32::try_from(shard).unwrap_or(i32::MAX), id as i64))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let (shards, ids): (Vec<i32>, Vec<i64>) = keys.into_iter().unzip();
    // After a connection failure the delete is run again: what it deletes
    // now, or finds claimed, is a sure answer; what it finds gone may have
    // been deleted by the first try, so those ids stay in doubt.
    let mut in_doubt = false;
    let found = loop {
        let Some(conn) = connected(shared, db, deadline) else {
            let e = if in_doubt {
                CancelError::InDoubt
            } else {
                CancelError::Unavailable("cannot reach the database".into())
            };
            for (_, _, reply) in &cancels {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        };
        match conn.cancel(&shards, &ids) {
            Ok(found) => break found,
            Err(e) if !in_doubt && !is_transient(&e) && matches!(e, QueryError::Refused(_)) => {
                bump(&shared.counters.db_errors, 1);
                for (_, _, reply) in &cancels {
                    let _ = reply.send(Err(CancelError::Unavailable(e.to_string())));
                }
                return;
            }
            Err(e) => {
                bump(&shared.counters.db_errors, 1);
                in_doubt |= matches!(e, QueryError::InDoubt(_));
                if Instant::now() >= deadline {
                    for (_, _, reply) in &cancels {
                        let _ = reply.send(Err(CancelError::InDoubt));
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let (deleted, claimed) = found;
    let mut deleted: FxHashMap<u64, Vec<u8>> = deleted.into_iter().collect();
    let claimed: FxHashSet<u64> = claimed.into_iter().map(|(id, _, _)| id).collect();
    for (_, id, reply) in cancels {
        // A second cancel of one id in the same commit finds it gone.
        let outcome = match deleted.remove(&id) {
            Some(bytes) => Ok(Cancelled::Deleted(bytes)),
            None if claimed.contains(&id) => Ok(Cancelled::Claimed),
            None if in_doubt => Err(CancelError::InDoubt),
            None => Ok(Cancelled::Absent),
        };
        let _ = reply.send(outcome);
    }
}
