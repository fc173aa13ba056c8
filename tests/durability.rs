//! The durable engine across restarts, downtime, faults and corruption.

use duewheel::wal::{Fault, FaultStorage, OpenDirError, Storage};
use duewheel::{BuildError, Cancel, Engine, EventKind, ManualClock, ScheduleError, Scheduler};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(30);

fn engine(clock: &ManualClock, storage: &FaultStorage) -> Result<Engine<u64, String>, BuildError> {
    Engine::builder()
        .clock(clock.clone())
        .shards(2)
        .group("orders")
        .ack_timeout(Duration::from_secs(30))
        .durable_storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
        .build()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn timers_survive_a_restart_and_overdue_ones_fire_once_future_ones_not_early() {
    let clock = ManualClock::new(T0);
    let storage = FaultStorage::new();
    let e = engine(&clock, &storage).unwrap();
    let s = e.scheduler();
    for id in 0..100u64 {
        s.schedule(id, secs(10 + id), format!("order {id}"))
            .unwrap();
    }
    for id in 0..20u64 {
        assert!(s.cancel(&id).unwrap().is_cancelled());
    }
    s.reschedule(&99, secs(500)).unwrap();
    drop(e.shutdown());

    // Down for 60 s: ids 20..=50 passed their deadline meanwhile.
    clock.set_ms(T0 + 60_000);
    let e = engine(&clock, &storage).unwrap();
    let recovered = e.recovered().unwrap().clone();
    assert_eq!((recovered.timers, recovered.overdue), (80, 31));
    let mut orders = e.subscribe("orders").unwrap();
    let s = e.scheduler();
    assert!(s.settle(WAIT));
    let mut fired: Vec<u64> = Vec::new();
    for event in orders.drain_ready() {
        assert!(
            event.fired_at_ms >= event.deadline_ms,
            "early after restart"
        );
        assert_eq!(event.payload, format!("order {}", event.id));
        orders.ack(&event).unwrap();
        fired.push(event.id);
    }
    fired.sort_unstable();
    assert_eq!(
        fired,
        (20..=50).collect::<Vec<_>>(),
        "catch-up fires exactly the overdue"
    );
    assert!(
        e.stats().lateness.max_ticks >= 29_000,
        "lateness of the catch-up recorded"
    );
    // The rest wait for their own deadlines.
    clock.set_ms(T0 + 108_999);
    assert!(s.settle(WAIT));
    let next = orders.drain_ready();
    for event in &next {
        orders.ack(event).unwrap();
    }
    let next: Vec<u64> = next.iter().map(|e| e.id).collect();
    assert_eq!(next, (51..=98).collect::<Vec<_>>());
    clock.set_ms(T0 + 500_000);
    assert!(s.settle(WAIT));
    assert_eq!(
        orders
            .drain_ready()
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>(),
        [99]
    );
}

#[test]
fn after_a_restart_exactly_the_unacked_events_come_again() {
    let clock = ManualClock::new(T0);
    let storage = FaultStorage::new();
    let e = engine(&clock, &storage).unwrap();
    let mut orders = e.subscribe("orders").unwrap();
    let s = e.scheduler();
    for id in 0..10u64 {
        s.schedule(id, secs(1), id.to_string()).unwrap();
    }
    clock.advance(secs(1));
    for _ in 0..10 {
        let event = orders.recv_timeout(WAIT).unwrap();
        if event.id.is_multiple_of(2) {
            orders.ack(&event).unwrap();
        }
    }
    drop(orders);
    drop(e.shutdown());
    let e = engine(&clock, &storage).unwrap();
    let recovered = e.recovered().unwrap();
    assert_eq!((recovered.timers, recovered.in_flight), (5, 5));
    let mut orders = e.subscribe("orders").unwrap();
    assert!(e.scheduler().settle(WAIT));
    let again = orders.drain_ready();
    let ids: BTreeSet<u64> = again.iter().map(|e| e.id).collect();
    assert_eq!(ids, [1, 3, 5, 7, 9].into_iter().collect());
    assert!(
        again
            .iter()
            .all(|e| e.kind == EventKind::Expired && e.attempt == 2)
    );
}

#[test]
fn an_fsync_failure_fail_stops_and_nothing_unsynced_is_acknowledged() {
    let clock = ManualClock::new(T0);
    let storage = FaultStorage::new();
    let e = engine(&clock, &storage).unwrap();
    let s = e.scheduler();
    s.schedule(1, secs(5), "kept".into()).unwrap();
    // The next I/O is the write of the next record; the one after, its fsync.
    storage.fail_at(storage.io_count() + 1, Fault::Error);
    match s.schedule(2, secs(5), "lost".into()) {
        Err(ScheduleError::Storage(payload)) => assert_eq!(payload, "lost"),
        other => panic!("{other:?}"),
    }
    // Fail-stop: nothing more is accepted, nothing fires.
    assert!(matches!(
        s.schedule(3, secs(5), "x".into()),
        Err(ScheduleError::Storage(_))
    ));
    assert!(s.cancel(&1).is_err());
    assert!(e.stats().storage_failed);
    let mut orders = e.subscribe("orders").unwrap();
    clock.advance(secs(10));
    assert!(orders.recv_timeout(Duration::from_millis(300)).is_err());
    drop(e);
    storage.power_loss();
    let storage = storage.reboot();
    let e = engine(&clock, &storage).unwrap();
    let mut orders = e.subscribe("orders").unwrap();
    let event = orders.recv_timeout(WAIT).unwrap();
    assert_eq!((event.id, event.payload.as_str()), (1, "kept"));
    assert!(e.scheduler().settle(WAIT));
    assert!(orders.drain_ready().is_empty(), "nothing refused came back");
}

/// Runs a workload, stopping at the first error; returns what was
/// acknowledged: scheduled ids and cancelled ids.
fn workload(s: &Scheduler<u64, String>) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let (mut scheduled, mut cancelled) = (BTreeSet::new(), BTreeSet::new());
    for id in 0..24u64 {
        if s.schedule(id, secs(100 + id), id.to_string()).is_err() {
            break;
        }
        scheduled.insert(id);
        if id.is_multiple_of(3) {
            match s.cancel(&(id / 2)) {
                Ok(Cancel::Cancelled(_)) => {
                    cancelled.insert(id / 2);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    (scheduled, cancelled)
}

#[test]
fn a_fault_at_any_io_keeps_every_acknowledged_change() {
    let clock = ManualClock::new(T0);
    let probe = FaultStorage::new();
    let e = engine(&clock, &probe).unwrap();
    let start = probe.io_count();
    workload(&e.scheduler());
    let total = probe.io_count();
    drop(e);
    for fault in [Fault::Error, Fault::Tear(5)] {
        for k in start..total {
            let storage = FaultStorage::new();
            let e = engine(&clock, &storage).unwrap();
            storage.fail_at(k, fault);
            let (scheduled, cancelled) = workload(&e.scheduler());
            drop(e);
            storage.power_loss();
            let e = engine(&clock, &storage.reboot()).unwrap_or_else(|err| panic!("k={k}: {err}"));
            let mut orders = e.subscribe("orders").unwrap();
            clock.advance(secs(200));
            assert!(e.scheduler().settle(WAIT));
            let fired: BTreeSet<u64> = orders.drain_ready().iter().map(|e| e.id).collect();
            for id in scheduled.difference(&cancelled) {
                assert!(
                    fired.contains(id),
                    "{fault:?} at {k}: acked schedule {id} lost"
                );
            }
            for id in &cancelled {
                assert!(
                    !fired.contains(id),
                    "{fault:?} at {k}: acked cancel {id} fired"
                );
            }
            drop(e);
            clock.set_ms(T0);
        }
    }
}

#[test]
fn a_second_engine_on_the_same_directory_is_refused() {
    let dir = std::env::temp_dir().join(format!("duewheel-durable-lock-{}", std::process::id()));
    let build = || {
        Engine::<u64, u64>::builder()
            .clock(ManualClock::new(T0))
            .group("g")
            .durable(&dir)
            .build()
    };
    let first = build().unwrap();
    let err = build().unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
    // The cause is a value to match, not only text.
    assert!(
        matches!(err, BuildError::Storage(OpenDirError::Locked { .. })),
        "{err:?}"
    );
    drop(first);
    drop(build().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corruption_in_the_log_is_a_clear_error_at_build() {
    let clock = ManualClock::new(T0);
    let storage = FaultStorage::new();
    let e = engine(&clock, &storage).unwrap();
    for id in 0..10 {
        e.scheduler().schedule(id, secs(100), "x".into()).unwrap();
    }
    // A crash: no shutdown, no final checkpoint.
    std::mem::forget(e);
    let crashed = storage.reboot();
    let segment = "wal-0000000000000000.log";
    // 20 bytes of segment header (`docs/WAL_FORMAT.md`), then the first
    // record's 20th byte.
    crashed.flip_byte(segment, 20 + 20);
    let text = engine(&clock, &crashed).unwrap_err().to_string();
    assert!(
        text.contains(segment) && text.contains("offset 20"),
        "{text}"
    );
}

#[test]
fn a_corrupt_snapshot_is_a_clear_error_at_build() {
    let clock = ManualClock::new(T0);
    let storage = FaultStorage::new();
    let e = engine(&clock, &storage).unwrap();
    for id in 0..10 {
        e.scheduler().schedule(id, secs(100), "x".into()).unwrap();
    }
    drop(e.shutdown()); // writes the final checkpoint
    let storage = storage.reboot();
    let snap = storage
        .list()
        .unwrap()
        .into_iter()
        .find(|n| n.ends_with(".snap"))
        .unwrap();
    storage.flip_byte(&snap, 40);
    let text = engine(&clock, &storage).unwrap_err().to_string();
    assert!(text.contains(&snap), "{text}");
}

#[test]
fn a_batch_is_durable_together_and_a_failed_fsync_hands_every_payload_back() {
    let clock = ManualClock::new(T0);
    let storage = FaultStorage::new();
    let e = engine(&clock, &storage).unwrap();
    let s = e.scheduler();
    let batch = (0..100u64).map(|id| (id, secs(10 + id), format!("order {id}")));
    let results = s.schedule_batch(batch.chain([(7, secs(1), "again".to_string())]));
    assert_eq!(results.len(), 101);
    assert!(results[..100].iter().all(Result::is_ok));
    assert!(matches!(&results[100], Err(ScheduleError::AlreadyScheduled(p)) if p == "again"));

    // The next batch's write fails: every one of its timers is refused,
    // payload in hand, and none of them comes back after a restart.
    storage.fail_at(storage.io_count() + 1, Fault::Error);
    let lost = (100..110u64).map(|id| (id, secs(5), format!("lost {id}")));
    for (i, result) in s.schedule_batch(lost).into_iter().enumerate() {
        match result {
            Err(ScheduleError::Storage(payload)) => {
                assert_eq!(payload, format!("lost {}", 100 + i))
            }
            other => panic!("{other:?}"),
        }
    }
    drop(e);
    storage.power_loss();
    let e = engine(&clock, &storage.reboot()).unwrap();
    assert_eq!(e.recovered().unwrap().timers, 100, "the first batch, whole");
    let mut orders = e.subscribe("orders").unwrap();
    clock.advance(secs(200));
    assert!(e.scheduler().settle(WAIT));
    let fired: BTreeSet<u64> = orders.drain_ready().iter().map(|e| e.id).collect();
    assert_eq!(fired, (0..100).collect());
}

/// Issue #14: a batch ack is durable before it returns. A crash right
/// after it (no shutdown, no checkpoint, unsynced bytes lost) delivers none
/// of its events again; the one event left unacked comes back.
#[test]
fn a_batch_ack_is_durable_before_it_returns() {
    let clock = ManualClock::new(T0);
    let storage = FaultStorage::new();
    let e = engine(&clock, &storage).unwrap();
    let mut orders = e.subscribe("orders").unwrap();
    let s = e.scheduler();
    for id in 0..65u64 {
        s.schedule(id, secs(1), format!("order {id}")).unwrap();
    }
    clock.advance(secs(1));
    assert!(s.settle(WAIT));
    let mut events = orders.drain_ready();
    assert_eq!(events.len(), 65);
    events.sort_by_key(|e| e.id);
    let io_before = storage.io_count();
    let results = orders.ack_batch(&events[..64]);
    let batch_io = storage.io_count() - io_before;
    assert!(results.iter().all(Result::is_ok));
    // The crash, right after the call returned.
    let crashed = storage.reboot();
    std::mem::forget(e);

    let e = engine(&clock, &crashed).unwrap();
    assert_eq!(e.recovered().unwrap().in_flight, 1);
    let mut orders = e.subscribe("orders").unwrap();
    // In-flight timers are redelivered at once after a restart.
    assert!(e.scheduler().settle(WAIT));
    let again: Vec<u64> = orders.drain_ready().iter().map(|e| e.id).collect();
    assert_eq!(again, [64], "only the unacked event comes back");
    // One durable wait for the batch: its records share one write and one
    // fsync (the log's writer is held while they are appended); a round
    // already under way may add one more of each. Not 64 of each.
    assert!(batch_io <= 4, "{batch_io} I/O operations for one batch ack");
}

#[test]
fn a_timer_at_the_far_edge_recovers_with_the_clock_5s_behind() {
    let clock = ManualClock::new(T0);
    let storage = FaultStorage::new();
    let e = engine(&clock, &storage).unwrap();
    let s = e.scheduler();
    let far_ms = match s.schedule(1, Duration::from_secs(100 * 365 * 86_400), "probe".into()) {
        Err(ScheduleError::DeadlineTooFar { max_ms, .. }) => max_ms,
        other => panic!("{other:?}"),
    };
    s.schedule(1, duewheel::Deadline::at_unix_ms(far_ms), "far".into())
        .unwrap();
    drop(e.shutdown());

    // The clock stepped back 5 s across the restart (NTP, a VM migration);
    // a new clock, since `ManualClock::set_ms` never moves back.
    let behind = ManualClock::new(T0 - 5_000);
    let e = engine(&behind, &storage).expect("recovery places the far timer");
    assert_eq!(e.recovered().unwrap().timers, 1);
    match e.scheduler().cancel(&1).unwrap() {
        Cancel::Cancelled(payload) => assert_eq!(payload, "far"),
        other => panic!("{other:?}"),
    }
}
