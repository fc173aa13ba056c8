//! duewheel: a timer engine for payment deadlines.
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

mod clock;
mod codec;
mod durable;
mod engine;
mod error;
mod key;
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub mod prometheus;
mod trace;
pub mod wal;
pub mod wheel;

pub use clock::{Clock, Deadline, ManualClock, SystemClock};
pub use codec::{Codec, DecodeError};
pub use engine::{
    Builder, Consumer, Engine, Event, EventKind, GroupStats, Lateness, MAX_REMINDERS, PendingTimer,
    Scheduler, Shutdown, Stats, SubscribeError,
};
pub use error::{
    AckError, BuildError, Cancel, CancelError, RescheduleError, ScheduleError, SnoozeError,
    StorageError,
};

pub use key::TimerKey;
