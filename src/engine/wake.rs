//! The dispatcher's wake-up time, shared with every scheduler without a
//! global lock (the race tokio shipped as #6682).
//!
//! Protocol, all `SeqCst`:
//! 1. the dispatcher calls [`WakeAt::begin_scan`] (stores `MAX`) *before* it
//!    reads the shards' next deadlines;
//! 2. a scheduler inserts under its shard lock and *then* calls
//!    [`WakeAt::note_due`]; if that returns `true` it unparks the dispatcher;
//! 3. after the scan the dispatcher calls [`WakeAt::plan`] with the earliest
//!    deadline it saw and sleeps until the result (park/unpark keeps a token,
//!    so an unpark that lands before the park is not lost).
//!
//! Invariant: when the dispatcher sleeps until `t`, every timer inserted
//! before that has a deadline `>= t`, or its scheduler unparks the
//! dispatcher. An insert finished before step 1 is seen by the scan; one
//! after step 1 lowers the value from `MAX` (or below the dispatcher's plan),
//! and either step 3 reads the lowered value, or `note_due` sees the plan above
//! its tick and asks for an unpark. `loom` checks every interleaving below.
//!
//! Clock steps (a [`ManualClock`](crate::ManualClock)) use the same value:
//! 4. a clock step stores the new time and *then* calls [`WakeAt::due_by`]
//!    with its tick; only if that returns `true` does it run a round or
//!    unpark the dispatcher (a step with nothing due costs one load);
//! 5. whoever runs rounds (the dispatcher, a `settle`, a clock step) reads
//!    the clock again *after* step 3, and runs another round if the plan is
//!    due by then.
//!
//! Invariant: a step to a time by which something is due is never left
//! unserved. `due_by`, `begin_scan` and `plan` are all read-modify-writes
//! of the one value, so they are totally ordered: if the step's `due_by`
//! comes after the runner's `plan` it reads the plan (and acts); if before,
//! the runner's `begin_scan` or `plan` reads from it, the clock step's store
//! happens-before the runner's clock read that follows, and the runner sees
//! the new time (and runs the round). A runner other
//! than the dispatcher that plans earlier than the dispatcher sleeps until
//! unparks it when the clock moves by itself (a `ManualClock` dispatcher
//! sleeps until stepped or unparked, and steps read the plan).

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};

/// The tick the dispatcher will look at the shards again by.
pub(crate) struct WakeAt(AtomicU64);

impl WakeAt {
    pub(crate) fn new() -> Self {
        Self(AtomicU64::new(u64::MAX))
    }

    /// Step 1: the dispatcher is about to scan. A swap, not a store: it
    /// reads the value a clock step's `due_by` left, so a step that came
    /// first happens-before the scan's clock read (see step 4).
    pub(crate) fn begin_scan(&self) {
        self.0.swap(u64::MAX, Ordering::SeqCst);
    }

    /// Step 2: a timer due at `tick` was inserted. Returns `true` if the
    /// dispatcher must be unparked.
    pub(crate) fn note_due(&self, tick: u64) -> bool {
        // Most schedules are later than the planned wake-up: a plain load
        // then avoids a read-modify-write on a line every producer shares.
        // Seeing `<= tick` here means step 1 of the next scan is still
        // ahead in the SeqCst order, so that scan sees this insert.
        if self.0.load(Ordering::SeqCst) <= tick {
            return false;
        }
        self.0.fetch_min(tick, Ordering::SeqCst) > tick
    }

    /// Step 4: whether work is planned at or before `tick` (the clock just
    /// reached it). `MAX` plans nothing, even for a clock standing at the
    /// end of time.
    pub(crate) fn due_by(&self, tick: u64) -> bool {
        // A read-modify-write that changes nothing, not a load: it takes
        // its place in the value's modification order, so either it reads
        // the runner's plan, or the runner's next swap or plan reads it and
        // the clock step's store happens-before the runner's clock read.
        // The argument then needs release/acquire only, which is what loom
        // checks (it models `SeqCst` loads and stores as acquire/release).
        let planned = self.0.fetch_or(0, Ordering::SeqCst);
        planned != u64::MAX && planned <= tick
    }

    /// Step 3: the scan found `earliest`; returns the tick to sleep until.
    pub(crate) fn plan(&self, earliest: u64) -> u64 {
        self.0.fetch_min(earliest, Ordering::SeqCst).min(earliest)
    }
}

#[cfg(all(test, loom))]
mod loom_model {
    use super::WakeAt;
    use loom::sync::atomic::{AtomicU64, Ordering};
    use loom::sync::{Arc, Mutex};
    use loom::thread;

    /// One shard holding the earliest deadline it has; a scheduler inserts a
    /// timer due at tick 5 while the dispatcher (which knows of one due at
    /// 10) scans and goes to sleep. If the dispatcher plans past 5 it must be
    /// unparked, or `park` never returns and loom reports the deadlock.
    #[test]
    fn an_earlier_deadline_always_wakes_the_dispatcher() {
        loom::model(|| {
            let shard = Arc::new(Mutex::new(10u64));
            let wake = Arc::new(WakeAt::new());
            let (s, w) = (shard.clone(), wake.clone());
            let dispatcher = thread::spawn(move || {
                w.begin_scan();
                let earliest = *s.lock().unwrap();
                let planned = w.plan(earliest);
                if planned > 5 {
                    // Sleeping past the new deadline: only an unpark ends this.
                    thread::park();
                }
            });
            {
                let mut earliest = shard.lock().unwrap();
                *earliest = (*earliest).min(5);
            }
            if wake.note_due(5) {
                dispatcher.thread().unpark();
            }
            dispatcher.join().unwrap();
        });
    }

    /// A clock step to tick 5 races a round runner that read the clock at
    /// 4 and found a timer due at 5. The runner plans and reads the clock
    /// again (step 5); the step stores the time and asks `due_by` (step 4).
    /// If neither saw the other the runner would park with the timer due
    /// and nobody to wake it: loom reports that deadlock.
    #[test]
    fn a_clock_step_with_something_due_is_never_lost() {
        loom::model(|| {
            let clock = Arc::new(AtomicU64::new(4));
            let wake = Arc::new(WakeAt::new());
            let (c, w) = (clock.clone(), wake.clone());
            let runner = thread::spawn(move || {
                w.begin_scan();
                let now = c.load(Ordering::SeqCst);
                let earliest = 5;
                let mut planned = if earliest <= now { 0 } else { w.plan(earliest) };
                if planned > 0 && planned <= c.load(Ordering::SeqCst) {
                    planned = 0; // step 5: due after all, run another round
                }
                if planned > 0 {
                    // Nothing due as far as the runner knows: only the
                    // step's unpark ends this.
                    thread::park();
                }
            });
            clock.store(5, Ordering::SeqCst);
            if wake.due_by(5) {
                runner.thread().unpark();
            }
            runner.join().unwrap();
        });
    }

    /// A clock step with nothing due wakes nobody: the plan is later.
    #[test]
    fn a_clock_step_with_nothing_due_reads_the_plan_only() {
        loom::model(|| {
            let wake = WakeAt::new();
            wake.begin_scan();
            assert_eq!(wake.plan(9), 9);
            assert!(!wake.due_by(8));
            assert!(wake.due_by(9));
        });
    }
}
