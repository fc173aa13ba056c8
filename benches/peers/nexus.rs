//! nexus-timer 1.5.0 (`BoundedWheel`): a hierarchical wheel over a slab of
//! intrusive entries, `Instant` deadlines at its default 1 ms tick.
//!
//! Presized with `BoundedWheel::bounded(n, epoch)`. A `TimerHandle` must be
//! consumed by `cancel` or `free`, so the driver keeps them: `cancel` for
//! the cancels, and `free` for each timer after it fired (which releases
//! its entry). The drain steps to `next_deadline()` (a lower bound) and calls
//! `poll_and_rebalance`, the poll the crate recommends.

use super::{Contender, Fired, next_step};
use nexus_timer::{BoundedWheel, TimerHandle};
use std::time::{Duration, Instant};

/// The driver.
pub(crate) struct Driver {
    wheel: BoundedWheel<u32>,
    epoch: Instant,
    handles: Vec<Option<TimerHandle<u32>>>,
}

impl Driver {
    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }
}

impl Contender for Driver {
    fn new(n: usize) -> Self {
        let epoch = Instant::now();
        Driver {
            wheel: BoundedWheel::bounded(n, epoch),
            epoch,
            handles: Vec::with_capacity(n),
        }
    }

    fn schedule_all(&mut self, deadlines_ms: &[u64]) {
        for (id, &deadline) in deadlines_ms.iter().enumerate() {
            let handle = self.wheel.schedule(self.at(deadline), id as u32);
            self.handles.push(Some(handle));
        }
    }

    fn cancel_all(&mut self, ids: &[u32]) {
        for &id in ids {
            let handle = self.handles[id as usize]
                .take()
                .expect("each timer is cancelled once");
            assert_eq!(
                self.wheel.cancel(handle),
                Some(id),
                "timer {id} was not pending"
            );
        }
    }

    fn drain(&mut self, fired: &mut Vec<Fired>) {
        let mut buf = Vec::new();
        let mut last = None;
        while let Some(next) = self.wheel.next_deadline() {
            let next_ms = u64::try_from(next.duration_since(self.epoch).as_millis())
                .expect("deadlines are within 30 minutes");
            let at_ms = next_step(next_ms, last);
            self.wheel.poll_and_rebalance(self.at(at_ms), &mut buf);
            for id in buf.drain(..) {
                let handle = self.handles[id as usize]
                    .take()
                    .expect("a fired timer still has its handle");
                self.wheel.free(handle);
                fired.push(Fired { id, at_ms });
            }
            last = Some(at_ms);
        }
    }

    fn handle_bytes(&self) -> usize {
        self.handles.capacity() * size_of::<Option<TimerHandle<u32>>>()
    }
}

impl Drop for Driver {
    /// A dropped handle leaks its entry (and trips a debug assertion), so
    /// hand back the ones still held when a bench drops a full wheel.
    fn drop(&mut self) {
        for handle in self.handles.drain(..).flatten() {
            self.wheel.free(handle);
        }
    }
}
