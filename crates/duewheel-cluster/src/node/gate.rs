//! The gate: the engine's dispatcher asks it before every delivery, and it
//! claims the rows in one fenced statement (see the core's
//! [`duewheel::Hooks`]).
//!
//! Invariant: an event is kept only if its row was claimed, in this round,
//! under the epoch this node holds for its shard; every other event is
//! dropped (and the engine forgets it). A claim in doubt delivers nothing:
//! its shards are taken again (epoch + 1) and reloaded, so whatever that
//! statement did is redelivered from the table. A kept event carries the
//! epoch it was claimed under (`Event::claim`), and is handed out only
//! while the node's own clock says that lease is certain (the
//! [`fence`](super::fence)): checked once the claim returns, and again by
//! every consumer receive ([`Hooks::deliverable`]).

use super::sql::NodeDb;
use super::{KeeperMsg, Shared, bump};
use crate::error::QueryError;
use crossbeam_channel::Sender;
use duewheel::{Event, Hooks, Round};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) struct Gate {
    shared: Arc<Shared>,
    db: Mutex<Option<NodeDb>>,
    /// Ended timers, for the acker to delete.
    acks: Sender<u64>,
}

impl Gate {
    pub(super) fn new(shared: Arc<Shared>, db: NodeDb, acks: Sender<u64>) -> Self {
        Self {
            shared,
            db: Mutex::new(Some(db)),
            acks,
        }
    }

    /// The fence, right after a claim returned: the process may have been
    /// stopped while it ran (or since the keeper last renewed), so events of
    /// a shard whose lease is no longer certain by this node's clock are
    /// dropped, and the shard is taken again at a new epoch (if nobody else
    /// took it), which reloads those rows, claimed, for redelivery.
    fn fence<P>(&self, round: &mut Round<'_, u64, P>) {
        let shared = &*self.shared;
        let now = Instant::now();
        let mut lapsed: Vec<(u32, u64, u64)> = Vec::new();
        round.retain(|event| {
            let shard = shared.map.shard_of_id(event.id);
            let valid = shared.fence.valid(shard, event.claim, now);
            if !valid {
                lapsed.push((shard, event.claim, event.id));
            }
            valid
        });
        if lapsed.is_empty() {
            return;
        }
        bump(&shared.counters.fence_held, lapsed.len() as u64);
        {
            let mut claim_epochs = shared.claim_epochs.lock();
            for &(_, _, id) in &lapsed {
                claim_epochs.remove(&id);
            }
        }
        let mut shards: Vec<(u32, u64)> = lapsed.iter().map(|&(s, e, _)| (s, e)).collect();
        shards.sort_unstable();
        shards.dedup();
        crate::trace::warning!(
            shards = shards.len(),
            events = lapsed.len(),
            "lease no longer certain by the node's clock; claimed events held back"
        );
        for (shard, epoch) in shards {
            let _ = shared.keeper.send(KeeperMsg::Reacquire { shard, epoch });
        }
    }
}

impl<P: Clone> Hooks<u64, P> for Gate {
    fn admit(&self, round: &mut Round<'_, u64, P>) {
        let shared = &*self.shared;
        let mut backoff = Duration::from_millis(50);
        loop {
            // Only shards this node holds now; the rest left with their
            // shard (the new owner fires them from its own load).
            let mut items = Vec::with_capacity(round.len());
            let mut redeliver = Vec::with_capacity(round.len());
            let mut marked = shared.redeliver.lock();
            round.retain(|event| {
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
                                event.claim = epoch;
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
                    drop((claim_epochs, marked));
                    self.fence(round);
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

    fn deliverable(&self, event: &Event<u64, P>) -> bool {
        let shared = &*self.shared;
        let shard = shared.map.shard_of_id(event.id);
        if shared.fence.valid(shard, event.claim, Instant::now()) {
            return true;
        }
        // Still in flight: the ack timeout brings it back through `admit`,
        // which delivers it if this node holds the shard again by then.
        bump(&shared.counters.fence_held, 1);
        false
    }

    fn ended(&self, id: &u64) {
        let _ = self.acks.send(*id);
    }
}
