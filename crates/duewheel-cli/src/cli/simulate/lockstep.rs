//! The driver's handshake with the consumer threads on the manual clock:
//! after each step, wait until every service has handled every event of
//! that step, so the next step starts from a settled world and a seed
//! replays exactly.
//!
//! Invariant: when [`LockStep::quiesce`] returns `true`, each worker has
//! handled every event its group held when the call began. Why: the driver
//! calls it after [`Scheduler::settle`](duewheel::Scheduler::settle), so
//! everything due is already in the groups; it then bumps the epoch and
//! wakes the workers; a worker reports an epoch only after a drain that
//! began after it read that epoch came back empty. Workers never wait for
//! the driver while holding events, and the driver's settle gives up after a
//! short timeout to wake them, so a full group channel cannot deadlock the
//! two (the engine's dispatcher waits for room; the workers make it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker sleeps before looking again on its own.
pub(crate) const IDLE: Duration = Duration::from_millis(20);

/// Shared by the driver and the workers.
#[derive(Debug)]
pub(crate) struct LockStep {
    epoch: AtomicU64,
    done: Vec<AtomicU64>,
    driver: Thread,
    workers: parking_lot::Mutex<Vec<Thread>>,
    stop: AtomicBool,
    /// The engine crashed: what the workers still drain from it is lost.
    crashed: AtomicBool,
}

impl LockStep {
    /// A handshake for `workers` workers; the calling thread is the driver.
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            epoch: AtomicU64::new(0),
            done: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            driver: thread::current(),
            workers: parking_lot::Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
        }
    }

    /// Lets [`kick`](Self::kick) wake this worker thread.
    pub(crate) fn add_worker(&self, thread: Thread) {
        self.workers.lock().push(thread);
    }

    /// The epoch a worker is about to drain for.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(SeqCst)
    }

    /// Worker `index` drained everything up to `epoch`.
    pub(crate) fn report(&self, index: usize, epoch: u64) {
        if self.done[index].fetch_max(epoch, SeqCst) < epoch {
            self.driver.unpark();
        }
    }

    /// Starts a new epoch and wakes every worker; returns the epoch.
    pub(crate) fn kick(&self) -> u64 {
        let epoch = self.epoch.fetch_add(1, SeqCst) + 1;
        for worker in self.workers.lock().iter() {
            worker.unpark();
        }
        epoch
    }

    /// Kicks the workers and waits until each has drained its group, or
    /// `timeout` passes (then `false`).
    pub(crate) fn quiesce(&self, timeout: Duration) -> bool {
        let epoch = self.kick();
        let deadline = Instant::now() + timeout;
        loop {
            if self.done.iter().all(|d| d.load(SeqCst) >= epoch) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            thread::park_timeout(left.min(IDLE));
        }
    }

    /// Tells the workers to finish once their groups are empty.
    pub(crate) fn stop(&self) {
        self.stop.store(true, SeqCst);
        self.kick();
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(SeqCst)
    }

    /// The engine is about to crash (`--crash-at`): from now on the workers
    /// handle nothing more it delivers, and count it as lost with it. The
    /// driver calls this before it moves the clock, so with the manual clock
    /// the workers are idle, every call they made has returned, and the
    /// crash leaves no call in doubt.
    pub(crate) fn crash(&self) {
        self.crashed.store(true, SeqCst);
    }

    pub(crate) fn crashed(&self) -> bool {
        self.crashed.load(SeqCst)
    }
}
