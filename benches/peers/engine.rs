//! duewheel's engine as a user runs it: `Engine<u32, ()>` with the
//! builder's defaults (a shard per core, 1 ms ticks, bounded consumer
//! channel), a `ManualClock`, and `Builder::capacity(n)` (the peers are
//! built `with_capacity(n)` too); one producer thread (the caller) schedules
//! and cancels by id; one consumer (the caller again) drains its group.
//!
//! Keyed by the id, so no handle table. Two ways to drain:
//! - a span of deadlines of at most [`STEP_SPAN_MS`] (the flash sale): the
//!   clock steps 1 ms at a time and `Scheduler::settle` waits after each
//!   step until the dispatcher handed over everything due, then
//!   `Consumer::drain_ready` takes it. Lateness is real: `fired_at_ms -
//!   deadline_ms` as the engine recorded them.
//! - otherwise (payment, 30 minutes): the clock jumps once to the last
//!   deadline and the consumer `recv`s until every live timer arrived. That
//!   times the dispatcher → channel → consumer path at full speed; stepping
//!   instead would time 280k+ settle round trips between two threads. Every
//!   event then carries the jump's time, so lateness is not measured.

use super::{Contender, Fired};
use duewheel::{Cancel, Consumer, Deadline, Engine, ManualClock, Scheduler};
use std::time::Duration;

/// The engine clock's start (UTC ms); workload time 0.
const T0_MS: u64 = 1_700_000_000_000;

/// The widest deadline span drained by stepping the clock.
pub(crate) const STEP_SPAN_MS: u64 = 10_000;

/// How long one settle may take before the run counts as failed.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The driver.
pub(crate) struct Driver {
    consumer: Consumer<u32, ()>,
    scheduler: Scheduler<u32, ()>,
    engine: Option<Engine<u32, ()>>,
    clock: ManualClock,
    live: usize,
    span_ms: Option<(u64, u64)>,
    stepped: bool,
}

impl Contender for Driver {
    fn new(n: usize) -> Self {
        let clock = ManualClock::new(T0_MS);
        let engine = Engine::builder()
            .clock(clock.clone())
            .capacity(n)
            .build()
            .expect("the default engine builds");
        Driver {
            consumer: engine.subscribe("expired").unwrap(),
            scheduler: engine.scheduler(),
            engine: Some(engine),
            clock,
            live: 0,
            span_ms: None,
            stepped: true,
        }
    }

    fn schedule_all(&mut self, deadlines_ms: &[u64]) {
        for (id, &deadline) in deadlines_ms.iter().enumerate() {
            self.scheduler
                .schedule(id as u32, Deadline::at_unix_ms(T0_MS + deadline), ())
                .unwrap_or_else(|e| panic!("schedule refused: {e}"));
            self.span_ms = Some(match self.span_ms {
                None => (deadline, deadline),
                Some((lo, hi)) => (lo.min(deadline), hi.max(deadline)),
            });
        }
        self.live += deadlines_ms.len();
    }

    fn cancel_all(&mut self, ids: &[u32]) {
        for id in ids {
            match self.scheduler.cancel(id) {
                Ok(Cancel::Cancelled(())) => self.live -= 1,
                other => panic!("cancel of {id} answered {other:?}"),
            }
        }
    }

    fn drain(&mut self, fired: &mut Vec<Fired>) {
        let Some((first, last)) = self.span_ms else {
            return;
        };
        let mut push = |event: duewheel::Event<u32, ()>| {
            fired.push(Fired {
                id: event.id,
                at_ms: event.fired_at_ms - T0_MS,
            });
        };
        self.stepped = last - first <= STEP_SPAN_MS;
        if self.stepped {
            for t in first..=last {
                self.clock.set_ms(T0_MS + t);
                assert!(
                    self.scheduler.settle(SETTLE_TIMEOUT),
                    "settle timed out at {t} ms"
                );
                self.consumer.drain_ready().into_iter().for_each(&mut push);
            }
        } else {
            self.clock.set_ms(T0_MS + last);
            for _ in 0..self.live {
                let event = self.consumer.recv_timeout(SETTLE_TIMEOUT);
                push(event.expect("every live timer arrives"));
            }
        }
        self.live = 0;
    }

    fn handle_bytes(&self) -> usize {
        0
    }

    fn lateness_measured(&self) -> bool {
        self.stepped
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            drop(engine.shutdown());
        }
    }
}
