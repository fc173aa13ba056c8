//! The id index: finds a timer's wheel entry by the caller's id, storing no
//! copy of the id.
//!
//! An id is hashed once per operation ([`hash_id`]); the high half of the
//! hash picks the shard ([`shard_of`]), the rest places the id in that
//! shard's index. The index stores only the 4-byte slab index of the entry;
//! the id is compared (and, when a table grows, rehashed) through the entry
//! itself, which holds it.
//!
//! Invariants:
//! - every row names the slab index of a live entry whose id hashes to the
//!   row's place, or (high bit set) a remembered fired id of the shard's
//!   fired ring ([`fired`](super::fired)); every live entry of the shard
//!   has exactly one row, and no id has two;
//! - the index is split into [`SUBTABLES`] tables by hash bits, so a table
//!   that must grow rehashes 1/32 of the shard under the lock, never all of
//!   it at once (and [`IdIndex::reserve`] sizes them all up front for a
//!   capacity hint).

use hashbrown::HashTable;
use hashbrown::hash_table::{Entry, OccupiedEntry, VacantEntry};
use std::hash::{BuildHasher, Hash};

/// Tables per shard: the most of a shard one growth rehashes is `1/SUBTABLES`.
pub(crate) const SUBTABLES: usize = 32;

/// Hashes an id: FxHash, then a fold-multiply so that every bit depends on
/// every input bit (FxHash alone leaves the low bits of sequential ids
/// weak, and both halves of this hash are used).
pub(crate) fn hash_id<K: Hash + ?Sized>(id: &K) -> u64 {
    let h = rustc_hash::FxBuildHasher.hash_one(id);
    let m = u128::from(h) * 0x9e37_79b9_7f4a_7c15_u128;
    (m as u64) ^ ((m >> 64) as u64)
}

/// The shard of `shards` that owns the id whose hash is `hash`: the high 32
/// bits, scaled (no division).
pub(crate) fn shard_of(hash: u64, shards: usize) -> usize {
    (((hash >> 32) * shards as u64) >> 32) as usize
}

/// The hash a shard's table sees: the shard bits moved to the bottom, so
/// the table's control bytes (its top 7 bits) are not constant in a shard.
fn table_hash(hash: u64) -> u64 {
    hash.rotate_left(32)
}

/// Which of the shard's tables: bits just below the control bytes.
fn table_of(hash: u64) -> usize {
    (table_hash(hash) >> 51) as usize % SUBTABLES
}

/// A row found by [`IdIndex::slot`], or the place for one.
pub(crate) enum Slot<'a> {
    Vacant(VacantEntry<'a, u32>),
    /// A row for the id exists: its value, and the row.
    Taken(u32, OccupiedEntry<'a, u32>),
}

impl Slot<'_> {
    /// Stores `value` in the row (new or overwritten).
    pub(crate) fn fill(self, value: u32) {
        match self {
            Slot::Vacant(vacant) => {
                vacant.insert(value);
            }
            Slot::Taken(_, mut row) => *row.get_mut() = value,
        }
    }
}

/// See the module docs.
pub(crate) struct IdIndex {
    tables: Box<[HashTable<u32>]>,
}

impl IdIndex {
    pub(crate) fn new() -> Self {
        Self {
            tables: (0..SUBTABLES).map(|_| HashTable::new()).collect(),
        }
    }

    /// The row for `hash` that `is` accepts (given the slab index).
    pub(crate) fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        self.tables[table_of(hash)]
            .find(table_hash(hash), |&at| is(at))
            .copied()
    }

    /// The row for `hash` that `is` accepts, ready to be removed: one probe
    /// for a find and a remove.
    pub(crate) fn find_row(
        &mut self,
        hash: u64,
        mut is: impl FnMut(u32) -> bool,
    ) -> Option<OccupiedEntry<'_, u32>> {
        self.tables[table_of(hash)]
            .find_entry(table_hash(hash), |&at| is(at))
            .ok()
    }

    /// The row for `hash` that `is` accepts, or the place for a new one:
    /// one probe for a check and an insert. `rehash` gives the hash of an
    /// existing row's id, should the table grow first.
    pub(crate) fn slot(
        &mut self,
        hash: u64,
        mut is: impl FnMut(u32) -> bool,
        rehash: impl Fn(u32) -> u64,
    ) -> Slot<'_> {
        let entry = self.tables[table_of(hash)].entry(
            table_hash(hash),
            |&at| is(at),
            |&row| table_hash(rehash(row)),
        );
        match entry {
            Entry::Vacant(vacant) => Slot::Vacant(vacant),
            Entry::Occupied(row) => Slot::Taken(*row.get(), row),
        }
    }

    /// Overwrites the row for `hash` holding `old` with `new`; `false` if
    /// there is none.
    pub(crate) fn replace(&mut self, hash: u64, old: u32, new: u32) -> bool {
        match self.tables[table_of(hash)].find_entry(table_hash(hash), |&row| row == old) {
            Ok(mut row) => {
                *row.get_mut() = new;
                true
            }
            Err(_) => false,
        }
    }

    /// Adds a row; `rehash` gives the hash of an existing row's id, for
    /// when the table grows.
    pub(crate) fn insert(&mut self, hash: u64, at: u32, rehash: impl Fn(u32) -> u64) {
        self.tables[table_of(hash)]
            .insert_unique(table_hash(hash), at, |&row| table_hash(rehash(row)));
    }

    /// Removes the row for `hash` holding `at`; `false` if there is none.
    pub(crate) fn remove(&mut self, hash: u64, at: u32) -> bool {
        match self.tables[table_of(hash)].find_entry(table_hash(hash), |&row| row == at) {
            Ok(row) => {
                row.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Makes room for `additional` more rows in total, spread over the
    /// tables as the hash spreads ids.
    pub(crate) fn reserve(&mut self, additional: usize, rehash: impl Fn(u32) -> u64) {
        let each = additional.div_ceil(SUBTABLES);
        for table in &mut self.tables {
            table.reserve(each, |&row| table_hash(rehash(row)));
        }
    }

    /// Heap bytes held by the tables.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.tables.iter().map(HashTable::allocation_size).sum()
    }

    pub(crate) fn clear(&mut self) {
        for table in &mut self.tables {
            table.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_evenly_over_shards_and_tables() {
        let shards = 64;
        let mut per_shard = vec![0u32; shards];
        let mut per_table = [0u32; SUBTABLES];
        for id in 0..640_000u64 {
            let hash = hash_id(&id);
            per_shard[shard_of(hash, shards)] += 1;
            per_table[table_of(hash)] += 1;
        }
        assert!(per_shard.iter().all(|&n| (9_000..11_000).contains(&n)));
        assert!(per_table.iter().all(|&n| (18_000..22_000).contains(&n)));
    }

    /// Growth rehashes one table at a time, each about 1/32 of the rows:
    /// the longest stop under the lock is bounded by the largest table.
    #[test]
    fn rows_spread_over_the_tables_so_a_growth_rehashes_a_thirty_second() {
        let n = 1u32 << 16;
        let mut index = IdIndex::new();
        for at in 0..n {
            index.insert(hash_id(&u64::from(at)), at, |row| hash_id(&u64::from(row)));
        }
        let largest = index.tables.iter().map(HashTable::len).max().unwrap();
        assert!(largest <= (n as usize / SUBTABLES) * 5 / 4, "{largest}");
        for at in 0..n {
            let hash = hash_id(&u64::from(at));
            assert_eq!(index.find(hash, |row| row == at), Some(at));
        }
    }

    #[test]
    fn a_row_is_found_by_its_hash_and_removed_by_its_value() {
        let ids = [10u64, 20, 30];
        let rehash = |at: u32| hash_id(&ids[at as usize]);
        let mut index = IdIndex::new();
        for at in 0..3 {
            index.insert(rehash(at), at, rehash);
        }
        for (at, id) in ids.iter().enumerate() {
            let found = index.find(hash_id(id), |row| ids[row as usize] == *id);
            assert_eq!(found, Some(at as u32));
        }
        assert!(index.remove(hash_id(&20u64), 1));
        assert!(!index.remove(hash_id(&20u64), 1));
        assert_eq!(
            index.find(hash_id(&20u64), |row| ids[row as usize] == 20),
            None
        );
    }
}
