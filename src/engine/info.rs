//! What the engine knows of one id: the answer of
//! [`Scheduler::get`](crate::Scheduler::get).
//!
//! Invariant: a [`TimerInfo`] is read under the id's shard lock, the lock
//! cancel and fire take, in one probe of the shard's index; so its
//! `status` is what a cancel at that moment would have met (`Waiting`:
//! cancel wins; `InFlight`, `DeadLettered`, `Fired`: `AlreadyFired`;
//! `None` from `get`: `NotFound`).

/// Where a timer stands (see [`TimerInfo`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimerStatus {
    /// Waiting for its next stage (a reminder or the deadline), or for a
    /// snooze to end: a cancel now wins.
    Waiting,
    /// Its `Expired` event was emitted and awaits the groups' acks
    /// (redelivered after the ack timeout).
    InFlight,
    /// Its last attempt was not acked in time: its
    /// [`EventKind::DeadLetter`](crate::EventKind::DeadLetter) event awaits
    /// the dead-letter group's ack.
    DeadLettered,
    /// It ended by firing (expired, and acked if acks are on), recently
    /// enough to be remembered (see
    /// [`Builder::fired_memory`](crate::Builder::fired_memory)); only the
    /// id is kept, so the other fields are empty.
    Fired,
}

/// One timer as [`Scheduler::get`](crate::Scheduler::get) saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimerInfo<P> {
    /// Where it stands.
    pub status: TimerStatus,
    /// Its deadline (UTC milliseconds); `None` once `Fired`.
    pub deadline_ms: Option<u64>,
    /// When the engine next acts on it (UTC milliseconds): its next
    /// reminder or deadline, a snooze's end, or in flight the redelivery;
    /// `None` once `Fired`.
    pub next_due_ms: Option<u64>,
    /// Due times (UTC milliseconds) of the reminders not sent yet.
    pub reminders_ms: Vec<u64>,
    /// Delivery attempt of its `Expired` event (1 until redelivered or
    /// snoozed).
    pub attempt: u32,
    /// Snoozes taken.
    pub snoozes: u8,
    /// The payload given at schedule; `None` once `Fired`.
    pub payload: Option<P>,
}

impl<P> TimerInfo<P> {
    pub(crate) fn waiting(payload: P) -> Self {
        Self {
            status: TimerStatus::Waiting,
            deadline_ms: None,
            next_due_ms: None,
            reminders_ms: Vec::new(),
            attempt: 1,
            snoozes: 0,
            payload: Some(payload),
        }
    }

    pub(crate) fn fired() -> Self {
        Self {
            status: TimerStatus::Fired,
            deadline_ms: None,
            next_due_ms: None,
            reminders_ms: Vec::new(),
            attempt: 0,
            snoozes: 0,
            payload: None,
        }
    }

    /// `true` while a cancel would still win (`Waiting`).
    pub fn is_waiting(&self) -> bool {
        self.status == TimerStatus::Waiting
    }
}
