//! Feature `prometheus`: the engine's `Stats` as Prometheus text.
#![cfg(feature = "prometheus")]

use duewheel_testkit::prom_text;

use duewheel::prometheus::{CONTENT_TYPE, Exporter};
use duewheel::{Engine, EventKind, ManualClock};
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(10);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn the_text_has_every_series_with_the_engines_numbers() {
    let clock = ManualClock::new(T0);
    // One shard and batches of 6: the reminders leave in one batch, the
    // expiries in another.
    let engine = Engine::<u64, ()>::builder()
        .clock(clock.clone())
        .shards(1)
        .batch_size(6)
        .build()
        .unwrap();
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    for id in 0..10 {
        s.schedule_with_reminders(id, secs(60), &[secs(30)], ())
            .unwrap();
    }
    for id in 0..3 {
        assert!(s.cancel(&id).unwrap().is_cancelled());
    }
    s.reschedule(&9, secs(600)).unwrap();
    clock.advance(secs(60));
    assert!(s.settle(WAIT));
    // 6 reminders + 6 expiries fired for ids 3..=8; 9 moved past them.
    let first = orders.recv_timeout(WAIT).unwrap();
    assert_eq!(first.kind, EventKind::Reminder(1));

    let metrics = Exporter::new(&engine);
    let text = metrics.render();
    let m = prom_text::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let v = |name: &str, labels: &[(&str, &str)]| {
        m.value(name, labels)
            .unwrap_or_else(|| panic!("{name} {labels:?} missing from\n{text}"))
    };
    assert_eq!(m.type_of("duewheel_pending_timers"), Some("gauge"));
    assert_eq!(m.type_of("duewheel_fired_total"), Some("counter"));
    assert_eq!(m.type_of("duewheel_lateness_seconds"), Some("histogram"));
    assert_eq!(v("duewheel_pending_timers", &[]), 1.0);
    assert_eq!(v("duewheel_max_pending_timers", &[]), 50_000_000.0);
    assert_eq!(v("duewheel_scheduled_total", &[]), 10.0);
    assert_eq!(v("duewheel_cancelled_total", &[]), 3.0);
    assert_eq!(v("duewheel_rescheduled_total", &[]), 1.0);
    assert_eq!(v("duewheel_fired_total", &[("kind", "expired")]), 6.0);
    assert_eq!(v("duewheel_fired_total", &[("kind", "reminder")]), 6.0);
    // The consumer took the reminders' batch; the expiries' batch waits.
    assert_eq!(v("duewheel_consumer_lag", &[("group", "orders")]), 6.0);
    assert_eq!(v("duewheel_consumers", &[("group", "orders")]), 1.0);
    assert_eq!(v("duewheel_oldest_overdue_seconds", &[]), 0.0);
    assert_eq!(v("duewheel_storage_failed", &[]), 0.0);
    // 12 events left the wheel; with a manual clock advanced in one step
    // the reminders due at +30 s left 30 s late, the expiries on time.
    assert_eq!(v("duewheel_lateness_seconds_count", &[]), 12.0);
    let buckets = m.buckets("duewheel_lateness_seconds");
    let at = |le: f64| buckets.iter().find(|b| b.0 == le).unwrap().1;
    assert_eq!(at(0.001), 6.0);
    assert_eq!(at(5.0), 6.0);
    assert_eq!(at(30.0), 12.0);
    assert_eq!(at(f64::INFINITY), 12.0);
    let sum = v("duewheel_lateness_seconds_sum", &[]);
    assert!((sum - 6.0 * 30.0).abs() < 0.5, "sum {sum}");
    drop(engine.shutdown());
}

#[test]
fn a_stalled_engine_shows_its_oldest_overdue_age() {
    let clock = ManualClock::new(T0);
    // No group has subscribed: the dispatcher holds due timers.
    let engine = Engine::<u64, ()>::builder()
        .clock(clock.clone())
        .build()
        .unwrap();
    engine.scheduler().schedule(1, secs(10), ()).unwrap();
    clock.advance(secs(70));
    let m = prom_text::parse(&Exporter::new(&engine).render()).unwrap();
    // Due 60 s ago. The engine reports the start of the wheel slot holding
    // the timer, which for a far deadline is coarser than a tick, so the
    // age may read high; it never reads low.
    let age = m.value("duewheel_oldest_overdue_seconds", &[]).unwrap();
    assert!((60.0..70.0).contains(&age), "age {age}");
    assert_eq!(m.value("duewheel_pending_timers", &[]), Some(1.0));
}

/// Each scrape is a fresh snapshot: an exporter created once (as a host
/// keeps it behind its `/metrics` route, here on a `Scheduler` handle) shows
/// the numbers of the moment it renders, and counters never go down. The
/// HTTP side is the host's: `tests/order_service.rs` scrapes the example
/// service's axum route, the CLI's tests `simulate --metrics-addr`.
#[test]
fn every_render_is_a_fresh_snapshot_and_counters_never_go_down() {
    let clock = ManualClock::new(T0);
    let engine = Engine::<u64, ()>::builder()
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut orders = engine.subscribe("orders").unwrap();
    let exporter = Exporter::for_scheduler(engine.scheduler());
    assert!(CONTENT_TYPE.starts_with("text/plain; version=0.0.4"));

    let mut last_fired = 0.0;
    for round in 1..=3u64 {
        for id in 0..5 {
            engine
                .scheduler()
                .schedule(round * 100 + id, secs(1), ())
                .unwrap();
        }
        clock.advance(secs(1));
        for _ in 0..5 {
            orders.recv_timeout(WAIT).unwrap();
        }
        let body = exporter.render();
        let m = prom_text::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        let fired = m
            .value("duewheel_fired_total", &[("kind", "expired")])
            .unwrap();
        assert_eq!(fired, (round * 5) as f64);
        assert!(fired >= last_fired);
        last_fired = fired;
        assert_eq!(
            m.value("duewheel_consumer_lag", &[("group", "orders")]),
            Some(0.0)
        );
    }
}
