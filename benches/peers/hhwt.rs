//! hierarchical_hash_wheel_timer 1.4.0: the `cancellable`
//! `QuadWheelWithOverflow` (four byte-sized wheels; entries are `Rc`s, the
//! wheel holds `Weak`s, a hash map by id holds the `Rc`s), with
//! `IdOnlyTimerEntry` — the crate's cheapest entry — and only its `fx-hash`
//! feature.
//!
//! Keyed by the id, so no handle table; `cancel` only removes the map entry
//! and the wheel drops the dead `Weak` when it reaches it. No capacity
//! constructor. The drain asks `can_skip()`: `skip(n)` over empty stretches,
//! `tick()` (1 ms) otherwise.

use super::{Contender, Fired};
use hierarchical_hash_wheel_timer::IdOnlyTimerEntry;
use hierarchical_hash_wheel_timer::wheels::Skip;
use hierarchical_hash_wheel_timer::wheels::cancellable::QuadWheelWithOverflow;
use std::time::Duration;

/// The driver.
pub(crate) struct Driver {
    wheel: QuadWheelWithOverflow<IdOnlyTimerEntry<u32>>,
}

impl Contender for Driver {
    fn new(_n: usize) -> Self {
        Driver {
            wheel: QuadWheelWithOverflow::new(),
        }
    }

    fn schedule_all(&mut self, deadlines_ms: &[u64]) {
        // Time is 0 here, so the delay is the deadline.
        for (id, &deadline) in deadlines_ms.iter().enumerate() {
            self.wheel
                .insert(IdOnlyTimerEntry::new(
                    id as u32,
                    Duration::from_millis(deadline),
                ))
                .unwrap_or_else(|e| panic!("insert refused: {e:?}"));
        }
    }

    fn cancel_all(&mut self, ids: &[u32]) {
        for id in ids {
            self.wheel
                .cancel(id)
                .unwrap_or_else(|e| panic!("timer {id} was not pending: {e:?}"));
        }
    }

    fn drain(&mut self, fired: &mut Vec<Fired>) {
        let mut now_ms = 0;
        loop {
            match self.wheel.can_skip() {
                Skip::Empty => break,
                Skip::Millis(ms) => {
                    self.wheel.skip(ms);
                    now_ms += u64::from(ms);
                }
                Skip::None => {
                    now_ms += 1;
                    for entry in self.wheel.tick() {
                        fired.push(Fired {
                            id: entry.id,
                            at_ms: now_ms,
                        });
                    }
                }
            }
        }
    }

    fn handle_bytes(&self) -> usize {
        0
    }
}
