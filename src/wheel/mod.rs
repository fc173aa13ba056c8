//! A hierarchical hashed timing wheel (Varghese & Lauck, "Hashed and
//! Hierarchical Timing Wheels", 1987, scheme 7).
//!
//! Time is an integer count of ticks; the wheel knows nothing of
//! milliseconds. There are [`LEVELS`] levels of 64 slots. Level `L` has slots
//! `64^L` ticks wide, so the wheel reaches `64^6 = 2^36` ticks ahead (about
//! two years at 1 ms).
//!
//! # Where a timer sits
//!
//! A pending timer with deadline `when > now` sits on the level of the
//! highest 6-bit group in which `when` and `now` differ, in the slot named by
//! `when`'s bits of that group. So level 0 holds timers due within the current
//! 64-tick block (one deadline per slot), level 1 those in a later 64-tick
//! block of the current 4096-tick block, and so on. The top level is a ring:
//! a deadline in the next rotation of the top level wraps into its slots.
//! Timers with `when <= now` (inserted after the wheel already passed their
//! deadline) sit in the *due list* and fire on the next advance.
//!
//! **Invariant**: for every pending timer, its position is a function of
//! `(now, when)` alone (`Wheel::locate`). Advancing keeps this true because
//! time only moves to the start of the next occupied slot, and the timers of
//! that slot are re-placed (cascaded) relative to the new `now` before
//! anything else happens. Between two slot starts no timer's position changes,
//! so `advance_to` may jump straight across empty stretches. Re-placing always
//! moves a timer to a strictly lower level (or the due list), so a timer
//! cascades at most `LEVELS - 1` times in its life.
//!
//! # Order
//!
//! Slot starts are unique across levels, and every timer on level `L` is due
//! after every timer on the levels below it, so visiting slots in start order
//! fires timers in deadline order. Lists append at the tail and cascading
//! walks them front to back, so timers with equal deadlines fire in the order
//! they were inserted (or last rescheduled). The due list is sorted (stable,
//! in place) before it fires.

mod error;
mod level;
mod slab;

pub use self::error::{InsertError, RescheduleError};

use self::level::{Level, SLOT_BITS, SLOTS};
use self::slab::{NIL, Slab};
use crate::TimerKey;
use std::fmt;

/// Number of levels. `64^LEVELS` ticks is the wheel's reach.
pub const LEVELS: usize = 6;

/// The furthest ahead of [`Wheel::now`] a deadline may be, in ticks
/// (`2^36 - 1`, about 2.2 years at 1 ms per tick).
pub const MAX_DELAY_TICKS: u64 = (1 << (LEVELS as u32 * SLOT_BITS)) - 1;

/// A timer leaving the wheel: fired by an advance, or handed back by
/// [`Wheel::drain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer<T> {
    /// The key [`Wheel::insert`] returned for it (now stale).
    pub key: TimerKey,
    /// Its deadline, in ticks.
    pub deadline: u64,
    /// The payload given at insert.
    pub payload: T,
}

/// What one bounded advance did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advanced {
    /// Timers fired by this call.
    pub fired: usize,
    /// `true` if the wheel reached the requested time with nothing left due;
    /// `false` if the limit stopped it early (call again to continue).
    pub complete: bool,
}

/// A single-threaded hierarchical timing wheel holding payloads of type `T`.
///
/// Insert, cancel and reschedule are O(1); advancing costs O(1) per occupied
/// slot visited plus O(1) per timer fired or cascaded, however much time it
/// crosses. No timer ever fires before its deadline.
///
/// ```
/// use duewheel::wheel::Wheel;
///
/// let mut wheel = Wheel::with_capacity(1024);
/// let reminder = wheel.insert(25 * 60_000, "remind order 42")?;
/// let expiry = wheel.insert(30 * 60_000, "cancel order 42")?;
///
/// // The buyer paid after ten minutes: both timers go.
/// wheel.advance_to(10 * 60_000, |_| unreachable!("nothing is due yet"));
/// assert_eq!(wheel.cancel(reminder), Some("remind order 42"));
/// assert_eq!(wheel.cancel(expiry), Some("cancel order 42"));
///
/// // An unpaid order: its expiry fires once time reaches it.
/// wheel.insert(40 * 60_000, "cancel order 43")?;
/// let mut fired = Vec::new();
/// wheel.advance_to(40 * 60_000, |timer| fired.push(timer.payload));
/// assert_eq!(fired, ["cancel order 43"]);
/// assert!(wheel.is_empty());
/// # Ok::<(), duewheel::wheel::InsertError<&str>>(())
/// ```
pub struct Wheel<T> {
    now: u64,
    levels: [Level; LEVELS],
    /// Head of the list of timers with `deadline <= now`.
    due: u32,
    /// Whether the due list is in deadline order (it usually is).
    due_sorted: bool,
    slab: Slab<T>,
}

/// Where a pending timer is linked.
enum Place {
    Due,
    Slot { level: usize, slot: usize },
}

impl<T> Wheel<T> {
    /// An empty wheel at tick 0.
    pub const fn new() -> Self {
        Self::with_slab(Slab::new())
    }

    /// An empty wheel at tick 0 with room for `capacity` timers before it
    /// allocates.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_slab(Slab::with_capacity(capacity))
    }

    /// An empty wheel whose time starts at tick `now`, with room for
    /// `capacity` timers. Use it when ticks count from an epoch, so that
    /// deadlines near `now` are in range from the first insert.
    pub fn with_capacity_at(capacity: usize, now: u64) -> Self {
        let mut wheel = Self::with_capacity(capacity);
        wheel.now = now;
        wheel
    }

    const fn with_slab(slab: Slab<T>) -> Self {
        Self {
            now: 0,
            levels: [const { Level::new() }; LEVELS],
            due: NIL,
            due_sorted: true,
            slab,
        }
    }

    /// The wheel's current time in ticks: the furthest it was advanced to.
    pub const fn now(&self) -> u64 {
        self.now
    }

    /// Number of pending timers.
    pub const fn len(&self) -> usize {
        self.slab.len()
    }

    /// `true` if no timer is pending.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Timers the wheel can hold without allocating.
    pub fn capacity(&self) -> usize {
        self.slab.capacity()
    }

    /// Heap bytes held by the wheel (everything that grows with the number of
    /// timers). Divide by [`len`](Self::len) for bytes per timer.
    pub fn heap_bytes(&self) -> usize {
        self.slab.heap_bytes()
    }

    /// The latest deadline [`insert`](Self::insert) accepts right now.
    pub const fn max_deadline(&self) -> u64 {
        self.now.saturating_add(MAX_DELAY_TICKS)
    }

    /// Adds a timer due at tick `deadline` and returns its key.
    ///
    /// A deadline at or before [`now`](Self::now) is accepted and fires on the
    /// next advance, never inside this call. A deadline more than
    /// [`MAX_DELAY_TICKS`] ahead is refused, never clamped; the error hands
    /// the payload back.
    pub fn insert(&mut self, deadline: u64, payload: T) -> Result<TimerKey, InsertError<T>> {
        if deadline > self.max_deadline() {
            return Err(InsertError::DeadlineTooFar {
                deadline,
                max: self.max_deadline(),
                payload,
            });
        }
        let (index, generation) = self
            .slab
            .insert(deadline, payload)
            .map_err(InsertError::Full)?;
        self.link(index);
        Ok(TimerKey::new(index, generation))
    }

    /// Removes a pending timer and returns its payload, or `None` if the key
    /// names no pending timer (it fired, was cancelled, or is forged).
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        if !self.contains(key) {
            return None;
        }
        self.unlink(key.index());
        Some(self.slab.remove(key.index()).1)
    }

    /// Moves a pending timer to a new deadline (earlier or later). On error
    /// the timer is left as it was.
    pub fn reschedule(&mut self, key: TimerKey, deadline: u64) -> Result<(), RescheduleError> {
        if !self.contains(key) {
            return Err(RescheduleError::NotFound);
        }
        if deadline > self.max_deadline() {
            return Err(RescheduleError::DeadlineTooFar {
                deadline,
                max: self.max_deadline(),
            });
        }
        self.unlink(key.index());
        self.slab.set_deadline(key.index(), deadline);
        self.link(key.index());
        Ok(())
    }

    /// `true` if `key` names a pending timer.
    pub fn contains(&self, key: TimerKey) -> bool {
        self.slab.is_live(key.index(), key.generation())
    }

    /// The key of the timer pending in slab entry `index` (a key's 4-byte
    /// index half), if any: lets an index outside the wheel store 4 bytes
    /// per timer instead of a whole key (the engine's id index).
    pub(crate) fn key_at(&self, index: u32) -> Option<TimerKey> {
        self.slab
            .live_generation(index)
            .map(|generation| TimerKey::new(index, generation))
    }

    /// The deadline of a pending timer.
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        self.contains(key).then(|| self.slab.deadline(key.index()))
    }

    /// The payload of a pending timer.
    pub fn get(&self, key: TimerKey) -> Option<&T> {
        self.contains(key).then(|| self.slab.payload(key.index()))
    }

    /// The payload of a pending timer, mutably.
    pub fn get_mut(&mut self, key: TimerKey) -> Option<&mut T> {
        if self.contains(key) {
            Some(self.slab.payload_mut(key.index()))
        } else {
            None
        }
    }

    /// The earliest tick at which [`advance_to`](Self::advance_to) has work,
    /// or `None` if the wheel is empty.
    ///
    /// It is never later than the earliest pending deadline. It may be
    /// earlier: when a higher-level slot must be cascaded first, it is that
    /// slot's start. If timers are already due it is [`now`](Self::now).
    /// Costs O(`LEVELS`).
    pub fn next_expiration(&self) -> Option<u64> {
        if self.due != NIL {
            return Some(self.now);
        }
        self.next_slot().map(|(_, _, start)| start)
    }

    /// Advances the wheel to tick `now` and fires every timer with a deadline
    /// at or before it, calling `on_expired` for each in deadline order.
    /// Returns how many fired.
    ///
    /// Time never moves backwards: a `now` earlier than [`Wheel::now`] fires
    /// only the timers already due.
    pub fn advance_to(&mut self, now: u64, on_expired: impl FnMut(Timer<T>)) -> usize {
        self.advance_bounded(now, usize::MAX, on_expired).fired
    }

    /// Like [`advance_to`](Self::advance_to), but fires at most `limit`
    /// timers, so a burst of expiries can be taken in bounded pieces. If it
    /// stops early the rest stay due, [`now`](Self::now) tells how far it got,
    /// and the next advance carries on in deadline order.
    pub fn advance_bounded(
        &mut self,
        now: u64,
        limit: usize,
        mut on_expired: impl FnMut(Timer<T>),
    ) -> Advanced {
        let mut fired = 0;
        loop {
            if self.due != NIL && !self.due_sorted {
                self.slab.sort_by_deadline(&mut self.due);
                self.due_sorted = true;
            }
            while self.due != NIL {
                if fired == limit {
                    return Advanced {
                        fired,
                        complete: false,
                    };
                }
                let index = self.due;
                self.slab.unlink(&mut self.due, index);
                on_expired(self.free(index));
                fired += 1;
            }
            match self.next_slot() {
                Some((0, slot, start)) if start <= now => {
                    debug_assert_eq!(self.due, NIL, "the due list was drained above");
                    // Every timer in a level-0 slot is due exactly at the
                    // slot's start, in insertion order: the slot's list
                    // becomes the due list as it is, in O(1), instead of
                    // being re-placed one timer at a time.
                    self.now = start;
                    self.due = std::mem::replace(self.levels[0].take(slot), NIL);
                    self.due_sorted = true;
                }
                Some((level, slot, start)) if start <= now => {
                    self.now = start;
                    let mut list = self.slab.detach(self.levels[level].take(slot));
                    while let Some(index) = self.slab.pop_detached(&mut list) {
                        debug_assert!(
                            matches!(self.locate(index), Place::Due)
                                || matches!(self.locate(index), Place::Slot { level: l, .. } if l < level),
                            "cascading must move a timer down"
                        );
                        self.link(index);
                    }
                }
                _ => break,
            }
        }
        self.now = self.now.max(now);
        Advanced {
            fired,
            complete: true,
        }
    }

    /// Calls `f(key, payload)` for every pending timer, in no particular
    /// order, without changing anything. O(capacity).
    pub fn for_each(&self, mut f: impl FnMut(TimerKey, &T)) {
        self.slab.for_each(|index, generation, _, payload| {
            f(TimerKey::new(index, generation), payload);
        });
    }

    /// Removes every pending timer without firing it, calling `f` for each
    /// (in no particular order). The wheel keeps its time and capacity.
    pub fn drain(&mut self, mut f: impl FnMut(Timer<T>)) {
        self.slab.drain(|index, generation, deadline, payload| {
            f(Timer {
                key: TimerKey::new(index, generation),
                deadline,
                payload,
            });
        });
        for level in &mut self.levels {
            level.clear();
        }
        self.due = NIL;
        self.due_sorted = true;
    }

    /// Where the timer at `index` belongs, given the current time. This is
    /// the invariant of the module docs: position depends on `(now, when)`.
    fn locate(&self, index: u32) -> Place {
        let when = self.slab.deadline(index);
        if when <= self.now {
            return Place::Due;
        }
        // The highest differing bit names the level; `| (SLOTS - 1)` makes
        // differences inside the lowest group land on level 0.
        let differing = (self.now ^ when) | (SLOTS as u64 - 1);
        let significant = u64::BITS - 1 - differing.leading_zeros();
        // Deadlines in the next rotation of the top level wrap into it.
        let level = ((significant / SLOT_BITS) as usize).min(LEVELS - 1);
        Place::Slot {
            level,
            slot: Level::slot_for(level, when),
        }
    }

    fn link(&mut self, index: u32) {
        match self.locate(index) {
            Place::Due => {
                if self.due != NIL {
                    let last = self.slab.last(self.due);
                    if self.slab.deadline(index) < self.slab.deadline(last) {
                        self.due_sorted = false;
                    }
                }
                self.slab.push_back(&mut self.due, index);
            }
            Place::Slot { level, slot } => self.levels[level].push(&mut self.slab, slot, index),
        }
    }

    fn unlink(&mut self, index: u32) {
        match self.locate(index) {
            Place::Due => self.slab.unlink(&mut self.due, index),
            Place::Slot { level, slot } => self.levels[level].unlink(&mut self.slab, slot, index),
        }
    }

    /// Frees an unlinked entry and packages it for the caller.
    fn free(&mut self, index: u32) -> Timer<T> {
        let generation = self.slab.generation(index);
        let (deadline, payload) = self.slab.remove(index);
        Timer {
            key: TimerKey::new(index, generation),
            deadline,
            payload,
        }
    }

    /// The next occupied slot in time order: `(level, slot, start tick)`.
    /// Every timer on a level is due after every timer on the levels below,
    /// so the lowest non-empty level holds the next slot.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        let (level, lvl) = self
            .levels
            .iter()
            .enumerate()
            .find(|(_, lvl)| !lvl.is_empty())?;
        // The slot holding `now` comes last: only the top level can have a
        // timer there, and it belongs to the next rotation.
        let after_now = (Level::slot_for(level, self.now) + 1) % SLOTS;
        let slot = lvl.next_occupied(after_now)?;
        let slot_ticks = 1u64 << (level as u32 * SLOT_BITS);
        let level_ticks = slot_ticks << SLOT_BITS;
        let mut start = (self.now & !(level_ticks - 1)) + slot as u64 * slot_ticks;
        if start <= self.now {
            // Only the top level wraps: the slot is in its next rotation.
            debug_assert_eq!(level, LEVELS - 1);
            start += level_ticks;
        }
        Some((level, slot, start))
    }
}

impl<T> Default for Wheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Wheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wheel")
            .field("now", &self.now)
            .field("len", &self.len())
            .field("next_expiration", &self.next_expiration())
            .finish_non_exhaustive()
    }
}
