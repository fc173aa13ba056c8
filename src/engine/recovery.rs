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
    /// shards in parallel (each list already belongs to one shard). One pass
    /// over the records: each shard's index is sized for its whole list
    /// first, the overdue and in-flight ones are counted as they go in, and
    /// each chunk of the list is freed once it is in.
    pub(super) fn restore(
        &self,
        opened: Opened<K, P>,
        now_ms: u64,
    ) -> Result<Recovered, BuildError> {
        let shards = &self.inner.shards;
        let counts = thread::scope(|scope| {
            let restoring: Vec<_> = opened
                .shards
                .into_iter()
                .zip(shards)
                .map(|(list, shard)| {
                    scope.spawn(move || {
                        let mut counts = Counts::default();
                        let mut shard = shard.0.lock();
                        shard.reserve(list.iter().map(Vec::len).sum());
                        for chunk in list {
                            for timer in chunk {
                                counts.timers += 1;
                                counts.overdue += usize::from(timer.state.due_ms <= now_ms);
                                counts.in_flight += usize::from(timer.state.flight.is_some());
                                shard.restore(timer, now_ms)?;
                            }
                        }
                        Ok::<_, String>(counts)
                    })
                })
                .collect();
            restoring
                .into_iter()
                .try_fold(Counts::default(), |total, handle| {
                    let counts = handle
                        .join()
                        .map_err(|_| BuildError::Recovery("a restoring thread panicked".into()))?
                        .map_err(BuildError::Recovery)?;
                    Ok::<_, BuildError>(Counts {
                        timers: total.timers + counts.timers,
                        overdue: total.overdue + counts.overdue,
                        in_flight: total.in_flight + counts.in_flight,
                    })
                })
        })?;
        Ok(Recovered {
            timers: counts.timers,
            overdue: counts.overdue,
            in_flight: counts.in_flight,
            log: opened.report,
        })
    }
}

/// What a shard's restore counted.
#[derive(Default)]
struct Counts {
    timers: usize,
    overdue: usize,
    in_flight: usize,
}
