//! The engine: schedule + cancel throughput from 1, 2 and 4 producer
//! threads with 1M timers pending, and expiry events per second from the
//! dispatcher to 1 and to 3 consumer groups; 1M schedules then 1M cancels
//! in random order, the engine beside the bare `Wheel` in the same run; and
//! (printed) the engine's bytes per pending timer at 1M and 10M.
//!
//! `cargo bench --bench engine`; `cargo bench --bench engine -- memory`
//! prints the memory alone.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use duewheel::wheel::Wheel;
use duewheel::{Deadline, Engine, ManualClock};
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

/// A permutation of `0..n` (an LCG-driven Fisher-Yates: the same every run).
fn shuffled(n: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = (0..n).collect();
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for i in (1..ids.len()).rev() {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        ids.swap(i, ((x >> 33) % (i as u64 + 1)) as usize);
    }
    ids
}

/// 1M timers with random deadlines in a 30-minute window scheduled, then
/// all cancelled in another random order: the engine by id (one producer,
/// default shards) and the bare `Wheel` by key, in the same run.
fn schedule_cancel_random(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let order = shuffled(N);
    let deadline_ms = |id: u64| 1 + id.wrapping_mul(0x9e37_79b9_7f4a_7c15) % WINDOW_MS;
    let mut group = c.benchmark_group("engine/schedule_cancel_random_1M");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(N));
    group.bench_function("wheel", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut wheel = Wheel::with_capacity(N as usize);
                let mut keys = Vec::with_capacity(N as usize);
                let began = Instant::now();
                for id in 0..N {
                    keys.push(wheel.insert(deadline_ms(id), id).unwrap());
                }
                for &id in &order {
                    wheel.cancel(keys[id as usize]).unwrap();
                }
                total += began.elapsed();
            }
            total
        });
    });
    group.bench_function("engine", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let engine: Engine<u64, u64> = Engine::builder()
                    .clock(ManualClock::new(T0))
                    .capacity(N as usize)
                    .build()
                    .unwrap();
                let s = engine.scheduler();
                let began = Instant::now();
                for id in 0..N {
                    s.schedule(id, Deadline::at_unix_ms(T0 + deadline_ms(id)), id)
                        .unwrap();
                }
                for id in &order {
                    assert!(s.cancel(id).unwrap().is_cancelled());
                }
                total += began.elapsed();
                drop(engine.shutdown());
            }
            total
        });
    });
    group.finish();
}

/// Heap bytes per pending timer (`Stats::heap_bytes`: wheel entries, id
/// index, side state), `K = P = u64`, at 1M and 10M, without and with one
/// reminder. Printed, not timed.
fn memory(_: &mut Criterion) {
    for n in [1_000_000u64, 10_000_000] {
        for reminders in [&[][..], &[Duration::from_secs(60)][..]] {
            let engine: Engine<u64, u64> = Engine::builder()
                .clock(ManualClock::new(T0))
                .build()
                .unwrap();
            let s = engine.scheduler();
            for id in shuffled(n) {
                let d = Duration::from_millis(
                    120_000 + id.wrapping_mul(0x9e37_79b9_7f4a_7c15) % WINDOW_MS,
                );
                s.schedule_with_reminders(id, d, reminders, id).unwrap();
            }
            let stats = engine.stats();
            eprintln!(
                "engine memory: {n} pending, {} reminder(s): {:.1} B per pending timer; loadavg {}",
                reminders.len(),
                stats.heap_bytes as f64 / stats.pending as f64,
                std::fs::read_to_string("/proc/loadavg")
                    .unwrap_or_default()
                    .trim()
            );
            drop(engine.shutdown());
        }
    }
}

/// Durable acks on the real file system (fsync per group commit): 2,048
/// expiries acked one call per event, then 2,048 acked by `ack_batch` in
/// batches of 64. Printed, not timed by criterion (each figure is one run).
fn batch_ack(_: &mut Criterion) {
    const N: u64 = 2_048;
    let dir = std::env::temp_dir().join(format!("duewheel-bench-ack-{}", std::process::id()));
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .group("g")
        .durable(&dir)
        .build()
        .unwrap();
    let s = engine.scheduler();
    let mut consumer = engine.subscribe("g").unwrap();
    for id in 0..2 * N {
        s.schedule(id, Duration::from_millis(1), id).unwrap();
    }
    clock.advance(Duration::from_millis(1));
    let mut events = Vec::new();
    while events.len() < (2 * N) as usize {
        events.push(consumer.recv().unwrap());
    }
    let (single, batched) = events.split_at(N as usize);
    let began = Instant::now();
    for event in single {
        consumer.ack(event).unwrap();
    }
    let one_by_one = began.elapsed();
    let began = Instant::now();
    for chunk in batched.chunks(64) {
        assert!(consumer.ack_batch(chunk).iter().all(Result::is_ok));
    }
    let in_batches = began.elapsed();
    eprintln!(
        "durable acks ({N} each): one call per event {:.1} us/ack, ack_batch of 64 {:.2} us/ack ({:.1}x); loadavg {}",
        one_by_one.as_secs_f64() * 1e6 / N as f64,
        in_batches.as_secs_f64() * 1e6 / N as f64,
        one_by_one.as_secs_f64() / in_batches.as_secs_f64(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    drop(engine.shutdown());
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(
    benches,
    memory,
    batch_ack,
    lateness,
    schedule_cancel_random,
    schedule_cancel,
    dispatch
);
criterion_main!(benches);
