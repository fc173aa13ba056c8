//! One shard: a wheel, the id index that finds a timer by the caller's id,
//! and the memory of recently fired ids.
//!
//! Invariants (all under the shard's mutex, so they hold between calls):
//! - `index[id]` is `Pending(key)` if and only if the wheel holds a live
//!   timer for `id` under `key`; the wheel holds nothing that the index does
//!   not name;
//! - `index[id]` is `Fired(at)` only for ids whose `Expired` event was taken
//!   out of the wheel at `at` and has not been forgotten yet; `fired_order`
//!   lists exactly those, oldest first (plus stale rows for ids rescheduled
//!   since, which pruning skips);
//! - counters change on the transition itself, in one place each, so they
//!   cannot drift (Netty #14959).
//!
//! Cancel and fire both run here under the lock: whichever takes the lock
//! first wins, and the other sees the result.

use super::event::{Event, EventKind};
use crate::clock::Ticks;
use crate::error::{Cancel, RescheduleError, ScheduleError};
use crate::wheel::{Advanced, InsertError, Timer, Wheel};
use crate::{MAX_REMINDERS, TimerKey};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::hash::Hash;

/// A timer as the wheel holds it.
pub(crate) struct Pending<K, P> {
    id: K,
    payload: P,
    deadline_ms: u64,
    reminders: Reminders,
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
    /// The payload given at schedule.
    pub payload: P,
}

enum State {
    Pending(TimerKey),
    Fired { at_ms: u64 },
}

/// Counters of transitions, kept under the shard lock.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) scheduled: u64,
    pub(crate) cancelled: u64,
    pub(crate) rescheduled: u64,
    pub(crate) expired: u64,
    pub(crate) reminders: u64,
}

impl Counters {
    pub(crate) fn add(&mut self, other: &Self) {
        self.scheduled += other.scheduled;
        self.cancelled += other.cancelled;
        self.rescheduled += other.rescheduled;
        self.expired += other.expired;
        self.reminders += other.reminders;
    }
}

/// How long fired ids are remembered, so a late cancel hears `AlreadyFired`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FiredMemory {
    pub(crate) max_ids: usize,
    pub(crate) max_age_ms: u64,
}

pub(crate) struct Shard<K, P> {
    wheel: Wheel<Pending<K, P>>,
    index: FxHashMap<K, State>,
    fired_order: VecDeque<(K, u64)>,
    memory: FiredMemory,
    ticks: Ticks,
    /// Set at shutdown: nothing more is accepted.
    closed: bool,
    pub(crate) counters: Counters,
    scratch: Vec<Timer<Pending<K, P>>>,
}

impl<K: Hash + Eq + Clone, P: Clone> Shard<K, P> {
    pub(crate) fn new(ticks: Ticks, now_ms: u64, memory: FiredMemory) -> Self {
        Self {
            wheel: Wheel::with_capacity_at(0, ticks.now_tick(now_ms)),
            index: FxHashMap::default(),
            fired_order: VecDeque::new(),
            memory,
            ticks,
            closed: false,
            counters: Counters::default(),
            scratch: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.wheel.len()
    }

    /// The latest deadline (UTC ms) this shard accepts now.
    fn max_deadline_ms(&self) -> u64 {
        self.ticks.start_ms(self.wheel.max_deadline())
    }

    /// The tick at which this shard next has work, if any.
    pub(crate) fn next_tick(&self) -> Option<u64> {
        self.wheel.next_expiration()
    }

    /// Adds a timer. Returns the tick the dispatcher must wake for.
    /// `reserve` takes a place under the engine's cap; it is called once
    /// every other check has passed, and a refusal undoes the insert.
    pub(crate) fn schedule(
        &mut self,
        id: K,
        deadline_ms: u64,
        reminders: Reminders,
        payload: P,
        reserve: impl FnOnce() -> Result<(), usize>,
    ) -> Result<u64, ScheduleError<P>> {
        if self.closed {
            return Err(ScheduleError::ShuttingDown(payload));
        }
        let max_ms = self.max_deadline_ms();
        if deadline_ms > max_ms {
            return Err(ScheduleError::DeadlineTooFar {
                deadline_ms,
                max_ms,
                payload,
            });
        }
        let due_tick = self.ticks.deadline_tick(reminders.next_due_ms(deadline_ms));
        let slot = match self.index.entry(id) {
            Entry::Occupied(e) if matches!(e.get(), State::Pending(_)) => {
                return Err(ScheduleError::AlreadyScheduled(payload));
            }
            entry => entry,
        };
        let id = slot.key().clone();
        let pending = Pending {
            id,
            payload,
            deadline_ms,
            reminders,
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
        if let Err(max_pending) = reserve() {
            let pending = self.wheel.cancel(key).expect("inserted just above");
            return Err(ScheduleError::Full {
                max_pending,
                payload: pending.payload,
            });
        }
        match slot {
            Entry::Occupied(mut e) => *e.get_mut() = State::Pending(key),
            Entry::Vacant(e) => {
                e.insert(State::Pending(key));
            }
        }
        self.counters.scheduled += 1;
        Ok(due_tick)
    }

    pub(crate) fn cancel(&mut self, id: &K) -> Cancel<P> {
        match self.index.get(id) {
            None => Cancel::NotFound,
            Some(State::Fired { .. }) => Cancel::AlreadyFired,
            Some(&State::Pending(key)) => {
                self.index.remove(id);
                let pending = self
                    .wheel
                    .cancel(key)
                    .expect("the index names only live timers");
                self.counters.cancelled += 1;
                Cancel::Cancelled(pending.payload)
            }
        }
    }

    /// Moves a pending timer's deadline. Reminders already sent stay sent;
    /// the rest follow the new deadline. Returns the tick to wake for.
    pub(crate) fn reschedule(&mut self, id: &K, deadline_ms: u64) -> Result<u64, RescheduleError> {
        if self.closed {
            return Err(RescheduleError::ShuttingDown);
        }
        let key = match self.index.get(id) {
            None => return Err(RescheduleError::NotFound),
            Some(State::Fired { .. }) => return Err(RescheduleError::AlreadyFired),
            Some(&State::Pending(key)) => key,
        };
        let max_ms = self.max_deadline_ms();
        if deadline_ms > max_ms {
            return Err(RescheduleError::DeadlineTooFar {
                deadline_ms,
                max_ms,
            });
        }
        let pending = self
            .wheel
            .get_mut(key)
            .expect("the index names only live timers");
        pending.deadline_ms = deadline_ms;
        let due_tick = self
            .ticks
            .deadline_tick(pending.reminders.next_due_ms(deadline_ms));
        self.wheel
            .reschedule(key, due_tick)
            .expect("checked: live and in range");
        self.counters.rescheduled += 1;
        Ok(due_tick)
    }

    /// Fires what is due at or before `tick`, at most `limit` stages, and
    /// appends one event per stage to `out`. Reminder stages go back into the
    /// wheel for their next stage; expiries leave it and are remembered.
    pub(crate) fn fire(
        &mut self,
        tick: u64,
        limit: usize,
        now_ms: u64,
        out: &mut Vec<(u64, Event<K, P>)>,
    ) -> Advanced {
        let mut scratch = std::mem::take(&mut self.scratch);
        let advanced = self
            .wheel
            .advance_bounded(tick, limit, |timer| scratch.push(timer));
        for Timer {
            deadline: due_tick,
            payload: mut pending,
            ..
        } in scratch.drain(..)
        {
            debug_assert!(due_tick <= tick, "fired early");
            let deadline_ms = pending.deadline_ms;
            let due_ms = pending.reminders.next_due_ms(deadline_ms);
            debug_assert!(due_ms <= now_ms, "fired before its due time");
            let (id, kind, payload) = if pending.reminders.fired < pending.reminders.len {
                pending.reminders.fired += 1;
                let kind = EventKind::Reminder(pending.reminders.fired);
                let (id, payload) = (pending.id.clone(), pending.payload.clone());
                let next_tick = self
                    .ticks
                    .deadline_tick(pending.reminders.next_due_ms(pending.deadline_ms));
                // A timer just left the wheel, so there is room, and the next
                // stage is no later than a deadline that was in range.
                let key = self
                    .wheel
                    .insert(next_tick, pending)
                    .unwrap_or_else(|_| unreachable!("re-inserting a stage cannot fail"));
                self.index.insert(id.clone(), State::Pending(key));
                self.counters.reminders += 1;
                (id, kind, payload)
            } else {
                self.index
                    .insert(pending.id.clone(), State::Fired { at_ms: now_ms });
                self.fired_order.push_back((pending.id.clone(), now_ms));
                self.counters.expired += 1;
                (pending.id, EventKind::Expired, pending.payload)
            };
            let event = Event {
                id,
                kind,
                deadline_ms,
                due_ms,
                fired_at_ms: now_ms,
                attempt: 1,
                payload,
            };
            out.push((due_tick, event));
        }
        self.scratch = scratch;
        self.forget_fired(now_ms);
        advanced
    }

    /// Drops fired ids beyond the configured memory.
    fn forget_fired(&mut self, now_ms: u64) {
        while let Some((id, at_ms)) = self.fired_order.front() {
            let too_many = self.fired_order.len() > self.memory.max_ids;
            let too_old = now_ms.saturating_sub(*at_ms) > self.memory.max_age_ms;
            if !too_many && !too_old {
                break;
            }
            if matches!(self.index.get(id), Some(State::Fired { at_ms: a }) if a == at_ms) {
                self.index.remove(id);
            }
            self.fired_order.pop_front();
        }
    }

    /// Closes the shard and hands back every pending timer.
    pub(crate) fn close(&mut self, out: &mut Vec<PendingTimer<K, P>>) {
        self.closed = true;
        let index = &mut self.index;
        self.wheel.drain(|timer| {
            let p = timer.payload;
            index.remove(&p.id);
            out.push(PendingTimer {
                reminders_ms: p.reminders.remaining_ms(p.deadline_ms).collect(),
                id: p.id,
                deadline_ms: p.deadline_ms,
                payload: p.payload,
            });
        });
    }
}
