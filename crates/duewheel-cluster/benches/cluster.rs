//! One cluster node in-process against a real PostgreSQL (feature
//! `postgres`): acknowledged schedules per second through
//! `NodeScheduler::schedule_batch` with 1 and 4 producer threads, cancels
//! per second through `cancel_batch`, and the whole path of a batch due at
//! once (commit, fire, fenced claim, delivery, ack).
//!
//! `eval "$(scripts/pg-up.sh)"; cargo bench -p duewheel-cluster --bench
//! cluster`. Without `DUEWHEEL_PG_DSN` it prints a note and measures
//! nothing. The multi-process figures (1 and 3 node processes, takeover of
//! a 1M-row shard) come from `cargo run --release -p duewheel-cli
//! --example cluster_bench`; see docs/BENCHMARKS.md.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use duewheel::Deadline;
use duewheel_cluster::{Node, NodeConfig, StoreConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const BATCH: u64 = 1000;

fn node(dsn: &str, schema: &str) -> Node<Vec<u8>> {
    let store = StoreConfig::new(dsn).schema(schema).shards(1024);
    let node = NodeConfig::new(store, "bench")
        .lease_ttl(Duration::from_secs(10))
        .group("orders")
        .start::<Vec<u8>>()
        .expect("the node starts");
    let until = Instant::now() + Duration::from_secs(20);
    while node.stats().owned < 1024 && Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
    }
    node
}

fn bench(c: &mut Criterion) {
    let Ok(dsn) = std::env::var("DUEWHEEL_PG_DSN") else {
        eprintln!("note: DUEWHEEL_PG_DSN not set; the cluster bench measures nothing");
        return;
    };
    let schema = format!("bench_{}", std::process::id());
    let node = node(&dsn, &schema);
    let next = AtomicU64::new(1);
    let payload = vec![7u8; 64];
    let far = Duration::from_secs(3600);
    let mut group = c.benchmark_group("cluster");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BATCH));
    for producers in [1u64, 4] {
        group.throughput(Throughput::Elements(BATCH * producers));
        group.bench_function(
            format!("acked schedules, batches of 1000, {producers} producer(s)"),
            |b| {
                b.iter(|| {
                    thread::scope(|s| {
                        for _ in 0..producers {
                            s.spawn(|| {
                                let first = next.fetch_add(BATCH, Ordering::Relaxed);
                                let timers =
                                    (first..first + BATCH).map(|id| (id, far, payload.clone()));
                                for r in node.scheduler().schedule_batch(timers) {
                                    r.expect("scheduled");
                                }
                            });
                        }
                    });
                });
            },
        );
    }
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("cancels, batches of 1000", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let first = next.fetch_add(BATCH, Ordering::Relaxed);
                let timers = (first..first + BATCH).map(|id| (id, far, payload.clone()));
                for r in node.scheduler().schedule_batch(timers) {
                    r.expect("scheduled");
                }
                let t = Instant::now();
                for r in node.scheduler().cancel_batch(first..first + BATCH) {
                    assert!(matches!(r, Ok(duewheel::Cancel::Cancelled(_))));
                }
                total += t.elapsed();
            }
            total
        });
    });
    let mut orders = node.subscribe("orders").expect("declared");
    group.bench_function(
        "expiries (claimed, delivered, acked), batches of 1000",
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let first = next.fetch_add(BATCH, Ordering::Relaxed);
                    let due = Deadline::at_unix_ms(node.scheduler().now_ms() + 200);
                    let timers = (first..first + BATCH).map(|id| (id, due, payload.clone()));
                    for r in node.scheduler().schedule_batch(timers) {
                        r.expect("scheduled");
                    }
                    let mut got = 0;
                    let mut t = None;
                    while got < BATCH {
                        let e = orders.recv_timeout(Duration::from_secs(30)).expect("fires");
                        t.get_or_insert_with(Instant::now);
                        orders.ack(&e).expect("acked");
                        got += 1;
                    }
                    total += t.map_or(Duration::ZERO, |t| t.elapsed());
                }
                total
            });
        },
    );
    group.finish();
    drop(orders);
    node.shutdown();
    if let Ok(mut c) = postgres::Client::connect(&dsn, postgres::NoTls) {
        let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
