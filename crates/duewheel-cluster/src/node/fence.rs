//! The delivery fence: how long, by this process's own monotonic clock, each
//! lease it holds is certainly still its own.
//!
//! The database judges leases by its clock; a node cannot ask it before
//! every delivery. So the keeper records, for every shard it acquires or
//! renews, `valid_until` = the [`Instant`] taken *before* it sent the
//! statement that succeeded, plus the lease's ttl, minus a margin for the
//! two clocks' rates (a tenth of the ttl). The statement ran after that
//! instant, so the database's expiry is later than `valid_until` unless the
//! clocks' rates differ by more than the margin. Nothing of a shard is
//! handed out after its `valid_until`, however long the process was stopped
//! and whether or not the keeper has noticed yet: the gate checks right
//! after its claim returns, and every consumer receive checks again just
//! before it returns an event ([`duewheel::Hooks::deliverable`]).
//!
//! Invariant: `valid(shard, epoch, now)` is `true` only if this node
//! acquired or renewed `shard` at `epoch` in a statement sent less than
//! `ttl - margin` before `now`, and has not dropped it since. Hence no
//! other node can hold the shard then (it may take an expired lease only,
//! and `grace` after that), and the duplicates a pause can cause are at most
//! the events already returned to consumers before the pause.

use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};

/// Each held shard's epoch and the instant its lease is no longer certain.
pub(super) struct Fence {
    leases: RwLock<FxHashMap<u32, (u64, Instant)>>,
    /// The lease ttl less the clock-rate margin: how long after a
    /// statement was sent its lease is certain.
    certain: Duration,
}

impl Fence {
    /// A fence for leases of `ttl`.
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            leases: RwLock::new(FxHashMap::default()),
            certain: ttl - ttl / 10,
        }
    }

    /// `shard` was acquired or renewed at `epoch` by a statement sent at
    /// `sent` (taken before sending it).
    pub(super) fn grant(&self, shard: u32, epoch: u64, sent: Instant) {
        let until = sent + self.certain;
        let mut leases = self.leases.write();
        match leases.get_mut(&shard) {
            // A renewal that answers after a newer one only ever shortens
            // nothing: keep the later instant of the same epoch.
            Some((held, at)) if *held == epoch => *at = (*at).max(until),
            _ => {
                leases.insert(shard, (epoch, until));
            }
        }
    }

    /// `shard` is no longer held at `epoch` (lost, released, or taken
    /// again at a newer one).
    pub(super) fn revoke(&self, shard: u32, epoch: u64) {
        let mut leases = self.leases.write();
        if leases.get(&shard).is_some_and(|&(held, _)| held == epoch) {
            leases.remove(&shard);
        }
    }

    /// Every lease is given up (shutdown).
    pub(super) fn clear(&self) {
        self.leases.write().clear();
    }

    /// Whether something claimed under `epoch` of `shard` may be handed out
    /// at `now`.
    pub(super) fn valid(&self, shard: u32, epoch: u64, now: Instant) -> bool {
        self.leases
            .read()
            .get(&shard)
            .is_some_and(|&(held, until)| held == epoch && now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_certain_for_its_ttl_less_a_tenth_from_when_it_was_asked() {
        let fence = Fence::new(Duration::from_millis(1000));
        let sent = Instant::now();
        fence.grant(3, 7, sent);
        assert!(fence.valid(3, 7, sent + Duration::from_millis(899)));
        assert!(!fence.valid(3, 7, sent + Duration::from_millis(900)));
        assert!(!fence.valid(3, 6, sent), "another epoch");
        assert!(!fence.valid(4, 7, sent), "another shard");
    }

    #[test]
    fn a_renewal_extends_and_a_late_answer_does_not_shorten() {
        let fence = Fence::new(Duration::from_millis(1000));
        let t0 = Instant::now();
        fence.grant(1, 2, t0 + Duration::from_millis(500));
        fence.grant(1, 2, t0);
        assert!(fence.valid(1, 2, t0 + Duration::from_millis(1300)));
    }

    #[test]
    fn a_newer_epoch_replaces_and_revoking_an_older_one_does_nothing() {
        let fence = Fence::new(Duration::from_millis(1000));
        let t0 = Instant::now();
        fence.grant(1, 2, t0);
        fence.grant(1, 3, t0);
        assert!(!fence.valid(1, 2, t0));
        fence.revoke(1, 2);
        assert!(fence.valid(1, 3, t0));
        fence.revoke(1, 3);
        assert!(!fence.valid(1, 3, t0));
        fence.grant(5, 1, t0);
        fence.clear();
        assert!(!fence.valid(5, 1, t0));
    }
}
