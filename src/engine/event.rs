//! What consumers receive.

/// Which stage of a timer an [`Event`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// The `n`-th reminder (1-based, in firing order) before the deadline.
    Reminder(u8),
    /// The deadline passed: the timer is gone. Emitted exactly once per timer
    /// that was not cancelled, after all of its reminders.
    Expired,
    /// The `Expired` event was delivered
    /// [`max_attempts`](crate::Builder::max_attempts) times and not acked
    /// by every group in time (snoozes do not count): the timer is
    /// dead-lettered. Sent to the
    /// [dead-letter group](crate::Builder::dead_letter_group) alone, with the
    /// last attempt's `attempt` and the same `token`, again every ack
    /// timeout until that group acks it, which ends the timer.
    DeadLetter,
}

/// One expiry or reminder, as handed to every consumer group.
///
/// A consumer acting on `Expired` should change the order only if it is
/// still unpaid (a conditional update on id and version), since a payment may
/// race the expiry: the engine guarantees that a [`Cancel::Cancelled`]
/// answer means no `Expired` event, and [`Cancel::AlreadyFired`] means one.
///
/// [`Cancel::Cancelled`]: crate::Cancel::Cancelled
/// [`Cancel::AlreadyFired`]: crate::Cancel::AlreadyFired
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event<K, P> {
    /// The caller's id (an order id).
    pub id: K,
    /// Reminder or expiry.
    pub kind: EventKind,
    /// The timer's deadline (UTC milliseconds).
    pub deadline_ms: u64,
    /// When this stage was due (UTC milliseconds): the reminder time, the
    /// deadline, or for a redelivery or a snoozed expiry, when it came due
    /// again.
    pub due_ms: u64,
    /// When the dispatcher took it out of the wheel (UTC milliseconds, engine
    /// clock). Never earlier than `due_ms`.
    pub fired_at_ms: u64,
    /// Delivery attempt, starting at 1.
    pub attempt: u32,
    /// Names this scheduling of `id`'s expiry (with acknowledgements on;
    /// 0 for reminders and without acks). Every delivery of one expiry,
    /// redeliveries and snoozed ones too, carries the same token; an expiry
    /// of the id scheduled again carries another. [`Consumer::ack`] and
    /// [`Consumer::snooze`] check it, so a retried ack of an earlier expiry
    /// is refused as [`AckError::Stale`] instead of ending the new one.
    ///
    /// [`Consumer::ack`]: crate::Consumer::ack
    /// [`Consumer::snooze`]: crate::Consumer::snooze
    /// [`AckError::Stale`]: crate::AckError::Stale
    pub token: u64,
    /// The store's claim epoch this delivery was admitted under: set by
    /// [`Hooks::admit`](crate::Hooks::admit) (a cluster node's gate writes
    /// the shard epoch its claim committed under); 0 for engines without a
    /// store. Timers waiting in the wheel hold no `Event`, so the field
    /// costs nothing per pending timer, only per event in delivery.
    pub claim: u64,
    /// The payload given at schedule (cloned for reminders and for each group).
    pub payload: P,
}
