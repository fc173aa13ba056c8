//! The checkout's callers: a step's engine calls, made together.
//!
//! In durable mode a schedule or a cancel is answered only once its record
//! is fsynced, and calls in flight together share one fsync (group commit).
//! One blocking call at a time makes at most one call per fsync (5.2k
//! acknowledged schedules/s on this machine, `docs/BENCHMARKS.md`), and a
//! million orders plus their payments would take minutes. So with more than
//! one caller (`--checkout-threads`, 64 by default with `--durable`) the
//! checkout makes a step's calls with the engine's async calls on its own
//! thread: [`Callers::start`] polls each call once, in order (it is accepted
//! or refused under its shard lock then, and its outcome is decided), and
//! [`Flight::finish`] waits for the log later, for all of them at once, as
//! buyers checking out together do. The driver finishes a step's calls
//! after the services handled that step (so one fsync covers the calls and
//! the services' acks, which do not wait for the log themselves), and
//! always before a crash.
//!
//! Invariant: a [`Flight`] gives one answer per call, in the order of the
//! calls, and only once every call returned; the calls are accepted in call
//! order, so a seed replays as it does with one caller.

use super::Error;
use super::services::{OrderTimer, Timers};
use duewheel::{Cancel, CancelError, Deadline};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// Longest the driver waits for one step's calls.
const PATIENCE: Duration = Duration::from_secs(120);

/// One engine call of the checkout.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Call {
    /// Schedule `order`'s payment deadline with its reminder.
    Schedule {
        order: u32,
        deadline_ms: u64,
        remind_before_ms: u64,
    },
    /// A payment: cancel `order`'s timer.
    Cancel { order: u32 },
}

/// What the engine answered.
#[derive(Debug)]
pub(crate) enum Answer {
    /// `true` if the timer was accepted.
    Scheduled(bool),
    Cancelled(Result<Cancel<OrderTimer>, CancelError>),
}

impl Call {
    /// The call as a future: nothing happens until it is first polled,
    /// then it is accepted (or refused) at once and waits for the log.
    async fn make(self, timers: Timers) -> Answer {
        match self {
            Self::Schedule {
                order,
                deadline_ms,
                remind_before_ms,
            } => Answer::Scheduled(
                timers
                    .schedule_with_reminders_async(
                        u64::from(order),
                        Deadline::at_unix_ms(deadline_ms),
                        &[Duration::from_millis(remind_before_ms)],
                        OrderTimer { version: 1 },
                    )
                    .await
                    .is_ok(),
            ),
            Self::Cancel { order } => {
                Answer::Cancelled(timers.cancel_async(&u64::from(order)).await)
            }
        }
    }
}

/// Wakes the thread that waits for the calls.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `future` once with a waker that does nothing: what an async call
/// does at once (accept or refuse), without waiting for the log.
pub(crate) fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    Pin::new(future).poll(&mut Context::from_waker(Waker::noop()))
}

/// Waits for `future` on this thread (its wake-up unparks the thread).
pub(crate) fn block_on<F: Future + Unpin>(future: &mut F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = Pin::new(&mut *future).poll(&mut cx) {
            return output;
        }
        thread::park();
    }
}

type InFlight = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// The checkout's calls: one at a time, or a step's calls together.
pub(crate) struct Callers {
    together: bool,
}

/// A step's calls, accepted, maybe still waiting for the log.
pub(crate) struct Flight {
    flying: Vec<Slot>,
}

enum Slot {
    Ready(Answer),
    Flying(InFlight),
    Taken,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("calls", &self.flying.len())
            .finish_non_exhaustive()
    }
}

impl Callers {
    /// `threads` callers: 1 makes one call at a time, more make a step's
    /// calls together.
    pub(crate) fn new(threads: usize) -> Result<Self, Error> {
        Ok(Self {
            together: threads > 1,
        })
    }

    /// Makes every call on `timers`: each is accepted now, in call order;
    /// with one caller each also waits for the log before the next.
    pub(crate) fn start(&self, timers: &Timers, calls: &[Call]) -> Result<Flight, Error> {
        let waker = Waker::from(Arc::new(Unpark(thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut flight = Flight {
            flying: Vec::with_capacity(calls.len()),
        };
        for &call in calls {
            let mut future: InFlight = Box::pin(call.make(timers.clone()));
            flight.flying.push(match future.as_mut().poll(&mut cx) {
                Poll::Ready(answer) => Slot::Ready(answer),
                Poll::Pending if self.together => Slot::Flying(future),
                Poll::Pending => Slot::Ready(wait(&mut future, &mut cx)?),
            });
        }
        Ok(flight)
    }
}

/// Waits for `future`, at most [`PATIENCE`].
fn wait(future: &mut InFlight, cx: &mut Context<'_>) -> Result<Answer, Error> {
    let started = Instant::now();
    loop {
        if let Poll::Ready(answer) = future.as_mut().poll(cx) {
            return Ok(answer);
        }
        let waited = started.elapsed();
        if waited >= PATIENCE {
            return Err(Error::Run(format!(
                "the engine did not answer the checkout within {PATIENCE:?}"
            )));
        }
        thread::park_timeout(PATIENCE - waited);
    }
}

impl Flight {
    /// The answers already known (refusals, and every answer in memory
    /// mode or with one caller), with their call's index.
    pub(crate) fn take_ready(&mut self) -> Vec<(usize, Answer)> {
        let mut ready = Vec::new();
        for (at, slot) in self.flying.iter_mut().enumerate() {
            if matches!(slot, Slot::Ready(_))
                && let Slot::Ready(answer) = std::mem::replace(slot, Slot::Taken)
            {
                ready.push((at, answer));
            }
        }
        ready
    }

    /// The other answers, with their call's index, once they are durable.
    pub(crate) fn finish(self) -> Result<Vec<(usize, Answer)>, Error> {
        let waker = Waker::from(Arc::new(Unpark(thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut answers = Vec::new();
        for (at, slot) in self.flying.into_iter().enumerate() {
            match slot {
                Slot::Ready(answer) => answers.push((at, answer)),
                Slot::Flying(mut future) => answers.push((at, wait(&mut future, &mut cx)?)),
                Slot::Taken => {}
            }
        }
        Ok(answers)
    }
}
