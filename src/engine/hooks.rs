//! What a store outside the engine adds to firing and to acks: the seam a
//! cluster (the `duewheel-cluster` crate) runs on.
//!
//! In memory and in durable mode the engine's shards decide alone whether a
//! timer fires. With a store that shares timers between processes, the
//! shared table decides: a timer may be delivered only once its row is
//! *claimed* under the owner's epoch, so the dispatcher hands every round to
//! [`Hooks::admit`] before delivery, and a timer acknowledged by every group
//! is reported to [`Hooks::ended`] so the store can delete its row. The
//! wheel, the dispatcher and the consumer API are the same in every mode;
//! an engine built without hooks runs none of this.
//!
//! Invariant: an event reaches a consumer only if `admit` kept it; an id
//! `admit` drops is forgotten by its shard (it is not redelivered by the
//! engine; the store owns what happens to it next). Every path that ends a
//! timer by acknowledgement (`ack`, `ack_async`) reports it to `ended`, and
//! every accepted snooze (`snooze`, `snooze_async`) to `snoozed`.

use super::event::Event;
pub(crate) use super::shard::Fired;

/// One round of fired events on its way to the consumers, as
/// [`Hooks::admit`] sees it: it may keep or drop each event, and change a
/// kept event's fields (e.g. its `attempt`).
pub struct Round<'a, K, P> {
    fired: &'a mut Vec<Fired<K, P>>,
    dropped: &'a mut Vec<K>,
}

impl<'a, K: Clone, P> Round<'a, K, P> {
    pub(crate) fn new(fired: &'a mut Vec<Fired<K, P>>, dropped: &'a mut Vec<K>) -> Self {
        Self { fired, dropped }
    }

    /// Events in the round.
    pub fn len(&self) -> usize {
        self.fired.len()
    }

    /// `true` if nothing is left to deliver.
    pub fn is_empty(&self) -> bool {
        self.fired.is_empty()
    }

    /// The events, in delivery order.
    pub fn events(&self) -> impl Iterator<Item = &Event<K, P>> {
        self.fired.iter().map(|(_, _, event)| event)
    }

    /// Keeps the events for which `keep` returns `true` (it may change
    /// them); the engine forgets the others' timers.
    pub fn retain(&mut self, mut keep: impl FnMut(&mut Event<K, P>) -> bool) {
        let dropped = &mut *self.dropped;
        self.fired.retain_mut(|(_, _, event)| {
            let kept = keep(event);
            if !kept {
                dropped.push(event.id.clone());
            }
            kept
        });
    }

    /// Drops every event: nothing of this round is delivered.
    pub fn drop_all(&mut self) {
        self.retain(|_| false);
    }
}

/// A store's say in firing and acknowledgement, plugged in with
/// [`Builder::hooks`](crate::Builder::hooks). The default methods keep
/// everything and ignore ends: an engine with them behaves as one without.
///
/// ```
/// use duewheel::{Engine, Hooks, ManualClock, Round};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// /// Delivers only even ids.
/// struct EvenOnly;
/// impl Hooks<u64, ()> for EvenOnly {
///     fn admit(&self, round: &mut Round<'_, u64, ()>) {
///         round.retain(|event| event.id % 2 == 0);
///     }
/// }
///
/// let clock = ManualClock::new(0);
/// let engine = Engine::<u64, ()>::builder()
///     .clock(clock.clone())
///     .hooks(Arc::new(EvenOnly))
///     .group("out")
///     .build()?;
/// let mut out = engine.subscribe("out")?;
/// engine.scheduler().schedule(1, Duration::from_millis(10), ())?;
/// engine.scheduler().schedule(2, Duration::from_millis(10), ())?;
/// clock.advance(Duration::from_millis(10));
/// assert_eq!(out.recv_timeout(Duration::from_secs(5))?.id, 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Hooks<K, P>: Send + Sync {
    /// Keeps in `round` only what may be delivered now. Runs on the
    /// dispatcher thread with no lock held; it may block on I/O, and must
    /// give up (dropping everything) once the engine stops.
    fn admit(&self, round: &mut Round<'_, K, P>) {
        let _ = round;
    }

    /// `id`'s delivery was acknowledged by every group: its timer ended.
    fn ended(&self, id: &K) {
        let _ = id;
    }

    /// A consumer snoozed `event` (an `Expired` delivery the engine
    /// accepted as snoozed): its timer is due again at `until_ms`. A store
    /// writes the due time back, so that whoever fires the timer next (a
    /// takeover included) fires it then and not at once. Called once per
    /// accepted snooze, blocking or async, on the snoozing thread, after
    /// the engine moved the timer and with no lock held.
    fn snoozed(&self, event: &Event<K, P>, until_ms: u64) {
        let _ = (event, until_ms);
    }
}
