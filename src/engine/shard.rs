//! One shard: a wheel, the id index that finds a timer by the caller's id,
//! and the memory of recently fired ids.
//!
//! Invariants (all under the shard's mutex, so they hold between calls):
//! - every timer in the wheel is named by `index[its id]`;
//! - `index[id]` is a key that names `id`'s timer in the wheel (*live*), or
//!   a stale key, left behind when that timer ended by firing (expired, and
//!   acked if acks are on) and not forgotten yet: a late cancel hears
//!   `AlreadyFired`. A cancel removes the row. So firing writes nothing to
//!   the index: the wheel's generation check turns the key stale by itself,
//!   which saves the dispatcher a random hash-map write per fired timer.
//!   A key counts as live only if the wheel's timer under it has the same
//!   id, so even a generation that wrapped (2^32 reuses of one slot) cannot
//!   make a remembered key reach another id's timer;
//! - `fired_order` lists the remembered ends, oldest first, with the key each
//!   left behind; pruning removes a row only if it still holds that key (an
//!   id scheduled again since has a newer one);
//! - counters change on the transition itself, in one place each, so they
//!   cannot drift (Netty #14959).
//!
//! Cancel and fire both run here under the lock: whichever takes the lock
//! first wins, and the other sees the result.

use super::event::{Event, EventKind};
use crate::clock::Ticks;
use crate::error::{
    AckError, Cancel, CancelError, RescheduleError, ScheduleError, SnoozeError, StorageError,
};
use crate::wheel::{Advanced, InsertError, Timer, Wheel};
use crate::{MAX_REMINDERS, TimerKey};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::sync::Arc;

/// A timer as the wheel holds it.
pub(crate) struct Pending<K, P> {
    pub(crate) id: K,
    pub(crate) payload: P,
    pub(crate) deadline_ms: u64,
    pub(crate) reminders: Reminders,
    /// When its wheel entry is due (UTC ms): the next stage, or, once in
    /// flight, the redelivery time, or a snooze's end.
    pub(crate) due_ms: u64,
    /// Delivery attempt of the `Expired` event (1 until redelivered or snoozed).
    pub(crate) attempt: u32,
    /// Snoozes taken so far.
    pub(crate) snoozes: u8,
    /// `Some(acked)` once `Expired` was emitted and awaits acks: bit `g` is
    /// set once group `g` acked. Only with acknowledgements on.
    pub(crate) flight: Option<u64>,
}

/// Reminder offsets before the deadline, earliest reminder first, and how
/// many have fired.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reminders {
    before_ms: [u64; MAX_REMINDERS],
    len: u8,
    fired: u8,
}

impl Reminders {
    pub(crate) const NONE: Self = Self {
        before_ms: [0; MAX_REMINDERS],
        len: 0,
        fired: 0,
    };

    /// Offsets in any order; `None` if there are too many.
    pub(crate) fn new(before_ms: impl IntoIterator<Item = u64>) -> Option<Self> {
        let mut reminders = Self::NONE;
        for offset in before_ms {
            let slot = reminders.before_ms.get_mut(reminders.len as usize)?;
            *slot = offset;
            reminders.len += 1;
        }
        // Largest offset first: the earliest reminder fires first.
        reminders.before_ms[..reminders.len as usize].sort_unstable_by(|a, b| b.cmp(a));
        Some(reminders)
    }

    /// Offsets (ms before the deadline) and how many fired, for the journal.
    pub(crate) fn parts(&self) -> (&[u64], u8) {
        (&self.before_ms[..self.len as usize], self.fired)
    }

    /// Rebuilds reminders from [`parts`](Self::parts); `None` if malformed.
    pub(crate) fn from_parts(before_ms: &[u64], fired: u8) -> Option<Self> {
        let mut reminders = Self::new(before_ms.iter().copied())?;
        (fired <= reminders.len).then(|| {
            reminders.fired = fired;
            reminders
        })
    }

    /// When the next stage is due: the next reminder, or the deadline.
    fn next_due_ms(&self, deadline_ms: u64) -> u64 {
        if self.fired < self.len {
            deadline_ms.saturating_sub(self.before_ms[self.fired as usize])
        } else {
            deadline_ms
        }
    }

    /// Due times (UTC ms) of the reminders not yet fired.
    fn remaining_ms(&self, deadline_ms: u64) -> impl Iterator<Item = u64> + '_ {
        self.before_ms[self.fired as usize..self.len as usize]
            .iter()
            .map(move |before| deadline_ms.saturating_sub(*before))
    }
}

/// A timer handed back by [`Engine::shutdown`](crate::Engine::shutdown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingTimer<K, P> {
    /// The caller's id.
    pub id: K,
    /// Its deadline (UTC milliseconds).
    pub deadline_ms: u64,
    /// Due times (UTC milliseconds) of the reminders that had not fired yet.
    pub reminders_ms: Vec<u64>,
    /// `true` if its `Expired` event was emitted and still awaited acks.
    pub in_flight: bool,
    /// The payload given at schedule.
    pub payload: P,
}

/// What the index says of an id.
enum Lookup {
    /// Not known (never scheduled, cancelled, or its end forgotten).
    Absent,
    /// Its timer ended by firing, recently enough to be remembered.
    Fired,
    /// In the wheel under this key: waiting, or in flight.
    Live(TimerKey),
}

/// Counters of transitions, kept under the shard lock.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) scheduled: u64,
    pub(crate) cancelled: u64,
    pub(crate) rescheduled: u64,
    pub(crate) expired: u64,
    pub(crate) reminders: u64,
    pub(crate) acked: u64,
    pub(crate) redelivered: u64,
    pub(crate) snoozed: u64,
    pub(crate) rejected_full: u64,
    /// Gauge: timers whose `Expired` awaits acks.
    pub(crate) in_flight: u64,
}

impl Counters {
    pub(crate) fn add(&mut self, o: &Self) {
        self.scheduled += o.scheduled;
        self.cancelled += o.cancelled;
        self.rescheduled += o.rescheduled;
        self.expired += o.expired;
        self.reminders += o.reminders;
        self.acked += o.acked;
        self.redelivered += o.redelivered;
        self.snoozed += o.snoozed;
        self.rejected_full += o.rejected_full;
        self.in_flight += o.in_flight;
    }
}

/// How long fired ids are remembered, so a late cancel hears `AlreadyFired`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FiredMemory {
    pub(crate) max_ids: usize,
    pub(crate) max_age_ms: u64,
}

/// Acknowledgement settings, fixed at build.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Acks {
    pub(crate) timeout_ms: u64,
    pub(crate) max_snoozes: u8,
    /// One bit per consumer group.
    pub(crate) all_groups: u64,
}

/// Records every accepted change so it survives a restart. `upsert` writes
/// a timer's whole state, `remove` its end; replay is last-writer-wins per
/// id. Both only buffer (they never wait on I/O, so they may be called under
/// the shard lock); `wait` blocks until a record is durable.
pub(crate) trait Journal<K, P>: Send + Sync {
    fn upsert(&self, timer: &Pending<K, P>) -> Result<u64, StorageError>;
    fn remove(&self, id: &K) -> Result<u64, StorageError>;
    fn wait(&self, seq: u64) -> Result<(), StorageError>;
    /// [`wait`](Self::wait) as a future: the commit wait of the `_async`
    /// scheduling calls.
    #[cfg(feature = "tokio")]
    fn wait_async(
        &self,
        seq: u64,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send + '_>>;
    /// `true` once the log failed: the engine is fail-stopped.
    fn failed(&self) -> bool;
}

/// What a fired stage must reach: the groups whose bits are set.
pub(crate) type Fired<K, P> = (u64, u64, Event<K, P>);

/// A change accepted under the lock; durable once `seq` is (if journaled).
pub(crate) struct Accepted<T> {
    pub(crate) value: T,
    pub(crate) seq: Option<u64>,
}

pub(crate) struct Shard<K, P> {
    wheel: Wheel<Pending<K, P>>,
    index: FxHashMap<K, TimerKey>,
    /// Remembered ends, oldest first: id, the key it left, when (UTC ms).
    fired_order: VecDeque<(K, TimerKey, u64)>,
    memory: FiredMemory,
    acks: Option<Acks>,
    journal: Option<Arc<dyn Journal<K, P>>>,
    ticks: Ticks,
    /// Set at shutdown: nothing more is accepted.
    closed: bool,
    /// This shard's share of `max_pending`.
    cap: usize,
    pub(crate) counters: Counters,
    scratch: Vec<Timer<Pending<K, P>>>,
}

impl<K: Hash + Eq + Clone, P: Clone> Shard<K, P> {
    pub(crate) fn new(
        ticks: Ticks,
        now_ms: u64,
        memory: FiredMemory,
        acks: Option<Acks>,
        journal: Option<Arc<dyn Journal<K, P>>>,
        cap: usize,
    ) -> Self {
        Self {
            wheel: Wheel::with_capacity_at(0, ticks.now_tick(now_ms)),
            index: FxHashMap::default(),
            fired_order: VecDeque::new(),
            memory,
            acks,
            journal,
            ticks,
            closed: false,
            cap,
            counters: Counters::default(),
            scratch: Vec::new(),
        }
    }

    /// Timers in the wheel: waiting or in flight.
    pub(crate) fn len(&self) -> usize {
        self.wheel.len()
    }

    /// What the index says of `id` (see the module invariants).
    fn lookup(&self, id: &K) -> Lookup {
        match self.index.get(id) {
            None => Lookup::Absent,
            Some(&key) if self.wheel.get(key).is_some_and(|t| t.id == *id) => Lookup::Live(key),
            Some(_) => Lookup::Fired,
        }
    }

    /// The latest deadline (UTC ms) this shard accepts when the clock reads
    /// `now_ms`: the wheel's reach counted from the clock, not from where the
    /// wheel last stopped (an idle shard's wheel does not move; a later
    /// deadline waits in the wheel's overflow list).
    fn max_deadline_ms(&self, now_ms: u64) -> u64 {
        let now_tick = self.ticks.now_tick(now_ms).max(self.wheel.now());
        self.ticks
            .start_ms(now_tick.saturating_add(crate::wheel::MAX_DELAY_TICKS))
    }

    /// The tick at which this shard next has work, if any.
    pub(crate) fn next_tick(&self) -> Option<u64> {
        self.wheel.next_expiration()
    }

    /// Refuses changes once closed or once the journal failed.
    fn writable(&self) -> Result<(), Refusal> {
        if self.closed {
            return Err(Refusal::Closed);
        }
        if self.journal.as_ref().is_some_and(|j| j.failed()) {
            return Err(Refusal::Storage);
        }
        Ok(())
    }

    fn log_upsert(&self, key: TimerKey) -> Option<u64> {
        let journal = self.journal.as_ref()?;
        let timer = self.wheel.get(key).expect("logging a live timer");
        // An append fails only once the log failed; `writable` refuses every
        // later change and the dispatcher stops, so the error is not lost.
        journal.upsert(timer).ok()
    }

    fn log_remove(&self, id: &K) -> Option<u64> {
        self.journal.as_ref()?.remove(id).ok()
    }

    /// Adds a timer. Returns the tick the dispatcher must wake for.
    pub(crate) fn schedule(
        &mut self,
        id: K,
        deadline_ms: u64,
        now_ms: u64,
        reminders: Reminders,
        payload: P,
    ) -> Result<Accepted<u64>, ScheduleError<P>> {
        match self.writable() {
            Ok(()) => {}
            Err(Refusal::Closed) => return Err(ScheduleError::ShuttingDown(payload)),
            Err(Refusal::Storage) => return Err(ScheduleError::Storage(payload)),
        }
        let max_ms = self.max_deadline_ms(now_ms);
        if deadline_ms > max_ms {
            return Err(ScheduleError::DeadlineTooFar {
                deadline_ms,
                max_ms,
                payload,
            });
        }
        let due_ms = reminders.next_due_ms(deadline_ms);
        let due_tick = self.ticks.deadline_tick(due_ms);
        let slot = match self.index.entry(id) {
            Entry::Occupied(e) if self.wheel.get(*e.get()).is_some_and(|t| t.id == *e.key()) => {
                return Err(ScheduleError::AlreadyScheduled(payload));
            }
            entry => entry,
        };
        if self.wheel.len() >= self.cap {
            self.counters.rejected_full += 1;
            return Err(ScheduleError::Full {
                max_pending: self.cap,
                payload,
            });
        }
        let pending = Pending {
            id: slot.key().clone(),
            payload,
            deadline_ms,
            reminders,
            due_ms,
            attempt: 1,
            snoozes: 0,
            flight: None,
        };
        let key = match self.wheel.insert(due_tick, pending) {
            Ok(key) => key,
            // Unreachable in practice: the range was checked above (and
            // reminders are never after the deadline), and the engine caps
            // `max_pending` below the wheel's `u32` index space.
            Err(InsertError::Full(p)) => {
                return Err(ScheduleError::Full {
                    max_pending: self.wheel.len(),
                    payload: p.payload,
                });
            }
            Err(InsertError::DeadlineTooFar { payload: p, .. }) => {
                return Err(ScheduleError::DeadlineTooFar {
                    deadline_ms,
                    max_ms,
                    payload: p.payload,
                });
            }
        };
        match slot {
            Entry::Occupied(mut e) => *e.get_mut() = key,
            Entry::Vacant(e) => {
                e.insert(key);
            }
        }
        self.counters.scheduled += 1;
        Ok(Accepted {
            value: due_tick,
            seq: self.log_upsert(key),
        })
    }

    pub(crate) fn cancel(&mut self, id: &K) -> Result<Accepted<Cancel<P>>, CancelError> {
        let key = match self.lookup(id) {
            Lookup::Absent => {
                return Ok(Accepted {
                    value: Cancel::NotFound,
                    seq: None,
                });
            }
            Lookup::Fired => {
                return Ok(Accepted {
                    value: Cancel::AlreadyFired,
                    seq: None,
                });
            }
            Lookup::Live(key) => key,
        };
        let timer = self.wheel.get(key).expect("looked up live");
        if timer.flight.is_some() {
            return Ok(Accepted {
                value: Cancel::AlreadyFired,
                seq: None,
            });
        }
        match self.writable() {
            Ok(()) => {}
            Err(Refusal::Closed) => return Err(CancelError::ShuttingDown),
            Err(Refusal::Storage) => return Err(CancelError::Storage),
        }
        self.index.remove(id);
        let pending = self.wheel.cancel(key).expect("looked up live");
        self.counters.cancelled += 1;
        Ok(Accepted {
            value: Cancel::Cancelled(pending.payload),
            seq: self.log_remove(id),
        })
    }

    /// Moves a waiting timer's deadline. Reminders already sent stay sent;
    /// the rest follow the new deadline. Returns the tick to wake for.
    pub(crate) fn reschedule(
        &mut self,
        id: &K,
        deadline_ms: u64,
        now_ms: u64,
    ) -> Result<Accepted<u64>, RescheduleError> {
        match self.writable() {
            Ok(()) => {}
            Err(Refusal::Closed) => return Err(RescheduleError::ShuttingDown),
            Err(Refusal::Storage) => return Err(RescheduleError::Storage),
        }
        let key = match self.lookup(id) {
            Lookup::Absent => return Err(RescheduleError::NotFound),
            Lookup::Fired => return Err(RescheduleError::AlreadyFired),
            Lookup::Live(key) => key,
        };
        let max_ms = self.max_deadline_ms(now_ms);
        if deadline_ms > max_ms {
            return Err(RescheduleError::DeadlineTooFar {
                deadline_ms,
                max_ms,
            });
        }
        let timer = self.wheel.get_mut(key).expect("looked up live");
        if timer.flight.is_some() {
            return Err(RescheduleError::AlreadyFired);
        }
        timer.deadline_ms = deadline_ms;
        timer.due_ms = timer.reminders.next_due_ms(deadline_ms);
        let due_tick = self.ticks.deadline_tick(timer.due_ms);
        self.wheel
            .reschedule(key, due_tick)
            .expect("checked: live and in range");
        self.counters.rescheduled += 1;
        Ok(Accepted {
            value: due_tick,
            seq: self.log_upsert(key),
        })
    }

    /// Records group `group`'s ack of `id`'s `Expired` event. The timer ends
    /// once every group acked. Returns whether it ended.
    pub(crate) fn ack(
        &mut self,
        id: &K,
        group: u32,
        now_ms: u64,
    ) -> Result<Accepted<bool>, AckError> {
        let acks = self.acks.ok_or(AckError::NotInFlight)?;
        let Lookup::Live(key) = self.lookup(id) else {
            return Err(AckError::NotInFlight);
        };
        let timer = self.wheel.get_mut(key).expect("looked up live");
        let acked = timer.flight.ok_or(AckError::NotInFlight)? | (1 << group);
        if acked & acks.all_groups != acks.all_groups {
            timer.flight = Some(acked);
            return Ok(Accepted {
                value: false,
                seq: None,
            });
        }
        if self.journal.as_ref().is_some_and(|j| j.failed()) {
            return Err(AckError::Storage);
        }
        self.wheel.cancel(key);
        self.remember_fired(id.clone(), key, now_ms);
        self.counters.acked += 1;
        self.counters.in_flight -= 1;
        Ok(Accepted {
            value: true,
            seq: self.log_remove(id),
        })
    }

    /// Puts an in-flight `Expired` back to wait `delay_ms`; it fires again
    /// (attempt + 1) unless cancelled meanwhile. Returns the tick to wake for.
    pub(crate) fn snooze(&mut self, id: &K, until_ms: u64) -> Result<Accepted<u64>, SnoozeError> {
        let acks = self.acks.ok_or(SnoozeError::NotInFlight)?;
        if self.journal.as_ref().is_some_and(|j| j.failed()) {
            return Err(SnoozeError::Storage);
        }
        let Lookup::Live(key) = self.lookup(id) else {
            return Err(SnoozeError::NotInFlight);
        };
        let max_ms = self.max_deadline_ms(0);
        let timer = self.wheel.get_mut(key).expect("looked up live");
        if timer.flight.is_none() {
            return Err(SnoozeError::NotInFlight);
        }
        if timer.snoozes >= acks.max_snoozes {
            return Err(SnoozeError::LimitReached {
                snoozes: timer.snoozes,
            });
        }
        let until_ms = until_ms.min(max_ms);
        timer.flight = None;
        timer.snoozes += 1;
        timer.attempt += 1;
        timer.due_ms = until_ms;
        let due_tick = self.ticks.deadline_tick(until_ms);
        self.wheel
            .reschedule(key, due_tick)
            .expect("live, and clamped to the range");
        self.counters.in_flight -= 1;
        self.counters.snoozed += 1;
        Ok(Accepted {
            value: due_tick,
            seq: self.log_upsert(key),
        })
    }

    /// Forgets `id`'s timer if it is in flight (cluster mode: the store
    /// refused to deliver it, so no ack will come; see `engine::hooks`).
    pub(crate) fn discard(&mut self, id: &K) {
        let Lookup::Live(key) = self.lookup(id) else {
            return;
        };
        if self.wheel.get(key).is_some_and(|t| t.flight.is_some()) {
            self.wheel.cancel(key);
            self.index.remove(id);
            self.counters.in_flight -= 1;
        }
    }

    /// Makes room for `additional` more timers in the id index, so that a
    /// large recovery does not rehash it over and over.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.index.reserve(additional);
    }

    /// Puts back a timer read from the journal at open. One that was in
    /// flight is redelivered at once (attempt + 1).
    pub(crate) fn restore(&mut self, mut timer: Pending<K, P>, now_ms: u64) -> Result<(), String> {
        if timer.flight.is_some() {
            timer.due_ms = timer.due_ms.min(now_ms);
            self.counters.in_flight += 1;
        }
        if matches!(self.lookup(&timer.id), Lookup::Live(_)) {
            return Err("a timer was recovered twice".into());
        }
        let id = timer.id.clone();
        let tick = self.ticks.deadline_tick(timer.due_ms);
        let key = self
            .wheel
            .insert(tick, timer)
            .map_err(|e| format!("a recovered timer does not fit the wheel: {e}"))?;
        self.index.insert(id, key);
        Ok(())
    }

    /// Fires what is due at or before `tick`, at most `limit` stages, and
    /// appends one event per stage to `out`, with the groups it must reach.
    pub(crate) fn fire(
        &mut self,
        tick: u64,
        limit: usize,
        now_ms: u64,
        out: &mut Vec<Fired<K, P>>,
    ) -> Advanced {
        let mut scratch = std::mem::take(&mut self.scratch);
        let advanced = self
            .wheel
            .advance_bounded(tick, limit, |timer| scratch.push(timer));
        for Timer {
            key: fired_key,
            deadline: due_tick,
            payload: mut timer,
        } in scratch.drain(..)
        {
            debug_assert!(due_tick <= tick, "fired early");
            debug_assert!(timer.due_ms <= now_ms, "fired before its due time");
            let due_ms = timer.due_ms;
            let mut groups = u64::MAX;
            let kind = if let Some(acked) = timer.flight {
                // Redelivery: only to the groups that have not acked.
                timer.attempt += 1;
                groups = !acked;
                self.counters.redelivered += 1;
                EventKind::Expired
            } else if timer.reminders.fired < timer.reminders.len {
                timer.reminders.fired += 1;
                self.counters.reminders += 1;
                EventKind::Reminder(timer.reminders.fired)
            } else {
                self.counters.expired += 1;
                EventKind::Expired
            };
            let event = Event {
                id: timer.id.clone(),
                kind,
                deadline_ms: timer.deadline_ms,
                due_ms,
                fired_at_ms: now_ms,
                attempt: timer.attempt,
                payload: timer.payload.clone(),
            };
            let stays = match (kind, self.acks) {
                (EventKind::Reminder(_), _) => {
                    timer.due_ms = timer.reminders.next_due_ms(timer.deadline_ms);
                    true
                }
                (EventKind::Expired, Some(acks)) => {
                    if timer.flight.is_none() {
                        timer.flight = Some(0);
                        self.counters.in_flight += 1;
                    }
                    timer.due_ms = now_ms.saturating_add(acks.timeout_ms);
                    true
                }
                (EventKind::Expired, None) => false,
            };
            if stays {
                // A timer just left the wheel, so there is room, and the new
                // due time is within a deadline that was in range or clamped
                // to the wheel's reach.
                let id = timer.id.clone();
                let next_tick = self
                    .ticks
                    .deadline_tick(timer.due_ms)
                    .min(self.wheel.max_deadline());
                let key = self
                    .wheel
                    .insert(next_tick, timer)
                    .unwrap_or_else(|_| unreachable!("re-inserting a stage cannot fail"));
                self.index.insert(id, key);
                if let Some(j) = &self.journal {
                    let _ = j.upsert(self.wheel.get(key).expect("just inserted"));
                }
            } else {
                // The index keeps `fired_key`, stale now: it reads as fired.
                self.remember_fired(timer.id, fired_key, now_ms);
            }
            out.push((due_tick, groups, event));
        }
        self.scratch = scratch;
        self.forget_fired(now_ms);
        advanced
    }

    /// Remembers that `id`'s timer, last under `key`, ended by firing. The
    /// index row already holds `key`: nothing to write there.
    fn remember_fired(&mut self, id: K, key: TimerKey, now_ms: u64) {
        debug_assert_eq!(self.index.get(&id), Some(&key));
        self.fired_order.push_back((id, key, now_ms));
    }

    /// Drops fired ids beyond the configured memory.
    fn forget_fired(&mut self, now_ms: u64) {
        while let Some((id, key, at_ms)) = self.fired_order.front() {
            let too_many = self.fired_order.len() > self.memory.max_ids;
            let too_old = now_ms.saturating_sub(*at_ms) > self.memory.max_age_ms;
            if !too_many && !too_old {
                break;
            }
            if self.index.get(id) == Some(key) {
                self.index.remove(id);
            }
            self.fired_order.pop_front();
        }
    }

    /// Calls `f` for every timer in the wheel (for a checkpoint).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Pending<K, P>)) {
        self.wheel.for_each(|_, timer| f(timer));
    }

    /// Refuses every later change (durable shutdown, before the final
    /// checkpoint).
    pub(crate) fn close_for_writes(&mut self) {
        self.closed = true;
    }

    /// Closes the shard and hands back every timer in it.
    pub(crate) fn close(&mut self, out: &mut Vec<PendingTimer<K, P>>) {
        self.closed = true;
        let index = &mut self.index;
        self.wheel.drain(|timer| {
            let p = timer.payload;
            index.remove(&p.id);
            out.push(PendingTimer {
                reminders_ms: p.reminders.remaining_ms(p.deadline_ms).collect(),
                in_flight: p.flight.is_some(),
                id: p.id,
                deadline_ms: p.deadline_ms,
                payload: p.payload,
            });
        });
        self.counters.in_flight = 0;
    }
}

enum Refusal {
    Closed,
    Storage,
}
