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
//! Between `admit` and the consumer an event may wait (in its group's
//! channel, or in a consumer's buffer) for as long as the process is
//! stopped; a store whose right to deliver expires (a lease) says again, at
//! the last moment, with [`Hooks::deliverable`], which every receive path
//! asks before it returns an event.
//!
//! Invariant: an event reaches a consumer only if `admit` kept it and
//! `deliverable` said yes when a receive was about to return it; an id
//! `admit` drops is forgotten by its shard (it is not redelivered by the
//! engine; the store owns what happens to it next). An event `deliverable`
//! refuses stays in flight: with acknowledgements on it comes back after
//! the ack timeout, through `admit` again. Every path that ends a timer by
//! acknowledgement (`ack`, `ack_async`) reports it to `ended`, and
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
    /// dispatcher thread (or a claim thread: see
    /// [`pipeline`](Self::pipeline)) with no lock held; it may block on
    /// I/O, and must give up (dropping everything) once the engine stops.
    fn admit(&self, round: &mut Round<'_, K, P>) {
        let _ = round;
    }

    /// How many rounds' [`admit`](Self::admit)s may run at once: 1 (the
    /// default) runs each on the dispatcher thread, which waits for it.
    /// Above 1, admits run on as many claim threads of the engine's, each
    /// on its own round, while the dispatcher fires the next round: a store
    /// whose claim waits on a round trip keeps that many in flight. Rounds
    /// are still delivered in the order they fired, an id is never in two
    /// admits at once, and room is reserved in every group for every round
    /// in flight. Read once, when the first round needs it.
    fn pipeline(&self) -> usize {
        1
    }

    /// Whether `event`, kept by [`admit`](Self::admit) earlier, may still
    /// be handed to a consumer now. Asked by every receive (`recv`,
    /// `try_recv`, `recv_timeout`, the async forms) just before it returns
    /// the event, on the consumer's thread; it must be cheap and must not
    /// block. A refused event is skipped by this consumer: it is not
    /// returned, nor acked, so the engine redelivers it after the ack
    /// timeout (through `admit`, which decides again). The default keeps
    /// everything; an engine without hooks does not ask.
    fn deliverable(&self, event: &Event<K, P>) -> bool {
        let _ = event;
        true
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

#[cfg(test)]
mod tests {
    use crate::{Engine, Event, Hooks, ManualClock, Round};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(5);

    /// Admits everything under claim 7; refuses delivery while `closed`.
    #[derive(Default)]
    struct Gate {
        closed: AtomicBool,
    }

    impl Hooks<u64, u64> for Gate {
        fn admit(&self, round: &mut Round<'_, u64, u64>) {
            round.retain(|event| {
                event.claim = 7;
                true
            });
        }
        fn deliverable(&self, _event: &Event<u64, u64>) -> bool {
            !self.closed.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn a_refused_event_is_not_returned_and_comes_back_after_the_ack_timeout() {
        let clock = ManualClock::new(0);
        let gate = Arc::new(Gate::default());
        let engine = Engine::<u64, u64>::builder()
            .clock(clock.clone())
            .ack_timeout(Duration::from_secs(30))
            .group("orders")
            .hooks(gate.clone())
            .build()
            .unwrap();
        let mut orders = engine.subscribe("orders").unwrap();
        let s = engine.scheduler();
        for id in 1..=4 {
            s.schedule(id, Duration::from_secs(1), id).unwrap();
        }
        gate.closed.store(true, Ordering::SeqCst);
        clock.advance(Duration::from_secs(1));
        assert!(s.settle(WAIT));
        assert!(orders.drain_ready().is_empty(), "refused at receive");
        assert_eq!(engine.stats().in_flight, 4, "still in flight");
        gate.closed.store(false, Ordering::SeqCst);
        clock.advance(Duration::from_secs(30));
        assert!(s.settle(WAIT));
        let events = orders.drain_ready();
        assert_eq!(events.len(), 4);
        assert!(events.iter().all(|e| e.attempt == 2 && e.claim == 7));
    }

    #[test]
    fn an_engine_without_a_store_delivers_claim_zero() {
        let clock = ManualClock::new(0);
        let engine = Engine::<u64, u64>::builder()
            .clock(clock.clone())
            .build()
            .unwrap();
        let mut orders = engine.subscribe("orders").unwrap();
        engine
            .scheduler()
            .schedule(1, Duration::from_secs(1), 1)
            .unwrap();
        clock.advance(Duration::from_secs(1));
        assert_eq!(orders.recv_timeout(WAIT).unwrap().claim, 0);
    }
}
