//! One order through its payment window, with three services as consumer
//! groups: a reminder, a payment the gateway keeps reporting as "pending",
//! re-checks with backoff (snooze), then the cancellation and the stock
//! going back. `cargo run --example order_timeouts`

use duewheel::{Cancel, Consumer, Engine, Event, EventKind, ManualClock};
use std::time::Duration;

const T0: u64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Unpaid,
    Cancelled,
}

/// The order's row; the engine carries its version as the payload.
struct Order {
    id: u64,
    state: State,
    version: u32,
    qty: u32,
}

impl Order {
    /// `UPDATE orders SET state = 'cancelled', version = version + 1
    ///  WHERE id = ? AND state = 'unpaid' AND version = ?`
    fn cancel_if_unpaid(&mut self, version: u32) -> bool {
        let applies = self.state == State::Unpaid && self.version == version;
        if applies {
            self.state = State::Cancelled;
            self.version += 1;
        }
        applies
    }
}

fn at(clock_ms: u64) -> String {
    let s = (clock_ms - T0) / 1_000;
    format!("{:02}:{:02}", s / 60, s % 60)
}

fn next(group: &mut Consumer<u64, u32>) -> Result<Event<u64, u32>, Box<dyn std::error::Error>> {
    Ok(group.recv_timeout(WAIT)?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let clock = ManualClock::new(T0);
    let engine = Engine::<u64, u32>::builder()
        .clock(clock.clone())
        .group("orders")
        .group("inventory")
        .group("notifier")
        .ack_timeout(Duration::from_secs(30))
        .max_snoozes(3)
        .build()?;
    let (mut orders, mut inventory, mut notifier) = (
        engine.subscribe("orders")?,
        engine.subscribe("inventory")?,
        engine.subscribe("notifier")?,
    );
    let timers = engine.scheduler();

    // Order 42 reserves 2 of 10 units and has 30 minutes to pay, with a
    // reminder 5 minutes before the window closes.
    let mut stock = 10;
    let mut order = Order {
        id: 42,
        state: State::Unpaid,
        version: 1,
        qty: 2,
    };
    stock -= order.qty;
    let (window, remind) = (Duration::from_secs(30 * 60), [Duration::from_secs(5 * 60)]);
    timers.schedule_with_reminders(order.id, window, &remind, order.version)?;
    println!(
        "00:00 order 42 placed: {} units reserved, {stock} left in stock",
        order.qty
    );

    clock.advance(Duration::from_secs(25 * 60));
    let reminder = next(&mut notifier)?;
    assert_eq!(reminder.kind, EventKind::Reminder(1));
    println!(
        "{} notifier: \"order 42 closes in 5 minutes\"",
        at(reminder.fired_at_ms)
    );
    // Every group gets every event; reminders are only the notifier's business.
    next(&mut orders)?;
    next(&mut inventory)?;

    // The buyer pays at 29:40; the gateway says "pending" until the bank
    // declines at 31:10.
    let declined_at = T0 + (31 * 60 + 10) * 1_000;
    let gateway_pending = |now_ms: u64| now_ms < declined_at;

    clock.advance(Duration::from_secs(5 * 60));
    let mut backoff = Duration::from_secs(30);
    loop {
        let expiry = next(&mut orders)?;
        assert_eq!(expiry.kind, EventKind::Expired);
        let now = timers.now_ms();
        // The notifier has nothing to do on expiry; it acks.
        let seen_by_notifier = next(&mut notifier)?;
        notifier.ack(&seen_by_notifier)?;
        let seen_by_inventory = next(&mut inventory)?;
        if gateway_pending(now) {
            // Not yet: look again later. The timer waits again, so a payment
            // confirmed meanwhile would still win its cancel.
            orders.snooze(&expiry, backoff)?;
            println!(
                "{} orders: expiry (attempt {}), gateway says pending: re-check in {}s",
                at(now),
                expiry.attempt,
                backoff.as_secs()
            );
            // Inventory acts only on a cancelled order: this one is not, so
            // it leaves `seen_by_inventory` alone; the snoozed timer comes
            // back to every group.
            clock.advance(backoff);
            backoff *= 2;
            continue;
        }
        assert!(order.cancel_if_unpaid(expiry.payload));
        orders.ack(&expiry)?;
        println!(
            "{} orders: expiry (attempt {}), payment declined: order cancelled",
            at(now),
            expiry.attempt
        );
        assert_eq!(order.state, State::Cancelled);
        stock += order.qty;
        inventory.ack(&seen_by_inventory)?;
        println!(
            "{} inventory: {} units released, {stock} in stock",
            at(now),
            order.qty
        );
        break;
    }

    // A payment callback arriving now learns the expiry won: refund it.
    assert!(matches!(timers.cancel(&order.id)?, Cancel::AlreadyFired));
    let stats = timers.stats();
    assert_eq!(
        (stats.in_flight, stats.acked_total, stats.snoozed_total),
        (0, 1, 2)
    );
    println!(
        "done: 1 reminder, {} re-checks, order cancelled once, stock back to {stock}",
        stats.snoozed_total
    );
    // Nothing is pending any more: the one order expired.
    let left = engine.shutdown();
    assert!(left.pending.is_empty() && left.undelivered.is_empty());
    Ok(())
}
