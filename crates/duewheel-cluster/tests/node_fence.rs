//! The delivery fence against a real PostgreSQL: a node whose lease ran
//! out by its own monotonic clock hands nothing of that shard to its
//! consumers, even though its keeper has not noticed (it is paused, as a
//! stopped process's would be), while the new owner redelivers the rows.
//!
//! Needs `DUEWHEEL_PG_DSN`; with `CI=true` a missing DSN fails instead of
//! skipping.

use duewheel::{Consumer, Deadline};
use duewheel_cluster::{Node, NodeConfig, StoreConfig};

use duewheel_testkit::pg::{self, drop_schema, dsn};
use duewheel_testkit::wait::eventually;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SHARDS: u32 = 16;

fn schema(test: &str) -> String {
    pg::unique_schema(&format!("nf_{test}"))
}

/// Short leases; an ack timeout far beyond the test, so a node never
/// redelivers on its own while the test looks.
fn config(dsn: &str, schema: &str, name: &str) -> NodeConfig {
    let store = StoreConfig::new(dsn).schema(schema).shards(SHARDS);
    NodeConfig::new(store, name)
        .lease_ttl(Duration::from_millis(1000))
        .renew_every(Duration::from_millis(250))
        .grace(Duration::ZERO)
        .sweep_every(Duration::from_millis(50))
        .ack_timeout(Duration::from_secs(120))
        .group("orders")
}

/// Every event `consumer` returns within `within` (acked), by id.
fn receive(
    consumer: &mut Consumer<u64, String>,
    want: usize,
    within: Duration,
) -> HashMap<u64, Vec<(u32, u64)>> {
    let mut seen: HashMap<u64, Vec<(u32, u64)>> = HashMap::new();
    let until = Instant::now() + within;
    while seen.len() < want && Instant::now() < until {
        if let Ok(e) = consumer.recv_timeout(Duration::from_millis(50)) {
            seen.entry(e.id).or_default().push((e.attempt, e.claim));
            consumer.ack(&e).unwrap();
        }
    }
    seen
}

fn schedule_all(node: &Node<String>, ids: std::ops::Range<u64>, due_in_ms: u64) {
    let now = node.scheduler().now_ms();
    let timers = ids.map(|id| (id, Deadline::at_unix_ms(now + due_in_ms), format!("p{id}")));
    for r in node.scheduler().schedule_batch(timers) {
        r.unwrap();
    }
}

#[test]
fn events_waiting_past_the_lease_are_not_handed_out_while_the_new_owner_redelivers_them() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("wait");
    let a = config(&dsn, &schema, "a").start::<String>().unwrap();
    eventually(Duration::from_secs(15), "a owns every shard", || {
        a.stats().owned == SHARDS as usize
    });
    // A's consumer exists but reads nothing yet: the claimed events wait
    // in its group's channel, as they do in a process that is stopped.
    let mut ca = a.subscribe("orders").unwrap();
    const N: u64 = 500;
    schedule_all(&a, 1..N + 1, 200);
    eventually(Duration::from_secs(15), "a claimed every timer", || {
        a.stats().claimed == N
    });
    let held_by_a = a.owned_shards();
    // A's keeper stops: no renewal, no heartbeat. Its leases run out in the
    // database, and B takes the shards and redelivers what A claimed.
    a.pause_keeper(true);
    let b = config(&dsn, &schema, "b").start::<String>().unwrap();
    let mut cb = b.subscribe("orders").unwrap();
    let by_b = receive(&mut cb, N as usize, Duration::from_secs(30));
    assert_eq!(
        by_b.len(),
        N as usize,
        "b redelivered every timer a claimed"
    );
    let b_epochs: HashMap<u32, u64> = b.owned_shards().into_iter().collect();
    let map = duewheel_cluster::ShardMap::new(SHARDS).unwrap();
    for (id, evs) in &by_b {
        let shard = map.shard_of_id(*id);
        let a_epoch = held_by_a.iter().find(|(s, _)| *s == shard).unwrap().1;
        for &(attempt, claim) in evs {
            assert!(attempt >= 2, "{id}: b's delivery is a redelivery");
            // The event names the claim it was admitted under: B's epoch,
            // newer than the one A claimed it under.
            assert!(
                claim > a_epoch,
                "{id}: claim epoch {claim} <= a's {a_epoch}"
            );
            assert_eq!(Some(&claim), b_epochs.get(&shard), "{id}: b's epoch");
        }
    }
    // A's events have sat in its channel since before the lease ran out by
    // A's own clock: none of them may reach A's consumer now.
    let by_a = receive(&mut ca, N as usize, Duration::from_millis(500));
    assert!(
        by_a.is_empty(),
        "a handed out {} events after its lease ran out (b delivered them too): e.g. {:?}",
        by_a.len(),
        by_a.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        a.stats().fence_held >= 1,
        "the fence counted what it held back: {:?}",
        a.stats()
    );
    eprintln!(
        "fence: a held back {} events; b redelivered {}",
        a.stats().fence_held,
        by_b.len()
    );
    a.pause_keeper(false);
    b.shutdown();
    a.shutdown();
    drop_schema(&dsn, &schema);
}

#[test]
fn a_claim_that_returns_after_the_lease_lapsed_is_held_back_then_redelivered_at_a_new_epoch() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("claim");
    let a = config(&dsn, &schema, "a").start::<String>().unwrap();
    eventually(Duration::from_secs(15), "a owns every shard", || {
        a.stats().owned == SHARDS as usize
    });
    let mut ca = a.subscribe("orders").unwrap();
    let before: HashMap<u32, u64> = a.owned_shards().into_iter().collect();
    // The keeper stops and the lease runs out by A's clock; nobody else
    // takes the shards, so A's claims still succeed in the database.
    a.pause_keeper(true);
    std::thread::sleep(Duration::from_millis(1100));
    const N: u64 = 50;
    schedule_all(&a, 1..N + 1, 0);
    eventually(Duration::from_secs(15), "a claimed every timer", || {
        a.stats().claimed >= N
    });
    let early = receive(&mut ca, N as usize, Duration::from_millis(500));
    assert!(
        early.is_empty(),
        "a delivered {} events claimed after its lease ran out by its clock",
        early.len()
    );
    assert!(a.stats().fence_held >= 1, "{:?}", a.stats());
    // The keeper wakes: it takes the shards again at a new epoch, which
    // reloads the claimed rows, and they are delivered once, attempt 2.
    a.pause_keeper(false);
    let later = receive(&mut ca, N as usize, Duration::from_secs(30));
    assert_eq!(
        later.len(),
        N as usize,
        "every timer delivered after the wake"
    );
    let map = duewheel_cluster::ShardMap::new(SHARDS).unwrap();
    for (id, evs) in &later {
        assert_eq!(evs.len(), 1, "{id}: delivered once: {evs:?}");
        let (attempt, claim) = evs[0];
        let old = before[&map.shard_of_id(*id)];
        assert!(attempt >= 2, "{id}: a redelivery of the held-back claim");
        assert!(claim > old, "{id}: claimed at {claim}, not after {old}");
    }
    a.shutdown();
    drop_schema(&dsn, &schema);
}
