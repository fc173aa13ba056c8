//! `Scheduler::get`: what the engine knows of one id, as cancel would see
//! it (issue #20).

use duewheel::{Cancel, Engine, ManualClock, TimerStatus};
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(30);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn acked(clock: &ManualClock) -> Engine<u64, String> {
    Engine::builder()
        .clock(clock.clone())
        .shards(4)
        .ack_timeout(secs(10))
        .group("orders")
        .build()
        .unwrap()
}

#[test]
fn a_waiting_timer_shows_its_deadline_reminders_and_payload() {
    let clock = ManualClock::new(T0);
    let engine = acked(&clock);
    let s = engine.scheduler();
    s.schedule(1, secs(1800), "plain".into()).unwrap();
    s.schedule_with_reminders(2, secs(1800), &[secs(300)], "one".into())
        .unwrap();
    s.schedule_with_reminders(3, secs(1800), &[secs(60), secs(600)], "two".into())
        .unwrap();
    let deadline = T0 + 1_800_000;
    let one = s.get(&1).unwrap();
    assert_eq!(one.status, TimerStatus::Waiting);
    assert_eq!(
        (one.deadline_ms, one.next_due_ms),
        (Some(deadline), Some(deadline))
    );
    assert!(one.reminders_ms.is_empty());
    assert_eq!((one.attempt, one.payload.as_deref()), (1, Some("plain")));
    let two = s.get(&2).unwrap();
    assert_eq!(two.deadline_ms, Some(deadline));
    assert_eq!(two.reminders_ms, [deadline - 300_000]);
    assert_eq!(two.next_due_ms, Some(deadline - 300_000));
    let three = s.get(&3).unwrap();
    assert_eq!(three.reminders_ms, [deadline - 600_000, deadline - 60_000]);
    assert!(s.get(&4).is_none());
}

#[test]
fn lookup_follows_a_timer_through_reminders_flight_and_its_end() {
    let clock = ManualClock::new(T0);
    let engine = acked(&clock);
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    s.schedule_with_reminders(1, secs(60), &[secs(30), secs(10)], "o".into())
        .unwrap();
    clock.advance(secs(30));
    assert!(s.settle(WAIT));
    assert_eq!(s.get(&1).unwrap().reminders_ms, [T0 + 50_000]);
    clock.advance(secs(30));
    assert!(s.settle(WAIT));
    let info = s.get(&1).unwrap();
    assert_eq!(info.status, TimerStatus::InFlight);
    assert!(info.reminders_ms.is_empty());
    assert_eq!(info.next_due_ms, Some(T0 + 70_000), "redelivery time");
    clock.advance(secs(10));
    assert!(s.settle(WAIT));
    assert_eq!(s.get(&1).unwrap().attempt, 2);
    let events = orders.drain_ready();
    let last = events.last().unwrap();
    orders.ack(last).unwrap();
    let info = s.get(&1).unwrap();
    assert_eq!(info.status, TimerStatus::Fired);
    assert_eq!((info.deadline_ms, info.payload), (None, None));
}

#[test]
fn lookup_agrees_with_what_cancel_then_answers() {
    let clock = ManualClock::new(T0);
    let engine = acked(&clock);
    let _orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    for id in 0..300u64 {
        s.schedule(id, secs(1 + id % 3), id.to_string()).unwrap();
    }
    for id in (0..300u64).step_by(5) {
        assert!(s.cancel(&id).unwrap().is_cancelled());
    }
    clock.advance(secs(2));
    assert!(s.settle(WAIT));
    for id in 0..300u64 {
        let seen = s.get(&id).map(|i| i.status);
        let cancel = s.cancel(&id).unwrap();
        match seen {
            None => assert!(matches!(cancel, Cancel::NotFound), "{id}"),
            Some(TimerStatus::Waiting) => assert!(cancel.is_cancelled(), "{id}"),
            Some(_) => assert!(matches!(cancel, Cancel::AlreadyFired), "{id}"),
        }
    }
}

#[test]
fn a_cancelled_timer_is_unknown() {
    let clock = ManualClock::new(T0);
    let engine = acked(&clock);
    let s = engine.scheduler();
    s.schedule(1, secs(60), "o".into()).unwrap();
    assert!(s.cancel(&1).unwrap().is_cancelled());
    assert!(s.get(&1).is_none());
}
