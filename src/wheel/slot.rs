//! One slot of the wheel: a compact array of slab indices.
//!
//! Invariant: every live timer whose place is this slot appears exactly once
//! in `refs`, at the position its entry records. Other elements are either
//! [`HOLE`] (a timer rescheduled away, or a reaped reference) or *buried*
//! indices (a timer cancelled in place: its live bit is clear, and the index
//! is not reused until this slot releases it). `holes` counts the holes
//! made by reschedules since the slot was last emptied or compacted.
//!
//! Two ways dead references go, both bounded:
//! - [`reap`](Slot::reap) releases the buried indices of the slot, turning
//!   them into holes, reading only the liveness bitmap (the wheel reaps one
//!   slot at a time once buried timers outnumber live ones; see the wheel's
//!   module docs);
//! - [`compact`](Slot::compact) drops the holes, moving the live references
//!   down in order and updating their entries' positions. It runs when most
//!   of a slot is dead (a third or less live after a reap; more than half
//!   holes after reschedules), so its O(len) cost is paid for by the dead
//!   references it drops, and a slot never holds more than about three
//!   references per live timer.

use super::slab::Slab;

/// Marks a reference that names nothing (left by a reschedule or a reap).
pub(crate) const HOLE: u32 = u32::MAX;

/// Holes a slot may hold before compaction is considered.
pub(crate) const MIN_DEAD: u32 = 32;

/// A slot keeps its buffer when it empties if the buffer is at most this
/// many references (1 KiB); larger ones are freed, so a wheel does not hold
/// on to the peak size of every slot.
const KEEP_CAPACITY: usize = 256;

pub(crate) struct Slot {
    pub(crate) refs: Vec<u32>,
    holes: u32,
}

impl Slot {
    pub(crate) const fn new() -> Self {
        Self {
            refs: Vec::new(),
            holes: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// Appends `index`, taking a buffer from `spare` if the slot has none.
    #[inline]
    pub(crate) fn push(&mut self, index: u32, spare: &mut Spare) {
        if self.refs.capacity() == 0 {
            self.refs = spare.take();
        }
        self.refs.push(index);
    }

    /// Takes every reference out, leaving the slot empty.
    pub(crate) fn take(&mut self) -> Vec<u32> {
        self.holes = 0;
        std::mem::take(&mut self.refs)
    }

    /// Empties the slot, dropping a large buffer.
    pub(crate) fn clear(&mut self) {
        self.holes = 0;
        if self.refs.capacity() > KEEP_CAPACITY {
            self.refs = Vec::new();
        } else {
            self.refs.clear();
        }
    }

    /// Punches a hole at `pos` (its timer was rescheduled away). Returns
    /// `true` if `refs[from..]` is now mostly holes and must be compacted.
    pub(crate) fn punch(&mut self, pos: usize, from: usize) -> bool {
        self.refs[pos] = HOLE;
        self.holes += 1;
        self.holes >= MIN_DEAD && (self.holes as usize) * 2 > self.refs.len() - from
    }

    /// Releases the buried indices of `refs[from..]`, turning them into
    /// holes, and compacts if a third or less of the range is live.
    /// Returns `true` if it compacted (live references moved to the front).
    pub(crate) fn reap<T>(&mut self, slab: &mut Slab<T>, from: usize) -> bool {
        let mut live = 0;
        for r in &mut self.refs[from..] {
            if *r == HOLE {
                continue;
            }
            if slab.is_occupied(*r) {
                live += 1;
            } else {
                slab.release(*r);
                *r = HOLE;
            }
        }
        let len = self.refs.len() - from;
        self.holes = u32::try_from(len - live).unwrap_or(u32::MAX);
        if live * 3 <= len {
            self.compact(slab, from);
            return true;
        }
        false
    }

    /// Moves the live references of `refs[from..]` to the front of `refs`,
    /// in order, updating their entries' positions; releases the buried
    /// ones; drops the holes.
    pub(crate) fn compact<T>(&mut self, slab: &mut Slab<T>, from: usize) {
        let mut kept = 0;
        for read in from..self.refs.len() {
            let index = self.refs[read];
            if index == HOLE {
                continue;
            }
            if !slab.is_occupied(index) {
                slab.release(index);
                continue;
            }
            if read != kept {
                self.refs[kept] = index;
                slab.set_pos(index, kept);
            }
            kept += 1;
        }
        self.refs.truncate(kept);
        self.holes = 0;
        if self.refs.is_empty() {
            self.clear();
        }
    }

    /// Bytes of references held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.refs.capacity() * size_of::<u32>()
    }
}

/// Small emptied slot buffers kept for reuse, so that a sparse wheel moving
/// a timer from slot to slot does not allocate at every step.
pub(crate) struct Spare(Vec<Vec<u32>>);

/// Buffers a [`Spare`] keeps (each at most `KEEP_CAPACITY` references).
const SPARE_BUFFERS: usize = 16;

impl Spare {
    pub(crate) const fn new() -> Self {
        Self(Vec::new())
    }

    /// An empty buffer, reused if one is kept.
    pub(crate) fn take(&mut self) -> Vec<u32> {
        self.0.pop().unwrap_or_default()
    }

    /// Keeps an emptied buffer if it is small and there is room; drops it
    /// otherwise.
    pub(crate) fn give(&mut self, mut buffer: Vec<u32>) {
        if (1..=KEEP_CAPACITY).contains(&buffer.capacity()) && self.0.len() < SPARE_BUFFERS {
            buffer.clear();
            self.0.push(buffer);
        }
    }

    /// Bytes held by the kept buffers.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.0.capacity() * size_of::<Vec<u32>>()
            + self
                .0
                .iter()
                .map(|b| b.capacity() * size_of::<u32>())
                .sum::<usize>()
    }
}
