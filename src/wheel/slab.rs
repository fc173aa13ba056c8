//! Timer entries in a chunked slab, linked into lists by `u32` index.
//!
//! Invariants:
//! - every index handed out so far is either occupied (a pending timer,
//!   linked into exactly one list) or vacant (on the free list, exactly once);
//! - an entry's generation changes every time it is freed, so a
//!   [`TimerKey`](crate::TimerKey) names one occupancy of one entry;
//! - lists are circular and doubly linked: `next`/`prev` of an occupied entry
//!   are valid indices, and a list is named by its head (or [`NIL`] if empty).
//!
//! Storage is a table of fixed-size chunks rather than one `Vec`: growing never
//! copies existing entries, so an insert never stalls on a 300 MB reallocation
//! at 10M timers, and the slack is at most one chunk instead of up to half the
//! capacity. The chunk table itself is tiny (8 bytes per 4096 timers) and stays
//! in cache.
//!
//! With `T = u64` an entry is 32 bytes: the enum tag sits in the padding of the
//! occupied variant (checked by a test below).

/// The "no entry" index: list terminator and empty-slot marker.
pub(crate) const NIL: u32 = u32::MAX;

const CHUNK_SHIFT: u32 = 12;
const CHUNK_LEN: usize = 1 << CHUNK_SHIFT;
const CHUNK_MASK: u32 = (1 << CHUNK_SHIFT) - 1;

enum Entry<T> {
    Occupied {
        deadline: u64,
        payload: T,
        next: u32,
        prev: u32,
        generation: u32,
    },
    Vacant {
        next_free: u32,
        generation: u32,
    },
}

/// Entries with intrusive circular lists. See the module docs.
pub(crate) struct Slab<T> {
    chunks: Vec<Vec<Entry<T>>>,
    free_head: u32,
    /// Entries ever handed out; chunks below `allocated / CHUNK_LEN` are full.
    allocated: u32,
    len: u32,
}

impl<T> Slab<T> {
    pub(crate) const fn new() -> Self {
        Self {
            chunks: Vec::new(),
            free_head: NIL,
            allocated: 0,
            len: 0,
        }
    }

    /// Reserves whole chunks for at least `capacity` entries.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let mut slab = Self::new();
        let chunks = capacity.div_ceil(CHUNK_LEN);
        slab.chunks.reserve_exact(chunks);
        for _ in 0..chunks {
            slab.chunks.push(Vec::with_capacity(CHUNK_LEN));
        }
        slab
    }

    /// Number of occupied entries.
    pub(crate) const fn len(&self) -> usize {
        self.len as usize
    }

    /// Entries the slab can hold without allocating.
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK_LEN
    }

    /// Heap bytes held: every chunk's full capacity plus the chunk table.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * size_of::<Vec<Entry<T>>>()
            + self.chunks.len() * CHUNK_LEN * size_of::<Entry<T>>()
    }

    fn entry(&self, index: u32) -> &Entry<T> {
        &self.chunks[(index >> CHUNK_SHIFT) as usize][(index & CHUNK_MASK) as usize]
    }

    fn entry_mut(&mut self, index: u32) -> &mut Entry<T> {
        &mut self.chunks[(index >> CHUNK_SHIFT) as usize][(index & CHUNK_MASK) as usize]
    }

    /// The entry at `index` if it exists and is occupied by `generation`.
    pub(crate) fn is_live(&self, index: u32, generation: u32) -> bool {
        let chunk = (index >> CHUNK_SHIFT) as usize;
        let slot = (index & CHUNK_MASK) as usize;
        matches!(
            self.chunks.get(chunk).and_then(|c| c.get(slot)),
            Some(Entry::Occupied { generation: g, .. }) if *g == generation
        )
    }

    /// Occupies an entry, unlinked (`next == prev == NIL`). Hands the payload
    /// back if every addressable index is in use.
    pub(crate) fn insert(&mut self, deadline: u64, payload: T) -> Result<(u32, u32), T> {
        let index = if self.free_head != NIL {
            self.free_head
        } else {
            if self.allocated == NIL {
                return Err(payload);
            }
            let index = self.allocated;
            let chunk = (index >> CHUNK_SHIFT) as usize;
            if chunk == self.chunks.len() {
                self.chunks.push(Vec::with_capacity(CHUNK_LEN));
            }
            self.chunks[chunk].push(Entry::Vacant {
                next_free: NIL,
                generation: 0,
            });
            self.allocated += 1;
            index
        };
        let entry = self.entry_mut(index);
        let Entry::Vacant {
            next_free,
            generation,
        } = *entry
        else {
            unreachable!("free list holds an occupied entry");
        };
        *entry = Entry::Occupied {
            deadline,
            payload,
            next: NIL,
            prev: NIL,
            generation,
        };
        if self.free_head == index {
            self.free_head = next_free;
        }
        self.len += 1;
        Ok((index, generation))
    }

    /// Frees an occupied entry that is no longer linked anywhere and returns
    /// its deadline and payload. The generation moves on, so old keys die.
    pub(crate) fn remove(&mut self, index: u32) -> (u64, T) {
        let free_head = self.free_head;
        let entry = self.entry_mut(index);
        let generation = match entry {
            Entry::Occupied { generation, .. } => generation.wrapping_add(1),
            Entry::Vacant { .. } => unreachable!("removing a vacant entry"),
        };
        let old = std::mem::replace(
            entry,
            Entry::Vacant {
                next_free: free_head,
                generation,
            },
        );
        let Entry::Occupied {
            deadline, payload, ..
        } = old
        else {
            unreachable!()
        };
        self.free_head = index;
        self.len -= 1;
        (deadline, payload)
    }

    pub(crate) fn deadline(&self, index: u32) -> u64 {
        match self.entry(index) {
            Entry::Occupied { deadline, .. } => *deadline,
            Entry::Vacant { .. } => unreachable!("deadline of a vacant entry"),
        }
    }

    /// The generation of the entry at `index` if it exists and is occupied.
    pub(crate) fn live_generation(&self, index: u32) -> Option<u32> {
        let chunk = self.chunks.get((index >> CHUNK_SHIFT) as usize)?;
        match chunk.get((index & CHUNK_MASK) as usize)? {
            Entry::Occupied { generation, .. } => Some(*generation),
            Entry::Vacant { .. } => None,
        }
    }

    pub(crate) fn generation(&self, index: u32) -> u32 {
        match self.entry(index) {
            Entry::Occupied { generation, .. } | Entry::Vacant { generation, .. } => *generation,
        }
    }

    /// The last entry of the non-empty circular list starting at `head`.
    pub(crate) fn last(&self, head: u32) -> u32 {
        self.prev(head)
    }

    pub(crate) fn set_deadline(&mut self, index: u32, value: u64) {
        match self.entry_mut(index) {
            Entry::Occupied { deadline, .. } => *deadline = value,
            Entry::Vacant { .. } => unreachable!("deadline of a vacant entry"),
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

    fn next(&self, index: u32) -> u32 {
        match self.entry(index) {
            Entry::Occupied { next, .. } => *next,
            Entry::Vacant { .. } => unreachable!("link of a vacant entry"),
        }
    }

    fn prev(&self, index: u32) -> u32 {
        match self.entry(index) {
            Entry::Occupied { prev, .. } => *prev,
            Entry::Vacant { .. } => unreachable!("link of a vacant entry"),
        }
    }

    fn set_next(&mut self, index: u32, value: u32) {
        match self.entry_mut(index) {
            Entry::Occupied { next, .. } => *next = value,
            Entry::Vacant { .. } => unreachable!("link of a vacant entry"),
        }
    }

    fn set_prev(&mut self, index: u32, value: u32) {
        match self.entry_mut(index) {
            Entry::Occupied { prev, .. } => *prev = value,
            Entry::Vacant { .. } => unreachable!("link of a vacant entry"),
        }
    }

    /// Appends `index` to the circular list whose head is `*head`.
    pub(crate) fn push_back(&mut self, head: &mut u32, index: u32) {
        if *head == NIL {
            self.set_next(index, index);
            self.set_prev(index, index);
            *head = index;
        } else {
            let first = *head;
            let last = self.prev(first);
            self.set_next(index, first);
            self.set_prev(index, last);
            self.set_next(last, index);
            self.set_prev(first, index);
        }
    }

    /// Unlinks `index` from the circular list whose head is `*head`.
    pub(crate) fn unlink(&mut self, head: &mut u32, index: u32) {
        let next = self.next(index);
        if next == index {
            debug_assert_eq!(*head, index);
            *head = NIL;
        } else {
            let prev = self.prev(index);
            self.set_next(prev, next);
            self.set_prev(next, prev);
            if *head == index {
                *head = next;
            }
        }
        self.set_next(index, NIL);
        self.set_prev(index, NIL);
    }

    /// Detaches the list at `*head` (leaving it empty) and returns its entries
    /// as a [`Detached`] cursor, first to last.
    pub(crate) fn detach(&mut self, head: &mut u32) -> Detached {
        let first = std::mem::replace(head, NIL);
        let last = if first == NIL { NIL } else { self.prev(first) };
        Detached { next: first, last }
    }

    /// Takes the next entry of a detached list. The caller must relink or
    /// remove it before asking for the one after.
    pub(crate) fn pop_detached(&mut self, list: &mut Detached) -> Option<u32> {
        let index = list.next;
        if index == NIL {
            return None;
        }
        list.next = if index == list.last {
            NIL
        } else {
            self.next(index)
        };
        self.set_next(index, NIL);
        self.set_prev(index, NIL);
        Some(index)
    }

    /// Sorts the circular list at `*head` by deadline, stably, in place
    /// (bottom-up merge sort on the `next` links; no allocation).
    pub(crate) fn sort_by_deadline(&mut self, head: &mut u32) {
        if *head == NIL {
            return;
        }
        // Open the circle into a NIL-terminated singly linked list.
        let last = self.prev(*head);
        self.set_next(last, NIL);
        let mut list = *head;
        let mut run = 1usize;
        loop {
            let mut p = list;
            let mut tail = NIL;
            list = NIL;
            let mut merges = 0;
            while p != NIL {
                merges += 1;
                let mut q = p;
                let mut p_len = 0;
                while p_len < run && q != NIL {
                    p_len += 1;
                    q = self.next(q);
                }
                let mut q_len = run;
                while p_len > 0 || (q_len > 0 && q != NIL) {
                    let take_p = if p_len == 0 {
                        false
                    } else if q_len == 0 || q == NIL {
                        true
                    } else {
                        // `<=` keeps equal deadlines in their original order.
                        self.deadline(p) <= self.deadline(q)
                    };
                    let e = if take_p {
                        let e = p;
                        p = self.next(p);
                        p_len -= 1;
                        e
                    } else {
                        let e = q;
                        q = self.next(q);
                        q_len -= 1;
                        e
                    };
                    if tail == NIL {
                        list = e;
                    } else {
                        self.set_next(tail, e);
                    }
                    tail = e;
                }
                p = q;
            }
            self.set_next(tail, NIL);
            if merges <= 1 {
                break;
            }
            run *= 2;
        }
        // Close the circle again and rebuild the `prev` links.
        let mut prev = NIL;
        let mut at = list;
        while at != NIL {
            if prev != NIL {
                self.set_prev(at, prev);
            }
            prev = at;
            at = self.next(at);
        }
        self.set_next(prev, list);
        self.set_prev(list, prev);
        *head = list;
    }

    /// Calls `f(index, generation, deadline, payload)` for every occupied entry.
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

    /// Frees every occupied entry, calling `f(index, generation, deadline,
    /// payload)` for each; all lists become dangling and must be reset.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(u32, u32, u64, T)) {
        for (c, chunk) in self.chunks.iter_mut().enumerate() {
            for (s, entry) in chunk.iter_mut().enumerate() {
                if let Entry::Occupied { generation, .. } = entry {
                    let generation = *generation;
                    let old = std::mem::replace(
                        entry,
                        Entry::Vacant {
                            next_free: NIL,
                            generation: generation.wrapping_add(1),
                        },
                    );
                    let Entry::Occupied {
                        deadline, payload, ..
                    } = old
                    else {
                        unreachable!()
                    };
                    let index = ((c as u32) << CHUNK_SHIFT) | s as u32;
                    f(index, generation, deadline, payload);
                }
            }
        }
        // Rebuild the free list so that low indices are reused first.
        self.free_head = NIL;
        for c in (0..self.chunks.len()).rev() {
            for s in (0..self.chunks[c].len()).rev() {
                if let Entry::Vacant { next_free, .. } = &mut self.chunks[c][s] {
                    *next_free = self.free_head;
                    self.free_head = ((c as u32) << CHUNK_SHIFT) | s as u32;
                }
            }
        }
        self.len = 0;
    }
}

/// A list cut out of the wheel, consumed front to back by
/// [`Slab::pop_detached`].
pub(crate) struct Detached {
    next: u32,
    last: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_of_u64_payload_is_32_bytes() {
        assert_eq!(size_of::<Entry<u64>>(), 32);
    }

    #[test]
    fn freed_entries_are_reused_with_a_new_generation() {
        let mut slab = Slab::new();
        let (a, ga) = slab.insert(1, 'a').unwrap();
        assert_eq!(slab.remove(a), (1, 'a'));
        let (b, gb) = slab.insert(2, 'b').unwrap();
        assert_eq!(a, b);
        assert_ne!(ga, gb);
        assert!(!slab.is_live(a, ga));
        assert!(slab.is_live(b, gb));
    }

    #[test]
    fn sort_is_stable_and_relinks_the_circle() {
        let mut slab = Slab::new();
        let mut head = NIL;
        let deadlines = [5, 3, 9, 3, 1, 5, 0, 7, 3];
        for (i, &d) in deadlines.iter().enumerate() {
            let (index, _) = slab.insert(d, i).unwrap();
            slab.push_back(&mut head, index);
        }
        slab.sort_by_deadline(&mut head);
        let mut list = slab.detach(&mut head);
        let mut seen = Vec::new();
        while let Some(index) = slab.pop_detached(&mut list) {
            seen.push((slab.deadline(index), *slab.payload(index)));
        }
        let mut expected: Vec<_> = deadlines.iter().copied().zip(0..).collect();
        expected.sort_by_key(|&(d, _)| d);
        assert_eq!(seen, expected);
    }

    #[test]
    fn growth_never_exceeds_one_spare_chunk() {
        let mut slab = Slab::new();
        for i in 0..(3 * CHUNK_LEN + 1) {
            slab.insert(i as u64, i as u64).unwrap();
        }
        assert_eq!(slab.capacity(), 4 * CHUNK_LEN);
    }
}
