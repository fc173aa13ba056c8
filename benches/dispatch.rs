//! Dispatch: expiry events per second from the dispatcher to 1 and to 3
//! consumer groups (1M timers over 4 ticks, one clock jump). The stepped
//! `ManualClock` drain is `examples/step_drain.rs`.
//!
//! `cargo bench --bench dispatch`. `/proc/loadavg` is printed beside the
//! figures: on a shared machine compare ratios within one run.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use duewheel::{Engine, ManualClock};
use std::thread;
use std::time::{Duration, Instant};

const T0: u64 = 1_700_000_000_000;

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

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

/// 1M expiries due over 4 ticks, the clock jumped once: the time from the
/// jump until every consumer (one thread per group) has received all of
/// them.
fn dispatch(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    eprintln!("dispatch: loadavg before {}", loadavg());
    let mut group = c.benchmark_group("dispatch/1M_expiries");
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
        eprintln!("loadavg {}", loadavg());
    }
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
