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
//! - `GET /orders/{id}` shows an order; `GET /stock` the stock ledger
//!   (available, reserved, sold; they always sum to the initial stock);
//!   `GET /metrics` serves the engine's Prometheus text.
//!
//! **Durable mode** (`Settings::data_dir`): the engine logs its timers in
//! `DIR/engine`, and the order table its effects in `DIR/orders.jsonl`
//! (`effects.rs`), each fsynced before the service answers: a placed order
//! is on disk before its timer is scheduled, a payment is on disk before
//! `200`, and an expiry's cancellation is on disk before the expiry is
//! acked. The boundary is the ack: an expiry the service handled but did
//! not ack before a crash comes again (at least once), and finds its order
//! cancelled already, so it releases nothing twice. At open, the table is
//! replayed and every unpaid order's timer is scheduled again
//! (`AlreadyScheduled` if the engine's log kept it, the usual case); this
//! covers an order whose row reached the disk and its timer did not. A
//! payment whose cancel was durable but whose `paid` line was not was never
//! answered `200`: its order expires as unpaid, and the client, who got no
//! answer, is refunded.

// Each of `main.rs` and the test uses part of this module.
#![allow(dead_code)]

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use duewheel::prometheus::Exporter;
use duewheel::{
    BuildError, Cancel, Clock, Deadline, Engine, EventKind, ScheduleError, Scheduler,
    SubscribeError,
};
use effects::{Effect, Effects};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;

#[path = "effects.rs"]
mod effects;

/// Most expiries the consumer takes, handles and acks at once (one fsync of
/// the effects, one `ack_batch`).
const ACK_BATCH: usize = 64;

/// How the service runs.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Payment window of each order.
    pub(crate) window: Duration,
    /// Reminder this long before the window closes.
    pub(crate) remind_before: Duration,
    /// Units in stock at start.
    pub(crate) stock: u64,
    /// Durable mode: where the engine's log and the order table live.
    /// `None`: everything in memory, lost at exit.
    pub(crate) data_dir: Option<PathBuf>,
    /// For the restart test: the process aborts right after its first
    /// cancellations reach the disk, before their expiries are acked (the
    /// worst moment to die; the expiries come again after the restart).
    pub(crate) abort_before_first_ack: bool,
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
    /// Durable mode: the order table's effects file.
    effects: Option<Mutex<Effects>>,
    /// `cancelled` effects ever recorded, replayed ones included: equal to
    /// the cancelled orders unless an order was cancelled twice.
    cancel_effects: AtomicU64,
}

impl Shared {
    /// Makes `effects` durable (durable mode; nothing in memory mode).
    fn record(&self, effects: &[Effect]) -> std::io::Result<()> {
        match &self.effects {
            Some(file) => file.lock().append(effects),
            None => Ok(()),
        }
    }
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
    /// The data directory or the order table's file could not be read.
    #[error("the order table: {0}")]
    Table(#[from] std::io::Error),
    /// An unpaid order's timer could not be scheduled again at open.
    #[error("order {id}'s timer: {reason}")]
    Reschedule { id: u64, reason: String },
}

/// The table, the stock left and the next id, as `effects` leave them.
fn replay(effects: &[Effect], stock: u64) -> (HashMap<u64, Order>, u64, u64, u64) {
    let mut orders = HashMap::new();
    let mut cancel_effects = 0;
    for effect in effects {
        match *effect {
            Effect::Placed {
                id,
                qty,
                deadline_ms,
            } => {
                orders.entry(id).or_insert(Order {
                    id,
                    qty,
                    state: OrderState::Unpaid,
                    deadline_ms,
                    reminded: false,
                });
            }
            Effect::Dropped { id } => {
                orders.remove(&id);
            }
            Effect::Paid { id } | Effect::Cancelled { id } => {
                let cancel = matches!(effect, Effect::Cancelled { .. });
                cancel_effects += u64::from(cancel);
                if let Some(order) = orders
                    .get_mut(&id)
                    .filter(|o| o.state == OrderState::Unpaid)
                {
                    order.state = if cancel {
                        OrderState::Cancelled
                    } else {
                        OrderState::Paid
                    };
                }
            }
        }
    }
    let held: u64 = orders
        .values()
        .filter(|o| o.state != OrderState::Cancelled)
        .map(|o| o.qty)
        .sum();
    let next_id = orders.keys().max().map_or(1, |max| max + 1);
    (orders, stock.saturating_sub(held), next_id, cancel_effects)
}

impl OrderService {
    /// Starts the engine on `clock` and the expiry consumer. Call from
    /// inside a tokio runtime (the consumer is a task on it, not a thread).
    pub(crate) fn start(settings: Settings, clock: impl Clock) -> Result<Self, StartError> {
        let mut builder = Engine::<u64, u64>::builder()
            .clock(clock)
            .group("orders")
            // An expiry stays in flight until the consumer has cancelled
            // the order and released its stock; if the service died in
            // between, it would come again.
            .ack_timeout(Duration::from_secs(30));
        let (mut effects, mut replayed) = (None, Vec::new());
        if let Some(dir) = &settings.data_dir {
            std::fs::create_dir_all(dir)?;
            let (file, past) = Effects::open(&dir.join("orders.jsonl"))?;
            effects = Some(Mutex::new(file));
            replayed = past;
            builder = builder.durable(dir.join("engine"));
        }
        let engine = builder.build()?;
        let (orders, available, next_id, cancel_effects) = replay(&replayed, settings.stock);
        let unpaid: Vec<Order> = orders
            .values()
            .filter(|o| o.state == OrderState::Unpaid)
            .cloned()
            .collect();
        let shared = Arc::new(Shared {
            scheduler: engine.scheduler(),
            orders: Mutex::new(orders),
            available: Mutex::new(available),
            next_id: AtomicU64::new(next_id),
            settings,
            metrics: Exporter::new(&engine),
            effects,
            cancel_effects: AtomicU64::new(cancel_effects),
        });
        for order in unpaid {
            match schedule(&shared.scheduler, &shared.settings, &order) {
                Ok(()) | Err(ScheduleError::AlreadyScheduled(_)) => {}
                Err(refused) => {
                    return Err(StartError::Reschedule {
                        id: order.id,
                        reason: refused.to_string(),
                    });
                }
            }
        }
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
            .route("/stock", get(show_stock))
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

/// `order`'s deadline and reminder, as placing it schedules them (blocking:
/// at open only).
fn schedule(
    scheduler: &Scheduler<u64, u64>,
    settings: &Settings,
    order: &Order,
) -> Result<(), ScheduleError<u64>> {
    scheduler.schedule_with_reminders(
        order.id,
        Deadline::at_unix_ms(order.deadline_ms),
        &[settings.remind_before],
        order.qty,
    )
}

/// The `orders` group: reminders and expiries, awaited, never a thread. It
/// takes what is ready (up to [`ACK_BATCH`] events), records their effects
/// with one fsync, then acks them with one `ack_batch`.
async fn consume(shared: Arc<Shared>, mut events: duewheel::Consumer<u64, u64>) {
    while let Some(first) = events.recv_async().await {
        let mut batch = vec![first];
        while batch.len() < ACK_BATCH {
            match events.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        // `UPDATE orders SET state = 'cancelled' WHERE id = ? AND state =
        // 'unpaid'`, decided first and applied once durable: a redelivery
        // finds the order cancelled already and releases nothing twice.
        let mut cancels = Vec::new();
        {
            let mut orders = shared.orders.lock();
            for event in &batch {
                match event.kind {
                    EventKind::Reminder(_) => {
                        if let Some(order) = orders.get_mut(&event.id) {
                            // Here a notifier would email the buyer.
                            order.reminded = true;
                        }
                    }
                    EventKind::Expired => {
                        let unpaid = orders
                            .get(&event.id)
                            .is_some_and(|o| o.state == OrderState::Unpaid);
                        if unpaid && !cancels.contains(&Effect::Cancelled { id: event.id }) {
                            cancels.push(Effect::Cancelled { id: event.id });
                        }
                    }
                    // `EventKind` is non-exhaustive: a kind this service
                    // does not know is acknowledged and otherwise ignored.
                    _ => {}
                }
            }
        }
        if shared.record(&cancels).is_err() {
            // The disk failed: nothing of this batch is acked, so its
            // expiries come again after a restart; stop consuming.
            return;
        }
        if shared.settings.abort_before_first_ack && !cancels.is_empty() {
            std::process::abort();
        }
        shared
            .cancel_effects
            .fetch_add(cancels.len() as u64, Ordering::Relaxed);
        let mut released = 0;
        {
            let mut orders = shared.orders.lock();
            for effect in &cancels {
                if let Effect::Cancelled { id } = effect
                    && let Some(order) = orders.get_mut(id)
                {
                    order.state = OrderState::Cancelled;
                    released += order.qty;
                }
            }
        }
        *shared.available.lock() += released;
        // Only a shut-down engine refuses; the expiries are then back in
        // the engine's hands. (Reminders need no ack.)
        batch.retain(|event| !matches!(event.kind, EventKind::Reminder(_)));
        let _ = events.ack_batch_async(&batch).await;
    }
}

/// The stock ledger: `available + reserved + sold == initial`.
#[derive(Serialize, Deserialize)]
pub(crate) struct Stock {
    pub(crate) initial: u64,
    /// Not held by any order.
    pub(crate) available: u64,
    /// Held by unpaid orders.
    pub(crate) reserved: u64,
    /// Held by paid orders.
    pub(crate) sold: u64,
    pub(crate) orders: u64,
    pub(crate) unpaid: u64,
    pub(crate) paid: u64,
    pub(crate) cancelled: u64,
    /// `cancelled` effects ever recorded (equal to `cancelled` unless an
    /// order was cancelled twice).
    pub(crate) cancel_effects: u64,
}

async fn show_stock(State(shared): State<Arc<Shared>>) -> Response {
    let orders = shared.orders.lock();
    let mut stock = Stock {
        initial: shared.settings.stock,
        available: *shared.available.lock(),
        reserved: 0,
        sold: 0,
        orders: orders.len() as u64,
        unpaid: 0,
        paid: 0,
        cancelled: 0,
        cancel_effects: shared.cancel_effects.load(Ordering::Relaxed),
    };
    for order in orders.values() {
        match order.state {
            OrderState::Unpaid => {
                stock.unpaid += 1;
                stock.reserved += order.qty;
            }
            OrderState::Paid => {
                stock.paid += 1;
                stock.sold += order.qty;
            }
            OrderState::Cancelled => stock.cancelled += 1,
        }
    }
    drop(orders);
    Json(stock).into_response()
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
    let settings = &shared.settings;
    let deadline_ms =
        shared.scheduler.now_ms() + u64::try_from(settings.window.as_millis()).unwrap_or(u64::MAX);
    let order = Order {
        id,
        qty: new.qty,
        state: OrderState::Unpaid,
        deadline_ms,
        reminded: false,
    };
    // The row exists (on disk in durable mode) before its timer, so the
    // expiry always finds it.
    let placed = Effect::Placed {
        id,
        qty: new.qty,
        deadline_ms,
    };
    if let Err(e) = shared.record(&[placed]) {
        *shared.available.lock() += new.qty;
        return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    }
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
        // If this line is lost, the restart schedules the order again.
        let _ = shared.record(&[Effect::Dropped { id }]);
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
            if let Err(e) = shared.record(&[Effect::Paid { id }]) {
                // Not answered: after a restart the order expires unpaid.
                return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
            }
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
