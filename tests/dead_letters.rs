//! Attempt bounds and dead letters (issue #20): after its last attempt an
//! unacked expiry goes to the dead-letter group, is counted, survives a
//! restart, and is never dropped.

use duewheel::wal::{FaultStorage, Storage};
use duewheel::{
    AckError, BuildError, Engine, EventKind, ManualClock, ScheduleError, ScheduleOptions,
    SnoozeError, TimerStatus,
};
use std::sync::Arc;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(10);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn engine(clock: &ManualClock, max_attempts: Option<u32>) -> Engine<u64, u64> {
    let mut b = Engine::builder()
        .clock(clock.clone())
        .shards(2)
        .ack_timeout(TIMEOUT)
        .group("orders")
        .group("audit")
        .dead_letter_group("dlq");
    if let Some(n) = max_attempts {
        b = b.max_attempts(n);
    }
    b.build().unwrap()
}

/// Advances one ack timeout and lets the dispatcher hand everything over.
fn time_out(clock: &ManualClock, engine: &Engine<u64, u64>) {
    clock.advance(TIMEOUT);
    assert!(engine.scheduler().settle(WAIT));
}

#[test]
fn the_last_unacked_attempt_goes_to_the_dead_letter_group_alone() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock, Some(3));
    let mut orders = engine.subscribe("orders").unwrap();
    let mut audit = engine.subscribe("audit").unwrap();
    let mut dlq = engine.subscribe("dlq").unwrap();
    let s = engine.scheduler();
    s.schedule(1, secs(60), 100).unwrap();
    clock.advance(secs(60));
    assert!(s.settle(WAIT));
    for attempt in 1..=3 {
        let event = orders.try_recv().unwrap();
        assert_eq!((event.kind, event.attempt), (EventKind::Expired, attempt));
        // The audit group acked the first delivery, so it gets no
        // redelivery; orders fails every time.
        if attempt == 1 {
            let seen = audit.try_recv().unwrap();
            audit.ack(&seen).unwrap();
        }
        assert!(audit.try_recv().is_err());
        assert!(
            dlq.try_recv().is_err(),
            "the dead-letter group gets no expiry"
        );
        time_out(&clock, &engine);
    }
    assert!(orders.try_recv().is_err(), "no fourth attempt");
    let dead = dlq.try_recv().unwrap();
    assert_eq!(
        (dead.id, dead.kind, dead.attempt, dead.payload),
        (1, EventKind::DeadLetter, 3, 100)
    );
    let stats = engine.stats();
    assert_eq!(
        (
            stats.dead_lettered,
            stats.dead_letters,
            stats.in_flight,
            stats.pending
        ),
        (1, 1, 0, 0)
    );
    assert_eq!(s.get(&1).unwrap().status, TimerStatus::DeadLettered);
    // A late ack of the expiry does not end it: the dead-letter group owns it.
    assert_eq!(audit.ack(&dead), Err(AckError::DeadLettered));
    dlq.ack(&dead).unwrap();
    let stats = engine.stats();
    assert_eq!((stats.dead_lettered, stats.dead_letters), (1, 0));
    assert_eq!(s.get(&1).unwrap().status, TimerStatus::Fired);
    time_out(&clock, &engine);
    assert!(dlq.try_recv().is_err() && orders.try_recv().is_err());
}

#[test]
fn shutdown_hands_back_a_dead_letter_as_one() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock, Some(1));
    let _orders = engine.subscribe("orders").unwrap();
    let _dlq = engine.subscribe("dlq").unwrap();
    let s = engine.scheduler();
    s.schedule(1, secs(1), 1).unwrap();
    s.schedule(2, secs(60), 2).unwrap();
    clock.advance(secs(1));
    assert!(s.settle(WAIT));
    time_out(&clock, &engine);
    let mut pending = engine.shutdown().pending;
    pending.sort_by_key(|p| p.id);
    let flags: Vec<_> = pending
        .iter()
        .map(|p| (p.id, p.in_flight, p.dead_lettered))
        .collect();
    assert_eq!(flags, [(1, true, true), (2, false, false)]);
}

#[test]
fn a_dead_letter_comes_again_every_ack_timeout_until_the_dead_letter_group_acks_it() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock, Some(1));
    let mut orders = engine.subscribe("orders").unwrap();
    let mut dlq = engine.subscribe("dlq").unwrap();
    let s = engine.scheduler();
    s.schedule(1, secs(1), 1).unwrap();
    clock.advance(secs(1));
    assert!(s.settle(WAIT));
    let expiry = orders.try_recv().unwrap();
    time_out(&clock, &engine);
    for _ in 0..3 {
        let dead = dlq.try_recv().unwrap();
        assert_eq!(
            (dead.kind, dead.token),
            (EventKind::DeadLetter, expiry.token)
        );
        assert_eq!(dlq.snooze(&dead, secs(1)), Err(SnoozeError::DeadLettered));
        time_out(&clock, &engine);
    }
    let last = dlq.try_recv().unwrap();
    dlq.ack(&last).unwrap();
    time_out(&clock, &engine);
    assert!(dlq.try_recv().is_err());
    assert!(orders.try_recv().is_err(), "orders never sees it again");
    assert_eq!(engine.stats().acked_total, 1);
}

#[test]
fn without_a_bound_an_unacked_expiry_is_redelivered_without_end() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock, None);
    let mut orders = engine.subscribe("orders").unwrap();
    let mut dlq = engine.subscribe("dlq").unwrap();
    let s = engine.scheduler();
    s.schedule(1, secs(1), 1).unwrap();
    clock.advance(secs(1));
    assert!(s.settle(WAIT));
    for attempt in 1..=20 {
        assert_eq!(orders.try_recv().unwrap().attempt, attempt);
        time_out(&clock, &engine);
    }
    assert!(dlq.try_recv().is_err());
    assert_eq!(engine.stats().dead_lettered, 0);
}

#[test]
fn snoozes_do_not_count_as_failed_attempts() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock, Some(2));
    let mut orders = engine.subscribe("orders").unwrap();
    let mut dlq = engine.subscribe("dlq").unwrap();
    let s = engine.scheduler();
    s.schedule(1, secs(1), 1).unwrap();
    clock.advance(secs(1));
    assert!(s.settle(WAIT));
    // Three snoozes: the gateway still says "pending".
    for _ in 0..3 {
        let event = orders.try_recv().unwrap();
        orders.snooze(&event, secs(5)).unwrap();
        clock.advance(secs(5));
        assert!(s.settle(WAIT));
    }
    // Then two deliveries fail: only now is it dead-lettered.
    let fourth = orders.try_recv().unwrap();
    assert_eq!(fourth.attempt, 4);
    time_out(&clock, &engine);
    assert_eq!(orders.try_recv().unwrap().attempt, 5);
    assert!(dlq.try_recv().is_err());
    time_out(&clock, &engine);
    assert_eq!(dlq.try_recv().unwrap().kind, EventKind::DeadLetter);
}

#[test]
fn a_timer_may_carry_its_own_bound() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock, None);
    let mut orders = engine.subscribe("orders").unwrap();
    let mut dlq = engine.subscribe("dlq").unwrap();
    let s = engine.scheduler();
    let remind = [secs(30)];
    let options = ScheduleOptions::new().reminders(&remind).max_attempts(2);
    s.schedule_with(1, secs(60), options, 1).unwrap();
    s.schedule(2, secs(60), 2).unwrap();
    clock.advance(secs(60));
    assert!(s.settle(WAIT));
    let kinds: Vec<_> = orders
        .drain_ready()
        .iter()
        .map(|e| (e.id, e.kind))
        .collect();
    assert!(kinds.contains(&(1, EventKind::Reminder(1))));
    for _ in 0..2 {
        time_out(&clock, &engine);
    }
    let dead: Vec<_> = dlq.drain_ready().iter().map(|e| (e.id, e.kind)).collect();
    assert_eq!(dead, [(1, EventKind::DeadLetter)], "timer 2 has no bound");
    assert_eq!(s.get(&2).unwrap().status, TimerStatus::InFlight);
}

#[test]
fn a_bound_without_a_dead_letter_group_is_refused_with_the_payload() {
    let clock = ManualClock::new(T0);
    let engine = Engine::<u64, u64>::builder()
        .clock(clock.clone())
        .ack_timeout(TIMEOUT)
        .group("orders")
        .build()
        .unwrap();
    let err = engine
        .scheduler()
        .schedule_with(1, secs(1), ScheduleOptions::new().max_attempts(2), 7)
        .unwrap_err();
    assert!(
        matches!(err, ScheduleError::Invalid { payload: 7, .. }),
        "{err:?}"
    );
    let build = |b: duewheel::Builder<u64, u64>| b.clock(clock.clone()).build().map(drop);
    let refused = |r: Result<(), BuildError>| matches!(r, Err(BuildError::Invalid(_)));
    let acks = || Engine::builder().ack_timeout(TIMEOUT).group("orders");
    assert!(
        refused(build(acks().max_attempts(3))),
        "no dead-letter group"
    );
    assert!(refused(build(
        acks().dead_letter_group("dlq").max_attempts(0)
    )));
    assert!(
        refused(build(Engine::builder().dead_letter_group("dlq"))),
        "no acks"
    );
    assert!(refused(build(
        Engine::builder()
            .ack_timeout(TIMEOUT)
            .dead_letter_group("dlq")
    )));
    assert!(build(acks().dead_letter_group("dlq").max_attempts(3)).is_ok());
}

fn durable(clock: &ManualClock, disk: &FaultStorage) -> Engine<u64, String> {
    Engine::builder()
        .clock(clock.clone())
        .shards(2)
        .ack_timeout(TIMEOUT)
        .max_attempts(1)
        .group("orders")
        .dead_letter_group("dlq")
        .durable_storage(Arc::new(disk.clone()) as Arc<dyn Storage>)
        .build()
        .unwrap()
}

#[test]
fn a_dead_letter_survives_a_restart_until_the_dead_letter_group_acks_it() {
    let clock = ManualClock::new(T0);
    let disk = FaultStorage::new();
    let engine = durable(&clock, &disk);
    let mut orders = engine.subscribe("orders").unwrap();
    let mut dlq = engine.subscribe("dlq").unwrap();
    let s = engine.scheduler();
    s.schedule(1, secs(1), "poison".into()).unwrap();
    s.schedule_with(
        2,
        secs(1),
        ScheduleOptions::new().max_attempts(5),
        "own".into(),
    )
    .unwrap();
    clock.advance(secs(1));
    assert!(s.settle(WAIT));
    assert_eq!(orders.drain_ready().len(), 2);
    clock.advance(TIMEOUT);
    assert!(s.settle(WAIT));
    assert_eq!(dlq.drain_ready().len(), 1, "timer 1 is dead-lettered");
    drop((orders, dlq));
    drop(engine.shutdown());
    let engine = durable(&clock, &disk);
    let mut orders = engine.subscribe("orders").unwrap();
    let mut dlq = engine.subscribe("dlq").unwrap();
    let s = engine.scheduler();
    assert_eq!(s.get(&1).unwrap().status, TimerStatus::DeadLettered);
    assert_eq!(s.get(&2).unwrap().status, TimerStatus::InFlight);
    assert!(s.settle(WAIT));
    let dead = dlq.try_recv().unwrap();
    assert_eq!((dead.id, dead.kind), (1, EventKind::DeadLetter));
    // Timer 2 kept its own bound of 5: redelivered, not dead-lettered.
    let again = orders.try_recv().unwrap();
    assert_eq!((again.id, again.kind), (2, EventKind::Expired));
    assert!(orders.try_recv().is_err() && dlq.try_recv().is_err());
    assert_eq!(engine.stats().dead_letters, 1);
    dlq.ack(&dead).unwrap();
    orders.ack(&again).unwrap();
    drop(engine.shutdown());
    let engine = durable(&clock, &disk.reboot());
    assert_eq!(
        engine.recovered().unwrap().timers,
        0,
        "acked: gone for good"
    );
}

#[cfg(feature = "prometheus")]
#[test]
fn dead_letters_are_exported_to_prometheus() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock, Some(1));
    let _orders = engine.subscribe("orders").unwrap();
    let _dlq = engine.subscribe("dlq").unwrap();
    engine.scheduler().schedule(1, secs(1), 1).unwrap();
    clock.advance(secs(1));
    assert!(engine.scheduler().settle(WAIT));
    time_out(&clock, &engine);
    let text = duewheel::prometheus::Exporter::new(&engine).render();
    let m = duewheel_testkit::prom_text::parse(&text).unwrap();
    assert_eq!(
        m.value("duewheel_dead_lettered_total", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(m.value("duewheel_dead_letters", &[]), Some(1.0), "{text}");
}

#[test]
fn a_crash_right_after_dead_lettering_loses_nothing() {
    let clock = ManualClock::new(T0);
    let disk = FaultStorage::new();
    let engine = durable(&clock, &disk);
    let mut orders = engine.subscribe("orders").unwrap();
    let mut dlq = engine.subscribe("dlq").unwrap();
    let s = engine.scheduler();
    s.schedule(1, secs(1), "poison".into()).unwrap();
    clock.advance(secs(1));
    assert!(s.settle(WAIT));
    assert_eq!(orders.drain_ready().len(), 1);
    clock.advance(TIMEOUT);
    assert!(s.settle(WAIT));
    assert_eq!(dlq.drain_ready().len(), 1);
    drop((orders, dlq));
    // A crash: no shutdown; what was not synced is gone. The timer comes
    // back in its last durable state and ends in the dead-letter group again.
    std::mem::forget(engine);
    let engine = durable(&clock, &disk.reboot());
    let mut orders = engine.subscribe("orders").unwrap();
    let mut dlq = engine.subscribe("dlq").unwrap();
    let s = engine.scheduler();
    let mut dead = None;
    for _ in 0..3 {
        assert!(s.settle(WAIT));
        drop(orders.drain_ready()); // the consumer still fails
        if let Some(event) = dlq.drain_ready().pop() {
            dead = Some(event);
            break;
        }
        clock.advance(TIMEOUT);
    }
    let dead = dead.expect("the poison order reached the dead-letter group again");
    assert_eq!((dead.id, dead.kind), (1, EventKind::DeadLetter));
    dlq.ack(&dead).unwrap();
    drop(engine.shutdown());
}
