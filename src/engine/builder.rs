//! The engine's configuration, and starting it.

use super::consumer::Registry;
use super::dir::OwnedDir;
use super::lifecycle::checkpoint_loop;
use super::shard::{Acks, FiredMemory, Shard};
use super::{Engine, Hooks, Inner, Padded, Scheduler, dispatcher, shard_index, wake};
use crate::clock::{Clock, SystemClock, Ticks};
use crate::codec::Codec;
use crate::durable::Opened;
use crate::error::BuildError;
use crate::journal::Journal;
use crate::sync::Mutex;
use crate::trace;
use crate::wal::{Storage, SyncPolicy, WalOptions};
use hdrhistogram::Histogram;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::{self};
use std::time::Duration;

/// Opens the log and replays it into the timers to restore.
/// Opens the journal and replays it into one list per shard (the count, and
/// [`shard_index`] to place each id).
type DurableOpen<K, P> =
    Box<dyn FnOnce(WalOptions, usize) -> Result<Opened<K, P>, BuildError> + Send>;

/// Configures an [`Engine`]. From [`Engine::builder`].
#[must_use = "a builder does nothing until `build`; each setter returns the updated builder"]
pub struct Builder<K, P> {
    tick: Duration,
    shards: usize,
    max_pending: usize,
    channel_capacity: usize,
    batch: usize,
    clock: Option<Arc<dyn Clock>>,
    fired_memory: FiredMemory,
    capacity: usize,
    max_idle: Duration,
    ack_timeout: Option<Duration>,
    max_snoozes: u8,
    max_attempts: Option<u32>,
    dead_letter_group: Option<String>,
    groups: Vec<String>,
    durable: Option<DurableOpen<K, P>>,
    wal: WalOptions,
    hooks: Option<Arc<dyn Hooks<K, P>>>,
    checkpoint_every: Duration,
    /// The directory of [`durable`](Self::durable), once opened, so that
    /// shutdown can release it.
    owned_dir: Arc<Mutex<Option<Arc<OwnedDir>>>>,
    _types: PhantomData<fn(K, P)>,
}

impl<K, P> Builder<K, P>
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    pub(super) fn new() -> Self {
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
            capacity: 0,
            max_idle: Duration::from_secs(1),
            ack_timeout: None,
            max_snoozes: 10,
            max_attempts: None,
            dead_letter_group: None,
            groups: Vec::new(),
            durable: None,
            wal: WalOptions::default(),
            hooks: None,
            checkpoint_every: Duration::from_secs(60),
            owned_dir: Arc::default(),
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

    /// Admission cap: schedules beyond it get [`ScheduleError::Full`](crate::ScheduleError::Full)
    /// (default 50 million). It is split evenly across the shards, each
    /// enforcing its share exactly, so no counter is shared by every
    /// producer; with ids hashed over the shards a schedule can be refused
    /// slightly before the engine-wide total reaches the cap. Must be at
    /// least the number of shards, and at most 2^31 per shard.
    pub fn max_pending(mut self, max_pending: usize) -> Self {
        self.max_pending = max_pending;
        self
    }

    /// Events each consumer group may hold before the dispatcher waits
    /// (default 65,536; a delivery larger than this still passes when the
    /// group is empty). Memory is taken as events arrive, not reserved: a
    /// capacity of 2^30 costs nothing until a group falls that far behind.
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
    /// arriving after the expiry hears [`Cancel::AlreadyFired`](crate::Cancel::AlreadyFired) rather than
    /// [`Cancel::NotFound`](crate::Cancel::NotFound) (default: the last 2^20 ids, up to 10 minutes).
    /// `max_ids` bounds the whole engine: it is split evenly across the
    /// shards as `max_pending` is, each shard forgetting its oldest beyond
    /// its share (so with ids hashed over the shards an id may be forgotten
    /// slightly before `max_ids` newer ones fired). Each remembered id costs
    /// about `size_of::<K>() + 8` bytes plus its slot in a hash table.
    pub fn fired_memory(mut self, max_ids: usize, max_age: Duration) -> Self {
        self.fired_memory = FiredMemory {
            max_ids,
            max_age_ms: u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX),
        };
        self
    }

    /// How many timers to size the id index for at build (default 0: it
    /// grows as needed). The index is split into small tables, so growing
    /// rehashes at most 1/32 of one shard under its lock; a hint avoids even
    /// that on the way up to `timers`. Capped at `max_pending`.
    pub fn capacity(mut self, timers: usize) -> Self {
        self.capacity = timers;
        self
    }

    /// The longest the dispatcher sleeps without looking at the shards
    /// (default 1 s). A safety net only: every schedule, clock advance and
    /// consumer wakes it, so wake-ups do not depend on this (the tests raise
    /// it to an hour to prove that). Lower it only to bound the damage of a
    /// custom [`Clock`] that does not report its advances.
    pub fn max_idle(mut self, max_idle: Duration) -> Self {
        self.max_idle = max_idle;
        self
    }

    /// Turns on acknowledgements: an `Expired` event stays in flight until
    /// every group [acks](crate::Consumer::ack) it, and is redelivered
    /// (`attempt + 1`) to the groups that have not, every `timeout`. The
    /// groups are then fixed: declare them with [`group`](Self::group).
    /// Off by default in memory; always on in durable mode.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = Some(timeout);
        self
    }

    /// How often one timer may be [snoozed](crate::Consumer::snooze) (default 10).
    pub fn max_snoozes(mut self, max: u8) -> Self {
        self.max_snoozes = max;
        self
    }

    /// Bounds the deliveries of an `Expired` event (default: unlimited, it
    /// is redelivered every ack timeout until acked): after `attempts`
    /// deliveries not acked by every group within
    /// [`ack_timeout`](Self::ack_timeout), the timer is dead-lettered: its
    /// [`EventKind::DeadLetter`](crate::EventKind::DeadLetter) event goes to
    /// the [dead-letter group](Self::dead_letter_group), which must be
    /// declared. Snoozes do not count as failed attempts (a snoozed
    /// delivery was answered). One timer may carry its own bound
    /// ([`ScheduleOptions::max_attempts`](crate::ScheduleOptions::max_attempts)).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Declares the dead-letter group `name`: a consumer group that receives
    /// only [`EventKind::DeadLetter`](crate::EventKind::DeadLetter) events,
    /// those of timers whose last attempt was not acked in time (see
    /// [`max_attempts`](Self::max_attempts)). It gets each again every ack
    /// timeout until one of its consumers acks it, which ends the timer; it
    /// does not receive reminders or `Expired` events, and its acks are not
    /// awaited for them. Needs acknowledgements (`ack_timeout`, or durable
    /// mode) and at least one other group.
    ///
    /// ```
    /// use duewheel::{Engine, EventKind, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new(0);
    /// let engine = Engine::<u64, u64>::builder()
    ///     .clock(clock.clone())
    ///     .ack_timeout(Duration::from_secs(10))
    ///     .max_attempts(2)
    ///     .group("orders")
    ///     .dead_letter_group("dlq")
    ///     .build()?;
    /// let (mut orders, mut dlq) = (engine.subscribe("orders")?, engine.subscribe("dlq")?);
    /// let s = engine.scheduler();
    /// s.schedule(7, Duration::from_secs(60), 7).unwrap();
    /// clock.advance(Duration::from_secs(60));
    /// for attempt in 1..=2 {
    ///     s.settle(Duration::from_secs(5));
    ///     assert_eq!(orders.try_recv()?.attempt, attempt); // the consumer fails
    ///     clock.advance(Duration::from_secs(10));
    /// }
    /// s.settle(Duration::from_secs(5));
    /// let dead = dlq.try_recv()?;
    /// assert_eq!((dead.id, dead.kind, dead.attempt), (7, EventKind::DeadLetter, 2));
    /// dlq.ack(&dead)?;
    /// let stats = engine.stats();
    /// assert_eq!((stats.dead_lettered, stats.dead_letters, stats.in_flight), (1, 0, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn dead_letter_group(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.groups.push(name.clone());
        self.dead_letter_group = Some(name);
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
        if self.max_pending.div_ceil(self.shards) > 1 << 31 {
            // A shard's id index keeps the top bit of a row for fired ids.
            return Err(BuildError::Invalid(
                "max_pending must be at most 2^31 per shard (raise shards)",
            ));
        }
        if self.channel_capacity == 0 {
            return Err(BuildError::Invalid("channel_capacity must be at least 1"));
        }
        if self.batch == 0 || self.batch > 1 << 20 {
            return Err(BuildError::Invalid("batch_size must be between 1 and 2^20"));
        }
        // A group declared twice is one group (one bit in the ack mask).
        let mut groups: Vec<String> = Vec::with_capacity(self.groups.len());
        for name in self.groups {
            if !groups.contains(&name) {
                groups.push(name);
            }
        }
        let dead_letter_bit = self
            .dead_letter_group
            .as_ref()
            .and_then(|name| groups.iter().position(|g| g == name))
            .map_or(0, |at| 1u64 << at);
        let ack_timeout = match (self.ack_timeout, &self.durable) {
            (None, Some(_)) => Some(Duration::from_secs(30)),
            (timeout, _) => timeout,
        };
        let acks = match ack_timeout {
            None => None,
            Some(timeout) if timeout.is_zero() => {
                return Err(BuildError::Invalid("ack_timeout must be positive"));
            }
            Some(_) if groups.len() <= usize::from(dead_letter_bit != 0) => {
                return Err(BuildError::Invalid(
                    "acknowledgements need the consumer groups declared with `group` \
                     (besides the dead-letter group)",
                ));
            }
            Some(_) if groups.len() > 64 => {
                return Err(BuildError::Invalid("at most 64 consumer groups"));
            }
            Some(timeout) => Some(Acks {
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                max_snoozes: self.max_snoozes,
                all_groups: (u64::MAX >> (64 - groups.len())) & !dead_letter_bit,
                max_attempts: self.max_attempts.unwrap_or(u32::MAX),
                dead_letter: dead_letter_bit,
            }),
        };
        if self.dead_letter_group.is_some() && acks.is_none() {
            return Err(BuildError::Invalid(
                "a dead-letter group needs acknowledgements (ack_timeout, or durable mode)",
            ));
        }
        match self.max_attempts {
            Some(0) => return Err(BuildError::Invalid("max_attempts must be at least 1")),
            Some(_) if self.dead_letter_group.is_none() => {
                return Err(BuildError::Invalid(
                    "max_attempts needs a dead-letter group (dead_letter_group), \
                     so that no event is dropped",
                ));
            }
            _ => {}
        }
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
                let share =
                    |total: usize| total / self.shards + usize::from(i < total % self.shards);
                let memory = FiredMemory {
                    max_ids: share(self.fired_memory.max_ids),
                    ..self.fired_memory
                };
                Padded(Mutex::new(Shard::new(
                    ticks,
                    now_ms,
                    memory,
                    acks,
                    journal,
                    share(self.max_pending),
                    share(self.capacity.min(self.max_pending)),
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
            registry: Registry::new(self.channel_capacity),
            next_wake: wake::WakeAt::new(),
            dispatcher: OnceLock::new(),
            stopping: AtomicBool::new(false),
            lateness: Mutex::new(Histogram::new(3).expect("3 significant figures is valid")),
            rounds: dispatcher::Rounds::new(),
            delivering_since_ms: AtomicU64::new(u64::MAX),
            undelivered: Mutex::new(Vec::new()),
            hooks: self.hooks,
        });
        // Consumers declared up front exist before the first event; the
        // registry keeps their channels open.
        for group in &groups {
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
                dispatcher::clock_advanced(&inner);
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
            dir: self.owned_dir.lock().take(),
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
    /// locked: a second engine on it gets an error at build, naming the
    /// holder's process id). [`Engine::shutdown`] (or dropping the engine)
    /// releases the directory at once, whatever [`Scheduler`] or
    /// [`Consumer`](crate::Consumer) handles still live: their calls then
    /// get a "shutting down" error, and the directory can be opened again,
    /// in this process or another. Every accepted
    /// schedule, cancel, reschedule, ack and snooze is in the write-ahead log
    /// before the call returns `Ok`; on build the log is replayed: overdue
    /// timers fire at once, the rest wait, none early. Acknowledgements are
    /// on (default timeout 30 s), so groups must be declared with
    /// [`group`](Self::group). Ids and payloads are stored with [`Codec`].
    pub fn durable(mut self, dir: impl AsRef<std::path::Path>) -> Self {
        let dir = dir.as_ref().to_path_buf();
        let owned = self.owned_dir.clone();
        self.durable = Some(Box::new(move |opts, shards| {
            let storage = Arc::new(OwnedDir::new(crate::wal::FsStorage::open(&dir)?));
            *owned.lock() = Some(storage.clone());
            crate::durable::open(storage, opts, shards, &|id| shard_index(id, shards))
        }));
        self
    }

    /// Durable mode on any [`Storage`] backend, as
    /// [`durable`](Self::durable) is on a directory ([`FsStorage`]): the log
    /// lives wherever the backend puts its files. A backend must keep the
    /// trait's durability contract (what `sync` and `sync_dir` promise),
    /// or the engine's does not hold. [`FaultStorage`] is one that fails,
    /// tears and forgets on command, for crash tests of a service built on
    /// the engine.
    ///
    /// ```
    /// use duewheel::wal::{FaultStorage, Storage};
    /// use duewheel::{Engine, ManualClock};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// let disk = FaultStorage::new();
    /// let open = |disk: &FaultStorage| {
    ///     Engine::<u64, String>::builder()
    ///         .clock(ManualClock::new(0))
    ///         .group("orders")
    ///         .durable_storage(Arc::new(disk.clone()) as Arc<dyn Storage>)
    ///         .build()
    /// };
    /// let engine = open(&disk)?;
    /// engine.scheduler().schedule(7, Duration::from_secs(60), "order 7".into())?;
    /// std::mem::forget(engine); // a crash: no shutdown
    /// // After the "reboot", the unsynced writes are gone, the synced ones stay.
    /// let engine = open(&disk.reboot())?;
    /// assert_eq!(engine.stats().pending, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// [`FsStorage`]: crate::wal::FsStorage
    /// [`FaultStorage`]: crate::wal::FaultStorage
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
