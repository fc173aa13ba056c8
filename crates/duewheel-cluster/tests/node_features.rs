//! Reminders, atomic reschedule, snoozes written back, and the `_async`
//! forms on cluster nodes, against a real PostgreSQL: each with the
//! single node's meaning, and each surviving what a cluster adds (another
//! node's write, a takeover).
//!
//! Needs `DUEWHEEL_PG_DSN`; with `CI=true` a missing DSN fails instead of
//! skipping.

use duewheel::{Cancel, Consumer, Deadline, Event, EventKind, RescheduleError};
use duewheel_cluster::{Node, NodeConfig, ShardMap, StoreConfig};

use duewheel_testkit::pg::{self, drop_schema, dsn};
use duewheel_testkit::wait::eventually;
use std::time::{Duration, Instant};

fn schema(test: &str) -> String {
    pg::unique_schema(&format!("nf_{test}"))
}

const SHARDS: u32 = 16;

fn config(dsn: &str, schema: &str, name: &str) -> NodeConfig {
    let store = StoreConfig::new(dsn).schema(schema).shards(SHARDS);
    NodeConfig::new(store, name)
        .lease_ttl(Duration::from_millis(1500))
        .renew_every(Duration::from_millis(300))
        .grace(Duration::ZERO)
        .sweep_every(Duration::from_millis(50))
        // A short horizon, so that reminders of timers due past it are
        // tested: the wheel must hold those for their reminders.
        .horizon(Duration::from_secs(2))
        .page_every(Duration::from_millis(500))
        .group("orders")
}

/// A row as stored: state, deadline, pending reminder times, attempt.
#[derive(Debug, PartialEq, Eq)]
struct Stored {
    state: i16,
    deadline_ms: i64,
    reminders_ms: Vec<i64>,
    attempt: i32,
}

fn stored(dsn: &str, schema: &str, id: u64) -> Option<Stored> {
    let mut c = postgres::Client::connect(dsn, postgres::NoTls).unwrap();
    let row = c
        .query_opt(
            &format!(
                "SELECT state, deadline_ms, reminders_ms, attempt FROM \"{schema}\".timers
                 WHERE timer_id = $1"
            ),
            &[&(id as i64)],
        )
        .unwrap()?;
    Some(Stored {
        state: row.get(0),
        deadline_ms: row.get(1),
        reminders_ms: row.get(2),
        attempt: row.get(3),
    })
}

/// Receives until `id`'s `Expired` event (acking it unless `ack` is
/// false), returning every event of `id` seen, in order.
fn events_until_expired(
    consumer: &mut Consumer<u64, String>,
    id: u64,
    within: Duration,
    ack: bool,
) -> Vec<Event<u64, String>> {
    let until = Instant::now() + within;
    let mut seen = Vec::new();
    while Instant::now() < until {
        let Ok(e) = consumer.recv_timeout(Duration::from_millis(50)) else {
            continue;
        };
        if e.id != id {
            continue;
        }
        let expired = e.kind == EventKind::Expired;
        if expired && ack {
            consumer.ack(&e).unwrap();
        }
        seen.push(e);
        if expired {
            return seen;
        }
    }
    panic!("{id} did not expire within {within:?}; saw {seen:?}");
}

fn alone(dsn: &str, schema: &str, name: &str) -> Node<String> {
    let node = config(dsn, schema, name).start::<String>().unwrap();
    eventually(Duration::from_secs(10), "it owns every shard", || {
        node.stats().owned == SHARDS as usize
    });
    node
}

/// Starts `b`, shuts `a` down (releasing its shards) and waits until `b`
/// owns every shard.
fn hand_over(dsn: &str, schema: &str, a: Node<String>) -> Node<String> {
    let b = config(dsn, schema, "b").start::<String>().unwrap();
    a.shutdown();
    eventually(Duration::from_secs(10), "b took every shard", || {
        b.stats().owned == SHARDS as usize
    });
    b
}

#[test]
fn a_reminder_is_delivered_before_the_deadline_and_never_after_a_cancel() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("remind");
    let a = alone(&dsn, &schema, "a");
    let mut orders = a.subscribe("orders").unwrap();
    let s = a.scheduler();
    let deadline_ms = s.now_ms() + 1500;
    let remind = [Duration::from_millis(1000)];
    s.schedule_with_reminders(1, Deadline::at_unix_ms(deadline_ms), &remind, "p1".into())
        .unwrap();
    s.schedule_with_reminders(2, Deadline::at_unix_ms(deadline_ms), &remind, "p2".into())
        .unwrap();
    assert_eq!(
        stored(&dsn, &schema, 1).unwrap().reminders_ms,
        vec![deadline_ms as i64 - 1000]
    );
    assert_eq!(s.cancel(&2).unwrap(), Cancel::Cancelled("p2".to_string()));

    let seen = events_until_expired(&mut orders, 1, Duration::from_secs(10), true);
    let kinds: Vec<EventKind> = seen.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Reminder(1), EventKind::Expired]);
    assert_eq!(seen[0].due_ms, deadline_ms - 1000);
    // The reminder did not claim the row: the expiry is its first attempt.
    assert_eq!(seen[1].attempt, 1);
    eventually(
        Duration::from_secs(5),
        "the acked row is a tombstone",
        || stored(&dsn, &schema, 1).is_some_and(|r| r.state == 2),
    );
    // Nothing of the cancelled timer, reminder or expiry, ever came.
    while let Ok(e) = orders.recv_timeout(Duration::from_millis(300)) {
        assert_ne!(e.id, 2, "a cancelled timer delivered {e:?}");
    }
    drop(orders);
    a.shutdown();
    drop_schema(&dsn, &schema);
}

#[test]
fn a_reminder_delivered_before_a_takeover_is_not_repeated_by_the_next_owner() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("remindover");
    let a = alone(&dsn, &schema, "a");
    let mut on_a = a.subscribe("orders").unwrap();
    let s = a.scheduler();
    let deadline_ms = s.now_ms() + 4000;
    let remind = [Duration::from_millis(3500), Duration::from_millis(500)];
    s.schedule_with_reminders(7, Deadline::at_unix_ms(deadline_ms), &remind, "p7".into())
        .unwrap();
    let first = on_a.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((first.id, first.kind), (7, EventKind::Reminder(1)));
    assert_eq!(first.due_ms, deadline_ms - 3500);
    // "Reminder delivered" left the row with the second one only.
    assert_eq!(
        stored(&dsn, &schema, 7).unwrap().reminders_ms,
        vec![deadline_ms as i64 - 500]
    );
    drop(on_a);
    let b = hand_over(&dsn, &schema, a);
    let mut on_b = b.subscribe("orders").unwrap();
    let seen = events_until_expired(&mut on_b, 7, Duration::from_secs(10), true);
    let reminders: Vec<u64> = seen
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Reminder(_)))
        .map(|e| e.due_ms)
        .collect();
    assert_eq!(
        reminders,
        [deadline_ms - 500],
        "only the one left: {seen:?}"
    );
    assert_eq!(seen.last().unwrap().attempt, 1);
    drop(on_b);
    b.shutdown();
    drop_schema(&dsn, &schema);
}

#[test]
fn reminders_of_timers_due_past_the_horizon_are_delivered_on_time_whichever_node_wrote_them() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("remindfar");
    let a = config(&dsn, &schema, "a").start::<String>().unwrap();
    let b = config(&dsn, &schema, "b").start::<String>().unwrap();
    eventually(Duration::from_secs(10), "the shards divided", || {
        let (x, y) = (a.stats().owned, b.stats().owned);
        x + y == SHARDS as usize && x > 0 && y > 0
    });
    let (mut on_a, mut on_b) = (
        a.subscribe("orders").unwrap(),
        b.subscribe("orders").unwrap(),
    );
    // Due well past the 2 s horizon; reminded 1.5 s from now, within it.
    let deadline_ms = b.scheduler().now_ms() + 8000;
    let remind = [Duration::from_millis(6500)];
    const N: u64 = 16;
    // Half one by one, half in a batch.
    for id in 1..=N / 2 {
        b.scheduler()
            .schedule_with_reminders(id, Deadline::at_unix_ms(deadline_ms), &remind, "r".into())
            .unwrap();
    }
    let batch = (N / 2 + 1..=N).map(|id| {
        (
            id,
            Deadline::at_unix_ms(deadline_ms),
            &remind[..],
            "r".to_string(),
        )
    });
    for r in b.scheduler().schedule_batch_with_reminders(batch) {
        r.unwrap();
    }
    let mut reminded = std::collections::HashMap::new();
    let until = Instant::now() + Duration::from_secs(5);
    while reminded.len() < N as usize && Instant::now() < until {
        for c in [&mut on_a, &mut on_b] {
            if let Ok(e) = c.recv_timeout(Duration::from_millis(20)) {
                assert!(matches!(e.kind, EventKind::Reminder(1)), "{e:?}");
                assert!(reminded.insert(e.id, e.due_ms).is_none(), "twice: {e:?}");
            }
        }
    }
    assert_eq!(reminded.len(), N as usize, "every reminder, on both owners");
    assert!(reminded.values().all(|&due| due == deadline_ms - 6500));
    // Still pending (a reminder claims nothing): every cancel wins.
    for id in 1..=N {
        assert_eq!(
            a.scheduler().cancel(&id).unwrap(),
            Cancel::Cancelled("r".into())
        );
    }
    drop((on_a, on_b));
    a.shutdown();
    b.shutdown();
    drop_schema(&dsn, &schema);
}

#[test]
fn reschedule_moves_the_deadline_later_and_earlier_and_fires_only_at_the_new_one() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("resched");
    let a = alone(&dsn, &schema, "a");
    let mut orders = a.subscribe("orders").unwrap();
    let s = a.scheduler();
    let now = s.now_ms();
    let (old_late, new_late) = (now + 600, now + 2500);
    let (old_early, new_early) = (now + 60_000, now + 1200);
    s.schedule(1, Deadline::at_unix_ms(old_late), "p1".into())
        .unwrap();
    s.schedule(2, Deadline::at_unix_ms(old_early), "p2".into())
        .unwrap();
    s.reschedule(&1, Deadline::at_unix_ms(new_late)).unwrap();
    s.reschedule(&2, Deadline::at_unix_ms(new_early)).unwrap();
    assert_eq!(
        stored(&dsn, &schema, 1).unwrap().deadline_ms,
        new_late as i64
    );
    let mut fired = Vec::new();
    while fired.len() < 2 {
        let e = orders.recv_timeout(Duration::from_secs(10)).unwrap();
        orders.ack(&e).unwrap();
        fired.push((e.id, e.deadline_ms, e.fired_at_ms, e.attempt));
    }
    // Earlier first; each at (never before) its new deadline, once.
    assert_eq!((fired[0].0, fired[0].1), (2, new_early));
    assert_eq!((fired[1].0, fired[1].1), (1, new_late));
    assert!(fired.iter().all(|f| f.2 >= f.1 && f.3 == 1), "{fired:?}");
    assert!(orders.recv_timeout(Duration::from_millis(500)).is_err());
    // An id fired and acked has already fired (its row is a tombstone);
    // an unknown id is not found.
    assert_eq!(
        s.reschedule(&1, Duration::from_secs(5)),
        Err(RescheduleError::AlreadyFired)
    );
    assert_eq!(
        s.reschedule(&99, Duration::from_secs(5)),
        Err(RescheduleError::NotFound)
    );
    drop(orders);
    a.shutdown();
    drop_schema(&dsn, &schema);
}

#[test]
fn reschedule_of_a_claimed_timer_answers_already_fired_and_moves_nothing() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("reschedfired");
    let a = alone(&dsn, &schema, "a");
    let mut orders = a.subscribe("orders").unwrap();
    let s = a.scheduler();
    let deadline_ms = s.now_ms() + 200;
    s.schedule(5, Deadline::at_unix_ms(deadline_ms), "p5".into())
        .unwrap();
    let e = orders.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((e.id, e.kind), (5, EventKind::Expired));
    // Claimed and in delivery: the claim won.
    assert_eq!(
        s.reschedule(&5, Duration::from_secs(60)),
        Err(RescheduleError::AlreadyFired)
    );
    let row = stored(&dsn, &schema, 5).unwrap();
    assert_eq!((row.state, row.deadline_ms), (1, deadline_ms as i64));
    orders.ack(&e).unwrap();
    eventually(
        Duration::from_secs(5),
        "the acked row is a tombstone",
        || stored(&dsn, &schema, 5).is_some_and(|r| r.state == 2),
    );
    assert!(orders.recv_timeout(Duration::from_millis(300)).is_err());
    drop(orders);
    a.shutdown();
    drop_schema(&dsn, &schema);
}

#[test]
fn reschedule_through_a_node_that_does_not_own_the_shard_moves_the_owners_timer() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("reschedremote");
    let a = config(&dsn, &schema, "a").start::<String>().unwrap();
    let b = config(&dsn, &schema, "b").start::<String>().unwrap();
    eventually(Duration::from_secs(10), "the shards divided", || {
        let (x, y) = (a.stats().owned, b.stats().owned);
        x + y == SHARDS as usize && x > 0 && y > 0
    });
    let map = ShardMap::new(SHARDS).unwrap();
    let a_owns: Vec<u32> = a.owned_shards().iter().map(|&(s, _)| s).collect();
    let mut of_a = (1..).filter(|&id| a_owns.contains(&map.shard_of_id(id)));
    let (later, earlier) = (of_a.next().unwrap(), of_a.next().unwrap());
    let mut orders = a.subscribe("orders").unwrap();
    let now = a.scheduler().now_ms();
    a.scheduler()
        .schedule(later, Deadline::at_unix_ms(now + 600), "later".into())
        .unwrap();
    a.scheduler()
        .schedule(
            earlier,
            Deadline::at_unix_ms(now + 60_000),
            "earlier".into(),
        )
        .unwrap();
    let (new_later, new_earlier) = (now + 2500, now + 1500);
    b.scheduler()
        .reschedule(&later, Deadline::at_unix_ms(new_later))
        .unwrap();
    b.scheduler()
        .reschedule(&earlier, Deadline::at_unix_ms(new_earlier))
        .unwrap();
    let mut fired = Vec::new();
    while fired.len() < 2 {
        let e = orders.recv_timeout(Duration::from_secs(10)).unwrap();
        orders.ack(&e).unwrap();
        fired.push((e.id, e.deadline_ms, e.fired_at_ms));
    }
    assert_eq!((fired[0].0, fired[0].1), (earlier, new_earlier));
    assert_eq!((fired[1].0, fired[1].1), (later, new_later));
    assert!(fired.iter().all(|f| f.2 >= f.1), "{fired:?}");
    drop(orders);
    a.shutdown();
    b.shutdown();
    drop_schema(&dsn, &schema);
}

#[test]
fn a_snoozed_delivery_is_redelivered_by_the_next_owner_at_the_snoozed_time_not_at_once() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("snooze");
    let a = alone(&dsn, &schema, "a");
    let mut on_a = a.subscribe("orders").unwrap();
    let s = a.scheduler();
    s.schedule(3, Deadline::at_unix_ms(s.now_ms() + 200), "p3".into())
        .unwrap();
    let first = on_a.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (first.id, first.kind, first.attempt),
        (3, EventKind::Expired, 1)
    );
    let before = s.now_ms();
    on_a.snooze(&first, Duration::from_millis(2500)).unwrap();
    // Written back: pending again, due at the snooze's end.
    eventually(Duration::from_secs(2), "the snooze written back", || {
        stored(&dsn, &schema, 3).is_some_and(|r| r.state == 0)
    });
    let row = stored(&dsn, &schema, 3).unwrap();
    assert!(row.deadline_ms >= (before + 2500) as i64, "{row:?}");
    let until_ms = row.deadline_ms as u64;
    drop(on_a);
    let b = hand_over(&dsn, &schema, a);
    let mut on_b = b.subscribe("orders").unwrap();
    let seen = events_until_expired(&mut on_b, 3, Duration::from_secs(10), true);
    let again = seen.last().unwrap();
    assert!(
        again.fired_at_ms >= until_ms,
        "redelivered early: {again:?}"
    );
    // Attempts stay monotonic across the snooze and the takeover.
    assert_eq!(again.attempt, 2);
    eventually(
        Duration::from_secs(5),
        "the acked row is a tombstone",
        || stored(&dsn, &schema, 3).is_some_and(|r| r.state == 2),
    );
    drop(on_b);
    b.shutdown();
    drop_schema(&dsn, &schema);
}

/// The async forms, awaited on a tokio runtime's own thread. (The node
/// starts, and the table is read, outside it: the blocking `postgres`
/// client runs its own runtime and refuses to block inside another.)
#[test]
fn the_async_forms_schedule_reschedule_cancel_snooze_and_ack_through_the_table() {
    let Some(dsn) = dsn() else { return };
    let schema = schema("async");
    let a = alone(&dsn, &schema, "a");
    let mut orders = a.subscribe("orders").unwrap();
    let s = a.scheduler();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let now = s.now_ms();
    let e = runtime.block_on(async {
        s.schedule_async(1, Deadline::at_unix_ms(now + 60_000), "p1".into())
            .await
            .unwrap();
        s.schedule_async(2, Deadline::at_unix_ms(now + 60_000), "p2".into())
            .await
            .unwrap();
        s.reschedule_async(&1, Deadline::at_unix_ms(now + 300))
            .await
            .unwrap();
        assert_eq!(
            s.cancel_async(&2).await.unwrap(),
            Cancel::Cancelled("p2".to_string())
        );
        assert_eq!(
            s.reschedule_async(&2, Duration::from_secs(1)).await,
            Err(RescheduleError::NotFound)
        );
        let e = orders.recv_async().await.unwrap();
        assert_eq!((e.id, e.deadline_ms, e.attempt), (1, now + 300, 1));
        orders
            .snooze_async(&e, Duration::from_millis(1000))
            .await
            .unwrap();
        e
    });
    // `snooze_async` reached the store: the row is pending again.
    eventually(Duration::from_secs(2), "the snooze written back", || {
        stored(&dsn, &schema, 1).is_some_and(|r| r.state == 0)
    });
    assert_eq!(e.id, 1);
    runtime.block_on(async {
        let again = orders.recv_async().await.unwrap();
        assert_eq!((again.id, again.attempt), (1, 2));
        orders.ack_async(&again).await.unwrap();
    });
    // `ack_async` reached the store: the row is deleted.
    eventually(
        Duration::from_secs(5),
        "the acked row is a tombstone",
        || stored(&dsn, &schema, 1).is_some_and(|r| r.state == 2),
    );
    drop(orders);
    a.shutdown();
    drop_schema(&dsn, &schema);
}
