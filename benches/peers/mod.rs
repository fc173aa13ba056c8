//! duewheel against its peers: one payment-deadline workload, one driver per
//! contender. Shared by `benches/compare.rs` (criterion statistics) and
//! `examples/compare.rs` (the table in `docs/BENCHMARKS.md`), so both time
//! exactly the same code.
//!
//! Every driver takes the whole phase in one call (`schedule_all`,
//! `cancel_all`, `drain`), so a driver that needs a context around its calls
//! (tokio's runtime) enters it once per phase, not once per timer, and the
//! loop over timers is monomorphised for each contender.
//!
//! Time is an integer count of milliseconds from 0, when every timer is
//! scheduled. A driver's `drain` moves its contender's time forward until
//! nothing is pending, each step to the contender's own "next expiry" where
//! it offers one, and reports for each fired timer the time it was at when
//! the timer came out: that is what lateness is measured against.

mod delay_queue;
mod engine;
mod heap;
mod hhwt;
mod nexus;
mod timer_queue;
mod wheel;
pub(crate) mod workload;

/// One timer leaving a contender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fired {
    /// The id it was scheduled with (its index in the workload).
    pub(crate) id: u32,
    /// The contender's time, in ms, when it handed the timer out.
    pub(crate) at_ms: u64,
}

/// What the workload asks of a contender.
pub(crate) trait Contender {
    /// An empty contender at time 0 for up to `n` timers, presized where it
    /// offers that.
    fn new(n: usize) -> Self;

    /// Schedules timer `id` due at `deadlines_ms[id]`, for every `id`.
    fn schedule_all(&mut self, deadlines_ms: &[u64]);

    /// Cancels the pending timers `ids`, in that order.
    fn cancel_all(&mut self, ids: &[u32]);

    /// Advances time until nothing is pending, pushing every fired timer.
    fn drain(&mut self, fired: &mut Vec<Fired>);

    /// Heap bytes of the handle table the driver keeps so that it can cancel
    /// (a user keeps one too, unless the contender is keyed by the id). Not
    /// part of the contender's own bytes per timer; reported beside them.
    fn handle_bytes(&self) -> usize;

    /// `false` if the last drain jumped the clock in one step, so that
    /// `at_ms` says nothing about lateness (the engine's payment drain).
    fn lateness_measured(&self) -> bool {
        true
    }
}

/// Something done once per contender, with the contender's type.
pub(crate) trait Visitor {
    /// What the visit returns.
    type Output;
    /// Called with the contender's driver type and its [`NAMES`] entry.
    fn visit<C: Contender>(self, name: &'static str, label: &'static str) -> Self::Output;
}

/// `(name on the command line, label in the table)`, in table order.
pub(crate) const NAMES: [(&str, &str); 7] = [
    ("wheel", "duewheel `Wheel`"),
    ("engine", "duewheel engine (1 producer, `ManualClock`)"),
    ("heap", "`BinaryHeap` + tombstone bitmap"),
    ("timer-queue", "timer-queue 0.1.1"),
    ("nexus-timer", "nexus-timer 1.5.0"),
    (
        "delay-queue",
        "tokio-util 0.7.20 `DelayQueue` (paused clock)",
    ),
    ("hhwt", "hierarchical_hash_wheel_timer 1.4.0"),
];

/// Calls `visitor` with the driver of contender `name`, or returns `None`
/// for an unknown name.
pub(crate) fn visit<V: Visitor>(name: &str, visitor: V) -> Option<V::Output> {
    let &(name, label) = NAMES.iter().find(|(n, _)| *n == name)?;
    Some(match name {
        "wheel" => visitor.visit::<wheel::Driver>(name, label),
        "engine" => visitor.visit::<engine::Driver>(name, label),
        "heap" => visitor.visit::<heap::Driver>(name, label),
        "timer-queue" => visitor.visit::<timer_queue::Driver>(name, label),
        "nexus-timer" => visitor.visit::<nexus::Driver>(name, label),
        "delay-queue" => visitor.visit::<delay_queue::Driver>(name, label),
        "hhwt" => visitor.visit::<hhwt::Driver>(name, label),
        _ => unreachable!("every entry of NAMES has a driver"),
    })
}

/// The next time a drain steps to: the contender's own next expiry, but at
/// least 1 ms after the last step (everything due by then has fired), so
/// a next-expiry that is only a lower bound cannot stall the loop.
pub(crate) fn next_step(next_ms: u64, last_ms: Option<u64>) -> u64 {
    match last_ms {
        Some(last) => next_ms.max(last + 1),
        None => next_ms,
    }
}
