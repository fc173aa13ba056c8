//! Schedule two payment deadlines, cancel one (its buyer paid), receive the
//! other's expiry. `cargo run --example basic`

use duewheel::{Cancel, Engine, EventKind, ManualClock};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let clock = ManualClock::new(1_700_000_000_000);
    let engine = Engine::<u64, &str>::builder()
        .clock(clock.clone())
        .build()?;
    let mut expiries = engine.subscribe("orders")?;
    let scheduler = engine.scheduler();

    let window = Duration::from_secs(30 * 60);
    scheduler.schedule(1, window, "order 1")?;
    scheduler.schedule(2, window, "order 2")?;
    // Order 1 is paid in time: its deadline is cancelled, and no expiry comes.
    assert!(matches!(
        scheduler.cancel(&1)?,
        Cancel::Cancelled("order 1")
    ));

    clock.advance(window);
    let event = expiries.recv_timeout(Duration::from_secs(5))?;
    assert_eq!((event.id, event.kind), (2, EventKind::Expired));
    println!(
        "{} expired unpaid (deadline {} ms)",
        event.payload, event.deadline_ms
    );
    // Shutdown hands back what was still pending: here, nothing.
    let left = engine.shutdown();
    println!("{} timers left pending", left.pending.len());
    Ok(())
}
