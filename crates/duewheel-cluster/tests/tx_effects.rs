//! Exactly-once effects in the platform's own transaction, against a real
//! PostgreSQL: a schedule or cancel in a rolled-back transaction did not
//! happen; a cancel tells pending / fired / absent apart under the row
//! lock; an expiry handler's writes commit with the tombstone of its row and
//! only then, so a row ended elsewhere or a moved shard rolls the effect
//! back.
//!
//! Needs `DUEWHEEL_PG_DSN`; with `CI=true` a missing DSN fails instead of
//! skipping.

use duewheel::{Cancel, Deadline};
use duewheel_cluster::{
    Node, NodeConfig, StoreConfig, SubscribeTxError, TxConsumeError, TxScheduleError, TxTimers,
};
use duewheel_testkit::pg::{self, dsn};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn schema(test: &str) -> String {
    pg::unique_schema(&format!("tx_{test}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Fixture {
    schema: String,
    store: StoreConfig,
    node: Option<Node<String>>,
    db: postgres::Client,
}

impl Fixture {
    fn new(test: &str) -> Option<Self> {
        let dsn = dsn()?;
        let schema = schema(test);
        let store = StoreConfig::new(&dsn).schema(&schema).shards(8);
        let node = NodeConfig::new(store.clone(), "n1")
            .lease_ttl(Duration::from_millis(1500))
            .renew_every(Duration::from_millis(300))
            .grace(Duration::ZERO)
            .sweep_every(Duration::from_millis(50))
            .ack_timeout(Duration::from_millis(800))
            .group("expiry")
            .start::<String>()
            .unwrap();
        let mut db = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
        db.batch_execute(&format!(
            "CREATE TABLE \"{schema}\".effects (id bigint NOT NULL, payload text NOT NULL)"
        ))
        .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while node.owned_shards().len() < 8 {
            assert!(Instant::now() < until, "the node took no shards");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self {
            schema,
            store,
            node: Some(node),
            db,
        })
    }

    fn node(&self) -> &Node<String> {
        self.node.as_ref().unwrap()
    }

    fn effects(&mut self, id: u64) -> i64 {
        self.db
            .query_one(
                &format!(
                    "SELECT count(*) FROM \"{}\".effects WHERE id = $1",
                    self.schema
                ),
                &[&(id as i64)],
            )
            .unwrap()
            .get(0)
    }

    fn state(&mut self, id: u64) -> Option<i16> {
        self.db
            .query_opt(
                &format!(
                    "SELECT state FROM \"{}\".timers WHERE timer_id = $1",
                    self.schema
                ),
                &[&(id as i64)],
            )
            .unwrap()
            .map(|r| r.get(0))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown();
        }
        let _ = self.db.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        ));
    }
}

/// The handler every test uses: one unconditional effect row per expiry.
fn record(
    schema: &str,
) -> impl FnMut(
    &[duewheel::Event<u64, String>],
    &mut postgres::Transaction<'_>,
) -> Result<(), postgres::Error>
+ '_ {
    move |events, tx| {
        for e in events {
            tx.execute(
                &format!("INSERT INTO \"{schema}\".effects VALUES ($1, $2)"),
                &[&(e.id as i64), &e.payload],
            )?;
        }
        Ok(())
    }
}

#[test]
fn a_schedule_in_a_rolled_back_transaction_never_fires_and_a_committed_one_does() {
    let Some(mut fx) = Fixture::new("sched") else {
        return;
    };
    let timers = TxTimers::new(&fx.store).unwrap();
    let mut tx = fx.db.transaction().unwrap();
    timers
        .schedule(&mut tx, 1, Deadline::at_unix_ms(now_ms()), &"a".to_string())
        .unwrap();
    drop(tx);
    let mut tx = fx.db.transaction().unwrap();
    timers
        .schedule(&mut tx, 2, Deadline::at_unix_ms(now_ms()), &"b".to_string())
        .unwrap();
    assert!(matches!(
        timers.schedule(&mut tx, 2, Duration::from_secs(1), &"b".to_string()),
        Err(TxScheduleError::AlreadyScheduled(2))
    ));
    tx.commit().unwrap();

    let mut consumer = fx.node().subscribe_tx("expiry").unwrap();
    let schema = fx.schema.clone();
    let until = Instant::now() + Duration::from_secs(10);
    let mut handled = 0;
    while handled < 1 && Instant::now() < until {
        handled += consumer
            .handle_batch(100, Duration::from_millis(100), record(&schema))
            .unwrap();
    }
    // Anything more would be the rolled-back id 1 (or a second copy of 2).
    let more = consumer
        .handle_batch(100, Duration::from_millis(500), record(&schema))
        .unwrap();
    assert_eq!((handled, more), (1, 0));
    assert_eq!(fx.effects(1), 0);
    assert_eq!(fx.effects(2), 1);
    assert_eq!(fx.state(2), Some(2), "the row is a tombstone");
    assert_eq!(fx.state(1), None);
}

#[test]
fn a_cancel_in_the_callers_transaction_tells_pending_fired_and_absent_apart() {
    let Some(mut fx) = Fixture::new("cancel") else {
        return;
    };
    let timers = TxTimers::new(&fx.store).unwrap();
    let later = Duration::from_secs(3600);
    let mut tx = fx.db.transaction().unwrap();
    timers
        .schedule(&mut tx, 10, later, &"p".to_string())
        .unwrap();
    timers
        .schedule(
            &mut tx,
            11,
            Deadline::at_unix_ms(now_ms()),
            &"f".to_string(),
        )
        .unwrap();
    tx.commit().unwrap();

    // A rolled-back cancel leaves the timer.
    let mut tx = fx.db.transaction().unwrap();
    assert_eq!(
        timers.cancel::<_, String>(&mut tx, 10).unwrap(),
        Cancel::Cancelled("p".into())
    );
    drop(tx);
    assert_eq!(fx.state(10), Some(0));

    // 11 fires; while its handler has not committed it is claimed (state 1).
    let mut consumer = fx.node().subscribe_tx("expiry").unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while fx.state(11) != Some(1) {
        assert!(Instant::now() < until, "11 was never claimed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut tx = fx.db.transaction().unwrap();
    assert_eq!(
        timers.cancel::<_, String>(&mut tx, 11).unwrap(),
        Cancel::AlreadyFired
    );
    assert_eq!(
        timers.cancel::<_, String>(&mut tx, 12).unwrap(),
        Cancel::NotFound
    );
    assert_eq!(
        timers.cancel::<_, String>(&mut tx, 10).unwrap(),
        Cancel::Cancelled("p".into())
    );
    tx.commit().unwrap();
    assert_eq!(fx.state(10), None);

    let schema = fx.schema.clone();
    let until = Instant::now() + Duration::from_secs(10);
    while fx.state(11) != Some(2) {
        assert!(Instant::now() < until, "11 was never ended");
        consumer
            .handle_batch(100, Duration::from_millis(100), record(&schema))
            .unwrap();
    }
    // The tombstone still answers `AlreadyFired`, not `NotFound`.
    let mut tx = fx.db.transaction().unwrap();
    assert_eq!(
        timers.cancel::<_, String>(&mut tx, 11).unwrap(),
        Cancel::AlreadyFired
    );
    tx.commit().unwrap();
    assert_eq!(fx.effects(11), 1);
}

#[test]
fn a_failed_handler_commits_nothing_and_the_expiry_comes_again() {
    let Some(mut fx) = Fixture::new("retry") else {
        return;
    };
    let timers = TxTimers::new(&fx.store).unwrap();
    timers
        .schedule(
            &mut fx.db,
            20,
            Deadline::at_unix_ms(now_ms()),
            &"x".to_string(),
        )
        .unwrap();
    let mut consumer = fx.node().subscribe_tx("expiry").unwrap();
    let schema = fx.schema.clone();
    let until = Instant::now() + Duration::from_secs(10);
    let mut failed = false;
    while !failed {
        assert!(Instant::now() < until, "20 never came");
        let r = consumer.handle_batch(100, Duration::from_millis(100), |events, tx| {
            record(&schema)(events, tx).map_err(|e| e.to_string())?;
            Err::<(), String>("refused".into())
        });
        failed = matches!(r, Err(TxConsumeError::Handler(_)));
    }
    assert_eq!(fx.effects(20), 0, "the failed handler's write rolled back");
    assert_eq!(fx.state(20), Some(1), "still claimed");
    // Redelivered after the ack timeout, and handled once.
    let until = Instant::now() + Duration::from_secs(15);
    while fx.state(20) != Some(2) {
        assert!(Instant::now() < until, "20 was never redelivered");
        consumer
            .handle_batch(100, Duration::from_millis(100), record(&schema))
            .unwrap();
    }
    assert_eq!(fx.effects(20), 1);
}

#[test]
fn an_effect_whose_row_was_ended_elsewhere_or_whose_shard_moved_rolls_back() {
    let Some(mut fx) = Fixture::new("fence") else {
        return;
    };
    let timers = TxTimers::new(&fx.store).unwrap();
    let map = timers.shard_map();
    // Two ids in different shards, plus one more that is handled normally.
    let a = 30;
    let b = (31..)
        .find(|&i| map.shard_of_id(i) != map.shard_of_id(a))
        .unwrap();
    let c = (b + 1..)
        .find(|&i| {
            map.shard_of_id(i) != map.shard_of_id(a) && map.shard_of_id(i) != map.shard_of_id(b)
        })
        .unwrap();
    let mut consumer = fx.node().subscribe_tx("expiry").unwrap();
    let mut tx = fx.db.transaction().unwrap();
    for id in [a, b, c] {
        timers
            .schedule(
                &mut tx,
                id,
                Deadline::at_unix_ms(now_ms()),
                &"e".to_string(),
            )
            .unwrap();
    }
    tx.commit().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while [a, b, c].iter().any(|&id| fx.state(id) != Some(1)) {
        assert!(Instant::now() < until, "never claimed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Another delivery's transaction ended `a`; `b`'s shard moved on (an
    // epoch bump, as a takeover does).
    let s = fx.schema.clone();
    fx.db
        .execute(
            &format!("UPDATE \"{s}\".timers SET state = 2, ended_at_ms = 0 WHERE timer_id = $1"),
            &[&(a as i64)],
        )
        .unwrap();
    // Taken by another node, whose lease this node must respect.
    fx.db
        .execute(
            &format!(
                "UPDATE \"{s}\".shards SET epoch = epoch + 1, owner = 'other',
                   lease_expires_at = now() + interval '1 hour' WHERE shard_id = $1"
            ),
            &[&(map.shard_of_id(b) as i32)],
        )
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let mut handled = 0;
    while fx.state(c) != Some(2) {
        assert!(Instant::now() < until, "c never ended");
        handled += consumer
            .handle_batch(100, Duration::from_millis(100), record(&s))
            .unwrap();
    }
    handled += consumer
        .handle_batch(100, Duration::from_millis(300), record(&s))
        .unwrap();
    assert_eq!(handled, 1, "only c's effect committed");
    assert_eq!((fx.effects(a), fx.effects(b), fx.effects(c)), (0, 0, 1));
    assert_eq!(
        fx.state(b),
        Some(1),
        "b stays claimed for the shard's owner"
    );
    assert_eq!(fx.state(c), Some(2));
}

#[test]
fn a_transactional_consumer_needs_the_only_group() {
    let Some(dsn) = dsn() else {
        return;
    };
    let schema = schema("groups");
    let store = StoreConfig::new(&dsn).schema(&schema).shards(8);
    let node = NodeConfig::new(store, "g")
        .group("a")
        .group("b")
        .start::<String>()
        .unwrap();
    assert!(matches!(
        node.subscribe_tx("a"),
        Err(SubscribeTxError::NotSoleGroup)
    ));
    node.shutdown();
    let mut c = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
    let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
}

/// The `tokio_postgres` forms answer as the blocking ones do (feature
/// `tokio`: `cargo test --release -p duewheel-cluster --features tokio
/// --test tx_effects`).
#[cfg(feature = "tokio")]
#[test]
fn the_async_forms_schedule_and_cancel_in_a_tokio_postgres_transaction() {
    let Some(mut fx) = Fixture::new("async") else {
        return;
    };
    let timers = TxTimers::new(&fx.store).unwrap();
    let dsn = dsn().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        let connection = tokio::spawn(connection);
        let later = Duration::from_secs(3600);
        let tx = client.transaction().await.unwrap();
        timers
            .schedule_async(&tx, 40, later, &"a".to_string())
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        let tx = client.transaction().await.unwrap();
        timers
            .schedule_async(&tx, 41, later, &"b".to_string())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let tx = client.transaction().await.unwrap();
        assert_eq!(
            timers.cancel_async::<_, String>(&tx, 40).await.unwrap(),
            Cancel::NotFound
        );
        assert_eq!(
            timers.cancel_async::<_, String>(&tx, 41).await.unwrap(),
            Cancel::Cancelled("b".into())
        );
        tx.commit().await.unwrap();
        drop(client);
        let _ = connection.await;
    });
    assert_eq!((fx.state(40), fx.state(41)), (None, None));
}
