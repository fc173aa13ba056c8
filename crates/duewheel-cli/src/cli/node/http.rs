//! The node's HTTP/JSON API (axum): schedule, cancel and reschedule
//! timers, consume declared groups by long-poll, ack and snooze, and the
//! operator's `/healthz` and `/metrics`. The reference, with every status,
//! is in `docs/SCALE_OUT.md` ("HTTP API").
//!
//! Invariants:
//! - Every answer that is not a success carries a JSON body
//!   `{"error": "..."}` and a status saying whose fault it is: 4xx the
//!   request's (nothing was done), 503 the node's or the database's for now
//!   (nothing was done; retry), 500 `in_doubt` (it may have been done;
//!   retry the same schedule: it is idempotent).
//! - Input is parsed here, never trusted: a body too large, bad JSON, an
//!   unknown field, a batch or a wait beyond the limits is a 4xx, not a
//!   panic; nothing accepted is dropped (a `201` means committed).
//! - The node's blocking calls (database commits) run on the blocking pool,
//!   never on the runtime's threads.

use super::NodeCell;
use super::groups::{EventJson, GroupError, Groups, Outcome};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use duewheel::{Cancel, CancelError, Deadline, RescheduleError, ScheduleError};
use duewheel_cluster::NodeScheduler;
use parking_lot::Mutex;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What a request may ask for.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) max_body_bytes: usize,
    pub(super) max_batch: usize,
    pub(super) max_wait_ms: u64,
}

/// Everything a handler needs.
pub(super) struct App {
    node: Arc<NodeCell>,
    groups: Arc<Groups>,
    limits: Limits,
    health: Health,
}

/// Readiness (see [`App::readiness`]): the database error count, and when
/// it last grew.
struct Health {
    quiet: Duration,
    db_errors: Mutex<(u64, Option<Instant>)>,
}

/// An answer: a status and a JSON body.
struct Reply(StatusCode, Value);

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        (self.0, axum::Json(self.1)).into_response()
    }
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Reply {
    Reply(status, json!({ "error": message.to_string() }))
}

fn bad(message: impl std::fmt::Display) -> Reply {
    error(StatusCode::BAD_REQUEST, message)
}

/// Builds the router (the state is shared with [`monitor`]).
pub(super) fn router(
    node: Arc<NodeCell>,
    groups: Arc<Groups>,
    limits: Limits,
    renew_ms: u64,
) -> (Router, Arc<App>) {
    let app = Arc::new(App {
        node,
        groups,
        limits,
        health: Health {
            // A database error within two renewals: the leases are at risk.
            quiet: Duration::from_millis(renew_ms.saturating_mul(2).max(1_000)),
            db_errors: Mutex::new((0, None)),
        },
    });
    let router = Router::new()
        .route("/v1/timers", post(schedule_one))
        .route("/v1/timers:batch", post(schedule_batch))
        .route("/v1/timers/{id}", delete(cancel))
        .route("/v1/timers/{id}/deadline", put(reschedule))
        .route("/v1/groups/{group}/events", get(events))
        .route("/v1/groups/{group}/acks", post(acks))
        .route("/v1/groups/{group}/snooze", post(snooze))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(app.clone());
    (router, app)
}

/// Samples the node's database error count so `/healthz` can tell a
/// recent error from an old one. Runs until the runtime stops.
pub(super) async fn monitor(app: Arc<App>) {
    loop {
        let _ = app.readiness();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl App {
    /// Ready: not stopping, its node id still its own, and no database
    /// error for two renew intervals. Otherwise why not.
    fn readiness(&self) -> Result<usize, &'static str> {
        if self.node.stopping.load(Ordering::SeqCst) {
            return Err("stopping");
        }
        let Some(stats) = self.node.stats() else {
            return Err("stopped");
        };
        let recent_error = {
            let mut seen = self.health.db_errors.lock();
            if stats.db_errors != seen.0 {
                *seen = (stats.db_errors, Some(Instant::now()));
            }
            seen.1.is_some_and(|at| at.elapsed() < self.health.quiet)
        };
        if recent_error {
            return Err("database errors");
        }
        // Owning no shard is no reason: any node schedules, cancels and
        // consumes for any id, and a node may have none to hold (just
        // started, or more nodes than shards). Shards lost to the database
        // show as its errors; an id taken over, here.
        if stats.superseded {
            return Err("node id taken by another process");
        }
        Ok(stats.owned)
    }

    /// Runs a blocking node call off the runtime's threads.
    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Reply> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("internal: {e}")))
    }
}

/// The body as JSON of type `T`, or the 4xx saying what is wrong with it.
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, Reply> {
    let body = body.map_err(|e| {
        let status = e.status();
        error(status, format!("request body: {}", e.body_text()))
    })?;
    serde_json::from_slice(&body).map_err(|e| bad(format!("request body: {e}")))
}

fn parse_id(id: &str) -> Result<u64, Reply> {
    id.parse().map_err(|_| {
        bad(format!(
            "timer id {id:?}: expected an unsigned 64-bit integer"
        ))
    })
}

/// A timer to schedule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTimer {
    id: u64,
    /// Due at this UTC time, ms; or
    deadline_ms: Option<u64>,
    /// due this long from now, ms.
    delay_ms: Option<u64>,
    /// Given back in every event (a string: binary payloads go base64'd).
    #[serde(default)]
    payload: String,
    /// Reminder offsets before the deadline, ms.
    #[serde(default)]
    reminders_ms: Vec<u64>,
}

/// The absolute deadline of `deadline_ms` xor `delay_ms`.
fn deadline_of(
    deadline_ms: Option<u64>,
    delay_ms: Option<u64>,
    now_ms: u64,
) -> Result<u64, String> {
    match (deadline_ms, delay_ms) {
        (Some(at), None) => Ok(at),
        (None, Some(delay)) => Ok(now_ms.saturating_add(delay)),
        _ => Err("give exactly one of deadline_ms and delay_ms".to_owned()),
    }
}

/// A timer checked and ready for the node.
struct Accepted {
    id: u64,
    deadline_ms: u64,
    reminders: Vec<Duration>,
    payload: String,
}

impl NewTimer {
    /// The timer with its absolute deadline, or why not (status, message).
    fn accept(self, now_ms: u64) -> Result<Accepted, (StatusCode, String)> {
        let deadline_ms = deadline_of(self.deadline_ms, self.delay_ms, now_ms)
            .map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        Ok(Accepted {
            id: self.id,
            deadline_ms,
            reminders: self
                .reminders_ms
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            payload: self.payload,
        })
    }
}

/// Schedules `timers` on the node (blocking: a commit); one result each.
fn schedule_on(
    scheduler: &NodeScheduler<String>,
    timers: &[Accepted],
) -> Vec<Result<(), ScheduleError<String>>> {
    scheduler.schedule_batch_with_reminders(timers.iter().map(|t| {
        (
            t.id,
            Deadline::at_unix_ms(t.deadline_ms),
            &t.reminders[..],
            t.payload.clone(),
        )
    }))
}

/// A schedule's answer: status, and the outcome word of a batch item.
fn schedule_reply(id: u64, deadline_ms: u64, result: Result<(), ScheduleError<String>>) -> Reply {
    let (status, outcome) = match &result {
        Ok(()) => (StatusCode::CREATED, "scheduled"),
        Err(ScheduleError::AlreadyScheduled(_)) => (StatusCode::CONFLICT, "already_scheduled"),
        Err(ScheduleError::Invalid { .. } | ScheduleError::DeadlineTooFar { .. }) => {
            (StatusCode::BAD_REQUEST, "invalid")
        }
        Err(ScheduleError::TooManyReminders(_)) => (StatusCode::BAD_REQUEST, "invalid"),
        Err(ScheduleError::InDoubt(_)) => (StatusCode::INTERNAL_SERVER_ERROR, "in_doubt"),
        Err(ScheduleError::ShuttingDown(_)) => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let mut body = json!({ "id": id, "deadline_ms": deadline_ms, "outcome": outcome });
    if let Err(e) = result {
        let message = match e {
            ScheduleError::InDoubt(_) => "in doubt: the commit's outcome is unknown; send the \
                 same schedule again (same id, deadline and payload: idempotent) to learn it"
                .to_owned(),
            ScheduleError::AlreadyScheduled(_) => {
                "already scheduled with another deadline or payload".to_owned()
            }
            e => e.to_string(),
        };
        body["error"] = message.into();
    }
    Reply(status, body)
}

async fn schedule_one(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Reply, Reply> {
    let timer: NewTimer = parse(body)?;
    let scheduler = app.node.scheduler.clone();
    let timer = timer
        .accept(scheduler.now_ms())
        .map_err(|(status, e)| error(status, e))?;
    let (id, deadline_ms) = (timer.id, timer.deadline_ms);
    let result = App::blocking(move || schedule_on(&scheduler, &[timer]).pop())
        .await?
        .unwrap_or_else(|| unreachable!("one result per timer"));
    Ok(schedule_reply(id, deadline_ms, result))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    timers: Vec<NewTimer>,
}

async fn schedule_batch(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Reply, Reply> {
    let batch: Batch = parse(body)?;
    if batch.timers.len() > app.limits.max_batch {
        return Err(bad(format!(
            "batch of {} timers: at most {} (--max-batch)",
            batch.timers.len(),
            app.limits.max_batch
        )));
    }
    let scheduler = app.node.scheduler.clone();
    let now_ms = scheduler.now_ms();
    // Refused items answer without a trip to the database; the rest share
    // commits.
    let mut results: Vec<Option<Value>> = Vec::with_capacity(batch.timers.len());
    let mut accepted = Vec::new();
    for timer in batch.timers {
        let id = timer.id;
        match timer.accept(now_ms) {
            Ok(timer) => {
                accepted.push((results.len(), timer));
                results.push(None);
            }
            Err((status, e)) => results.push(Some(json!({
                "id": id, "status": status.as_u16(), "outcome": "invalid", "error": e
            }))),
        }
    }
    let answers = App::blocking(move || {
        let (at, timers): (Vec<usize>, Vec<Accepted>) = accepted.into_iter().unzip();
        let outcomes = schedule_on(&scheduler, &timers);
        at.into_iter()
            .zip(timers)
            .zip(outcomes)
            .map(|((at, t), r)| (at, schedule_reply(t.id, t.deadline_ms, r)))
            .collect::<Vec<_>>()
    })
    .await?;
    for (at, Reply(status, mut body)) in answers {
        body["status"] = status.as_u16().into();
        results[at] = Some(body);
    }
    Ok(Reply(StatusCode::OK, json!({ "results": results })))
}

async fn cancel(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Reply, Reply> {
    let id = parse_id(&id)?;
    let scheduler = app.node.scheduler.clone();
    let result = App::blocking(move || scheduler.cancel(&id)).await?;
    Ok(match result {
        Ok(Cancel::Cancelled(payload)) => Reply(
            StatusCode::OK,
            json!({ "id": id, "outcome": "cancelled", "payload": payload }),
        ),
        Ok(Cancel::AlreadyFired) => Reply(
            StatusCode::OK,
            json!({ "id": id, "outcome": "already_fired" }),
        ),
        Ok(_) => Reply(StatusCode::OK, json!({ "id": id, "outcome": "not_found" })),
        Err(e) => {
            let (status, outcome) = match &e {
                CancelError::InDoubt => (StatusCode::INTERNAL_SERVER_ERROR, "in_doubt"),
                CancelError::Corrupt(_) => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt"),
                CancelError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            let message = match e {
                CancelError::InDoubt => "in doubt: the cancel's outcome is unknown; cancel \
                     again to learn it (not_found then means this one won)"
                    .to_owned(),
                e => e.to_string(),
            };
            Reply(
                status,
                json!({ "id": id, "outcome": outcome, "error": message }),
            )
        }
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDeadline {
    deadline_ms: Option<u64>,
    delay_ms: Option<u64>,
}

async fn reschedule(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Reply, Reply> {
    let id = parse_id(&id)?;
    let new: NewDeadline = parse(body)?;
    let scheduler = app.node.scheduler.clone();
    let deadline_ms =
        deadline_of(new.deadline_ms, new.delay_ms, scheduler.now_ms()).map_err(bad)?;
    let result =
        App::blocking(move || scheduler.reschedule(&id, Deadline::at_unix_ms(deadline_ms))).await?;
    let (status, outcome) = match &result {
        Ok(()) => (StatusCode::OK, "rescheduled"),
        Err(RescheduleError::NotFound) => (StatusCode::NOT_FOUND, "not_found"),
        Err(RescheduleError::AlreadyFired) => (StatusCode::CONFLICT, "already_fired"),
        Err(RescheduleError::DeadlineTooFar { .. }) => (StatusCode::BAD_REQUEST, "invalid"),
        Err(RescheduleError::Unsupported) => (StatusCode::NOT_IMPLEMENTED, "unsupported"),
        Err(RescheduleError::ShuttingDown) => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        // The move may have committed: the caller reads the timer again
        // or retries (moving to the same deadline twice is harmless).
        Err(RescheduleError::InDoubt) => (StatusCode::INTERNAL_SERVER_ERROR, "in_doubt"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let mut body = json!({ "id": id, "deadline_ms": deadline_ms, "outcome": outcome });
    if let Err(e) = result {
        body["error"] = e.to_string().into();
    }
    Ok(Reply(status, body))
}

fn group_error(group: &str, e: GroupError) -> Reply {
    match e {
        GroupError::Unknown => error(
            StatusCode::NOT_FOUND,
            format!("no consumer group {group:?} on this node (declare it with --group)"),
        ),
        GroupError::Taken => error(
            StatusCode::CONFLICT,
            format!("group {group:?} is consumed by this node's stdin/stdout protocol"),
        ),
        GroupError::Stopping => error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Poll {
    max: Option<usize>,
    wait_ms: Option<u64>,
}

async fn events(
    State(app): State<Arc<App>>,
    Path(group): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Reply, Reply> {
    let query = query.unwrap_or_default();
    let poll: Poll = serde_urlencoded_poll(&query)?;
    let max = poll.max.unwrap_or(app.limits.max_batch.min(100));
    if max == 0 || max > app.limits.max_batch {
        return Err(bad(format!(
            "max={max}: 1 to {} (--max-batch)",
            app.limits.max_batch
        )));
    }
    let wait_ms = poll.wait_ms.unwrap_or(0);
    if wait_ms > app.limits.max_wait_ms {
        return Err(bad(format!(
            "wait_ms={wait_ms}: at most {} (--max-wait-ms)",
            app.limits.max_wait_ms
        )));
    }
    let events: Vec<EventJson> = app
        .groups
        .pull(&group, max, Duration::from_millis(wait_ms))
        .await
        .map_err(|e| group_error(&group, e))?;
    let events =
        serde_json::to_value(events).map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Reply(StatusCode::OK, events))
}

/// `max=..&wait_ms=..`, strictly (unknown keys and bad numbers refused).
fn serde_urlencoded_poll(query: &str) -> Result<Poll, Reply> {
    let mut poll = Poll {
        max: None,
        wait_ms: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value.parse::<u64>().map_err(|_| {
                bad(format!(
                    "query {key}={value:?}: expected an unsigned integer"
                ))
            })
        };
        match key {
            "max" => poll.max = Some(usize::try_from(number()?).unwrap_or(usize::MAX)),
            "wait_ms" => poll.wait_ms = Some(number()?),
            _ => {
                return Err(bad(format!(
                    "query: unknown parameter {key:?} (max, wait_ms)"
                )));
            }
        }
    }
    Ok(poll)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckItem {
    id: u64,
    token: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnoozeItem {
    id: u64,
    token: u64,
    delay_ms: u64,
}

fn outcomes_reply(keys: impl Iterator<Item = (u64, u64)>, outcomes: Vec<Outcome>) -> Reply {
    let results: Vec<Value> = keys
        .zip(outcomes)
        .map(|((id, token), outcome)| json!({ "id": id, "token": token, "outcome": outcome }))
        .collect();
    Reply(StatusCode::OK, json!({ "results": results }))
}

async fn acks(
    State(app): State<Arc<App>>,
    Path(group): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Reply, Reply> {
    let items: Vec<AckItem> = parse(body)?;
    if items.len() > app.limits.max_batch {
        return Err(bad(format!(
            "{} acks: at most {} (--max-batch)",
            items.len(),
            app.limits.max_batch
        )));
    }
    let keys: Vec<(u64, u64)> = items.iter().map(|a| (a.id, a.token)).collect();
    let outcomes = app
        .groups
        .ack(&group, keys.clone())
        .await
        .map_err(|e| group_error(&group, e))?;
    Ok(outcomes_reply(keys.into_iter(), outcomes))
}

async fn snooze(
    State(app): State<Arc<App>>,
    Path(group): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Reply, Reply> {
    let items: Vec<SnoozeItem> = parse(body)?;
    if items.len() > app.limits.max_batch {
        return Err(bad(format!(
            "{} snoozes: at most {} (--max-batch)",
            items.len(),
            app.limits.max_batch
        )));
    }
    let keys: Vec<(u64, u64)> = items.iter().map(|a| (a.id, a.token)).collect();
    let items = items
        .iter()
        .map(|s| (s.id, s.token, Duration::from_millis(s.delay_ms)))
        .collect();
    let outcomes = app
        .groups
        .snooze(&group, items)
        .await
        .map_err(|e| group_error(&group, e))?;
    Ok(outcomes_reply(keys.into_iter(), outcomes))
}

async fn healthz(State(app): State<Arc<App>>) -> Reply {
    let node = app.node.node_id.clone();
    match app.readiness() {
        Ok(owned) => Reply(
            StatusCode::OK,
            json!({ "ready": true, "node": node, "owned_shards": owned }),
        ),
        Err(reason) => Reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "ready": false, "node": node, "reason": reason }),
        ),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let ready = app.readiness().is_ok();
    let text = app
        .node
        .with(|node| super::metrics::render(Some(node), &app.node.node_id, ready))
        .unwrap_or_else(|| super::metrics::render(None, &app.node.node_id, ready));
    ([(CONTENT_TYPE, duewheel::prometheus::CONTENT_TYPE)], text).into_response()
}
