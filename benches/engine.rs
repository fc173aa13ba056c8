//! The engine: schedule + cancel throughput from 1, 2 and 4 producer
//! threads with 1M timers pending, and expiry events per second from the
//! dispatcher to 1 and to 3 consumer groups.
//!
//! `cargo bench --bench engine`.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use duewheel::{Engine, ManualClock};
use std::thread;
use std::time::{Duration, Instant};

const T0: u64 = 1_700_000_000_000;
const WINDOW_MS: u64 = 30 * 60 * 1_000;

fn engine(groups: &[&str], shards: usize) -> (Engine<u64, u64>, ManualClock) {
    let clock = ManualClock::new(T0);
    let mut builder = Engine::builder()
        .clock(clock.clone())
        .shards(shards)
        .channel_capacity(1 << 20)
        .batch_size(4_096);
    for g in groups {
        builder = builder.group(*g);
    }
    (builder.build().unwrap(), clock)
}

fn schedule_cancel(c: &mut Criterion) {
    const OPS: u64 = 200_000; // per thread per iteration
    let (engine, _clock) = engine(&["g"], 8);
    let s = engine.scheduler();
    for id in 0..1_000_000u64 {
        let d = Duration::from_millis(1 + id.wrapping_mul(0x9e37_79b9_7f4a_7c15) % WINDOW_MS);
        s.schedule(id, d, id).unwrap();
    }
    let mut group = c.benchmark_group("engine/schedule_cancel_1M_pending");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for threads in [1u64, 2, 4] {
        group.throughput(Throughput::Elements(OPS * threads));
        group.bench_function(format!("{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for it in 0..iters {
                    total += common::time_producers(threads, |t| {
                        let s = s.clone();
                        let base = 10_000_000 + (it * 16 + t) * OPS;
                        move || {
                            for id in base..base + OPS {
                                let d = Duration::from_millis(1 + id % WINDOW_MS);
                                s.schedule(id, d, id).unwrap();
                                let _ = s.cancel(&id).unwrap();
                            }
                        }
                    });
                }
                total
            });
        });
    }
    group.finish();
}

fn dispatch(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let mut group = c.benchmark_group("engine/dispatch_1M_expiries");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(N));
    for groups in [&["a"][..], &["a", "b", "c"][..]] {
        group.bench_function(format!("{}_groups", groups.len()), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (engine, clock) = engine(groups, 2);
                    let s = engine.scheduler();
                    for id in 0..N {
                        s.schedule(id, Duration::from_millis(1 + id % 4), id)
                            .unwrap();
                    }
                    let consumers: Vec<_> = groups
                        .iter()
                        .map(|g| {
                            let mut consumer = engine.subscribe(g).unwrap();
                            thread::spawn(move || {
                                let mut got = 0;
                                while got < N {
                                    consumer.recv().unwrap();
                                    got += 1;
                                }
                            })
                        })
                        .collect();
                    let began = Instant::now();
                    clock.advance(Duration::from_millis(10));
                    for c in consumers {
                        c.join().unwrap();
                    }
                    total += began.elapsed();
                    drop(engine.shutdown());
                }
                total
            });
        });
    }
    group.finish();
}

/// Lateness on the system clock while 100k timers/s expire for 2 s: not a
/// criterion measurement (it is a distribution, not a time), so printed.
fn lateness(_: &mut Criterion) {
    const N: u64 = 200_000;
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(duewheel::SystemClock::new())
        .group("g")
        .build()
        .unwrap();
    let s = engine.scheduler();
    let mut consumer = engine.subscribe("g").unwrap();
    let drain = thread::spawn(move || {
        for _ in 0..N {
            consumer.recv().unwrap();
        }
    });
    // Deadlines spread evenly over 2 s starting 200 ms from now: 100k/s.
    for id in 0..N {
        s.schedule(id, Duration::from_micros(200_000 + id * 10), id)
            .unwrap();
    }
    drain.join().unwrap();
    let l = engine.stats().lateness;
    eprintln!(
        "lateness at 100k expiries/s (system clock, 1 ms ticks): p50 {} p99 {} max {} ticks over {} events",
        l.p50_ticks, l.p99_ticks, l.max_ticks, l.count
    );
}

criterion_group!(benches, lateness, schedule_cancel, dispatch);
criterion_main!(benches);
