//! A struct payload through the durable log (feature `serde`): what the
//! platform scheduled comes back field for field after a restart.
#![cfg(feature = "serde")]

use duewheel::wal::{FaultStorage, Storage};
use duewheel::{Cancel, Engine, EventKind, ManualClock, Serde};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Order {
    order_id: u64,
    buyer: String,
    amount_minor: i64,
    currency: [u8; 3],
    items: Vec<(u32, u16)>,
}

fn order(id: u64) -> Serde<Order> {
    Serde(Order {
        order_id: id,
        buyer: format!("buyer-{id} ✓"),
        amount_minor: id as i64 * 1999 - 5,
        currency: *b"EUR",
        items: (0..id % 4).map(|i| (i as u32 * 7, 1)).collect(),
    })
}

fn engine(clock: &ManualClock, storage: &FaultStorage) -> Engine<u64, Serde<Order>> {
    Engine::builder()
        .clock(clock.clone())
        .group("orders")
        .durable_storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
        .build()
        .unwrap()
}

#[test]
fn struct_payloads_survive_a_restart_field_for_field() {
    let clock = ManualClock::new(T0);
    let storage = FaultStorage::new();
    let e = engine(&clock, &storage);
    let s = e.scheduler();
    for id in 0..50 {
        s.schedule(id, Duration::from_secs(60 + id), order(id))
            .unwrap();
    }
    // Paid: its payload comes back from the cancel.
    assert_eq!(s.cancel(&7).unwrap(), Cancel::Cancelled(order(7)));
    drop(e.shutdown());

    let e = engine(&clock, &storage);
    assert_eq!(e.recovered().unwrap().timers, 49);
    let mut orders = e.subscribe("orders").unwrap();
    clock.advance(Duration::from_secs(200));
    assert!(e.scheduler().settle(Duration::from_secs(30)));
    let mut seen = 0;
    for event in orders.drain_ready() {
        assert_eq!(event.kind, EventKind::Expired);
        assert_eq!(event.payload, order(event.id), "payload of {}", event.id);
        assert_ne!(event.id, 7);
        seen += 1;
    }
    assert_eq!(seen, 49);
}
