//! A node embedded in an async service: started, used and stopped on a
//! tokio runtime's thread (multi-thread and current-thread), consuming with
//! the engine consumer's `recv_async` and acking with `ack_async`. Before
//! issue #17 `NodeConfig::start` panicked there ("Cannot start a runtime
//! from within a runtime": the sync client blocks on a runtime of its own).
//!
//! Needs `DUEWHEEL_PG_DSN`; with `CI=true` a missing DSN fails instead of
//! skipping.

use duewheel_cluster::{Node, NodeConfig, StoreConfig};
use duewheel_testkit::pg::TestSchema;
use std::time::Duration;

fn config(schema: &TestSchema, name: &str) -> NodeConfig {
    let store = StoreConfig::new(&schema.dsn).schema(&schema.name).shards(8);
    NodeConfig::new(store, name)
        .lease_ttl(Duration::from_millis(1500))
        .renew_every(Duration::from_millis(300))
        .grace(Duration::ZERO)
        .sweep_every(Duration::from_millis(50))
        .group("orders")
}

/// Everything a service does with a node, from inside a runtime.
async fn start_schedule_consume_ack_shutdown(prefix: &str) {
    let Some(schema) = TestSchema::new(prefix) else {
        return;
    };
    // Called on the runtime's thread, as a service would.
    let node: Node<String> = config(&schema, "embedded-a").start().expect("start");
    let mut orders = node.subscribe("orders").unwrap();
    let scheduler = node.scheduler();
    tokio::task::spawn_blocking(move || {
        for id in 0..20u64 {
            scheduler
                .schedule(id, Duration::from_millis(100), format!("order {id}"))
                .unwrap();
        }
    })
    .await
    .unwrap();

    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 20 {
        let event = tokio::time::timeout(Duration::from_secs(20), orders.recv_async())
            .await
            .expect("every scheduled timer fires within 20 s")
            .expect("the node is running");
        assert_eq!(event.payload, format!("order {}", event.id));
        orders.ack_async(&event).await.unwrap();
        seen.insert(event.id);
    }
    assert_eq!(seen, (0..20).collect());
    let acked = async {
        while node.stats().acked < 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), acked)
        .await
        .expect("every ack reaches the table");
    // Shut down on the runtime's thread too; the consumer outlives the node
    // (its engine's gate held a connection: dropping it here panicked).
    node.shutdown();
    drop(orders);
    let remaining: i64 = tokio::task::spawn_blocking(move || {
        let count = schema
            .client()
            .query_one("SELECT count(*) FROM timers WHERE state <> 2", &[])
            .unwrap()
            .get(0);
        drop(schema); // its cleanup connects: off the runtime
        count
    })
    .await
    .unwrap();
    assert_eq!(remaining, 0, "acked rows are gone from the table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_runs_and_stops_inside_a_multi_thread_runtime() {
    start_schedule_consume_ack_shutdown("embed_mt").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_starts_runs_and_stops_inside_a_current_thread_runtime() {
    start_schedule_consume_ack_shutdown("embed_ct").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_dropped_inside_a_runtime_does_not_panic() {
    let Some(schema) = TestSchema::new("embed_drop") else {
        return;
    };
    let node: Node<String> = config(&schema, "embedded-drop").start().expect("start");
    drop(node);
    tokio::task::spawn_blocking(move || drop(schema))
        .await
        .unwrap();
}

/// The metrics a platform scrapes: they parse, and the oldest-unacked gauge
/// rises while a delivery waits for its ack and falls back to 0 after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_unacked_age_grows_until_the_ack_and_the_metrics_parse() {
    let Some(schema) = TestSchema::new("embed_metrics") else {
        return;
    };
    let node: Node<String> = config(&schema, "embedded-metrics").start().expect("start");
    let mut orders = node.subscribe("orders").unwrap();
    let scheduler = node.scheduler();
    tokio::task::spawn_blocking(move || {
        scheduler
            .schedule(1, Duration::from_millis(50), "one".to_string())
            .unwrap()
    })
    .await
    .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(20), orders.recv_async())
        .await
        .expect("fires")
        .expect("running");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scrape = || {
        let mut text = String::new();
        node.render_prometheus(&mut text);
        duewheel_testkit::prom_text::parse(&text).expect("valid exposition")
    };
    let labels = [("node", "embedded-metrics")];
    let age = |p: &duewheel_testkit::prom_text::Exposition| {
        p.value("duewheel_node_oldest_unacked_age_seconds", &labels)
            .unwrap()
    };
    let before = scrape();
    assert!(age(&before) >= 0.3, "age {} while unacked", age(&before));
    assert_eq!(
        before.value("duewheel_node_claimed_total", &labels),
        Some(1.0)
    );
    assert!(before.value("duewheel_node_owned_shards", &labels).unwrap() >= 1.0);
    orders.ack_async(&event).await.unwrap();
    let settled = async {
        while age(&scrape()) != 0.0 || node.stats().acked < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), settled)
        .await
        .expect("the gauge falls to 0 after the ack");
    node.shutdown();
    tokio::task::spawn_blocking(move || drop(schema))
        .await
        .unwrap();
}

/// Issue #17: leases are held by node id, so a second live process with the
/// same id must be refused at start, not share (and fence) the first's
/// shards; the id is free again once the first shut down.
#[test]
fn a_second_live_node_with_the_same_id_is_refused_and_the_id_is_free_after_shutdown() {
    let Some(schema) = TestSchema::new("embed_sameid") else {
        return;
    };
    let first: Node<String> = config(&schema, "twin").start().expect("first start");
    let second = config(&schema, "twin").start::<String>();
    assert!(
        matches!(&second, Err(duewheel_cluster::NodeError::NodeIdInUse { node_id }) if node_id == "twin"),
        "second start: {second:?}"
    );
    // The first runs on, unharmed.
    first
        .scheduler()
        .schedule(1, Duration::from_secs(60), "x".into())
        .unwrap();
    first.shutdown();
    // Shut down (its row left): the id is free at once.
    let again: Node<String> = config(&schema, "twin")
        .start()
        .expect("restart after shutdown");
    again.shutdown();
}

/// A process that died leaves a fresh heartbeat row behind; it stands
/// still, so a restart under the same id takes the id (after a short
/// watch) instead of waiting out the lease ttl or being refused.
#[test]
fn a_restart_after_the_holder_died_takes_the_id() {
    let Some(schema) = TestSchema::new("embed_dead") else {
        return;
    };
    drop(
        StoreConfig::new(&schema.dsn)
            .schema(&schema.name)
            .shards(8)
            .open()
            .expect("creates the schema"),
    );
    let mut client = schema.client();
    client
        .execute(
            "INSERT INTO nodes (node_id, seen_at, session) VALUES ('phoenix', now(), 'dead-process')",
            &[],
        )
        .unwrap();
    let node: Node<String> = config(&schema, "phoenix")
        .lease_ttl(Duration::from_secs(60))
        .start()
        .expect("the dead holder's id is taken");
    let session: Option<String> = client
        .query_one("SELECT session FROM nodes WHERE node_id = 'phoenix'", &[])
        .unwrap()
        .get(0);
    assert_ne!(session.as_deref(), Some("dead-process"));
    assert!(session.is_some());
    node.shutdown();
}
