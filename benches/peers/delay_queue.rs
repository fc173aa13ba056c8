//! tokio-util 0.7.20's `DelayQueue`, on a current-thread tokio runtime
//! with its clock paused (`start_paused`, from tokio's `test-util`).
//!
//! Presized with `DelayQueue::with_capacity`; the driver keeps the `Key`s to
//! cancel with (`remove`). Each phase enters the runtime once. The drain
//! awaits `poll_expired` in a loop: whenever nothing is due the runtime
//! goes idle and the paused clock auto-advances straight to the queue's next
//! deadline — the cheapest way tokio offers to move time — and a timer's
//! fire time is `Instant::now()` when it comes out.

use super::{Contender, Fired};
use std::future::poll_fn;
use std::time::Duration;
use tokio::runtime::{Builder, Runtime};
use tokio::time::Instant;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

/// The driver.
pub(crate) struct Driver {
    // Declared before `runtime`, so it drops while the runtime still exists.
    queue: DelayQueue<u32>,
    keys: Vec<Key>,
    start: Instant,
    runtime: Runtime,
}

impl Contender for Driver {
    fn new(n: usize) -> Self {
        let runtime = Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime builds");
        let _inside = runtime.enter();
        Driver {
            queue: DelayQueue::with_capacity(n),
            keys: Vec::with_capacity(n),
            start: Instant::now(),
            runtime,
        }
    }

    fn schedule_all(&mut self, deadlines_ms: &[u64]) {
        let _inside = self.runtime.enter();
        for (id, &deadline) in deadlines_ms.iter().enumerate() {
            let when = self.start + Duration::from_millis(deadline);
            self.keys.push(self.queue.insert_at(id as u32, when));
        }
    }

    fn cancel_all(&mut self, ids: &[u32]) {
        let _inside = self.runtime.enter();
        for &id in ids {
            let removed = self.queue.remove(&self.keys[id as usize]);
            assert_eq!(removed.into_inner(), id, "the key named another timer");
        }
    }

    fn drain(&mut self, fired: &mut Vec<Fired>) {
        let (queue, start) = (&mut self.queue, self.start);
        self.runtime.block_on(async {
            while let Some(expired) = poll_fn(|cx| queue.poll_expired(cx)).await {
                let at_ms = u64::try_from((Instant::now() - start).as_millis())
                    .expect("the drain ends within 30 minutes of paused time");
                fired.push(Fired {
                    id: expired.into_inner(),
                    at_ms,
                });
            }
        });
    }

    fn handle_bytes(&self) -> usize {
        self.keys.capacity() * size_of::<Key>()
    }
}
