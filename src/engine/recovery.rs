//! What the durable mode restores at open.

use super::Scheduler;
use crate::durable::Opened;
use crate::error::BuildError;
use crate::wal::RecoveryReport;
use std::hash::Hash;
use std::thread::{self};

/// What the durable mode recovered at open.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovered {
    /// Timers restored (waiting or in flight).
    pub timers: usize,
    /// Of those, the ones whose due time passed while the engine was down:
    /// they fire at once (catch-up), with their lateness recorded.
    pub overdue: usize,
    /// Of those, the ones that were in flight (their `Expired` event fired
    /// and not acked by every group): they are redelivered at once, with
    /// `attempt + 1`, whether or not their redelivery time had passed.
    pub in_flight: usize,
    /// What the log itself reported (snapshot entries, records, a torn tail).
    pub log: RecoveryReport,
}

impl<K, P> Scheduler<K, P>
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    /// Puts the timers replayed from the log back into their shards, the
    /// shards in parallel (each list already belongs to one shard).
    pub(super) fn restore(
        &self,
        opened: Opened<K, P>,
        now_ms: u64,
    ) -> Result<Recovered, BuildError> {
        let timers = opened.shards.iter().map(Vec::len).sum();
        let all = || opened.shards.iter().flatten();
        let overdue = all().filter(|timer| timer.state.due_ms <= now_ms).count();
        let in_flight = all().filter(|timer| timer.state.flight.is_some()).count();
        let shards = &self.inner.shards;
        thread::scope(|scope| {
            let restoring: Vec<_> = opened
                .shards
                .into_iter()
                .zip(shards)
                .map(|(list, shard)| {
                    scope.spawn(move || {
                        let mut shard = shard.0.lock();
                        shard.reserve(list.len());
                        list.into_iter()
                            .try_for_each(|timer| shard.restore(timer, now_ms))
                    })
                })
                .collect();
            restoring.into_iter().try_for_each(|handle| {
                handle
                    .join()
                    .map_err(|_| BuildError::Recovery("a restoring thread panicked".into()))?
                    .map_err(BuildError::Recovery)
            })
        })?;
        Ok(Recovered {
            timers,
            overdue,
            in_flight,
            log: opened.report,
        })
    }
}
