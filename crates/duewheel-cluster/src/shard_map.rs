//! The fixed map from timer ids to logical shards.
//!
//! The deadline space is cut into a fixed number of logical shards (1024 by
//! default), many more than there will ever be nodes: a node owns whole
//! shards, and moving load moves shards, never individual timers. The number
//! is recorded in the database at set-up and every store checks it at open
//! ([`OpenError::ShardCountMismatch`](super::OpenError::ShardCountMismatch)),
//! because two nodes with different maps would route one id to two shards.
//!
//! # The hash (stable: it is part of the on-disk format)
//!
//! `shard_of(bytes)` is
//!
//! 1. FNV-1a, 64 bit, over the id's bytes (offset basis
//!    `0xcbf2_9ce4_8422_2325`, prime `0x0000_0100_0000_01b3`);
//! 2. then MurmurHash3's 64-bit finaliser (`fmix64`), because FNV-1a alone
//!    leaves consecutive ids (order 41, 42, 43, ...) differing mostly in the
//!    low bits;
//! 3. then Lemire's multiply-shift reduction `(h * shards) >> 64`, which maps
//!    the 64-bit hash onto `0..shards` using its high bits, without a
//!    division.
//!
//! Ids are hashed in their [`Codec`](duewheel::Codec) encoding; for the `u64`
//! ids that the store keeps, that is the 8 little-endian bytes
//! ([`shard_of_id`](ShardMap::shard_of_id)). Test vectors below pin the
//! function: changing it would strand every stored timer in the wrong shard.

/// How many logical shards a map may have at most. A shard is one row in
/// `shards` and one lease; 65,536 is far more than a cluster needs and keeps
/// shard numbers inside PostgreSQL's `int`.
pub const MAX_SHARDS: u32 = 65_536;

/// The number of shards a [`StoreConfig`](super::StoreConfig) uses unless
/// told otherwise.
pub const DEFAULT_SHARDS: u32 = 1024;

/// A fixed set of logical shards and the stable hash that routes ids to them.
///
/// ```
/// use duewheel_cluster::ShardMap;
///
/// let map = ShardMap::new(1024)?;
/// let shard = map.shard_of_id(42);
/// assert!(shard < 1024);
/// // Stable: the same id lands in the same shard on every node, forever.
/// assert_eq!(shard, map.shard_of(&42u64.to_le_bytes()));
/// # Ok::<(), duewheel_cluster::InvalidShardCount>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardMap {
    shards: u32,
}

/// A shard count outside `1..=MAX_SHARDS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a shard map needs 1..={MAX_SHARDS} shards, not {0}")]
pub struct InvalidShardCount(pub u32);

impl ShardMap {
    /// A map of `shards` logical shards.
    pub const fn new(shards: u32) -> Result<Self, InvalidShardCount> {
        if shards == 0 || shards > MAX_SHARDS {
            return Err(InvalidShardCount(shards));
        }
        Ok(Self { shards })
    }

    /// The number of shards.
    pub const fn shards(&self) -> u32 {
        self.shards
    }

    /// `true` if `shard` is one of this map's shards.
    pub const fn contains(&self, shard: u32) -> bool {
        shard < self.shards
    }

    /// The shard of an id given as its encoded bytes (see the module doc for
    /// the exact function).
    pub fn shard_of(&self, id_bytes: &[u8]) -> u32 {
        let h = fmix64(fnv1a64(id_bytes));
        // (h * n) >> 64 < n because h < 2^64; the cast cannot truncate.
        ((u128::from(h) * u128::from(self.shards)) >> 64) as u32
    }

    /// The shard of a `u64` id (hashed as its 8 little-endian bytes, which
    /// is its [`Codec`](duewheel::Codec) encoding).
    pub fn shard_of_id(&self, id: u64) -> u32 {
        self.shard_of(&id.to_le_bytes())
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shard_of_is_pinned() {
        // These values are part of the storage format: if this test fails,
        // the hash changed and stored timers would be looked up in the
        // wrong shard.
        let map = ShardMap::new(1024).unwrap();
        let got: Vec<u32> = [0u64, 1, 42, 1_000_000, u64::MAX]
            .iter()
            .map(|&id| map.shard_of_id(id))
            .collect();
        assert_eq!(got, PINNED_1024);
        assert_eq!(map.shard_of(b"order-42"), PINNED_ORDER_42);
    }

    // Cross-checked against an independent Python implementation.
    const PINNED_1024: [u32; 5] = [495, 296, 664, 960, 426];
    const PINNED_ORDER_42: u32 = 569;

    #[test]
    fn consecutive_ids_spread_evenly() {
        let map = ShardMap::new(1024).unwrap();
        let mut counts = vec![0u32; 1024];
        for id in 0..1_024_000u64 {
            counts[map.shard_of_id(id) as usize] += 1;
        }
        // Mean 1000; a binomial spread has sd ~ 32, so +-20% is > 6 sd.
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 800 && *max < 1200, "min {min} max {max}");
    }

    #[test]
    fn every_shard_count_keeps_ids_in_range() {
        for n in [1, 2, 3, 7, 1024, MAX_SHARDS] {
            let map = ShardMap::new(n).unwrap();
            for id in [0, 1, 99, u64::MAX / 2, u64::MAX] {
                assert!(map.shard_of_id(id) < n);
            }
        }
        assert_eq!(ShardMap::new(1).unwrap().shard_of(b"anything"), 0);
    }

    #[test]
    fn bad_shard_counts_are_errors() {
        assert_eq!(ShardMap::new(0), Err(InvalidShardCount(0)));
        assert_eq!(
            ShardMap::new(MAX_SHARDS + 1),
            Err(InvalidShardCount(MAX_SHARDS + 1))
        );
    }
}
