//! A `ManualClock` stepped 1 ms at a time: N orders (default 1M) due
//! uniformly over a 30-minute window, drained by one consumer thread while
//! the main thread calls `set_ms` + `settle` once per millisecond (1.8M
//! steps, most with nothing due), then the same drain with one clock jump.
//! Prints both times and `/proc/loadavg`.
//!
//! `cargo run --release --example step_drain [orders] [stepped|jump]`
//! (both by default).

use duewheel::{Engine, ManualClock};
use std::thread;
use std::time::{Duration, Instant};

const T0: u64 = 1_700_000_000_000;
const WINDOW_MS: u64 = 30 * 60 * 1_000;

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

/// Schedules `orders` uniformly over the window and returns the time to
/// drain them all, stepping 1 ms at a time or jumping once.
fn drain(orders: u64, stepped: bool) -> Result<Duration, Box<dyn std::error::Error>> {
    let clock = ManualClock::new(T0);
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(clock.clone())
        .shards(2)
        .group("orders")
        .build()?;
    let s = engine.scheduler();
    for id in 0..orders {
        // A multiplicative hash spreads the ids over the window in random order.
        let due_ms = 1 + id.wrapping_mul(0x9e37_79b9_7f4a_7c15) % WINDOW_MS;
        s.schedule(id, Duration::from_millis(due_ms), id)
            .map_err(|e| e.to_string())?;
    }
    let mut consumer = engine.subscribe("orders").unwrap();
    let receiver = thread::spawn(move || {
        for _ in 0..orders {
            consumer
                .recv()
                .expect("the engine runs until every order fired");
        }
    });
    let began = Instant::now();
    if stepped {
        for step_ms in 1..=WINDOW_MS {
            clock.set_ms(T0 + step_ms);
            if !s.settle(Duration::from_secs(10)) {
                return Err(format!("settle timed out at step {step_ms}").into());
            }
        }
    } else {
        clock.set_ms(T0 + WINDOW_MS);
    }
    receiver.join().map_err(|_| "the receiver panicked")?;
    let took = began.elapsed();
    drop(engine.shutdown());
    Ok(took)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let orders = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 1_000_000,
    };
    let only = std::env::args().nth(2);
    println!("{orders} orders due uniformly over 30 min, 2 shards, one group");
    println!("loadavg {}", loadavg());
    if only.as_deref() != Some("stepped") {
        let jump = drain(orders, false)?;
        println!(
            "one jump:              {:>8.3} s   (loadavg {})",
            jump.as_secs_f64(),
            loadavg()
        );
    }
    if only.as_deref() == Some("jump") {
        return Ok(());
    }
    let stepped = drain(orders, true)?;
    println!(
        "stepped 1 ms x {WINDOW_MS}: {:>8.3} s   {:.2} us per step   (loadavg {})",
        stepped.as_secs_f64(),
        stepped.as_secs_f64() * 1e6 / WINDOW_MS as f64,
        loadavg()
    );
    Ok(())
}
