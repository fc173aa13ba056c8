//! The engine's errors and outcomes, one type per operation.
//!
//! Every refusal of a schedule hands the payload back (as crossbeam-channel's
//! `SendError<T>` does): nothing the caller passed in is ever lost.

use std::fmt;

/// Why [`Scheduler::schedule`](crate::Scheduler::schedule) refused a timer.
/// Every variant carries the caller's payload.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError<P> {
    /// A timer with this id is already pending; cancel or reschedule it.
    #[error("a timer with this id is already pending")]
    AlreadyScheduled(P),
    /// The id's shard holds its share of `max_pending` timers (admission
    /// control).
    #[error("the engine is full ({max_pending} timers pending in this id's shard)")]
    Full {
        /// The cap of the shard that refused: its share of `max_pending`.
        max_pending: usize,
        /// The caller's payload, returned untouched.
        payload: P,
    },
    /// The deadline is further ahead than the wheel reaches.
    #[error("deadline {deadline_ms} ms is beyond the engine's reach (latest: {max_ms} ms)")]
    DeadlineTooFar {
        /// The refused deadline (UTC milliseconds).
        deadline_ms: u64,
        /// The latest deadline accepted at the time of the call.
        max_ms: u64,
        /// The caller's payload, returned untouched.
        payload: P,
    },
    /// More reminders than [`MAX_REMINDERS`](crate::MAX_REMINDERS).
    #[error("at most {max} reminders per timer", max = crate::MAX_REMINDERS)]
    TooManyReminders(P),
    /// The engine is shutting down or was dropped.
    #[error("the engine is shutting down")]
    ShuttingDown(P),
    /// The write-ahead log failed; the engine has stopped accepting changes
    /// (fail-stop). Nothing about this timer was made durable.
    #[error("the write-ahead log failed; the engine accepts no more changes")]
    Storage(P),
}

impl<P> ScheduleError<P> {
    /// Returns the payload the caller tried to schedule.
    pub fn into_payload(self) -> P {
        match self {
            Self::AlreadyScheduled(p)
            | Self::TooManyReminders(p)
            | Self::ShuttingDown(p)
            | Self::Storage(p)
            | Self::Full { payload: p, .. }
            | Self::DeadlineTooFar { payload: p, .. } => p,
        }
    }
}

// Manual so that `P` need not be `Debug`.
impl<P> fmt::Debug for ScheduleError<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyScheduled(_) => f.write_str("AlreadyScheduled(..)"),
            Self::Full { max_pending, .. } => f
                .debug_struct("Full")
                .field("max_pending", max_pending)
                .finish_non_exhaustive(),
            Self::DeadlineTooFar {
                deadline_ms,
                max_ms,
                ..
            } => f
                .debug_struct("DeadlineTooFar")
                .field("deadline_ms", deadline_ms)
                .field("max_ms", max_ms)
                .finish_non_exhaustive(),
            Self::TooManyReminders(_) => f.write_str("TooManyReminders(..)"),
            Self::ShuttingDown(_) => f.write_str("ShuttingDown(..)"),
            Self::Storage(_) => f.write_str("Storage(..)"),
        }
    }
}

/// What [`Scheduler::cancel`](crate::Scheduler::cancel) found. Cancel and
/// fire are decided under the same lock: exactly one of them wins.
#[must_use = "the outcome says whether the cancel beat the expiry"]
#[derive(Clone, PartialEq, Eq)]
pub enum Cancel<P> {
    /// The timer was pending and is now gone; no `Expired` event will be
    /// emitted for it. Its payload comes back.
    Cancelled(P),
    /// The expiry won: the `Expired` event was emitted (or is being handed to
    /// the consumer groups) before this call.
    AlreadyFired,
    /// No timer with this id is pending, and none fired within the engine's
    /// fired-id memory (see [`Builder::fired_memory`](crate::Builder::fired_memory)).
    NotFound,
}

impl<P> Cancel<P> {
    /// `true` if the cancel removed the timer.
    pub const fn is_cancelled(&self) -> bool {
        matches!(self, Self::Cancelled(_))
    }
}

impl<P> fmt::Debug for Cancel<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cancelled(_) => "Cancelled(..)",
            Self::AlreadyFired => "AlreadyFired",
            Self::NotFound => "NotFound",
        })
    }
}

/// Why [`Scheduler::reschedule`](crate::Scheduler::reschedule) failed. The
/// timer, if pending, keeps its old deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RescheduleError {
    /// No timer with this id is pending.
    #[error("no pending timer has this id")]
    NotFound,
    /// The timer already expired.
    #[error("the timer already fired")]
    AlreadyFired,
    /// The new deadline is further ahead than the wheel reaches.
    #[error("deadline {deadline_ms} ms is beyond the engine's reach (latest: {max_ms} ms)")]
    DeadlineTooFar {
        /// The refused deadline (UTC milliseconds).
        deadline_ms: u64,
        /// The latest deadline accepted at the time of the call.
        max_ms: u64,
    },
    /// The engine is shutting down or was dropped.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The write-ahead log failed (fail-stop); the deadline may not have moved.
    #[error("the write-ahead log failed; the engine accepts no more changes")]
    Storage,
}

/// Why [`Scheduler::cancel`](crate::Scheduler::cancel) could not decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    /// The engine is shutting down or was dropped; pending timers were
    /// handed back by `shutdown`.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The write-ahead log failed (fail-stop); the cancel is not durable and
    /// the timer may fire after a restart.
    #[error("the write-ahead log failed; the cancel is not durable")]
    Storage,
}

/// Why [`Consumer::ack`](crate::Consumer::ack) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The event is not awaiting acks: already acked, snoozed, cancelled, a
    /// reminder, or acknowledgements are off.
    #[error("the event is not in flight")]
    NotInFlight,
    /// The event names an earlier expiry of its id: the id was scheduled
    /// again since, and its new timer is another event (see
    /// [`Event::token`](crate::Event::token)). Nothing changed.
    #[error("the event is stale: its id was scheduled again since")]
    Stale,
    /// The write-ahead log failed (fail-stop); the ack is not durable and the
    /// event will come again after a restart.
    #[error("the write-ahead log failed; the ack is not durable")]
    Storage,
}

/// Why [`Consumer::snooze`](crate::Consumer::snooze) was refused. The event
/// stays in flight: ack it, or it is redelivered after the ack timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnoozeError {
    /// The event is not awaiting acks.
    #[error("the event is not in flight")]
    NotInFlight,
    /// The event names an earlier expiry of its id (see
    /// [`AckError::Stale`]). Nothing changed.
    #[error("the event is stale: its id was scheduled again since")]
    Stale,
    /// The timer was snoozed as often as the engine allows.
    #[error("the timer was already snoozed {snoozes} times, the limit")]
    LimitReached {
        /// Snoozes taken.
        snoozes: u8,
    },
    /// The write-ahead log failed (fail-stop).
    #[error("the write-ahead log failed; the snooze is not durable")]
    Storage,
}

/// The write-ahead log failed: the engine is fail-stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the write-ahead log failed; the engine accepts no more changes")]
pub struct StorageError;

/// Why [`Builder::build`](crate::Builder::build) refused a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A setting is out of range; the message names it.
    #[error("invalid configuration: {0}")]
    Invalid(&'static str),
    /// A thread could not be started.
    #[error("could not start a thread: {0}")]
    Spawn(String),
    /// The data directory could not be opened (or is locked by another
    /// engine).
    #[error("{0}")]
    Storage(String),
    /// The log could not be replayed: corruption (with file and offset) or
    /// a record that does not decode.
    #[error("recovery failed: {0}")]
    Recovery(String),
}
