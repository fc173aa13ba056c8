//! A cluster node: the engine running on the shared PostgreSQL table
//! instead of its local write-ahead log.
//!
//! The wheel, the dispatcher and the consumers are the engine's own; what
//! changes is who decides. **The table decides; the wheel only says when to
//! ask.** A node owns a set of the fixed logical shards (leases with epochs,
//! see [`super::lease`]) and keeps in its wheel the pending rows of its
//! shards due within a look-ahead horizon. When the wheel fires, the
//! dispatcher hands the round to the node's gate (a [`duewheel::Hooks`]),
//! which **claims** the rows in one fenced statement and lets
//! through only what it claimed; an ack by every group deletes the row,
//! fenced again.
//!
//! Invariants:
//! - an event reaches a consumer only after its row was claimed under the
//!   epoch this node holds for the shard, in a statement that held the
//!   shard row `FOR SHARE` (so no two epochs' claims can both succeed after
//!   a takeover: the later one's bump waits for, or fences, the earlier);
//! - a row leaves the table only by a cancel that found it pending or by
//!   the ack of a claim: an acked schedule is never lost, whichever node
//!   dies; a claimed row that was never acked is claimed again by the next
//!   owner (`attempt + 1`);
//! - nothing the node's memory holds is needed for correctness: rows the
//!   wheel does not know (written by other nodes, written after a takeover's
//!   load, paged in late) are found by the periodic sweep, which reads the
//!   table; the wheel makes firing on time cheap, the table makes it sure.
//!
//! Threads: `writer`s (schedules, cancels and reschedules, batched up to
//! `batch_rows`/`batch_wait` per commit, answered after the commit),
//! the `keeper` (heartbeat, lease renewal, balancing and orphan takeover),
//! the `pager` (takeover loads, the horizon, the sweep), the `acker`
//! (batched deletes of acked rows), the engine's dispatcher, which
//! claims through the gate (a round split by shard over two connections,
//! claimed at once; reminders are delivered there too, see `remind`),
//! and, from the first snooze, the snoozer (writes snoozes back). Each has
//! its own connection.

mod acker;
mod error;
mod fence;
mod gate;
mod keeper;
mod metrics;
mod pager;
mod remind;
mod reply;
mod reschedule;
mod session;
pub(crate) mod sql;
mod tx_consumer;
mod writer;

pub use error::NodeError;
pub use tx_consumer::{SubscribeTxError, TxConsumeError, TxConsumer};

use super::config::StoreConfig;
use super::shard_map::ShardMap;
use crossbeam_channel::Sender;
use duewheel::{
    Cancel, CancelError, Clock, Codec, Consumer, Deadline, Engine, RescheduleError, Schedule,
    ScheduleError, SubscribeError, SystemClock,
};
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use sql::NodeDb;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How a node runs. Defaults follow the prototype's measurements
/// (`docs/SCALE_OUT.md`): 10 s leases
/// renewed every 2.5 s, commits of up to 1000 rows or 2 ms.
///
/// ```no_run
/// use duewheel_cluster::{NodeConfig, StoreConfig};
/// use std::time::Duration;
///
/// let store = StoreConfig::new("host=/tmp/pg port=54329 user=postgres");
/// let node = NodeConfig::new(store, "node-a").group("orders").start::<String>()?;
/// let mut orders = node.subscribe("orders")?;
/// node.scheduler()
///     .schedule(42, Duration::from_secs(30 * 60), "cancel order 42".to_string())?;
/// if let Ok(event) = orders.recv_timeout(Duration::from_secs(1)) {
///     orders.ack(&event)?;
/// }
/// node.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
#[must_use = "a configuration does nothing until `start`; each setter returns the updated one"]
pub struct NodeConfig {
    store: StoreConfig,
    node_id: String,
    lease_ttl: Duration,
    renew_every: Duration,
    grace: Duration,
    horizon: Duration,
    page_every: Duration,
    sweep_every: Duration,
    batch_rows: usize,
    batch_wait: Duration,
    writers: usize,
    claim_pipeline: usize,
    ack_timeout: Duration,
    op_timeout: Duration,
    channel_capacity: usize,
    tombstone_ttl: Duration,
    groups: Vec<String>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("node_id", &self.node_id)
            .field("lease_ttl", &self.lease_ttl)
            .field("horizon", &self.horizon)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $t:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $t) -> Self {
            self.$name = value;
            self
        }
    };
}

impl NodeConfig {
    /// A node named `node_id` on the database `store`. The id is unique
    /// among live processes: a start while another live process heartbeats
    /// under it fails with [`NodeError::NodeIdInUse`].
    pub fn new(store: StoreConfig, node_id: impl Into<String>) -> Self {
        Self {
            store,
            node_id: node_id.into(),
            lease_ttl: Duration::from_secs(10),
            renew_every: Duration::from_millis(2500),
            grace: Duration::from_secs(1),
            horizon: Duration::from_secs(300),
            page_every: Duration::from_secs(1),
            sweep_every: Duration::from_millis(250),
            batch_rows: 1000,
            batch_wait: Duration::from_millis(2),
            writers: 2,
            claim_pipeline: 2,
            ack_timeout: Duration::from_secs(30),
            op_timeout: Duration::from_secs(5),
            channel_capacity: 65_536,
            tombstone_ttl: Duration::from_secs(15 * 60),
            groups: Vec::new(),
            clock: Arc::new(SystemClock::new()),
        }
    }

    setter!(
        /// How long a shard's lease lasts without renewal (database clock).
        lease_ttl: Duration
    );
    setter!(
        /// How often leases are renewed and the balance is checked.
        renew_every: Duration
    );
    setter!(
        /// How long past its expiry another node's lease is left alone
        /// before the sweeper takes the shard (a slow but live owner's
        /// margin).
        grace: Duration
    );
    setter!(
        /// How far ahead of the present the wheel holds a shard's rows.
        horizon: Duration
    );
    setter!(
        /// How often the horizon moves forward (paging in later rows).
        page_every: Duration
    );
    setter!(
        /// How often the table is swept for due rows the wheel does not
        /// hold (written by other nodes, or after a takeover's load). The
        /// bound on how late such a row fires.
        sweep_every: Duration
    );
    setter!(
        /// Most rows per commit.
        batch_rows: usize
    );
    setter!(
        /// Longest a schedule waits for others to share its commit.
        batch_wait: Duration
    );
    setter!(
        /// Writer threads (connections) for schedules and cancels.
        writers: usize
    );
    setter!(
        /// Rounds of due timers claimed at once (1..=8; default 2): the
        /// dispatcher fires and hands out the next round while the claims
        /// of up to this many wait on the database (see
        /// [`duewheel::Hooks::pipeline`]). Each takes its own claim
        /// connections. 1 waits for every claim before firing on.
        claim_pipeline: usize
    );
    setter!(
        /// How long a delivery waits for its acks before it is redelivered.
        ack_timeout: Duration
    );
    setter!(
        /// How long a call retries a broken connection before it answers
        /// `Unavailable` or `InDoubt`.
        op_timeout: Duration
    );
    setter!(
        /// Events each consumer group may hold before the dispatcher waits.
        channel_capacity: usize
    );
    setter!(
        /// How long a fired and acked timer's row is kept as a tombstone
        /// (database clock) before the pager reaps it. While it is kept, a
        /// cancel of the id answers `AlreadyFired` (also when the cancel's
        /// first try was in doubt); after, `NotFound`. Longer costs table
        /// size: one row per timer fired in the last `tombstone_ttl`.
        tombstone_ttl: Duration
    );

    /// Declares a consumer group (every group must be declared before
    /// start: an event is acked when every group acked it).
    pub fn group(mut self, name: impl Into<String>) -> Self {
        self.groups.push(name.into());
        self
    }

    /// The clock deadlines are judged by (the system clock by default).
    /// Leases are always judged by the database's clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Connects (one connection per thread), checks the schema, and starts
    /// the node. It takes its fair share of shards within a renew interval.
    pub fn start<P>(self) -> Result<Node<P>, NodeError>
    where
        P: Codec + Clone + Send + Sync + 'static,
    {
        Node::start(self)
    }

    fn validate(&self) -> Result<(), NodeError> {
        let bad = |m: &str| Err(NodeError::Config(m.to_owned()));
        if self.node_id.is_empty() || self.node_id.len() > super::MAX_OWNER_BYTES {
            return bad("node id must be 1..=255 bytes");
        }
        if self.node_id.contains('\0') {
            return bad("node id must not contain NUL");
        }
        if self.lease_ttl < Duration::from_millis(100) || self.lease_ttl > super::MAX_LEASE_TTL {
            return bad("lease ttl must be 100 ms..=1 h");
        }
        if self.renew_every.is_zero() || self.renew_every * 2 > self.lease_ttl {
            return bad("renew interval must be non-zero and at most half the lease ttl");
        }
        if self.page_every.is_zero() || self.sweep_every.is_zero() {
            return bad("page and sweep intervals must be non-zero");
        }
        if self.horizon < self.page_every * 2 {
            return bad("horizon must be at least twice the page interval");
        }
        if self.batch_rows == 0 || self.batch_rows > super::MAX_BATCH {
            return bad("batch rows must be 1..=10000");
        }
        if self.writers == 0 || self.writers > 64 {
            return bad("writers must be 1..=64");
        }
        if self.claim_pipeline == 0 || self.claim_pipeline > 8 {
            return bad("claim pipeline must be 1..=8");
        }
        if self.groups.is_empty() {
            return bad("declare at least one consumer group");
        }
        if self.op_timeout.is_zero() || self.ack_timeout.is_zero() {
            return bad("timeouts must be non-zero");
        }
        Ok(())
    }
}

/// What the keeper is told by the other threads.
enum KeeperMsg {
    /// A fenced write found `shard` at another epoch: it is no longer ours.
    Lost { shard: u32, epoch: u64 },
    /// A fenced write on `shard` was in doubt: take it again (bumping the
    /// epoch) and reload it before anything more of it is delivered.
    Reacquire { shard: u32, epoch: u64 },
}

/// Counters, each moved in one place.
#[derive(Default)]
struct Counters {
    scheduled: AtomicU64,
    cancelled: AtomicU64,
    claimed: AtomicU64,
    redelivered: AtomicU64,
    acked: AtomicU64,
    fenced: AtomicU64,
    lost: AtomicU64,
    acquired: AtomicU64,
    released: AtomicU64,
    loaded: AtomicU64,
    swept: AtomicU64,
    notified: AtomicU64,
    db_errors: AtomicU64,
    overdue: AtomicU64,
    fence_held: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// What every node thread shares.
struct Shared {
    node_id: String,
    /// This process's token in `nodes.session` (see `session.rs`).
    session: String,
    /// Another process took the node id while this one was paused: it
    /// holds no shards and balances no more.
    superseded: AtomicBool,
    map: ShardMap,
    config: NodeConfig,
    /// Shards this node owns, with the epoch it holds each at.
    owned: RwLock<FxHashMap<u32, u64>>,
    /// The wheel holds the owned shards' pending rows due before this (UTC ms).
    horizon_end_ms: AtomicU64,
    stopping: AtomicBool,
    counters: Counters,
    /// The epoch each event in delivery was claimed under (for
    /// [`Node::claim_epoch`]); removed when the timer ends.
    claim_epochs: Mutex<FxHashMap<u64, u64>>,
    /// How long each held lease is certain by this process's monotonic
    /// clock: nothing of a shard is delivered past it (see [`fence`]).
    fence: fence::Fence,
    /// Test seam: the keeper does nothing while set, as if its thread were
    /// stopped (see [`Node::pause_keeper`]).
    keeper_paused: AtomicBool,
    /// First-claim times of deliveries in flight, for the oldest-unacked
    /// gauge.
    in_flight: metrics::InFlight,
    /// Ids loaded as claimed (an earlier owner's, or our own in-doubt
    /// claim's): the gate may claim them again. Removed once claimed.
    redeliver: Mutex<rustc_hash::FxHashSet<u64>>,
    keeper: Sender<KeeperMsg>,
    /// Newly acquired shards, for the pager to load.
    pager: Sender<(u32, u64)>,
    /// Claimed rows to fetch into the wheel again: their delivery was
    /// claimed under an older epoch of a shard this node holds now.
    refetch: Sender<Vec<u64>>,
}

impl Shared {
    fn epoch_of(&self, shard: u32) -> Option<u64> {
        self.owned.read().get(&shard).copied()
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    /// Opens a new connection, retrying with backoff until `deadline` (or
    /// forever, if `None`) unless the node stops.
    fn reconnect(&self, deadline: Option<Instant>) -> Option<NodeDb> {
        self.reconnect_with(deadline, NodeDb::open)
    }

    /// [`reconnect`](Self::reconnect) with generic plans (see
    /// `NodeDb::open_for_rows`): for the writers, the gate and the acker.
    fn reconnect_for_rows(&self, deadline: Option<Instant>) -> Option<NodeDb> {
        self.reconnect_with(deadline, NodeDb::open_for_rows)
    }

    fn reconnect_with(
        &self,
        deadline: Option<Instant>,
        open: fn(&StoreConfig) -> Result<NodeDb, super::error::OpenError>,
    ) -> Option<NodeDb> {
        let mut backoff = Duration::from_millis(50);
        let mut failed = false;
        loop {
            match open(&self.config.store) {
                Ok(db) => {
                    if failed {
                        crate::trace::info!("database connection restored");
                    }
                    return Some(db);
                }
                Err(e) => {
                    failed = true;
                    bump(&self.counters.db_errors, 1);
                    crate::trace::warning!(
                        error = e.to_string(),
                        "database connection failed; retrying"
                    );
                }
            }
            if self.stopping() || deadline.is_some_and(|d| Instant::now() + backoff > d) {
                return None;
            }
            thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Forgets `shard` if it is still held at `epoch`; `true` if it was.
    fn drop_shard(&self, shard: u32, epoch: u64) -> bool {
        let mut owned = self.owned.write();
        if owned.get(&shard) == Some(&epoch) {
            owned.remove(&shard);
            self.fence.revoke(shard, epoch);
            true
        } else {
            false
        }
    }
}

/// A node's counters, from [`Node::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Shards owned now.
    pub owned: usize,
    /// Timers in this node's wheel (pending within the horizon, or in
    /// delivery).
    pub pending: usize,
    /// Schedules committed through this node.
    pub scheduled: u64,
    /// Cancels through this node that won.
    pub cancelled: u64,
    /// Rows claimed by this node for delivery.
    pub claimed: u64,
    /// Of those, claims of a row claimed before (attempt > 1).
    pub redelivered: u64,
    /// Claimed rows deleted after every group acked.
    pub acked: u64,
    /// Fenced statements (claim or ack) refused for a stale epoch.
    pub fenced: u64,
    /// Shards lost to another owner (renewal failed or a write was fenced).
    pub lost: u64,
    /// Shard acquisitions (each bumps the epoch).
    pub acquired: u64,
    /// Shards given up to rebalance or at shutdown.
    pub released: u64,
    /// Rows loaded into the wheel (takeover and paging).
    pub loaded: u64,
    /// Rows the sweep found due but not in the wheel.
    pub swept: u64,
    /// Rows other nodes wrote into owned shards, put in the wheel on their
    /// notification.
    pub notified: u64,
    /// Statements or connections that failed.
    pub db_errors: u64,
    /// At the last sweep: pending rows of owned shards more than a minute
    /// overdue (the alarm for an owner that renews but stopped firing).
    pub overdue: u64,
    /// Claimed events not handed out because their shard's lease was no
    /// longer certain by the node's own clock (the delivery fence).
    pub fence_held: u64,
    /// How long ago the oldest delivery this node claimed and still waits
    /// for acks was first claimed (0 if none): the alarm for a stuck
    /// consumer. Kept in memory (see [`render_prometheus`](Self::render_prometheus)
    /// and SCALE_OUT.md, "Monitoring").
    pub oldest_unacked_age_ms: u64,
    /// `true` once another process took this node's id (this one was
    /// paused past the start's quiet window): it holds no shards and takes
    /// none; restart it under another id.
    pub superseded: bool,
}

/// A running cluster node. Dropping it shuts it down (see
/// [`shutdown`](Self::shutdown)).
pub struct Node<P: Codec + Clone + Send + Sync + 'static> {
    shared: Arc<Shared>,
    engine: Option<Engine<u64, P>>,
    /// The engine's scheduler, for the wheel hints.
    scheduler: duewheel::Scheduler<u64, P>,
    writer_tx: Option<Sender<writer::Request>>,
    /// Kept to close its connection at shutdown on a thread of ours (the
    /// engine may outlive the node inside a consumer).
    gate: Arc<gate::Gate>,
    /// The engine's own series, made at the first render.
    #[cfg(feature = "prometheus")]
    exporter: std::sync::OnceLock<duewheel::prometheus::Exporter>,
    threads: Vec<JoinHandle<()>>,
    acker: Option<(Sender<u64>, JoinHandle<()>)>,
    keeper: Option<JoinHandle<()>>,
}

impl<P: Codec + Clone + Send + Sync + 'static> std::fmt::Debug for Node<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.shared.node_id)
            .field("owned", &self.shared.owned.read().len())
            .finish_non_exhaustive()
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, NodeError> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| NodeError::Spawn(e.to_string()))
}

/// Runs `f` on a thread of its own and waits for it. The sync `postgres`
/// client runs a runtime of its own and blocks on it, which panics on a
/// thread of the host's tokio runtime ("Cannot start a runtime from within
/// a runtime"), and so does dropping a connection there. Every connect and
/// every connection drop that happens in the caller's call (`start`,
/// `shutdown`, `Drop`) goes through here, so a node starts and stops
/// anywhere, inside an async service too.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, NodeError> {
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name("duewheel-node-call".into())
            .spawn_scoped(scope, f)
            .map_err(|e| NodeError::Spawn(e.to_string()))?;
        Ok(handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

impl<P: Codec + Clone + Send + Sync + 'static> Node<P> {
    fn start(config: NodeConfig) -> Result<Self, NodeError> {
        config.validate()?;
        off_runtime(move || Self::start_here(config))?
    }

    fn start_here(config: NodeConfig) -> Result<Self, NodeError> {
        // The first connection answers bad DSNs, unreachable servers and
        // newer schemas before anything starts.
        let mut keeper_db = NodeDb::open(&config.store)?;
        // One live process per id: its leases are held by id. A live
        // keeper heartbeats every `renew_every` (at most BALANCE_EVERY), so
        // a heartbeat standing still for two of those and a margin is a
        // dead one's.
        let beat = config.renew_every.min(keeper::BALANCE_EVERY);
        let token = session::new_token();
        session::claim(
            keeper_db.client(),
            &config.node_id,
            &token,
            config.lease_ttl,
            beat * 2 + Duration::from_millis(250),
        )?;
        let map =
            ShardMap::new(config.store.shards).map_err(|e| NodeError::Config(e.to_string()))?;
        // Popped below: the gate, the writers and the acker take generic
        // plans (see `NodeDb::open_for_rows`), the pager does not.
        let pager_db = NodeDb::open(&config.store)?;
        let mut dbs = Vec::new();
        let claim_dbs = gate::CLAIM_CONNECTIONS * config.claim_pipeline;
        for _ in 0..config.writers + 1 + claim_dbs {
            dbs.push(NodeDb::open_for_rows(&config.store)?);
        }
        let (keeper_tx, keeper_rx) = crossbeam_channel::unbounded();
        let (pager_tx, pager_rx) = crossbeam_channel::unbounded();
        let (refetch_tx, refetch_rx) = crossbeam_channel::unbounded();
        let (acks_tx, acks_rx) = crossbeam_channel::unbounded();
        let now_ms = config.clock.now_ms();
        let shared = Arc::new(Shared {
            node_id: config.node_id.clone(),
            session: token,
            superseded: AtomicBool::new(false),
            map,
            horizon_end_ms: AtomicU64::new(now_ms.saturating_add(ms(config.horizon))),
            config: config.clone(),
            owned: RwLock::new(FxHashMap::default()),
            stopping: AtomicBool::new(false),
            counters: Counters::default(),
            claim_epochs: Mutex::new(FxHashMap::default()),
            fence: fence::Fence::new(config.lease_ttl),
            keeper_paused: AtomicBool::new(false),
            in_flight: metrics::InFlight::default(),
            redeliver: Mutex::new(rustc_hash::FxHashSet::default()),
            keeper: keeper_tx,
            pager: pager_tx,
            refetch: refetch_tx,
        });
        let gate_dbs = dbs.split_off(dbs.len() - claim_dbs);
        let gate = Arc::new(gate::Gate::new(
            shared.clone(),
            gate_dbs,
            config.claim_pipeline,
            acks_tx.clone(),
        ));
        let mut builder = Engine::<u64, P>::builder()
            .clock(ClockRef(config.clock.clone()))
            .ack_timeout(config.ack_timeout)
            .channel_capacity(config.channel_capacity)
            .hooks(gate.clone());
        for group in &config.groups {
            builder = builder.group(group.clone());
        }
        let engine = builder.build()?;
        let scheduler = engine.scheduler();

        let mut threads = Vec::new();
        let (writer_tx, writer_rx) = crossbeam_channel::unbounded();
        for i in 0..config.writers {
            let db = dbs.pop().expect("opened above");
            let (shared, rx) = (shared.clone(), writer_rx.clone());
            threads.push(spawn(&format!("duewheel-writer-{i}"), move || {
                writer::run(&shared, db, &rx)
            })?);
        }
        {
            let (shared, s) = (shared.clone(), scheduler.clone());
            threads.push(spawn("duewheel-pager", move || {
                pager::run(&shared, pager_db, &pager_rx, &refetch_rx, &s)
            })?);
        }
        let acker_db = dbs.pop().expect("opened above");
        let acker = {
            let shared = shared.clone();
            spawn("duewheel-acker", move || {
                acker::run(&shared, acker_db, &acks_rx)
            })?
        };
        let keeper = {
            let shared = shared.clone();
            spawn("duewheel-keeper", move || {
                keeper::run(&shared, keeper_db, &keeper_rx)
            })?
        };
        crate::trace::info!(node = &*config.node_id, "cluster node started");
        Ok(Self {
            shared,
            engine: Some(engine),
            scheduler,
            writer_tx: Some(writer_tx),
            gate,
            #[cfg(feature = "prometheus")]
            exporter: std::sync::OnceLock::new(),
            threads,
            acker: Some((acks_tx, acker)),
            keeper: Some(keeper),
        })
    }

    /// A handle for scheduling and cancelling through this node; any node
    /// takes any id, whoever owns its shard.
    pub fn scheduler(&self) -> NodeScheduler<P> {
        NodeScheduler {
            shared: self.shared.clone(),
            tx: self.writer_tx.clone(),
            engine: self.scheduler.clone(),
        }
    }

    /// A consumer of a declared group: the engine's own [`Consumer`]. Ack
    /// each event once handled; an unacked one is redelivered.
    pub fn subscribe(&self, group: &str) -> Result<Consumer<u64, P>, SubscribeError> {
        self.scheduler.subscribe(group)
    }

    /// A consumer of `group` whose handler runs in a transaction that also
    /// ends each delivered timer's row, fenced: each expiry's effect
    /// commits exactly once (see [`TxConsumer`]). The group must be the
    /// node's only one. It opens its own connection to the node's database.
    pub fn subscribe_tx(&self, group: &str) -> Result<TxConsumer<P>, SubscribeTxError> {
        let groups = &self.shared.config.groups;
        // An undeclared group is the engine's refusal (`UnknownGroup`).
        if groups.iter().any(|g| g == group) && groups.iter().any(|g| g != group) {
            return Err(SubscribeTxError::NotSoleGroup);
        }
        let consumer = self.scheduler.subscribe(group)?;
        TxConsumer::new(
            consumer,
            self.shared.clone(),
            self.shared.config.store.clone(),
        )
    }

    /// The shards this node owns now, with their epochs, by shard.
    pub fn owned_shards(&self) -> Vec<(u32, u64)> {
        let mut owned: Vec<_> = self
            .shared
            .owned
            .read()
            .iter()
            .map(|(&s, &e)| (s, e))
            .collect();
        owned.sort_unstable();
        owned
    }

    /// The epoch under which this node claimed `id`'s event that is being
    /// delivered now (until every group acked it). A delivery carries its
    /// own in [`Event::claim`](duewheel::Event::claim), which stays right
    /// after the ack; this looks up the latest claim.
    pub fn claim_epoch(&self, id: u64) -> Option<u64> {
        self.shared.claim_epochs.lock().get(&id).copied()
    }

    /// Test seam: while `paused`, the keeper neither renews, balances nor
    /// reads its messages, as if its thread were stopped; the leases run
    /// out in the database and by the node's own clock. Not for production.
    #[doc(hidden)]
    pub fn pause_keeper(&self, paused: bool) {
        self.shared.keeper_paused.store(paused, Ordering::SeqCst);
    }

    /// The node's counters.
    pub fn stats(&self) -> NodeStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NodeStats {
            owned: self.shared.owned.read().len(),
            pending: self.engine.as_ref().map_or(0, |e| e.stats().pending),
            scheduled: get(&c.scheduled),
            cancelled: get(&c.cancelled),
            claimed: get(&c.claimed),
            redelivered: get(&c.redelivered),
            acked: get(&c.acked),
            fenced: get(&c.fenced),
            lost: get(&c.lost),
            acquired: get(&c.acquired),
            released: get(&c.released),
            loaded: get(&c.loaded),
            swept: get(&c.swept),
            notified: get(&c.notified),
            db_errors: get(&c.db_errors),
            overdue: get(&c.overdue),
            fence_held: get(&c.fence_held),
            superseded: self.shared.superseded.load(Ordering::SeqCst),
            oldest_unacked_age_ms: self.shared.in_flight.oldest_age_ms(
                self.shared.now_ms(),
                |id| {
                    self.shared
                        .epoch_of(self.shared.map.shard_of_id(id))
                        .is_some()
                },
            ),
        }
    }

    /// Appends the node's metrics to `out` in the Prometheus text format
    /// (version 0.0.4): [`NodeStats::render_prometheus`] with this node's
    /// id and, with the `prometheus` feature, the engine's own series (the
    /// core's [`duewheel::prometheus::Exporter`]: lateness, consumer lag,
    /// oldest overdue). Serve it as `GET /metrics` with content type
    /// `text/plain; version=0.0.4`.
    ///
    /// ```no_run
    /// # let node: duewheel_cluster::Node<String> = unimplemented!();
    /// let mut text = String::new();
    /// node.render_prometheus(&mut text);
    /// assert!(text.contains("duewheel_node_oldest_unacked_age_seconds"));
    /// ```
    pub fn render_prometheus(&self, out: &mut String) {
        self.stats().render_prometheus(&self.shared.node_id, out);
        #[cfg(feature = "prometheus")]
        out.push_str(
            &self
                .exporter
                .get_or_init(|| {
                    duewheel::prometheus::Exporter::for_scheduler(self.scheduler.clone())
                })
                .render(),
        );
    }

    /// Stops accepting, lets the acks already made reach the database,
    /// releases every shard (bumping its epoch, so the next owner need not
    /// wait out the lease) and leaves. What was claimed and not acked is
    /// redelivered by the next owner.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.keeper.is_none() {
            return; // stopped already
        }
        // The keeper's leave and the gate's close drop connections.
        if off_runtime(|| self.stop_here()).is_err() {
            // No thread to spare: stop here (outside a runtime this is fine).
            self.stop_here();
        }
    }

    fn stop_here(&mut self) {
        // Writers answer what is queued with `ShuttingDown` and exit.
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.writer_tx = None;
        if let Some(engine) = self.engine.take() {
            drop(engine.shutdown());
        }
        if let Some((tx, handle)) = self.acker.take() {
            drop(tx);
            let _ = handle.join();
        }
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
        self.gate.close();
    }
}

impl<P: Codec + Clone + Send + Sync + 'static> Drop for Node<P> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Schedules, cancels and reschedules through a node, blocking or async
/// (`_async` forms). `Clone + Send + Sync`.
pub struct NodeScheduler<P> {
    shared: Arc<Shared>,
    tx: Option<Sender<writer::Request>>,
    engine: duewheel::Scheduler<u64, P>,
}

impl<P> Clone for NodeScheduler<P> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            tx: self.tx.clone(),
            engine: self.engine.clone(),
        }
    }
}

impl<P> std::fmt::Debug for NodeScheduler<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeScheduler")
            .field("node_id", &self.shared.node_id)
            .finish_non_exhaustive()
    }
}

impl<P: Codec + Clone + Send + 'static> NodeScheduler<P> {
    /// The node clock's time, UTC milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.shared.now_ms()
    }

    /// Schedules `payload` for `id`, due at `deadline`. Returns once the row
    /// is committed (durable in PostgreSQL): it then fires at least once
    /// unless cancelled, whichever node dies. Idempotent: the same id,
    /// deadline and payload again answers `Ok` while the row exists.
    pub fn schedule(
        &self,
        id: u64,
        deadline: impl Into<Deadline>,
        payload: P,
    ) -> Result<(), ScheduleError<P>> {
        self.schedule_batch([(id, deadline, payload)])
            .pop()
            .unwrap_or_else(|| unreachable!("one result per timer"))
    }

    /// Schedules many timers; one result per timer, in order. They share
    /// commits with each other and with other callers' schedules.
    pub fn schedule_batch<D: Into<Deadline>>(
        &self,
        timers: impl IntoIterator<Item = (u64, D, P)>,
    ) -> Vec<Result<(), ScheduleError<P>>> {
        self.schedule_rows(
            timers
                .into_iter()
                .map(|(id, deadline, payload)| (id, deadline, &[][..], payload)),
        )
    }

    /// Like [`schedule`](Self::schedule), with reminders: each offset asks
    /// for an [`EventKind::Reminder`](duewheel::EventKind::Reminder) that
    /// long before the deadline (at most [`duewheel::MAX_REMINDERS`]), as
    /// the engine's
    /// [`schedule_with_reminders`](duewheel::Scheduler::schedule_with_reminders)
    /// does. The row keeps the reminder times not yet delivered; the owner
    /// delivers each at most once while the row is pending (never after a
    /// cancel or the expiry's claim, and not again after a takeover). A
    /// reminder whose time has passed fires at once. Reminders are numbered
    /// from 1 by the node that delivers them: after a takeover the
    /// numbering starts again with the first one left.
    ///
    /// ```no_run
    /// use duewheel_cluster::{NodeConfig, StoreConfig};
    /// use std::time::Duration;
    ///
    /// let store = StoreConfig::new("host=/tmp/pg port=54329 user=postgres");
    /// let node = NodeConfig::new(store, "node-a").group("orders").start::<String>()?;
    /// let remind = [Duration::from_secs(5 * 60)];
    /// node.scheduler().schedule_with_reminders(
    ///     42,
    ///     Duration::from_secs(30 * 60),
    ///     &remind,
    ///     "order 42".to_string(),
    /// )?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn schedule_with_reminders(
        &self,
        id: u64,
        deadline: impl Into<Deadline>,
        reminders_before: &[Duration],
        payload: P,
    ) -> Result<(), ScheduleError<P>> {
        self.schedule_rows([(id, deadline, reminders_before, payload)])
            .pop()
            .unwrap_or_else(|| unreachable!("one result per timer"))
    }

    /// [`schedule_batch`](Self::schedule_batch) with each timer's reminder
    /// offsets (as [`schedule_with_reminders`](Self::schedule_with_reminders)
    /// takes them); one result per timer, in order, sharing commits.
    pub fn schedule_batch_with_reminders<'r, D: Into<Deadline>>(
        &self,
        timers: impl IntoIterator<Item = (u64, D, &'r [Duration], P)>,
    ) -> Vec<Result<(), ScheduleError<P>>> {
        self.schedule_rows(timers)
    }

    /// Schedules timers with their reminder offsets; one result per timer.
    fn schedule_rows<'r, D: Into<Deadline>>(
        &self,
        timers: impl IntoIterator<Item = (u64, D, &'r [Duration], P)>,
    ) -> Vec<Result<(), ScheduleError<P>>> {
        let mut batch = self.prepare_rows(timers);
        if batch.rows.is_empty() {
            return batch.results;
        }
        let rows = std::mem::take(&mut batch.rows);
        let n = rows.len();
        let (reply, outcomes) = crossbeam_channel::bounded(1);
        let outcomes = if self.submit(rows, reply.into()) {
            outcomes.recv().ok()
        } else {
            None
        };
        self.finish_rows(batch, outcomes, n)
    }

    /// Validates and encodes timers for the table (the part of a schedule
    /// done at the call, blocking or async).
    fn prepare_rows<'r, D: Into<Deadline>>(
        &self,
        timers: impl IntoIterator<Item = (u64, D, &'r [Duration], P)>,
    ) -> Batch<P> {
        let now_ms = self.shared.now_ms();
        let mut batch = Batch {
            results: Vec::new(),
            kept: Vec::new(),
            rows: Vec::new(),
        };
        for (id, deadline, before, payload) in timers {
            if before.len() > duewheel::MAX_REMINDERS {
                batch
                    .results
                    .push(Err(ScheduleError::TooManyReminders(payload)));
                continue;
            }
            let deadline_ms = deadline.into().to_unix_ms(now_ms);
            let reminders_ms = remind::times_ms(deadline_ms, before);
            match writer::Row::new(&self.shared.map, id, deadline_ms, &reminders_ms, &payload) {
                Ok(row) => {
                    batch.rows.push(row);
                    let at = batch.results.len();
                    batch
                        .kept
                        .push((at, id, deadline_ms, reminders_ms, payload));
                    batch.results.push(Ok(()));
                }
                Err(reason) => batch
                    .results
                    .push(Err(ScheduleError::Invalid { reason, payload })),
            }
        }
        batch
    }

    /// Hands rows to a writer, which answers `reply` after the commit;
    /// `false` if no writer takes them (the node stops).
    fn submit(&self, rows: Vec<writer::Row>, reply: writer::Reply) -> bool {
        self.tx
            .as_ref()
            .is_some_and(|tx| tx.send(writer::Request::Schedule { rows, reply }).is_ok())
    }

    /// The results once the writer answered (`None`: it never will, the
    /// node stopped) for the `n` rows sent: the wheel hinted of each
    /// stored one.
    fn finish_rows(
        &self,
        batch: Batch<P>,
        outcomes: Option<Vec<writer::Outcome>>,
        n: usize,
    ) -> Vec<Result<(), ScheduleError<P>>> {
        let Batch {
            mut results, kept, ..
        } = batch;
        let outcomes =
            outcomes.unwrap_or_else(|| (0..n).map(|_| writer::Outcome::ShuttingDown).collect());
        for ((at, id, deadline_ms, reminders_ms, payload), outcome) in
            kept.into_iter().zip(outcomes)
        {
            results[at] = match outcome {
                writer::Outcome::Stored => {
                    bump(&self.shared.counters.scheduled, 1);
                    self.hint(id, deadline_ms, &reminders_ms, payload);
                    Ok(())
                }
                writer::Outcome::Duplicate => Err(ScheduleError::AlreadyScheduled(payload)),
                writer::Outcome::Unavailable(reason) => {
                    Err(ScheduleError::Unavailable { reason, payload })
                }
                writer::Outcome::InDoubt => Err(ScheduleError::InDoubt(payload)),
                writer::Outcome::ShuttingDown => Err(ScheduleError::ShuttingDown(payload)),
            };
        }
        results
    }

    /// After a commit: puts the timer in this node's wheel if this node owns
    /// its shard and the deadline is within the horizon. Read after the
    /// commit, so a takeover or a page that began before it loads the row,
    /// and one that began after it is seen here (see the module invariants;
    /// if both, the wheel keeps one and the claim decides anyway).
    fn hint(&self, id: u64, deadline_ms: u64, reminders_ms: &[u64], payload: P) {
        let shard = self.shared.map.shard_of_id(id);
        if self.shared.epoch_of(shard).is_none()
            || remind::held_from_ms(deadline_ms, reminders_ms)
                >= self.shared.horizon_end_ms.load(Ordering::SeqCst)
        {
            return;
        }
        // Already there (loaded meanwhile), or the engine is stopping: the
        // row is stored, and the sweep finds what the wheel lacks.
        let _ = self.engine.schedule_with_reminders(
            id,
            Deadline::at_unix_ms(deadline_ms),
            &remind::offsets(deadline_ms, reminders_ms),
            payload,
        );
    }

    /// Cancels `id`'s timer, on whatever node it lives. The row decides
    /// between this cancel and the owner's claim, so exactly one wins:
    /// `Cancelled(payload)` (it will never fire), `AlreadyFired` (it was
    /// claimed: it fired or is firing, or it fired and was acked within
    /// [`NodeConfig::tombstone_ttl`]), or `NotFound` (never scheduled,
    /// already cancelled, or acked longer ago than that).
    pub fn cancel(&self, id: &u64) -> Result<Cancel<P>, CancelError> {
        self.cancel_batch([*id])
            .pop()
            .unwrap_or(Err(CancelError::ShuttingDown))
    }

    /// Cancels many timers; one answer per id, in order, each meaning what
    /// [`cancel`](Self::cancel)'s would. They share commits.
    pub fn cancel_batch(
        &self,
        ids: impl IntoIterator<Item = u64>,
    ) -> Vec<Result<Cancel<P>, CancelError>> {
        let mut waiting = Vec::new();
        for id in ids {
            let (reply, outcome) = crossbeam_channel::bounded(1);
            let sent = self.submit_cancel(id, reply.into());
            waiting.push((id, sent.then_some(outcome)));
        }
        waiting
            .into_iter()
            .map(|(id, outcome)| self.cancelled(id, outcome.and_then(|o| o.recv().ok())))
            .collect()
    }

    /// Hands a cancel to a writer; `false` if no writer takes it.
    fn submit_cancel(&self, id: u64, reply: writer::CancelReply) -> bool {
        let shard = self.shared.map.shard_of_id(id);
        self.tx.as_ref().is_some_and(|tx| {
            tx.send(writer::Request::Cancel { shard, id, reply })
                .is_ok()
        })
    }

    /// A cancel's answer from the writer's (`None`: the node stopped).
    fn cancelled(
        &self,
        id: u64,
        answer: Option<Result<writer::Cancelled, CancelError>>,
    ) -> Result<Cancel<P>, CancelError> {
        let answer = answer.ok_or(CancelError::ShuttingDown)??;
        Ok(match answer {
            writer::Cancelled::Deleted(bytes) => {
                bump(&self.shared.counters.cancelled, 1);
                // Drop the wheel's copy, if it has one; the row is
                // gone, so a claim of it would find nothing anyway.
                let _ = self.engine.cancel(&id);
                Cancel::Cancelled(
                    P::decode(&bytes).map_err(|e| CancelError::Corrupt(e.to_string()))?,
                )
            }
            writer::Cancelled::Claimed => Cancel::AlreadyFired,
            writer::Cancelled::Absent => Cancel::NotFound,
        })
    }

    /// The epoch under which this node claimed `id`'s event that is being
    /// delivered now (until every group acked it). A delivery carries its
    /// own in [`Event::claim`](duewheel::Event::claim), which stays right
    /// after the ack; this looks up the latest claim.
    pub fn claim_epoch(&self, id: u64) -> Option<u64> {
        self.shared.claim_epochs.lock().get(&id).copied()
    }

    /// Moves `id`'s deadline, earlier or later, on whatever node it lives:
    /// one statement moves the row's deadline only while it is pending, so
    /// the row decides between this and the owner's claim as for a cancel.
    /// `Ok` (it fires at the new deadline, not at the old), `AlreadyFired`
    /// (it was claimed, or fired and acked within the tombstone ttl),
    /// `NotFound` (never scheduled, cancelled, or acked longer ago than
    /// that), `DeadlineTooFar` (beyond
    /// `i64::MAX` ms), `Unavailable` (nothing moved), `InDoubt` (a
    /// connection failed: rescheduling again to the same deadline settles
    /// it) or `ShuttingDown`. Reminders already delivered stay delivered;
    /// the pending ones keep their offsets before the new deadline.
    ///
    /// ```no_run
    /// use duewheel_cluster::{NodeConfig, StoreConfig};
    /// use std::time::Duration;
    ///
    /// let store = StoreConfig::new("host=/tmp/pg port=54329 user=postgres");
    /// let node = NodeConfig::new(store, "node-a").group("orders").start::<String>()?;
    /// let s = node.scheduler();
    /// s.schedule(42, Duration::from_secs(30 * 60), "order 42".to_string())?;
    /// s.reschedule(&42, Duration::from_secs(60 * 60))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reschedule(
        &self,
        id: &u64,
        deadline: impl Into<Deadline>,
    ) -> Result<(), RescheduleError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let (id, deadline_ms) = self.submit_reschedule(*id, deadline.into(), reply.into())?;
        self.rescheduled(id, deadline_ms, answer.recv().ok())
    }

    /// Hands a reschedule to a writer: the id and the new deadline (UTC
    /// ms) to finish with.
    fn submit_reschedule(
        &self,
        id: u64,
        deadline: Deadline,
        reply: reschedule::Reply,
    ) -> Result<(u64, u64), RescheduleError> {
        let deadline_ms = deadline.to_unix_ms(self.shared.now_ms());
        let Ok(stored_ms) = i64::try_from(deadline_ms) else {
            return Err(RescheduleError::DeadlineTooFar {
                deadline_ms,
                max_ms: i64::MAX as u64,
            });
        };
        let request = writer::Request::Reschedule(reschedule::Request {
            shard: self.shared.map.shard_of_id(id),
            id,
            deadline_ms: stored_ms,
            reply,
        });
        let tx = self.tx.as_ref().ok_or(RescheduleError::ShuttingDown)?;
        tx.send(request)
            .map_err(|_| RescheduleError::ShuttingDown)?;
        Ok((id, deadline_ms))
    }

    /// A reschedule's answer from the writer (`None`: the node stopped).
    /// This node's wheel, if it owns the shard: move its copy, or put the
    /// row in if it had none (the new deadline may be nearer). Another
    /// owner learns by notification (see `reschedule`).
    fn rescheduled(
        &self,
        id: u64,
        deadline_ms: u64,
        answer: Option<reschedule::Outcome>,
    ) -> Result<(), RescheduleError> {
        let (payload, reminders_ms) = answer.ok_or(RescheduleError::ShuttingDown)??;
        if self
            .shared
            .epoch_of(self.shared.map.shard_of_id(id))
            .is_some()
        {
            let at = Deadline::at_unix_ms(deadline_ms);
            if let Err(RescheduleError::NotFound) = self.engine.reschedule(&id, at)
                && let Ok(payload) = P::decode(&payload)
            {
                self.hint(id, deadline_ms, &reminders_ms, payload);
            }
        }
        Ok(())
    }
}

/// A schedule call's timers on their way to the table.
struct Batch<P> {
    results: Vec<Result<(), ScheduleError<P>>>,
    /// Accepted for the table: position, id, deadline, reminder times,
    /// payload.
    kept: Vec<(usize, u64, u64, Vec<u64>, P)>,
    rows: Vec<writer::Row>,
}

/// The `_async` forms: each does at the call what its blocking form does
/// before waiting (validation, a relative deadline measured from the call,
/// the request handed to a writer), and its future only waits for the
/// writer's answer, woken by the writer thread: no thread blocks for an
/// async caller, and any executor polls it. The futures own what they need
/// (`'static`), so they can be spawned; dropping one leaves the operation
/// to complete unseen.
impl<P: Codec + Clone + Send + Sync + 'static> NodeScheduler<P> {
    /// [`schedule`](Self::schedule) for async code.
    pub fn schedule_async(
        &self,
        id: u64,
        deadline: impl Into<Deadline>,
        payload: P,
    ) -> impl Future<Output = Result<(), ScheduleError<P>>> + Send + 'static {
        self.schedule_with_reminders_async(id, deadline, &[], payload)
    }

    /// [`schedule_with_reminders`](Self::schedule_with_reminders) for async
    /// code.
    pub fn schedule_with_reminders_async(
        &self,
        id: u64,
        deadline: impl Into<Deadline>,
        reminders_before: &[Duration],
        payload: P,
    ) -> impl Future<Output = Result<(), ScheduleError<P>>> + Send + 'static {
        let mut batch = self.prepare_rows([(id, deadline, reminders_before, payload)]);
        let rows = std::mem::take(&mut batch.rows);
        let n = rows.len();
        let answer = (n > 0).then(|| {
            let (reply, answer) = reply::pair();
            self.submit(rows, reply).then_some(answer)
        });
        let this = self.clone();
        async move {
            let outcomes = match answer {
                Some(Some(answer)) => answer.await,
                _ => None,
            };
            let mut results = if n == 0 {
                batch.results
            } else {
                this.finish_rows(batch, outcomes, n)
            };
            results
                .pop()
                .unwrap_or_else(|| unreachable!("one result per timer"))
        }
    }

    /// [`cancel`](Self::cancel) for async code.
    pub fn cancel_async(
        &self,
        id: &u64,
    ) -> impl Future<Output = Result<Cancel<P>, CancelError>> + Send + 'static {
        let id = *id;
        let (reply, answer) = reply::pair();
        let sent = self.submit_cancel(id, reply);
        let this = self.clone();
        async move {
            let answer = if sent { answer.await } else { None };
            this.cancelled(id, answer)
        }
    }

    /// [`reschedule`](Self::reschedule) for async code.
    pub fn reschedule_async(
        &self,
        id: &u64,
        deadline: impl Into<Deadline>,
    ) -> impl Future<Output = Result<(), RescheduleError>> + Send + 'static {
        let (reply, answer) = reply::pair();
        let submitted = self.submit_reschedule(*id, deadline.into(), reply);
        let this = self.clone();
        async move {
            let (id, deadline_ms) = submitted?;
            this.rescheduled(id, deadline_ms, answer.await)
        }
    }
}

/// The scheduling interface the engine's `Scheduler` has too. The `_async`
/// forms (core feature `tokio`) are this crate's own with its feature
/// `tokio` (they never block); without it, the trait's defaults, which
/// make the blocking call (a database commit) when the future is created.
impl<P: Codec + Clone + Send + Sync + 'static> Schedule<u64, P> for NodeScheduler<P> {
    fn schedule(
        &self,
        id: u64,
        deadline: impl Into<Deadline>,
        payload: P,
    ) -> Result<(), ScheduleError<P>> {
        NodeScheduler::schedule(self, id, deadline, payload)
    }

    fn cancel(&self, id: &u64) -> Result<Cancel<P>, CancelError> {
        NodeScheduler::cancel(self, id)
    }

    fn reschedule(&self, id: &u64, deadline: impl Into<Deadline>) -> Result<(), RescheduleError> {
        NodeScheduler::reschedule(self, id, deadline)
    }

    #[cfg(feature = "tokio")]
    fn schedule_async(
        &self,
        id: u64,
        deadline: impl Into<Deadline> + Send,
        payload: P,
    ) -> impl Future<Output = Result<(), ScheduleError<P>>> + Send
    where
        P: Send,
    {
        NodeScheduler::schedule_async(self, id, deadline, payload)
    }

    #[cfg(feature = "tokio")]
    fn cancel_async(&self, id: &u64) -> impl Future<Output = Result<Cancel<P>, CancelError>> + Send
    where
        P: Send,
    {
        NodeScheduler::cancel_async(self, id)
    }

    #[cfg(feature = "tokio")]
    fn reschedule_async(
        &self,
        id: &u64,
        deadline: impl Into<Deadline> + Send,
    ) -> impl Future<Output = Result<(), RescheduleError>> + Send {
        NodeScheduler::reschedule_async(self, id, deadline)
    }
}

/// Shares the node's clock with its engine.
struct ClockRef(Arc<dyn Clock>);

impl Clock for ClockRef {
    fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }
    fn time_until(&self, until_ms: u64) -> Option<Duration> {
        self.0.time_until(until_ms)
    }
    fn on_advance(&self, wake: Box<dyn Fn() + Send + Sync>) {
        self.0.on_advance(wake);
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
