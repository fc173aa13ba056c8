//! The transactional expiries section of `cluster_bench`: timers all due at
//! one moment, fired by 3 nodes (library API, in this process), each
//! expiry handled by a `TxConsumer` whose handler updates one order row per
//! event (one `UPDATE ... WHERE id = ANY($1)` per batch), committed with the
//! fenced tombstones of the batch's timer rows. Rate: handled expiries over
//! the span from the first commit to the last; checked afterwards: every
//! order row updated once, every timer row a tombstone.
//!
//! Alone: `BENCH_TX_ONLY=1 cargo run --release -p duewheel-cli --example
//! cluster_bench` (`BENCH_TX_TIMERS`, default 200000; `BENCH_TX_CONSUMERS`
//! per node, each with its own connection, default 2).

use super::{Bench, Measured, Result, SHARDS};
use duewheel::Codec;
use duewheel_cluster::{NewTimer, NodeConfig, ShardMap, StoreConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The expiries' rate through 3 nodes, and the time from the due moment to
/// the last commit.
pub(super) fn tx_expiries(bench: &Bench, timers: u64) -> Result<(Measured, f64, u64)> {
    let mut schema = bench.schema("tx")?;
    let name = schema.name.clone();
    let store = StoreConfig::new(bench.dsn.clone())
        .schema(name.clone())
        .shards(SHARDS);
    let mut pg = store.open().map_err(|e| format!("open: {e}"))?;
    schema
        .client
        .batch_execute(&format!(
            "CREATE TABLE \"{name}\".orders (id bigint PRIMARY KEY, status text NOT NULL);
             INSERT INTO \"{name}\".orders SELECT g, 'open' FROM generate_series(1, {timers}) g;"
        ))
        .map_err(|e| format!("orders: {e}"))?;
    let start = |k: u32| {
        NodeConfig::new(store.clone(), format!("tx-{k}"))
            .renew_every(Duration::from_millis(750))
            .lease_ttl(Duration::from_secs(3))
            .grace(Duration::ZERO)
            // A short horizon: the rows, moved to 4 s ahead after the fill,
            // are paged in as the horizon passes them.
            .horizon(Duration::from_secs(2))
            .page_every(Duration::from_millis(500))
            .group("expiry")
            .start::<u64>()
            .map_err(|e| format!("node: {e}"))
    };
    let nodes = vec![start(1)?, start(2)?, start(3)?];
    schema.await_balance(3, SHARDS, Duration::from_secs(30))?;

    // Rows straight into the table, due together a little after the fill.
    let map = ShardMap::new(SHARDS).map_err(|e| e.to_string())?;
    let mut by_shard: HashMap<u32, Vec<u64>> = HashMap::new();
    for id in 1..=timers {
        by_shard.entry(map.shard_of_id(id)).or_default().push(id);
    }
    let fill = Instant::now();
    let due_ms = super::wall_ms() + 600_000;
    for (shard, ids) in &by_shard {
        let payloads: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| {
                let mut b = Vec::new();
                id.encode(&mut b);
                b
            })
            .collect();
        for (ids, payloads) in ids.chunks(10_000).zip(payloads.chunks(10_000)) {
            let batch: Vec<NewTimer<'_>> = ids
                .iter()
                .zip(payloads)
                .map(|(&id, p)| NewTimer {
                    id,
                    deadline_ms: due_ms,
                    payload: p,
                })
                .collect();
            pg.insert_unfenced(*shard, &batch)
                .map_err(|e| format!("insert_unfenced: {e}"))?;
        }
    }
    // Now due in 4 s (past the horizon's end): moved in one statement, so
    // no row fires before the fill is done, and the pages load them all.
    let due_ms = super::wall_ms() + 4_000;
    schema
        .client
        .execute(
            &format!("UPDATE \"{name}\".timers SET deadline_ms = $1"),
            &[&(due_ms as i64)],
        )
        .map_err(|e| format!("due: {e}"))?;
    eprintln!(
        "  filled {timers} timers in {:.1} s",
        fill.elapsed().as_secs_f64()
    );

    let handled = Arc::new(AtomicU64::new(0));
    let first_ms = Arc::new(AtomicU64::new(u64::MAX));
    let last_ms = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    let per_node = super::env_count("BENCH_TX_CONSUMERS", 2)?;
    for node in nodes
        .iter()
        .flat_map(|n| std::iter::repeat_n(n, per_node as usize))
    {
        let mut consumer = node
            .subscribe_tx("expiry")
            .map_err(|e| format!("subscribe_tx: {e}"))?;
        let (handled, first_ms, last_ms) = (handled.clone(), first_ms.clone(), last_ms.clone());
        let update = format!("UPDATE \"{name}\".orders SET status = 'expired' WHERE id = ANY($1)");
        threads.push(std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(300);
            while handled.load(Relaxed) < timers && Instant::now() < until {
                match consumer.handle_batch(1000, Duration::from_millis(100), |events, tx| {
                    let ids: Vec<i64> = events.iter().map(|e| e.id as i64).collect();
                    tx.execute(&update, &[&ids]).map(drop)
                }) {
                    Ok(0) => {}
                    Ok(n) => {
                        let now = super::wall_ms();
                        first_ms.fetch_min(now, Relaxed);
                        last_ms.fetch_max(now, Relaxed);
                        handled.fetch_add(n as u64, Relaxed);
                    }
                    Err(e) => eprintln!("  batch not committed: {e}"),
                }
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    for node in nodes {
        node.shutdown();
    }
    let count = handled.load(Relaxed);
    let check = schema
        .client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM \"{name}\".orders WHERE status = 'expired'),
                        (SELECT count(*) FROM \"{name}\".timers WHERE state = 2)"
            ),
            &[],
        )
        .map_err(|e| format!("check: {e}"))?;
    let (expired, tombstones): (i64, i64) = (check.get(0), check.get(1));
    if count != timers || expired as u64 != timers || tombstones as u64 != timers {
        return Err(format!(
            "tx expiries: {count} handled, {expired} orders expired, {tombstones} tombstones \
             of {timers}"
        ));
    }
    let (first, last) = (first_ms.load(Relaxed), last_ms.load(Relaxed));
    Ok((
        Measured {
            count,
            secs: (last.saturating_sub(first)) as f64 / 1e3,
            failed: 0,
            example: String::new(),
        },
        last.saturating_sub(due_ms) as f64 / 1e3,
        per_node,
    ))
}

/// The section's table rows.
pub(super) fn rows(bench: &Bench, timers: u64) -> Result<Vec<super::Row>> {
    eprintln!("transactional expiries through 3 nodes...");
    let (rate, due_to_last_s, per_node) = tx_expiries(bench, timers)?;
    let mut row = super::Row::rate(
        "transactional expiries (`TxConsumer`, 1 order row each)",
        3,
        &rate,
    );
    row.note = format!(
        "library nodes in one process, {per_node} `TxConsumer`s each, batches ≤ 1000; due moment → last commit {due_to_last_s:.2} s"
    );
    Ok(vec![row])
}
