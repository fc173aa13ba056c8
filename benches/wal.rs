//! The durable engine: acknowledged (fsynced, group-committed) schedules per
//! second with 1, 8 and 64 producer threads (one call per timer, and in
//! batches of 100 through `schedule_batch`), with 64 and 1,024 async
//! tasks on a 2-worker tokio runtime (`schedule_async`, feature `tokio`),
//! and recovery time at open for 1M and 10M pending timers.
//!
//! `cargo bench --bench wal`. Data goes to a directory under the system
//! temp dir, removed afterwards. Recovery of 10M is printed once (its setup
//! alone takes a while), 1M is a criterion measurement.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use duewheel::wal::SyncPolicy;
use duewheel::{Engine, ManualClock, Scheduler};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

const T0: u64 = 1_700_000_000_000;
/// Every timer's payment window.
const WINDOW: Duration = Duration::from_secs(1_800);

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("duewheel-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn open(dir: &Path, sync: SyncPolicy) -> Engine<u64, u64> {
    Engine::builder()
        .clock(ManualClock::new(T0))
        .group("orders")
        .max_pending(20_000_000)
        .sync_policy(sync)
        .checkpoint_every(Duration::from_secs(3_600))
        .durable(dir)
        .build()
        .unwrap()
}

/// Times 1, 8 and 64 producer threads, each placing its own `per_thread`
/// timers with `place`, which returns only once they are durable. A fresh
/// log for each producer count: criterion's warm-up and samples place
/// millions of timers, which would otherwise pile up past `max_pending`.
fn acked(
    c: &mut Criterion,
    name: &str,
    per_thread: u64,
    place: fn(&Scheduler<u64, u64>, Range<u64>),
) {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for threads in [1u64, 8, 64] {
        let path = dir(&format!("acked-{threads}"));
        let engine = open(&path, SyncPolicy::Always);
        let s = engine.scheduler();
        let mut next_id = 0u64;
        group.throughput(Throughput::Elements(per_thread * threads));
        group.bench_function(format!("{threads}_producers"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let first = next_id;
                    total += common::time_producers(threads, |t| {
                        let s = s.clone();
                        let base = first + t * per_thread;
                        move || place(&s, base..base + per_thread)
                    });
                    next_id += threads * per_thread;
                }
                total
            });
        });
        drop(engine.shutdown());
        let _ = std::fs::remove_dir_all(&path);
    }
    group.finish();
}

/// One `schedule` call per timer: each producer has one record in flight.
fn acked_schedules(c: &mut Criterion) {
    acked(c, "wal/acked_schedules", 2_000, |s, ids| {
        for id in ids {
            s.schedule(id, WINDOW, id).unwrap();
        }
    });
}

/// The same in `schedule_batch` calls of 100: one wait for durability per
/// batch, so a group commit covers up to 64 × 100 records.
fn acked_batches(c: &mut Criterion) {
    const BATCH: usize = 100;
    acked(
        c,
        "wal/acked_schedules_in_batches_of_100",
        10_000,
        |s, ids| {
            let ids: Vec<u64> = ids.collect();
            for batch in ids.chunks(BATCH) {
                let batch = batch.iter().map(|&id| (id, WINDOW, id));
                assert!(s.schedule_batch(batch).iter().all(Result::is_ok));
            }
        },
    );
}

/// Many callers with one operation in flight each, as tasks instead of
/// threads: a group commit can cover as many records as there are tasks.
fn acked_schedules_async(c: &mut Criterion) {
    const PER_TASK: u64 = 200;
    let path = dir("acked-async");
    let engine = open(&path, SyncPolicy::Always);
    let s = engine.scheduler();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut group = c.benchmark_group("wal/acked_schedules_async");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let mut next_id = 0u64;
    for tasks in [64u64, 1_024] {
        group.throughput(Throughput::Elements(PER_TASK * tasks));
        group.bench_function(format!("{tasks}_tasks"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let first = next_id;
                    let began = Instant::now();
                    runtime.block_on(async {
                        let running: Vec<_> = (0..tasks)
                            .map(|t| {
                                let s = s.clone();
                                let base = first + t * PER_TASK;
                                tokio::spawn(async move {
                                    for id in base..base + PER_TASK {
                                        s.schedule_async(id, Duration::from_secs(1_800), id)
                                            .await
                                            .unwrap();
                                    }
                                })
                            })
                            .collect();
                        for task in running {
                            task.await.unwrap();
                        }
                    });
                    total += began.elapsed();
                    next_id += tasks * PER_TASK;
                }
                total
            });
        });
    }
    group.finish();
    drop(engine.shutdown());
    let _ = std::fs::remove_dir_all(&path);
}

/// Fills a directory with `n` pending timers and shuts down cleanly (the
/// final checkpoint holds them all).
fn filled(name: &str, n: u64) -> PathBuf {
    let path = dir(name);
    let engine = open(&path, SyncPolicy::EveryMs(50));
    let s = engine.scheduler();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let s = s.clone();
            thread::spawn(move || {
                for id in (t..n).step_by(4) {
                    let d = Duration::from_millis(1 + id.wrapping_mul(0x9e37_79b9) % 1_800_000);
                    s.schedule(id, d, id).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(engine.shutdown());
    path
}

fn recovery(c: &mut Criterion) {
    let path = filled("recover-1m", 1_000_000);
    let mut group = c.benchmark_group("wal/recovery");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1_000_000));
    group.bench_function("1M_pending", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let began = Instant::now();
                let engine = open(&path, SyncPolicy::Always);
                total += began.elapsed();
                assert_eq!(engine.recovered().unwrap().timers, 1_000_000);
                drop(engine.shutdown()); // untimed; rewrites the same state
            }
            total
        });
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&path);

    let path = filled("recover-10m", 10_000_000);
    let began = Instant::now();
    let engine = open(&path, SyncPolicy::Always);
    let took = began.elapsed();
    eprintln!(
        "recovery of {} pending timers: {:.2} s",
        engine.recovered().unwrap().timers,
        took.as_secs_f64()
    );
    // Leaked on purpose: the final checkpoint of 10M would only slow the bench.
    std::mem::forget(engine);
    let _ = std::fs::remove_dir_all(&path);
}

criterion_group!(
    benches,
    acked_schedules,
    acked_batches,
    acked_schedules_async,
    recovery
);
criterion_main!(benches);
