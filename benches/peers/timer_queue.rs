//! timer-queue 0.1.1 (`TimerQueue`): a hierarchical wheel over a `slab`,
//! payload = the id.
//!
//! Presized with `TimerQueue::with_capacity`; the driver keeps the `Timer`
//! handles to cancel with (`remove`). The drain steps to `next_timeout()`
//! (a lower bound) and calls `poll(now)` until it returns `None`.

use super::{Contender, Fired, next_step};
use timer_queue::{Timer, TimerQueue};

/// The driver.
pub(crate) struct Driver {
    queue: TimerQueue<u32>,
    handles: Vec<Timer>,
}

impl Contender for Driver {
    fn new(n: usize) -> Self {
        Driver {
            queue: TimerQueue::with_capacity(n),
            handles: Vec::with_capacity(n),
        }
    }

    fn schedule_all(&mut self, deadlines_ms: &[u64]) {
        for (id, &deadline) in deadlines_ms.iter().enumerate() {
            self.handles.push(self.queue.insert(deadline, id as u32));
        }
    }

    fn cancel_all(&mut self, ids: &[u32]) {
        for &id in ids {
            let removed = self.queue.remove(self.handles[id as usize]);
            assert_eq!(removed, id, "the handle named another timer");
        }
    }

    fn drain(&mut self, fired: &mut Vec<Fired>) {
        let mut last = None;
        while let Some(next) = self.queue.next_timeout() {
            let at_ms = next_step(next, last);
            while let Some(id) = self.queue.poll(at_ms) {
                fired.push(Fired { id, at_ms });
            }
            last = Some(at_ms);
        }
    }

    fn handle_bytes(&self) -> usize {
        self.handles.capacity() * size_of::<Timer>()
    }
}
