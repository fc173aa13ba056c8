//! The memory of recently fired ids: a cancel arriving after the expiry
//! hears `AlreadyFired` rather than `NotFound`.
//!
//! A ring of `(id, when)` in firing order. The id index finds a remembered
//! id as it finds a live one: the row a timer had while it lived is turned,
//! when the timer ends, into a *fired row* naming its place in this ring
//! ([`FIRED`] bit set), so remembering costs no second table and no second
//! probe, and the id is stored once, here.
//!
//! Invariants:
//! - the ring holds at most `max_ids` ids (this shard's share of the
//!   engine-wide [`Builder::fired_memory`](crate::Builder::fired_memory)
//!   count, split as `max_pending` is), so the engine remembers at most the
//!   configured total; rows older than `max_age_ms` are dropped at the next
//!   firing round;
//! - every fired row in the index names a ring row holding an id with its
//!   hash; when a ring row is dropped the shard removes its fired row (if
//!   the id was scheduled again since, its row was taken over by the new
//!   timer and there is nothing to remove).

use std::collections::VecDeque;

/// The bit of an index row that marks a fired row.
pub(crate) const FIRED: u32 = 1 << 31;

/// Sequence numbers wrap at 31 bits in a row.
const SEQ_MASK: u32 = FIRED - 1;

/// See the module docs.
pub(crate) struct FiredIds<K> {
    ring: VecDeque<(K, u64)>,
    /// Sequence number of `ring[0]`.
    first_seq: u64,
    max_ids: usize,
    max_age_ms: u64,
}

impl<K> FiredIds<K> {
    pub(crate) fn new(max_ids: usize, max_age_ms: u64) -> Self {
        Self {
            ring: VecDeque::new(),
            first_seq: 0,
            // Rows hold 31-bit positions: a share beyond that is capped.
            max_ids: max_ids.min(SEQ_MASK as usize / 2),
            max_age_ms,
        }
    }

    /// Ids remembered now (including ids scheduled again since, until they
    /// age out).
    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }

    /// `true` if nothing is to be remembered at all.
    pub(crate) fn is_off(&self) -> bool {
        self.max_ids == 0
    }

    /// The id a fired row names, if the row is still in the ring.
    pub(crate) fn get(&self, row: u32) -> Option<&K> {
        let position = (row & SEQ_MASK).wrapping_sub(self.first_seq as u32 & SEQ_MASK) & SEQ_MASK;
        self.ring.get(position as usize).map(|(id, _)| id)
    }

    /// Remembers that `id` fired at `now_ms` and returns its fired row.
    /// Call [`over`](Self::over) first to make room.
    pub(crate) fn push(&mut self, id: K, now_ms: u64) -> u32 {
        let seq = self.first_seq + self.ring.len() as u64;
        self.ring.push_back((id, now_ms));
        FIRED | (seq as u32 & SEQ_MASK)
    }

    /// The oldest remembered id and its fired row, if the ring is full (one
    /// more is about to come) or it is older than the age at `now_ms`.
    pub(crate) fn over(&mut self, adding: bool, now_ms: u64) -> Option<(K, u32)> {
        let (_, at_ms) = self.ring.front()?;
        let full = adding && self.ring.len() >= self.max_ids;
        if !full && now_ms.saturating_sub(*at_ms) <= self.max_age_ms {
            return None;
        }
        let row = FIRED | (self.first_seq as u32 & SEQ_MASK);
        self.first_seq += 1;
        self.ring.pop_front().map(|(id, _)| (id, row))
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.ring.capacity() * size_of::<(K, u64)>()
    }

    pub(crate) fn clear(&mut self) {
        self.first_seq += self.ring.len() as u64;
        self.ring.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_name_their_ids_until_they_are_dropped_oldest_first() {
        let mut fired = FiredIds::new(3, u64::MAX);
        let mut rows = Vec::new();
        for id in 1..=5u64 {
            if let Some((old, row)) = fired.over(true, 0) {
                assert_eq!(Some(&row), rows.get(old as usize - 1));
            }
            rows.push(fired.push(id, 0));
        }
        assert_eq!(fired.len(), 3);
        let known: Vec<u64> = rows.iter().filter_map(|&r| fired.get(r).copied()).collect();
        assert_eq!(known, [3, 4, 5]);
        assert!(rows.iter().all(|r| r & FIRED != 0));
    }

    #[test]
    fn ids_older_than_the_age_are_dropped() {
        let mut fired = FiredIds::new(10, 100);
        let first = fired.push(1u64, 0);
        let second = fired.push(2, 50);
        assert_eq!(fired.over(false, 120), Some((1, first)));
        assert_eq!(fired.over(false, 120), None);
        assert_eq!(fired.get(second), Some(&2));
    }

    #[test]
    fn zero_ids_remembers_nothing() {
        let fired = FiredIds::<u64>::new(0, u64::MAX);
        assert!(fired.is_off());
    }
}
