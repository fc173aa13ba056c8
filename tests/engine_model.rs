//! Model test of the engine under a `ManualClock`: random schedules (with and
//! without a reminder), cancels, reschedules and clock advances, compared
//! after every advance with a `BTreeMap` model of which stages are due.
//!
//! Cases: `ENGINE_MODEL_CASES` (default 300; each case starts an engine).

use duewheel::{Cancel, Deadline, Engine, EventKind, ManualClock, RescheduleError, ScheduleError};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;

#[derive(Clone, Debug)]
enum Op {
    Schedule {
        id: u64,
        delay_ms: u64,
        remind_ms: Option<u64>,
    },
    Cancel(u64),
    Reschedule(u64, u64),
    Advance(u64),
}

/// Delays are at least 1 ms: a timer due at the present fires without the
/// clock moving, racing the next operation, so the model could not say
/// whether a cancel finds it pending (`deadline_in_the_past_...` and the
/// cancel race test cover that case).
fn delay() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![1u64, 2, 63, 64, 65, 4_095, 4_096, 4_097, 262_144]),
        1u64..200,
        1u64..5_000_000,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..24, delay(), prop::option::of(0u64..300))
            .prop_map(|(id, delay_ms, remind_ms)| Op::Schedule { id, delay_ms, remind_ms }),
        2 => (0u64..24).prop_map(Op::Cancel),
        1 => (0u64..24, delay()).prop_map(|(id, d)| Op::Reschedule(id, d)),
        3 => delay().prop_map(Op::Advance),
    ]
}

/// A pending timer in the model: deadline, reminder offset, reminder sent.
struct Timer {
    deadline_ms: u64,
    remind_ms: Option<u64>,
    reminded: bool,
}

impl Timer {
    fn next_due(&self) -> u64 {
        match self.remind_ms {
            Some(r) if !self.reminded => self.deadline_ms.saturating_sub(r),
            _ => self.deadline_ms,
        }
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .shards(3)
        .batch_size(4)
        // Remember fired ids for the whole run: the model never forgets.
        .fired_memory(1 << 20, Duration::from_secs(365 * 86_400))
        .group("g")
        .build()
        .unwrap();
    let mut consumer = engine.subscribe("g").unwrap();
    let s = engine.scheduler();
    let mut now = T0;
    let mut pending: BTreeMap<u64, Timer> = BTreeMap::new();
    let mut fired: BTreeMap<u64, ()> = BTreeMap::new();
    let mut payload = 0u64;

    for op in ops {
        match op {
            Op::Schedule {
                id,
                delay_ms,
                remind_ms,
            } => {
                // Likewise a reminder must not be due yet.
                let remind_ms = remind_ms.filter(|&r| r < delay_ms);
                payload += 1;
                let reminders: Vec<Duration> =
                    remind_ms.map(Duration::from_millis).into_iter().collect();
                let result = s.schedule_with_reminders(
                    id,
                    Duration::from_millis(delay_ms),
                    &reminders,
                    payload,
                );
                match pending.entry(id) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        prop_assert!(
                            matches!(result, Err(ScheduleError::AlreadyScheduled(p)) if p == payload)
                        );
                    }
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        prop_assert!(result.is_ok(), "{result:?}");
                        fired.remove(&id);
                        slot.insert(Timer {
                            deadline_ms: now + delay_ms,
                            remind_ms,
                            reminded: false,
                        });
                    }
                }
            }
            Op::Cancel(id) => {
                let outcome = s.cancel(&id).unwrap();
                if pending.remove(&id).is_some() {
                    prop_assert!(outcome.is_cancelled(), "{outcome:?}");
                } else if fired.contains_key(&id) {
                    prop_assert!(matches!(outcome, Cancel::AlreadyFired), "{outcome:?}");
                } else {
                    prop_assert!(matches!(outcome, Cancel::NotFound), "{outcome:?}");
                }
            }
            Op::Reschedule(id, delay_ms) => {
                // As with schedule: a new deadline must not make an unsent
                // reminder due at the present (it would fire at once, racing
                // the next operation).
                if let Some(t) = pending.get(&id)
                    && t.remind_ms.is_some_and(|r| !t.reminded && r >= delay_ms)
                {
                    continue;
                }
                let result = s.reschedule(&id, Deadline::at_unix_ms(now + delay_ms));
                match pending.get_mut(&id) {
                    Some(t) => {
                        prop_assert_eq!(result, Ok(()));
                        t.deadline_ms = now + delay_ms;
                    }
                    None if fired.contains_key(&id) => {
                        prop_assert_eq!(result, Err(RescheduleError::AlreadyFired));
                    }
                    None => prop_assert_eq!(result, Err(RescheduleError::NotFound)),
                }
            }
            Op::Advance(by) => {
                now += by - 1;
                clock.set_ms(now);
                prop_assert!(s.settle(Duration::from_secs(30)));
                // Model: every stage due by now fires, in stage order.
                let mut expected: Vec<(u64, EventKind)> = Vec::new();
                let ids: Vec<u64> = pending.keys().copied().collect();
                for id in ids {
                    let t = pending.get_mut(&id).unwrap();
                    if t.remind_ms.is_some() && !t.reminded && t.next_due() <= now {
                        t.reminded = true;
                        expected.push((id, EventKind::Reminder(1)));
                    }
                    if t.next_due() <= now && (t.remind_ms.is_none() || t.reminded) {
                        expected.push((id, EventKind::Expired));
                        pending.remove(&id);
                        fired.insert(id, ());
                    }
                }
                let got = consumer.drain_ready();
                for pair in got.windows(2) {
                    prop_assert!(pair[0].due_ms <= pair[1].due_ms, "order: {:?}", got);
                }
                for e in &got {
                    prop_assert!(e.due_ms <= now && e.fired_at_ms >= e.due_ms);
                }
                let mut got: Vec<(u64, EventKind)> =
                    got.into_iter().map(|e| (e.id, e.kind)).collect();
                got.sort_by_key(|&(id, kind)| (id, kind == EventKind::Expired));
                expected.sort_by_key(|&(id, kind)| (id, kind == EventKind::Expired));
                prop_assert_eq!(got, expected);
            }
        }
        // Nothing is due between advances, so the engine is quiet here.
        let stats = engine.stats();
        prop_assert_eq!(stats.pending, pending.len());
        prop_assert_eq!(
            stats.scheduled_total,
            stats.cancelled_total + stats.expired_total + stats.pending as u64
        );
    }
    let shutdown = engine.shutdown();
    prop_assert_eq!(shutdown.pending.len(), pending.len());
    Ok(())
}

fn cases() -> u32 {
    std::env::var("ENGINE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn engine_matches_model_under_manual_clock(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
