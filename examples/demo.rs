//! Schedules a few thousand payment deadlines on a [`Wheel`], cancels the
//! ones whose buyers paid, advances time and prints what happened.
//!
//! `cargo run --release --example demo`

use duewheel::wheel::Wheel;

const ORDERS: u64 = 5_000;
const WINDOW_TICKS: u64 = 30 * 60 * 1_000; // 30 minutes at 1 ms per tick

fn main() -> Result<(), duewheel::wheel::InsertError<u64>> {
    // A small deterministic generator keeps the run repeatable without a dependency.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };

    let mut wheel = Wheel::with_capacity(ORDERS as usize);
    let mut keys = Vec::new();
    for order in 0..ORDERS {
        let created_at = order * 100; // one order every 100 ms
        keys.push((order, wheel.insert(created_at + WINDOW_TICKS, order)?));
    }

    // 70% of buyers pay at some point in their window.
    let mut paid = Vec::new();
    for &(order, key) in &keys {
        if random() % 100 < 70 {
            assert_eq!(wheel.cancel(key), Some(order));
            paid.push(key);
        }
    }
    // A paid order cannot be cancelled twice: its key is stale now.
    let stale_hits = paid
        .iter()
        .filter(|&&key| wheel.cancel(key).is_some())
        .count();

    let mut expired = 0;
    let mut late = 0;
    let mut last_deadline = 0;
    let mut minute = 0;
    while !wheel.is_empty() {
        minute += 1;
        let now = minute * 60_000;
        wheel.advance_to(now, |timer| {
            assert!(timer.deadline <= now, "fired early");
            assert!(timer.deadline >= last_deadline, "out of order");
            last_deadline = timer.deadline;
            late += now - timer.deadline;
            expired += 1;
        });
    }

    println!("orders scheduled   {ORDERS}");
    println!("paid (cancelled)   {}", paid.len());
    println!("expired (fired)    {expired}");
    println!("second cancels     {stale_hits} hit (stale keys reach nothing)");
    println!(
        "lost               {}",
        ORDERS - paid.len() as u64 - expired
    );
    println!(
        "mean lateness      {:.1} s (time advanced in 1-minute steps)",
        late as f64 / expired.max(1) as f64 / 1000.0
    );
    Ok(())
}
