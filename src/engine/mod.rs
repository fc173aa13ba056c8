//! The engine: sharded wheels keyed by the caller's id, one dispatcher
//! thread, and consumer groups.
//!
//! # Structure
//!
//! An id is hashed once per operation ([`index`]); the hash's high bits
//! pick one of N shards, each a mutex around a
//! [`Wheel`](crate::wheel::Wheel) of compact entries ([`entry`]), its id
//! index and its fired-id memory ([`fired`]) ([`shard`]). Schedule, cancel
//! and reschedule lock one shard for O(1) work and probe its index once;
//! there is no global lock on those paths (in durable mode the log's append
//! takes its own lock, issue #14). The dispatcher ([`dispatcher`]) fires due
//! timers in bounded batches and hands them to the consumer groups
//! ([`consumer`]) with no lock held. The handles are the [`Builder`]
//! ([`builder`]), the [`Scheduler`] ([`scheduler`]), the running [`Engine`]
//! ([`lifecycle`]) and the restore at open ([`recovery`]); what the log
//! stores is the journal record ([`crate::journal`]), not the entry.
//!
//! # Invariants
//!
//! - cancel and fire of one id are decided under that id's shard lock, so
//!   exactly one wins and the caller of `cancel` is told which;
//! - the number of pending timers never exceeds `max_pending`: the cap is
//!   split evenly across the shards (`max_pending >= shards`), and each
//!   shard checks its share under its lock, against the timers it holds
//!   (waiting or in flight), so the count cannot drift and no global
//!   counter is shared by the producers; the fired-id memory is split the
//!   same way, so it too is bounded for the whole engine;
//! - nothing accepted is lost: a pending timer fires, is cancelled, or is
//!   handed back by [`Engine::shutdown`]; a fired event reaches every group or
//!   is handed back by `shutdown`;
//! - an ack or snooze acts only on the event it names (its id and its
//!   [`Event::token`]);
//! - with a dead-letter group, an `Expired` event is delivered at most
//!   `max_attempts` times not counting snoozes; then the timer is
//!   dead-lettered: its [`EventKind::DeadLetter`] event goes to that group
//!   alone, again every ack timeout, until that group acks it (never
//!   dropped, and in durable mode kept across restarts).

#[cfg(feature = "tokio")]
mod async_consumer;
#[cfg(feature = "tokio")]
mod async_scheduler;
mod builder;
mod consumer;
mod dir;
mod dispatcher;
mod entry;
mod event;
mod fired;
mod hooks;
mod index;
mod info;
mod lifecycle;
mod options;
mod pipeline;
mod recovery;
mod scheduler;
mod shard;
mod stats;
mod wake;

pub use self::builder::Builder;
pub use self::consumer::Consumer;
pub use self::event::{Event, EventKind};
pub use self::hooks::{Hooks, Round};
pub use self::info::{TimerInfo, TimerStatus};
pub use self::lifecycle::{Engine, Shutdown};
pub use self::options::ScheduleOptions;
pub(crate) use self::recovery::Recovered;
pub use self::scheduler::{Scheduler, SubscribeError};
pub use self::shard::PendingTimer;
pub use self::stats::{GroupStats, Lateness, Stats};

use self::consumer::Registry;
use self::shard::Shard;
use crate::clock::{Clock, Ticks};
use crate::durable::Store;
use crate::error::StorageError;
use crate::sync::Mutex;
use hdrhistogram::Histogram;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

/// The most reminders one timer may carry.
pub const MAX_REMINDERS: usize = crate::journal::MAX_REMINDERS;

/// Keeps each shard's lock on its own cache lines, so two cores working on
/// two shards do not share a line.
#[repr(align(128))]
struct Padded<T>(T);

type ShardLock<K, P> = Padded<Mutex<Shard<K, P>>>;

/// An event with the name of the group it did not reach.
type Undelivered<K, P> = (Arc<str>, Event<K, P>);

/// What the scheduler handles, the dispatcher and the engine share.
pub(crate) struct Inner<K, P> {
    shards: Box<[ShardLock<K, P>]>,
    /// The write-ahead log, in durable mode.
    journal: Option<Arc<dyn Store<K, P>>>,
    clock: Arc<dyn Clock>,
    ticks: Ticks,
    max_pending: usize,
    /// Places taken under `max_pending` (see the module invariants).
    batch: usize,
    max_idle: Duration,
    registry: Registry<K, P>,
    /// The tick the dispatcher will look again by (see `dispatcher`).
    next_wake: wake::WakeAt,
    dispatcher: OnceLock<Thread>,
    stopping: AtomicBool,
    lateness: Mutex<Histogram<u64>>,
    /// The right to run dispatch rounds, and what they hold undelivered
    /// (see `dispatcher`).
    rounds: dispatcher::Rounds<K, P>,
    /// `due_ms` of the oldest event in a delivery under way, or `u64::MAX`.
    delivering_since_ms: AtomicU64,
    /// Events that shutdown interrupted before every group had them.
    undelivered: Mutex<Vec<Undelivered<K, P>>>,
    /// A store that claims before delivery (see `hooks`), if any.
    hooks: Option<Arc<dyn Hooks<K, P>>>,
}

impl<K, P> Inner<K, P> {
    fn shards(&self) -> impl Iterator<Item = &Mutex<Shard<K, P>>> {
        self.shards.iter().map(|s| &s.0)
    }

    /// `id`'s timer ended by acknowledgement: the one place that tells the
    /// store (see `hooks`), whichever ack call ended it.
    fn ended(&self, id: &K) {
        if let Some(hooks) = &self.hooks {
            hooks.ended(id);
        }
    }

    fn unpark(&self) {
        if let Some(thread) = self.dispatcher.get() {
            thread.unpark();
        }
    }

    /// Tells the dispatcher a timer is due at `tick` (after the insert).
    fn note_due(&self, tick: u64) {
        if self.next_wake.note_due(tick) {
            self.unpark();
        }
    }
}

impl<K: Hash + Eq + Clone, P: Clone> Inner<K, P> {
    /// The shard that owns `id`.
    fn shard_of(&self, id: &K) -> &Mutex<Shard<K, P>> {
        &self.shards[shard_index(id, self.shards.len())].0
    }

    /// The shard that owns the id whose hash is `hash` ([`index::hash_id`]).
    fn shard_at(&self, hash: u64) -> &Mutex<Shard<K, P>> {
        &self.shards[index::shard_of(hash, self.shards.len())].0
    }

    /// Snapshots every shard (one at a time) into the log's checkpoint.
    fn checkpoint(&self) -> Result<(), StorageError> {
        let Some(store) = &self.journal else {
            return Ok(());
        };
        store.checkpoint(&mut |each| {
            for shard in self.shards() {
                shard
                    .lock()
                    .for_each(|id, payload, state| each(id, payload, state));
            }
        })
    }
}

/// The shard of `shards` that owns `id` (the same hash the shard's index
/// uses: see [`index`]).
fn shard_index<K: Hash>(id: &K, shards: usize) -> usize {
    index::shard_of(index::hash_id(id), shards)
}
