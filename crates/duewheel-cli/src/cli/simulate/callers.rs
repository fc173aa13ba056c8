//! The checkout's callers: threads that each keep one engine call in flight.
//!
//! In durable mode a schedule or a cancel returns only once its record is
//! fsynced, and calls in flight together share one fsync (group commit). One
//! caller therefore makes at most one call per fsync (5.2k acknowledged
//! schedules/s on this machine, `docs/BENCHMARKS.md`), and a million orders
//! plus their payments would take minutes; N callers make up to N calls per
//! fsync, as N buyers checking out at once do. So the checkout hands each
//! step's engine calls to N threads.
//!
//! Invariant: [`Callers::run`] returns one answer per call, in the order of
//! the calls, and only once every call returned. Everything whose outcome
//! depends on order (stock, the order table, the counters) stays on the
//! driver's thread, before and after, so a seed replays as it does with one
//! caller. (Only an admission cap that binds, `--max-pending`, can then pick
//! different orders to turn away: the shards see the calls in another
//! order.)

use super::Error;
use super::services::{OrderTimer, Timers};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use duewheel::{Cancel, CancelError, Deadline};
use std::thread::{self, JoinHandle};
use std::time::Duration;

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
    fn make(self, timers: &Timers) -> Answer {
        match self {
            Self::Schedule {
                order,
                deadline_ms,
                remind_before_ms,
            } => Answer::Scheduled(
                timers
                    .schedule_with_reminders(
                        u64::from(order),
                        Deadline::at_unix_ms(deadline_ms),
                        &[Duration::from_millis(remind_before_ms)],
                        OrderTimer { version: 1 },
                    )
                    .is_ok(),
            ),
            Self::Cancel { order } => Answer::Cancelled(timers.cancel(&u64::from(order))),
        }
    }
}

/// A share of one step's calls, for one thread.
struct Job {
    timers: Timers,
    calls: Vec<(usize, Call)>,
}

/// The caller threads (none with one caller: the driver calls itself).
pub(crate) struct Callers {
    threads: usize,
    jobs: Option<Sender<Job>>,
    answers: Receiver<(usize, Answer)>,
    workers: Vec<JoinHandle<()>>,
}

impl Callers {
    /// `threads` callers.
    pub(crate) fn new(threads: usize) -> Result<Self, Error> {
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<Job>();
        let (answers_tx, answers) = crossbeam_channel::unbounded();
        let mut workers = Vec::new();
        // One caller is the driver itself.
        let spawned = if threads > 1 { threads } else { 0 };
        for i in 0..spawned {
            let (jobs, answers) = (jobs_rx.clone(), answers_tx.clone());
            let worker = thread::Builder::new()
                .name(format!("sim-checkout-{i}"))
                .spawn(move || {
                    for job in jobs.iter() {
                        for (index, call) in job.calls {
                            if answers.send((index, call.make(&job.timers))).is_err() {
                                return;
                            }
                        }
                    }
                })
                .map_err(|e| Error::Run(format!("could not start a checkout thread: {e}")))?;
            workers.push(worker);
        }
        Ok(Self {
            threads,
            jobs: Some(jobs_tx),
            answers,
            workers,
        })
    }

    /// Makes every call on `timers` and returns the answers in call order
    /// (see the module invariant).
    pub(crate) fn run(&self, timers: &Timers, calls: &[Call]) -> Result<Vec<Answer>, Error> {
        let (Some(jobs), true) = (&self.jobs, self.threads > 1 && calls.len() > 1) else {
            return Ok(calls.iter().map(|call| call.make(timers)).collect());
        };
        let share = calls.len().div_ceil(self.threads);
        for (n, chunk) in calls.chunks(share).enumerate() {
            let job = Job {
                timers: timers.clone(),
                calls: chunk
                    .iter()
                    .enumerate()
                    .map(|(i, &call)| (n * share + i, call))
                    .collect(),
            };
            jobs.send(job)
                .map_err(|_| Error::Run("the checkout threads stopped".into()))?;
        }
        let mut answers: Vec<Option<Answer>> = (0..calls.len()).map(|_| None).collect();
        for _ in 0..calls.len() {
            match self.answers.recv_timeout(PATIENCE) {
                Ok((index, answer)) => answers[index] = Some(answer),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return Err(Error::Run(format!(
                        "the engine did not answer the checkout within {PATIENCE:?}"
                    )));
                }
            }
        }
        answers
            .into_iter()
            .map(|a| a.ok_or_else(|| Error::Run("a checkout call went unanswered".into())))
            .collect()
    }
}

impl Drop for Callers {
    fn drop(&mut self) {
        self.jobs.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
