//! Prometheus exporter of the engine's statistics (feature `prometheus`).
//!
//! [`Stats`] is the single source of truth: an [`Exporter`] takes a
//! snapshot at every scrape (it locks each shard once, briefly), publishes
//! it through the `metrics` facade into its own
//! `metrics-exporter-prometheus` recorder (not the global one, so two
//! engines or two tests in one process do not mix their series), and
//! renders the Prometheus text format. Counters are set with `absolute`
//! from the engine's own totals, so they only grow.
//!
//! The series (names follow Prometheus conventions: base units, `_total`
//! on counters):
//!
//! | series | type | what |
//! |---|---|---|
//! | `duewheel_pending_timers` | gauge | timers waiting to fire |
//! | `duewheel_max_pending_timers` | gauge | the admission cap |
//! | `duewheel_in_flight` | gauge | expiries awaiting acks |
//! | `duewheel_scheduled_total`, `_cancelled_total`, `_rescheduled_total` | counter | schedule, cancel and reschedule calls accepted |
//! | `duewheel_fired_total{kind="expired"\|"reminder"}` | counter | events emitted |
//! | `duewheel_acked_total`, `_redelivered_total`, `_snoozed_total` | counter | acknowledgements |
//! | `duewheel_rejected_full_total` | counter | schedules refused by the cap |
//! | `duewheel_lateness_seconds` | histogram | how late events left the wheel |
//! | `duewheel_lateness_{p50,p99,max}_seconds` | gauge | the same, summarised |
//! | `duewheel_oldest_overdue_seconds` | gauge | age of the oldest due event not yet handed over: a stall alarm (Redisson #4088) |
//! | `duewheel_consumer_lag{group}` | gauge | events handed to a group, not yet taken |
//! | `duewheel_consumers{group}` | gauge | consumers attached |
//! | `duewheel_storage_failed` | gauge | 1 once the log failed (fail-stop) |
//!
//! ```
//! use duewheel::{Engine, ManualClock, prometheus::Exporter};
//! use std::time::Duration;
//!
//! let engine = Engine::<u64, ()>::builder().clock(ManualClock::new(0)).build()?;
//! engine.scheduler().schedule(1, Duration::from_secs(60), ()).unwrap();
//! let metrics = Exporter::new(&engine);
//! assert!(metrics.render().contains("duewheel_pending_timers 1"));
//! // The host serves it: answer `GET /metrics` with `metrics.render()` and
//! // content type `text/plain; version=0.0.4` (the example service does so
//! // with axum, `duewheel simulate --metrics-addr` too).
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::engine::{Engine, Lateness, Scheduler, Stats};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::Arc;

/// Samples an engine's [`Stats`] into Prometheus text. Cheap to clone.
#[derive(Clone)]
pub struct Exporter {
    shared: Arc<Shared>,
}

struct Shared {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    stats: Box<dyn Fn() -> Stats + Send + Sync>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// An exporter of `engine`'s statistics.
    pub fn new<K, P>(engine: &Engine<K, P>) -> Self
    where
        K: Hash + Eq + Clone + Send + 'static,
        P: Clone + Send + 'static,
    {
        Self::for_scheduler(engine.scheduler())
    }

    /// An exporter reading through a [`Scheduler`] handle (what a service
    /// that does not own the [`Engine`] holds).
    pub fn for_scheduler<K, P>(scheduler: Scheduler<K, P>) -> Self
    where
        K: Hash + Eq + Clone + Send + 'static,
        P: Clone + Send + 'static,
    {
        Self::from_source(move || scheduler.stats())
    }

    /// An exporter of whatever `stats` returns (several engines summed, a
    /// test's fixed snapshot, ...).
    pub fn from_source(stats: impl Fn() -> Stats + Send + Sync + 'static) -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, describe);
        Self {
            shared: Arc::new(Shared {
                recorder,
                handle,
                stats: Box::new(stats),
            }),
        }
    }

    /// Takes a snapshot now and renders it in the Prometheus text format
    /// (version 0.0.4).
    pub fn render(&self) -> String {
        let stats = (self.shared.stats)();
        metrics::with_local_recorder(&self.shared.recorder, || stats.publish());
        let mut text = self.shared.handle.render();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        render_lateness(&mut text, &stats.lateness, stats.tick_ms);
        text
    }
}

/// The `Content-Type` of [`Exporter::render`]'s text, for the host's
/// `/metrics` answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `# HELP` lines for every series published through the facade.
fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!("duewheel_pending_timers", "Timers waiting to fire.");
    describe_gauge!("duewheel_max_pending_timers", "The admission cap.");
    describe_gauge!("duewheel_in_flight", "Expiries awaiting acknowledgements.");
    describe_counter!("duewheel_scheduled_total", "Timers accepted.");
    describe_counter!("duewheel_cancelled_total", "Timers removed by cancel.");
    describe_counter!("duewheel_rescheduled_total", "Successful reschedules.");
    describe_counter!("duewheel_fired_total", "Events emitted, by kind.");
    describe_counter!("duewheel_acked_total", "Timers ended by the last ack.");
    describe_counter!(
        "duewheel_redelivered_total",
        "Expiries sent again after the ack timeout."
    );
    describe_counter!("duewheel_snoozed_total", "Snoozes granted.");
    describe_counter!(
        "duewheel_rejected_full_total",
        "Schedules refused by the admission cap."
    );
    describe_gauge!("duewheel_lateness_p50_seconds", "Median lateness.");
    describe_gauge!("duewheel_lateness_p99_seconds", "99th percentile lateness.");
    describe_gauge!("duewheel_lateness_max_seconds", "Largest lateness.");
    describe_gauge!(
        "duewheel_oldest_overdue_seconds",
        "Age of the oldest due event not yet handed to the consumer groups."
    );
    describe_gauge!(
        "duewheel_consumer_lag",
        "Events handed to a consumer group and not yet taken."
    );
    describe_gauge!("duewheel_consumers", "Consumers attached to a group.");
    describe_gauge!(
        "duewheel_storage_failed",
        "1 once the write-ahead log failed (fail-stop)."
    );
}

/// Appends `duewheel_lateness_seconds` as a Prometheus histogram, from the
/// engine's cumulative lateness histogram (exact, bounded: no sample per
/// event passes through the facade).
fn render_lateness(out: &mut String, lateness: &Lateness, tick_ms: u64) {
    let name = "duewheel_lateness_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} How late events left the wheel after their due time."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (bound_ms, count) in Lateness::BOUNDS_MS.iter().zip(lateness.at_most) {
        let le = *bound_ms as f64 / 1e3;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", lateness.count);
    let sum_s = lateness.sum_ticks as f64 * tick_ms as f64 / 1e3;
    let _ = writeln!(out, "{name}_sum {sum_s}");
    let _ = writeln!(out, "{name}_count {}", lateness.count);
}
