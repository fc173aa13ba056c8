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
