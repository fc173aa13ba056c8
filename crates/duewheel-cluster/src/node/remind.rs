//! Reminders and snoozes on a node: the table's side of two things the
//! engine's wheel does in memory.
//!
//! - **Reminders**: a row keeps the reminder times not yet delivered
//!   (`timers.reminders_ms`, ascending). The owner's wheel holds the timer
//!   with those reminders from the moment it learns of it, past the
//!   horizon too (hint, notification, takeover load: see
//!   [`held_from_ms`]; the horizon pages by deadline only, so reminders
//!   cost no scan each page, and the wheel's memory grows by the timers
//!   with reminders pending); when one
//!   fires, [`admit`] delivers it only if one fenced statement removed the
//!   row's earliest pending reminder time, due by now ("reminder
//!   delivered"): the row is pending (a cancelled or claimed row delivers
//!   no reminder) and this node holds the shard's epoch. A reminder never
//!   claims the row; only the expiry claims.
//! - **Snooze**: [`Snoozes`] writes a snoozed delivery back as pending, due
//!   at the snooze's end, if this node's claim (epoch and attempt) still
//!   holds the row; whoever owns the shard later fires it then. Written on
//!   a thread of its own, after the snooze returned: a snooze never waits
//!   for the database (nor blocks an async runtime's thread).
//!
//! Invariant: a reminder time leaves the row at most once, in the
//! statement that lets its event through, so a reminder is delivered at
//! most once whichever node fires it (at most: reminders are not acked,
//! so one whose node dies between that statement and the consumer is not
//! repeated), and never after the row was cancelled or claimed.

use super::sql::NodeDb;
use super::{KeeperMsg, Shared, bump};
use crate::error::QueryError;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use duewheel::{Event, EventKind, MAX_REMINDERS, Round};
use parking_lot::Mutex;
use rustc_hash::FxHashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The reminder times `before` ahead of `deadline_ms` (UTC ms), ascending,
/// as the array literal the insert takes (`{}` for none). A reminder
/// before the epoch is due at 0 (at once).
pub(super) fn array_literal(reminders_ms: &[u64]) -> Result<String, &'static str> {
    if reminders_ms.len() > MAX_REMINDERS {
        return Err("more reminders than MAX_REMINDERS");
    }
    let mut sorted = reminders_ms.to_vec();
    sorted.sort_unstable();
    let mut out = String::from("{");
    for (at, r) in sorted.iter().enumerate() {
        let r = i64::try_from(*r).map_err(|_| "reminder beyond i64::MAX milliseconds")?;
        if at > 0 {
            out.push(',');
        }
        out.push_str(&r.to_string());
    }
    out.push('}');
    Ok(out)
}

/// Reminder times (UTC ms) for offsets `before` a deadline.
pub(super) fn times_ms(deadline_ms: u64, before: &[Duration]) -> Vec<u64> {
    before
        .iter()
        .map(|b| deadline_ms.saturating_sub(super::ms(*b)))
        .collect()
}

/// The wheel's offsets before `deadline_ms` for pending reminder times: one
/// already past fires at once (the engine moves it to now).
pub(super) fn offsets(deadline_ms: u64, reminders_ms: &[u64]) -> Vec<Duration> {
    reminders_ms
        .iter()
        .map(|&r| Duration::from_millis(deadline_ms.saturating_sub(r)))
        .collect()
}

/// From when the owner's wheel holds a timer, for the horizon test: a
/// timer with reminders still to deliver at once (0), whatever its
/// deadline, so that paging by deadline (indexed) never has to look for
/// reminders; any other at its deadline. See the module doc.
pub(super) fn held_from_ms(deadline_ms: u64, reminders_ms: &[u64]) -> u64 {
    if reminders_ms.is_empty() {
        deadline_ms
    } else {
        0
    }
}

/// Tries at a refused statement (a deadlock victim, say) before the round's
/// reminders are dropped.
const TRIES: u32 = 3;

/// Keeps in `round` the reminders whose delivery the table granted (see the
/// module doc) and every other event as it is; drops the rest. A dropped
/// reminder leaves its timer in the wheel (it is not in flight, so the
/// engine's discard does nothing), waiting for its next stage.
pub(super) fn admit<P>(shared: &Shared, db: &Mutex<Option<NodeDb>>, round: &mut Round<'_, u64, P>) {
    let items: Vec<(u32, u64, u64)> = round
        .events()
        .filter(|e| matches!(e.kind, EventKind::Reminder(_)))
        .filter_map(|e| {
            let shard = shared.map.shard_of_id(e.id);
            let epoch = shared.epoch_of(shard).filter(|_| !shared.stopping())?;
            Some((shard, epoch, e.id))
        })
        .collect();
    let delivered: FxHashSet<u64> = if items.is_empty() {
        FxHashSet::default()
    } else {
        remind(shared, db, &items)
    };
    // A delivered reminder names the epoch its statement was fenced by, so
    // the delivery fence judges it like a claimed expiry.
    let epochs: rustc_hash::FxHashMap<u64, u64> =
        items.iter().map(|&(_, epoch, id)| (id, epoch)).collect();
    round.retain(|e| {
        if !matches!(e.kind, EventKind::Reminder(_)) {
            return true;
        }
        match epochs.get(&e.id) {
            Some(&epoch) if delivered.contains(&e.id) => {
                e.claim = epoch;
                true
            }
            _ => false,
        }
    });
}

fn remind(
    shared: &Shared,
    db: &Mutex<Option<NodeDb>>,
    items: &[(u32, u64, u64)],
) -> FxHashSet<u64> {
    let mut backoff = Duration::from_millis(20);
    for _ in 0..TRIES {
        let mut db = db.lock();
        if db.as_ref().is_none_or(NodeDb::is_closed) {
            *db = shared.reconnect(Some(Instant::now() + shared.config.op_timeout));
        }
        let Some(conn) = db.as_mut() else {
            return FxHashSet::default();
        };
        match conn.remind(items, shared.now_ms()) {
            Ok((ids, fence)) => {
                for &shard in &fence.fenced {
                    bump(&shared.counters.fenced, 1);
                    if let Some(&(_, epoch, _)) = items.iter().find(|i| i.0 == shard) {
                        let _ = shared.keeper.send(KeeperMsg::Lost { shard, epoch });
                    }
                }
                return ids.into_iter().collect();
            }
            Err(QueryError::Refused(e)) => {
                bump(&shared.counters.db_errors, 1);
                crate::trace::warning!(error = e.to_string(), "reminder refused; retrying");
                drop(db);
                std::thread::sleep(backoff);
                backoff *= 2;
            }
            Err(QueryError::InDoubt(e)) => {
                // Delivered at most once: whatever it removed is not
                // delivered now, nor by anyone later.
                bump(&shared.counters.db_errors, 1);
                crate::trace::warning!(error = e.to_string(), "reminder in doubt; dropped");
                *db = None;
                return FxHashSet::default();
            }
        }
    }
    FxHashSet::default()
}

/// Snoozes on their way to the table: a thread of their own, started at
/// the first snooze, so a snooze (`snooze_async` on a runtime thread
/// included) never waits for the database.
#[derive(Default)]
pub(super) struct Snoozes {
    tx: Mutex<Option<Sender<Snooze>>>,
}

/// One snoozed delivery: id, claim epoch, attempt, due again at (UTC ms).
struct Snooze {
    id: u64,
    epoch: u64,
    attempt: u32,
    until_ms: u64,
}

impl Snoozes {
    /// Queues `event`'s snooze for writing back (see the module doc). Best
    /// effort: if it cannot be written (the shard moved on, the database
    /// is away, the node stops), the row stays claimed and the next owner
    /// redelivers it at once, as before snoozes were written back; this
    /// node's wheel still fires it at `until_ms`.
    pub(super) fn snoozed<P>(&self, shared: &Arc<Shared>, event: &Event<u64, P>, until_ms: u64) {
        let Some(epoch) = shared.claim_epochs.lock().get(&event.id).copied() else {
            return;
        };
        let snooze = Snooze {
            id: event.id,
            epoch,
            attempt: event.attempt,
            until_ms,
        };
        let mut tx = self.tx.lock();
        if tx.is_none() {
            let (sender, rx) = crossbeam_channel::unbounded();
            let thread_shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("duewheel-snoozer".into())
                .spawn(move || write_back(&thread_shared, &rx));
            if spawned.is_err() {
                bump(&shared.counters.db_errors, 1);
                return;
            }
            *tx = Some(sender);
        }
        if let Some(tx) = tx.as_ref() {
            let _ = tx.send(snooze);
        }
    }
}

/// The snoozer thread: writes each snooze back, until the gate is dropped
/// or the node stops.
fn write_back(shared: &Shared, rx: &Receiver<Snooze>) {
    let mut db: Option<NodeDb> = None;
    loop {
        let snooze = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(snooze) => snooze,
            Err(RecvTimeoutError::Timeout) if shared.stopping() => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if shared.stopping() {
            return;
        }
        write_one(shared, &mut db, &snooze);
    }
}

fn write_one(shared: &Shared, db: &mut Option<NodeDb>, s: &Snooze) {
    let shard = shared.map.shard_of_id(s.id);
    let mut backoff = Duration::from_millis(20);
    for _ in 0..TRIES {
        if db.as_ref().is_none_or(NodeDb::is_closed) {
            *db = shared.reconnect(Some(Instant::now() + shared.config.op_timeout));
        }
        let Some(conn) = db.as_mut() else {
            return;
        };
        match conn.snooze(shard, s.id, s.epoch, s.attempt, s.until_ms) {
            Ok((current, _written)) => {
                if current != Some(s.epoch) {
                    bump(&shared.counters.fenced, 1);
                    let epoch = s.epoch;
                    let _ = shared.keeper.send(KeeperMsg::Lost { shard, epoch });
                }
                return;
            }
            Err(QueryError::Refused(e)) => {
                bump(&shared.counters.db_errors, 1);
                crate::trace::warning!(error = e.to_string(), "snooze write-back refused");
                std::thread::sleep(backoff);
                backoff *= 2;
            }
            Err(QueryError::InDoubt(e)) => {
                // Either way is safe: pending due at `until_ms`, or still
                // claimed (redelivered at once by a next owner).
                bump(&shared.counters.db_errors, 1);
                crate::trace::warning!(error = e.to_string(), "snooze write-back in doubt");
                *db = None;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reminder_times_are_written_ascending_as_an_array_literal() {
        assert_eq!(array_literal(&[]).unwrap(), "{}");
        assert_eq!(array_literal(&[30, 10, 20]).unwrap(), "{10,20,30}");
        assert!(array_literal(&[1, 2, 3, 4, 5]).is_err());
        assert!(array_literal(&[u64::MAX]).is_err());
    }

    #[test]
    fn offsets_and_times_are_inverse_and_a_reminding_timer_is_held_at_once() {
        let before = [Duration::from_secs(60), Duration::from_secs(10)];
        let times = times_ms(100_000, &before);
        assert_eq!(times, vec![40_000, 90_000]);
        assert_eq!(offsets(100_000, &times), before.to_vec());
        assert_eq!(held_from_ms(100_000, &times), 0);
        assert_eq!(held_from_ms(100_000, &[]), 100_000);
        // A reminder before the epoch is due at 0.
        assert_eq!(times_ms(5, &[Duration::from_secs(1)]), vec![0]);
    }
}
