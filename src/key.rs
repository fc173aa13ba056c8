//! Generational timer keys.
//!
//! A [`TimerKey`] names one timer for the whole of its life and never another:
//! it carries the slab index of the timer's entry and the generation the entry
//! had when the timer was inserted. Ending a timer (fire, cancel, drain)
//! bumps its entry's generation, so a key that outlived its timer or a forged
//! key is refused with "not found" instead of reaching whichever timer reuses
//! the slot. This is the fix for slab's known weakness (a removed key is
//! silently reused).
//!
//! Keys are unique per wheel: every wheel draws a generation seed from a
//! process-wide counter (times an odd constant, so consecutive wheels' seeds
//! are far apart) when it creates its first entry, and every entry's first
//! generation is that seed. Two wheels hand out different keys for the same
//! index, so a key from another wheel is not found
//! (`a_key_from_another_wheel_is_not_found`, and the wheel model test
//! cancels foreign keys). The key stays 8 bytes: no wheel id is stored.
//!
//! Generations are 32 bits and wrap: a stale key can only alias a new timer
//! after its slot has been reused 2^32 times while the stale key was kept,
//! and a foreign key only if the two wheels' generations of that index
//! happen to meet, which takes as many reuses of the index as the distance
//! between their seeds (for two wheels created one after another, at least
//! 1.6 billion).

/// Identifies one timer in a [`Wheel`](crate::wheel::Wheel).
///
/// Keys are `Copy`, 8 bytes, and can be turned into a `u64` and back for
/// storage in external indexes.
///
/// ```
/// use duewheel::wheel::Wheel;
///
/// let mut wheel = Wheel::new();
/// let key = wheel.insert(10, "order-1").unwrap();
/// assert_eq!(wheel.cancel(key), Some("order-1"));
/// // The timer is gone: the same key is now stale and reaches nothing.
/// assert_eq!(wheel.cancel(key), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerKey {
    index: u32,
    generation: u32,
}

impl TimerKey {
    pub(crate) const fn new(index: u32, generation: u32) -> Self {
        Self { index, generation }
    }

    pub(crate) const fn index(self) -> u32 {
        self.index
    }

    pub(crate) const fn generation(self) -> u32 {
        self.generation
    }

    /// Packs the key into a `u64` (generation in the high half).
    ///
    /// ```
    /// # use duewheel::TimerKey;
    /// # let mut wheel = duewheel::wheel::Wheel::new();
    /// let key = wheel.insert(5, ()).unwrap();
    /// assert_eq!(TimerKey::from_bits(key.to_bits()), key);
    /// ```
    pub const fn to_bits(self) -> u64 {
        ((self.generation as u64) << 32) | self.index as u64
    }

    /// Rebuilds a key from [`to_bits`](Self::to_bits). Any `u64` is accepted:
    /// a value that names no live timer is simply not found by the wheel.
    pub const fn from_bits(bits: u64) -> Self {
        Self {
            index: bits as u32,
            generation: (bits >> 32) as u32,
        }
    }
}
