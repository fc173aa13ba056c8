//! The engine's errors and outcomes, one type per operation.
//!
//! Every refusal of a schedule hands the payload back (as crossbeam-channel's
//! `SendError<T>` does): nothing the caller passed in is ever lost.

use std::fmt;

/// Why a schedule ([`Schedule::schedule`](crate::Schedule::schedule), on the
/// engine's [`Scheduler`](crate::Scheduler) or a cluster node's) refused a
/// timer. Every variant carries the caller's payload.
///
/// The engine answers the first six; a cluster node, whose timers live in a
/// database, answers `AlreadyScheduled`, `Invalid`, `Unavailable`, `InDoubt`
/// and `ShuttingDown`.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    /// The request is invalid for the store (a cluster node: a deadline
    /// beyond `i64::MAX` ms, a payload too large); the reason says which.
    /// Nothing was stored.
    #[error("invalid timer: {reason}")]
    Invalid {
        /// What was wrong.
        reason: &'static str,
        /// The caller's payload, returned untouched.
        payload: P,
    },
    /// The store was unreachable or refused the write (a cluster node's
    /// database): the timer is definitely **not** stored.
    #[error("the store is unavailable; the timer is not stored: {reason}")]
    Unavailable {
        /// What failed.
        reason: String,
        /// The caller's payload, returned untouched.
        payload: P,
    },
    /// The connection failed while the commit was in flight and the outcome
    /// could not be learned in time (a cluster node): the timer **may** be
    /// stored. Scheduling the same id, deadline and payload again is
    /// idempotent there: it answers `Ok` if the row is stored.
    #[error("the commit is in doubt: the timer may or may not be stored; retry the same schedule")]
    InDoubt(P),
}

impl<P> ScheduleError<P> {
    /// Returns the payload the caller tried to schedule.
    pub fn into_payload(self) -> P {
        match self {
            Self::AlreadyScheduled(p)
            | Self::TooManyReminders(p)
            | Self::ShuttingDown(p)
            | Self::Storage(p)
            | Self::InDoubt(p)
            | Self::Full { payload: p, .. }
            | Self::DeadlineTooFar { payload: p, .. }
            | Self::Invalid { payload: p, .. }
            | Self::Unavailable { payload: p, .. } => p,
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
            Self::Invalid { reason, .. } => f
                .debug_struct("Invalid")
                .field("reason", reason)
                .finish_non_exhaustive(),
            Self::Unavailable { reason, .. } => f
                .debug_struct("Unavailable")
                .field("reason", reason)
                .finish_non_exhaustive(),
            Self::InDoubt(_) => f.write_str("InDoubt(..)"),
        }
    }
}

/// What a cancel ([`Schedule::cancel`](crate::Schedule::cancel)) found.
/// Cancel and fire are decided atomically (the engine: under the shard's
/// lock; a cluster node: by the row in the database): exactly one wins.
///
/// Exhaustive on purpose: a race between a cancel and an expiry has these
/// three outcomes and no other, and a caller must handle each.
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
    /// fired-id memory (see [`Builder::fired_memory`](crate::Builder::fired_memory));
    /// on a cluster node: never scheduled, already cancelled, or fired and
    /// acknowledged.
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

/// Why a reschedule ([`Schedule::reschedule`](crate::Schedule::reschedule))
/// failed. The timer, if pending, keeps its old deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    /// This scheduler cannot move a deadline atomically. (No scheduler in
    /// this workspace answers it any more: a cluster node reschedules
    /// atomically since it gained `reschedule`; kept for compatibility.)
    #[error("this scheduler cannot reschedule; cancel and schedule again")]
    Unsupported,
    /// The store was unreachable or refused the update (a cluster node's
    /// database): the deadline did not move.
    #[error("the store is unavailable; the deadline did not move")]
    Unavailable,
    /// The connection failed mid-statement (a cluster node): the deadline
    /// may or may not have moved. Rescheduling again to the same deadline
    /// settles it.
    #[error("the reschedule is in doubt: the deadline may or may not have moved")]
    InDoubt,
}

/// Why a cancel ([`Schedule::cancel`](crate::Schedule::cancel)) could not
/// decide. The engine answers `ShuttingDown` and `Storage`; a cluster node
/// `ShuttingDown`, `Unavailable`, `InDoubt` and `Corrupt`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CancelError {
    /// The engine is shutting down or was dropped; pending timers were
    /// handed back by `shutdown`.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The write-ahead log failed (fail-stop); the cancel is not durable and
    /// the timer may fire after a restart.
    #[error("the write-ahead log failed; the cancel is not durable")]
    Storage,
    /// The store was unreachable or refused the delete (a cluster node's
    /// database): nothing changed.
    #[error("the store is unavailable; nothing was cancelled: {0}")]
    Unavailable(String),
    /// The connection failed mid-statement (a cluster node): the timer may
    /// or may not be cancelled. A second cancel answers `NotFound` if the
    /// first one won.
    #[error("the cancel is in doubt: it may or may not have taken effect")]
    InDoubt,
    /// The cancel won, but the stored payload does not decode as `P` (a
    /// cluster node).
    #[error("the cancel won, but the stored payload does not decode: {0}")]
    Corrupt(String),
}

/// Why [`Consumer::ack`](crate::Consumer::ack) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    /// The timer was dead-lettered: only the dead-letter group's ack of its
    /// `DeadLetter` event ends it now. Nothing changed.
    #[error("the timer was dead-lettered; only the dead-letter group's ack ends it")]
    DeadLettered,
    /// The write-ahead log failed (fail-stop); the ack is not durable and the
    /// event will come again after a restart.
    #[error("the write-ahead log failed; the ack is not durable")]
    Storage,
}

/// Why [`Consumer::snooze`](crate::Consumer::snooze) was refused. The event
/// stays in flight: ack it, or it is redelivered after the ack timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnoozeError {
    /// The event is not awaiting acks.
    #[error("the event is not in flight")]
    NotInFlight,
    /// The event names an earlier expiry of its id (see
    /// [`AckError::Stale`]). Nothing changed.
    #[error("the event is stale: its id was scheduled again since")]
    Stale,
    /// The timer was dead-lettered (or the event is a `DeadLetter` event):
    /// it cannot be snoozed; ack it in the dead-letter group.
    #[error("the timer was dead-lettered and cannot be snoozed")]
    DeadLettered,
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
#[non_exhaustive]
pub struct StorageError;

/// Why [`Builder::build`](crate::Builder::build) refused a configuration.
///
/// ```
/// use duewheel::wal::OpenDirError;
/// use duewheel::{BuildError, Engine};
///
/// let dir = std::env::temp_dir().join(format!("duewheel-doc-lock-{}", std::process::id()));
/// let build = || Engine::<u64, u64>::builder().group("g").durable(&dir).build();
/// let first = build()?;
/// // The directory is the first engine's: the cause is there to match.
/// assert!(matches!(build(), Err(BuildError::Storage(OpenDirError::Locked { .. }))));
/// # drop(first);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting is out of range; the message names it.
    #[error("invalid configuration: {0}")]
    Invalid(&'static str),
    /// A thread could not be started.
    #[error("could not start a thread: {0}")]
    Spawn(String),
    /// The data directory could not be opened, or is locked by another
    /// engine: [`OpenDirError::Locked`](crate::wal::OpenDirError::Locked),
    /// or [`OpenDirError::Io`](crate::wal::OpenDirError::Io) with the
    /// `io::Error` as its source.
    #[error(transparent)]
    Storage(#[from] crate::wal::OpenDirError),
    /// The log could not be replayed: corruption (with file and offset) or
    /// a record that does not decode.
    #[error("recovery failed: {0}")]
    Recovery(String),
}

/// Why [`Consumer::recv`](crate::Consumer::recv) returned no event: the
/// engine shut down and every event queued for this consumer was received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the engine shut down and every queued event was received")]
#[non_exhaustive]
pub struct RecvError;

/// Why [`Consumer::try_recv`](crate::Consumer::try_recv) returned no event.
///
/// Exhaustive, as `std::sync::mpsc::TryRecvError` is: a receive has no
/// third way to come back empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// No event is ready now.
    #[error("no event is ready")]
    Empty,
    /// The engine shut down and every queued event was received.
    #[error("the engine shut down and every queued event was received")]
    Disconnected,
}

/// Why [`Consumer::recv_timeout`](crate::Consumer::recv_timeout) returned
/// no event.
///
/// Exhaustive, as `std::sync::mpsc::RecvTimeoutError` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvTimeoutError {
    /// No event arrived within the timeout.
    #[error("no event arrived within the timeout")]
    Timeout,
    /// The engine shut down and every queued event was received.
    #[error("the engine shut down and every queued event was received")]
    Disconnected,
}

// Conversions from the channel's errors stay crate-private functions, not
// `From` impls: a public impl would put crossbeam-channel's types (whose
// semver is not ours) into this crate's API.

pub(crate) fn recv_error(_: crossbeam_channel::RecvError) -> RecvError {
    RecvError
}

pub(crate) fn try_recv_error(e: crossbeam_channel::TryRecvError) -> TryRecvError {
    match e {
        crossbeam_channel::TryRecvError::Empty => TryRecvError::Empty,
        crossbeam_channel::TryRecvError::Disconnected => TryRecvError::Disconnected,
    }
}

pub(crate) fn recv_timeout_error(e: crossbeam_channel::RecvTimeoutError) -> RecvTimeoutError {
    match e {
        crossbeam_channel::RecvTimeoutError::Timeout => RecvTimeoutError::Timeout,
        crossbeam_channel::RecvTimeoutError::Disconnected => RecvTimeoutError::Disconnected,
    }
}
