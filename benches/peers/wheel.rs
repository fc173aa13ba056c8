//! duewheel's `Wheel`, single-threaded, payload = the id.
//!
//! Presized with `Wheel::with_capacity`; the driver keeps the `TimerKey`s
//! (8 B each) to cancel with. The drain steps to `next_expiration()` and
//! advances there, so every timer comes out at the tick the wheel was moved
//! to.

use super::{Contender, Fired, next_step};
use duewheel::TimerKey;
use duewheel::wheel::Wheel;

/// The driver.
pub(crate) struct Driver {
    wheel: Wheel<u32>,
    keys: Vec<TimerKey>,
}

impl Contender for Driver {
    fn new(n: usize) -> Self {
        Driver {
            wheel: Wheel::with_capacity(n),
            keys: Vec::with_capacity(n),
        }
    }

    fn schedule_all(&mut self, deadlines_ms: &[u64]) {
        for (id, &deadline) in deadlines_ms.iter().enumerate() {
            let key = self
                .wheel
                .insert(deadline, id as u32)
                .unwrap_or_else(|e| panic!("insert refused: {e}"));
            self.keys.push(key);
        }
    }

    fn cancel_all(&mut self, ids: &[u32]) {
        for &id in ids {
            let cancelled = self.wheel.cancel(self.keys[id as usize]);
            assert!(cancelled.is_some(), "timer {id} was not pending");
        }
    }

    fn drain(&mut self, fired: &mut Vec<Fired>) {
        let mut last = None;
        while let Some(next) = self.wheel.next_expiration() {
            let at_ms = next_step(next, last);
            self.wheel.advance_to(at_ms, |timer| {
                fired.push(Fired {
                    id: timer.payload,
                    at_ms,
                });
            });
            last = Some(at_ms);
        }
    }

    fn handle_bytes(&self) -> usize {
        self.keys.capacity() * size_of::<TimerKey>()
    }
}
