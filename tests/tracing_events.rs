//! Feature `tracing`: the engine reports what an operator needs (batches,
//! stalls, backpressure, WAL commits, checkpoints, recovery) and never
//! logs once per timer.
#![cfg(feature = "tracing")]

use duewheel::wal::{FaultStorage, Storage};
use duewheel::{Engine, ManualClock};
use parking_lot::Mutex;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

const T0: u64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(10);

/// Every event seen: level, message and the other fields as text.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<(Level, String)>>>);

impl Recorded {
    fn take(&self) -> Vec<(Level, String)> {
        std::mem::take(&mut *self.0.lock())
    }
}

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl Subscriber for Recorded {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("duewheel")
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = Text(String::new());
        event.record(&mut text);
        self.0.lock().push((*event.metadata().level(), text.0));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn count(events: &[(Level, String)], level: Level, needle: &str) -> usize {
    events
        .iter()
        .filter(|(l, text)| *l == level && text.contains(needle))
        .count()
}

// One test: the subscriber is process-wide (the dispatcher and the WAL
// writer run on threads of their own).
#[test]
fn operators_see_batches_stalls_backpressure_and_wal_work_but_no_line_per_timer() {
    let recorded = Recorded::default();
    tracing::subscriber::set_global_default(recorded.clone()).unwrap();

    // 20,000 timers fired and received: a handful of batch events, no more.
    let clock = ManualClock::new(T0);
    let engine = Engine::<u64, ()>::builder()
        .clock(clock.clone())
        .shards(2)
        .build()
        .unwrap();
    let mut orders = engine.subscribe("orders").unwrap();
    const N: u64 = 20_000;
    for id in 0..N {
        engine
            .scheduler()
            .schedule(id, Duration::from_secs(60), ())
            .unwrap();
    }
    clock.advance(Duration::from_secs(60));
    for _ in 0..N {
        orders.recv_timeout(WAIT).unwrap();
    }
    drop(engine.shutdown());
    let events = recorded.take();
    assert_eq!(count(&events, Level::INFO, "engine started"), 1);
    assert_eq!(count(&events, Level::INFO, "engine stopped"), 1);
    let batches = count(&events, Level::TRACE, "delivering a batch");
    // Up to 1,024 events a batch per shard (a round may carry more): about
    // 20, never one per timer.
    assert!((10..=40).contains(&batches), "{batches} batch events");
    assert!(events.len() < 100, "{} events for {N} timers", events.len());

    // A stall: the clock jumps 90 s past a deadline, so the event leaves
    // the wheel 90 s late.
    let engine = Engine::<u64, ()>::builder()
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut orders = engine.subscribe("orders").unwrap();
    engine
        .scheduler()
        .schedule(1, Duration::from_secs(10), ())
        .unwrap();
    clock.advance(Duration::from_secs(100));
    orders.recv_timeout(WAIT).unwrap();
    assert!(engine.scheduler().settle(WAIT));
    drop(engine.shutdown());
    let events = recorded.take();
    assert_eq!(count(&events, Level::WARN, "dispatcher behind"), 1);
    assert!(
        count(&events, Level::WARN, "late_ms=90000") == 1,
        "{events:?}"
    );
    assert_eq!(count(&events, Level::INFO, "dispatcher caught up"), 1);

    // Backpressure: a group that holds one event and a consumer that does
    // not read for a while.
    let engine = Engine::<u64, ()>::builder()
        .clock(clock.clone())
        .batch_size(1)
        .channel_capacity(1)
        .build()
        .unwrap();
    let mut slow = engine.subscribe("slow").unwrap();
    for id in 0..5 {
        engine
            .scheduler()
            .schedule(id, Duration::from_secs(1), ())
            .unwrap();
    }
    clock.advance(Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        slow.recv_timeout(WAIT).unwrap();
    }
    drop(engine.shutdown());
    let events = recorded.take();
    let full = count(&events, Level::WARN, "consumer group full");
    assert!(full >= 1, "{events:?}");
    assert!(count(&events, Level::WARN, "group=\"slow\"") >= 1);
    assert_eq!(count(&events, Level::INFO, "has room again"), full);

    // Durable: commits, a checkpoint at shutdown, recovery at reopen.
    let storage = FaultStorage::new();
    let durable = |storage: &FaultStorage| {
        Engine::<u64, String>::builder()
            .clock(clock.clone())
            .group("orders")
            .durable_storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
            .build()
            .unwrap()
    };
    let engine = durable(&storage);
    for id in 0..100 {
        engine
            .scheduler()
            .schedule(id, Duration::from_secs(60), format!("order {id}"))
            .unwrap();
    }
    drop(engine.shutdown());
    let events = recorded.take();
    let commits = count(&events, Level::TRACE, "wal commit");
    assert!((1..=100).contains(&commits), "{commits} commits");
    assert_eq!(count(&events, Level::INFO, "checkpoint written"), 1);
    assert_eq!(count(&events, Level::INFO, "wal recovered"), 1);

    let engine = durable(&storage);
    assert_eq!(engine.recovered().unwrap().timers, 100);
    drop(engine.shutdown());
    let events = recorded.take();
    assert_eq!(count(&events, Level::INFO, "snapshot_entries=100"), 1);
    assert_eq!(count(&events, Level::INFO, "recovered its timers"), 1);
}
