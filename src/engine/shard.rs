//! One shard: a wheel of compact entries ([`entry`](super::entry)), the id
//! index that finds a timer by the caller's id ([`index`](super::index)),
//! and the memory of recently fired ids ([`fired`](super::fired)).
//!
//! Invariants (all under the shard's mutex, so they hold between calls):
//! - an id has at most one row in `index`: a *live* row naming its timer's
//!   slab entry (waiting, or in flight with acks on), or a *fired* row
//!   naming its place in `fired` (see [`fired`](super::fired));
//! - every timer in the wheel has a live row; a timer that ended by firing
//!   (expired, and acked if acks are on) leaves a fired row until `fired`
//!   drops it, so a late cancel hears `AlreadyFired`; a cancel removes the
//!   row, and a new schedule of the id takes the fired row over;
//! - side state ([`Extra`]) exists exactly for the entries of kind
//!   [`Side::Extra`], and is freed with them;
//! - counters change on the transition itself, in one place each, so they
//!   cannot drift (Netty #14959).
//!
//! Every operation takes the id's hash from its caller ([`hash_id`], computed
//! once, which also chose this shard) and probes the index once.
//!
//! Cancel and fire both run here under the lock: whichever takes the lock
//! first wins, and the other sees the result.

use super::entry::{
    DEAD_LETTERED, Entry, Extra, Extras, MAX_OWN_ATTEMPTS, Reminders, Side, placement,
    plain_deadline_ms,
};
use super::event::{Event, EventKind};
use super::fired::{FIRED, FiredIds};
use super::index::{IdIndex, Slot, hash_id};
use super::info::{TimerInfo, TimerStatus};
use crate::TimerKey;
use crate::clock::Ticks;
use crate::error::{AckError, Cancel, CancelError, RescheduleError, ScheduleError, SnoozeError};
use crate::journal::{Journal, TimerRecord, TimerState};
use crate::wheel::{Advanced, InsertError, Timer, Wheel};
use std::hash::Hash;
use std::sync::Arc;

/// A timer handed back by [`Engine::shutdown`](crate::Engine::shutdown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingTimer<K, P> {
    /// The caller's id.
    pub id: K,
    /// Its deadline (UTC milliseconds).
    pub deadline_ms: u64,
    /// Due times (UTC milliseconds) of the reminders that had not fired yet.
    pub reminders_ms: Vec<u64>,
    /// `true` if its `Expired` event was emitted and still awaited acks
    /// (or, dead-lettered, its `DeadLetter` event did).
    pub in_flight: bool,
    /// `true` if it was dead-lettered: its `DeadLetter` event awaited the
    /// dead-letter group's ack.
    pub dead_lettered: bool,
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
    pub(crate) reminders_already_due: u64,
    pub(crate) dead_lettered: u64,
    /// Gauge: timers whose `Expired` awaits acks.
    pub(crate) in_flight: u64,
    /// Gauge: dead-lettered timers awaiting the dead-letter group's ack.
    pub(crate) dead_letters: u64,
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
        self.reminders_already_due += o.reminders_already_due;
        self.in_flight += o.in_flight;
        self.dead_lettered += o.dead_lettered;
        self.dead_letters += o.dead_letters;
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
    /// One bit per consumer group that must ack an `Expired` event (every
    /// group but the dead-letter group).
    pub(crate) all_groups: u64,
    /// The engine's attempt bound (`u32::MAX`: unlimited).
    pub(crate) max_attempts: u32,
    /// The dead-letter group's bit, or 0 without one.
    pub(crate) dead_letter: u64,
}

/// What a fired stage must reach: the groups whose bits are set.
pub(crate) type Fired<K, P> = (u64, u64, Event<K, P>);

/// When a new timer is due, as [`Shard::schedule`] takes it.
pub(crate) struct Timing {
    pub(crate) deadline_ms: u64,
    pub(crate) reminders: Reminders,
    /// The clock at the call, to place reminders already past; 0 if the
    /// caller did not read it (no reminder left).
    pub(crate) now_ms: u64,
    /// Its own attempt bound; 0 for the engine's.
    pub(crate) max_attempts: u16,
}

/// A change accepted under the lock; durable once `seq` is (if journaled).
pub(crate) struct Accepted<T> {
    pub(crate) value: T,
    pub(crate) seq: Option<u64>,
}

pub(crate) struct Shard<K, P> {
    wheel: Wheel<Entry<K, P>>,
    index: IdIndex,
    extras: Extras,
    fired: FiredIds<K>,
    acks: Option<Acks>,
    journal: Option<Arc<dyn Journal<K, P>>>,
    ticks: Ticks,
    /// Set at shutdown: nothing more is accepted.
    closed: bool,
    /// This shard's share of `max_pending`.
    cap: usize,
    /// The last delivery token handed out (see `Event::token`).
    last_token: u64,
    pub(crate) counters: Counters,
    scratch: Vec<Timer<Entry<K, P>>>,
}

/// `true` if row `at` names `id`: a live entry for it, or its place in
/// the fired ring.
fn names<K: Eq, P>(wheel: &Wheel<Entry<K, P>>, fired: &FiredIds<K>, at: u32, id: &K) -> bool {
    if at & FIRED != 0 {
        fired.get(at) == Some(id)
    } else {
        wheel
            .key_at(at)
            .and_then(|key| wheel.get(key))
            .is_some_and(|entry| entry.id == *id)
    }
}

/// The hash of the id row `at` names (for a table that grows; every row
/// names a live entry or a remembered id, so the fallback is never used).
fn rehash<K: Hash, P>(wheel: &Wheel<Entry<K, P>>, fired: &FiredIds<K>, at: u32) -> u64 {
    if at & FIRED != 0 {
        fired.get(at).map_or(0, hash_id)
    } else {
        wheel
            .key_at(at)
            .and_then(|key| wheel.get(key))
            .map_or(0, |entry| hash_id(&entry.id))
    }
}

impl<K: Hash + Eq + Clone, P: Clone> Shard<K, P> {
    /// A shard with room for `capacity` timers before it allocates (a
    /// hint; it grows past it up to `cap`).
    pub(crate) fn new(
        ticks: Ticks,
        now_ms: u64,
        memory: FiredMemory,
        acks: Option<Acks>,
        journal: Option<Arc<dyn Journal<K, P>>>,
        cap: usize,
        capacity: usize,
    ) -> Self {
        let mut index = IdIndex::new();
        index.reserve(capacity, |_| 0);
        Self {
            wheel: Wheel::with_capacity_at(capacity, ticks.now_tick(now_ms)),
            index,
            extras: Extras::default(),
            fired: FiredIds::new(memory.max_ids, memory.max_age_ms),
            acks,
            journal,
            ticks,
            closed: false,
            cap,
            last_token: 0,
            counters: Counters::default(),
            scratch: Vec::new(),
        }
    }

    /// Timers in the wheel: waiting or in flight.
    pub(crate) fn len(&self) -> usize {
        self.wheel.len()
    }

    /// Fired ids remembered now.
    pub(crate) fn fired_remembered(&self) -> usize {
        self.fired.len()
    }

    /// Heap bytes held by this shard's timers, index and fired memory.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.wheel.heap_bytes()
            + self.index.heap_bytes()
            + self.fired.heap_bytes()
            + self.extras.heap_bytes()
    }

    /// The live timer of `id` (whose hash is `hash`), if any: one probe.
    fn find(&self, hash: u64, id: &K) -> Option<TimerKey> {
        match self.lookup(hash, id) {
            Lookup::Live(key) => Some(key),
            _ => None,
        }
    }

    /// What the index says of `id` (see the module invariants): one probe.
    fn lookup(&self, hash: u64, id: &K) -> Lookup {
        let (wheel, fired) = (&self.wheel, &self.fired);
        match self.index.find(hash, |at| names(wheel, fired, at, id)) {
            None => Lookup::Absent,
            Some(at) if at & FIRED != 0 => Lookup::Fired,
            Some(at) => wheel.key_at(at).map_or(Lookup::Absent, Lookup::Live),
        }
    }

    /// Turns the live row of the timer that was at `key` (out of the wheel
    /// now, or about to leave it) into a fired row for `id`, dropping the
    /// oldest remembered ids beyond the memory; or removes the row if
    /// nothing is remembered.
    fn retire(&mut self, hash: u64, key: TimerKey, id: K, now_ms: u64) {
        if self.fired.is_off() {
            self.index.remove(hash, key.index());
            return;
        }
        while let Some((old, row)) = self.fired.over(true, now_ms) {
            self.index.remove(hash_id(&old), row);
        }
        let row = self.fired.push(id, now_ms);
        self.index.replace(hash, key.index(), row);
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

    /// [`max_deadline_ms`](Self::max_deadline_ms) for a deadline at
    /// `deadline_ms`, reading the clock (`now_ms`) only when the wheel's own
    /// time says it is too far: an absolute deadline within reach costs no
    /// clock read.
    fn max_deadline_within(&self, deadline_ms: u64, now_ms: impl FnOnce() -> u64) -> u64 {
        let by_wheel = self.max_deadline_ms(0);
        if deadline_ms <= by_wheel {
            by_wheel
        } else {
            self.max_deadline_ms(now_ms())
        }
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

    /// The journal's view of the live timer under `key`.
    fn state(&self, key: TimerKey, entry: &Entry<K, P>) -> TimerState {
        let tick = self.wheel.deadline(key).unwrap_or_default();
        match entry.side() {
            Side::Plain { early_ms } => {
                TimerState::plain(plain_deadline_ms(self.ticks, tick, early_ms))
            }
            Side::Reminder {
                early_ms,
                before_ms,
            } => {
                let due_ms = plain_deadline_ms(self.ticks, tick, early_ms);
                let mut state = TimerState::plain(due_ms.saturating_add(before_ms));
                state.due_ms = due_ms;
                state.reminders_before_ms[0] = before_ms;
                state.reminders_len = 1;
                state
            }
            Side::Extra(at) => self.extras.get(at).state(),
        }
    }

    fn log_upsert(&self, key: TimerKey) -> Option<u64> {
        let journal = self.journal.as_ref()?;
        let entry = self.wheel.get(key)?;
        // An append fails only once the log failed; `writable` refuses every
        // later change and the dispatcher stops, so the error is not lost.
        journal
            .upsert(&entry.id, &entry.payload, &self.state(key, entry))
            .ok()
    }

    fn log_remove(&self, id: &K) -> Option<u64> {
        self.journal.as_ref()?.remove(id).ok()
    }

    /// Adds a timer. Returns the tick the dispatcher must wake for.
    pub(crate) fn schedule(
        &mut self,
        hash: u64,
        id: K,
        timing: Timing,
        clock: impl FnOnce() -> u64,
        payload: P,
    ) -> Result<Accepted<u64>, ScheduleError<P>> {
        let Timing {
            deadline_ms,
            mut reminders,
            now_ms,
            max_attempts,
        } = timing;
        match self.writable() {
            Ok(()) => {}
            Err(Refusal::Closed) => return Err(ScheduleError::ShuttingDown(payload)),
            Err(Refusal::Storage) => return Err(ScheduleError::Storage(payload)),
        }
        if max_attempts != 0 && self.acks.is_none_or(|a| a.dead_letter == 0) {
            return Err(ScheduleError::Invalid {
                reason: "max_attempts needs a dead-letter group (Builder::dead_letter_group)",
                payload,
            });
        }
        let max_ms = self.max_deadline_within(deadline_ms, || match now_ms {
            0 => clock(),
            read => read,
        });
        if deadline_ms > max_ms {
            return Err(ScheduleError::DeadlineTooFar {
                deadline_ms,
                max_ms,
                payload,
            });
        }
        if self.wheel.len() >= self.cap {
            if self.find(hash, &id).is_some() {
                return Err(ScheduleError::AlreadyScheduled(payload));
            }
            self.counters.rejected_full += 1;
            return Err(ScheduleError::Full {
                max_pending: self.cap,
                payload,
            });
        }
        let Self {
            wheel,
            index,
            extras,
            fired,
            ticks,
            ..
        } = self;
        // A fired row of the id is taken over: its old end no longer answers.
        let row = match index.slot(
            hash,
            |at| names(wheel, fired, at, &id),
            |at| rehash(wheel, fired, at),
        ) {
            Slot::Taken(at, _) if at & FIRED == 0 => {
                return Err(ScheduleError::AlreadyScheduled(payload));
            }
            row => row,
        };
        let already_due = reminders.clamp_past(deadline_ms, now_ms);
        let (due_tick, early_ms, extra) = if max_attempts == 0 {
            placement(*ticks, extras, deadline_ms, reminders)
        } else {
            // Its own bound lives in side state.
            let mut extra = Extra::waiting(deadline_ms, reminders);
            extra.limit = max_attempts.min(MAX_OWN_ATTEMPTS);
            (ticks.deadline_tick(extra.due_ms), 0, extras.insert(extra))
        };
        let entry = Entry {
            id,
            payload,
            early_ms,
            extra,
        };
        let key = match wheel.insert(due_tick, entry) {
            Ok(key) => key,
            // Unreachable in practice: the range was checked above (and
            // reminders are never after the deadline), and the engine caps
            // `max_pending` below the wheel's `u32` index space.
            Err(InsertError::Full(entry)) => {
                if let Some(at) = entry.extra_index() {
                    extras.remove(at);
                }
                return Err(ScheduleError::Full {
                    max_pending: wheel.len(),
                    payload: entry.payload,
                });
            }
            Err(InsertError::DeadlineTooFar { payload: entry, .. }) => {
                if let Some(at) = entry.extra_index() {
                    extras.remove(at);
                }
                return Err(ScheduleError::DeadlineTooFar {
                    deadline_ms,
                    max_ms,
                    payload: entry.payload,
                });
            }
        };
        row.fill(key.index());
        self.counters.scheduled += 1;
        self.counters.reminders_already_due += u64::from(already_due);
        Ok(Accepted {
            value: due_tick,
            seq: self.log_upsert(key),
        })
    }

    /// Frees the side state of an entry leaving the wheel.
    fn free_side(&mut self, entry: &Entry<K, P>) {
        if let Some(at) = entry.extra_index() {
            self.extras.remove(at);
        }
    }

    /// The side state of a live entry, if it has one.
    fn extra_of(&self, key: TimerKey) -> Option<&Extra> {
        let entry = self.wheel.get(key)?;
        entry.extra_index().map(|at| self.extras.get(at))
    }

    fn in_flight(&self, key: TimerKey) -> bool {
        self.extra_of(key).is_some_and(|x| x.in_flight)
    }

    /// Takes a live timer out of the wheel and the index, freeing its side
    /// state.
    fn take(&mut self, hash: u64, key: TimerKey) -> Option<Entry<K, P>> {
        let entry = self.wheel.cancel(key)?;
        self.index.remove(hash, key.index());
        self.free_side(&entry);
        Some(entry)
    }

    pub(crate) fn cancel(&mut self, hash: u64, id: &K) -> Result<Accepted<Cancel<P>>, CancelError> {
        if self.closed {
            // Shut down (its timers handed back or left in the log): a
            // `NotFound` would be a lie.
            return Err(CancelError::ShuttingDown);
        }
        let writable = self.writable();
        let Self {
            wheel,
            index,
            extras,
            fired,
            ..
        } = self;
        let Some(row) = index.find_row(hash, |at| names(wheel, fired, at, id)) else {
            return Ok(Accepted {
                value: Cancel::NotFound,
                seq: None,
            });
        };
        if *row.get() & FIRED != 0 {
            return Ok(Accepted {
                value: Cancel::AlreadyFired,
                seq: None,
            });
        }
        let key = wheel.key_at(*row.get()).expect("rows name live entries");
        let extra = wheel
            .get(key)
            .expect("rows name live entries")
            .extra_index();
        if extra.is_some_and(|at| extras.get(at).in_flight) {
            return Ok(Accepted {
                value: Cancel::AlreadyFired,
                seq: None,
            });
        }
        match writable {
            Ok(()) => {}
            Err(Refusal::Closed) => return Err(CancelError::ShuttingDown),
            Err(Refusal::Storage) => return Err(CancelError::Storage),
        }
        row.remove();
        let entry = wheel.cancel(key).expect("rows name live entries");
        self.free_side(&entry);
        self.counters.cancelled += 1;
        Ok(Accepted {
            value: Cancel::Cancelled(entry.payload),
            seq: self.log_remove(id),
        })
    }

    /// Moves a waiting timer's deadline. Reminders already sent stay sent;
    /// the rest follow the new deadline (one already past at `now_ms` fires
    /// at once, counted apart as at schedule). Returns the tick to wake for.
    pub(crate) fn reschedule(
        &mut self,
        hash: u64,
        id: &K,
        deadline_ms: u64,
        now_ms: u64,
    ) -> Result<Accepted<u64>, RescheduleError> {
        match self.writable() {
            Ok(()) => {}
            Err(Refusal::Closed) => return Err(RescheduleError::ShuttingDown),
            Err(Refusal::Storage) => return Err(RescheduleError::Storage),
        }
        let key = match self.lookup(hash, id) {
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
        if self.in_flight(key) {
            return Err(RescheduleError::AlreadyFired);
        }
        let side = self.wheel.get(key).expect("looked up live").side();
        let due_tick = match side {
            Side::Extra(at) => {
                let x = self.extras.get_mut(at);
                x.deadline_ms = deadline_ms;
                let already_due = x.reminders.clamp_past(deadline_ms, now_ms);
                self.counters.reminders_already_due += u64::from(already_due);
                x.due_ms = x.reminders.next_due_ms(deadline_ms);
                self.ticks.deadline_tick(x.due_ms)
            }
            Side::Plain { .. } | Side::Reminder { .. } => {
                let mut reminders = match side {
                    Side::Reminder { before_ms, .. } => Reminders::new([before_ms]),
                    _ => Some(Reminders::NONE),
                }
                .expect("one reminder fits");
                let already_due = reminders.clamp_past(deadline_ms, now_ms);
                self.counters.reminders_already_due += u64::from(already_due);
                let (tick, early_ms, extra) =
                    placement(self.ticks, &mut self.extras, deadline_ms, reminders);
                let entry = self.wheel.get_mut(key).expect("looked up live");
                entry.early_ms = early_ms;
                entry.extra = extra;
                tick
            }
        };
        self.wheel
            .reschedule(key, due_tick)
            .expect("checked: live and in range");
        self.counters.rescheduled += 1;
        Ok(Accepted {
            value: due_tick,
            seq: self.log_upsert(key),
        })
    }

    /// The in-flight timer of `id` that the event with `token` names.
    fn flight_of(&self, hash: u64, id: &K, token: u64) -> Result<TimerKey, Stale> {
        let Lookup::Live(key) = self.lookup(hash, id) else {
            return Err(Stale::NotInFlight);
        };
        match self.extra_of(key) {
            Some(x) if x.token != token => Err(Stale::OtherEvent),
            Some(x) if x.in_flight => Ok(key),
            Some(_) => Err(Stale::NotInFlight),
            // A waiting plain timer: the event named an earlier one.
            None => Err(Stale::OtherEvent),
        }
    }

    /// Records group `group`'s ack of the `Expired` event of `id` that
    /// carried `token`. The timer ends once every group acked. Returns
    /// whether it ended.
    pub(crate) fn ack(
        &mut self,
        hash: u64,
        id: &K,
        token: u64,
        group: u32,
        now_ms: u64,
    ) -> Result<Accepted<bool>, AckError> {
        let acks = self.acks.ok_or(AckError::NotInFlight)?;
        let key = self
            .flight_of(hash, id, token)
            .map_err(|stale| match stale {
                Stale::NotInFlight => AckError::NotInFlight,
                Stale::OtherEvent => AckError::Stale,
            })?;
        let at = self.wheel.get(key).and_then(Entry::extra_index);
        let x = self.extras.get_mut(at.expect("in flight: has side state"));
        let dead = x.is_dead_letter();
        let need = if dead {
            acks.dead_letter
        } else {
            acks.all_groups
        };
        if dead && need & (1 << group) == 0 {
            // A late ack of the `Expired` event: the dead-letter group owns
            // the timer now.
            return Err(AckError::DeadLettered);
        }
        x.acked |= 1 << group;
        if x.acked & need != need {
            return Ok(Accepted {
                value: false,
                seq: None,
            });
        }
        if self.journal.as_ref().is_some_and(|j| j.failed()) {
            return Err(AckError::Storage);
        }
        let entry = self.wheel.cancel(key).expect("looked up live");
        self.free_side(&entry);
        self.retire(hash, key, entry.id, now_ms);
        self.counters.acked += 1;
        if dead {
            self.counters.dead_letters -= 1;
        } else {
            self.counters.in_flight -= 1;
        }
        Ok(Accepted {
            value: true,
            seq: self.log_remove(id),
        })
    }

    /// Puts an in-flight `Expired` back to wait until `until_ms`; it fires
    /// again (attempt + 1) unless cancelled meanwhile. Returns the tick to
    /// wake for.
    pub(crate) fn snooze(
        &mut self,
        hash: u64,
        id: &K,
        token: u64,
        until_ms: u64,
    ) -> Result<Accepted<u64>, SnoozeError> {
        let acks = self.acks.ok_or(SnoozeError::NotInFlight)?;
        if self.journal.as_ref().is_some_and(|j| j.failed()) {
            return Err(SnoozeError::Storage);
        }
        let key = self
            .flight_of(hash, id, token)
            .map_err(|stale| match stale {
                Stale::NotInFlight => SnoozeError::NotInFlight,
                Stale::OtherEvent => SnoozeError::Stale,
            })?;
        let max_ms = self.max_deadline_ms(0);
        let at = self.wheel.get(key).and_then(Entry::extra_index);
        let x = self.extras.get_mut(at.expect("in flight: has side state"));
        if x.is_dead_letter() {
            return Err(SnoozeError::DeadLettered);
        }
        if x.snoozes >= acks.max_snoozes {
            return Err(SnoozeError::LimitReached { snoozes: x.snoozes });
        }
        let until_ms = until_ms.min(max_ms);
        x.in_flight = false;
        x.snoozes += 1;
        x.attempt += 1;
        x.due_ms = until_ms;
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
        let hash = hash_id(id);
        let Lookup::Live(key) = self.lookup(hash, id) else {
            return;
        };
        let dead = self.extra_of(key).is_some_and(Extra::is_dead_letter);
        if self.in_flight(key) {
            self.take(hash, key);
            if dead {
                self.counters.dead_letters -= 1;
            } else {
                self.counters.in_flight -= 1;
            }
        }
    }

    /// Makes room for `additional` more timers in the id index, so that a
    /// large recovery (or a capacity hint) does not grow it step by step.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let wheel = &self.wheel;
        let fired = &self.fired;
        self.index
            .reserve(additional, |at| rehash(wheel, fired, at));
    }

    /// Puts back a timer read from the journal at open. One that was in
    /// flight is redelivered at once (attempt + 1).
    pub(crate) fn restore(&mut self, record: TimerRecord<K, P>, now_ms: u64) -> Result<(), String> {
        let TimerRecord { id, payload, state } = record;
        let hash = hash_id(&id);
        if self.find(hash, &id).is_some() {
            return Err("a timer was recovered twice".into());
        }
        let fresh = state.attempt == 1
            && state.snoozes == 0
            && state.flight.is_none()
            && state.max_attempts == 0;
        let reminders = Reminders::new(state.reminders().iter().copied())
            .filter(|r| state.reminders_fired <= r.len)
            .map(|mut r| {
                r.fired = state.reminders_fired;
                r
            });
        let (tick, early_ms, extra) = match reminders {
            // Waiting for its next stage as a new timer would: placed as
            // one (a plain or one-reminder entry if it can be).
            Some(reminders)
                if fresh && state.due_ms == reminders.next_due_ms(state.deadline_ms) =>
            {
                placement(self.ticks, &mut self.extras, state.deadline_ms, reminders)
            }
            _ => {
                let mut extra = Extra::from_state(&state).ok_or("malformed reminders")?;
                if extra.in_flight {
                    extra.due_ms = extra.due_ms.min(now_ms);
                    self.last_token += 1;
                    extra.token = self.last_token;
                    if extra.is_dead_letter() {
                        self.counters.dead_letters += 1;
                    } else {
                        self.counters.in_flight += 1;
                    }
                }
                (
                    self.ticks.deadline_tick(extra.due_ms),
                    0,
                    self.extras.insert(extra),
                )
            }
        };
        let entry = Entry {
            id,
            payload,
            early_ms,
            extra,
        };
        let key = match self.wheel.insert(tick, entry) {
            Ok(key) => key,
            Err(e) => {
                let message = format!("a recovered timer does not fit the wheel: {e}");
                let entry = match e {
                    InsertError::Full(entry)
                    | InsertError::DeadlineTooFar { payload: entry, .. } => entry,
                };
                if self.extra_in_flight(&entry) {
                    if entry
                        .extra_index()
                        .is_some_and(|at| self.extras.get(at).is_dead_letter())
                    {
                        self.counters.dead_letters -= 1;
                    } else {
                        self.counters.in_flight -= 1;
                    }
                }
                self.free_side(&entry);
                return Err(message);
            }
        };
        let (wheel, fired) = (&self.wheel, &self.fired);
        self.index
            .insert(hash, key.index(), |at| rehash(wheel, fired, at));
        Ok(())
    }

    fn extra_in_flight(&self, entry: &Entry<K, P>) -> bool {
        entry
            .extra_index()
            .is_some_and(|at| self.extras.get(at).in_flight)
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
        // Every fired timer's row goes first, while no slab index has been
        // reused: a row is found by its old index, which is then unique. A
        // timer that ends here leaves a fired row; the others come back.
        for timer in &scratch {
            let hash = hash_id(&timer.payload.id);
            if self.ends_when_fired(&timer.payload) {
                self.retire(hash, timer.key, timer.payload.id.clone(), now_ms);
            } else {
                self.index.remove(hash, timer.key.index());
            }
        }
        for Timer {
            key: _,
            deadline: due_tick,
            payload: entry,
        } in scratch.drain(..)
        {
            debug_assert!(due_tick <= tick, "fired early");
            out.push(self.fire_one(due_tick, entry, now_ms));
        }
        self.scratch = scratch;
        while let Some((old, row)) = self.fired.over(false, now_ms) {
            self.index.remove(hash_id(&old), row);
        }
        advanced
    }

    /// `true` if firing `entry` ends its timer (its row becomes a fired row
    /// before the stage is processed).
    fn ends_when_fired(&self, entry: &Entry<K, P>) -> bool {
        self.acks.is_none()
            && match entry.side() {
                Side::Plain { .. } => true,
                Side::Reminder { .. } => false,
                Side::Extra(at) => !self.extras.get(at).reminders.remaining(),
            }
    }

    /// One fired stage of `entry` (out of the wheel and the index): its
    /// event, and the entry back in both if it has more to do.
    fn fire_one(&mut self, due_tick: u64, mut entry: Entry<K, P>, now_ms: u64) -> Fired<K, P> {
        if let Side::Reminder {
            early_ms,
            before_ms,
        } = entry.side()
        {
            return self.fire_inline_reminder(due_tick, entry, early_ms, before_ms, now_ms);
        }
        if let Side::Plain { early_ms } = entry.side() {
            // A plain timer expires.
            let deadline_ms = plain_deadline_ms(self.ticks, due_tick, early_ms);
            if self.acks.is_some() {
                entry.early_ms = 0;
                entry.extra = self
                    .extras
                    .insert(Extra::waiting(deadline_ms, Reminders::NONE));
            } else {
                debug_assert!(deadline_ms <= now_ms, "fired before its due time");
                self.counters.expired += 1;
                let event = Event {
                    id: entry.id.clone(),
                    kind: EventKind::Expired,
                    deadline_ms,
                    due_ms: deadline_ms,
                    fired_at_ms: now_ms,
                    attempt: 1,
                    token: 0,
                    claim: 0,
                    payload: entry.payload,
                };
                return (due_tick, u64::MAX, event);
            }
        }
        let acks = self.acks;
        let dead_letter = acks.map_or(0, |a| a.dead_letter);
        let at = entry.extra_index().expect("neither plain nor one-reminder");
        let x = self.extras.get_mut(at);
        let due_ms = x.due_ms;
        debug_assert!(due_ms <= now_ms, "fired before its due time");
        let mut groups = !dead_letter;
        let kind = if x.in_flight && x.is_dead_letter() {
            // Until the dead-letter group acks it.
            groups = dead_letter & !x.acked;
            self.counters.redelivered += 1;
            EventKind::DeadLetter
        } else if x.in_flight
            && dead_letter != 0
            && acks.is_some_and(|a| x.out_of_attempts(a.max_attempts))
        {
            // The last attempt timed out: the dead-letter group takes it,
            // and only its ack ends the timer.
            x.limit = DEAD_LETTERED;
            x.acked = 0;
            groups = dead_letter;
            self.counters.dead_lettered += 1;
            self.counters.in_flight -= 1;
            self.counters.dead_letters += 1;
            EventKind::DeadLetter
        } else if x.in_flight {
            // Redelivery: only to the groups that have not acked.
            x.attempt += 1;
            groups = !x.acked & !dead_letter;
            self.counters.redelivered += 1;
            EventKind::Expired
        } else if x.reminders.remaining() {
            x.reminders.fired += 1;
            self.counters.reminders += 1;
            EventKind::Reminder(x.reminders.fired)
        } else {
            self.counters.expired += 1;
            EventKind::Expired
        };
        let stays = match (kind, acks) {
            (EventKind::Reminder(_), _) => {
                x.due_ms = x.reminders.next_due_ms(x.deadline_ms);
                true
            }
            (EventKind::Expired, Some(acks)) => {
                if !x.in_flight {
                    x.in_flight = true;
                    x.acked = 0;
                    if x.token == 0 {
                        self.last_token += 1;
                        x.token = self.last_token;
                    }
                    self.counters.in_flight += 1;
                }
                x.due_ms = now_ms.saturating_add(acks.timeout_ms);
                true
            }
            (EventKind::Expired, None) => false,
            (EventKind::DeadLetter, _) => {
                let timeout_ms = acks.map_or(0, |a| a.timeout_ms);
                x.due_ms = now_ms.saturating_add(timeout_ms);
                true
            }
        };
        let event = Event {
            id: entry.id.clone(),
            kind,
            deadline_ms: x.deadline_ms,
            due_ms,
            fired_at_ms: now_ms,
            attempt: if matches!(kind, EventKind::Reminder(_)) {
                1
            } else {
                x.attempt
            },
            token: if matches!(kind, EventKind::Reminder(_)) {
                0
            } else {
                x.token
            },
            claim: 0,
            payload: entry.payload.clone(),
        };
        let hash = hash_id(&entry.id);
        if stays {
            // A timer just left the wheel, so there is room, and the new
            // due time is within a deadline that was in range or clamped
            // to the wheel's reach.
            let next_tick = self
                .ticks
                .deadline_tick(x.due_ms)
                .min(self.wheel.max_deadline());
            let key = self
                .wheel
                .insert(next_tick, entry)
                .unwrap_or_else(|_| unreachable!("re-inserting a stage cannot fail"));
            let (wheel, fired) = (&self.wheel, &self.fired);
            self.index
                .insert(hash, key.index(), |at| rehash(wheel, fired, at));
            if let Some(j) = &self.journal {
                let entry = self.wheel.get(key).expect("just inserted");
                let _ = j.upsert(&entry.id, &entry.payload, &self.state(key, entry));
            }
        } else {
            self.extras.remove(at);
        }
        (due_tick, groups, event)
    }

    /// The reminder of a one-reminder entry fires; the entry goes back to
    /// wait for its deadline (as a plain entry if it can be).
    fn fire_inline_reminder(
        &mut self,
        due_tick: u64,
        mut entry: Entry<K, P>,
        early_ms: u32,
        before_ms: u64,
        now_ms: u64,
    ) -> Fired<K, P> {
        let due_ms = plain_deadline_ms(self.ticks, due_tick, early_ms);
        let deadline_ms = due_ms.saturating_add(before_ms);
        debug_assert!(due_ms <= now_ms, "fired before its due time");
        self.counters.reminders += 1;
        let event = Event {
            id: entry.id.clone(),
            kind: EventKind::Reminder(1),
            deadline_ms,
            due_ms,
            fired_at_ms: now_ms,
            attempt: 1,
            token: 0,
            claim: 0,
            payload: entry.payload.clone(),
        };
        let mut fired = Reminders::new([before_ms]).expect("one reminder fits");
        fired.fired = 1;
        let (tick, early, extra) = placement(self.ticks, &mut self.extras, deadline_ms, fired);
        entry.early_ms = early;
        entry.extra = extra;
        let hash = hash_id(&entry.id);
        let key = self
            .wheel
            .insert(tick.min(self.wheel.max_deadline()), entry)
            .unwrap_or_else(|_| unreachable!("re-inserting a stage cannot fail"));
        let (wheel, fired) = (&self.wheel, &self.fired);
        self.index
            .insert(hash, key.index(), |at| rehash(wheel, fired, at));
        if let Some(j) = &self.journal {
            let entry = self.wheel.get(key).expect("just inserted");
            let _ = j.upsert(&entry.id, &entry.payload, &self.state(key, entry));
        }
        (due_tick, !self.acks.map_or(0, |a| a.dead_letter), event)
    }

    /// What the shard knows of `id` now (see [`TimerInfo`]): one probe,
    /// under the lock cancel takes, so it is the state cancel would see.
    pub(crate) fn info(&self, hash: u64, id: &K) -> Option<TimerInfo<P>> {
        let key = match self.lookup(hash, id) {
            Lookup::Absent => return None,
            Lookup::Fired => return Some(TimerInfo::fired()),
            Lookup::Live(key) => key,
        };
        let entry = self.wheel.get(key)?;
        let tick = self.wheel.deadline(key)?;
        let mut info = TimerInfo::waiting(entry.payload.clone());
        match entry.side() {
            Side::Plain { early_ms } => {
                let deadline_ms = plain_deadline_ms(self.ticks, tick, early_ms);
                info.deadline_ms = Some(deadline_ms);
                info.next_due_ms = Some(deadline_ms);
            }
            Side::Reminder {
                early_ms,
                before_ms,
            } => {
                let due_ms = plain_deadline_ms(self.ticks, tick, early_ms);
                info.deadline_ms = Some(due_ms.saturating_add(before_ms));
                info.next_due_ms = Some(due_ms);
                info.reminders_ms.push(due_ms);
            }
            Side::Extra(at) => {
                let x = self.extras.get(at);
                info.status = match (x.in_flight, x.is_dead_letter()) {
                    (true, true) => TimerStatus::DeadLettered,
                    (true, false) => TimerStatus::InFlight,
                    (false, _) => TimerStatus::Waiting,
                };
                info.deadline_ms = Some(x.deadline_ms);
                info.next_due_ms = Some(x.due_ms);
                info.reminders_ms
                    .extend(x.reminders.remaining_ms(x.deadline_ms));
                info.attempt = x.attempt;
                info.snoozes = x.snoozes;
            }
        }
        Some(info)
    }

    /// Calls `f` for every timer in the wheel (for a checkpoint).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &P, &TimerState)) {
        self.wheel
            .for_each(|key, entry| f(&entry.id, &entry.payload, &self.state(key, entry)));
    }

    /// Refuses every later change (durable shutdown, before the final
    /// checkpoint).
    pub(crate) fn close_for_writes(&mut self) {
        self.closed = true;
    }

    /// Closes the shard and hands back every timer in it.
    pub(crate) fn close(&mut self, out: &mut Vec<PendingTimer<K, P>>) {
        self.closed = true;
        let (ticks, extras) = (self.ticks, &self.extras);
        self.wheel.drain(|timer| {
            let entry = timer.payload;
            let (deadline_ms, reminders_ms, in_flight, dead_lettered) = match entry.side() {
                Side::Plain { early_ms } => (
                    plain_deadline_ms(ticks, timer.deadline, early_ms),
                    Vec::new(),
                    false,
                    false,
                ),
                Side::Reminder {
                    early_ms,
                    before_ms,
                } => {
                    let due_ms = plain_deadline_ms(ticks, timer.deadline, early_ms);
                    (due_ms.saturating_add(before_ms), vec![due_ms], false, false)
                }
                Side::Extra(at) => {
                    let x = extras.get(at);
                    let remaining = x.reminders.remaining_ms(x.deadline_ms).collect();
                    (x.deadline_ms, remaining, x.in_flight, x.is_dead_letter())
                }
            };
            out.push(PendingTimer {
                id: entry.id,
                deadline_ms,
                reminders_ms,
                in_flight,
                dead_lettered,
                payload: entry.payload,
            });
        });
        self.index.clear();
        self.extras.clear();
        self.fired.clear();
        self.counters.in_flight = 0;
        self.counters.dead_letters = 0;
    }
}

/// Why an ack or snooze names no event in flight.
enum Stale {
    NotInFlight,
    /// The id's timer is another scheduling than the event's.
    OtherEvent,
}

enum Refusal {
    Closed,
    Storage,
}
