//! The order service: an axum router over an order table, a stock ledger
//! and a duewheel engine. `main.rs` serves it; `tests/order_service.rs`
//! starts it on a `ManualClock` and drives it over HTTP.
//!
//! - `POST /orders` `{"qty": 2}` reserves stock and schedules the payment
//!   deadline with a reminder before it (`schedule_with_reminders_async`);
//! - `POST /orders/{id}/pay` cancels the deadline (`cancel_async`) and
//!   answers whether the payment beat the expiry: exactly one of the two
//!   wins, and the engine says which;
//! - an async consumer of group `orders` takes the reminders (a notifier
//!   would email the buyer) and the expiries: an expiry cancels the order
//!   if it is still unpaid (a conditional update) and releases its stock,
//!   then acks;
//! - `GET /orders/{id}` shows an order; `GET /metrics` serves the engine's
//!   Prometheus text.

// Each of `main.rs` and the test uses part of this module.
#![allow(dead_code)]

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use duewheel::prometheus::Exporter;
use duewheel::{BuildError, Cancel, Clock, Engine, EventKind, Scheduler, SubscribeError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How the service runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// Payment window of each order.
    pub(crate) window: Duration,
    /// Reminder this long before the window closes.
    pub(crate) remind_before: Duration,
    /// Units in stock at start.
    pub(crate) stock: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OrderState {
    Unpaid,
    Paid,
    Cancelled,
}

/// A row of the order table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Order {
    pub(crate) id: u64,
    pub(crate) qty: u64,
    pub(crate) state: OrderState,
    pub(crate) deadline_ms: u64,
    pub(crate) reminded: bool,
}

/// What the handlers and the consumer share.
struct Shared {
    scheduler: Scheduler<u64, u64>,
    orders: Mutex<HashMap<u64, Order>>,
    /// Units not reserved by an unpaid or paid order.
    available: Mutex<u64>,
    next_id: AtomicU64,
    settings: Settings,
    metrics: Exporter,
}

/// A running service: its router, its engine and its consumer task.
pub(crate) struct OrderService {
    shared: Arc<Shared>,
    engine: Engine<u64, u64>,
    consumer: JoinHandle<()>,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// The engine refused its configuration.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The expiry consumer could not subscribe.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
}

impl OrderService {
    /// Starts the engine on `clock` and the expiry consumer. Call from
    /// inside a tokio runtime (the consumer is a task on it, not a thread).
    pub(crate) fn start(settings: Settings, clock: impl Clock) -> Result<Self, StartError> {
        let engine = Engine::<u64, u64>::builder()
            .clock(clock)
            .group("orders")
            // An expiry stays in flight until the consumer has cancelled
            // the order and released its stock; if the service died in
            // between, it would come again.
            .ack_timeout(Duration::from_secs(30))
            .build()?;
        let shared = Arc::new(Shared {
            scheduler: engine.scheduler(),
            orders: Mutex::new(HashMap::new()),
            available: Mutex::new(settings.stock),
            next_id: AtomicU64::new(1),
            settings,
            metrics: Exporter::new(&engine),
        });
        let consumer = tokio::spawn(consume(shared.clone(), engine.subscribe("orders")?));
        Ok(Self {
            shared,
            engine,
            consumer,
        })
    }

    /// The HTTP routes.
    pub(crate) fn router(&self) -> Router {
        Router::new()
            .route("/orders", post(create_order))
            .route("/orders/{id}", get(show_order))
            .route("/orders/{id}/pay", post(pay))
            .route("/metrics", get(metrics))
            .with_state(self.shared.clone())
    }

    /// Units in stock and not reserved.
    pub(crate) fn available(&self) -> u64 {
        *self.shared.available.lock()
    }

    /// Stops the engine; the consumer ends once it has drained its group.
    pub(crate) async fn shutdown(self) {
        drop(self.engine.shutdown());
        let _ = self.consumer.await;
    }
}

/// The `orders` group: reminders and expiries, awaited, never a thread.
async fn consume(shared: Arc<Shared>, mut events: duewheel::Consumer<u64, u64>) {
    while let Some(event) = events.recv_async().await {
        match event.kind {
            EventKind::Reminder(_) => {
                if let Some(order) = shared.orders.lock().get_mut(&event.id) {
                    // Here a notifier would email the buyer.
                    order.reminded = true;
                }
            }
            EventKind::Expired => {
                // `UPDATE orders SET state = 'cancelled' WHERE id = ? AND
                // state = 'unpaid'`: a redelivery finds it cancelled already
                // and releases nothing twice.
                let released = {
                    let mut orders = shared.orders.lock();
                    match orders.get_mut(&event.id) {
                        Some(order) if order.state == OrderState::Unpaid => {
                            order.state = OrderState::Cancelled;
                            order.qty
                        }
                        _ => 0,
                    }
                };
                *shared.available.lock() += released;
                // Only a shut-down engine refuses; the expiry is then back in
                // the engine's hands.
                let _ = events.ack_async(&event).await;
            }
            // `EventKind` is non-exhaustive: a kind this service does not
            // know is acknowledged and otherwise ignored.
            _ => {
                let _ = events.ack_async(&event).await;
            }
        }
    }
}

#[derive(Deserialize)]
struct NewOrder {
    qty: u64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct PayAnswer {
    /// The payment was taken: the order is paid.
    pub(crate) paid: bool,
    /// The payment reached the engine before the expiry fired.
    pub(crate) beat_expiry: bool,
    pub(crate) state: OrderState,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn create_order(State(shared): State<Arc<Shared>>, Json(new): Json<NewOrder>) -> Response {
    if new.qty == 0 || new.qty > 1_000 {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "qty must be 1 to 1000");
    }
    {
        let mut available = shared.available.lock();
        if *available < new.qty {
            return error(StatusCode::CONFLICT, "out of stock");
        }
        *available -= new.qty;
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let settings = shared.settings;
    let deadline_ms =
        shared.scheduler.now_ms() + u64::try_from(settings.window.as_millis()).unwrap_or(u64::MAX);
    let order = Order {
        id,
        qty: new.qty,
        state: OrderState::Unpaid,
        deadline_ms,
        reminded: false,
    };
    // The row exists before its timer, so the expiry always finds it.
    shared.orders.lock().insert(id, order.clone());
    let scheduled = shared
        .scheduler
        .schedule_with_reminders_async(
            id,
            duewheel::Deadline::at_unix_ms(deadline_ms),
            &[settings.remind_before],
            new.qty,
        )
        .await;
    if let Err(refused) = scheduled {
        shared.orders.lock().remove(&id);
        *shared.available.lock() += new.qty;
        return error(StatusCode::SERVICE_UNAVAILABLE, &refused.to_string());
    }
    (StatusCode::CREATED, Json(order)).into_response()
}

async fn show_order(State(shared): State<Arc<Shared>>, Path(id): Path<u64>) -> Response {
    match shared.orders.lock().get(&id) {
        Some(order) => Json(order.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such order"),
    }
}

async fn pay(State(shared): State<Arc<Shared>>, Path(id): Path<u64>) -> Response {
    let state = shared.orders.lock().get(&id).map(|o| o.state);
    match state {
        None => return error(StatusCode::NOT_FOUND, "no such order"),
        Some(OrderState::Paid) => return error(StatusCode::CONFLICT, "already paid"),
        Some(_) => {}
    }
    match shared.scheduler.cancel_async(&id).await {
        // The deadline was still pending: the payment won, for good.
        Ok(Cancel::Cancelled(_)) => {
            if let Some(order) = shared.orders.lock().get_mut(&id) {
                order.state = OrderState::Paid;
            }
            let answer = PayAnswer {
                paid: true,
                beat_expiry: true,
                state: OrderState::Paid,
            };
            (StatusCode::OK, Json(answer)).into_response()
        }
        // The expiry fired first: the order is (or is about to be)
        // cancelled by the consumer; the payment must be refunded.
        Ok(Cancel::AlreadyFired | Cancel::NotFound) => {
            let answer = PayAnswer {
                paid: false,
                beat_expiry: false,
                state: OrderState::Cancelled,
            };
            (StatusCode::CONFLICT, Json(answer)).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            duewheel::prometheus::CONTENT_TYPE,
        )],
        shared.metrics.render(),
    )
        .into_response()
}
