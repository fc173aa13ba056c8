//! The gate: the engine's dispatcher asks it before every delivery, and it
//! claims the rows in one fenced statement (see the core's
//! [`duewheel::Hooks`]).
//!
//! Invariant: an event is kept only if its row was claimed, in this round,
//! under the epoch this node holds for its shard; every other event is
//! dropped (and the engine forgets it). A claim in doubt delivers nothing:
//! its shards are taken again (epoch + 1) and reloaded, so whatever that
//! statement did is redelivered from the table.

use super::sql::NodeDb;
use super::{KeeperMsg, Shared, bump};
use crate::error::QueryError;
use crossbeam_channel::Sender;
use duewheel::{Event, EventKind, Hooks, Round};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::Duration;

pub(super) struct Gate {
    shared: Arc<Shared>,
    db: Mutex<Option<NodeDb>>,
    /// Ended timers, for the acker to delete.
    acks: Sender<u64>,
    /// Snoozed deliveries, to write back (see `remind`).
    snoozes: super::remind::Snoozes,
}

impl Gate {
    pub(super) fn new(shared: Arc<Shared>, db: NodeDb, acks: Sender<u64>) -> Self {
        Self {
            shared,
            db: Mutex::new(Some(db)),
            acks,
            snoozes: super::remind::Snoozes::default(),
        }
    }
}

impl<P: Clone> Hooks<u64, P> for Gate {
    fn admit(&self, round: &mut Round<'_, u64, P>) {
        // Reminders never claim (see `remind`); only expiries reach the claim.
        super::remind::admit(&self.shared, &self.db, round);
        let shared = &*self.shared;
        let mut backoff = Duration::from_millis(50);
        loop {
            // Only shards this node holds now; the rest left with their
            // shard (the new owner fires them from its own load).
            let mut items = Vec::with_capacity(round.len());
            let mut redeliver = Vec::with_capacity(round.len());
            let mut marked = shared.redeliver.lock();
            round.retain(|event| {
                if matches!(event.kind, EventKind::Reminder(_)) {
                    return true;
                }
                let shard = shared.map.shard_of_id(event.id);
                match shared.epoch_of(shard) {
                    Some(epoch) if !shared.stopping() => {
                        items.push((shard, epoch, event.id));
                        // The engine's own redelivery, or a row loaded as
                        // claimed: it may take a claimed row.
                        redeliver.push(event.attempt > 1 || marked.contains(&event.id));
                        true
                    }
                    _ => {
                        marked.remove(&event.id);
                        false
                    }
                }
            });
            drop(marked);
            if items.is_empty() {
                return;
            }
            let mut db = self.db.lock();
            if db.as_ref().is_none_or(NodeDb::is_closed) {
                *db = shared.reconnect(None);
                continue;
            }
            let conn = db.as_mut().expect("connected above");
            match conn.claim(&items, &redeliver, shared.now_ms()) {
                Ok(claimed) => {
                    for &shard in &claimed.fence.fenced {
                        bump(&shared.counters.fenced, 1);
                        if let Some(&(_, epoch, _)) = items.iter().find(|i| i.0 == shard) {
                            let _ = shared.keeper.send(KeeperMsg::Lost { shard, epoch });
                        }
                    }
                    let epochs: FxHashMap<u32, u64> =
                        items.iter().map(|&(s, e, _)| (s, e)).collect();
                    let attempts: FxHashMap<u64, u32> = claimed.ids.into_iter().collect();
                    let mut claim_epochs = shared.claim_epochs.lock();
                    let mut marked = shared.redeliver.lock();
                    round.retain(|event| match attempts.get(&event.id) {
                        _ if matches!(event.kind, EventKind::Reminder(_)) => true,
                        Some(&attempt) => {
                            marked.remove(&event.id);
                            event.attempt = attempt.max(1);
                            bump(&shared.counters.claimed, 1);
                            if attempt > 1 {
                                bump(&shared.counters.redelivered, 1);
                            }
                            let shard = shared.map.shard_of_id(event.id);
                            if let Some(&epoch) = epochs.get(&shard) {
                                claim_epochs.insert(event.id, epoch);
                            }
                            true
                        }
                        // Cancelled meanwhile (the row is gone), fenced, or
                        // not due by the table's deadline: nothing to deliver.
                        None => {
                            marked.remove(&event.id);
                            false
                        }
                    });
                    return;
                }
                Err(QueryError::Refused(e)) => {
                    // Nothing happened; try again (ownership re-checked).
                    bump(&shared.counters.db_errors, 1);
                    crate::trace::warning!(error = e.to_string(), "claim refused; retrying");
                    drop(db);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(QueryError::InDoubt(e)) => {
                    // The claim may have committed: deliver none of it, take
                    // the shards again and reload them (claimed rows come
                    // back and are claimed again, attempt + 1).
                    bump(&shared.counters.db_errors, 1);
                    crate::trace::warning!(
                        error = e.to_string(),
                        "claim in doubt; re-acquiring its shards"
                    );
                    *db = None;
                    let mut shards: Vec<(u32, u64)> =
                        items.iter().map(|&(s, e, _)| (s, e)).collect();
                    shards.sort_unstable();
                    shards.dedup();
                    for (shard, epoch) in shards {
                        let _ = shared.keeper.send(KeeperMsg::Reacquire { shard, epoch });
                    }
                    round.drop_all();
                    return;
                }
            }
        }
    }

    fn ended(&self, id: &u64) {
        let _ = self.acks.send(*id);
    }

    fn snoozed(&self, event: &Event<u64, P>, until_ms: u64) {
        self.snoozes.snoozed(&self.shared, event, until_ms);
    }
}
