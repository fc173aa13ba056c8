//! The engine's promises, one behaviour per test, on a `ManualClock` unless a
//! test is about real sleeping. No test asserts how long anything took.

use duewheel::{
    Cancel, CancelError, Engine, Event, EventKind, ManualClock, RescheduleError, ScheduleError,
    SystemClock,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(30);

fn engine(clock: &ManualClock) -> Engine<u64, u64> {
    Engine::builder()
        .clock(clock.clone())
        .shards(4)
        .group("orders")
        .build()
        .unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn nothing_fires_before_its_deadline_and_everything_fires_at_it() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock);
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    for id in 0..1_000u64 {
        s.schedule(id, ms(1 + id % 100), id).unwrap();
    }
    for step in 1..=100u64 {
        clock.set_ms(T0 + step - 1);
        assert!(s.settle(WAIT));
        // Everything due by now has been handed over; nothing later has.
        for event in orders.drain_ready() {
            assert!(event.due_ms < T0 + step, "early: {event:?}");
            assert!(event.fired_at_ms >= event.due_ms);
        }
        clock.set_ms(T0 + step);
        assert!(s.settle(WAIT));
        let fired = orders.drain_ready();
        assert_eq!(fired.len(), 10, "step {step}");
        assert!(fired.iter().all(|e| e.deadline_ms == T0 + step));
    }
    assert_eq!(engine.stats().pending, 0);
}

#[test]
fn events_reach_the_groups_in_deadline_order_across_shards() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock);
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    // Ids spread over all shards, deadlines interleaved.
    for id in 0..5_000u64 {
        s.schedule(id, ms(1 + (id * 7919) % 3_000), id).unwrap();
    }
    clock.advance(Duration::from_secs(10));
    let mut last = 0;
    for _ in 0..5_000 {
        let event = orders.recv_timeout(WAIT).unwrap();
        assert!(event.deadline_ms >= last, "out of order");
        last = event.deadline_ms;
    }
}

#[test]
fn deadline_in_the_past_fires_on_the_next_round_not_inside_schedule() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock);
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    s.schedule(1, duewheel::Deadline::at_unix_ms(T0 - 5_000), 1)
        .unwrap();
    // It is pending until the dispatcher takes it; cancel can still win.
    let event = orders.recv_timeout(WAIT).unwrap();
    assert_eq!((event.id, event.kind), (1, EventKind::Expired));
    assert_eq!(event.deadline_ms, T0 - 5_000);
    assert!(matches!(s.cancel(&1).unwrap(), Cancel::AlreadyFired));
}

#[test]
fn every_error_hands_the_payload_back() {
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, String> = Engine::builder()
        .clock(clock.clone())
        .shards(1)
        .max_pending(1)
        .build()
        .unwrap();
    let s = engine.scheduler();
    s.schedule(1, ms(10), "a".into()).unwrap();
    match s.schedule(1, ms(10), "dup".into()) {
        Err(ScheduleError::AlreadyScheduled(p)) => assert_eq!(p, "dup"),
        other => panic!("{other:?}"),
    }
    match s.schedule(2, ms(10), "full".into()) {
        Err(ScheduleError::Full {
            payload,
            max_pending,
        }) => {
            assert_eq!((payload.as_str(), max_pending), ("full", 1));
        }
        other => panic!("{other:?}"),
    }
    assert!(s.cancel(&1).unwrap().is_cancelled());
    match s.schedule(3, Duration::from_secs(10 * 365 * 86_400), "far".into()) {
        Err(ScheduleError::DeadlineTooFar { payload, .. }) => assert_eq!(payload, "far"),
        other => panic!("{other:?}"),
    }
    match s.schedule_with_reminders(4, ms(10), &[ms(1); 5], "many".into()) {
        Err(ScheduleError::TooManyReminders(p)) => assert_eq!(p, "many"),
        other => panic!("{other:?}"),
    }
    drop(engine.shutdown());
    match s.schedule(5, ms(10), "late".into()) {
        Err(ScheduleError::ShuttingDown(p)) => assert_eq!(p, "late"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.reschedule(&5, ms(10)), Err(RescheduleError::ShuttingDown));
}

#[test]
fn pending_cap_holds_and_counters_never_drift() {
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .max_pending(100)
        .group("g")
        .build()
        .unwrap();
    let mut g = engine.subscribe("g").unwrap();
    let s = engine.scheduler();
    let mut accepted = 0u64;
    let mut refused = 0u64;
    // Fill, cancel some, let some fire, fill again: the cap must hold exactly
    // throughout (Netty #14959 let it drift after cancels).
    for round in 0..20u64 {
        for i in 0..150u64 {
            let id = round * 1_000 + i;
            match s.schedule(id, ms(1 + i % 7), id) {
                Ok(()) => accepted += 1,
                Err(ScheduleError::Full { payload, .. }) => {
                    assert_eq!(payload, id);
                    refused += 1;
                }
                Err(e) => panic!("{e:?}"),
            }
            assert!(engine.stats().pending <= 100);
        }
        for i in (0..150u64).step_by(3) {
            let _ = s.cancel(&(round * 1_000 + i)).unwrap();
        }
        clock.advance(ms(10));
        assert!(s.settle(WAIT));
        g.drain_ready();
        let stats = engine.stats();
        assert_eq!(stats.pending, 0);
        assert_eq!(
            stats.scheduled_total,
            stats.cancelled_total + stats.expired_total + stats.pending as u64
        );
    }
    let stats = engine.stats();
    assert_eq!(stats.scheduled_total, accepted);
    assert_eq!(stats.rejected_full_total, refused);
    assert!(refused > 0);
}

#[test]
fn reminders_come_in_order_before_the_expiry() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock);
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    let window = Duration::from_secs(30 * 60);
    let reminders = [Duration::from_secs(60), Duration::from_secs(5 * 60)];
    for id in 0..100u64 {
        s.schedule_with_reminders(id, window, &reminders, id)
            .unwrap();
    }
    // Before the first reminder: nothing.
    clock.set_ms(T0 + 25 * 60_000 - 1);
    assert!(s.settle(WAIT));
    assert!(orders.drain_ready().is_empty());
    clock.set_ms(T0 + 25 * 60_000);
    assert!(s.settle(WAIT));
    let first = orders.drain_ready();
    assert_eq!(first.len(), 100);
    assert!(first.iter().all(|e| e.kind == EventKind::Reminder(1)));
    assert!(first.iter().all(|e| e.due_ms == T0 + 25 * 60_000));
    // Cancel half between the reminders: they get no more events.
    for id in (0..100u64).step_by(2) {
        assert!(s.cancel(&id).unwrap().is_cancelled());
    }
    clock.advance(window);
    let mut seen: HashMap<u64, Vec<EventKind>> = HashMap::new();
    for _ in 0..100 {
        let e = orders.recv_timeout(WAIT).unwrap();
        seen.entry(e.id).or_default().push(e.kind);
    }
    assert!(s.settle(WAIT));
    assert!(orders.drain_ready().is_empty());
    for id in 0..100u64 {
        if id % 2 == 0 {
            assert!(
                !seen.contains_key(&id),
                "cancelled {id} got {:?}",
                seen[&id]
            );
        } else {
            assert_eq!(seen[&id], [EventKind::Reminder(2), EventKind::Expired]);
        }
    }
}

#[test]
fn reschedule_moves_the_deadline_both_ways() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock);
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    s.schedule(1, ms(100), 1).unwrap();
    s.schedule(2, ms(100), 2).unwrap();
    s.reschedule(&1, ms(50)).unwrap();
    s.reschedule(&2, ms(500)).unwrap();
    clock.set_ms(T0 + 50);
    assert!(s.settle(WAIT));
    let e = orders.drain_ready();
    assert_eq!(e.iter().map(|e| e.id).collect::<Vec<_>>(), [1]);
    clock.set_ms(T0 + 499);
    assert!(s.settle(WAIT));
    assert!(orders.drain_ready().is_empty());
    clock.set_ms(T0 + 500);
    assert!(s.settle(WAIT));
    assert_eq!(orders.drain_ready()[0].id, 2);
    assert_eq!(s.reschedule(&2, ms(10)), Err(RescheduleError::AlreadyFired));
    assert_eq!(s.reschedule(&3, ms(10)), Err(RescheduleError::NotFound));
}

#[test]
fn every_group_gets_every_event_and_consumers_of_a_group_share_them() {
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .batch_size(16)
        .group("orders")
        .group("stock")
        .build()
        .unwrap();
    let s = engine.scheduler();
    let n = 10_000u64;
    for id in 0..n {
        s.schedule(id, ms(1 + id % 50), id).unwrap();
    }
    let spawn = |group: &'static str| {
        let mut c = engine.subscribe(group).unwrap();
        thread::spawn(move || {
            let mut ids = Vec::new();
            while let Ok(e) = c.recv() {
                ids.push(e.id);
            }
            ids
        })
    };
    let orders = [spawn("orders"), spawn("orders"), spawn("orders")];
    let stock = spawn("stock");
    clock.advance(ms(100));
    assert!(s.settle(WAIT));
    drop(engine.shutdown());
    let mut order_ids: Vec<u64> = orders.into_iter().flat_map(|h| h.join().unwrap()).collect();
    order_ids.sort_unstable();
    let mut stock_ids = stock.join().unwrap();
    stock_ids.sort_unstable();
    let all: Vec<u64> = (0..n).collect();
    assert_eq!(
        order_ids, all,
        "each event to exactly one consumer of a group"
    );
    assert_eq!(stock_ids, all, "every group gets every event");
}

#[test]
fn slow_consumer_loses_nothing_and_memory_stays_bounded() {
    let clock = ManualClock::new(T0);
    let capacity = 256;
    let batch = 32;
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .channel_capacity(capacity)
        .batch_size(batch)
        .group("slow")
        .build()
        .unwrap();
    let s = engine.scheduler();
    let n = 20_000u64;
    for id in 0..n {
        s.schedule(id, ms(1), id).unwrap();
    }
    clock.advance(ms(1));
    let mut slow = engine.subscribe("slow").unwrap();
    let mut got = HashSet::new();
    let mut max_lag = 0;
    while got.len() < n as usize {
        let stats = engine.stats();
        max_lag = max_lag.max(stats.groups[0].lag);
        let e = slow.recv_timeout(WAIT).unwrap();
        assert!(got.insert(e.id), "duplicate {}", e.id);
        if got.len() % 1_000 == 0 {
            thread::sleep(ms(1)); // slow
        }
    }
    // The dispatcher waited instead of buffering: the group never held more
    // than its capacity in channel slots plus the one delivery waiting to
    // enter, which lag already counts. A delivery gathers shard rounds until
    // it holds at least `batch` events, so one slot holds up to
    // `2 * batch - 1` (when ids split unevenly over the shards, the last
    // round of one shard joins the next shard's).
    let bound = (capacity.div_ceil(batch) + 1) * (2 * batch - 1);
    assert!(max_lag <= bound as u64, "lag {max_lag} > {bound}");
    assert!(max_lag > 0);
    assert_eq!(engine.stats().expired_total, n);
}

#[test]
fn events_fired_while_no_consumer_is_attached_wait_in_the_group() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock);
    let s = engine.scheduler();
    for id in 0..100 {
        s.schedule(id, ms(5), id).unwrap();
    }
    clock.advance(ms(5));
    assert!(s.settle(WAIT));
    assert_eq!(engine.stats().groups[0].lag, 100);
    // A consumer that takes a batch and is dropped hands the rest back.
    let mut first = engine.subscribe("orders").unwrap();
    let one = first.recv_timeout(WAIT).unwrap();
    drop(first);
    let mut second = engine.subscribe("orders").unwrap();
    let mut ids: Vec<u64> = second.drain_ready().into_iter().map(|e| e.id).collect();
    ids.push(one.id);
    ids.sort_unstable();
    assert_eq!(ids, (0..100).collect::<Vec<_>>());
}

#[test]
fn with_no_group_at_all_timers_are_held_not_dropped() {
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder().clock(clock.clone()).build().unwrap();
    let s = engine.scheduler();
    s.schedule(1, ms(5), 1).unwrap();
    clock.advance(ms(50));
    assert!(
        !s.settle(ms(200)),
        "nothing can be handed over without a group"
    );
    let stats = engine.stats();
    assert_eq!(stats.pending, 1);
    assert_eq!(stats.oldest_overdue_ms, Some(T0 + 5));
    let mut late = engine.subscribe("late").unwrap();
    let e = late.recv_timeout(WAIT).unwrap();
    assert_eq!(e.id, 1);
    assert!(e.fired_at_ms >= T0 + 50);
}

#[test]
fn shutdown_returns_every_pending_timer_with_its_reminders() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock);
    let s = engine.scheduler();
    for id in 0..10_000u64 {
        s.schedule_with_reminders(id, Duration::from_secs(60 + id), &[ms(30_000)], id)
            .unwrap();
    }
    for id in 0..5_000u64 {
        assert!(s.cancel(&id).unwrap().is_cancelled());
    }
    let shutdown = engine.shutdown();
    let mut ids: Vec<u64> = shutdown.pending.iter().map(|p| p.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (5_000..10_000).collect::<Vec<_>>());
    for p in &shutdown.pending {
        assert_eq!(p.payload, p.id);
        assert_eq!(p.deadline_ms, T0 + (60 + p.id) * 1_000);
        assert_eq!(p.reminders_ms, [p.deadline_ms - 30_000]);
    }
    // The timer was handed back; a cancel now hears that the engine is
    // shut down, not a misleading `NotFound` (issue #20).
    assert_eq!(s.cancel(&7_000), Err(CancelError::ShuttingDown));
}

#[test]
fn shutdown_hands_back_events_a_full_group_could_not_take() {
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .channel_capacity(4)
        .batch_size(4)
        .group("stuck")
        .build()
        .unwrap();
    let s = engine.scheduler();
    for id in 0..100 {
        s.schedule(id, ms(1), id).unwrap();
    }
    clock.advance(ms(1));
    // Wait until the dispatcher is blocked on the full group.
    while engine.stats().expired_total < 8 {
        thread::yield_now();
    }
    let mut stuck = engine.subscribe("stuck").unwrap();
    let shutdown = engine.shutdown();
    let queued: Vec<Event<u64, u64>> = stuck.iter().collect();
    let mut ids: Vec<u64> = queued.iter().map(|e| e.id).collect();
    ids.extend(shutdown.undelivered.iter().map(|(_, e)| e.id));
    ids.extend(shutdown.pending.iter().map(|p| p.id));
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..100).collect::<Vec<_>>(),
        "nothing lost, nothing twice"
    );
}

/// tokio #6682: the engine-wide next deadline must not miss an insert that
/// races its computation. With the safety-net wake-up set to an hour, a lost
/// wake-up would leave these timers unfired and the test would time out.
#[test]
fn earlier_deadlines_on_other_shards_wake_the_dispatcher() {
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(SystemClock::new())
        .shards(8)
        .max_idle(Duration::from_secs(3_600))
        .group("g")
        .build()
        .unwrap();
    let mut g = engine.subscribe("g").unwrap();
    let s = engine.scheduler();
    s.schedule(u64::MAX, Duration::from_secs(3_000), 0).unwrap();
    for round in 0..20u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let s = s.clone();
                let stop = stop.clone();
                thread::spawn(move || {
                    // Decreasing delays: each new timer is the earliest.
                    for i in 0..25u64 {
                        let id = round * 1_000 + t * 100 + i;
                        s.schedule(id, ms(30 - i), id).unwrap();
                    }
                    stop.store(true, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for _ in 0..100 {
            let e = g
                .recv_timeout(Duration::from_secs(60))
                .expect("a wake-up was lost");
            assert!(e.fired_at_ms >= e.due_ms);
        }
    }
}

#[test]
fn builder_rejects_bad_settings_with_a_clear_error() {
    let bad: [Box<dyn Fn() -> duewheel::Builder<u64, u64>>; 5] = [
        Box::new(|| Engine::builder().tick(Duration::ZERO)),
        Box::new(|| Engine::builder().tick(Duration::from_micros(1500))),
        Box::new(|| Engine::builder().shards(0)),
        Box::new(|| Engine::builder().max_pending(0)),
        Box::new(|| Engine::builder().channel_capacity(0)),
    ];
    for make in bad {
        let err = make().build().unwrap_err();
        assert!(
            err.to_string().starts_with("invalid configuration"),
            "{err}"
        );
    }
}

#[test]
fn coarse_ticks_round_deadlines_up_never_down() {
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .tick(ms(10))
        .group("g")
        .build()
        .unwrap();
    let mut g = engine.subscribe("g").unwrap();
    let s = engine.scheduler();
    s.schedule(1, duewheel::Deadline::at_unix_ms(T0 + 11), 1)
        .unwrap();
    clock.set_ms(T0 + 19);
    assert!(s.settle(WAIT));
    assert!(
        g.drain_ready().is_empty(),
        "tick 11..20 must not fire at 19"
    );
    clock.set_ms(T0 + 20);
    assert!(s.settle(WAIT));
    let e = g.drain_ready();
    assert_eq!(e.len(), 1);
    assert!(e[0].fired_at_ms >= e[0].deadline_ms);
    let stats = engine.stats();
    assert_eq!(stats.tick_ms, 10);
}

#[test]
fn a_catch_up_of_timers_at_distinct_ticks_goes_out_in_full_batches() {
    // Room for 1,000 events (10 batches of 100). 500 overdue timers, each
    // at its own tick, must fit: one channel slot per event would stall
    // after 10.
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .shards(2)
        .channel_capacity(1_000)
        .batch_size(100)
        .group("orders")
        .build()
        .unwrap();
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    for id in 0..500u64 {
        s.schedule(id, ms(1 + id), id).unwrap();
    }
    clock.advance(ms(10_000));
    assert!(s.settle(WAIT), "the catch-up stalled on a full group");
    let got: Vec<u64> = orders.drain_ready().iter().map(|e| e.id).collect();
    assert_eq!(got, (0..500).collect::<Vec<_>>(), "all, in deadline order");
}

#[test]
fn fired_ids_are_remembered_within_the_memory_then_forgotten() {
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .shards(1)
        .fired_memory(2, Duration::from_secs(60))
        .group("orders")
        .build()
        .unwrap();
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    for id in 0..5u64 {
        s.schedule(id, ms(1 + id), id).unwrap();
    }
    clock.advance(ms(10));
    assert!(s.settle(WAIT));
    assert_eq!(orders.drain_ready().len(), 5);
    // Only the last two fired ids are remembered.
    for id in 0..3u64 {
        assert!(matches!(s.cancel(&id).unwrap(), Cancel::NotFound), "{id}");
    }
    for id in 3..5u64 {
        assert!(
            matches!(s.cancel(&id).unwrap(), Cancel::AlreadyFired),
            "{id}"
        );
    }
    // An id scheduled again after firing is a new timer; forgetting its old
    // end must not forget the new one.
    s.schedule(4, ms(1_000), 40).unwrap();
    s.schedule(5, ms(1), 5).unwrap();
    s.schedule(6, ms(1), 6).unwrap();
    clock.advance(ms(1));
    assert!(s.settle(WAIT));
    assert_eq!(orders.drain_ready().len(), 2);
    assert!(matches!(s.cancel(&4).unwrap(), Cancel::Cancelled(40)));
    // And past the age limit, even the newest are forgotten.
    clock.advance(Duration::from_secs(120));
    s.schedule(7, ms(1), 7).unwrap();
    clock.advance(ms(1));
    assert!(s.settle(WAIT));
    assert!(matches!(s.cancel(&6).unwrap(), Cancel::NotFound));
    assert!(matches!(s.cancel(&7).unwrap(), Cancel::AlreadyFired));
}

/// Issue #13: the fired-id memory bounds the whole engine, not each shard.
#[test]
fn fired_memory_is_bounded_for_the_whole_engine_with_many_shards() {
    let clock = ManualClock::new(T0);
    let max_ids = 1_000;
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .shards(64)
        .fired_memory(max_ids, Duration::from_secs(3_600))
        .group("orders")
        .build()
        .unwrap();
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    let n = 20_000u64;
    for id in 0..n {
        s.schedule(id, ms(1 + id % 50), id).unwrap();
    }
    clock.advance(ms(50));
    assert!(s.settle(WAIT));
    assert_eq!(orders.drain_ready().len(), n as usize);
    let remembered = engine.stats().fired_remembered;
    assert!(remembered <= max_ids, "{remembered} fired ids remembered");
    assert!(
        remembered >= max_ids * 9 / 10,
        "{remembered}: shares unused"
    );
    let already_fired = (0..n)
        .filter(|id| matches!(s.cancel(id).unwrap(), Cancel::AlreadyFired))
        .count();
    assert_eq!(already_fired, remembered);
}

#[test]
fn an_engine_idle_800_days_accepts_a_one_minute_deadline() {
    let clock = ManualClock::new(T0);
    let e = engine(&clock);
    let mut orders = e.subscribe("orders").unwrap();
    let s = e.scheduler();
    // Nothing scheduled, nothing fires: no shard's wheel has a reason to move.
    clock.set_ms(T0 + 800 * 86_400_000);
    assert!(s.settle(WAIT));
    s.schedule(1, Duration::from_secs(60), 10)
        .expect("a one-minute deadline after a long idle");
    clock.advance(Duration::from_millis(59_999));
    assert!(s.settle(WAIT));
    assert!(orders.drain_ready().is_empty(), "fired early");
    clock.advance(ms(1));
    assert!(s.settle(WAIT));
    let fired: Vec<u64> = orders.drain_ready().iter().map(|e| e.id).collect();
    assert_eq!(fired, [1]);
}
