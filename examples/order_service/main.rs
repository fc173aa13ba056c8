//! A small order service on duewheel and axum: payment deadlines with a
//! reminder, payments that race the expiry, expiries that cancel the order
//! and release its stock, and Prometheus metrics.
//!
//! ```text
//! cargo run --release --example order_service -- 127.0.0.1:3000 30s
//! curl -s -XPOST localhost:3000/orders -H 'content-type: application/json' -d '{"qty":2}'
//! curl -s -XPOST localhost:3000/orders/1/pay      # {"paid":true,"beat_expiry":true,...}
//! curl -s localhost:3000/orders/2                 # "cancelled" once its 30 s window closed
//! curl -s localhost:3000/metrics
//! ```
//!
//! Arguments: the address (default `127.0.0.1:3000`) and the payment window
//! (default `30m`; the reminder comes at four fifths of it). Ctrl-C stops it.

mod service;

use duewheel::SystemClock;
use service::{OrderService, Settings};
use std::time::Duration;

fn parse_window(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());
    let window = match args.next() {
        Some(text) => parse_window(&text).ok_or("the window is like 30s, 5m or 1h")?,
        None => Duration::from_secs(30 * 60),
    };
    let settings = Settings {
        window,
        remind_before: window / 5,
        stock: 1_000,
    };
    let service = OrderService::start(settings, SystemClock::new())?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "order service on http://{} (window {window:?}); Ctrl-C stops it",
        listener.local_addr()?
    );
    axum::serve(listener, service.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    service.shutdown().await;
    Ok(())
}
