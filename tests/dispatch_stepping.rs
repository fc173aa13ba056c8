//! A `ManualClock` stepped by hand: each step runs what is due (on the
//! stepping thread when the dispatcher is idle, else on the dispatcher), a
//! `settle` after it means every due event is in its groups, and nothing
//! about the cancel-vs-fire promise changes.

use duewheel::{Cancel, Engine, EventKind, ManualClock};
use std::collections::HashMap;
use std::thread;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(30);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An engine whose dispatcher never wakes by itself: every wake-up must
/// come from the protocol, not from the idle timer.
fn engine(clock: &ManualClock, capacity: usize, batch: usize) -> Engine<u64, u64> {
    Engine::builder()
        .clock(clock.clone())
        .shards(3)
        .channel_capacity(capacity)
        .batch_size(batch)
        .max_idle(Duration::from_secs(3_600))
        .group("orders")
        .build()
        .unwrap()
}

#[test]
fn each_step_delivers_exactly_what_is_due_by_then() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock, 1 << 16, 64);
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    for id in 0..2_000u64 {
        // From 5 ms on, so that every reminder (3 ms before) is still ahead.
        let due = 5 + id.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 995;
        s.schedule_with_reminders(id, ms(due), &[ms(3)], id)
            .unwrap();
    }
    let mut expired = 0;
    for step in 1..=1_000u64 {
        clock.set_ms(T0 + step);
        assert!(s.settle(WAIT));
        for e in orders.drain_ready() {
            assert!(e.due_ms <= T0 + step, "early: {e:?}");
            assert!(e.due_ms > T0 + step - 1, "late: {e:?} at step {step}");
            if e.kind == EventKind::Expired {
                expired += 1;
            }
        }
    }
    assert_eq!(expired, 2_000);
}

#[test]
fn a_step_that_a_full_group_stops_is_finished_by_the_dispatcher() {
    let clock = ManualClock::new(T0);
    // Room for one batch of 4: the step delivers what fits and leaves the
    // rest to the dispatcher thread, which must be woken to do it.
    let engine = engine(&clock, 4, 4);
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    for id in 0..40u64 {
        s.schedule(id, ms(1 + id % 5), id).unwrap();
    }
    clock.advance(ms(10));
    let mut ids: Vec<u64> = (0..40)
        .map(|_| orders.recv_timeout(WAIT).unwrap().id)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..40).collect::<Vec<_>>());
    assert!(s.settle(WAIT));
}

#[test]
fn a_settle_that_times_out_on_a_full_group_loses_nothing() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock, 4, 4);
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    for id in 0..12u64 {
        s.schedule(id, ms(1), id).unwrap();
    }
    clock.advance(ms(1));
    assert!(!s.settle(ms(20)), "the group holds 4 and 12 are due");
    let mut got: Vec<u64> = (0..12)
        .map(|_| orders.recv_timeout(WAIT).unwrap().id)
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..12).collect::<Vec<_>>());
    assert!(s.settle(WAIT));
}

#[test]
fn cancels_racing_a_stepped_clock_have_exactly_one_winner() {
    const N: u64 = 5_000;
    let clock = ManualClock::new(T0);
    let engine = engine(&clock, 1 << 16, 32);
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    for id in 0..N {
        s.schedule(id, ms(1 + id % 500), id).unwrap();
    }
    let stepper = {
        let (clock, s) = (clock.clone(), s.clone());
        thread::spawn(move || {
            for step in 1..=500 {
                clock.set_ms(T0 + step);
                assert!(s.settle(WAIT));
            }
        })
    };
    let canceller = {
        let s = s.clone();
        thread::spawn(move || {
            (0..N)
                .map(|i| (i * 7_919) % N)
                .map(|id| (id, s.cancel(&id).unwrap()))
                .collect::<Vec<_>>()
        })
    };
    stepper.join().unwrap();
    let answers = canceller.join().unwrap();
    assert!(s.settle(WAIT));
    let mut fired: HashMap<u64, usize> = HashMap::new();
    for e in orders.drain_ready() {
        *fired.entry(e.id).or_default() += 1;
    }
    for (id, answer) in answers {
        let times = fired.get(&id).copied().unwrap_or(0);
        match answer {
            Cancel::Cancelled(_) => assert_eq!(times, 0, "{id} cancelled and fired"),
            Cancel::AlreadyFired => assert_eq!(times, 1, "{id} fired {times} times"),
            Cancel::NotFound => panic!("{id} lost"),
        }
    }
}

#[test]
fn a_step_to_the_end_of_time_fires_everything_and_time_stays_there() {
    let clock = ManualClock::new(T0);
    let engine = engine(&clock, 1 << 16, 64);
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    for id in 0..100u64 {
        s.schedule(id, Duration::from_secs(60 * (1 + id)), id)
            .unwrap();
    }
    clock.advance(Duration::MAX);
    assert_eq!(s.now_ms(), u64::MAX, "saturated, not wrapped to the past");
    assert!(s.settle(WAIT));
    assert_eq!(orders.drain_ready().len(), 100);
    clock.advance(ms(1));
    assert_eq!(s.now_ms(), u64::MAX);
}

/// A store that claims before delivery keeps its claims on the dispatcher
/// thread (they may wait on the network); `settle` still means every due
/// event it admitted is in the groups.
#[test]
fn with_a_claiming_store_settle_still_means_delivered() {
    struct EvenOnly;
    impl duewheel::Hooks<u64, u64> for EvenOnly {
        fn admit(&self, round: &mut duewheel::Round<'_, u64, u64>) {
            assert_eq!(
                thread::current().name(),
                Some("duewheel-dispatcher"),
                "claims run on the dispatcher thread"
            );
            round.retain(|event| event.id % 2 == 0);
        }
    }
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .shards(2)
        .max_idle(Duration::from_secs(3_600))
        .hooks(std::sync::Arc::new(EvenOnly))
        .group("orders")
        .build()
        .unwrap();
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    for id in 0..200u64 {
        s.schedule(id, ms(1 + id % 50), id).unwrap();
    }
    let mut got = Vec::new();
    for step in 1..=50u64 {
        clock.set_ms(T0 + step);
        assert!(s.settle(WAIT));
        got.extend(orders.drain_ready().into_iter().map(|e| e.id));
    }
    got.sort_unstable();
    assert_eq!(got, (0..200).filter(|id| id % 2 == 0).collect::<Vec<_>>());
}
