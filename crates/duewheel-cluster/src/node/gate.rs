//! The gate: the engine's dispatcher asks it before every delivery, and it
//! claims the rows in fenced statements (see the core's
//! [`duewheel::Hooks`]).
//!
//! A round is split by shard into [`CLAIM_CONNECTIONS`] parts, claimed at
//! once on as many connections (perf, #16: a claim waits mostly on the
//! database, and the dispatcher waits for the claim). The parts touch
//! disjoint shard rows and timer rows, so they never wait on each other.
//! Up to `claim_pipeline` rounds are admitted at once (the engine's claim
//! pipeline, [`Hooks::pipeline`]), each on a set of connections of its
//! own; two rounds never hold the same id (the engine's rule), and what
//! they share (the shard rows' share locks) never blocks either.
//! Each part's claim stands alone: one that succeeded is final (its rows
//! are claimed), one refused is retried alone, one in doubt drops only its
//! own events.
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

use super::sql::{Claimed, NodeDb};
use super::{KeeperMsg, Shared, bump};
use crate::error::QueryError;
use crossbeam_channel::Sender;
use duewheel::{Event, EventKind, Hooks, Round};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Connections a round's claim is split over, by shard.
pub(super) const CLAIM_CONNECTIONS: usize = 2;

pub(super) struct Gate {
    shared: Arc<Shared>,
    /// One set of [`CLAIM_CONNECTIONS`] per round in admit: set `s`, part
    /// `k` (`shard % CLAIM_CONNECTIONS`) is `dbs[s * CLAIM_CONNECTIONS + k]`.
    dbs: Vec<Mutex<Option<NodeDb>>>,
    /// Whether each set is in use by an admit.
    busy: Vec<AtomicBool>,
    /// Ended timers, for the acker to delete.
    acks: Sender<u64>,
    /// Snoozed deliveries, to write back (see `remind`).
    snoozes: super::remind::Snoozes,
}

/// One part of a round: `(shard, epoch, id)` items and their redelivery
/// flags, claimed on one connection.
#[derive(Default)]
struct Part {
    items: Vec<(u32, u64, u64)>,
    redeliver: Vec<bool>,
}

impl Gate {
    /// `dbs`: `sets` sets of [`CLAIM_CONNECTIONS`] claim connections, one
    /// set per round admitted at once.
    pub(super) fn new(
        shared: Arc<Shared>,
        dbs: Vec<NodeDb>,
        sets: usize,
        acks: Sender<u64>,
    ) -> Self {
        debug_assert_eq!(dbs.len(), sets * CLAIM_CONNECTIONS);
        Self {
            shared,
            dbs: dbs.into_iter().map(|db| Mutex::new(Some(db))).collect(),
            busy: (0..sets).map(|_| AtomicBool::new(false)).collect(),
            acks,
            snoozes: super::remind::Snoozes::default(),
        }
    }

    /// A free set of claim connections, for one admit. The engine runs at
    /// most `sets` admits at once, so one is free but for the instant
    /// another admit takes to let go of its own.
    fn take_set(&self) -> SetGuard<'_> {
        loop {
            for (set, busy) in self.busy.iter().enumerate() {
                if busy
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return SetGuard { busy, set };
                }
            }
            std::thread::yield_now();
        }
    }

    /// Drops the connections (at shutdown, on a thread of the node's: see
    /// `off_runtime`). The dispatcher has stopped, and a stopping node's
    /// gate admits nothing, so nothing reconnects.
    pub(super) fn close(&self) {
        for db in &self.dbs {
            drop(db.lock().take());
        }
    }

    /// Claims one part on connection `k` (of all the gate's), reconnecting
    /// first if needed (until it connects, or the node stops).
    fn claim_part(&self, k: usize, part: &Part) -> Outcome {
        let shared = &*self.shared;
        let mut db = self.dbs[k].lock();
        if db.as_ref().is_none_or(NodeDb::is_closed) {
            *db = shared.reconnect_for_rows(None);
        }
        let Some(conn) = db.as_mut() else {
            return Outcome::GaveUp;
        };
        match conn.claim(&part.items, &part.redeliver, shared.now_ms()) {
            Ok(claimed) => Outcome::Claimed(claimed),
            Err(QueryError::Refused(e)) => Outcome::Refused(e.to_string()),
            Err(QueryError::InDoubt(e)) => {
                *db = None;
                Outcome::InDoubt(e.to_string())
            }
        }
    }
}

/// A set of claim connections held by one admit.
struct SetGuard<'a> {
    busy: &'a AtomicBool,
    set: usize,
}

impl Drop for SetGuard<'_> {
    fn drop(&mut self) {
        self.busy.store(false, Ordering::Release);
    }
}

/// What became of one part's claim.
enum Outcome {
    Claimed(Claimed),
    /// Refused: nothing happened.
    Refused(String),
    /// The connection failed mid-statement: it may have committed.
    InDoubt(String),
    /// The node is stopping and no connection could be opened: nothing
    /// was sent.
    GaveUp,
}

impl Gate {
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
        // Reminders never claim (see `remind`); only expiries reach the claim.
        let set = self.take_set();
        let first = set.set * CLAIM_CONNECTIONS;
        super::remind::admit(&self.shared, &self.dbs[first], round);
        let shared = &*self.shared;
        let n = CLAIM_CONNECTIONS;
        // Only shards this node holds now; the rest left with their
        // shard (the new owner fires them from its own load).
        let mut parts: Vec<Part> = (0..n).map(|_| Part::default()).collect();
        let mut marked = shared.redeliver.lock();
        round.retain(|event| {
            if matches!(event.kind, EventKind::Reminder(_)) {
                return true;
            }
            let shard = shared.map.shard_of_id(event.id);
            match shared.epoch_of(shard) {
                Some(epoch) if !shared.stopping() => {
                    let part = &mut parts[shard as usize % n];
                    part.items.push((shard, epoch, event.id));
                    // The engine's own redelivery, or a row loaded as
                    // claimed: it may take a claimed row.
                    part.redeliver
                        .push(event.attempt > 1 || marked.contains(&event.id));
                    true
                }
                _ => {
                    marked.remove(&event.id);
                    false
                }
            }
        });
        drop(marked);
        let mut attempts: FxHashMap<u64, u32> = FxHashMap::default();
        let mut epochs: FxHashMap<u32, u64> = FxHashMap::default();
        let mut backoff = Duration::from_millis(50);
        let mut todo: Vec<(usize, Part)> = parts
            .into_iter()
            .enumerate()
            .filter(|(_, p)| !p.items.is_empty())
            .map(|(k, p)| (first + k, p))
            .collect();
        while !todo.is_empty() {
            let results: Vec<Outcome> = if todo.len() == 1 {
                vec![self.claim_part(todo[0].0, &todo[0].1)]
            } else {
                std::thread::scope(|s| {
                    let others: Vec<_> = todo[1..]
                        .iter()
                        .map(|(k, part)| s.spawn(move || self.claim_part(*k, part)))
                        .collect();
                    let mut results = vec![self.claim_part(todo[0].0, &todo[0].1)];
                    for handle in others {
                        results.push(handle.join().unwrap_or_else(|_| {
                            // A claim that panicked may have been sent:
                            // treated as in doubt.
                            Outcome::InDoubt("the claim thread panicked".into())
                        }));
                    }
                    results
                })
            };
            let mut refused = Vec::new();
            for ((k, part), result) in todo.drain(..).zip(results) {
                match result {
                    Outcome::Claimed(claimed) => {
                        for &shard in &claimed.fence.fenced {
                            bump(&shared.counters.fenced, 1);
                            if let Some(&(_, epoch, _)) = part.items.iter().find(|i| i.0 == shard) {
                                let _ = shared.keeper.send(KeeperMsg::Lost { shard, epoch });
                            }
                        }
                        epochs.extend(part.items.iter().map(|&(s, e, _)| (s, e)));
                        attempts.extend(claimed.ids);
                    }
                    // Nothing was sent: the events are dropped (the node
                    // is stopping; the next owner fires them).
                    Outcome::GaveUp => {}
                    Outcome::Refused(e) => {
                        // Nothing happened; try this part again (ownership
                        // re-checked below).
                        bump(&shared.counters.db_errors, 1);
                        crate::trace::warning!(error = e, "claim refused; retrying");
                        refused.push((k, part));
                    }
                    Outcome::InDoubt(e) => {
                        // The claim may have committed: deliver none of this
                        // part, take its shards again and reload them
                        // (claimed rows come back and are claimed again,
                        // attempt + 1).
                        bump(&shared.counters.db_errors, 1);
                        crate::trace::warning!(
                            error = e,
                            "claim in doubt; re-acquiring its shards"
                        );
                        let mut shards: Vec<(u32, u64)> =
                            part.items.iter().map(|&(s, e, _)| (s, e)).collect();
                        shards.sort_unstable();
                        shards.dedup();
                        for (shard, epoch) in shards {
                            let _ = shared.keeper.send(KeeperMsg::Reacquire { shard, epoch });
                        }
                    }
                }
            }
            if refused.is_empty() {
                break;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
            // A refused part keeps only what this node still holds at the
            // same epoch; the rest is dropped below (not in `attempts`).
            for (k, part) in refused {
                let mut kept = Part::default();
                for (&item, &r) in part.items.iter().zip(&part.redeliver) {
                    if !shared.stopping() && shared.epoch_of(item.0) == Some(item.1) {
                        kept.items.push(item);
                        kept.redeliver.push(r);
                    }
                }
                if !kept.items.is_empty() {
                    todo.push((k, kept));
                }
            }
        }
        // After the claims: each kept event was claimed under the epoch
        // its shard was sent with (`epochs`).
        let now_ms = shared.now_ms();
        let mut claim_epochs = shared.claim_epochs.lock();
        let mut marked = shared.redeliver.lock();
        round.retain(|event| match attempts.get(&event.id) {
            // Admitted by `remind::admit`, under its own fenced statement.
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
                    event.claim = epoch;
                }
                shared.in_flight.claimed(event.id, now_ms);
                true
            }
            // Cancelled meanwhile (the row is gone), fenced, not due by
            // the table's deadline, or its part's claim was in doubt or
            // gave up: nothing to deliver.
            None => {
                marked.remove(&event.id);
                false
            }
        });
        drop((claim_epochs, marked, set));
        self.fence(round);
    }

    fn pipeline(&self) -> usize {
        self.busy.len()
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
        self.shared.in_flight.ended(*id);
        let _ = self.acks.send(*id);
    }

    fn snoozed(&self, event: &Event<u64, P>, until_ms: u64) {
        self.snoozes.snoozed(&self.shared, event, until_ms);
    }
}
