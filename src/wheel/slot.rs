//! One slot of the wheel: a compact array of slab indices.
//!
//! Invariant: every live timer whose place is this slot appears exactly once
//! in `refs`, at the position its entry records. Other elements are either
//! [`HOLE`] (a timer rescheduled away left it) or *buried* indices (a timer
//! cancelled in place: its live bit is clear, and the index is not reused
//! until this slot releases it). `dead` counts holes and buried indices
//! added since the slot was last emptied or compacted (an upper bound).
//!
//! Compaction keeps the dead share bounded: once more than half of a slot's
//! references (and at least [`MIN_DEAD`]) are dead, the slot is compacted in
//! place, order kept, which costs O(len) and is paid for by the `len / 2`
//! cancels since the last compaction. So buried entries never exceed the
//! live ones by more than `MIN_DEAD` per slot.

use super::slab::Slab;

/// Marks a reference left behind by a reschedule.
pub(crate) const HOLE: u32 = u32::MAX;

/// Dead references a slot may hold before compaction is considered.
pub(crate) const MIN_DEAD: u32 = 32;

/// A slot keeps its buffer when it empties if the buffer is at most this
/// many references (1 KiB); larger ones are freed, so a wheel does not hold
/// on to the peak size of every slot.
const KEEP_CAPACITY: usize = 256;

pub(crate) struct Slot {
    pub(crate) refs: Vec<u32>,
    pub(crate) dead: u32,
}

impl Slot {
    pub(crate) const fn new() -> Self {
        Self {
            refs: Vec::new(),
            dead: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// Appends `index` and returns its position.
    pub(crate) fn push(&mut self, index: u32) -> usize {
        self.refs.push(index);
        self.refs.len() - 1
    }

    /// Takes every reference out, leaving the slot empty.
    pub(crate) fn take(&mut self) -> Vec<u32> {
        self.dead = 0;
        std::mem::take(&mut self.refs)
    }

    /// Gives back a buffer taken by [`take`](Self::take) once its
    /// references are consumed, if the slot has none and it is small.
    pub(crate) fn recycle(&mut self, mut buffer: Vec<u32>) {
        if self.refs.capacity() == 0 && buffer.capacity() <= KEEP_CAPACITY {
            buffer.clear();
            self.refs = buffer;
        }
    }

    /// Empties the slot, dropping a large buffer.
    pub(crate) fn clear(&mut self) {
        self.dead = 0;
        if self.refs.capacity() > KEEP_CAPACITY {
            self.refs = Vec::new();
        } else {
            self.refs.clear();
        }
    }

    /// Records a hole or a buried reference among `refs[from..]` and
    /// compacts that range if it is mostly dead. Returns `true` if it did.
    pub(crate) fn bury<T>(&mut self, slab: &mut Slab<T>, from: usize) -> bool {
        self.dead += 1;
        let len = self.refs.len() - from;
        if self.dead < MIN_DEAD || (self.dead as usize) * 2 <= len {
            return false;
        }
        self.compact(slab, from);
        true
    }

    /// Moves the live references of `refs[from..]` to the front of `refs`,
    /// in order, updating their entries' positions; releases the buried
    /// ones; drops everything else.
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
        self.dead = 0;
        if self.refs.is_empty() {
            self.clear();
        }
    }

    /// Bytes of references held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.refs.capacity() * size_of::<u32>()
    }
}
