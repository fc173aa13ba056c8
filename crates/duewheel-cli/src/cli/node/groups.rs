//! Consumer groups served over HTTP: one pump thread per declared group
//! owns the engine's [`Consumer`] and answers long-polls, acks and snoozes
//! sent to it over a channel.
//!
//! Invariants:
//! - An event leaves the engine only for a client that is waiting for it
//!   (a long-poll still connected): nothing is prefetched, so the ack
//!   timeout of an event starts when a client can see it.
//! - Every expiry handed to a client stays in the pump's in-flight table,
//!   keyed by `(id, token)`, until that client (or another of the group)
//!   acks it through this node; the engine redelivers it after the ack
//!   timeout regardless, and the redelivery replaces the entry.
//! - The pump never blocks on the consumer for more than [`SLICE`], so an
//!   ack waits at most that long behind a long-poll.

use super::NodeCell;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use duewheel::{AckError, Consumer, Event, EventKind, SnoozeError};
use duewheel_cluster::NodeScheduler;
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Longest the pump waits on the consumer before it looks at its requests.
const SLICE: Duration = Duration::from_millis(10);

/// One event as a client sees it.
#[derive(Debug, Serialize)]
pub(super) struct EventJson {
    pub(super) id: u64,
    /// `expired`, `reminder` or `dead_letter`.
    pub(super) kind: &'static str,
    /// For a reminder, which one (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reminder: Option<u8>,
    pub(super) deadline_ms: u64,
    pub(super) due_ms: u64,
    pub(super) fired_at_ms: u64,
    pub(super) attempt: u32,
    pub(super) token: u64,
    pub(super) payload: String,
    /// The shard epoch this node claimed the row under (fencing token for
    /// the client's own writes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) claim_epoch: Option<u64>,
}

/// What an ack or a snooze of one `(id, token)` came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Outcome {
    /// Acked (or snoozed): done.
    Ok,
    /// Not delivered by this node to this group, or already acked: ack
    /// where it was delivered.
    NotInFlight,
    /// A newer scheduling of the id is in flight; this token's is over.
    Stale,
    /// It was dead-lettered meanwhile.
    DeadLettered,
    /// The snooze limit is reached.
    LimitReached,
    /// The node could not record it (stopping, or the shard moved): the
    /// event will be redelivered.
    Unavailable,
}

enum Request {
    Pull {
        max: usize,
        until: Instant,
        reply: oneshot::Sender<Vec<EventJson>>,
    },
    Ack {
        items: Vec<(u64, u64)>,
        reply: oneshot::Sender<Vec<Outcome>>,
    },
    Snooze {
        items: Vec<(u64, u64, Duration)>,
        reply: oneshot::Sender<Vec<Outcome>>,
    },
}

/// Why a group refuses a request.
#[derive(Debug)]
pub(super) enum GroupError {
    /// Not declared at node start.
    Unknown,
    /// Consumed by the stdin/stdout protocol.
    Taken,
    /// The node is stopping.
    Stopping,
}

struct Pump {
    tx: Sender<Request>,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

/// The groups this node serves over HTTP.
pub(super) struct Groups {
    pumps: FxHashMap<String, Pump>,
    /// A group the line protocol consumes (`out` with `--stdio`).
    taken: Option<&'static str>,
    /// Waiting long-polls answer at once, and new ones are refused (acks
    /// still go through until the pumps stop).
    stop_waiting: Arc<AtomicBool>,
    /// The pumps exit.
    stop: Arc<AtomicBool>,
}

impl Groups {
    /// Subscribes to every group of `names` and starts its pump.
    pub(super) fn start(
        node: &NodeCell,
        names: &[String],
        taken: Option<&'static str>,
        forget_after: Duration,
    ) -> Result<Self, String> {
        let stop_waiting = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut pumps = FxHashMap::default();
        for name in names {
            let consumer = node
                .with(|n| n.subscribe(name))
                .ok_or("the node is stopping")?
                .map_err(|e| format!("group {name}: {e}"))?;
            let (tx, rx) = crossbeam_channel::unbounded();
            let (scheduler, stop_waiting, stop) =
                (node.scheduler.clone(), stop_waiting.clone(), stop.clone());
            let thread = std::thread::Builder::new()
                .name(format!("duewheel-group-{name}"))
                .spawn(move || {
                    run(
                        consumer,
                        &rx,
                        &scheduler,
                        &stop_waiting,
                        &stop,
                        forget_after,
                    )
                })
                .map_err(|e| format!("group {name}: {e}"))?;
            pumps.insert(
                name.clone(),
                Pump {
                    tx,
                    thread: parking_lot::Mutex::new(Some(thread)),
                },
            );
        }
        Ok(Self {
            pumps,
            taken,
            stop_waiting,
            stop,
        })
    }

    /// The pump of `group`; while stopping, only for acks and snoozes (a
    /// client finishing its work spares the next owner a redelivery).
    fn pump(&self, group: &str, pull: bool) -> Result<&Pump, GroupError> {
        if self.taken == Some(group) {
            return Err(GroupError::Taken);
        }
        let pump = self.pumps.get(group).ok_or(GroupError::Unknown)?;
        if pull && self.stop_waiting.load(Ordering::SeqCst) {
            return Err(GroupError::Stopping);
        }
        Ok(pump)
    }

    /// Up to `max` events of `group`, waiting up to `wait` for the first.
    pub(super) async fn pull(
        &self,
        group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<EventJson>, GroupError> {
        let pump = self.pump(group, true)?;
        let (reply, answer) = oneshot::channel();
        let until = Instant::now() + wait;
        pump.tx
            .send(Request::Pull { max, until, reply })
            .map_err(|_| GroupError::Stopping)?;
        answer.await.map_err(|_| GroupError::Stopping)
    }

    /// Acks `(id, token)` pairs; one outcome each, in order.
    pub(super) async fn ack(
        &self,
        group: &str,
        items: Vec<(u64, u64)>,
    ) -> Result<Vec<Outcome>, GroupError> {
        let pump = self.pump(group, false)?;
        let (reply, answer) = oneshot::channel();
        pump.tx
            .send(Request::Ack { items, reply })
            .map_err(|_| GroupError::Stopping)?;
        answer.await.map_err(|_| GroupError::Stopping)
    }

    /// Snoozes `(id, token, delay)`s; one outcome each, in order.
    pub(super) async fn snooze(
        &self,
        group: &str,
        items: Vec<(u64, u64, Duration)>,
    ) -> Result<Vec<Outcome>, GroupError> {
        let pump = self.pump(group, false)?;
        let (reply, answer) = oneshot::channel();
        pump.tx
            .send(Request::Snooze { items, reply })
            .map_err(|_| GroupError::Stopping)?;
        answer.await.map_err(|_| GroupError::Stopping)
    }

    /// Answers every waiting long-poll (empty) and refuses new ones.
    pub(super) fn stop_waiting(&self) {
        self.stop_waiting.store(true, Ordering::SeqCst);
    }

    /// Stops the pumps; what was handed out and not acked is redelivered.
    pub(super) fn stop(&self) {
        self.stop_waiting();
        self.stop.store(true, Ordering::SeqCst);
        for pump in self.pumps.values() {
            if let Some(thread) = pump.thread.lock().take() {
                let _ = thread.join();
            }
        }
    }
}

fn run(
    mut consumer: Consumer<u64, String>,
    rx: &Receiver<Request>,
    scheduler: &NodeScheduler<String>,
    stop_waiting: &AtomicBool,
    stop: &AtomicBool,
    forget_after: Duration,
) {
    let mut in_flight: FxHashMap<(u64, u64), Event<u64, String>> = FxHashMap::default();
    // Handed-out deliveries in the order they went out, and the newest
    // token of each (id, kind): an entry no client acks leaves when the
    // engine redelivers its timer (a newer token supersedes it) or, if it
    // never does (its shard moved to another node), after `forget_after`
    // (twice the ack timeout). Without this the table grew by every
    // delivery a client dropped.
    let mut handed: VecDeque<(Instant, u64, u64, EventKind)> = VecDeque::new();
    let mut newest: FxHashMap<(u64, EventKind), u64> = FxHashMap::default();
    let mut pulls: VecDeque<(usize, Instant, oneshot::Sender<Vec<EventJson>>)> = VecDeque::new();
    while !stop.load(Ordering::SeqCst) {
        // Requests first, so acks never wait behind a long-poll.
        let first = if pulls.is_empty() {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            None
        };
        for request in first.into_iter().chain(rx.try_iter()) {
            match request {
                Request::Pull { max, until, reply } => pulls.push_back((max, until, reply)),
                Request::Ack { items, reply } => {
                    let _ = reply.send(ack(&consumer, &mut in_flight, &items));
                }
                Request::Snooze { items, reply } => {
                    let _ = reply.send(snooze(&consumer, &mut in_flight, &items));
                }
            }
        }
        let now = Instant::now();
        while let Some(&(at, id, token, kind)) = handed.front() {
            if now.duration_since(at) < forget_after {
                break;
            }
            handed.pop_front();
            in_flight.remove(&(id, token));
            if newest.get(&(id, kind)) == Some(&token) {
                newest.remove(&(id, kind));
            }
        }
        let stopping = stop_waiting.load(Ordering::SeqCst);
        // Gone clients and spent waits leave the queue, answered empty.
        pulls.retain_mut(|(_, until, reply)| {
            if reply.is_closed() {
                return false;
            }
            if stopping || *until <= now {
                let (done, _) = oneshot::channel();
                let _ = std::mem::replace(reply, done).send(Vec::new());
                return false;
            }
            true
        });
        let Some((max, until, _)) = pulls.front() else {
            continue;
        };
        let slice = SLICE.min(until.saturating_duration_since(now));
        let Ok(first) = consumer.recv_timeout(slice) else {
            continue;
        };
        let mut batch = vec![first];
        while batch.len() < *max {
            match consumer.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let json: Vec<EventJson> = batch.iter().map(|e| to_json(e, scheduler)).collect();
        for e in batch {
            if let Some(old) = newest.insert((e.id, e.kind), e.token)
                && old != e.token
            {
                in_flight.remove(&(e.id, old));
            }
            handed.push_back((now, e.id, e.token, e.kind));
            in_flight.insert((e.id, e.token), e);
        }
        let (_, _, reply) = pulls.pop_front().expect("front exists");
        // A client that left meanwhile: its events are redelivered after
        // the ack timeout (they stay in flight here until then).
        let _ = reply.send(json);
    }
}

fn to_json(e: &Event<u64, String>, scheduler: &NodeScheduler<String>) -> EventJson {
    let (kind, reminder) = match e.kind {
        EventKind::Reminder(n) => ("reminder", Some(n)),
        EventKind::DeadLetter => ("dead_letter", None),
        _ => ("expired", None),
    };
    EventJson {
        id: e.id,
        kind,
        reminder,
        deadline_ms: e.deadline_ms,
        due_ms: e.due_ms,
        fired_at_ms: e.fired_at_ms,
        attempt: e.attempt,
        token: e.token,
        payload: e.payload.clone(),
        claim_epoch: scheduler.claim_epoch(e.id),
    }
}

fn ack(
    consumer: &Consumer<u64, String>,
    in_flight: &mut FxHashMap<(u64, u64), Event<u64, String>>,
    items: &[(u64, u64)],
) -> Vec<Outcome> {
    items
        .iter()
        .map(|key| {
            let Some(event) = in_flight.get(key) else {
                return Outcome::NotInFlight;
            };
            let outcome = match consumer.ack(event) {
                Ok(()) => Outcome::Ok,
                Err(AckError::NotInFlight) => Outcome::NotInFlight,
                Err(AckError::Stale) => Outcome::Stale,
                Err(AckError::DeadLettered) => Outcome::DeadLettered,
                Err(_) => Outcome::Unavailable,
            };
            if outcome != Outcome::Unavailable {
                in_flight.remove(key);
            }
            outcome
        })
        .collect()
}

fn snooze(
    consumer: &Consumer<u64, String>,
    in_flight: &mut FxHashMap<(u64, u64), Event<u64, String>>,
    items: &[(u64, u64, Duration)],
) -> Vec<Outcome> {
    items
        .iter()
        .map(|&(id, token, delay)| {
            let Some(event) = in_flight.get(&(id, token)) else {
                return Outcome::NotInFlight;
            };
            let outcome = match consumer.snooze(event, delay) {
                Ok(()) => Outcome::Ok,
                Err(SnoozeError::NotInFlight) => Outcome::NotInFlight,
                Err(SnoozeError::Stale) => Outcome::Stale,
                Err(SnoozeError::DeadLettered) => Outcome::DeadLettered,
                Err(SnoozeError::LimitReached { .. }) => Outcome::LimitReached,
                Err(_) => Outcome::Unavailable,
            };
            // A snoozed event comes back as a new delivery (same token).
            if outcome != Outcome::Unavailable {
                in_flight.remove(&(id, token));
            }
            outcome
        })
        .collect()
}
