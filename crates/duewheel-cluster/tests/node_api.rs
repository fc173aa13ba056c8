//! The cluster node's library API against a real PostgreSQL, with two nodes
//! in one process: schedule on one, cancel on the other, every outcome
//! matches what the consumers saw; duplicates, bad configuration, shutdown
//! releasing its shards, and a takeover after one node stops.
//!
//! The process-level tests (kill -9, SIGSTOP, database restart) are in
//! `tests/cluster_nodes.rs`. Needs `DUEWHEEL_PG_DSN`; with `CI=true` a
//! missing DSN fails instead of skipping.

use duewheel::{Cancel, Deadline, ScheduleError};
use duewheel_cluster::{Node, NodeConfig, NodeError, StoreConfig};

use duewheel_testkit::pg::{self, drop_schema, dsn};
use duewheel_testkit::wait::eventually;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn schema(test: &str) -> String {
    pg::unique_schema(&format!("na_{test}"))
}

fn config(dsn: &str, schema: &str, name: &str) -> NodeConfig {
    let store = StoreConfig::new(dsn).schema(schema).shards(16);
    NodeConfig::new(store, name)
        .lease_ttl(Duration::from_millis(1500))
        .renew_every(Duration::from_millis(300))
        .grace(Duration::ZERO)
        .sweep_every(Duration::from_millis(50))
        .group("orders")
}

/// Receives and acks events until `n` distinct ids arrived or `within` passed.
fn collect(
    consumer: &mut duewheel::Consumer<u64, String>,
    seen: &mut HashMap<u64, Vec<(u32, u64, u64)>>,
    n: usize,
    within: Duration,
) {
    let until = Instant::now() + within;
    while seen.len() < n && Instant::now() < until {
        if let Ok(e) = consumer.recv_timeout(Duration::from_millis(50)) {
            seen.entry(e.id)
                .or_default()
                .push((e.attempt, e.fired_at_ms, e.deadline_ms));
            consumer.ack(&e).unwrap();
        }
    }
}

#[test]
fn schedule_on_one_node_cancel_on_the_other_exactly_one_outcome() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("outcome");
    let a = config(&dsn, &schema, "a").start::<String>().unwrap();
    let b = config(&dsn, &schema, "b").start::<String>().unwrap();
    eventually(Duration::from_secs(10), "the shards divided", || {
        a.stats().owned + b.stats().owned == 16 && a.stats().owned > 0 && b.stats().owned > 0
    });
    let (mut ca, mut cb) = (
        a.subscribe("orders").unwrap(),
        b.subscribe("orders").unwrap(),
    );
    let now = a.scheduler().now_ms();
    const N: u64 = 2000;
    let timers = (1..=N).map(|id| {
        (
            id,
            Deadline::at_unix_ms(now + 800 + id % 400),
            format!("p{id}"),
        )
    });
    for r in a.scheduler().schedule_batch(timers) {
        r.unwrap();
    }
    // A duplicate id is refused, its payload handed back.
    let dup = b
        .scheduler()
        .schedule(7, Duration::from_secs(60), "again".to_string());
    assert_eq!(
        dup,
        Err(ScheduleError::AlreadyScheduled("again".to_string()))
    );
    // Cancel every third id through b while they start firing.
    std::thread::sleep(Duration::from_millis(900));
    let ids: Vec<u64> = (1..=N).step_by(3).collect();
    let answers = b.scheduler().cancel_batch(ids.iter().copied());
    let mut cancelled = HashSet::new();
    let mut fired = HashSet::new();
    for (id, answer) in ids.iter().zip(answers) {
        match answer.unwrap() {
            Cancel::Cancelled(p) => {
                assert_eq!(p, format!("p{id}"));
                cancelled.insert(*id);
            }
            Cancel::AlreadyFired => {
                fired.insert(*id);
            }
            Cancel::NotFound => panic!("{id} was scheduled and not acked yet"),
        }
    }
    let mut seen = HashMap::new();
    let expect = (N as usize) - cancelled.len();
    let until = Instant::now() + Duration::from_secs(20);
    while seen.len() < expect && Instant::now() < until {
        collect(&mut ca, &mut seen, expect, Duration::from_millis(100));
        collect(&mut cb, &mut seen, expect, Duration::from_millis(100));
    }
    eprintln!(
        "{} scheduled; of {} cancels {} won, {} lost to the fire; {} delivered",
        N,
        ids.len(),
        cancelled.len(),
        fired.len(),
        seen.len()
    );
    assert_eq!(seen.len(), expect, "every uncancelled timer fires");
    for id in &cancelled {
        assert!(!seen.contains_key(id), "cancelled {id} fired");
    }
    for id in &fired {
        assert!(
            seen.contains_key(id),
            "{id}: the fire won but nothing arrived"
        );
    }
    for (id, deliveries) in &seen {
        assert_eq!(deliveries.len(), 1, "{id} delivered twice without a crash");
        let (attempt, at, deadline) = deliveries[0];
        assert_eq!(attempt, 1);
        assert!(at >= deadline, "{id} fired early: at {at}, due {deadline}");
    }
    // A late cancel of a fired and acked timer finds its tombstone.
    let some_fired = *seen.keys().next().unwrap();
    eventually(Duration::from_secs(5), "the acks reached the table", || {
        a.stats().acked + b.stats().acked == seen.len() as u64
    });
    assert_eq!(a.scheduler().cancel(&some_fired), Ok(Cancel::AlreadyFired));
    drop((ca, cb));
    a.shutdown();
    b.shutdown();
    drop_schema(&dsn, &schema);
}

#[test]
fn a_stopped_nodes_shards_are_taken_and_its_timers_fire_on_the_survivor() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("takeover");
    let a = config(&dsn, &schema, "a").start::<String>().unwrap();
    eventually(Duration::from_secs(10), "a owns every shard", || {
        a.stats().owned == 16
    });
    let now = a.scheduler().now_ms();
    // Far enough ahead that a fires none of them before it stops.
    let timers = (1..=500u64).map(|id| (id, Deadline::at_unix_ms(now + 3000), format!("p{id}")));
    for r in a.scheduler().schedule_batch(timers) {
        r.unwrap();
    }
    let b = config(&dsn, &schema, "b").start::<String>().unwrap();
    let mut cb = b.subscribe("orders").unwrap();
    // Shutdown releases a's shards at once (no TTL to wait out).
    a.shutdown();
    eventually(Duration::from_secs(5), "b took every shard", || {
        b.stats().owned == 16
    });
    let mut seen = HashMap::new();
    collect(&mut cb, &mut seen, 500, Duration::from_secs(15));
    assert_eq!(seen.len(), 500, "every timer a accepted fires on b");
    assert!(seen.values().all(|d| d.len() == 1 && d[0].1 >= d[0].2));
    drop(cb);
    b.shutdown();
    drop_schema(&dsn, &schema);
}

#[test]
fn bad_configuration_and_bad_databases_are_errors_at_start() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("config");
    let bad = |c: NodeConfig| c.start::<String>().unwrap_err();
    let e = bad(config(&dsn, &schema, ""));
    assert!(matches!(e, NodeError::Config(_)), "{e}");
    let e = bad(config(&dsn, &schema, "a").renew_every(Duration::from_secs(5)));
    assert!(matches!(e, NodeError::Config(_)), "{e}");
    let store = StoreConfig::new(dsn.clone()).schema(&schema).shards(16);
    let e = bad(NodeConfig::new(store, "a"));
    assert!(e.to_string().contains("consumer group"), "{e}");
    let e = bad(config(
        "host=/nonexistent port=1 connect_timeout=1",
        &schema,
        "a",
    ));
    assert!(e.is_database(), "{e}");
    let e = bad(config("not a dsn ===", &schema, "a"));
    assert!(!e.is_database(), "{e}");
    drop_schema(&dsn, &schema);
}

#[test]
fn a_payload_too_large_or_a_deadline_beyond_range_is_refused_and_handed_back() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("invalid");
    let a = config(&dsn, &schema, "a").start::<String>().unwrap();
    let s = a.scheduler();
    let big = "x".repeat((1 << 20) + 1);
    match s.schedule(1, Duration::from_secs(60), big.clone()) {
        Err(ScheduleError::Invalid { payload, .. }) => assert_eq!(payload, big),
        other => panic!("{other:?}"),
    }
    match s.schedule(2, Deadline::at_unix_ms(u64::MAX), "p".into()) {
        Err(ScheduleError::Invalid { payload, .. }) => assert_eq!(payload, "p"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.cancel(&3), Ok(Cancel::NotFound));
    a.shutdown();
    drop_schema(&dsn, &schema);
}

/// Keeps `Node` in the public API (a compile-time check of its bounds).
#[allow(dead_code)]
fn node_is_send(node: Node<String>) -> impl Send {
    node
}

/// Every node connection is killed (`pg_terminate_backend`) every 250 ms
/// while timers are scheduled, cancelled, claimed and acked: claims and
/// schedules in doubt must lose nothing, fire nothing early, and let no
/// cancelled timer fire.
#[test]
fn connections_killed_mid_statement_lose_nothing() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("terminate");
    // Its own application name, so the killer spares the other tests' nodes.
    let app = format!("dw_terminate_{}", std::process::id());
    let node_dsn = format!("{dsn} application_name={app}");
    // Renewals fail while connections die every 250 ms: a delivery the
    // delivery fence held back (lease no longer certain by the node's
    // clock) comes back after the ack timeout, so keep it well inside the
    // test's 30 s wait.
    let cfg = |name| {
        config(&node_dsn, &schema, name)
            .op_timeout(Duration::from_secs(10))
            .ack_timeout(Duration::from_secs(5))
    };
    let a = cfg("a").start::<String>().unwrap();
    let b = cfg("b").start::<String>().unwrap();
    eventually(Duration::from_secs(10), "the shards divided", || {
        a.stats().owned + b.stats().owned == 16 && a.stats().owned > 0 && b.stats().owned > 0
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (dsn, stop, app) = (
            format!("{dsn} application_name=killer"),
            stop.clone(),
            app.clone(),
        );
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
            let mut kills = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(250));
                let n: i64 = c
                    .query_one(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                         WHERE application_name = $1 AND pid <> pg_backend_pid()",
                        &[&app],
                    )
                    .map_or(0, |r| r.get(0));
                kills += u64::try_from(n).unwrap_or(0);
            }
            kills
        })
    };
    let (mut ca, mut cb) = (
        a.subscribe("orders").unwrap(),
        b.subscribe("orders").unwrap(),
    );
    let mut seen: HashMap<u64, Vec<(u32, u64, u64)>> = HashMap::new();
    let (mut scheduled, mut cancelled) = (HashSet::new(), HashSet::new());
    let (mut retried, mut cancel_unknown) = (0, HashSet::new());
    const N: u64 = 1200;
    for round in 0..12u64 {
        let node = if round % 2 == 0 { &a } else { &b };
        let now = node.scheduler().now_ms();
        let ids: Vec<u64> = (round * 100 + 1..=round * 100 + 100).collect();
        // Retry what was in doubt or unavailable: the same schedule is
        // idempotent.
        let mut todo = ids.clone();
        while !todo.is_empty() {
            let timers = todo.iter().map(|&id| {
                (
                    id,
                    Deadline::at_unix_ms(now + 400 + id % 200),
                    format!("p{id}"),
                )
            });
            let results = node.scheduler().schedule_batch(timers);
            let mut again = Vec::new();
            for (&id, r) in todo.iter().zip(results) {
                match r {
                    Ok(()) => {
                        scheduled.insert(id);
                    }
                    Err(ScheduleError::InDoubt(_) | ScheduleError::Unavailable { .. }) => {
                        retried += 1;
                        again.push(id);
                    }
                    Err(e) => panic!("{id}: {e}"),
                }
            }
            todo = again;
        }
        let other = if round % 2 == 0 { &b } else { &a };
        for (id, answer) in ids.iter().step_by(4).zip(
            other
                .scheduler()
                .cancel_batch(ids.iter().step_by(4).copied()),
        ) {
            match answer {
                Ok(Cancel::Cancelled(_)) => {
                    cancelled.insert(*id);
                }
                Ok(_) => {}
                Err(_) => {
                    cancel_unknown.insert(*id);
                }
            }
        }
        collect(&mut ca, &mut seen, N as usize, Duration::from_millis(30));
        collect(&mut cb, &mut seen, N as usize, Duration::from_millis(30));
    }
    let expect = |seen: &HashMap<u64, _>| {
        scheduled.iter().all(|id| {
            cancelled.contains(id) || cancel_unknown.contains(id) || seen.contains_key(id)
        })
    };
    // Deliveries go on while connections still die, for a while; then the
    // killer stops and everything not cancelled must arrive. (While every
    // connection dies each 250 ms a lease can stay uncertain by the node's
    // clock for long stretches, and the delivery fence holds its events
    // back: late is allowed, lost is not. A row left claimed and never
    // redelivered would still be missing after the calm.)
    let mut wait = |secs| {
        let until = Instant::now() + Duration::from_secs(secs);
        while !expect(&seen) && Instant::now() < until {
            collect(&mut ca, &mut seen, N as usize, Duration::from_millis(100));
            collect(&mut cb, &mut seen, N as usize, Duration::from_millis(100));
        }
    };
    wait(10);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let kills = killer.join().unwrap();
    wait(30);
    let missing: Vec<_> = scheduled
        .iter()
        .filter(|id| {
            !cancelled.contains(id) && !cancel_unknown.contains(id) && !seen.contains_key(id)
        })
        .collect();
    let dups = seen.values().filter(|d| d.len() > 1).count();
    eprintln!(
        "{} scheduled ({retried} retries), {} cancelled, {} cancels without an answer, {} delivered, \
         {dups} delivered twice, {kills} connections killed; a: {:?}; b: {:?}",
        scheduled.len(),
        cancelled.len(),
        cancel_unknown.len(),
        seen.len(),
        a.stats(),
        b.stats()
    );
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    for (id, deliveries) in &mut seen {
        assert!(!cancelled.contains(id), "cancelled {id} fired");
        // Collected node by node: put them in firing order.
        deliveries.sort_by_key(|&(attempt, at, _)| (at, attempt));
        for (i, &(attempt, at, deadline)) in deliveries.iter().enumerate() {
            assert!(at >= deadline, "{id} fired early");
            if i > 0 {
                assert!(
                    attempt > 1,
                    "{id}: a duplicate that is not a redelivery: {deliveries:?}"
                );
            }
        }
    }
    assert!(kills > 0, "the test killed no connection");
    drop((ca, cb));
    a.shutdown();
    b.shutdown();
    drop_schema(&dsn, &schema);
}

/// Rows left in the timers table, tombstones (fired and acked) aside.
fn rows(dsn: &str, schema: &str) -> i64 {
    let mut c = postgres::Client::connect(dsn, postgres::NoTls).unwrap();
    c.query_one(
        &format!("SELECT count(*) FROM \"{schema}\".timers WHERE state < 2"),
        &[],
    )
    .unwrap()
    .get(0)
}

#[test]
fn an_async_ack_ends_the_row_and_no_other_node_redelivers_it() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("async_ack");
    let a = config(&dsn, &schema, "a").start::<String>().unwrap();
    eventually(Duration::from_secs(10), "a owns every shard", || {
        a.stats().owned == 16
    });
    let mut ca = a.subscribe("orders").unwrap();
    let now = a.scheduler().now_ms();
    let timers = (1..=40u64).map(|id| (id, Deadline::at_unix_ms(now + 300), format!("p{id}")));
    for r in a.scheduler().schedule_batch(timers) {
        r.unwrap();
    }
    // Half acked with `ack`, half with `ack_async`: both must end the row.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut acked = HashSet::new();
    let until = Instant::now() + Duration::from_secs(15);
    while acked.len() < 40 && Instant::now() < until {
        if let Ok(e) = ca.recv_timeout(Duration::from_millis(50)) {
            if e.id % 2 == 0 {
                ca.ack(&e).unwrap();
            } else {
                runtime.block_on(ca.ack_async(&e)).unwrap();
            }
            acked.insert(e.id);
        }
    }
    assert_eq!(acked.len(), 40, "every timer fired on a");
    eventually(
        Duration::from_secs(10),
        "every ack reached the table",
        || a.stats().acked == 40 && rows(&dsn, &schema) == 0,
    );
    // A handover must not deliver any of them again.
    let b = config(&dsn, &schema, "b").start::<String>().unwrap();
    let mut cb = b.subscribe("orders").unwrap();
    drop(ca);
    a.shutdown();
    eventually(Duration::from_secs(5), "b took every shard", || {
        b.stats().owned == 16
    });
    let again = cb.recv_timeout(Duration::from_secs(2));
    assert!(again.is_err(), "redelivered after an ack: {again:?}");
    assert_eq!(b.stats().claimed, 0);
    drop(cb);
    b.shutdown();
    drop_schema(&dsn, &schema);
}

/// A takeover's load reads the rows due soon first and the rest after
/// (issue #16); both parts must bring in every claimed row, whatever its
/// deadline: one claimed under a clock ahead of ours can be due past the
/// first part, and only the second part reads it.
#[test]
fn a_takeover_redelivers_claimed_rows_due_after_its_first_load_and_fires_overdue_rows() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("load_order");
    let mut store = StoreConfig::new(dsn.clone())
        .schema(&schema)
        .shards(16)
        .open()
        .unwrap();
    let map = duewheel_cluster::ShardMap::new(16).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // 1..=10 pending and overdue; 11..=20 claimed and overdue; 21..=30
    // claimed, due 8 s ahead (past the first part's 5 s).
    let deadline = |id: u64| if id <= 20 { now - 1_000 } else { now + 8_000 };
    let payloads: Vec<String> = (1..=30u64).map(|id| format!("p{id}")).collect();
    for id in 1..=30u64 {
        let timer = duewheel_cluster::NewTimer {
            id,
            deadline_ms: deadline(id),
            payload: payloads[id as usize - 1].as_bytes(),
        };
        store
            .insert_unfenced(map.shard_of_id(id), &[timer])
            .unwrap();
    }
    drop(store);
    let mut c = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
    c.batch_execute(&format!(
        "UPDATE \"{schema}\".timers SET state = 1, fired_epoch = 0, attempt = 1 \
         WHERE timer_id > 10"
    ))
    .unwrap();
    let a = config(&dsn, &schema, "a").start::<String>().unwrap();
    let mut ca = a.subscribe("orders").unwrap();
    let mut seen = HashMap::new();
    collect(&mut ca, &mut seen, 30, Duration::from_secs(30));
    let mut missing: Vec<u64> = (1..=30).filter(|id| !seen.contains_key(id)).collect();
    missing.sort_unstable();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    for (id, deliveries) in &seen {
        let attempt = deliveries[0].0;
        let expected = if *id <= 10 { 1 } else { 2 };
        assert_eq!(attempt, expected, "id {id}: {deliveries:?}");
    }
    drop(ca);
    a.shutdown();
    drop_schema(&dsn, &schema);
}
