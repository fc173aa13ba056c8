//! Model test: the wheel against a `BTreeMap`, driven by the same random
//! operations, compared after every step.
//!
//! Deadlines and jumps cluster on the level boundaries (64^k ± 1), the edge of
//! the wheel's reach, already-past deadlines and `u64` extremes, where a
//! hierarchical wheel goes wrong. Cases: `PROPTEST_CASES` (default 10,000).

use duewheel::TimerKey;
use duewheel::wheel::{MAX_DELAY_TICKS, Timer, Wheel};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// A tick chosen relative to the wheel's `now` or absolutely.
#[derive(Clone, Debug)]
enum Tick {
    After(u64),
    Before(u64),
    At(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Insert(Tick),
    /// Cancel the n-th key ever issued (live or stale).
    Cancel(usize),
    Reschedule(usize, Tick),
    /// A key nobody issued.
    CancelForged(u64),
    /// Insert into a second wheel (whose keys are foreign to the first).
    InsertOther(Tick),
    /// Cancel, on the first wheel, the n-th key the second wheel issued.
    CancelForeign(usize),
    Advance(Tick),
    AdvanceBounded(Tick, usize),
}

fn boundary() -> impl Strategy<Value = u64> {
    let mut edges = vec![0, 1, 2, 63, 64, 65, MAX_DELAY_TICKS, MAX_DELAY_TICKS + 1];
    for k in 1..=6u32 {
        let p = 64u64.pow(k);
        edges.extend([p - 1, p, p + 1]);
    }
    prop_oneof![
        4 => prop::sample::select(edges),
        4 => 0u64..200,
        2 => 0u64..300_000,
        1 => 0u64..(1 << 40),
        1 => any::<u64>(),
    ]
}

fn tick() -> impl Strategy<Value = Tick> {
    prop_oneof![
        6 => boundary().prop_map(Tick::After),
        1 => boundary().prop_map(Tick::Before),
        1 => boundary().prop_map(Tick::At),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => tick().prop_map(Op::Insert),
        3 => any::<usize>().prop_map(Op::Cancel),
        2 => (any::<usize>(), tick()).prop_map(|(i, t)| Op::Reschedule(i, t)),
        1 => any::<u64>().prop_map(Op::CancelForged),
        1 => tick().prop_map(Op::InsertOther),
        1 => any::<usize>().prop_map(Op::CancelForeign),
        3 => tick().prop_map(Op::Advance),
        1 => (tick(), 0usize..5).prop_map(|(t, n)| Op::AdvanceBounded(t, n)),
    ]
}

fn resolve(now: u64, t: &Tick) -> u64 {
    match *t {
        Tick::After(d) => now.saturating_add(d),
        Tick::Before(d) => now.saturating_sub(d),
        Tick::At(v) => v,
    }
}

/// The model: pending timers by key, each with its deadline and the sequence
/// number of its last insert/reschedule (equal deadlines fire in that order).
#[derive(Default)]
struct Model {
    now: u64,
    pending: BTreeMap<TimerKey, (u64, u64, u32)>,
    seq: u64,
}

impl Model {
    /// The timers an advance to `to` must fire, in firing order.
    fn due(&self, to: u64) -> Vec<(u64, u64, TimerKey)> {
        let mut due: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, (deadline, _, _))| *deadline <= to)
            .map(|(key, (deadline, seq, _))| (*deadline, *seq, *key))
            .collect();
        due.sort();
        due
    }
}

fn check_advance(
    wheel: &mut Wheel<u32>,
    model: &mut Model,
    to: u64,
    limit: Option<usize>,
) -> Result<(), TestCaseError> {
    let target = to.max(model.now);
    let expected = model.due(target);
    let mut fired: Vec<Timer<u32>> = Vec::new();
    let complete = match limit {
        None => {
            let n = wheel.advance_to(to, |t| fired.push(t));
            prop_assert_eq!(n, fired.len());
            true
        }
        Some(limit) => {
            let done = wheel.advance_bounded(to, limit, |t| fired.push(t));
            prop_assert_eq!(done.fired, fired.len());
            prop_assert!(done.fired <= limit);
            done.complete
        }
    };
    let take = if complete {
        expected.len()
    } else {
        prop_assert_eq!(fired.len(), limit.unwrap());
        fired.len()
    };
    prop_assert_eq!(fired.len(), take, "fired count vs model due set");
    for (timer, (deadline, _, key)) in fired.iter().zip(&expected) {
        prop_assert_eq!(timer.key, *key, "firing order");
        prop_assert_eq!(timer.deadline, *deadline);
        prop_assert!(timer.deadline <= target, "fired early");
        let (_, _, payload) = model.pending.remove(key).unwrap();
        prop_assert_eq!(timer.payload, payload);
    }
    if complete {
        prop_assert_eq!(wheel.now(), target);
        model.now = target;
    } else {
        prop_assert!(wheel.now() <= target);
        model.now = wheel.now();
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut wheel = Wheel::new();
    let mut other = Wheel::new();
    let mut model = Model::default();
    let mut issued: Vec<TimerKey> = Vec::new();
    let mut foreign: Vec<TimerKey> = Vec::new();
    let mut next_payload = 0u32;
    for op in ops {
        match op {
            Op::Insert(t) => {
                let deadline = resolve(model.now, &t);
                next_payload += 1;
                // Every deadline is accepted; beyond the levels' reach it
                // waits in the overflow list.
                let key = wheel.insert(deadline, next_payload);
                prop_assert!(key.is_ok(), "insert refused: {:?}", key);
                let key = key.unwrap();
                prop_assert!(!model.pending.contains_key(&key), "live key reissued");
                model.seq += 1;
                model
                    .pending
                    .insert(key, (deadline, model.seq, next_payload));
                issued.push(key);
            }
            Op::Cancel(i) => {
                if issued.is_empty() {
                    continue;
                }
                let key = issued[i % issued.len()];
                let expected = model.pending.remove(&key).map(|(_, _, p)| p);
                prop_assert_eq!(wheel.cancel(key), expected);
            }
            Op::Reschedule(i, t) => {
                if issued.is_empty() {
                    continue;
                }
                let key = issued[i % issued.len()];
                let deadline = resolve(model.now, &t);
                let result = wheel.reschedule(key, deadline);
                match model.pending.get_mut(&key) {
                    None => {
                        prop_assert_eq!(result, Err(duewheel::wheel::RescheduleError::NotFound))
                    }
                    Some(entry) => {
                        prop_assert_eq!(result, Ok(()));
                        model.seq += 1;
                        entry.0 = deadline;
                        entry.1 = model.seq;
                    }
                }
            }
            Op::CancelForged(bits) => {
                let key = TimerKey::from_bits(bits);
                let expected = model.pending.remove(&key).map(|(_, _, p)| p);
                prop_assert_eq!(wheel.cancel(key), expected);
            }
            Op::InsertOther(t) => {
                let deadline = resolve(other.now(), &t);
                foreign.push(other.insert(deadline, 0).unwrap());
            }
            Op::CancelForeign(i) => {
                if foreign.is_empty() {
                    continue;
                }
                let key = foreign[i % foreign.len()];
                prop_assert!(!model.pending.contains_key(&key), "foreign key collides");
                prop_assert_eq!(wheel.cancel(key), None);
                prop_assert_eq!(wheel.deadline(key), None);
            }
            Op::Advance(t) => {
                let to = resolve(model.now, &t);
                check_advance(&mut wheel, &mut model, to, None)?;
            }
            Op::AdvanceBounded(t, limit) => {
                let to = resolve(model.now, &t);
                check_advance(&mut wheel, &mut model, to, Some(limit))?;
            }
        }
        // After every step.
        prop_assert_eq!(wheel.len(), model.pending.len());
        prop_assert_eq!(wheel.is_empty(), model.pending.is_empty());
        prop_assert_eq!(wheel.now(), model.now);
        let earliest = model.pending.values().map(|(d, _, _)| *d).min();
        match (wheel.next_expiration(), earliest) {
            (None, None) => {}
            (Some(next), Some(earliest)) => {
                prop_assert!(next <= earliest.max(model.now), "next_expiration too late");
                prop_assert!(next >= model.now, "next_expiration in the past");
            }
            (next, earliest) => prop_assert!(false, "next {next:?} vs earliest {earliest:?}"),
        }
        for (key, (deadline, _, payload)) in &model.pending {
            prop_assert_eq!(wheel.deadline(*key), Some(*deadline));
            prop_assert_eq!(wheel.get(*key), Some(payload));
        }
    }
    // Finally everything left fires, exactly once, by the end of time.
    check_advance(&mut wheel, &mut model, u64::MAX, None)?;
    prop_assert!(wheel.is_empty());
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn wheel_matches_btreemap_model(ops in prop::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}

#[test]
fn drain_returns_every_pending_timer_and_empties_the_wheel() {
    let mut wheel = Wheel::new();
    let keys: Vec<_> = (0..10_000u64)
        .map(|i| wheel.insert(1 + i * 7919 % 5_000_000, i).unwrap())
        .collect();
    let mut drained = Vec::new();
    wheel.drain(|t| drained.push(t.key));
    drained.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(drained, expected);
    assert!(wheel.is_empty());
    assert_eq!(wheel.next_expiration(), None);
    for key in keys {
        assert_eq!(wheel.cancel(key), None, "drained keys are stale");
    }
}

/// A fixed-seed xorshift for the long runs below.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Long enough for cancels to start reaping phases and for reschedules to
/// compact slots, which the short proptest sequences never reach.
#[test]
fn long_churn_with_reaping_and_compaction_matches_model() {
    let mut rng = Rng(0x5eed_0013);
    let mut wheel: Wheel<u32> = Wheel::new();
    let mut model = Model::default();
    let mut issued: Vec<TimerKey> = Vec::new();
    for step in 0..400_000u32 {
        let now = model.now;
        let deadline = |rng: &mut Rng| match rng.next() % 10 {
            0 => now.saturating_sub(rng.next() % 100),
            1 => now + MAX_DELAY_TICKS + rng.next() % 1_000_000,
            2 => now + (rng.next() % 4) * 64u64.pow(3),
            _ => now + rng.next() % 300_000,
        };
        match rng.next() % 16 {
            0..=6 => {
                let d = deadline(&mut rng);
                let key = wheel.insert(d, step).unwrap();
                model.seq += 1;
                model.pending.insert(key, (d, model.seq, step));
                issued.push(key);
            }
            7..=11 if !issued.is_empty() => {
                let key = issued.swap_remove((rng.next() % issued.len() as u64) as usize);
                let expected = model.pending.remove(&key).map(|(_, _, p)| p);
                assert_eq!(wheel.cancel(key), expected);
            }
            12..=13 if !issued.is_empty() => {
                let key = issued[(rng.next() % issued.len() as u64) as usize];
                let d = deadline(&mut rng);
                match model.pending.get_mut(&key) {
                    Some(entry) => {
                        assert_eq!(wheel.reschedule(key, d), Ok(()));
                        model.seq += 1;
                        entry.0 = d;
                        entry.1 = model.seq;
                    }
                    None => assert!(wheel.reschedule(key, d).is_err()),
                }
            }
            _ => {
                let to = now + rng.next() % 2_000;
                check_advance(&mut wheel, &mut model, to, None).unwrap();
            }
        }
        assert_eq!(wheel.len(), model.pending.len());
    }
    for (key, (deadline, _, payload)) in &model.pending {
        assert_eq!(wheel.deadline(*key), Some(*deadline));
        assert_eq!(wheel.get(*key), Some(payload));
    }
    check_advance(&mut wheel, &mut model, u64::MAX, None).unwrap();
    assert!(wheel.is_empty());
}

/// Cancelled timers are reclaimed as the wheel goes, not only when their
/// slot comes due: churn far in the future keeps memory flat.
#[test]
fn cancel_churn_far_ahead_keeps_memory_bounded() {
    let mut wheel: Wheel<u64> = Wheel::new();
    let mut rng = Rng(7);
    let keep: Vec<_> = (0..10_000)
        .map(|i| wheel.insert(1_000_000 + rng.next() % 1_000_000, i).unwrap())
        .collect();
    let steady = wheel.heap_bytes();
    for i in 0..2_000_000u64 {
        let key = wheel.insert(1_000_000 + rng.next() % 1_000_000, i).unwrap();
        assert_eq!(wheel.cancel(key), Some(i));
    }
    assert!(
        wheel.heap_bytes() < 3 * steady,
        "{} B after churn, {steady} B before",
        wheel.heap_bytes()
    );
    for key in keep {
        assert!(wheel.contains(key));
    }
    let mut fired = 0;
    wheel.advance_to(u64::MAX, |_| fired += 1);
    assert_eq!(fired, 10_000);
}
