//! The engine: sharded wheels keyed by the caller's id, one dispatcher
//! thread, and consumer groups.
//!
//! # Structure
//!
//! An id hashes to one of N shards; each shard is a `parking_lot::Mutex`
//! around a [`Wheel`](crate::wheel::Wheel) and its id index
//! ([`shard`]). Schedule, cancel and reschedule lock one shard for O(1) work;
//! there is no global lock on those paths. The dispatcher ([`dispatcher`])
//! fires due timers in bounded batches and hands them to the consumer groups
//! ([`consumer`]) with no lock held.
//!
//! # Invariants
//!
//! - cancel and fire of one id are decided under that id's shard lock, so
//!   exactly one wins and the caller of `cancel` is told which;
//! - the number of pending timers never exceeds `max_pending`: a schedule
//!   the cap is split evenly across the shards (`max_pending >= shards`), and
//!   each shard checks its share under its lock, against the timers it holds
//!   (waiting or in flight), so the count cannot drift and no global counter
//!   is shared by the producers; the
//!   the timer;
//! - nothing accepted is lost: a pending timer fires, is cancelled, or is
//!   handed back by [`Engine::shutdown`]; a fired event reaches every group or
//!   is handed back by `shutdown`.

#[cfg(feature = "tokio")]
mod async_consumer;
#[cfg(feature = "tokio")]
mod async_scheduler;
mod consumer;
mod dispatcher;
mod event;
mod hooks;
mod shard;
mod stats;
mod wake;

pub use self::consumer::Consumer;
pub use self::event::{Event, EventKind};
pub use self::hooks::{Hooks, Round};
pub use self::shard::PendingTimer;
pub use self::stats::{GroupStats, Lateness, Stats};

use self::consumer::Acker;
use self::consumer::Registry;
use self::shard::{Acks, FiredMemory, Shard};
pub(crate) use self::shard::{Journal, Pending, Reminders};
use crate::clock::{Clock, Deadline, SystemClock, Ticks};
use crate::codec::Codec;
use crate::durable::{Opened, Store};
use crate::error::{
    AckError, BuildError, Cancel, CancelError, RescheduleError, ScheduleError, SnoozeError,
    StorageError,
};
use crate::trace;
use crate::wal::{RecoveryReport, Storage, SyncPolicy, WalOptions};
use hdrhistogram::Histogram;
use parking_lot::{Condvar, Mutex};
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// The most reminders one timer may carry.
pub const MAX_REMINDERS: usize = 4;

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
    /// Settle requests made so far (see [`Scheduler::settle`]).
    settle_requests: AtomicU64,
    /// The latest dispatcher pass that caught up: the clock time it caught up
    /// to, and the settle requests made before that pass began.
    settled: Mutex<Settled>,
    settled_cv: Condvar,
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

    /// Records that a pass which began after `requests` settle requests has
    /// handed over everything due at `now_ms`.
    fn mark_settled(&self, now_ms: u64, requests: u64) {
        let mut settled = self.settled.lock();
        if settled.requests < requests || settled.now_ms < now_ms {
            *settled = Settled {
                now_ms: now_ms.max(settled.now_ms),
                requests: requests.max(settled.requests),
            };
            self.settled_cv.notify_all();
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Settled {
    now_ms: u64,
    requests: u64,
}

impl<K: Hash + Eq + Clone, P: Clone> Inner<K, P> {
    /// The shard that owns `id`.
    fn shard_of(&self, id: &K) -> &Mutex<Shard<K, P>> {
        &self.shards[shard_index(id, self.shards.len())].0
    }

    /// Snapshots every shard (one at a time) into the log's checkpoint.
    fn checkpoint(&self) -> Result<(), StorageError> {
        let Some(store) = &self.journal else {
            return Ok(());
        };
        store.checkpoint(&mut |each| {
            for shard in self.shards() {
                shard.lock().for_each(|timer| each(timer));
            }
        })
    }
}

/// Opens the log and replays it into the timers to restore.
/// Opens the journal and replays it into one list per shard (the count, and
/// [`shard_index`] to place each id).
type DurableOpen<K, P> =
    Box<dyn FnOnce(WalOptions, usize) -> Result<Opened<K, P>, BuildError> + Send>;

/// The shard of `shards` that owns `id`. Mixes before reducing, so shard
/// choice and the shard's own hash map do not use the same bits.
fn shard_index<K: Hash>(id: &K, shards: usize) -> usize {
    let hash = rustc_hash::FxBuildHasher.hash_one(id);
    let mixed = hash.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(32);
    usize::try_from(mixed % shards.max(1) as u64).unwrap_or(0)
}

/// What the durable mode recovered at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Timers restored (waiting or in flight).
    pub timers: usize,
    /// Of those, the ones whose due time passed while the engine was down:
    /// they fire at once (catch-up), with their lateness recorded.
    pub overdue: usize,
    /// Of those, the ones that were in flight (their `Expired` event fired
    /// and not acked by every group): they are redelivered at once, with
    /// `attempt + 1`, whether or not their redelivery time had passed.
    pub in_flight: usize,
    /// What the log itself reported (snapshot entries, records, a torn tail).
    pub log: RecoveryReport,
}

/// Configures an [`Engine`]. From [`Engine::builder`].
pub struct Builder<K, P> {
    tick: Duration,
    shards: usize,
    max_pending: usize,
    channel_capacity: usize,
    batch: usize,
    clock: Option<Arc<dyn Clock>>,
    fired_memory: FiredMemory,
    max_idle: Duration,
    ack_timeout: Option<Duration>,
    max_snoozes: u8,
    groups: Vec<String>,
    durable: Option<DurableOpen<K, P>>,
    wal: WalOptions,
    hooks: Option<Arc<dyn Hooks<K, P>>>,
    checkpoint_every: Duration,
    _types: PhantomData<fn(K, P)>,
}

impl<K, P> Builder<K, P>
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    fn new() -> Self {
        Self {
            tick: Duration::from_millis(1),
            shards: thread::available_parallelism().map_or(1, |n| n.get()),
            max_pending: 50_000_000,
            channel_capacity: 65_536,
            batch: 1_024,
            clock: None,
            fired_memory: FiredMemory {
                max_ids: 1 << 20,
                max_age_ms: 10 * 60 * 1_000,
            },
            max_idle: Duration::from_secs(1),
            ack_timeout: None,
            max_snoozes: 10,
            groups: Vec::new(),
            durable: None,
            wal: WalOptions::default(),
            hooks: None,
            checkpoint_every: Duration::from_secs(60),
            _types: PhantomData,
        }
    }

    /// Tick length, a whole number of milliseconds (default 1 ms). Deadlines
    /// round up to a tick, so events may be up to one tick late, never early.
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Number of shards (default: available parallelism).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// Admission cap: schedules beyond it get [`ScheduleError::Full`]
    /// (default 50 million). It is split evenly across the shards, each
    /// enforcing its share exactly, so no counter is shared by every
    /// producer; with ids hashed over the shards a schedule can be refused
    /// slightly before the engine-wide total reaches the cap. Must be at
    /// least the number of shards.
    pub fn max_pending(mut self, max_pending: usize) -> Self {
        self.max_pending = max_pending;
        self
    }

    /// Events each consumer group may hold before the dispatcher waits
    /// (default 65,536).
    pub fn channel_capacity(mut self, events: usize) -> Self {
        self.channel_capacity = events;
        self
    }

    /// Most events taken from one shard per dispatcher round, and so the
    /// delivery batch size (default 1,024).
    pub fn batch_size(mut self, events: usize) -> Self {
        self.batch = events;
        self
    }

    /// The clock (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// How many fired ids to remember, and for how long, so that a cancel
    /// arriving after the expiry hears [`Cancel::AlreadyFired`] rather than
    /// [`Cancel::NotFound`] (default: the last 2^20 ids, up to 10 minutes).
    pub fn fired_memory(mut self, max_ids: usize, max_age: Duration) -> Self {
        self.fired_memory = FiredMemory {
            max_ids,
            max_age_ms: u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX),
        };
        self
    }

    /// The longest the dispatcher sleeps without looking at the shards
    /// (default 1 s). A safety net only: wake-ups do not depend on it. Tests
    /// raise it to prove that.
    #[doc(hidden)]
    pub fn max_idle(mut self, max_idle: Duration) -> Self {
        self.max_idle = max_idle;
        self
    }

    /// Turns on acknowledgements: an `Expired` event stays in flight until
    /// every group [acks](Consumer::ack) it, and is redelivered
    /// (`attempt + 1`) to the groups that have not, every `timeout`. The
    /// groups are then fixed: declare them with [`group`](Self::group).
    /// Off by default in memory; always on in durable mode.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = Some(timeout);
        self
    }

    /// How often one timer may be [snoozed](Consumer::snooze) (default 10).
    pub fn max_snoozes(mut self, max: u8) -> Self {
        self.max_snoozes = max;
        self
    }

    /// Declares a consumer group up front, so that events buffer for it from
    /// the start even before its first consumer subscribes.
    pub fn group(mut self, name: impl Into<String>) -> Self {
        self.groups.push(name.into());
        self
    }

    /// Starts the engine and its dispatcher thread.
    pub fn build(self) -> Result<Engine<K, P>, BuildError> {
        let tick_ms = u64::try_from(self.tick.as_millis()).unwrap_or(u64::MAX);
        if tick_ms == 0 || !self.tick.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(BuildError::Invalid(
                "tick must be a whole number of milliseconds, at least 1",
            ));
        }
        if self.shards == 0 || self.shards > 4096 {
            return Err(BuildError::Invalid("shards must be between 1 and 4096"));
        }
        if self.max_pending < self.shards || self.max_pending >= u32::MAX as usize {
            return Err(BuildError::Invalid(
                "max_pending must be at least the number of shards and below 2^32 - 1",
            ));
        }
        if self.channel_capacity == 0 {
            return Err(BuildError::Invalid("channel_capacity must be at least 1"));
        }
        if self.batch == 0 || self.batch > 1 << 20 {
            return Err(BuildError::Invalid("batch_size must be between 1 and 2^20"));
        }
        let ack_timeout = match (self.ack_timeout, &self.durable) {
            (None, Some(_)) => Some(Duration::from_secs(30)),
            (timeout, _) => timeout,
        };
        let acks = match ack_timeout {
            None => None,
            Some(timeout) if timeout.is_zero() => {
                return Err(BuildError::Invalid("ack_timeout must be positive"));
            }
            Some(_) if self.groups.is_empty() => {
                return Err(BuildError::Invalid(
                    "acknowledgements need the consumer groups declared with `group`",
                ));
            }
            Some(_) if self.groups.len() > 64 => {
                return Err(BuildError::Invalid("at most 64 consumer groups"));
            }
            Some(timeout) => Some(Acks {
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                max_snoozes: self.max_snoozes,
                all_groups: u64::MAX >> (64 - self.groups.len()),
            }),
        };
        let opened = match self.durable {
            Some(open) => Some(open(self.wal, self.shards)?),
            None => None,
        };
        let store = opened.as_ref().map(|o| o.store.clone());
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock::new()));
        let ticks = Ticks::new(tick_ms);
        let now_ms = clock.now_ms();
        let shards = (0..self.shards)
            .map(|i| {
                let journal = store.clone().map(|s| s as Arc<dyn Journal<K, P>>);
                // An even share; the first shards take the remainder.
                let cap = self.max_pending / self.shards
                    + usize::from(i < self.max_pending % self.shards);
                Padded(Mutex::new(Shard::new(
                    ticks,
                    now_ms,
                    self.fired_memory,
                    acks,
                    journal,
                    cap,
                )))
            })
            .collect();
        let inner = Arc::new(Inner {
            shards,
            journal: store,
            clock: clock.clone(),
            ticks,
            max_pending: self.max_pending,
            batch: self.batch,
            max_idle: self.max_idle,
            registry: Registry::new(self.channel_capacity.div_ceil(self.batch)),
            next_wake: wake::WakeAt::new(),
            dispatcher: OnceLock::new(),
            stopping: AtomicBool::new(false),
            lateness: Mutex::new(Histogram::new(3).expect("3 significant figures is valid")),
            settle_requests: AtomicU64::new(0),
            settled: Mutex::new(Settled::default()),
            settled_cv: Condvar::new(),
            delivering_since_ms: AtomicU64::new(u64::MAX),
            undelivered: Mutex::new(Vec::new()),
            hooks: self.hooks,
        });
        // Consumers declared up front exist before the first event; the
        // registry keeps their channels open.
        for group in &self.groups {
            drop(inner.registry.subscribe(group));
        }
        if acks.is_some() {
            inner.registry.freeze();
        }
        let scheduler = Scheduler { inner };
        let recovered = match opened {
            Some(opened) => Some(scheduler.restore(opened, now_ms)?),
            None => None,
        };
        if let Some(r) = &recovered {
            trace::info!(
                timers = r.timers,
                overdue = r.overdue,
                "durable engine recovered its timers; overdue ones fire at once"
            );
        }
        trace::info!(
            shards = self.shards,
            tick_ms,
            durable = scheduler.inner.journal.is_some(),
            "engine started"
        );
        let inner = scheduler.inner;
        let weak: Weak<Inner<K, P>> = Arc::downgrade(&inner);
        clock.on_advance(Box::new(move || {
            if let Some(inner) = weak.upgrade() {
                inner.unpark();
            }
        }));
        let for_thread = inner.clone();
        let thread = thread::Builder::new()
            .name("duewheel-dispatcher".into())
            .spawn(move || dispatcher::run(for_thread))
            .map_err(|e| BuildError::Spawn(e.to_string()))?;
        let checkpointer = match &inner.journal {
            Some(_) => {
                let for_thread = inner.clone();
                let every = self.checkpoint_every;
                Some(
                    thread::Builder::new()
                        .name("duewheel-checkpoint".into())
                        .spawn(move || checkpoint_loop(&for_thread, every))
                        .map_err(|e| BuildError::Spawn(e.to_string()))?,
                )
            }
            None => None,
        };
        Ok(Engine {
            scheduler: Scheduler { inner },
            thread: Some(thread),
            checkpointer,
            recovered,
        })
    }
}

impl<K, P> Builder<K, P>
where
    K: Hash + Eq + Clone + Send + 'static + Codec,
    P: Clone + Send + 'static + Codec,
{
    /// Plugs in a store that shares timers with other processes (the
    /// cluster): every round of fired events goes through
    /// [`Hooks::admit`] before delivery, and every timer acknowledged by all
    /// groups is reported to [`Hooks::ended`]. See [`Hooks`].
    pub fn hooks(mut self, hooks: Arc<dyn Hooks<K, P>>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// Makes the engine durable in directory `dir` (created if needed, and
    /// locked: a second engine on it gets an error at build). Every accepted
    /// schedule, cancel, reschedule, ack and snooze is in the write-ahead log
    /// before the call returns `Ok`; on build the log is replayed: overdue
    /// timers fire at once, the rest wait, none early. Acknowledgements are
    /// on (default timeout 30 s), so groups must be declared with
    /// [`group`](Self::group). Ids and payloads are stored with [`Codec`].
    pub fn durable(mut self, dir: impl AsRef<std::path::Path>) -> Self {
        let dir = dir.as_ref().to_path_buf();
        self.durable = Some(Box::new(move |opts, shards| {
            let storage = crate::wal::FsStorage::open(&dir)
                .map_err(|e| BuildError::Storage(e.to_string()))?;
            crate::durable::open(Arc::new(storage), opts, shards, &|id| {
                shard_index(id, shards)
            })
        }));
        self
    }

    /// Durable mode on any [`Storage`]: tests put a fault-injecting one here.
    #[doc(hidden)]
    pub fn durable_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.durable = Some(Box::new(move |opts, shards| {
            crate::durable::open(storage, opts, shards, &|id| shard_index(id, shards))
        }));
        self
    }

    /// When a durable call may return (default [`SyncPolicy::Always`]: after
    /// the fsync its group commit shares). [`SyncPolicy::EveryMs`] trades
    /// that promise for speed: a machine crash can lose the last `n` ms of
    /// acknowledged changes.
    pub fn sync_policy(mut self, sync: SyncPolicy) -> Self {
        self.wal.sync = sync;
        self
    }

    /// How often the durable mode writes a checkpoint (default 60 s; one is
    /// always written at clean shutdown).
    pub fn checkpoint_every(mut self, every: Duration) -> Self {
        self.checkpoint_every = every;
        self
    }
}

/// The timer engine: owns the dispatcher thread. Schedule and cancel through
/// its [`Scheduler`] handles; receive through [`Consumer`]s.
///
/// ```
/// use duewheel::{Cancel, Engine, EventKind, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(1_700_000_000_000);
/// let engine = Engine::<u64, String>::builder().clock(clock.clone()).build()?;
/// let mut orders = engine.subscribe("order-cancel");
/// let payments = engine.scheduler();
///
/// // Two unpaid orders with a 30-minute window and a reminder 5 minutes before.
/// let window = Duration::from_secs(30 * 60);
/// let remind = [Duration::from_secs(5 * 60)];
/// payments.schedule_with_reminders(1, window, &remind, "order 1".into()).unwrap();
/// payments.schedule_with_reminders(2, window, &remind, "order 2".into()).unwrap();
///
/// // Order 1 is paid; order 2 is not.
/// assert!(matches!(payments.cancel(&1)?, Cancel::Cancelled(_)));
/// clock.advance(window);
/// let reminder = orders.recv_timeout(Duration::from_secs(5))?;
/// let expiry = orders.recv_timeout(Duration::from_secs(5))?;
/// assert_eq!((reminder.id, reminder.kind), (2, EventKind::Reminder(1)));
/// assert_eq!((expiry.id, expiry.kind), (2, EventKind::Expired));
///
/// // A payment arriving now learns that the expiry won.
/// assert!(matches!(payments.cancel(&2)?, Cancel::AlreadyFired));
/// let shutdown = engine.shutdown();
/// assert!(shutdown.pending.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Engine<K, P>
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    scheduler: Scheduler<K, P>,
    thread: Option<JoinHandle<()>>,
    checkpointer: Option<JoinHandle<()>>,
    recovered: Option<Recovered>,
}

/// Writes a checkpoint every `every` until the engine stops.
fn checkpoint_loop<K: Hash + Eq + Clone, P: Clone>(inner: &Inner<K, P>, every: Duration) {
    let mut last = Instant::now();
    while !inner.stopping.load(Ordering::SeqCst) {
        thread::park_timeout(every.saturating_sub(last.elapsed()));
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        if last.elapsed() >= every {
            // A failed checkpoint leaves the log intact; the next one retries.
            if inner.checkpoint().is_err() {
                trace::warning!("checkpoint failed; the log is intact and the next one retries");
            }
            last = Instant::now();
        }
    }
}

/// What [`Engine::shutdown`] hands back: nothing accepted is lost.
#[derive(Debug)]
pub struct Shutdown<K, P> {
    /// Timers that were still pending, with their remaining reminders. Empty
    /// in durable mode: there they stay in the log and come back on the next
    /// open.
    pub pending: Vec<PendingTimer<K, P>>,
    /// Fired events that shutdown interrupted before they reached a group,
    /// with the group's name. Events already queued in a group stay there:
    /// its consumers can still receive them.
    pub undelivered: Vec<(String, Event<K, P>)>,
}

impl<K, P> Engine<K, P>
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    /// A builder with the defaults: 1 ms ticks, a shard per core, the system
    /// clock.
    pub fn builder() -> Builder<K, P> {
        Builder::new()
    }

    /// A handle to schedule and cancel with; `Clone + Send + Sync`.
    pub fn scheduler(&self) -> Scheduler<K, P> {
        self.scheduler.clone()
    }

    /// A consumer of group `group`, creating the group if needed. A group
    /// created now receives the events fired from now on.
    pub fn subscribe(&self, group: &str) -> Consumer<K, P> {
        self.scheduler
            .subscribe(group)
            .expect("the registry is open while the engine lives")
    }

    /// A snapshot of the engine's statistics.
    pub fn stats(&self) -> Stats {
        self.scheduler.stats()
    }

    /// What durable mode recovered at build; `None` in memory.
    pub fn recovered(&self) -> Option<&Recovered> {
        self.recovered.as_ref()
    }

    /// Writes a checkpoint now (durable mode; a no-op in memory).
    pub fn checkpoint(&self) -> Result<(), StorageError> {
        self.scheduler.inner.checkpoint()
    }

    /// Stops the dispatcher and hands back every timer still pending and
    /// every fired event that had not reached all groups. Schedules after
    /// this get `ShuttingDown` with their payload; consumers can still drain
    /// what their groups hold, then see the channel disconnect.
    pub fn shutdown(mut self) -> Shutdown<K, P> {
        self.stop()
    }

    fn stop(&mut self) -> Shutdown<K, P> {
        let inner = &self.scheduler.inner;
        inner.stopping.store(true, Ordering::SeqCst);
        inner.unpark();
        if let Some(thread) = self.thread.take() {
            // The dispatcher never panics on input; if it did, the timers are
            // still in the shards and are handed back below.
            let _ = thread.join();
        }
        if let Some(checkpointer) = self.checkpointer.take() {
            checkpointer.thread().unpark();
            let _ = checkpointer.join();
        }
        if let Some(store) = &inner.journal {
            // Refuse changes first, so the final checkpoint is the state.
            for shard in inner.shards() {
                shard.lock().close_for_writes();
            }
            if !store.failed() {
                let _ = inner.checkpoint();
            }
            let _ = store.close();
        }
        let mut pending = Vec::new();
        for shard in inner.shards() {
            shard.lock().close(&mut pending);
        }
        if inner.journal.is_some() {
            // Durable: they are in the log, not the caller's to keep.
            pending.clear();
        }
        inner.registry.close();
        let undelivered: Vec<_> = std::mem::take(&mut *inner.undelivered.lock())
            .into_iter()
            .map(|(group, event)| (group.to_string(), event))
            .collect();
        trace::info!(
            pending = pending.len(),
            undelivered = undelivered.len(),
            "engine stopped"
        );
        Shutdown {
            pending,
            undelivered,
        }
    }
}

impl<K, P> Drop for Engine<K, P>
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    /// Dropping without [`shutdown`](Engine::shutdown) stops the dispatcher
    /// and refuses further schedules; pending timers are dropped with it.
    fn drop(&mut self) {
        if self.thread.is_some() {
            drop(self.stop());
        }
    }
}

impl<K, P> std::fmt::Debug for Engine<K, P>
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// A cheap, cloneable handle to an [`Engine`]: schedule, cancel and
/// reschedule by the caller's id from any thread. With feature `tokio` each
/// call has an `_async` form (`schedule_async`, `cancel_async`, ...) whose
/// durable-mode wait for the commit is an `.await` instead of a blocked
/// thread.
///
/// ```
/// use duewheel::{Cancel, Engine, ManualClock, ScheduleError};
/// use std::time::Duration;
///
/// let engine = Engine::<u64, u32>::builder().clock(ManualClock::new(0)).build()?;
/// let scheduler = engine.scheduler();
/// scheduler.schedule(42, Duration::from_secs(1800), 7).unwrap();
///
/// // Scheduling the same order twice is refused, and the payload comes back.
/// let err = scheduler.schedule(42, Duration::from_secs(60), 8).unwrap_err();
/// assert!(matches!(err, ScheduleError::AlreadyScheduled(8)));
///
/// scheduler.reschedule(&42, Duration::from_secs(3600))?;
/// assert!(matches!(scheduler.cancel(&42)?, Cancel::Cancelled(7)));
/// assert!(matches!(scheduler.cancel(&42)?, Cancel::NotFound));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Scheduler<K, P> {
    inner: Arc<Inner<K, P>>,
}

impl<K, P> Clone for Scheduler<K, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, P> std::fmt::Debug for Scheduler<K, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

/// Why [`Scheduler::subscribe`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// With acknowledgements on, groups are fixed at build.
    #[error("no consumer group {0:?} was declared (acknowledgements fix the groups at build)")]
    UnknownGroup(String),
    /// A 65th group.
    #[error("at most 64 consumer groups")]
    TooManyGroups,
}

impl<K, P> Scheduler<K, P>
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    #[cfg(feature = "metrics")]
    pub(crate) fn from_inner(inner: Arc<Inner<K, P>>) -> Self {
        Self { inner }
    }

    fn shard(&self, id: &K) -> &Mutex<Shard<K, P>> {
        &self.inner.shards[shard_index(id, self.inner.shards.len())].0
    }

    /// Puts the timers replayed from the log back into their shards, the
    /// shards in parallel (each list already belongs to one shard).
    fn restore(&self, opened: Opened<K, P>, now_ms: u64) -> Result<Recovered, BuildError> {
        let timers = opened.shards.iter().map(Vec::len).sum();
        let all = || opened.shards.iter().flatten();
        let overdue = all().filter(|timer| timer.due_ms <= now_ms).count();
        let in_flight = all().filter(|timer| timer.flight.is_some()).count();
        let shards = &self.inner.shards;
        thread::scope(|scope| {
            let restoring: Vec<_> = opened
                .shards
                .into_iter()
                .zip(shards)
                .map(|(list, shard)| {
                    scope.spawn(move || {
                        let mut shard = shard.0.lock();
                        shard.reserve(list.len());
                        list.into_iter()
                            .try_for_each(|timer| shard.restore(timer, now_ms))
                    })
                })
                .collect();
            restoring.into_iter().try_for_each(|handle| {
                handle
                    .join()
                    .map_err(|_| BuildError::Recovery("a restoring thread panicked".into()))?
                    .map_err(BuildError::Recovery)
            })
        })?;
        Ok(Recovered {
            timers,
            overdue,
            in_flight,
            log: opened.report,
        })
    }

    /// The engine clock's time, UTC milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Schedules `payload` for `id`, due at `deadline` (an absolute UTC time
    /// or a delay from now; see [`Deadline`]).
    pub fn schedule(
        &self,
        id: K,
        deadline: impl Into<Deadline>,
        payload: P,
    ) -> Result<(), ScheduleError<P>> {
        self.schedule_with_reminders(id, deadline, &[], payload)
    }

    /// Like [`schedule`](Self::schedule), with reminders: each offset asks
    /// for a [`EventKind::Reminder`] that long before the deadline (at most
    /// [`MAX_REMINDERS`]). Reminders come in time order, then `Expired`; a
    /// reminder whose time has already passed fires at once.
    pub fn schedule_with_reminders(
        &self,
        id: K,
        deadline: impl Into<Deadline>,
        reminders_before: &[Duration],
        payload: P,
    ) -> Result<(), ScheduleError<P>> {
        let (seq, backup) = self.accept_schedule(id, deadline.into(), reminders_before, payload)?;
        Self::schedule_outcome(self.durable(seq), backup)
    }

    /// The part of a schedule done under the shard lock: the record's
    /// sequence number and, in durable mode, a copy of the payload to hand
    /// back if the log fails before the record is durable.
    fn accept_schedule(
        &self,
        id: K,
        deadline: Deadline,
        reminders_before: &[Duration],
        payload: P,
    ) -> Result<(Option<u64>, Option<P>), ScheduleError<P>> {
        let Some(reminders) = Reminders::new(
            reminders_before
                .iter()
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        ) else {
            return Err(ScheduleError::TooManyReminders(payload));
        };
        let now_ms = self.now_ms();
        let deadline_ms = deadline.to_unix_ms(now_ms);
        // In durable mode the payload is kept until the record is durable, so
        // a log failure can still hand it back.
        let backup = self.inner.journal.as_ref().map(|_| payload.clone());
        let accepted =
            self.shard(&id)
                .lock()
                .schedule(id, deadline_ms, now_ms, reminders, payload)?;
        self.inner.note_due(accepted.value);
        Ok((accepted.seq, backup))
    }

    fn schedule_outcome(
        durable: Result<(), StorageError>,
        backup: Option<P>,
    ) -> Result<(), ScheduleError<P>> {
        match (durable, backup) {
            (Ok(()), _) => Ok(()),
            // The engine is fail-stopped: the timer will not survive a
            // restart, so the caller must treat it as not scheduled.
            (Err(StorageError), Some(payload)) => Err(ScheduleError::Storage(payload)),
            (Err(StorageError), None) => unreachable!("only a journal fails"),
        }
    }

    /// Schedules many timers at once and returns each one's result, in
    /// order. In durable mode the whole batch waits for durability once
    /// (its records share group commits), so a caller with many timers to
    /// place, a bulk import or a checkout service that buffers its orders,
    /// is not held to one fsync per timer. Each result means what
    /// [`schedule`](Self::schedule)'s would: `Ok` only once that timer is
    /// durable, and every error hands its payload back.
    ///
    /// ```
    /// use duewheel::{Engine, ScheduleError};
    /// use std::time::Duration;
    ///
    /// let engine = Engine::<u64, &str>::builder().build()?;
    /// let s = engine.scheduler();
    /// let window = Duration::from_secs(30 * 60);
    /// let results = s.schedule_batch([(1, window, "a"), (2, window, "b"), (1, window, "c")]);
    /// assert!(results[0].is_ok() && results[1].is_ok());
    /// assert!(matches!(results[2], Err(ScheduleError::AlreadyScheduled("c"))));
    /// # Ok::<(), duewheel::BuildError>(())
    /// ```
    pub fn schedule_batch<D: Into<Deadline>>(
        &self,
        timers: impl IntoIterator<Item = (K, D, P)>,
    ) -> Vec<Result<(), ScheduleError<P>>> {
        let mut results = Vec::new();
        // Durable mode: the accepted payloads, kept until the batch is
        // durable, and the last record to wait for (`None` if one could not
        // be logged: the log failed).
        let mut backups = Vec::new();
        let mut last_seq = Some(0);
        for (id, deadline, payload) in timers {
            let accepted = self.accept_schedule(id, deadline.into(), &[], payload);
            results.push(accepted.map(|(seq, backup)| {
                if let Some(backup) = backup {
                    backups.push((results.len(), backup));
                    last_seq = last_seq.zip(seq).map(|(a, b)| a.max(b));
                }
            }));
        }
        if !backups.is_empty() && self.durable(last_seq).is_err() {
            // Fail-stopped before the batch was durable: none of it counts.
            for (at, payload) in backups {
                results[at] = Err(ScheduleError::Storage(payload));
            }
        }
        results
    }

    /// Waits until a journaled change is durable (no-op in memory).
    fn durable(&self, seq: Option<u64>) -> Result<(), StorageError> {
        match (&self.inner.journal, seq) {
            (Some(journal), Some(seq)) => journal.wait(seq),
            (Some(_), None) => Err(StorageError),
            (None, _) => Ok(()),
        }
    }

    /// Cancels `id`'s timer and every remaining reminder. Exactly one of
    /// cancel and expiry wins, and the answer says which. In durable mode it
    /// returns once the cancel is logged.
    pub fn cancel(&self, id: &K) -> Result<Cancel<P>, CancelError> {
        let accepted = self.shard(id).lock().cancel(id)?;
        if accepted.value.is_cancelled() {
            self.durable(accepted.seq)
                .map_err(|_| CancelError::Storage)?;
        }
        Ok(accepted.value)
    }

    /// Moves `id`'s deadline, earlier or later. Reminders already sent stay
    /// sent; the remaining ones follow the new deadline.
    pub fn reschedule(&self, id: &K, deadline: impl Into<Deadline>) -> Result<(), RescheduleError> {
        let now_ms = self.now_ms();
        let deadline_ms = deadline.into().to_unix_ms(now_ms);
        let accepted = self.shard(id).lock().reschedule(id, deadline_ms, now_ms)?;
        self.inner.note_due(accepted.value);
        self.durable(accepted.seq)
            .map_err(|_| RescheduleError::Storage)
    }

    pub(crate) fn ack(&self, id: &K, group: u32) -> Result<(), AckError> {
        let now_ms = self.now_ms();
        let accepted = self.shard(id).lock().ack(id, group, now_ms)?;
        if accepted.value {
            self.durable(accepted.seq).map_err(|_| AckError::Storage)?;
            self.inner.ended(id);
        }
        Ok(())
    }

    pub(crate) fn snooze(&self, id: &K, delay: Duration) -> Result<(), SnoozeError> {
        let until_ms = Deadline::after(delay).to_unix_ms(self.now_ms());
        let accepted = self.shard(id).lock().snooze(id, until_ms)?;
        self.inner.note_due(accepted.value);
        self.durable(accepted.seq).map_err(|_| SnoozeError::Storage)
    }

    /// A consumer of group `group`, creating the group if needed.
    pub fn subscribe(&self, group: &str) -> Result<Consumer<K, P>, SubscribeError> {
        let (mut consumer, position) = self.inner.registry.subscribe(group)?;
        consumer.acker = Some(Acker {
            scheduler: self.clone(),
            group: position,
        });
        // The dispatcher holds timers while no group exists: wake it.
        self.inner.unpark();
        Ok(consumer)
    }

    /// Blocks until every event due at the clock's present has been handed
    /// to the consumer groups, or `timeout` passes (then `false`). With a
    /// [`ManualClock`](crate::ManualClock) this makes tests deterministic:
    /// advance, settle, then look at what the groups hold. It waits for
    /// room in full groups, so drain them from another thread if needed.
    pub fn settle(&self, timeout: Duration) -> bool {
        // Everything scheduled before this call is seen by any pass that
        // starts after the request is counted.
        let request = self.inner.settle_requests.fetch_add(1, Ordering::SeqCst) + 1;
        let target = self.now_ms();
        let deadline = Instant::now() + timeout;
        self.inner.unpark();
        let mut settled = self.inner.settled.lock();
        let done = |s: &Settled| s.requests >= request && s.now_ms >= target;
        while !done(&settled) {
            if self
                .inner
                .settled_cv
                .wait_until(&mut settled, deadline)
                .timed_out()
            {
                return done(&settled);
            }
        }
        true
    }

    /// A snapshot of the engine's statistics.
    pub fn stats(&self) -> Stats {
        let inner = &*self.inner;
        let now_ms = inner.clock.now_ms();
        let now_tick = inner.ticks.now_tick(now_ms);
        let mut counters = shard::Counters::default();
        let mut pending = 0;
        let mut oldest_tick: Option<u64> = None;
        for shard in inner.shards() {
            let shard = shard.lock();
            counters.add(&shard.counters);
            pending += shard.len();
            if let Some(next) = shard.next_tick().filter(|&t| t <= now_tick) {
                oldest_tick = Some(oldest_tick.map_or(next, |o| o.min(next)));
            }
        }
        let delivering = inner.delivering_since_ms.load(Ordering::SeqCst);
        let oldest_overdue_ms = oldest_tick
            .map(|t| inner.ticks.start_ms(t))
            .into_iter()
            .chain((delivering != u64::MAX).then_some(delivering))
            .min();
        let groups = inner
            .registry
            .snapshot()
            .map(|groups| {
                groups
                    .iter()
                    .map(|g| GroupStats {
                        name: g.name.to_string(),
                        consumers: g.shared.consumers.load(Ordering::Relaxed),
                        lag: g.shared.queued.load(Ordering::Relaxed),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Stats {
            now_ms,
            pending: pending - usize::try_from(counters.in_flight).unwrap_or(pending),
            max_pending: inner.max_pending,
            scheduled_total: counters.scheduled,
            cancelled_total: counters.cancelled,
            rescheduled_total: counters.rescheduled,
            expired_total: counters.expired,
            reminders_total: counters.reminders,
            in_flight: counters.in_flight,
            acked_total: counters.acked,
            redelivered_total: counters.redelivered,
            snoozed_total: counters.snoozed,
            rejected_full_total: counters.rejected_full,
            tick_ms: inner.ticks.tick_ms(),
            lateness: Lateness::from_histogram(&inner.lateness.lock(), inner.ticks.tick_ms()),
            groups,
            storage_failed: inner.journal.as_ref().is_some_and(|j| j.failed()),
            oldest_overdue_ms,
        }
    }
}
