//! duewheel against the Rust timer crates and a binary heap, with criterion
//! statistics, on the payment workload and the flash sale at 100k timers
//! (the table in `docs/BENCHMARKS.md` comes from `cargo run --release
//! --example compare`, at 1M and 10M, one process per contender).
//!
//! `cargo bench --bench compare`. Each contender is first run once through
//! the exactly-once check; one that fails is reported and not timed.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

#[allow(dead_code)] // a few items serve only the table of examples/compare.rs
mod peers;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use peers::workload::{Scenario, Workload, check};
use peers::{Contender, Fired, NAMES, Visitor};
use std::time::Duration;

const N: usize = 100_000;

/// Builds a contender holding the workload, its cancels done.
fn prepared<C: Contender>(workload: &Workload) -> C {
    let mut c = C::new(workload.len());
    c.schedule_all(&workload.deadlines_ms);
    c.cancel_all(&workload.cancels);
    c
}

/// Runs the whole workload once and checks it.
fn passes<C: Contender>(workload: &Workload) -> Result<(), String> {
    let mut c: C = prepared(workload);
    let mut fired = Vec::with_capacity(workload.live());
    c.drain(&mut fired);
    check(workload, &fired).map(drop)
}

struct Bench<'a> {
    c: &'a mut Criterion,
    payment: &'a Workload,
    flash: &'a Workload,
}

impl Visitor for Bench<'_> {
    type Output = ();

    fn visit<C: Contender>(self, name: &'static str, _label: &'static str) {
        for (scenario, workload) in [
            (Scenario::Payment, self.payment),
            (Scenario::FlashSale, self.flash),
        ] {
            if let Err(why) = passes::<C>(workload) {
                let scenario = scenario.name();
                eprintln!("{name} FAILING the exactly-once check on {scenario}: {why}; not timed");
                return;
            }
        }
        let mut group = self.c.benchmark_group(format!("compare/{name}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));

        let payment = self.payment;
        group.throughput(Throughput::Elements(payment.len() as u64));
        group.bench_function("payment_100k/schedule_then_cancel_70pct", |b| {
            b.iter_batched(
                || C::new(payment.len()),
                |mut c| {
                    c.schedule_all(&payment.deadlines_ms);
                    c.cancel_all(&payment.cancels);
                    c
                },
                BatchSize::PerIteration,
            );
        });
        group.throughput(Throughput::Elements(payment.live() as u64));
        group.bench_function("payment_100k/drain", |b| {
            b.iter_batched(
                || {
                    (
                        prepared::<C>(payment),
                        Vec::<Fired>::with_capacity(payment.live()),
                    )
                },
                |(mut c, mut fired)| {
                    c.drain(&mut fired);
                    (c, fired)
                },
                BatchSize::PerIteration,
            );
        });

        let flash = self.flash;
        group.throughput(Throughput::Elements(flash.len() as u64));
        group.bench_function("flash_100k_in_1s/drain", |b| {
            b.iter_batched(
                || {
                    (
                        prepared::<C>(flash),
                        Vec::<Fired>::with_capacity(flash.len()),
                    )
                },
                |(mut c, mut fired)| {
                    c.drain(&mut fired);
                    (c, fired)
                },
                BatchSize::PerIteration,
            );
        });
        group.finish();
    }
}

fn compare(c: &mut Criterion) {
    let payment = Workload::new(Scenario::Payment, N);
    let flash = Workload::new(Scenario::FlashSale, N);
    for (name, _) in NAMES {
        let bench = Bench {
            c: &mut *c,
            payment: &payment,
            flash: &flash,
        };
        peers::visit(name, bench).expect("NAMES lists known contenders");
    }
}

criterion_group!(benches, compare);
criterion_main!(benches);
