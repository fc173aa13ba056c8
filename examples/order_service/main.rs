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
//! Arguments: the address (default `127.0.0.1:3000`), the payment window
//! (default `30m`; the reminder comes at four fifths of it) and, for the
//! durable mode, a data directory (or `ORDER_SERVICE_DIR`): orders, stock
//! and timers then survive a crash (`kill -9`) and a restart on the same
//! directory (see `service.rs`). Ctrl-C stops it.
//!
//! ```text
//! cargo run --release --example order_service -- 127.0.0.1:3000 30s /var/lib/orders
//! curl -s localhost:3000/stock    # {"initial":1000,"available":998,"reserved":2,...}
//! ```

mod service;

use duewheel::SystemClock;
use service::{OrderService, Settings};
use std::path::PathBuf;
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
    let data_dir = args
        .next()
        .or_else(|| std::env::var("ORDER_SERVICE_DIR").ok())
        .map(PathBuf::from);
    let settings = Settings {
        window,
        remind_before: window / 5,
        stock: 1_000,
        data_dir,
        abort_before_first_ack: false,
    };
    let service_dir = settings.data_dir.clone();
    let service = OrderService::start(settings, SystemClock::new())?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "order service on http://{} (window {window:?}, {}); Ctrl-C stops it",
        listener.local_addr()?,
        match &service_dir {
            Some(dir) => format!("durable in {}", dir.display()),
            None => "in memory".to_string(),
        }
    );
    axum::serve(listener, service.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    service.shutdown().await;
    Ok(())
}
