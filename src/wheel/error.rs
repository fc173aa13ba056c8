//! The wheel's errors, one per operation.
//!
//! An error that refuses a value hands the value back (as crossbeam-channel's
//! `SendError<T>` does): nothing the caller passed in is ever lost.

use std::fmt;

/// Why [`Wheel::insert`](crate::wheel::Wheel::insert) refused a timer. Either
/// way the payload comes back.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsertError<T> {
    /// The deadline is further ahead than the wheel can hold. No longer
    /// returned: a deadline beyond the levels' reach waits in the overflow
    /// list. Kept so that code matching on it still compiles.
    #[error("deadline {deadline} is beyond the wheel's range (latest accepted: {max})")]
    DeadlineTooFar {
        /// The refused deadline, in ticks.
        deadline: u64,
        /// The latest deadline the wheel accepted at the time of the call.
        max: u64,
        /// The caller's payload, returned untouched.
        payload: T,
    },
    /// The wheel holds `2^31 - 1024` timers, the most it addresses.
    #[error("the wheel is full")]
    Full(T),
}

impl<T> InsertError<T> {
    /// Returns the payload the caller tried to insert.
    pub fn into_payload(self) -> T {
        match self {
            Self::DeadlineTooFar { payload, .. } | Self::Full(payload) => payload,
        }
    }
}

// Manual so that `T` need not be `Debug` (crossbeam-channel does the same).
impl<T> fmt::Debug for InsertError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeadlineTooFar { deadline, max, .. } => f
                .debug_struct("DeadlineTooFar")
                .field("deadline", deadline)
                .field("max", max)
                .finish_non_exhaustive(),
            Self::Full(_) => f.write_str("Full(..)"),
        }
    }
}

/// Why [`Wheel::reschedule`](crate::wheel::Wheel::reschedule) failed. The
/// timer, if it exists, keeps its old deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RescheduleError {
    /// The key names no pending timer: it fired, was cancelled, or never existed.
    #[error("no pending timer has this key")]
    NotFound,
    /// The new deadline is further ahead than the wheel can hold. No longer
    /// returned (see [`InsertError::DeadlineTooFar`]).
    #[error("deadline {deadline} is beyond the wheel's range (latest accepted: {max})")]
    DeadlineTooFar {
        /// The refused deadline, in ticks.
        deadline: u64,
        /// The latest deadline the wheel accepted at the time of the call.
        max: u64,
    },
}
