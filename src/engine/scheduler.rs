//! The handle that schedules, cancels and reschedules by id.

use super::consumer::Acker;
use super::entry::Reminders;
use super::index::hash_id;
use super::shard::{self, Shard};
use super::{
    Consumer, Event, EventKind, GroupStats, Inner, Lateness, ScheduleOptions, Stats, TimerInfo,
};
use crate::clock::Deadline;
use crate::error::{
    AckError, Cancel, CancelError, RescheduleError, ScheduleError, SnoozeError, StorageError,
};
use crate::sync::Mutex;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A cheap, cloneable handle to an [`Engine`](crate::Engine): schedule, cancel and
/// reschedule by the caller's id from any thread. With feature `tokio` each
/// call has an `_async` form (`schedule_async`, `cancel_async`, ...) whose
/// durable-mode wait for the commit is an `.await` instead of a blocked
/// thread.
///
/// ```
/// use duewheel::{Cancel, Engine, ManualClock, ScheduleError};
/// use std::time::Duration;
///
/// let engine = Engine::<u64, u32>::builder().clock(ManualClock::new(0)).build()?;
/// let scheduler = engine.scheduler();
/// scheduler.schedule(42, Duration::from_secs(1800), 7).unwrap();
///
/// // Scheduling the same order twice is refused, and the payload comes back.
/// let err = scheduler.schedule(42, Duration::from_secs(60), 8).unwrap_err();
/// assert!(matches!(err, ScheduleError::AlreadyScheduled(8)));
///
/// scheduler.reschedule(&42, Duration::from_secs(3600))?;
/// assert!(matches!(scheduler.cancel(&42)?, Cancel::Cancelled(7)));
/// assert!(matches!(scheduler.cancel(&42)?, Cancel::NotFound));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Scheduler<K, P> {
    pub(super) inner: Arc<Inner<K, P>>,
}

impl<K, P> Clone for Scheduler<K, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, P> std::fmt::Debug for Scheduler<K, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

/// The acks of a batch as accepted under the shard locks (see
/// [`Scheduler::accept_acks`]).
pub(super) struct AckResults<K> {
    pub(super) each: Vec<Result<(), AckError>>,
    /// The events whose timer ended (acked by every group): position, id.
    pub(super) ended: Vec<(usize, K)>,
    /// The last record to wait for, if a timer ended.
    pub(super) last_seq: Option<u64>,
    /// A timer ended but its record could not be logged.
    pub(super) failed: bool,
}

/// Why [`Scheduler::subscribe`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// With acknowledgements on, groups are fixed at build.
    #[error("no consumer group {0:?} was declared (acknowledgements fix the groups at build)")]
    UnknownGroup(String),
    /// A 65th group.
    #[error("at most 64 consumer groups")]
    TooManyGroups,
}

impl<K, P> Scheduler<K, P>
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    #[cfg(feature = "metrics")]
    pub(crate) fn from_inner(inner: Arc<Inner<K, P>>) -> Self {
        Self { inner }
    }

    /// `id`'s hash (the one hash of the operation) and its shard.
    pub(super) fn shard(&self, id: &K) -> (u64, &Mutex<Shard<K, P>>) {
        let hash = hash_id(id);
        (hash, self.inner.shard_at(hash))
    }

    /// `deadline` in UTC milliseconds; reads the clock only for a delay.
    pub(super) fn deadline_ms(&self, deadline: Deadline) -> u64 {
        match deadline {
            Deadline::AtUnixMs(ms) => ms,
            after => after.to_unix_ms(self.now_ms()),
        }
    }

    /// The engine clock's time, UTC milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Schedules `payload` for `id`, due at `deadline` (an absolute UTC time
    /// or a delay from now; see [`Deadline`]).
    pub fn schedule(
        &self,
        id: K,
        deadline: impl Into<Deadline>,
        payload: P,
    ) -> Result<(), ScheduleError<P>> {
        self.schedule_with_reminders(id, deadline, &[], payload)
    }

    /// Like [`schedule`](Self::schedule), with reminders: each offset asks
    /// for a [`EventKind::Reminder`] that long before the deadline (at most
    /// [`MAX_REMINDERS`](crate::MAX_REMINDERS)). Reminders come in time order, then `Expired`; a
    /// reminder whose time has already passed fires at once, due now (its
    /// event's `due_ms` is the time of the call): it is counted in
    /// [`Stats::reminders_already_due`], not as lateness.
    pub fn schedule_with_reminders(
        &self,
        id: K,
        deadline: impl Into<Deadline>,
        reminders_before: &[Duration],
        payload: P,
    ) -> Result<(), ScheduleError<P>> {
        let (seq, backup) = self.accept_schedule(id, deadline.into(), reminders_before, payload)?;
        Self::schedule_outcome(self.durable(seq), backup)
    }

    /// Like [`schedule`](Self::schedule), with [`ScheduleOptions`]:
    /// reminders, and this timer's own attempt bound before it is
    /// dead-lettered.
    ///
    /// ```
    /// use duewheel::{Engine, EventKind, ManualClock, ScheduleOptions};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new(0);
    /// let engine = Engine::<u64, &str>::builder()
    ///     .clock(clock.clone())
    ///     .ack_timeout(Duration::from_secs(10))
    ///     .group("orders")
    ///     .dead_letter_group("dlq")
    ///     .build()?;
    /// let (mut orders, mut dlq) = (engine.subscribe("orders")?, engine.subscribe("dlq")?);
    /// let s = engine.scheduler();
    /// // A poison order: one attempt, then the dead-letter group.
    /// s.schedule_with(42, Duration::from_secs(60), ScheduleOptions::new().max_attempts(1), "o42")
    ///     .unwrap();
    /// clock.advance(Duration::from_secs(60));
    /// s.settle(Duration::from_secs(5));
    /// let expiry = orders.try_recv()?; // never acked
    /// clock.advance(Duration::from_secs(10));
    /// s.settle(Duration::from_secs(5));
    /// let dead = dlq.try_recv()?;
    /// assert_eq!((dead.id, dead.kind, dead.token), (42, EventKind::DeadLetter, expiry.token));
    /// dlq.ack(&dead)?;
    /// assert_eq!(engine.stats().dead_lettered, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn schedule_with(
        &self,
        id: K,
        deadline: impl Into<Deadline>,
        options: ScheduleOptions<'_>,
        payload: P,
    ) -> Result<(), ScheduleError<P>> {
        let (seq, backup) = self.accept_schedule_with(
            id,
            deadline.into(),
            options.reminders_before,
            options.max_attempts,
            payload,
        )?;
        Self::schedule_outcome(self.durable(seq), backup)
    }

    /// What the engine knows of `id` now: waiting (and when, with which
    /// reminders left), in flight (which attempt), dead-lettered, or fired
    /// and still remembered; `None` if it knows nothing of it (never
    /// scheduled, cancelled, its end forgotten, or the engine shut down).
    /// One probe under the id's shard lock, the lock cancel takes: a cancel
    /// at that moment would have met the same state.
    ///
    /// ```
    /// use duewheel::{Engine, ManualClock, TimerStatus};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new(0);
    /// let engine = Engine::<u64, &str>::builder().clock(clock.clone()).build()?;
    /// let _orders = engine.subscribe("orders")?;
    /// let s = engine.scheduler();
    /// let remind = [Duration::from_secs(300)];
    /// s.schedule_with_reminders(42, Duration::from_secs(1800), &remind, "order 42").unwrap();
    ///
    /// let info = s.get(&42).expect("scheduled");
    /// assert_eq!(info.status, TimerStatus::Waiting);
    /// assert_eq!(info.deadline_ms, Some(1_800_000));
    /// assert_eq!(info.reminders_ms, [1_500_000]);
    /// assert_eq!(info.payload, Some("order 42"));
    ///
    /// clock.advance(Duration::from_secs(1800));
    /// s.settle(Duration::from_secs(5));
    /// assert_eq!(s.get(&42).map(|i| i.status), Some(TimerStatus::Fired));
    /// assert!(s.get(&7).is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self, id: &K) -> Option<TimerInfo<P>> {
        let (hash, shard) = self.shard(id);
        shard.lock().info(hash, id)
    }

    /// The part of a schedule done under the shard lock: the record's
    /// sequence number and, in durable mode, a copy of the payload to hand
    /// back if the log fails before the record is durable.
    pub(super) fn accept_schedule(
        &self,
        id: K,
        deadline: Deadline,
        reminders_before: &[Duration],
        payload: P,
    ) -> Result<(Option<u64>, Option<P>), ScheduleError<P>> {
        self.accept_schedule_with(id, deadline, reminders_before, 0, payload)
    }

    /// [`accept_schedule`](Self::accept_schedule) with the timer's own
    /// attempt bound (0: the engine's).
    pub(super) fn accept_schedule_with(
        &self,
        id: K,
        deadline: Deadline,
        reminders_before: &[Duration],
        max_attempts: u16,
        payload: P,
    ) -> Result<(Option<u64>, Option<P>), ScheduleError<P>> {
        let Some(reminders) = Reminders::new(
            reminders_before
                .iter()
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        ) else {
            return Err(ScheduleError::TooManyReminders(payload));
        };
        let deadline_ms = self.deadline_ms(deadline);
        // The clock is read only when a reminder may already be past.
        let now_ms = if reminders.remaining() {
            self.now_ms()
        } else {
            0
        };
        // In durable mode the payload is kept until the record is durable, so
        // a log failure can still hand it back.
        let backup = self.inner.journal.as_ref().map(|_| payload.clone());
        let (hash, shard) = self.shard(&id);
        let accepted = shard.lock().schedule(
            hash,
            id,
            shard::Timing {
                deadline_ms,
                reminders,
                now_ms,
                max_attempts,
            },
            || self.now_ms(),
            payload,
        )?;
        self.inner.note_due(accepted.value);
        Ok((accepted.seq, backup))
    }

    pub(super) fn schedule_outcome(
        durable: Result<(), StorageError>,
        backup: Option<P>,
    ) -> Result<(), ScheduleError<P>> {
        match (durable, backup) {
            (Ok(()), _) => Ok(()),
            // The engine is fail-stopped: the timer will not survive a
            // restart, so the caller must treat it as not scheduled.
            (Err(StorageError), Some(payload)) => Err(ScheduleError::Storage(payload)),
            (Err(StorageError), None) => unreachable!("only a journal fails"),
        }
    }

    /// Schedules many timers at once and returns each one's result, in
    /// order. In durable mode the whole batch waits for durability once
    /// (its records share group commits), so a caller with many timers to
    /// place, a bulk import or a checkout service that buffers its orders,
    /// is not held to one fsync per timer. Each result means what
    /// [`schedule`](Self::schedule)'s would: `Ok` only once that timer is
    /// durable, and every error hands its payload back.
    ///
    /// ```
    /// use duewheel::{Engine, ScheduleError};
    /// use std::time::Duration;
    ///
    /// let engine = Engine::<u64, &str>::builder().build()?;
    /// let s = engine.scheduler();
    /// let window = Duration::from_secs(30 * 60);
    /// let results = s.schedule_batch([(1, window, "a"), (2, window, "b"), (1, window, "c")]);
    /// assert!(results[0].is_ok() && results[1].is_ok());
    /// assert!(matches!(results[2], Err(ScheduleError::AlreadyScheduled("c"))));
    /// # Ok::<(), duewheel::BuildError>(())
    /// ```
    pub fn schedule_batch<D: Into<Deadline>>(
        &self,
        timers: impl IntoIterator<Item = (K, D, P)>,
    ) -> Vec<Result<(), ScheduleError<P>>> {
        let mut results = Vec::new();
        // Durable mode: the accepted payloads, kept until the batch is
        // durable, and the last record to wait for (`None` if one could not
        // be logged: the log failed).
        let mut backups = Vec::new();
        let mut last_seq = Some(0);
        // The batch's records share one write and one fsync.
        let hold = self.inner.journal.as_ref().and_then(|j| j.hold());
        for (id, deadline, payload) in timers {
            let accepted = self.accept_schedule(id, deadline.into(), &[], payload);
            results.push(accepted.map(|(seq, backup)| {
                if let Some(backup) = backup {
                    backups.push((results.len(), backup));
                    last_seq = last_seq.zip(seq).map(|(a, b)| a.max(b));
                }
            }));
        }
        drop(hold);
        if !backups.is_empty() && self.durable(last_seq).is_err() {
            // Fail-stopped before the batch was durable: none of it counts.
            for (at, payload) in backups {
                results[at] = Err(ScheduleError::Storage(payload));
            }
        }
        results
    }

    /// Waits until a journaled change is durable (no-op in memory).
    pub(super) fn durable(&self, seq: Option<u64>) -> Result<(), StorageError> {
        match (&self.inner.journal, seq) {
            (Some(journal), Some(seq)) => journal.wait(seq),
            (Some(_), None) => Err(StorageError),
            (None, _) => Ok(()),
        }
    }

    /// Cancels `id`'s timer and every remaining reminder. Exactly one of
    /// cancel and expiry wins, and the answer says which. In durable mode it
    /// returns once the cancel is logged.
    pub fn cancel(&self, id: &K) -> Result<Cancel<P>, CancelError> {
        let (hash, shard) = self.shard(id);
        let accepted = shard.lock().cancel(hash, id)?;
        if accepted.value.is_cancelled() {
            self.durable(accepted.seq)
                .map_err(|_| CancelError::Storage)?;
        }
        Ok(accepted.value)
    }

    /// Moves `id`'s deadline, earlier or later. Reminders already sent stay
    /// sent; the remaining ones follow the new deadline.
    pub fn reschedule(&self, id: &K, deadline: impl Into<Deadline>) -> Result<(), RescheduleError> {
        let seq = self.accept_reschedule(id, deadline.into())?;
        self.durable(seq).map_err(|_| RescheduleError::Storage)
    }

    /// The part of a reschedule done under the shard lock, for the blocking
    /// and the async form: the record to wait for. The clock is read once,
    /// for a relative deadline and for reminders already past alike.
    pub(super) fn accept_reschedule(
        &self,
        id: &K,
        deadline: Deadline,
    ) -> Result<Option<u64>, RescheduleError> {
        let now_ms = self.now_ms();
        let deadline_ms = deadline.to_unix_ms(now_ms);
        let (hash, shard) = self.shard(id);
        let accepted = shard.lock().reschedule(hash, id, deadline_ms, now_ms)?;
        self.inner.note_due(accepted.value);
        Ok(accepted.seq)
    }

    pub(crate) fn ack(&self, event: &Event<K, P>, group: u32) -> Result<(), AckError> {
        let mut results = self.accept_acks(std::slice::from_ref(event), group);
        let outcome = results
            .last_seq
            .map_or(Ok(()), |seq| self.durable(Some(seq)));
        self.finish_acks(&mut results, outcome);
        results.each.pop().unwrap_or(Ok(()))
    }

    /// [`ack`](Self::ack) of many events: one durable wait for all.
    pub(crate) fn ack_batch(
        &self,
        events: &[Event<K, P>],
        group: u32,
    ) -> Vec<Result<(), AckError>> {
        let mut results = self.accept_acks(events, group);
        let outcome = results
            .last_seq
            .map_or(Ok(()), |seq| self.durable(Some(seq)));
        self.finish_acks(&mut results, outcome);
        results.each
    }

    /// The part of acking done under the shard locks, one event at a time:
    /// each event's result, and the record to wait for if any timer ended.
    pub(super) fn accept_acks(&self, events: &[Event<K, P>], group: u32) -> AckResults<K> {
        let now_ms = self.now_ms();
        // The batch's records share one write and one fsync (released at
        // return, before the caller's durable wait).
        let _hold = self.inner.journal.as_ref().and_then(|j| j.hold());
        let mut results = AckResults {
            each: Vec::with_capacity(events.len()),
            ended: Vec::new(),
            last_seq: None,
            failed: false,
        };
        for (at, event) in events.iter().enumerate() {
            if let EventKind::Reminder(_) = event.kind {
                results.each.push(Ok(()));
                continue;
            }
            let (hash, shard) = self.shard(&event.id);
            let accepted = shard
                .lock()
                .ack(hash, &event.id, event.token, group, now_ms);
            results.each.push(accepted.map(|accepted| {
                if accepted.value {
                    results.ended.push((at, event.id.clone()));
                    match accepted.seq {
                        Some(seq) => {
                            results.last_seq =
                                Some(results.last_seq.map_or(seq, |s: u64| s.max(seq)));
                        }
                        // Not logged: the journal failed.
                        None if self.inner.journal.is_some() => results.failed = true,
                        None => {}
                    }
                }
            }));
        }
        results
    }

    /// After the durable wait (`outcome`): the timers that ended are
    /// reported to the store's hooks, or, if the log failed, their acks
    /// become `Storage` errors.
    pub(super) fn finish_acks(
        &self,
        results: &mut AckResults<K>,
        outcome: Result<(), StorageError>,
    ) {
        let durable = outcome.is_ok() && !results.failed;
        for (at, id) in &results.ended {
            if durable {
                self.inner.ended(id);
            } else {
                results.each[*at] = Err(AckError::Storage);
            }
        }
    }

    pub(crate) fn snooze(&self, event: &Event<K, P>, delay: Duration) -> Result<(), SnoozeError> {
        let seq = self.accept_snooze(event, delay)?;
        self.durable(seq).map_err(|_| SnoozeError::Storage)
    }

    /// The part of a snooze done under the shard lock: the record to wait for.
    pub(super) fn accept_snooze(
        &self,
        event: &Event<K, P>,
        delay: Duration,
    ) -> Result<Option<u64>, SnoozeError> {
        let until_ms = Deadline::after(delay).to_unix_ms(self.now_ms());
        let (hash, shard) = self.shard(&event.id);
        let accepted = shard
            .lock()
            .snooze(hash, &event.id, event.token, until_ms)?;
        self.inner.note_due(accepted.value);
        // Both snooze paths come through here, so the store hears of each.
        if let Some(hooks) = &self.inner.hooks {
            hooks.snoozed(event, until_ms);
        }
        Ok(accepted.seq)
    }

    /// A consumer of group `group`, creating the group if needed.
    pub fn subscribe(&self, group: &str) -> Result<Consumer<K, P>, SubscribeError> {
        let (mut consumer, position) = self.inner.registry.subscribe(group)?;
        consumer.acker = Some(Acker {
            scheduler: self.clone(),
            group: position,
        });
        consumer.hooks = self.inner.hooks.clone();
        // The dispatcher holds timers while no group exists: wake it.
        self.inner.unpark();
        Ok(consumer)
    }

    /// Blocks until every event due at the clock's present has been handed
    /// to the consumer groups, or `timeout` passes (then `false`). With a
    /// [`ManualClock`](crate::ManualClock) this makes tests deterministic:
    /// advance, settle, then look at what the groups hold. It waits for
    /// room in full groups, so drain them from another thread if needed.
    pub fn settle(&self, timeout: Duration) -> bool {
        super::dispatcher::settle(&self.inner, timeout)
    }

    /// A snapshot of the engine's statistics.
    pub fn stats(&self) -> Stats {
        let inner = &*self.inner;
        let now_ms = inner.clock.now_ms();
        let now_tick = inner.ticks.now_tick(now_ms);
        let mut counters = shard::Counters::default();
        let mut pending = 0;
        let mut fired_remembered = 0;
        let mut heap_bytes = 0;
        let mut oldest_tick: Option<u64> = None;
        for shard in inner.shards() {
            let shard = shard.lock();
            counters.add(&shard.counters);
            pending += shard.len();
            fired_remembered += shard.fired_remembered();
            heap_bytes += shard.heap_bytes();
            if let Some(next) = shard.next_tick().filter(|&t| t <= now_tick) {
                oldest_tick = Some(oldest_tick.map_or(next, |o| o.min(next)));
            }
        }
        let delivering = inner.delivering_since_ms.load(Ordering::SeqCst);
        let oldest_overdue_ms = oldest_tick
            .map(|t| inner.ticks.start_ms(t))
            .into_iter()
            .chain((delivering != u64::MAX).then_some(delivering))
            .min();
        let groups = inner
            .registry
            .snapshot()
            .map(|groups| {
                groups
                    .iter()
                    .map(|g| GroupStats {
                        name: g.name.to_string(),
                        consumers: g.shared.consumers.load(Ordering::Relaxed),
                        lag: g.shared.queued.load(Ordering::Relaxed),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Stats {
            now_ms,
            pending: pending
                - usize::try_from(counters.in_flight + counters.dead_letters).unwrap_or(pending),
            max_pending: inner.max_pending,
            scheduled_total: counters.scheduled,
            cancelled_total: counters.cancelled,
            rescheduled_total: counters.rescheduled,
            expired_total: counters.expired,
            reminders_total: counters.reminders,
            in_flight: counters.in_flight,
            acked_total: counters.acked,
            redelivered_total: counters.redelivered,
            snoozed_total: counters.snoozed,
            rejected_full_total: counters.rejected_full,
            reminders_already_due: counters.reminders_already_due,
            dead_lettered: counters.dead_lettered,
            dead_letters: counters.dead_letters,
            tick_ms: inner.ticks.tick_ms(),
            lateness: Lateness::from_histogram(&inner.lateness.lock(), inner.ticks.tick_ms()),
            groups,
            storage_failed: inner.journal.as_ref().is_some_and(|j| j.failed()),
            oldest_overdue_ms,
            fired_remembered,
            heap_bytes,
        }
    }
}
