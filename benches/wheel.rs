//! The wheel on its own: insert, random-order cancel over the whole
//! structure and advance with 1M and 10M timers pending, and the
//! payment-deadline workload (1M and 10M timers uniform in [1 ms, 30 min] at
//! 1 ms ticks, a random 70% cancelled in random order, then drained).
//!
//! `cargo bench --bench wheel`. Bytes per timer are printed before the
//! criterion groups run.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use duewheel::wheel::Wheel;
use std::hint::black_box;
use std::time::{Duration, Instant};

const WINDOW_MS: u64 = 30 * 60 * 1_000;

/// A fixed-seed xorshift: repeatable and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn deadline(&mut self) -> u64 {
        1 + self.next() % WINDOW_MS
    }
}

fn filled(n: usize, rng: &mut Rng) -> (Wheel<u64>, Vec<duewheel::TimerKey>) {
    let mut wheel = Wheel::with_capacity(n);
    let keys = (0..n as u64)
        .map(|i| wheel.insert(rng.deadline(), i).unwrap())
        .collect();
    (wheel, keys)
}

fn print_memory() {
    for n in [1_000_000usize, 10_000_000] {
        let mut rng = Rng(7);
        let mut grown = Wheel::new();
        for i in 0..n as u64 {
            grown.insert(rng.deadline(), i).unwrap();
        }
        let (sized, _) = filled(n, &mut Rng(7));
        eprintln!(
            "bytes per pending timer at {n}: {:.2} (grown from empty), {:.2} (with_capacity)",
            grown.heap_bytes() as f64 / n as f64,
            sized.heap_bytes() as f64 / n as f64,
        );
    }
}

fn insert_and_cancel(c: &mut Criterion) {
    for pending in [1_000_000usize, 10_000_000] {
        let mut rng = Rng(1);
        let (mut wheel, keys) = filled(pending, &mut rng);
        let mut group = c.benchmark_group(format!("wheel/{}M_pending", pending / 1_000_000));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(3));
        const BATCH: u64 = 100_000;
        group.throughput(Throughput::Elements(BATCH));
        group.bench_function("insert", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let deadlines: Vec<u64> = (0..BATCH).map(|_| rng.deadline()).collect();
                    let start = Instant::now();
                    let added: Vec<_> = deadlines
                        .iter()
                        .map(|&d| wheel.insert(d, d).unwrap())
                        .collect();
                    total += start.elapsed();
                    for key in added {
                        wheel.cancel(key);
                    }
                }
                total
            });
        });
        // Random order over the whole structure: each batch cancels the next
        // 100k keys of a shuffled list of every pending timer, so every
        // cancel reaches a cold entry anywhere in the slab (not the batch
        // just inserted, which would still be in cache). Replacements are
        // inserted untimed, so the wheel stays at `pending` timers.
        let mut keys = keys;
        let mut order: Vec<usize> = (0..keys.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        let mut next = 0;
        group.bench_function("cancel_random_full", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if next + BATCH as usize > order.len() {
                        next = 0;
                    }
                    let batch = &order[next..next + BATCH as usize];
                    next += BATCH as usize;
                    let start = Instant::now();
                    for &i in batch {
                        black_box(wheel.cancel(keys[i]));
                    }
                    total += start.elapsed();
                    for &i in batch {
                        let d = rng.deadline();
                        keys[i] = wheel.insert(d, d).unwrap();
                    }
                }
                total
            });
        });
        group.bench_function("insert_then_cancel", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let deadlines: Vec<u64> = (0..BATCH).map(|_| rng.deadline()).collect();
                    let start = Instant::now();
                    for &d in &deadlines {
                        let key = wheel.insert(d, d).unwrap();
                        black_box(wheel.cancel(key));
                    }
                    total += start.elapsed();
                }
                total
            });
        });
        group.finish();
    }
}

fn advance(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel/advance");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    // One wheel throughout: each iteration puts a timer 30 min + 1 ms ahead
    // (untimed), jumps 30 min in one call with nothing due (timed), then
    // fires the timer (untimed).
    group.bench_function("idle_30min_one_jump", |b| {
        let mut wheel: Wheel<u64> = Wheel::new();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let now = wheel.now();
                wheel.insert(now + WINDOW_MS + 1, 0).unwrap();
                let start = Instant::now();
                black_box(wheel.advance_to(now + WINDOW_MS, |_| {}));
                total += start.elapsed();
                assert_eq!(wheel.advance_to(now + WINDOW_MS + 1, |_| {}), 1);
            }
            total
        });
    });
    group.bench_function("idle_30min_in_1ms_steps", |b| {
        b.iter_batched(
            || {
                let mut wheel: Wheel<u64> = Wheel::new();
                wheel.insert(WINDOW_MS + 1, 0).unwrap();
                wheel
            },
            |mut wheel| {
                for t in 1..=WINDOW_MS {
                    wheel.advance_to(t, |_| {});
                }
                black_box(wheel)
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// 1M and 10M timers, 70% cancelled in random order, then drained.
fn payment_workload(c: &mut Criterion) {
    for n in [1_000_000usize, 10_000_000] {
        let mut group =
            c.benchmark_group(format!("wheel/payment_{}M_70pct_cancelled", n / 1_000_000));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(5));
        let setup = || {
            let mut rng = Rng(42);
            let (mut wheel, keys) = filled(n, &mut rng);
            let mut order: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            for &i in &order[..n * 7 / 10] {
                wheel.cancel(keys[i]);
            }
            wheel
        };
        group.throughput(Throughput::Elements((n - n * 7 / 10) as u64));
        group.bench_function("drain", |b| {
            b.iter_batched(
                setup,
                |mut wheel| {
                    let mut fired = 0u64;
                    wheel.advance_to(WINDOW_MS, |t| fired += t.payload & 1);
                    black_box(fired)
                },
                BatchSize::PerIteration,
            );
        });
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function("whole_workload", |b| {
            b.iter(|| {
                let mut wheel = setup();
                wheel.advance_to(WINDOW_MS, |t| {
                    black_box(t);
                });
            });
        });
        group.finish();
    }
}

fn memory(_: &mut Criterion) {
    print_memory();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("/proc/loadavg: {}", load.trim());
}

criterion_group!(
    benches,
    memory,
    insert_and_cancel,
    advance,
    payment_workload
);
criterion_main!(benches);
