//! duewheel: a timer engine for payment deadlines.
//!
//! An unpaid order must be cancelled when its payment window closes, never
//! before, and never after the buyer paid. [`Engine`] holds one timer per
//! order id; [`Scheduler`] handles schedule, cancel and reschedule them
//! from any thread; a dispatcher thread hands the expiries (and reminders)
//! to [`Consumer`] groups over bounded channels. Cancel and expiry of one id
//! are decided atomically, and the caller of `cancel` is told which won.
//!
//! # Quick start
//!
//! ```
//! use duewheel::{Cancel, Engine, EventKind, ManualClock};
//! use std::time::Duration;
//!
//! let clock = ManualClock::new(0); // tests drive time; the default is the system clock
//! let engine = Engine::<u64, &str>::builder().clock(clock.clone()).build()?;
//! let mut expiries = engine.subscribe("order-cancel")?;
//! let payments = engine.scheduler(); // Clone + Send + Sync
//!
//! let window = Duration::from_secs(30 * 60);
//! payments.schedule(1, window, "order 1")?;
//! payments.schedule(2, window, "order 2")?;
//! assert!(matches!(payments.cancel(&1)?, Cancel::Cancelled("order 1"))); // paid in time
//!
//! clock.advance(window);
//! let expired = expiries.recv_timeout(Duration::from_secs(5))?;
//! assert_eq!((expired.id, expired.kind), (2, EventKind::Expired)); // cancel order 2
//! assert!(matches!(payments.cancel(&2)?, Cancel::AlreadyFired)); // too late: refund
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Reminders before the deadline ([`Scheduler::schedule_with_reminders`]),
//! acknowledgements with redelivery and snooze ([`Builder::ack_timeout`]),
//! and a durable mode on a write-ahead log ([`Builder::durable`]) build on
//! this. What is promised, and the test behind each promise, is in
//! [GUARANTEES.md]; how the pieces fit, in [ARCHITECTURE.md]; measured
//! numbers, in [BENCHMARKS.md].
//!
//! [GUARANTEES.md]: https://github.com/duewheel/duewheel/blob/main/docs/GUARANTEES.md
//! [ARCHITECTURE.md]: https://github.com/duewheel/duewheel/blob/main/docs/ARCHITECTURE.md
//! [BENCHMARKS.md]: https://github.com/duewheel/duewheel/blob/main/docs/BENCHMARKS.md
//!
//! # The crates
//!
//! This crate is the embeddable core: the wheel, the engine and its durable
//! log, with no command-line, HTTP or database dependency. Around it:
//!
//! - `duewheel-cluster`: scale-out, nodes sharing the deadline space through
//!   PostgreSQL with shard ownership fenced by epoch; it plugs into the
//!   engine through [`Hooks`] and implements [`Schedule`] as the engine does.
//! - `duewheel-cli`: the `duewheel` command (`simulate`, the flash sale end
//!   to end; `node`, a cluster node over stdin/stdout).
//!
//! # Feature flags
//!
//! None is on by default; each adds to the API and changes nothing else.
//!
//! | feature | what it adds |
//! |---|---|
//! | `tokio` | async consumers: [`Consumer`] is a `futures_core::Stream` of events and has `recv_async`, `ack_async`, `snooze_async`; `Scheduler::schedule_async`, `cancel_async`, `reschedule_async`, whose durable-mode wait for the commit is an `.await` (no thread blocked, none spawned per consumer); [`wal::Wal::wait_async`] |
//! | `prometheus` | [`prometheus::Exporter`]: the engine's [`Stats`] as Prometheus text (`duewheel_pending_timers`, `duewheel_fired_total`, the `duewheel_lateness_seconds` histogram, `duewheel_consumer_lag`, `duewheel_oldest_overdue_seconds`, ...), rendered on demand ([`prometheus::Exporter::render`]; the host serves it, as the example service does with axum). Implies `metrics` |
//! | `metrics` | [`Stats::publish`] into the `metrics` facade; the dispatcher publishes once a second to the global recorder |
//! | `tracing` | `tracing` events (target `duewheel`) for dispatcher batches and stalls, consumer backpressure, WAL commits, checkpoints and recovery; never one per timer |
//! | `serde` | [`Serde`]: a [`Codec`] for any `Serialize + DeserializeOwned` payload or id (postcard's compact format), so a struct payload goes through the durable log as is |
//!
//! # The wheel alone
//!
//! The core is [`wheel::Wheel`], a hierarchical hashed timing wheel
//! (Varghese & Lauck) with O(1) insert, cancel and reschedule, generational
//! keys, and bitmaps that let an idle wheel skip straight to its next
//! deadline.
//!
//! ```
//! use duewheel::wheel::Wheel;
//!
//! let mut wheel = Wheel::new();
//! let paid = wheel.insert(1_800_000, "order 1: cancel if unpaid")?;
//! wheel.insert(1_800_000, "order 2: cancel if unpaid")?;
//!
//! // Order 1 is paid before its window closes.
//! assert!(wheel.cancel(paid).is_some());
//!
//! // Thirty minutes later only order 2 expires.
//! let mut expired = Vec::new();
//! wheel.advance_to(1_800_000, |timer| expired.push(timer.payload));
//! assert_eq!(expired, ["order 2: cancel if unpaid"]);
//! # Ok::<(), duewheel::wheel::InsertError<&str>>(())
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

// The fuzz target files (`fuzz/src`) name the crate; under test they are
// compiled inside it (see `fuzz_corpus`).
#[cfg(all(test, not(loom)))]
extern crate self as duewheel;

mod clock;
mod codec;
mod durable;
mod engine;
mod error;
#[cfg(all(test, not(loom)))]
mod fuzz_corpus;
mod journal;
mod key;
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub mod prometheus;
mod schedule;
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
mod serde_codec;
mod sync;
mod trace;
pub mod wal;
pub mod wheel;

pub use clock::{Clock, Deadline, ManualClock, SystemClock};
pub use codec::{Codec, DecodeError};
pub use engine::{
    Builder, Consumer, Engine, Event, EventKind, GroupStats, Hooks, Lateness, MAX_REMINDERS,
    PendingTimer, Round, ScheduleOptions, Scheduler, Shutdown, Stats, SubscribeError, TimerInfo,
    TimerStatus,
};
pub use error::{
    AckError, BuildError, Cancel, CancelError, RecvError, RecvTimeoutError, RescheduleError,
    ScheduleError, SnoozeError, StorageError, TryRecvError,
};

pub use key::TimerKey;
pub use schedule::Schedule;
#[cfg(feature = "serde")]
pub use serde_codec::Serde;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
