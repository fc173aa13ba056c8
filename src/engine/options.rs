//! Per-timer options of [`Scheduler::schedule_with`](crate::Scheduler::schedule_with).
//!
//! Invariant: the defaults are exactly [`Scheduler::schedule`](crate::Scheduler::schedule)'s
//! (no reminder, the engine's attempt bound), so a default
//! `ScheduleOptions` changes nothing.

use std::time::Duration;

/// What a timer may carry beyond its id, deadline and payload.
///
/// ```
/// use duewheel::ScheduleOptions;
/// use std::time::Duration;
///
/// let remind = [Duration::from_secs(5 * 60)];
/// let options = ScheduleOptions::new().reminders(&remind).max_attempts(3);
/// assert_eq!(options.max_attempts, 3);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleOptions<'a> {
    /// Reminder offsets before the deadline (see
    /// [`Scheduler::schedule_with_reminders`](crate::Scheduler::schedule_with_reminders)).
    pub reminders_before: &'a [Duration],
    /// This timer's attempt bound (see
    /// [`Builder::max_attempts`](crate::Builder::max_attempts)); 0 for the
    /// engine's. At most 65,534. Needs a dead-letter group.
    pub max_attempts: u16,
}

impl<'a> ScheduleOptions<'a> {
    /// No reminder, the engine's attempt bound.
    pub const fn new() -> Self {
        Self {
            reminders_before: &[],
            max_attempts: 0,
        }
    }

    /// Reminders this long before the deadline.
    pub const fn reminders(mut self, before: &'a [Duration]) -> Self {
        self.reminders_before = before;
        self
    }

    /// After `attempts` deliveries of its `Expired` event not acked by
    /// every group within the ack timeout (snoozes do not count), the timer
    /// goes to the dead-letter group; 0 for the engine's bound.
    pub const fn max_attempts(mut self, attempts: u16) -> Self {
        self.max_attempts = attempts;
        self
    }
}
