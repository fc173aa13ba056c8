//! Lateness counts only events due at a tick the engine had already passed;
//! a reminder already past when scheduled is counted apart (issue #20).

use duewheel::{Engine, EventKind, ManualClock};
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_reminder_already_past_at_scheduling_is_counted_apart_not_as_lateness() {
    let clock = ManualClock::new(T0);
    let engine = Engine::<u64, u64>::builder()
        .clock(clock.clone())
        .shards(2)
        .build()
        .unwrap();
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    // A reminder 60 minutes before a 30-minute window: past already.
    let window = Duration::from_secs(30 * 60);
    s.schedule_with_reminders(1, window, &[Duration::from_secs(60 * 60)], 1)
        .unwrap();
    assert!(s.settle(WAIT));
    let reminder = orders.recv_timeout(WAIT).unwrap();
    assert_eq!(reminder.kind, EventKind::Reminder(1));
    assert_eq!(reminder.due_ms, T0, "due when scheduled");
    clock.advance(window);
    assert!(s.settle(WAIT));
    let expiry = orders.recv_timeout(WAIT).unwrap();
    assert_eq!(expiry.kind, EventKind::Expired);
    let stats = engine.stats();
    assert_eq!(stats.reminders_already_due, 1);
    assert_eq!(stats.lateness.count, 2);
    assert_eq!(stats.lateness.max_ticks, 0, "{:?}", stats.lateness);
}

#[test]
fn only_the_past_reminders_of_a_timer_are_counted_apart() {
    let clock = ManualClock::new(T0);
    let engine = Engine::<u64, u64>::builder()
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    let reminders = [Duration::from_secs(3600), Duration::from_secs(60)];
    s.schedule_with_reminders(1, Duration::from_secs(600), &reminders, 1)
        .unwrap();
    assert!(s.settle(WAIT));
    assert_eq!(
        orders.recv_timeout(WAIT).unwrap().kind,
        EventKind::Reminder(1)
    );
    clock.advance(Duration::from_secs(600));
    assert!(s.settle(WAIT));
    let kinds: Vec<_> = orders.drain_ready().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Reminder(2), EventKind::Expired]);
    let stats = engine.stats();
    assert_eq!(stats.reminders_already_due, 1);
}

#[test]
fn a_reschedule_that_leaves_a_reminder_in_the_past_counts_it_apart() {
    let clock = ManualClock::new(T0);
    let engine = Engine::<u64, u64>::builder()
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    let window = Duration::from_secs(30 * 60);
    s.schedule_with_reminders(1, window, &[Duration::from_secs(10 * 60)], 1)
        .unwrap();
    // The window is cut to 5 minutes: the reminder's time has passed.
    s.reschedule(&1, Duration::from_secs(5 * 60)).unwrap();
    assert!(s.settle(WAIT));
    let reminder = orders.recv_timeout(WAIT).unwrap();
    assert_eq!(
        (reminder.kind, reminder.due_ms),
        (EventKind::Reminder(1), T0)
    );
    let stats = engine.stats();
    assert_eq!(stats.reminders_already_due, 1);
    assert_eq!(stats.lateness.max_ticks, 0);
}
