//! The wheel's edges, one behaviour per test (the model test covers them in
//! random combination).

use duewheel::TimerKey;
use duewheel::wheel::{MAX_DELAY_TICKS, RescheduleError, Timer, Wheel};

fn fire(wheel: &mut Wheel<u64>, to: u64) -> Vec<Timer<u64>> {
    let mut fired = Vec::new();
    wheel.advance_to(to, |t| fired.push(t));
    fired
}

#[test]
fn past_deadline_fires_on_next_advance() {
    let mut wheel = Wheel::new();
    fire(&mut wheel, 1_000);
    wheel.insert(10, 1).unwrap();
    assert_eq!(wheel.next_expiration(), Some(1_000));
    // Even an advance to the same time fires it, not a rotation later.
    let fired = fire(&mut wheel, 1_000);
    assert_eq!((fired.len(), fired[0].deadline), (1, 10));
}

#[test]
fn deadline_equal_to_now_fires_on_next_advance_not_inside_insert() {
    let mut wheel = Wheel::new();
    fire(&mut wheel, 64);
    let key = wheel.insert(64, 7).unwrap();
    assert!(wheel.contains(key), "insert must not fire it");
    assert_eq!(fire(&mut wheel, 64)[0].payload, 7);
}

#[test]
fn stale_key_after_slot_reuse_is_not_found() {
    let mut wheel = Wheel::new();
    let old = wheel.insert(5, 1).unwrap();
    assert_eq!(wheel.cancel(old), Some(1));
    let new = wheel.insert(5, 2).unwrap();
    assert_ne!(old, new);
    assert_eq!(wheel.cancel(old), None, "a stale key reached the new timer");
    assert_eq!(wheel.reschedule(old, 9), Err(RescheduleError::NotFound));
    assert_eq!(wheel.get(new), Some(&2));
}

#[test]
fn key_of_a_fired_timer_is_not_found() {
    let mut wheel = Wheel::new();
    let key = wheel.insert(3, 1).unwrap();
    fire(&mut wheel, 3);
    assert_eq!(wheel.cancel(key), None);
    assert_eq!(wheel.reschedule(key, 10), Err(RescheduleError::NotFound));
}

#[test]
fn forged_keys_are_not_found() {
    let mut wheel = Wheel::new();
    wheel.insert(3, 1).unwrap();
    for bits in [0, 1, u64::MAX, 1 << 32, 0xdead_beef_dead_beef] {
        let forged = TimerKey::from_bits(bits);
        if wheel.contains(forged) {
            continue; // (0, 0) names the live timer: not forged
        }
        assert_eq!(wheel.cancel(forged), None);
    }
    assert_eq!(wheel.len(), 1);
}

#[test]
fn deadline_beyond_range_waits_in_overflow_and_fires_on_time() {
    let mut wheel = Wheel::new();
    let far = MAX_DELAY_TICKS + 1;
    let key = wheel.insert(far, 1).unwrap();
    let last = wheel.insert(u64::MAX, 2).unwrap();
    assert_eq!(wheel.len(), 2);
    assert_eq!(wheel.deadline(key), Some(far));
    assert!(wheel.next_expiration().is_some_and(|t| t <= far));
    assert!(fire(&mut wheel, far - 1).is_empty());
    assert_eq!(fire(&mut wheel, far)[0].payload, 1);
    assert_eq!(wheel.cancel(last), Some(2));
    assert!(wheel.is_empty());
}

#[test]
fn a_key_from_another_wheel_is_not_found() {
    let mut a = Wheel::new();
    let mut b = Wheel::new();
    let key_a = a.insert(10, "a's order").unwrap();
    let key_b = b.insert(10, "b's order").unwrap();
    assert_ne!(key_a, key_b);
    assert_eq!(a.cancel(key_b), None);
    assert_eq!(a.get(key_b), None);
    assert_eq!(
        a.reschedule(key_b, 20),
        Err(RescheduleError::NotFound),
        "a foreign key reaches nothing"
    );
    assert_eq!(b.cancel(key_a), None);
    assert_eq!(a.cancel(key_a), Some("a's order"));
    assert_eq!(b.cancel(key_b), Some("b's order"));
}

#[test]
fn far_edge_timer_is_placed_when_the_clock_restarts_behind() {
    // A timer at the far edge of a wheel at tick 10^9, put back into a new
    // wheel whose clock restarted 5 s earlier (as recovery does).
    let before = 1_000_000_000u64;
    let deadline = before + MAX_DELAY_TICKS;
    let mut wheel = Wheel::with_capacity_at(1, before - 5_000);
    wheel.insert(deadline, 7).unwrap();
    assert!(fire(&mut wheel, deadline - 1).is_empty());
    let fired = fire(&mut wheel, deadline);
    assert_eq!((fired.len(), fired[0].deadline), (1, deadline));
}

#[test]
fn idle_wheel_accepts_a_minute_ahead_of_a_clock_800_days_on() {
    let mut wheel = Wheel::with_capacity_at(4, 1_000);
    let idle = 800 * 86_400_000u64;
    let due = 1_000 + idle + 60_000;
    let key = wheel.insert(due, 1).unwrap();
    // Nothing due: the advance jumps in one call, and the timer is then in
    // the levels' range.
    assert!(fire(&mut wheel, 1_000 + idle).is_empty());
    assert!(due <= wheel.max_deadline());
    assert_eq!(wheel.deadline(key), Some(due));
    assert!(fire(&mut wheel, due - 1).is_empty());
    assert_eq!(fire(&mut wheel, due)[0].payload, 1);
}

#[test]
fn reschedule_into_overflow_and_back() {
    let mut wheel = Wheel::new();
    let a = wheel.insert(100, 1).unwrap();
    wheel.reschedule(a, u64::MAX).unwrap();
    assert!(fire(&mut wheel, 1 << 40).is_empty());
    wheel.reschedule(a, (1 << 40) + 5).unwrap();
    assert!(fire(&mut wheel, (1 << 40) + 4).is_empty());
    assert_eq!(fire(&mut wheel, (1 << 40) + 5)[0].payload, 1);
}

#[test]
fn max_delay_is_accepted_and_fires_exactly_on_time() {
    let mut wheel = Wheel::new();
    fire(&mut wheel, 12_345);
    let deadline = 12_345 + MAX_DELAY_TICKS;
    wheel.insert(deadline, 1).unwrap();
    assert!(fire(&mut wheel, deadline - 1).is_empty());
    assert_eq!(fire(&mut wheel, deadline)[0].deadline, deadline);
}

#[test]
fn idle_wheel_jumps_thirty_minutes_in_one_step() {
    let mut wheel = Wheel::new();
    wheel.insert(30 * 60_000, 1).unwrap();
    // The next work is a cascade point or the deadline itself, never a
    // 1 ms slot in between: a handful of steps cross 30 minutes.
    let mut steps = 0;
    while let Some(next) = wheel.next_expiration() {
        steps += 1;
        if !fire(&mut wheel, next).is_empty() {
            break;
        }
    }
    assert!(steps <= 6, "{steps} steps");
    assert!(wheel.is_empty());
}

#[test]
fn cascade_across_every_level_boundary_fires_on_time() {
    for k in 1..6u32 {
        let boundary = 64u64.pow(k);
        for deadline in [boundary - 1, boundary, boundary + 1] {
            let mut wheel = Wheel::new();
            wheel.insert(deadline, deadline).unwrap();
            assert!(
                fire(&mut wheel, deadline - 1).is_empty(),
                "{deadline} early"
            );
            assert_eq!(fire(&mut wheel, deadline).len(), 1, "{deadline} late");
        }
    }
}

#[test]
fn equal_deadlines_fire_in_insertion_order() {
    let mut wheel = Wheel::new();
    for i in 0..100 {
        wheel.insert(5_000, i).unwrap();
    }
    let order: Vec<u64> = fire(&mut wheel, 5_000).iter().map(|t| t.payload).collect();
    assert_eq!(order, (0..100).collect::<Vec<_>>());
}

#[test]
fn reschedule_earlier_and_later() {
    let mut wheel = Wheel::new();
    let a = wheel.insert(1_000, 1).unwrap();
    let b = wheel.insert(1_000, 2).unwrap();
    wheel.reschedule(a, 10).unwrap();
    wheel.reschedule(b, 100_000).unwrap();
    assert_eq!(fire(&mut wheel, 10)[0].payload, 1);
    assert!(fire(&mut wheel, 99_999).is_empty());
    assert_eq!(fire(&mut wheel, 100_000)[0].payload, 2);
    let c = wheel.insert(200_000, 3).unwrap();
    assert_eq!(wheel.reschedule(c, u64::MAX), Ok(()));
    assert_eq!(wheel.deadline(c), Some(u64::MAX));
}

#[test]
fn advance_backwards_does_not_move_time() {
    let mut wheel = Wheel::new();
    fire(&mut wheel, 500);
    wheel.insert(600, 1).unwrap();
    assert!(fire(&mut wheel, 100).is_empty());
    assert_eq!(wheel.now(), 500);
}

#[test]
fn bounded_advance_resumes_in_deadline_order() {
    let mut wheel = Wheel::new();
    for i in 0..10u64 {
        wheel.insert(100 + i, i).unwrap();
    }
    let mut fired = Vec::new();
    let first = wheel.advance_bounded(1_000, 3, |t| fired.push(t.payload));
    assert_eq!((first.fired, first.complete), (3, false));
    assert!(wheel.now() < 1_000);
    let rest = wheel.advance_bounded(1_000, usize::MAX, |t| fired.push(t.payload));
    assert!(rest.complete);
    assert_eq!(fired, (0..10).collect::<Vec<_>>());
}

#[test]
fn cancel_of_a_timer_left_due_by_a_bounded_advance() {
    let mut wheel = Wheel::new();
    let keys: Vec<_> = (0..5u64).map(|i| wheel.insert(50, i).unwrap()).collect();
    wheel.advance_bounded(50, 2, |_| {});
    assert_eq!(wheel.cancel(keys[3]), Some(3));
    let rest: Vec<u64> = fire(&mut wheel, 50).iter().map(|t| t.payload).collect();
    assert_eq!(rest, [2, 4]);
}

#[test]
fn top_level_wraps_into_next_rotation() {
    let mut wheel = Wheel::new();
    fire(&mut wheel, 1);
    // Same top-level slot as `now`, one rotation later, and one just past.
    wheel.insert(1 << 36, 1).unwrap();
    wheel.insert(1 << 30, 2).unwrap();
    let order: Vec<u64> = fire(&mut wheel, 1 << 36)
        .iter()
        .map(|t| t.payload)
        .collect();
    assert_eq!(order, [2, 1]);
}

#[test]
fn deadlines_near_u64_max() {
    let mut wheel = Wheel::new();
    fire(&mut wheel, u64::MAX - 100);
    wheel.insert(u64::MAX, 1).unwrap();
    wheel.insert(u64::MAX - 50, 2).unwrap();
    let order: Vec<u64> = fire(&mut wheel, u64::MAX)
        .iter()
        .map(|t| t.payload)
        .collect();
    assert_eq!(order, [2, 1]);
    assert_eq!(wheel.max_deadline(), u64::MAX);
}

#[test]
fn drain_returns_all_and_keys_go_stale() {
    let mut wheel = Wheel::new();
    let keys: Vec<_> = (0..50u64)
        .map(|i| wheel.insert(i * 1_000, i).unwrap())
        .collect();
    let mut drained = 0;
    wheel.drain(|_| drained += 1);
    assert_eq!(drained, 50);
    assert!(keys.iter().all(|&k| wheel.cancel(k).is_none()));
    assert!(fire(&mut wheel, u64::MAX).is_empty());
}
