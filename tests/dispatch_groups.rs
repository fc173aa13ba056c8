//! Delivery to consumer groups: one shared batch per round, bounded by
//! events with memory taken as used, backpressure that loses nothing.

use duewheel::{Engine, EventKind, ManualClock};
use std::collections::HashSet;
use std::thread;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(30);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_capacity_of_2_pow_30_reserves_nothing_and_delivers() {
    // crossbeam's bounded channel allocated every slot at creation: 2^30
    // batches of one event asked for 32 GiB per group and aborted.
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .channel_capacity(1 << 30)
        .batch_size(1)
        .group("a")
        .group("b")
        .build()
        .unwrap();
    let (mut a, mut b) = (
        engine.subscribe("a").unwrap(),
        engine.subscribe("b").unwrap(),
    );
    let s = engine.scheduler();
    for id in 0..10u64 {
        s.schedule(id, ms(1 + id), id).unwrap();
    }
    clock.advance(ms(10));
    assert!(s.settle(WAIT));
    for consumer in [&mut a, &mut b] {
        let mut got: Vec<u64> = consumer.drain_ready().iter().map(|e| e.id).collect();
        got.sort_unstable();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }
}

#[test]
fn every_group_receives_every_event_once_with_its_own_copy() {
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, String> = Engine::builder()
        .clock(clock.clone())
        .shards(3)
        .batch_size(7)
        .build()
        .unwrap();
    let groups: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|g| engine.subscribe(g).unwrap())
        .collect();
    let s = engine.scheduler();
    const N: u64 = 1_000;
    for id in 0..N {
        s.schedule(id, ms(1 + id % 13), format!("order {id}"))
            .unwrap();
    }
    clock.advance(ms(20));
    let readers: Vec<_> = groups
        .into_iter()
        .map(|mut c| {
            thread::spawn(move || {
                let mut seen = HashSet::new();
                let mut last_due = 0;
                for _ in 0..N {
                    let e = c.recv_timeout(WAIT).unwrap();
                    assert_eq!(e.payload, format!("order {}", e.id));
                    assert!(e.due_ms >= last_due, "deadline order across shards");
                    last_due = e.due_ms;
                    assert!(seen.insert(e.id), "{} twice", e.id);
                }
                assert!(c.try_recv().is_err());
                seen.len()
            })
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), N as usize);
    }
}

#[test]
fn a_slow_group_holds_the_dispatcher_and_nothing_is_dropped() {
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .shards(2)
        .channel_capacity(8)
        .batch_size(4)
        .group("fast")
        .group("slow")
        .build()
        .unwrap();
    let mut fast = engine.subscribe("fast").unwrap();
    let mut slow = engine.subscribe("slow").unwrap();
    let s = engine.scheduler();
    const N: u64 = 200;
    for id in 0..N {
        s.schedule(id, ms(1), id).unwrap();
    }
    clock.advance(ms(1));
    let fast = thread::spawn(move || {
        (0..N)
            .map(|_| fast.recv_timeout(WAIT).unwrap().id)
            .collect::<HashSet<_>>()
    });
    // The slow group holds at most its capacity (8) before the dispatcher
    // waits, so the fast one cannot have run ahead by more than that plus
    // one delivery.
    thread::sleep(ms(50));
    assert!(engine.stats().groups.iter().all(|g| g.lag <= 8));
    assert!(!s.settle(ms(20)), "the slow group is full: not settled");
    let slow_ids: HashSet<u64> = (0..N)
        .map(|_| slow.recv_timeout(WAIT).unwrap().id)
        .collect();
    assert_eq!(slow_ids.len(), N as usize);
    assert_eq!(fast.join().unwrap().len(), N as usize);
    assert!(s.settle(WAIT));
}

#[test]
fn a_dropped_consumer_hands_back_the_rest_of_a_shared_batch() {
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .shards(1)
        .group("a")
        .group("b")
        .build()
        .unwrap();
    let mut first = engine.subscribe("a").unwrap();
    let mut b = engine.subscribe("b").unwrap();
    let s = engine.scheduler();
    for id in 0..100 {
        s.schedule(id, ms(1), id).unwrap();
    }
    clock.advance(ms(1));
    assert!(s.settle(WAIT));
    let one = first.recv_timeout(WAIT).unwrap();
    drop(first);
    let mut second = engine.subscribe("a").unwrap();
    let mut ids: Vec<u64> = second.drain_ready().into_iter().map(|e| e.id).collect();
    ids.push(one.id);
    ids.sort_unstable();
    assert_eq!(ids, (0..100).collect::<Vec<_>>());
    assert_eq!(b.drain_ready().len(), 100);
}

#[test]
fn redeliveries_reach_only_the_groups_that_did_not_ack() {
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .shards(2)
        .ack_timeout(Duration::from_secs(1))
        .group("a")
        .group("b")
        .group("c")
        .build()
        .unwrap();
    let mut groups: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|g| engine.subscribe(g).unwrap())
        .collect();
    let s = engine.scheduler();
    for id in 0..50 {
        s.schedule(id, ms(1), id).unwrap();
    }
    clock.advance(ms(1));
    assert!(s.settle(WAIT));
    // Group a acks everything, b the even ids, c nothing.
    for (i, c) in groups.iter_mut().enumerate() {
        for e in c.drain_ready() {
            if i == 0 || (i == 1 && e.id % 2 == 0) {
                c.ack(&e).unwrap();
            }
        }
    }
    clock.advance(Duration::from_secs(1));
    assert!(s.settle(WAIT));
    let again: Vec<Vec<u64>> = groups
        .iter_mut()
        .map(|c| {
            let mut ids: Vec<_> = c
                .drain_ready()
                .into_iter()
                .inspect(|e| assert_eq!((e.kind, e.attempt), (EventKind::Expired, 2)))
                .map(|e| e.id)
                .collect();
            ids.sort_unstable();
            ids
        })
        .collect();
    assert!(again[0].is_empty());
    assert_eq!(
        again[1],
        (0..50).filter(|id| id % 2 == 1).collect::<Vec<_>>()
    );
    assert_eq!(again[2], (0..50).collect::<Vec<_>>());
}

#[test]
fn shutdown_hands_back_what_a_full_group_could_not_take() {
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .shards(1)
        .channel_capacity(4)
        .batch_size(4)
        .group("a")
        .group("b")
        .build()
        .unwrap();
    let mut a = engine.subscribe("a").unwrap();
    let mut b = engine.subscribe("b").unwrap();
    let s = engine.scheduler();
    for id in 0..12 {
        s.schedule(id, ms(1), id).unwrap();
    }
    clock.advance(ms(1));
    assert!(!s.settle(ms(50)), "both groups full after one batch");
    let shutdown = engine.shutdown();
    // Each group received a batch; what the dispatcher held is handed back
    // per group; what is still in the wheel comes back as pending.
    let got_a = a.drain_ready().len();
    let got_b = b.drain_ready().len();
    let back_a = shutdown
        .undelivered
        .iter()
        .filter(|(g, _)| g == "a")
        .count();
    let back_b = shutdown
        .undelivered
        .iter()
        .filter(|(g, _)| g == "b")
        .count();
    assert_eq!(got_a + back_a + shutdown.pending.len(), 12);
    assert_eq!(got_b + back_b + shutdown.pending.len(), 12);
}

#[test]
fn a_timeout_too_long_to_represent_waits_instead_of_panicking() {
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .group("a")
        .build()
        .unwrap();
    let mut a = engine.subscribe("a").unwrap();
    let s = engine.scheduler();
    s.schedule(1, ms(1), 1).unwrap();
    clock.advance(ms(1));
    assert!(s.settle(Duration::MAX));
    assert_eq!(a.recv_timeout(Duration::MAX).unwrap().id, 1);
}

/// #19 item 8 as reported: `simulate --channel-capacity 1073741824` passed
/// validation, then reserved 32 GiB per group and died with SIGABRT. Memory
/// is now taken as events arrive, so such a capacity costs nothing unused.
#[test]
fn a_2_pow_30_channel_capacity_reserves_nothing_and_delivers() {
    let clock = ManualClock::new(0);
    let engine = Engine::<u64, u64>::builder()
        .clock(clock.clone())
        .channel_capacity(1 << 30)
        .batch_size(1)
        .group("a")
        .group("b")
        .build()
        .unwrap();
    let (mut a, mut b) = (
        engine.subscribe("a").unwrap(),
        engine.subscribe("b").unwrap(),
    );
    let s = engine.scheduler();
    for id in 0..10u64 {
        s.schedule(id, ms(1), id).unwrap();
    }
    clock.advance(ms(1));
    assert!(s.settle(WAIT));
    for consumer in [&mut a, &mut b] {
        let mut got: Vec<u64> = consumer.drain_ready().iter().map(|e| e.id).collect();
        got.sort_unstable();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }
}
