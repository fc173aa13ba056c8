//! The memory of recently fired ids: a cancel arriving after the expiry
//! hears `AlreadyFired` rather than `NotFound`.
//!
//! A ring of `(id, when)` in firing order and a table of ring positions
//! hashed on the id (the id is stored once, in the ring). The table sees the
//! id's hash rotated, as the id index does, so that the bits that chose the
//! shard are not its control bytes.
//!
//! Invariants:
//! - the ring holds at most `max_ids` ids (this shard's share of the
//!   engine-wide [`Builder::fired_memory`](crate::Builder::fired_memory)
//!   count, split as `max_pending` is), so the engine remembers at most the
//!   configured total; rows older than `max_age_ms` are dropped at the next
//!   firing round;
//! - every table row names a ring row holding an id with that hash; an id
//!   scheduled again is forgotten (its table row removed, its ring row left
//!   to age out, still counted).

use super::index::hash_id;
use hashbrown::HashTable;
use std::collections::VecDeque;
use std::hash::Hash;

/// See the module docs.
pub(crate) struct FiredIds<K> {
    ring: VecDeque<(K, u64)>,
    /// Sequence number of `ring[0]`; the table stores sequence numbers'
    /// low 32 bits (the ring is far shorter than 2^32).
    first_seq: u64,
    table: HashTable<u32>,
    max_ids: usize,
    max_age_ms: u64,
}

impl<K: Hash + Eq> FiredIds<K> {
    pub(crate) fn new(max_ids: usize, max_age_ms: u64) -> Self {
        Self {
            ring: VecDeque::new(),
            first_seq: 0,
            table: HashTable::new(),
            // Positions are 32-bit: a share beyond that is capped.
            max_ids: max_ids.min(u32::MAX as usize / 2),
            max_age_ms,
        }
    }

    /// Ids remembered now (including ids scheduled again since, until they
    /// age out).
    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    fn position(first_seq: u64, row: u32) -> usize {
        row.wrapping_sub(first_seq as u32) as usize
    }

    /// `true` if `id` (whose hash is `hash`) fired recently.
    pub(crate) fn contains(&self, hash: u64, id: &K) -> bool {
        let ring = &self.ring;
        let first = self.first_seq;
        self.table
            .find(hash.rotate_left(32), |&row| {
                ring.get(Self::position(first, row))
                    .is_some_and(|(fired, _)| fired == id)
            })
            .is_some()
    }

    /// Remembers that `id` fired at `now_ms`, forgetting the oldest beyond
    /// the count.
    pub(crate) fn remember(&mut self, hash: u64, id: K, now_ms: u64) {
        if self.max_ids == 0 {
            return;
        }
        if self.ring.len() >= self.max_ids {
            self.pop_oldest();
        }
        let seq = self.first_seq + self.ring.len() as u64;
        self.ring.push_back((id, now_ms));
        let (ring, first) = (&self.ring, self.first_seq);
        self.table
            .insert_unique(hash.rotate_left(32), seq as u32, |&row| {
                ring.get(Self::position(first, row))
                    .map_or(0, |(id, _)| hash_id(id).rotate_left(32))
            });
    }

    /// Forgets `id` (it was scheduled again).
    pub(crate) fn forget(&mut self, hash: u64, id: &K) {
        let (ring, first) = (&self.ring, self.first_seq);
        if let Ok(row) = self.table.find_entry(hash.rotate_left(32), |&row| {
            ring.get(Self::position(first, row))
                .is_some_and(|(fired, _)| fired == id)
        }) {
            row.remove();
        }
    }

    /// Drops the ids remembered longer than the configured age.
    pub(crate) fn forget_older(&mut self, now_ms: u64) {
        while let Some((_, at_ms)) = self.ring.front() {
            if now_ms.saturating_sub(*at_ms) <= self.max_age_ms {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        let Some((id, _)) = self.ring.pop_front() else {
            return;
        };
        let seq = self.first_seq as u32;
        self.first_seq += 1;
        if let Ok(row) = self
            .table
            .find_entry(hash_id(&id).rotate_left(32), |&row| row == seq)
        {
            row.remove();
        }
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.ring.capacity() * size_of::<(K, u64)>() + self.table.allocation_size()
    }

    pub(crate) fn clear(&mut self) {
        self.ring.clear();
        self.table.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remember(fired: &mut FiredIds<u64>, id: u64, at_ms: u64) {
        fired.remember(hash_id(&id), id, at_ms);
    }

    #[test]
    fn the_oldest_ids_are_forgotten_beyond_the_count() {
        let mut fired = FiredIds::new(3, u64::MAX);
        for id in 1..=5 {
            remember(&mut fired, id, 0);
        }
        assert_eq!(fired.len(), 3);
        let known: Vec<u64> = (1..=5)
            .filter(|id| fired.contains(hash_id(id), id))
            .collect();
        assert_eq!(known, [3, 4, 5]);
    }

    #[test]
    fn ids_older_than_the_age_are_forgotten() {
        let mut fired = FiredIds::new(10, 100);
        remember(&mut fired, 1, 0);
        remember(&mut fired, 2, 50);
        fired.forget_older(120);
        assert!(!fired.contains(hash_id(&1u64), &1));
        assert!(fired.contains(hash_id(&2u64), &2));
    }

    #[test]
    fn a_forgotten_id_is_not_found_and_the_rest_are() {
        let mut fired = FiredIds::new(10, u64::MAX);
        for id in 1..=4 {
            remember(&mut fired, id, 0);
        }
        fired.forget(hash_id(&2u64), &2);
        assert!(!fired.contains(hash_id(&2u64), &2));
        assert!(fired.contains(hash_id(&3u64), &3));
        // Its ring row ages out with the others without disturbing them.
        for id in 5..=14 {
            remember(&mut fired, id, 0);
        }
        assert!((5..=14).all(|id| fired.contains(hash_id(&id), &id)));
    }

    #[test]
    fn zero_ids_remembers_nothing() {
        let mut fired = FiredIds::new(0, u64::MAX);
        remember(&mut fired, 1, 0);
        assert!(fired.is_empty());
    }
}
