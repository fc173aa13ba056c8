//! The engine's entry: what a shard's wheel holds for one timer, and the
//! side state that only some timers need.
//!
//! Invariant: an [`Entry`] is one of three kinds ([`Side`]):
//! - *plain*: no reminder left, never fired, attempt 1, due at its
//!   deadline; the deadline is the start of its wheel tick less `early_ms`,
//!   so it is not stored twice;
//! - *one reminder*: exactly one reminder, not fired yet, and nothing
//!   else; the entry sits at the reminder's tick, `early_ms` (less the
//!   [`INLINE_REMINDER`] bit) places the reminder's due time in that tick
//!   and `extra` holds the reminder's offset, so the deadline is their sum;
//! - every other timer (more reminders, an offset or tick beyond 32 bits,
//!   or once its `Expired` event awaits acks) has an [`Extra`] in its
//!   shard's [`Extras`] under `extra`, which holds its deadline and stages;
//!   freeing the timer frees its `Extra`.
//!
//! So a timer with `K = P = u64` and at most one reminder costs the wheel
//! one 48-byte slab entry (links and generation included; a unit test pins
//! it), and nothing else but its 4-byte slot in the id index.

use crate::clock::Ticks;
use crate::journal::{MAX_REMINDERS, TimerState};

/// `Entry::extra` of a plain timer.
pub(crate) const NO_EXTRA: u32 = u32::MAX;

/// The bit of `Entry::early_ms` that marks a one-reminder entry.
pub(crate) const INLINE_REMINDER: u32 = 1 << 31;

/// What kind of entry (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Plain { early_ms: u32 },
    Reminder { early_ms: u32, before_ms: u64 },
    Extra(u32),
}

impl<K, P> Entry<K, P> {
    pub(crate) fn side(&self) -> Side {
        if self.early_ms & INLINE_REMINDER != 0 {
            Side::Reminder {
                early_ms: self.early_ms & !INLINE_REMINDER,
                before_ms: u64::from(self.extra),
            }
        } else if self.extra == NO_EXTRA {
            Side::Plain {
                early_ms: self.early_ms,
            }
        } else {
            Side::Extra(self.extra)
        }
    }

    /// The index of its `Extra`, if it has one.
    pub(crate) fn extra_index(&self) -> Option<u32> {
        match self.side() {
            Side::Extra(at) => Some(at),
            _ => None,
        }
    }
}

/// One timer as its shard's wheel holds it.
pub(crate) struct Entry<K, P> {
    pub(crate) id: K,
    pub(crate) payload: P,
    /// Plain timers: how far the deadline lies before its tick's start (the
    /// tick rounds up). Unused with an `Extra`.
    pub(crate) early_ms: u32,
    /// Index of this timer's [`Extra`], or [`NO_EXTRA`].
    pub(crate) extra: u32,
}

/// What only some timers carry: reminders, and the state of an `Expired`
/// event that awaits acks (in flight) or was snoozed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Extra {
    pub(crate) deadline_ms: u64,
    /// When its wheel entry is due (UTC ms): the next stage, or, once in
    /// flight, the redelivery time, or a snooze's end.
    pub(crate) due_ms: u64,
    pub(crate) reminders: Reminders,
    /// Groups that acked the event in flight (bit `g` for group `g`).
    pub(crate) acked: u64,
    /// The delivery token of this timer's `Expired` events (see
    /// [`Event::token`](crate::Event::token)); 0 until it first fires.
    pub(crate) token: u64,
    /// Delivery attempt of the `Expired` event (1 until redelivered or
    /// snoozed).
    pub(crate) attempt: u32,
    /// This timer's own attempt bound (`ScheduleOptions::max_attempts`), 0
    /// for the engine's, or [`DEAD_LETTERED`] once dead-lettered (the bound
    /// no longer matters then). One field for both keeps an `Extra` at 80
    /// bytes.
    pub(crate) limit: u16,
    /// Snoozes taken so far.
    pub(crate) snoozes: u8,
    /// `Expired` was emitted and awaits acks (or, dead-lettered, its
    /// `DeadLetter` event awaits the dead-letter group's ack).
    pub(crate) in_flight: bool,
}

/// `Extra::limit` of a dead-lettered timer.
pub(crate) const DEAD_LETTERED: u16 = u16::MAX;

/// The largest attempt bound one timer may carry.
pub(crate) const MAX_OWN_ATTEMPTS: u16 = DEAD_LETTERED - 1;

impl Extra {
    /// A timer with reminders (or a deadline a plain entry cannot hold).
    pub(crate) fn waiting(deadline_ms: u64, reminders: Reminders) -> Self {
        Self {
            deadline_ms,
            due_ms: reminders.next_due_ms(deadline_ms),
            reminders,
            acked: 0,
            token: 0,
            attempt: 1,
            limit: 0,
            snoozes: 0,
            in_flight: false,
        }
    }

    /// `true` once dead-lettered.
    pub(crate) const fn is_dead_letter(&self) -> bool {
        self.limit == DEAD_LETTERED
    }

    /// `true` if the delivery in flight was the last one `max_attempts`
    /// (the engine's bound) allows. Snoozes do not count: a snoozed
    /// delivery was answered, not failed.
    pub(crate) fn out_of_attempts(&self, max_attempts: u32) -> bool {
        let bound = if self.limit == 0 {
            max_attempts
        } else {
            u32::from(self.limit)
        };
        self.attempt.saturating_sub(u32::from(self.snoozes)) >= bound
    }

    /// The journal's view.
    pub(crate) fn state(&self) -> TimerState {
        let (before_ms, len, fired) = self.reminders.parts();
        TimerState {
            deadline_ms: self.deadline_ms,
            due_ms: self.due_ms,
            attempt: self.attempt,
            snoozes: self.snoozes,
            flight: self.in_flight.then_some(self.acked),
            reminders_before_ms: before_ms,
            reminders_len: len,
            reminders_fired: fired,
            max_attempts: if self.is_dead_letter() { 0 } else { self.limit },
            dead_letter: self.is_dead_letter(),
        }
    }

    /// Rebuilds side state from the journal's view; `None` if malformed.
    pub(crate) fn from_state(state: &TimerState) -> Option<Self> {
        let mut reminders = Reminders::new(state.reminders().iter().copied())?;
        if state.reminders_fired > reminders.len {
            return None;
        }
        reminders.fired = state.reminders_fired;
        Some(Self {
            deadline_ms: state.deadline_ms,
            due_ms: state.due_ms,
            reminders,
            acked: state.flight.unwrap_or(0),
            token: 0,
            attempt: state.attempt,
            limit: if state.dead_letter {
                DEAD_LETTERED
            } else {
                state.max_attempts.min(MAX_OWN_ATTEMPTS)
            },
            snoozes: state.snoozes,
            in_flight: state.flight.is_some(),
        })
    }
}

/// The deadline of a plain entry due at `tick`.
pub(crate) fn plain_deadline_ms(ticks: Ticks, tick: u64, early_ms: u32) -> u64 {
    ticks.start_ms(tick).saturating_sub(u64::from(early_ms))
}

/// `early_ms` for a plain entry with deadline `deadline_ms`, or `None` if
/// the tick is too long for it (the timer then needs an `Extra`).
pub(crate) fn plain_early_ms(ticks: Ticks, deadline_ms: u64) -> Option<u32> {
    let start_ms = ticks.start_ms(ticks.deadline_tick(deadline_ms));
    u32::try_from(start_ms.checked_sub(deadline_ms)?)
        .ok()
        .filter(|early| early & INLINE_REMINDER == 0)
}

/// Where a waiting timer goes: its due tick and its entry's `early_ms` and
/// `extra` (see the module docs), storing an `Extra` in `extras` if it
/// needs one.
pub(crate) fn placement(
    ticks: Ticks,
    extras: &mut Extras,
    deadline_ms: u64,
    reminders: Reminders,
) -> (u64, u32, u32) {
    if !reminders.remaining() {
        if let Some(early_ms) = plain_early_ms(ticks, deadline_ms) {
            return (ticks.deadline_tick(deadline_ms), early_ms, NO_EXTRA);
        }
    } else if let Some(before_ms) = reminders.single_unfired() {
        let due_ms = deadline_ms.checked_sub(before_ms);
        let early = due_ms.and_then(|due_ms| Some((due_ms, plain_early_ms(ticks, due_ms)?)));
        if let (Some((due_ms, early_ms)), Ok(before)) = (early, u32::try_from(before_ms)) {
            return (
                ticks.deadline_tick(due_ms),
                early_ms | INLINE_REMINDER,
                before,
            );
        }
    }
    let extra = Extra::waiting(deadline_ms, reminders);
    let tick = ticks.deadline_tick(extra.due_ms);
    (tick, 0, extras.insert(extra))
}

/// Reminder offsets before the deadline, earliest reminder first, and how
/// many have fired.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reminders {
    before_ms: [u64; MAX_REMINDERS],
    pub(crate) len: u8,
    pub(crate) fired: u8,
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

    /// Moves every reminder whose time is already past at `now_ms` to
    /// `now_ms` (its offset becomes the time left to the deadline), and
    /// returns how many moved. Such a reminder fires at once, as it would
    /// anyway; moved, it is due at the tick the engine is at, so it is not
    /// counted as lateness (it was never due at a tick the engine had
    /// passed).
    pub(crate) fn clamp_past(&mut self, deadline_ms: u64, now_ms: u64) -> u8 {
        let left_ms = deadline_ms.saturating_sub(now_ms);
        let mut moved = 0;
        for before in &mut self.before_ms[self.fired as usize..self.len as usize] {
            if *before > left_ms {
                *before = left_ms;
                moved += 1;
            }
        }
        moved
    }

    /// Offsets, count and fired count, for the journal.
    fn parts(&self) -> ([u64; MAX_REMINDERS], u8, u8) {
        (self.before_ms, self.len, self.fired)
    }

    /// The offset of the one reminder, if there is exactly one and it has
    /// not fired.
    pub(crate) fn single_unfired(&self) -> Option<u64> {
        (self.len == 1 && self.fired == 0).then_some(self.before_ms[0])
    }

    /// `true` while a reminder has not fired yet.
    pub(crate) const fn remaining(&self) -> bool {
        self.fired < self.len
    }

    /// When the next stage is due: the next reminder, or the deadline.
    pub(crate) fn next_due_ms(&self, deadline_ms: u64) -> u64 {
        if self.fired < self.len {
            deadline_ms.saturating_sub(self.before_ms[self.fired as usize])
        } else {
            deadline_ms
        }
    }

    /// Due times (UTC ms) of the reminders not yet fired.
    pub(crate) fn remaining_ms(&self, deadline_ms: u64) -> impl Iterator<Item = u64> + '_ {
        self.before_ms[self.fired as usize..self.len as usize]
            .iter()
            .map(move |before| deadline_ms.saturating_sub(*before))
    }
}

/// The shard's side table of [`Extra`]s: a vector with a free list, so a
/// freed slot is reused before the vector grows. It holds only the timers
/// that need side state, at most the shard's pending cap.
#[derive(Default)]
pub(crate) struct Extras {
    slots: Vec<Extra>,
    free: Vec<u32>,
}

impl Extras {
    /// Stores `extra`; its index goes into the entry.
    pub(crate) fn insert(&mut self, extra: Extra) -> u32 {
        if let Some(at) = self.free.pop() {
            self.slots[at as usize] = extra;
            at
        } else {
            // The shard cap is below `u32::MAX` (checked at build), so this
            // never reaches `NO_EXTRA`.
            let at = u32::try_from(self.slots.len()).unwrap_or(NO_EXTRA - 1);
            self.slots.push(extra);
            at
        }
    }

    pub(crate) fn get(&self, at: u32) -> &Extra {
        &self.slots[at as usize]
    }

    pub(crate) fn get_mut(&mut self, at: u32) -> &mut Extra {
        &mut self.slots[at as usize]
    }

    /// Frees the slot of an ended timer.
    pub(crate) fn remove(&mut self, at: u32) -> Extra {
        self.free.push(at);
        self.slots[at as usize]
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Extra>() + self.free.capacity() * 4
    }

    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wheel::Wheel;

    /// The whole wheel entry for `K = P = u64`, links and generation
    /// included, fits one cache line (issue #13).
    #[test]
    fn a_u64_u64_entry_fits_one_cache_line_in_the_wheel() {
        let capacity = 1 << 16;
        let wheel = Wheel::<Entry<u64, u64>>::with_capacity(capacity);
        let per_entry = wheel.heap_bytes() / capacity;
        assert!(per_entry <= 64, "{per_entry} B per wheel entry");
        assert_eq!(size_of::<Entry<u64, u64>>(), 24);
        // The side record docs/GUARANTEES.md counts in the memory bound.
        assert_eq!(size_of::<Extra>(), 80);
    }

    #[test]
    fn one_unfired_reminder_needs_no_side_state_and_more_do() {
        let ticks = Ticks::new(10);
        let mut extras = Extras::default();
        let one = Reminders::new([60_005]).unwrap();
        let (tick, early_ms, extra) = placement(ticks, &mut extras, 1_000_003, one);
        let entry = Entry {
            id: 1u64,
            payload: 1u64,
            early_ms,
            extra,
        };
        let Side::Reminder {
            early_ms,
            before_ms,
        } = entry.side()
        else {
            panic!("{:?}", entry.side());
        };
        let due_ms = plain_deadline_ms(ticks, tick, early_ms);
        assert_eq!(
            (due_ms, due_ms + before_ms),
            (1_000_003 - 60_005, 1_000_003)
        );
        assert_eq!(extras.slots.len(), 0);
        let two = Reminders::new([60_000, 5_000]).unwrap();
        let (_, _, extra) = placement(ticks, &mut extras, 1_000_000, two);
        assert_eq!(extra, 0, "two reminders go to the side table");
    }

    #[test]
    fn a_plain_deadline_is_rebuilt_from_its_tick() {
        let ticks = Ticks::new(10);
        for deadline_ms in [0, 1, 9, 10, 11, 12_345] {
            let early = plain_early_ms(ticks, deadline_ms).unwrap();
            let tick = ticks.deadline_tick(deadline_ms);
            assert_eq!(plain_deadline_ms(ticks, tick, early), deadline_ms);
        }
    }
}
