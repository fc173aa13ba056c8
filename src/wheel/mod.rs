//! A hierarchical hashed timing wheel (Varghese & Lauck, "Hashed and
//! Hierarchical Timing Wheels", 1987, scheme 7), with an overflow list
//! beyond its reach.
//!
//! Time is an integer count of ticks; the wheel knows nothing of
//! milliseconds. There are [`LEVELS`] levels of 64 slots. Level `L` has slots
//! `64^L` ticks wide, so the levels reach `64^6 = 2^36` ticks ahead (about
//! two years at 1 ms). A later deadline is accepted too and waits in the
//! *overflow list* until time comes within reach of it.
//!
//! # Where a timer sits
//!
//! A pending timer with deadline `when` sits:
//! - in the *due list* if `when <= now` (inserted after the wheel already
//!   passed its deadline): it fires on the next advance;
//! - in the *overflow list* if `when > now + MAX_DELAY_TICKS`;
//! - otherwise on the level of the highest 6-bit group in which `when` and
//!   `now` differ, in the slot named by `when`'s bits of that group. So
//!   level 0 holds timers due within the current 64-tick block (one deadline
//!   per slot), level 1 those in a later 64-tick block of the current
//!   4096-tick block, and so on. The top level is a ring: a deadline in the
//!   next rotation of the top level wraps into its slots.
//!
//! **Invariant**: for every pending timer, its place is a function of
//! `(now, when)` alone (`Wheel::place_of`). Advancing keeps this true because
//! time only moves to the start of the next occupied slot, or to the tick at
//! which the earliest overflow deadline comes within reach, and the timers
//! concerned are re-placed relative to the new `now` before anything else
//! looks at a place. Between those points no timer's place changes, so
//! `advance_to` may jump straight across empty stretches: an advance with
//! nothing due costs O(`LEVELS`) however far it goes (an idle wheel
//! follows the clock at no cost). Cascading always moves a timer to a
//! strictly lower level (or the due list), so a timer cascades at most
//! `LEVELS - 1` times once it is in the levels.
//!
//! # Order
//!
//! Slot starts are unique across levels, and every timer on level `L` is due
//! after every timer on the levels below it, so visiting slots in start order
//! fires timers in deadline order. Slots append at the end and cascading
//! walks them front to back, so timers with equal deadlines fire in the order
//! they were inserted (or last rescheduled). The due list is sorted (stable)
//! before it fires if anything was appended to it out of order.
//!
//! # Layout: slots are arrays of indices, cancel buries in place
//!
//! Entries live in a chunked slab (`slab.rs`: deadline, payload, generation
//! and the position of the entry's reference in its slot; 24 bytes for a
//! `u64` payload) with one live bit per entry in a separate bitmap. A slot
//! (`slot.rs`) is a `Vec<u32>` of slab indices. So:
//! - **insert** writes one entry and appends one index;
//! - **cancel** touches only the timer's entry (generation check, payload
//!   out, live bit cleared): the index stays in its slot, *buried*, and its
//!   entry is not reused until the slot lets it go. Once buried timers
//!   outnumber live ones (plus 1024), every cancel also *reaps* one slot
//!   (round robin over all slots): buried indices are released by reading
//!   only the bitmap, and a slot that is two thirds dead is compacted. A
//!   reaping phase ends when buried timers are at most half the live ones,
//!   so the reaping work (O(slot) per step, one round at most per phase) is
//!   paid for by the cancels that started the phase, and buried entries
//!   never exceed the live ones by more than about 1024 + 386. One cancel
//!   costs at most one slot's length (all pending timers, if they share a
//!   slot). A timer cancelled right after its insert (its index still last
//!   in its slot) leaves at once, so insert+cancel pairs reuse one entry;
//! - **reschedule** punches a hole at the recorded position and appends the
//!   index to its new slot; a slot more than half holes is compacted;
//! - **cascading and firing** walk a slot's array front to back, skipping
//!   holes and releasing buried indices from the bitmap alone, and read the
//!   entries of a batch of 64 live indices before re-placing any of them, so
//!   the cache misses of scattered entries overlap.
//!
//! Why: the previous layout linked entries into doubly linked slot lists. A
//! random-order cancel then unlinked from two random neighbours (three cache
//! misses in a 32 MB slab at 1M timers, each a dependent chain), and a drain
//! chased `next` pointers scattered through the slab, one miss at a time.
//! Measured on the payment workload (1M timers uniform over 30 min, 70%
//! cancelled in random order, the rest drained; on-CPU time, best of 5, one
//! process, shared 2-core machine): linked lists cancelled in about 150 ns
//! and drained in about 50 ms; arrays with eager swap-remove would touch
//! the entry, the slot position and the moved entry (three misses again);
//! arrays with buried cancels: 30–43 ns per cancel, 31–34 ms drain, and
//! reading a batch of entries ahead takes the drain from 42–47 ms to
//! 31–32 ms. `docs/BENCHMARKS.md` has the figures against the peers.
//!
//! # Keys
//!
//! A [`TimerKey`] is the entry's index and generation. Generations start at
//! a per-wheel seed (see `crate::key`), so a key from another wheel misses.

mod error;
mod level;
mod slab;
mod slot;

pub use self::error::{InsertError, RescheduleError};

use self::level::{Level, SLOT_BITS, SLOTS};
use self::slab::Slab;
use self::slot::{HOLE, Slot, Spare};
use crate::TimerKey;
use std::fmt;

/// Number of levels. `64^LEVELS` ticks is the reach of the levels.
pub const LEVELS: usize = 6;

/// The furthest ahead of [`Wheel::now`] a deadline sits in the levels, in
/// ticks (`2^36 - 1`, about 2.2 years at 1 ms per tick). Later deadlines
/// are accepted too and wait in the overflow list.
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
/// Insert, cancel and reschedule are O(1) (cancel amortized: see the module
/// docs); advancing costs O(1) per occupied slot visited plus O(1) per timer
/// fired or cascaded, however much time it crosses. No timer ever fires
/// before its deadline, and every deadline is accepted: one beyond
/// [`MAX_DELAY_TICKS`] waits in the overflow list until it comes in range.
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
    /// Timers with `deadline <= now`; `due[..due_head]` already fired.
    due: Slot,
    due_head: usize,
    /// The latest deadline appended to the due list since it was last
    /// sorted or emptied; an earlier one makes it unsorted.
    due_max: u64,
    due_sorted: bool,
    /// Timers with `deadline > now + MAX_DELAY_TICKS`.
    overflow: Slot,
    /// At most the earliest deadline in the overflow list (`u64::MAX` if
    /// it is empty); exact after every re-examination.
    overflow_min: u64,
    /// In a reaping phase: every cancel reaps one slot.
    reaping: bool,
    /// Emptied slot buffers kept for reuse.
    spare: Spare,
    /// The index the last insert used, while its reference may still be
    /// last in its slot ([`HOLE`] otherwise).
    last_inserted: u32,
    /// The next place a reaping step looks at: level slots in order, then
    /// the due list, then the overflow list.
    reap_cursor: usize,
    slab: Slab<T>,
}

/// Timers whose entries cascading and firing read ahead at once.
const BATCH: usize = 64;

/// Buried timers beyond the live ones that start a reaping phase.
const REAP_SLACK: usize = 1024;

/// Where a pending timer is referenced.
#[derive(Clone, Copy)]
enum Place {
    Due,
    Slot { level: usize, slot: usize },
    Overflow,
}

/// The next thing an advance must do.
enum Step {
    /// Cascade or fire slot `slot` of `level`, which starts at `start`.
    Slot {
        level: usize,
        slot: usize,
        start: u64,
    },
    /// Re-examine the overflow list at tick `at`.
    Overflow { at: u64 },
}

impl<T> Wheel<T> {
    /// An empty wheel at tick 0.
    pub const fn new() -> Self {
        Self::with_slab(Slab::new())
    }

    /// An empty wheel at tick 0 with room for `capacity` timers before it
    /// allocates entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_slab(Slab::with_capacity(capacity))
    }

    /// An empty wheel whose time starts at tick `now`, with room for
    /// `capacity` timers. Use it when ticks count from an epoch, so that
    /// deadlines near `now` sit in the levels from the first insert.
    pub fn with_capacity_at(capacity: usize, now: u64) -> Self {
        let mut wheel = Self::with_capacity(capacity);
        wheel.now = now;
        wheel
    }

    const fn with_slab(slab: Slab<T>) -> Self {
        Self {
            now: 0,
            levels: [const { Level::new() }; LEVELS],
            due: Slot::new(),
            due_head: 0,
            due_max: 0,
            due_sorted: true,
            overflow: Slot::new(),
            overflow_min: u64::MAX,
            reaping: false,
            spare: Spare::new(),
            last_inserted: HOLE,
            reap_cursor: 0,
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

    /// Timers the wheel can hold without allocating entries.
    pub fn capacity(&self) -> usize {
        self.slab.capacity()
    }

    /// Heap bytes held by the wheel (everything that grows with the number of
    /// timers: entries, slot arrays, bitmap, free stack). Divide by
    /// [`len`](Self::len) for bytes per timer.
    pub fn heap_bytes(&self) -> usize {
        self.slab.heap_bytes()
            + self.levels.iter().map(Level::heap_bytes).sum::<usize>()
            + self.due.heap_bytes()
            + self.overflow.heap_bytes()
            + self.spare.heap_bytes()
    }

    /// The latest deadline that sits in the levels right now; a later one
    /// is accepted too, into the overflow list.
    pub const fn max_deadline(&self) -> u64 {
        self.now.saturating_add(MAX_DELAY_TICKS)
    }

    /// Adds a timer due at tick `deadline` and returns its key.
    ///
    /// A deadline at or before [`now`](Self::now) is accepted and fires on the
    /// next advance, never inside this call. A deadline beyond
    /// [`max_deadline`](Self::max_deadline) is accepted into the overflow
    /// list and moves into the levels once the wheel's time comes within
    /// [`MAX_DELAY_TICKS`] of it. The only refusal is
    /// [`InsertError::Full`], which hands the payload back.
    pub fn insert(&mut self, deadline: u64, payload: T) -> Result<TimerKey, InsertError<T>> {
        let place = self.place_of(deadline);
        let pos = self.slot_mut(place).refs.len();
        let (index, generation) = self
            .slab
            .insert(deadline, payload, pos)
            .map_err(InsertError::Full)?;
        self.push(place, deadline, index);
        self.last_inserted = index;
        Ok(TimerKey::new(index, generation))
    }

    /// Removes a pending timer and returns its payload, or `None` if the key
    /// names no pending timer (it fired, was cancelled, is from another
    /// wheel, or is forged).
    ///
    /// Touches only the timer's entry: its reference stays in its slot,
    /// buried, until the slot is reached or compacted (see the module docs).
    #[inline]
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let index = key.index();
        let (deadline, payload) = self.slab.take_live(index, key.generation())?;
        if index == self.last_inserted {
            // Cancelled right after it was inserted: its reference is still
            // last in its slot, so it leaves at once and the next insert
            // reuses its entry while it is in cache. (Checked against the
            // last insert only: looking at the slot of every cancel would
            // put a load after the entry's cache miss on every cancel.)
            self.last_inserted = HOLE;
            let place = self.place_of(deadline);
            let slot = self.slot_mut(place);
            if slot.refs.last() == Some(&index) {
                slot.refs.pop();
                if let Place::Slot { level, slot } = place {
                    self.levels[level].settle(slot);
                }
                self.slab.release(index);
                return Some(payload);
            }
        }
        if self.reaping || self.slab.buried() > self.slab.len() + REAP_SLACK {
            self.reap_step();
        }
        Some(payload)
    }

    /// Moves a pending timer to a new deadline (earlier or later, any
    /// distance ahead). On error the timer is left as it was.
    pub fn reschedule(&mut self, key: TimerKey, deadline: u64) -> Result<(), RescheduleError> {
        if !self.contains(key) {
            return Err(RescheduleError::NotFound);
        }
        let index = key.index();
        let old = self.place_of(self.slab.deadline(index));
        let pos = self.slab.pos(index);
        self.punch(old, pos);
        self.slab.set_deadline(index, deadline);
        let place = self.place_of(deadline);
        let pos = self.slot_mut(place).refs.len();
        self.slab.set_pos(index, pos);
        self.push(place, deadline, index);
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
    /// slot's start, and when the overflow list must be re-examined, that
    /// tick. If timers are already due it is [`now`](Self::now). Costs
    /// O(`LEVELS`).
    pub fn next_expiration(&self) -> Option<u64> {
        if self.is_empty() {
            return None;
        }
        if self.due_head < self.due.refs.len() {
            return Some(self.now);
        }
        match self.next_step()? {
            Step::Slot { start, .. } => Some(start),
            Step::Overflow { at } => Some(at),
        }
    }

    /// Advances the wheel to tick `now` and fires every timer with a deadline
    /// at or before it, calling `on_expired` for each in deadline order.
    /// Returns how many fired.
    ///
    /// Time never moves backwards: a `now` earlier than [`Wheel::now`] fires
    /// only the timers already due. An advance with nothing due costs
    /// O(`LEVELS`) however far it jumps.
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
            // Before anything else can look at a timer's place: the overflow
            // list holds only deadlines beyond the levels' reach.
            if self.overflow_due() {
                let refs = self.overflow.take();
                self.overflow_min = u64::MAX;
                self.replace_all(&refs);
                self.spare.give(refs);
            }
            if !self.fire_due(limit, &mut fired, &mut on_expired) {
                return Advanced {
                    fired,
                    complete: false,
                };
            }
            match self.next_step() {
                Some(Step::Slot {
                    level: 0,
                    slot,
                    start,
                }) if start <= now => {
                    // Every timer in a level-0 slot is due exactly at the
                    // slot's start, in insertion order: the slot's array
                    // becomes the due list as it is, positions and all.
                    self.now = start;
                    let refs = self.levels[0].take(slot);
                    let spent = std::mem::replace(&mut self.due.refs, refs);
                    self.spare.give(spent);
                    self.due_head = 0;
                    self.due_max = start;
                    self.due_sorted = true;
                }
                Some(Step::Slot { level, slot, start }) if start <= now => {
                    self.now = start;
                    let refs = self.levels[level].take(slot);
                    self.replace_all(&refs);
                    self.spare.give(refs);
                }
                Some(Step::Overflow { at }) if at <= now => self.now = at,
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
        self.due.clear();
        self.due_head = 0;
        self.due_sorted = true;
        self.overflow.clear();
        self.overflow_min = u64::MAX;
        self.reaping = false;
    }

    /// Where a timer due at `when` belongs, given the current time. This is
    /// the invariant of the module docs: position depends on `(now, when)`.
    #[inline]
    fn place_of(&self, when: u64) -> Place {
        if when <= self.now {
            return Place::Due;
        }
        if when > self.max_deadline() {
            return Place::Overflow;
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

    #[inline]
    fn slot_mut(&mut self, place: Place) -> &mut Slot {
        match place {
            Place::Due => &mut self.due,
            Place::Slot { level, slot } => self.levels[level].slot_mut(slot),
            Place::Overflow => &mut self.overflow,
        }
    }

    /// Appends live `index`, due at `when`, to `place`; its entry already
    /// records the position.
    #[inline]
    fn push(&mut self, place: Place, when: u64, index: u32) {
        match place {
            Place::Due => {
                if when < self.due_max {
                    self.due_sorted = false;
                }
                self.due_max = self.due_max.max(when);
                self.due.push(index, &mut self.spare);
            }
            Place::Slot { level, slot } => {
                self.levels[level].push(slot, index, &mut self.spare);
            }
            Place::Overflow => {
                self.overflow_min = self.overflow_min.min(when);
                self.overflow.push(index, &mut self.spare);
            }
        }
    }

    /// Punches a hole at `pos` of `place` (its timer moves elsewhere),
    /// compacting the slot if it is now mostly holes.
    fn punch(&mut self, place: Place, pos: usize) {
        match place {
            Place::Due => {
                if self.due.punch(pos, self.due_head) {
                    self.due.compact(&mut self.slab, self.due_head);
                    self.due_head = 0;
                }
            }
            Place::Slot { level, slot } => self.levels[level].punch(&mut self.slab, slot, pos),
            Place::Overflow => {
                if self.overflow.punch(pos, 0) {
                    self.overflow.compact(&mut self.slab, 0);
                }
            }
        }
    }

    /// Reaps the next non-empty slot in a round over every slot, the due
    /// list and the overflow list, and ends the reaping phase once buried
    /// timers are few again (see the module docs).
    #[cold]
    #[inline(never)]
    fn reap_step(&mut self) {
        const PLACES: usize = LEVELS * SLOTS + 2;
        self.reaping = true;
        for _ in 0..PLACES {
            let at = self.reap_cursor;
            self.reap_cursor = (at + 1) % PLACES;
            let reaped = if at < LEVELS * SLOTS {
                self.levels[at / SLOTS].reap_if_occupied(&mut self.slab, at % SLOTS)
            } else if at == LEVELS * SLOTS {
                let pending = self.due.refs.len() > self.due_head;
                if pending && self.due.reap(&mut self.slab, self.due_head) {
                    self.due_head = 0;
                }
                pending
            } else {
                let pending = !self.overflow.is_empty();
                if pending {
                    self.overflow.reap(&mut self.slab, 0);
                }
                pending
            };
            if reaped {
                break;
            }
        }
        if self.slab.buried() <= self.slab.len() / 2 + REAP_SLACK / 2 {
            self.reaping = false;
        }
    }

    /// Re-places every live reference of a slot taken out of the wheel
    /// relative to the new `now`, releasing the buried ones. Cascading
    /// always moves a timer to a strictly lower level (or the due list);
    /// re-examining the overflow list moves a timer into the levels or
    /// keeps it there.
    fn replace_all(&mut self, refs: &[u32]) {
        let mut when = [0u64; BATCH];
        for batch in refs.chunks(BATCH) {
            // Read the batch's deadlines first: independent loads of
            // scattered entries, so their cache misses overlap instead of
            // each waiting behind the previous timer's re-placing.
            for (when, &index) in when.iter_mut().zip(batch) {
                if index != HOLE && self.slab.is_occupied(index) {
                    *when = self.slab.deadline(index);
                }
            }
            for (&when, &index) in when.iter().zip(batch) {
                if index == HOLE {
                    continue;
                }
                if !self.slab.is_occupied(index) {
                    self.slab.release(index);
                    continue;
                }
                let place = self.place_of(when);
                let pos = self.slot_mut(place).refs.len();
                self.slab.set_pos(index, pos);
                self.push(place, when, index);
            }
        }
    }

    /// Fires the due list, sorting it first if needed. Returns `false` if
    /// `limit` stopped it before the list was empty.
    fn fire_due(
        &mut self,
        limit: usize,
        fired: &mut usize,
        on_expired: &mut impl FnMut(Timer<T>),
    ) -> bool {
        if self.due_head == self.due.refs.len() {
            return true;
        }
        if !self.due_sorted {
            self.due.compact(&mut self.slab, self.due_head);
            self.due_head = 0;
            let slab = &self.slab;
            // Stable: equal deadlines keep their insertion order.
            self.due.refs.sort_by_key(|&index| slab.deadline(index));
            for (pos, &index) in self.due.refs.iter().enumerate() {
                self.slab.set_pos(index, pos);
            }
            self.due_sorted = true;
        }
        while self.due_head < self.due.refs.len() {
            if self.due_head.is_multiple_of(BATCH) {
                // Touch the next batch's entries before firing any of them,
                // so that their cache misses overlap (see `replace_all`).
                let end = (self.due_head + BATCH).min(self.due.refs.len());
                let mut touched = 0u64;
                for &index in &self.due.refs[self.due_head..end] {
                    if index != HOLE && self.slab.is_occupied(index) {
                        touched ^= self.slab.deadline(index);
                    }
                }
                std::hint::black_box(touched);
            }
            let index = self.due.refs[self.due_head];
            if index != HOLE && self.slab.is_occupied(index) {
                if *fired == limit {
                    return false;
                }
                let (deadline, payload, generation) = self.slab.kill(index);
                self.slab.release(index);
                on_expired(Timer {
                    key: TimerKey::new(index, generation),
                    deadline,
                    payload,
                });
                *fired += 1;
            } else if index != HOLE {
                self.slab.release(index);
            }
            self.due_head += 1;
        }
        self.due.clear();
        self.due_head = 0;
        self.due_max = 0;
        self.due_sorted = true;
        true
    }

    /// The next slot to visit or overflow re-examination, in time order.
    /// Every timer on a level is due after every timer on the levels below,
    /// so the lowest non-empty level holds the next slot.
    fn next_step(&self) -> Option<Step> {
        let slot = self.next_slot();
        if self.overflow.is_empty() {
            return slot;
        }
        let at = self.overflow_at();
        match slot {
            // A slot first on a tie: time may only reach a slot's start
            // when that slot is taken.
            Some(Step::Slot { start, .. }) if start <= at => slot,
            _ => Some(Step::Overflow { at }),
        }
    }

    /// The earliest tick at which an overflow timer may fit the levels.
    fn overflow_at(&self) -> u64 {
        self.overflow_min
            .saturating_sub(MAX_DELAY_TICKS)
            .max(self.now)
    }

    /// `true` if the overflow list must be re-examined at the current time.
    fn overflow_due(&self) -> bool {
        !self.overflow.is_empty() && self.overflow_at() <= self.now
    }

    fn next_slot(&self) -> Option<Step> {
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
        Some(Step::Slot { level, slot, start })
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
