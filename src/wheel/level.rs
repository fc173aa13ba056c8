//! One level of the hierarchical wheel: 64 slots and an occupancy bitmap.
//!
//! Level `L` has slots of `64^L` ticks, so the level spans `64^(L+1)` ticks.
//! A timer with deadline `when` sits in slot `(when >> 6L) & 63`.
//!
//! Invariant: bit `s` of `occupied` is set if and only if slot `s` holds at
//! least one reference (live, buried or a hole). Finding the next slot with
//! work is then one rotate and one `trailing_zeros`, which is what lets an
//! idle wheel jump straight to its next deadline instead of visiting empty
//! slots.

use super::slab::Slab;
use super::slot::{Slot, Spare};

/// Slots per level. 64 so that the occupancy of a level is one `u64`.
pub(crate) const SLOTS: usize = 64;
/// Bits of a deadline consumed by one level.
pub(crate) const SLOT_BITS: u32 = 6;

pub(crate) struct Level {
    occupied: u64,
    slots: [Slot; SLOTS],
}

impl Level {
    pub(crate) const fn new() -> Self {
        Self {
            occupied: 0,
            slots: [const { Slot::new() }; SLOTS],
        }
    }

    /// The slot of `when` on level `level`.
    pub(crate) const fn slot_for(level: usize, when: u64) -> usize {
        ((when >> (level as u32 * SLOT_BITS)) as usize) & (SLOTS - 1)
    }

    pub(crate) const fn is_empty(&self) -> bool {
        self.occupied == 0
    }

    pub(crate) fn slot_mut(&mut self, slot: usize) -> &mut Slot {
        &mut self.slots[slot]
    }

    /// Appends `index` to `slot`.
    #[inline]
    pub(crate) fn push(&mut self, slot: usize, index: u32, spare: &mut Spare) {
        self.occupied |= 1 << slot;
        self.slots[slot].push(index, spare);
    }

    /// Punches a hole in `slot` at `pos`, compacting the slot if it is
    /// mostly holes; keeps the bitmap true.
    pub(crate) fn punch<T>(&mut self, slab: &mut Slab<T>, slot: usize, pos: usize) {
        if self.slots[slot].punch(pos, 0) {
            self.slots[slot].compact(slab, 0);
            self.settle(slot);
        }
    }

    /// Reaps `slot` (see [`Slot::reap`]) if it holds anything; keeps the
    /// bitmap true. Returns `false` for an empty slot.
    pub(crate) fn reap_if_occupied<T>(&mut self, slab: &mut Slab<T>, slot: usize) -> bool {
        if self.occupied & (1 << slot) == 0 {
            return false;
        }
        self.reap(slab, slot);
        true
    }

    /// Reaps `slot` (see [`Slot::reap`]); keeps the bitmap true.
    pub(crate) fn reap<T>(&mut self, slab: &mut Slab<T>, slot: usize) {
        self.slots[slot].reap(slab, 0);
        self.settle(slot);
    }

    /// Clears `slot`'s occupancy bit if the slot is empty.
    #[inline]
    pub(crate) fn settle(&mut self, slot: usize) {
        if self.slots[slot].is_empty() {
            self.occupied &= !(1 << slot);
        }
    }

    /// Empties `slot` and returns its references.
    pub(crate) fn take(&mut self, slot: usize) -> Vec<u32> {
        self.occupied &= !(1 << slot);
        self.slots[slot].take()
    }

    /// The first occupied slot at or after `from`, going round the level.
    pub(crate) const fn next_occupied(&self, from: usize) -> Option<usize> {
        if self.occupied == 0 {
            return None;
        }
        let offset = self.occupied.rotate_right(from as u32).trailing_zeros() as usize;
        Some((from + offset) % SLOTS)
    }

    /// Forgets every reference (after the slab was drained).
    pub(crate) fn clear(&mut self) {
        self.occupied = 0;
        self.slots.iter_mut().for_each(Slot::clear);
    }

    /// Bytes of references held by the level's slots.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.iter().map(Slot::heap_bytes).sum()
    }
}
