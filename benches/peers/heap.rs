//! What a user writes first: a `BinaryHeap` of `(deadline, id)` and a bitmap
//! of cancelled ids (tombstones), so a cancel only sets a bit and the drain
//! skips tombstoned entries as it pops them.
//!
//! Keyed by the id itself, so no handle table. It relies on ids being unique
//! (a reused id would need a generation); the workload's are.

use super::{Contender, Fired};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The driver.
pub(crate) struct Driver {
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    cancelled: Vec<u64>,
}

impl Contender for Driver {
    fn new(n: usize) -> Self {
        Driver {
            heap: BinaryHeap::with_capacity(n),
            cancelled: vec![0; n.div_ceil(64)],
        }
    }

    fn schedule_all(&mut self, deadlines_ms: &[u64]) {
        for (id, &deadline) in deadlines_ms.iter().enumerate() {
            self.heap.push(Reverse((deadline, id as u32)));
        }
    }

    fn cancel_all(&mut self, ids: &[u32]) {
        for &id in ids {
            let word = &mut self.cancelled[id as usize / 64];
            let bit = 1 << (id % 64);
            assert!(*word & bit == 0, "timer {id} cancelled twice");
            *word |= bit;
        }
    }

    fn drain(&mut self, fired: &mut Vec<Fired>) {
        // The clock jumps to the top's deadline, so it pops exactly on time.
        while let Some(Reverse((deadline, id))) = self.heap.pop() {
            if self.cancelled[id as usize / 64] & (1 << (id % 64)) == 0 {
                fired.push(Fired {
                    id,
                    at_ms: deadline,
                });
            }
        }
    }

    fn handle_bytes(&self) -> usize {
        0
    }
}
