//! Acknowledgements, redelivery and snooze (in memory; the durable variants
//! live in the durability tests).

use duewheel::{AckError, Cancel, Engine, EventKind, ManualClock, SnoozeError, SubscribeError};
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(30);

fn engine(clock: &ManualClock) -> Engine<u64, u64> {
    Engine::builder()
        .clock(clock.clone())
        .shards(2)
        .ack_timeout(Duration::from_secs(30))
        .max_snoozes(2)
        .group("orders")
        .group("stock")
        .build()
        .unwrap()
}

#[test]
fn unacked_expiry_is_redelivered_only_to_the_groups_that_did_not_ack() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock);
    let mut orders = engine.subscribe("orders").unwrap();
    let mut stock = engine.subscribe("stock").unwrap();
    let s = engine.scheduler();
    s.schedule(1, Duration::from_secs(60), 1).unwrap();
    clock.advance(Duration::from_secs(60));
    let o = orders.recv_timeout(WAIT).unwrap();
    let k = stock.recv_timeout(WAIT).unwrap();
    assert_eq!((o.attempt, k.attempt), (1, 1));
    orders.ack(&o).unwrap();
    // Still in flight: a payment arriving now learns the expiry won.
    assert!(matches!(s.cancel(&1).unwrap(), Cancel::AlreadyFired));
    assert_eq!(engine.stats().in_flight, 1);

    clock.advance(Duration::from_secs(29));
    assert!(s.settle(WAIT));
    assert!(
        stock.drain_ready().is_empty(),
        "redelivered before the ack timeout"
    );
    clock.advance(Duration::from_secs(1));
    assert!(s.settle(WAIT));
    assert!(
        orders.drain_ready().is_empty(),
        "orders acked: no redelivery"
    );
    let again = stock.drain_ready();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].id, again[0].kind, again[0].attempt),
        (1, EventKind::Expired, 2)
    );
    stock.ack(&again[0]).unwrap();
    let stats = engine.stats();
    assert_eq!(
        (stats.in_flight, stats.acked_total, stats.redelivered_total),
        (0, 1, 1)
    );
    assert_eq!(
        stock.ack(&again[0]),
        Err(AckError::NotInFlight),
        "acked twice"
    );
    // Nothing more comes.
    clock.advance(Duration::from_secs(300));
    assert!(s.settle(WAIT));
    assert!(stock.drain_ready().is_empty() && orders.drain_ready().is_empty());
}

#[test]
fn snooze_fires_again_later_and_a_payment_can_still_win_meanwhile() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock);
    let mut orders = engine.subscribe("orders").unwrap();
    let mut stock = engine.subscribe("stock").unwrap();
    let s = engine.scheduler();
    s.schedule(1, Duration::from_secs(60), 10).unwrap();
    s.schedule(2, Duration::from_secs(60), 20).unwrap();
    clock.advance(Duration::from_secs(60));
    for _ in 0..2 {
        let e = orders.recv_timeout(WAIT).unwrap();
        // The gateway still says "pending": look again in 30 s.
        orders.snooze(&e, Duration::from_secs(30)).unwrap();
    }
    stock.drain_ready();
    // Order 2's payment lands during the snooze: the cancel wins now.
    assert!(matches!(s.cancel(&2).unwrap(), Cancel::Cancelled(20)));
    clock.advance(Duration::from_secs(30));
    assert!(s.settle(WAIT));
    let again = orders.drain_ready();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempt), (1, 2));
    assert_eq!(
        stock.drain_ready().len(),
        1,
        "a snoozed expiry comes to every group"
    );

    // The snooze limit (2) holds.
    orders.snooze(&again[0], Duration::from_secs(30)).unwrap();
    clock.advance(Duration::from_secs(30));
    let third = orders.recv_timeout(WAIT).unwrap();
    assert_eq!(third.attempt, 3);
    assert_eq!(
        orders.snooze(&third, Duration::from_secs(30)),
        Err(SnoozeError::LimitReached { snoozes: 2 })
    );
    orders.ack(&third).unwrap();
    assert_eq!(engine.stats().snoozed_total, 3);
}

#[test]
fn reminders_need_no_ack() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock);
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    s.schedule_with_reminders(1, Duration::from_secs(60), &[Duration::from_secs(10)], 1)
        .unwrap();
    clock.advance(Duration::from_secs(50));
    let r = orders.recv_timeout(WAIT).unwrap();
    assert_eq!(r.kind, EventKind::Reminder(1));
    assert_eq!(orders.ack(&r), Ok(()));
    assert_eq!(
        orders.snooze(&r, Duration::from_secs(1)),
        Err(SnoozeError::NotInFlight)
    );
    assert_eq!(engine.stats().in_flight, 0);
}

#[test]
fn groups_are_fixed_when_acks_are_on() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock);
    assert_eq!(
        engine.scheduler().subscribe("audit").unwrap_err(),
        SubscribeError::UnknownGroup("audit".into())
    );
    // The engine's own `subscribe` says the same, as a value, not a panic.
    assert_eq!(
        engine.subscribe("audit").unwrap_err(),
        SubscribeError::UnknownGroup("audit".into())
    );
    let no_groups = Engine::<u64, u64>::builder()
        .clock(clock)
        .ack_timeout(Duration::from_secs(1))
        .build();
    assert!(no_groups.is_err());
}

#[test]
fn shutdown_hands_back_in_flight_timers_too() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock);
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    s.schedule(1, Duration::from_secs(1), 1).unwrap();
    s.schedule(2, Duration::from_secs(100), 2).unwrap();
    clock.advance(Duration::from_secs(1));
    orders.recv_timeout(WAIT).unwrap();
    let shutdown = engine.shutdown();
    let mut back: Vec<(u64, bool)> = shutdown
        .pending
        .iter()
        .map(|p| (p.id, p.in_flight))
        .collect();
    back.sort_unstable();
    assert_eq!(back, [(1, true), (2, false)]);
}

/// Issue #19 item 7: an ack names its event, not only its id.
#[test]
fn a_stale_ack_of_an_earlier_expiry_is_refused_and_the_new_one_still_redelivers() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock);
    let mut orders = engine.subscribe("orders").unwrap();
    let mut stock = engine.subscribe("stock").unwrap();
    let s = engine.scheduler();
    s.schedule(7, Duration::from_secs(1), 1).unwrap();
    clock.advance(Duration::from_secs(1));
    let first = orders.recv_timeout(WAIT).unwrap();
    orders.ack(&first).unwrap();
    let k = stock.recv_timeout(WAIT).unwrap();
    stock.ack(&k).unwrap();

    // Order 7 again (say, a retried checkout), and it expires again.
    s.schedule(7, Duration::from_secs(1), 2).unwrap();
    clock.advance(Duration::from_secs(1));
    let second = orders.recv_timeout(WAIT).unwrap();
    assert_eq!((second.id, second.payload), (7, 2));
    assert_ne!(first.token, second.token);

    // A consumer retries its ack of the first expiry: refused, and the
    // second stays in flight, for this group too.
    assert_eq!(orders.ack(&first), Err(AckError::Stale));
    assert_eq!(
        orders.snooze(&first, Duration::from_secs(5)),
        Err(SnoozeError::Stale)
    );
    assert_eq!(engine.stats().in_flight, 1);
    clock.advance(Duration::from_secs(30));
    assert!(s.settle(WAIT));
    let again = orders.drain_ready();
    assert_eq!(again.len(), 1, "the new expiry is redelivered");
    assert_eq!((again[0].id, again[0].attempt), (7, 2));
    assert_eq!(
        again[0].token, second.token,
        "a redelivery is the same event"
    );
    orders.ack(&again[0]).unwrap();
    // Stock holds the expiry twice (first delivery and redelivery): the
    // first ack ends the timer, the second finds nothing in flight.
    let stock_events = stock.drain_ready();
    assert_eq!(
        stock.ack_batch(&stock_events),
        [Ok(()), Err(AckError::NotInFlight)]
    );
    assert_eq!(engine.stats().in_flight, 0);
}

#[test]
fn a_batch_ack_answers_each_event_and_a_stale_one_fails_alone() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock);
    let mut orders = engine.subscribe("orders").unwrap();
    let mut stock = engine.subscribe("stock").unwrap();
    let s = engine.scheduler();
    s.schedule(1, Duration::from_secs(1), 1).unwrap();
    clock.advance(Duration::from_secs(1));
    let old = orders.recv_timeout(WAIT).unwrap();
    orders.ack(&old).unwrap();
    let k = stock.recv_timeout(WAIT).unwrap();
    stock.ack(&k).unwrap();
    for id in 1..=64 {
        s.schedule_with_reminders(id, Duration::from_secs(10), &[Duration::from_secs(5)], id)
            .unwrap();
    }
    clock.advance(Duration::from_secs(10));
    assert!(s.settle(WAIT));
    let mut events = orders.drain_ready();
    assert_eq!(events.len(), 128, "64 reminders and 64 expiries");
    events.push(old);
    let results = orders.ack_batch(&events);
    assert_eq!(results.len(), events.len());
    assert!(results[..128].iter().all(Result::is_ok));
    assert_eq!(results[128], Err(AckError::Stale));
    // Stock has not acked: still in flight, redelivered to stock alone.
    assert_eq!(engine.stats().in_flight, 64);
    let stock_events = stock.drain_ready();
    assert!(stock.ack_batch(&stock_events).iter().all(Result::is_ok));
    let stats = engine.stats();
    assert_eq!((stats.in_flight, stats.acked_total), (0, 65));
    clock.advance(Duration::from_secs(60));
    assert!(s.settle(WAIT));
    assert!(orders.drain_ready().is_empty() && stock.drain_ready().is_empty());
}

/// Counts the timers reported ended (the cluster deletes their rows there).
#[derive(Default)]
struct Ends(std::sync::Mutex<Vec<u64>>);

impl duewheel::Hooks<u64, u64> for Ends {
    fn ended(&self, id: &u64) {
        self.0.lock().unwrap().push(*id);
    }
}

/// Every path that ends a timer by acknowledgement reports it: blocking,
/// batch, async and async batch.
#[test]
fn every_ack_path_reports_the_ended_timer_to_the_hooks() {
    let clock = ManualClock::new(T0);
    let ends = std::sync::Arc::new(Ends::default());
    let engine = Engine::<u64, u64>::builder()
        .clock(clock.clone())
        .ack_timeout(Duration::from_secs(30))
        .group("orders")
        .hooks(ends.clone())
        .build()
        .unwrap();
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    for id in 1..=6 {
        s.schedule(id, Duration::from_secs(1), id).unwrap();
    }
    clock.advance(Duration::from_secs(1));
    assert!(s.settle(WAIT));
    let mut events = orders.drain_ready();
    events.sort_by_key(|e| e.id);
    orders.ack(&events[0]).unwrap();
    assert!(orders.ack_batch(&events[1..3]).iter().all(Result::is_ok));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(orders.ack_async(&events[3])).unwrap();
    let batch = runtime.block_on(orders.ack_batch_async(&events[4..6]));
    assert!(batch.iter().all(Result::is_ok));
    let mut ended = ends.0.lock().unwrap().clone();
    ended.sort_unstable();
    assert_eq!(ended, [1, 2, 3, 4, 5, 6]);
    // A refused (stale or repeated) ack reports nothing.
    assert_eq!(orders.ack(&events[0]), Err(AckError::NotInFlight));
    assert_eq!(ends.0.lock().unwrap().len(), 6);
}

/// Records the snoozes reported (the cluster writes them back to the row).
#[derive(Default)]
struct Snoozes(std::sync::Mutex<Vec<(u64, u32, u64)>>);

impl duewheel::Hooks<u64, u64> for Snoozes {
    fn snoozed(&self, event: &duewheel::Event<u64, u64>, until_ms: u64) {
        self.0
            .lock()
            .unwrap()
            .push((event.id, event.attempt, until_ms));
    }
}

/// Both snooze paths, blocking and async, report each accepted snooze with
/// the event snoozed and when it is due again; a refused one reports nothing.
#[test]
fn every_snooze_path_reports_the_snooze_to_the_hooks() {
    let clock = ManualClock::new(T0);
    let snoozes = std::sync::Arc::new(Snoozes::default());
    let engine = Engine::<u64, u64>::builder()
        .clock(clock.clone())
        .ack_timeout(Duration::from_secs(30))
        .max_snoozes(1)
        .group("orders")
        .hooks(snoozes.clone())
        .build()
        .unwrap();
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    s.schedule(1, Duration::from_secs(1), 1).unwrap();
    s.schedule(2, Duration::from_secs(1), 2).unwrap();
    clock.advance(Duration::from_secs(1));
    assert!(s.settle(WAIT));
    let mut events = orders.drain_ready();
    events.sort_by_key(|e| e.id);
    orders.snooze(&events[0], Duration::from_secs(10)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime
        .block_on(orders.snooze_async(&events[1], Duration::from_secs(20)))
        .unwrap();
    let now = T0 + 1000;
    assert_eq!(
        *snoozes.0.lock().unwrap(),
        [(1, 1, now + 10_000), (2, 1, now + 20_000)]
    );
    // Refused (not in flight any more): nothing reported.
    assert!(orders.snooze(&events[0], Duration::from_secs(5)).is_err());
    assert_eq!(snoozes.0.lock().unwrap().len(), 2);
}
