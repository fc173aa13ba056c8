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

/// The TLS DSN of `DUEWHEEL_PG_TLS=1 scripts/pg-up.sh` (required in CI).
#[cfg(feature = "tls")]
fn tls_dsn() -> Option<String> {
    duewheel_testkit::pg::required_env("DUEWHEEL_PG_TLS_DSN", "the TLS tests")
}

/// A node whose every connection is TLS (verified against the test CA)
/// schedules, fires and acks; the server reports its sessions encrypted.
#[cfg(feature = "tls")]
#[test]
fn a_node_connects_over_tls_and_schedules() {
    let (Some(dsn), Some(schema)) = (tls_dsn(), TestSchema::new("embed_tls")) else {
        return;
    };
    let app = schema.name.clone();
    let store = StoreConfig::new(format!("{dsn} application_name={app}"))
        .schema(&schema.name)
        .shards(8);
    let node: Node<String> = NodeConfig::new(store, "tls-node")
        .renew_every(Duration::from_millis(300))
        .lease_ttl(Duration::from_millis(1500))
        .sweep_every(Duration::from_millis(50))
        .group("orders")
        .start()
        .expect("start over TLS");
    let mut orders = node.subscribe("orders").unwrap();
    node.scheduler()
        .schedule(5, Duration::from_millis(50), "five".into())
        .unwrap();
    let event = orders.recv_timeout(Duration::from_secs(20)).expect("fires");
    assert_eq!(event.payload, "five");
    orders.ack(&event).unwrap();
    let (encrypted, plain): (i64, i64) = {
        let row = schema
            .client()
            .query_one(
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
                 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.application_name = $1",
                &[&app],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(encrypted >= 3, "{encrypted} encrypted sessions");
    assert_eq!(plain, 0, "no plain session");
    node.shutdown();
}

/// A server certificate that does not chain to the configured roots is a
/// clear `OpenError` (the handshake's reason in it), at start, not a panic
/// and not a plain-text fallback; an unreadable root file names itself.
#[cfg(feature = "tls")]
#[test]
fn a_wrong_root_certificate_is_an_open_error() {
    use duewheel_cluster::{NodeError, OpenError, Tls};
    let (Some(dsn), Some(schema)) = (tls_dsn(), TestSchema::new("embed_badca")) else {
        return;
    };
    let wrong =
        std::env::var("DUEWHEEL_PG_TLS_WRONG_CA").expect("pg-up exports it with the TLS DSN");
    let store = StoreConfig::new(&dsn)
        .schema(&schema.name)
        .tls(Tls::Require {
            root_cert: wrong.into(),
        });
    let refused = store.open();
    let error = refused.expect_err("an unknown issuer is refused");
    assert!(matches!(error, OpenError::Connect(_)), "{error:?}");
    let text = format!("{error} {:?}", std::error::Error::source(&error));
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    let started = NodeConfig::new(store, "bad-ca")
        .group("orders")
        .start::<String>();
    assert!(
        matches!(started, Err(NodeError::Open(OpenError::Connect(_)))),
        "{started:?}"
    );
    let missing = StoreConfig::new(&dsn)
        .tls(Tls::Require {
            root_cert: "/nonexistent/ca.pem".into(),
        })
        .open();
    assert!(
        matches!(&missing, Err(OpenError::InvalidConfig(m)) if m.contains("/nonexistent/ca.pem")),
        "{missing:?}"
    );
}

/// Without the `tls` feature, asking for TLS is a configuration error
/// naming the feature (never a silent plain connection).
#[cfg(not(feature = "tls"))]
#[test]
fn tls_without_the_feature_is_a_configuration_error() {
    let error = StoreConfig::new("host=localhost user=x sslmode=require sslrootcert=/ca.pem")
        .open()
        .expect_err("refused");
    assert!(
        matches!(&error, duewheel_cluster::OpenError::InvalidConfig(m) if m.contains("`tls` feature")),
        "{error:?}"
    );
}

/// Issue #17: the password need not be in the DSN. A role that must
/// authenticate (scram over TCP) connects with the password from a private
/// password file, and fails to without it.
#[test]
fn a_password_from_the_password_file_authenticates() {
    let Some(dsn) = duewheel_testkit::pg::required_env("DUEWHEEL_PG_PW_DSN", "the password test")
    else {
        return;
    };
    if std::env::var_os("PGPASSWORD").is_some() {
        eprintln!("note: PGPASSWORD is set; it would win over the file; skipping");
        return;
    }
    let schema = duewheel_testkit::pg::unique_schema("embed_pw");
    let dir = std::env::temp_dir().join(&schema);
    std::fs::create_dir_all(&dir).unwrap();
    let passfile = dir.join("pgpass");
    std::fs::write(
        &passfile,
        "# host:port:database:user:password\nelsewhere:*:*:*:wrong\n*:*:postgres:duewheel_pw:duewheel-test-password\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let store = StoreConfig::new(&dsn).schema(&schema).shards(8);
    let without = store.clone().passfile(dir.join("absent")).open();
    assert!(
        matches!(without, Err(duewheel_cluster::OpenError::Connect(_))),
        "no password: {without:?}"
    );
    let with = store.passfile(&passfile).open();
    assert!(with.is_ok(), "password from the file: {with:?}");
    drop(with);
    std::fs::remove_dir_all(&dir).unwrap();
    if let Some(admin) = duewheel_testkit::pg::dsn() {
        duewheel_testkit::pg::drop_schema(&admin, &schema);
    }
}
