//! A snapshot of the engine's counters, lateness and lag.
//!
//! Counters are summed from the shards, where each changes on its transition
//! under the shard lock; a snapshot locks one shard at a time, so totals from
//! different shards may be a few operations apart, but each shard's own
//! numbers are exact (`scheduled = pending + cancelled + expired` per shard).

/// Engine statistics, from [`Scheduler::stats`](crate::Scheduler::stats).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The engine clock's time (UTC milliseconds) when the snapshot was taken.
    pub now_ms: u64,
    /// Timers waiting to fire (each counts once, however many reminders it
    /// has); in-flight ones are counted in `in_flight` instead.
    pub pending: usize,
    /// The admission cap.
    pub max_pending: usize,
    /// Timers accepted.
    pub scheduled_total: u64,
    /// Timers removed by `cancel`.
    pub cancelled_total: u64,
    /// Successful reschedules.
    pub rescheduled_total: u64,
    /// `Expired` events emitted.
    pub expired_total: u64,
    /// `Reminder` events emitted.
    pub reminders_total: u64,
    /// Timers whose `Expired` event awaits acks (with acknowledgements on).
    pub in_flight: u64,
    /// Timers dead-lettered: their `Expired` event used up
    /// [`max_attempts`](crate::Builder::max_attempts) unacked deliveries and
    /// went to the dead-letter group.
    pub dead_lettered: u64,
    /// Dead-lettered timers whose `DeadLetter` event awaits the dead-letter
    /// group's ack (counted neither in `pending` nor in `in_flight`).
    pub dead_letters: u64,
    /// Timers ended by the last group's ack.
    pub acked_total: u64,
    /// `Expired` events sent again after the ack timeout.
    pub redelivered_total: u64,
    /// Snoozes granted.
    pub snoozed_total: u64,
    /// Schedules refused with `Full`.
    pub rejected_full_total: u64,
    /// Reminders whose time had already passed when they were scheduled
    /// (an offset longer than the time left): they fire at once and are
    /// counted here, not in `lateness`, which counts only events due at a
    /// tick the engine had already passed.
    pub reminders_already_due: u64,
    /// Tick length in milliseconds.
    pub tick_ms: u64,
    /// How late events left the wheel, in ticks.
    pub lateness: Lateness,
    /// Per consumer group: consumers and lag.
    pub groups: Vec<GroupStats>,
    /// `true` once the write-ahead log failed: the engine is fail-stopped
    /// (no changes accepted, nothing fires) until restarted.
    pub storage_failed: bool,
    /// When the oldest timer that is due but not yet handed to the consumer
    /// groups became due (UTC milliseconds, to a tick); `None` if nothing is
    /// overdue. A value far behind `now_ms` means a stalled dispatcher or a
    /// full group.
    pub oldest_overdue_ms: Option<u64>,
    /// Fired ids remembered now, so that a late cancel hears
    /// `AlreadyFired`: never more than
    /// [`Builder::fired_memory`](crate::Builder::fired_memory)'s `max_ids`
    /// for the whole engine.
    pub fired_remembered: usize,
    /// Heap bytes held by the shards: wheel entries, id index, side state
    /// and fired-id memory (not the consumer groups' queues).
    pub heap_bytes: usize,
}

impl Stats {
    /// How long the oldest overdue timer has been waiting, in milliseconds.
    pub fn oldest_overdue_age_ms(&self) -> u64 {
        self.oldest_overdue_ms
            .map_or(0, |at| self.now_ms.saturating_sub(at))
    }

    /// Publishes the snapshot through the `metrics` facade (feature
    /// `metrics`), with Prometheus names and base units: counters end in
    /// `_total` and are set with `absolute` (they only grow), durations are
    /// in seconds. The dispatcher does this once a second into the global
    /// recorder; `prometheus::Exporter` (feature `prometheus`) does it at
    /// every scrape into its own. The lateness histogram cannot pass through
    /// the facade as pre-aggregated buckets, so it is published here as
    /// quantile gauges and rendered as a true histogram by the exporter.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn publish(&self) {
        use metrics::{counter, gauge};
        let tick_s = self.tick_ms as f64 / 1e3;
        gauge!("duewheel_pending_timers").set(self.pending as f64);
        gauge!("duewheel_max_pending_timers").set(self.max_pending as f64);
        counter!("duewheel_scheduled_total").absolute(self.scheduled_total);
        counter!("duewheel_cancelled_total").absolute(self.cancelled_total);
        counter!("duewheel_rescheduled_total").absolute(self.rescheduled_total);
        counter!("duewheel_fired_total", "kind" => "expired").absolute(self.expired_total);
        counter!("duewheel_fired_total", "kind" => "reminder").absolute(self.reminders_total);
        gauge!("duewheel_in_flight").set(self.in_flight as f64);
        counter!("duewheel_dead_lettered_total").absolute(self.dead_lettered);
        gauge!("duewheel_dead_letters").set(self.dead_letters as f64);
        counter!("duewheel_acked_total").absolute(self.acked_total);
        counter!("duewheel_redelivered_total").absolute(self.redelivered_total);
        counter!("duewheel_snoozed_total").absolute(self.snoozed_total);
        counter!("duewheel_rejected_full_total").absolute(self.rejected_full_total);
        counter!("duewheel_reminders_already_due_total").absolute(self.reminders_already_due);
        gauge!("duewheel_lateness_p50_seconds").set(self.lateness.p50_ticks as f64 * tick_s);
        gauge!("duewheel_lateness_p99_seconds").set(self.lateness.p99_ticks as f64 * tick_s);
        gauge!("duewheel_lateness_max_seconds").set(self.lateness.max_ticks as f64 * tick_s);
        gauge!("duewheel_oldest_overdue_seconds").set(self.oldest_overdue_age_ms() as f64 / 1e3);
        gauge!("duewheel_storage_failed").set(f64::from(u8::from(self.storage_failed)));
        for group in &self.groups {
            gauge!("duewheel_consumer_lag", "group" => group.name.clone()).set(group.lag as f64);
            gauge!("duewheel_consumers", "group" => group.name.clone()).set(group.consumers as f64);
        }
    }
}

/// A summary of the lateness histogram (`hdrhistogram`, 3 significant
/// digits): how many ticks after its due tick each event left the wheel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lateness {
    /// Events recorded.
    pub count: u64,
    /// Median lateness in ticks.
    pub p50_ticks: u64,
    /// 99th percentile in ticks.
    pub p99_ticks: u64,
    /// Largest lateness in ticks.
    pub max_ticks: u64,
    /// Sum of every recorded lateness, in ticks (to the histogram's 3
    /// significant digits): with `count`, the mean.
    pub sum_ticks: u64,
    /// Cumulative bucket counts: `at_most[i]` events were at most
    /// [`BOUNDS_MS[i]`](Self::BOUNDS_MS) milliseconds late. The shape of a
    /// Prometheus histogram (`le` buckets), exported as
    /// `duewheel_lateness_seconds`.
    pub at_most: [u64; Lateness::BOUNDS_MS.len()],
}

impl Lateness {
    /// Upper bounds of the lateness buckets, in milliseconds: from a tick
    /// late (normal) to five minutes late (a stalled dispatcher or a full
    /// group).
    pub const BOUNDS_MS: [u64; 14] = [
        1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 5_000, 30_000, 60_000, 300_000,
    ];

    pub(crate) fn from_histogram(h: &hdrhistogram::Histogram<u64>, tick_ms: u64) -> Self {
        let tick_ms = tick_ms.max(1);
        let mut at_most = [0; Self::BOUNDS_MS.len()];
        for (count, bound_ms) in at_most.iter_mut().zip(Self::BOUNDS_MS) {
            // Lateness is whole ticks: `n` ticks is at most `bound` ms late
            // when `n * tick_ms <= bound`.
            *count = h.count_between(0, bound_ms / tick_ms);
        }
        Self {
            count: h.len(),
            p50_ticks: h.value_at_quantile(0.5),
            p99_ticks: h.value_at_quantile(0.99),
            max_ticks: h.max(),
            sum_ticks: (h.mean() * h.len() as f64).round() as u64,
            at_most,
        }
    }
}

/// One consumer group's state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStats {
    /// The group's name.
    pub name: String,
    /// Consumers attached now.
    pub consumers: usize,
    /// Events handed to the group and not yet taken by a consumer.
    pub lag: u64,
}
