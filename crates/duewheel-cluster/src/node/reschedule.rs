//! Reschedules on a writer thread: one statement per reschedule, moving a
//! pending row's deadline (and its pending reminders by as much) where the
//! row lock decides against a concurrent claim, as for a cancel.
//!
//! Invariant: `Ok` only for a row a committed statement moved (or, after a
//! connection failure, moved again to the same deadline: the move is
//! idempotent); `AlreadyFired` only for a row found claimed (or ended, a
//! tombstone), `NotFound`
//! only for a row found absent, neither after a connection failure
//! (`InDoubt`: the first try may have moved it before it fired).
//!
//! The owner's wheel learns of the move as of a schedule: this node's own
//! wheel directly (`NodeScheduler::reschedule`), another owner's by
//! notification (its pager moves the copy it holds). A copy that fires at
//! the old deadline anyway claims nothing (the claim reads the deadline
//! from the table) and leaves the wheel; the sweep then fires the row at
//! its new deadline.

use super::sql::{NodeDb, Rescheduled, is_transient};
use super::{Shared, bump};
use crate::error::QueryError;
use duewheel::RescheduleError;
use std::time::{Duration, Instant};

/// A reschedule's answer: the moved row's payload bytes and reminder times.
pub(super) type Outcome = Result<(Vec<u8>, Vec<u64>), RescheduleError>;

/// Where a reschedule's [`Outcome`] goes.
pub(super) type Reply = super::reply::Reply<Outcome>;

/// One reschedule: shard, id, new deadline, where to answer.
pub(super) struct Request {
    pub(super) shard: u32,
    pub(super) id: u64,
    pub(super) deadline_ms: i64,
    pub(super) reply: Reply,
}

pub(super) fn write(shared: &Shared, db: &mut Option<NodeDb>, requests: Vec<Request>) {
    for request in requests {
        let outcome = write_one(shared, db, &request);
        let _ = request.reply.send(outcome);
    }
}

fn write_one(shared: &Shared, db: &mut Option<NodeDb>, request: &Request) -> Outcome {
    let deadline = Instant::now() + shared.config.op_timeout;
    let mut in_doubt = false;
    let moved = loop {
        if db.as_ref().is_none_or(NodeDb::is_closed) {
            *db = shared.reconnect(Some(deadline));
        }
        let Some(conn) = db.as_mut() else {
            return Err(if in_doubt {
                RescheduleError::InDoubt
            } else {
                RescheduleError::Unavailable
            });
        };
        match conn.reschedule(request.shard, request.id, request.deadline_ms) {
            Ok(moved) => break moved,
            Err(e) if !in_doubt && !is_transient(&e) && matches!(e, QueryError::Refused(_)) => {
                bump(&shared.counters.db_errors, 1);
                crate::trace::warning!(error = e.to_string(), "reschedule refused");
                return Err(RescheduleError::Unavailable);
            }
            Err(e) => {
                bump(&shared.counters.db_errors, 1);
                in_doubt |= matches!(e, QueryError::InDoubt(_));
                if Instant::now() >= deadline {
                    return Err(if in_doubt {
                        RescheduleError::InDoubt
                    } else {
                        RescheduleError::Unavailable
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    match moved {
        Rescheduled::Moved {
            payload,
            reminders_ms,
        } => {
            if shared.epoch_of(request.shard).is_none() {
                // Best effort, as for a schedule: a lost notification
                // leaves the move to the sweep (see the module doc).
                let notified = db.as_mut().is_some_and(|conn| {
                    conn.notify(&shared.config.store.schema, &[request.id.to_string()])
                        .is_ok()
                });
                if !notified {
                    bump(&shared.counters.db_errors, 1);
                }
            }
            Ok((payload, reminders_ms))
        }
        _ if in_doubt => Err(RescheduleError::InDoubt),
        Rescheduled::Claimed => Err(RescheduleError::AlreadyFired),
        Rescheduled::Absent => Err(RescheduleError::NotFound),
    }
}
