//! Timer entries in a chunked slab, with a liveness bitmap and a stack of
//! reusable indices.
//!
//! Invariants:
//! - every index handed out so far is in exactly one of three states:
//!   *live* (a pending timer: entry occupied, live bit set, referenced by
//!   exactly one slot of the wheel), *buried* (cancelled or otherwise ended:
//!   entry vacant, live bit clear, still referenced by one slot, which will
//!   release it when it next reads that reference), or *free* (entry vacant,
//!   on the `free` stack exactly once, referenced by no slot);
//! - only a free index is reused, so a slot never holds two references to
//!   one index and a buried reference never names a newer timer;
//! - an entry's generation changes every time its timer ends (fire, cancel,
//!   drain), so a [`TimerKey`](crate::TimerKey) names one occupancy of one
//!   entry. The first generation of every entry is the slab's `seed`, drawn
//!   once per slab from a process-wide counter, so two wheels hand out
//!   different keys for the same index (see `crate::key`);
//! - an occupied entry's `pos` is its reference's position in its slot.
//!
//! Storage is a table of fixed-size chunks rather than one `Vec`: growing never
//! copies existing entries, so an insert never stalls on a 300 MB reallocation
//! at 10M timers, and the slack is at most one chunk instead of up to half the
//! capacity.
//!
//! With `T = u64` an entry is 24 bytes: `pos` is stored plus one as a
//! `NonZeroU32`, whose niche holds the enum's tag (checked by a test below).
//! The liveness bitmap (one bit per entry) is what lets the wheel skip and
//! reap buried references without reading their entries: at 10M timers it is
//! 1.25 MB, against 240 MB of entries.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};

const CHUNK_SHIFT: u32 = 12;
const CHUNK_LEN: usize = 1 << CHUNK_SHIFT;
const CHUNK_MASK: u32 = (1 << CHUNK_SHIFT) - 1;

/// The most entries a slab hands out. A slot holds at most about twice as
/// many references as live timers (the wheel compacts beyond that), so this
/// keeps every position below `u32::MAX`.
pub(crate) const MAX_ENTRIES: u32 = (1 << 31) - 1024;

/// Process-wide source of generation seeds. Consecutive values times an odd
/// constant (a Weyl sequence) are distinct for 2^32 slabs and far apart.
static SEEDS: AtomicU32 = AtomicU32::new(1);

fn next_seed() -> u32 {
    SEEDS
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9)
}

enum Entry<T> {
    Occupied {
        deadline: u64,
        payload: T,
        generation: u32,
        /// Position in its slot, plus one.
        pos: NonZeroU32,
    },
    Vacant {
        generation: u32,
    },
}

/// Entries, their live bits and the free stack. See the module docs.
pub(crate) struct Slab<T> {
    chunks: Vec<Vec<Entry<T>>>,
    /// Bit `i` is set iff entry `i` is live.
    live: Vec<u64>,
    /// Indices no slot references, reused last-freed first.
    free: Vec<u32>,
    /// Entries ever handed out; chunks below `allocated / CHUNK_LEN` are full.
    allocated: u32,
    len: u32,
    /// First generation of every entry; `None` until the first entry exists.
    seed: Option<u32>,
}

impl<T> Slab<T> {
    pub(crate) const fn new() -> Self {
        Self {
            chunks: Vec::new(),
            live: Vec::new(),
            free: Vec::new(),
            allocated: 0,
            len: 0,
            seed: None,
        }
    }

    /// Reserves whole chunks for at least `capacity` entries.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let mut slab = Self::new();
        let chunks = capacity.min(MAX_ENTRIES as usize).div_ceil(CHUNK_LEN);
        slab.chunks.reserve_exact(chunks);
        for _ in 0..chunks {
            slab.chunks.push(Vec::with_capacity(CHUNK_LEN));
        }
        slab.live.reserve_exact(chunks * CHUNK_LEN / 64);
        slab
    }

    /// Number of live entries.
    pub(crate) const fn len(&self) -> usize {
        self.len as usize
    }

    /// Indices killed but not yet released by their slot.
    #[inline]
    pub(crate) fn buried(&self) -> usize {
        self.allocated as usize - self.len as usize - self.free.len()
    }

    /// Entries the slab can hold without allocating.
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK_LEN
    }

    /// Heap bytes held: every chunk's full capacity, the chunk table, the
    /// bitmap and the free stack.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * size_of::<Vec<Entry<T>>>()
            + self.chunks.len() * CHUNK_LEN * size_of::<Entry<T>>()
            + self.live.capacity() * size_of::<u64>()
            + self.free.capacity() * size_of::<u32>()
    }

    fn entry(&self, index: u32) -> &Entry<T> {
        &self.chunks[(index >> CHUNK_SHIFT) as usize][(index & CHUNK_MASK) as usize]
    }

    fn entry_mut(&mut self, index: u32) -> &mut Entry<T> {
        &mut self.chunks[(index >> CHUNK_SHIFT) as usize][(index & CHUNK_MASK) as usize]
    }

    /// `true` if the entry at `index` exists and is occupied by `generation`.
    pub(crate) fn is_live(&self, index: u32, generation: u32) -> bool {
        let chunk = (index >> CHUNK_SHIFT) as usize;
        let slot = (index & CHUNK_MASK) as usize;
        matches!(
            self.chunks.get(chunk).and_then(|c| c.get(slot)),
            Some(Entry::Occupied { generation: g, .. }) if *g == generation
        )
    }

    /// `true` if entry `index` is live, read from the bitmap only.
    #[inline]
    pub(crate) fn is_occupied(&self, index: u32) -> bool {
        self.live[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Occupies an entry at slot position `pos` and returns its index and
    /// generation. Hands the payload back if the slab holds [`MAX_ENTRIES`].
    pub(crate) fn insert(
        &mut self,
        deadline: u64,
        payload: T,
        pos: usize,
    ) -> Result<(u32, u32), T> {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                if self.allocated >= MAX_ENTRIES {
                    return Err(payload);
                }
                let seed = *self.seed.get_or_insert_with(next_seed);
                let index = self.allocated;
                let chunk = (index >> CHUNK_SHIFT) as usize;
                if chunk == self.chunks.len() {
                    self.chunks.push(Vec::with_capacity(CHUNK_LEN));
                }
                if index.is_multiple_of(64) {
                    self.live.push(0);
                }
                self.chunks[chunk].push(Entry::Vacant { generation: seed });
                self.allocated += 1;
                index
            }
        };
        let entry = self.entry_mut(index);
        let Entry::Vacant { generation } = *entry else {
            unreachable!("a free index names an occupied entry");
        };
        *entry = Entry::Occupied {
            deadline,
            payload,
            generation,
            pos: encode(pos),
        };
        self.live[(index / 64) as usize] |= 1 << (index % 64);
        self.len += 1;
        Ok((index, generation))
    }

    /// Ends the live timer at `index`: its entry becomes vacant with the next
    /// generation, so old keys die. The index stays referenced by its slot
    /// (buried) until [`release`](Self::release). Returns the deadline,
    /// payload and the generation the timer had.
    pub(crate) fn kill(&mut self, index: u32) -> (u64, T, u32) {
        let entry = self.entry_mut(index);
        let next = match entry {
            Entry::Occupied { generation, .. } => generation.wrapping_add(1),
            Entry::Vacant { .. } => unreachable!("killing a vacant entry"),
        };
        let Entry::Occupied {
            deadline,
            payload,
            generation,
            ..
        } = std::mem::replace(entry, Entry::Vacant { generation: next })
        else {
            unreachable!()
        };
        self.live[(index / 64) as usize] &= !(1 << (index % 64));
        self.len -= 1;
        (deadline, payload, generation)
    }

    /// [`kill`](Self::kill) if `index` is live with `generation`: the
    /// cancel path, one lookup of the entry.
    #[inline]
    pub(crate) fn take_live(&mut self, index: u32, generation: u32) -> Option<(u64, T)> {
        let entry = self
            .chunks
            .get_mut((index >> CHUNK_SHIFT) as usize)?
            .get_mut((index & CHUNK_MASK) as usize)?;
        if !matches!(entry, Entry::Occupied { generation: g, .. } if *g == generation) {
            return None;
        }
        let next = generation.wrapping_add(1);
        let Entry::Occupied {
            deadline, payload, ..
        } = std::mem::replace(entry, Entry::Vacant { generation: next })
        else {
            unreachable!()
        };
        self.live[(index / 64) as usize] &= !(1 << (index % 64));
        self.len -= 1;
        Some((deadline, payload))
    }

    /// Makes a buried index free: its slot no longer references it.
    pub(crate) fn release(&mut self, index: u32) {
        debug_assert!(!self.is_occupied(index), "releasing a live entry");
        self.free.push(index);
    }

    #[inline]
    pub(crate) fn deadline(&self, index: u32) -> u64 {
        match self.entry(index) {
            Entry::Occupied { deadline, .. } => *deadline,
            Entry::Vacant { .. } => unreachable!("deadline of a vacant entry"),
        }
    }

    /// The generation of the entry at `index` if it is live (the engine's
    /// id index keeps 4-byte slab indices and rebuilds keys from them).
    pub(crate) fn live_generation(&self, index: u32) -> Option<u32> {
        let chunk = self.chunks.get((index >> CHUNK_SHIFT) as usize)?;
        match chunk.get((index & CHUNK_MASK) as usize)? {
            Entry::Occupied { generation, .. } => Some(*generation),
            Entry::Vacant { .. } => None,
        }
    }

    pub(crate) fn set_deadline(&mut self, index: u32, value: u64) {
        match self.entry_mut(index) {
            Entry::Occupied { deadline, .. } => *deadline = value,
            Entry::Vacant { .. } => unreachable!("deadline of a vacant entry"),
        }
    }

    pub(crate) fn pos(&self, index: u32) -> usize {
        match self.entry(index) {
            Entry::Occupied { pos, .. } => pos.get() as usize - 1,
            Entry::Vacant { .. } => unreachable!("position of a vacant entry"),
        }
    }

    #[inline]
    pub(crate) fn set_pos(&mut self, index: u32, value: usize) {
        match self.entry_mut(index) {
            Entry::Occupied { pos, .. } => *pos = encode(value),
            Entry::Vacant { .. } => unreachable!("position of a vacant entry"),
        }
    }

    pub(crate) fn payload(&self, index: u32) -> &T {
        match self.entry(index) {
            Entry::Occupied { payload, .. } => payload,
            Entry::Vacant { .. } => unreachable!("payload of a vacant entry"),
        }
    }

    pub(crate) fn payload_mut(&mut self, index: u32) -> &mut T {
        match self.entry_mut(index) {
            Entry::Occupied { payload, .. } => payload,
            Entry::Vacant { .. } => unreachable!("payload of a vacant entry"),
        }
    }

    /// Calls `f(index, generation, deadline, payload)` for every live entry.
    pub(crate) fn for_each(&self, mut f: impl FnMut(u32, u32, u64, &T)) {
        for (c, chunk) in self.chunks.iter().enumerate() {
            for (s, entry) in chunk.iter().enumerate() {
                if let Entry::Occupied {
                    generation,
                    deadline,
                    payload,
                    ..
                } = entry
                {
                    let index = ((c as u32) << CHUNK_SHIFT) | s as u32;
                    f(index, *generation, *deadline, payload);
                }
            }
        }
    }

    /// Ends every live entry, calling `f(index, generation, deadline,
    /// payload)` for each, and frees every index: the caller must drop every
    /// slot's references.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(u32, u32, u64, T)) {
        for (c, chunk) in self.chunks.iter_mut().enumerate() {
            for (s, entry) in chunk.iter_mut().enumerate() {
                if let Entry::Occupied { generation, .. } = entry {
                    let next = generation.wrapping_add(1);
                    let Entry::Occupied {
                        deadline,
                        payload,
                        generation,
                        ..
                    } = std::mem::replace(entry, Entry::Vacant { generation: next })
                    else {
                        unreachable!()
                    };
                    let index = ((c as u32) << CHUNK_SHIFT) | s as u32;
                    f(index, generation, deadline, payload);
                }
            }
        }
        self.live.iter_mut().for_each(|word| *word = 0);
        // Low indices are reused first.
        self.free.clear();
        self.free.extend((0..self.allocated).rev());
        self.len = 0;
    }
}

#[inline]
fn encode(pos: usize) -> NonZeroU32 {
    u32::try_from(pos + 1)
        .ok()
        .and_then(NonZeroU32::new)
        .expect("slot positions stay below u32::MAX (see MAX_ENTRIES)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_of_u64_payload_is_24_bytes() {
        assert_eq!(size_of::<Entry<u64>>(), 24);
    }

    #[test]
    fn entry_of_a_24_byte_payload_is_40_bytes() {
        assert_eq!(size_of::<Entry<[u64; 3]>>(), 40);
    }

    #[test]
    fn released_entries_are_reused_with_a_new_generation() {
        let mut slab = Slab::new();
        let (a, ga) = slab.insert(1, 'a', 0).unwrap();
        assert_eq!(slab.kill(a), (1, 'a', ga));
        assert!(!slab.is_occupied(a));
        slab.release(a);
        let (b, gb) = slab.insert(2, 'b', 0).unwrap();
        assert_eq!(a, b);
        assert_ne!(ga, gb);
        assert!(!slab.is_live(a, ga));
        assert!(slab.is_live(b, gb));
    }

    #[test]
    fn a_buried_index_is_not_reused_before_release() {
        let mut slab = Slab::new();
        let (a, _) = slab.insert(1, 'a', 0).unwrap();
        slab.kill(a);
        let (b, _) = slab.insert(2, 'b', 1).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn two_slabs_start_at_different_generations() {
        let (mut x, mut y) = (Slab::new(), Slab::new());
        let (ix, gx) = x.insert(1, (), 0).unwrap();
        let (iy, gy) = y.insert(1, (), 0).unwrap();
        assert_eq!(ix, iy);
        assert_ne!(gx, gy);
    }

    #[test]
    fn growth_never_exceeds_one_spare_chunk() {
        let mut slab = Slab::new();
        for i in 0..(3 * CHUNK_LEN + 1) {
            slab.insert(i as u64, i as u64, 0).unwrap();
        }
        assert_eq!(slab.capacity(), 4 * CHUNK_LEN);
    }
}
