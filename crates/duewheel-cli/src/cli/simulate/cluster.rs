//! `simulate --cluster N`: the sale on N `duewheel node` processes that
//! share the timers through one PostgreSQL, with nodes killed mid-sale.
//!
//! The driver plays the order platform. Every order's payment deadline is
//! scheduled (`s <id> <deadline> <payload>`) through a node drawn at
//! random, which may not own the order's shard; every payment cancels the
//! deadline (`c <id>`) through another random node, often not the owner.
//! `--kill-node I@T` SIGKILLs node I when the sale's clock reaches T; its
//! shards are taken over by the survivors once its lease (3 s, real time)
//! runs out. `--pause-node I@T+D` SIGSTOPs node I at T and SIGCONTs it D
//! later (by default two leases of real time: its shards are taken over
//! while it sleeps, and it wakes up fenced). Every answer and every
//! delivery (`ev`) of every node is collected, and
//! [`super::cluster_checks`] judges them at the end.
//!
//! The sale's timeline: arrivals are front-loaded over `--sale` (most in
//! its first quarter, see [`super::buyers`]) and each deadline is the
//! arrival plus `--window`, so the expiries fire from `window` to
//! `sale + window`, densest at the start. With the defaults (10 minutes,
//! 30-minute windows) they fire from 30m to 40m, about 88% of them before
//! 35m: `--kill-node 1@35m` kills a node while expiries are in flight
//! (hundreds a real second at 60x), and the report says how many rows the
//! victim held claimed and not acked at that moment.
//!
//! Duplicates: for each kill and pause the driver reads, 200 ms after the
//! signal, the ids of the rows of the node's shards that are claimed and
//! not acked: the deliveries handed out that no ack ended. Those, and only
//! those, may be delivered twice because of it (the new owner claims them
//! again with attempt + 1; a paused node may also print them late after
//! `CONT`). The checks explain every duplicate by one of them, or by a
//! redelivery within one node under one claim (its ack timed out).
//!
//! `--effects pg`: the nodes run `duewheel node --orders` (an application
//! schema `<schema>_app` with `orders`, `stock` and `effects` tables); an
//! order is `o <id> <deadline> <qty>` (the order row, its stock and its
//! deadline in one transaction) and a payment `p <id>` (the deadline
//! cancelled in the payment's transaction: `cancelled` = paid, `fired` =
//! the expiry won, refunded). The nodes' expiry handler cancels the order
//! and releases its stock, with no idempotency check, in the transaction
//! that ends the timer row. At the end the driver reads the tables and the
//! checks judge the effects. `--restart-db-at T` runs the restart command
//! in a thread at T; the driver's own reads reconnect.
//!
//! Time: all nodes run on one fast-forwarded clock
//! (`--clock-origin-ms`/`--clock-speed`, `--speed` sale seconds per real
//! second), and the sale opens on that clock once every node is ready.
//! Deadlines, `fired_at_ms` and the sale times are on that clock; leases,
//! takeovers and the rates are real time.
//!
//! Two choices of the platform's, not of the nodes':
//! - a payment that reaches the platform before its order's schedule was
//!   answered `ok` waits for the answer (the platform cannot cancel an
//!   order it has not finished placing); a payment for an order whose
//!   schedule failed cancels nothing;
//! - an answer the driver never got, because the node that owed it was
//!   killed (or an `indoubt`), leaves the order *unknown*: not acked, so no
//!   check expects anything of it, and the report counts them.

use super::Error;
use super::args::Config;
use super::buyers::{Rng, SALE_OPENS_MS, Sale};
use super::cluster_db::{Database, Effects, Leftover, ShardRow};
use super::cluster_nodes::{Command, Ev, Fate, Line, Nodes, Received, wall_now_ms};
use super::{cluster_checks, cluster_report};
use duewheel_cluster::ShardMap;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The nodes' lease settings: short, so a kill is taken over in seconds.
pub(super) const LEASE_TTL_MS: u64 = 3_000;
pub(super) const RENEW_MS: u64 = 750;
pub(super) const GRACE_MS: u64 = 0;
pub(super) const SWEEP_MS: u64 = 100;

/// How long a node may take to connect and print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Real time after the last deadline (or the last late payment) to wait
/// for the deliveries and the answers still owed: a few leases (a
/// takeover) and a margin.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Real time the driver keeps listening once everything expected arrived,
/// for late duplicates.
const SETTLE: Duration = Duration::from_millis(500);

/// How long after a kill or a stop the claimed rows are read: statements
/// the node sent before the signal have reached the database by then.
const CLAIMS_SETTLE_MS: u64 = 200;

/// `--effects pg`: how long the driver waits, once everything expected
/// arrived, for the orders still `open` to be expired (those whose answer
/// was lost but which committed) before it reads the tables.
const EFFECTS_SETTLE: Duration = Duration::from_secs(15);

/// How often the `shards` table is read while a takeover is awaited.
const TAKEOVER_POLL: Duration = Duration::from_millis(20);

/// Timers that never fired whose rows the report looks up.
const MISSING_DESCRIBED: usize = 20;

/// How long the nodes have to answer `stats` and to exit after `quit`.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);
const QUIT_TIMEOUT: Duration = Duration::from_secs(15);

/// The nodes' clock: `origin + (wall - origin) * speed`, the same formula
/// the nodes use with the same two values.
#[derive(Clone, Copy, Debug)]
pub(super) struct NodeClock {
    pub(super) origin_ms: u64,
    pub(super) speed: f64,
}

impl NodeClock {
    /// The node clock at wall-clock `wall_ms`.
    pub(super) fn at_wall(&self, wall_ms: u64) -> u64 {
        let elapsed = wall_ms.saturating_sub(self.origin_ms) as f64;
        self.origin_ms + (elapsed * self.speed) as u64
    }

    /// The node clock now.
    pub(super) fn now_ms(&self) -> u64 {
        self.at_wall(wall_now_ms())
    }

    /// The wall-clock moment (UTC ms, fractional) the node clock reads
    /// `node_ms`.
    pub(super) fn wall_of(&self, node_ms: u64) -> f64 {
        self.origin_ms as f64 + node_ms.saturating_sub(self.origin_ms) as f64 / self.speed
    }
}

/// A schedule's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sched {
    /// Not sent (yet, or no node was up to take it).
    NotSent,
    /// Sent, no answer yet.
    Pending,
    /// `ok`: committed.
    Ok,
    /// `err` of this kind (`indoubt` among them: it may be stored).
    Refused(ErrKind),
    /// The node that owed the answer died first.
    Unknown,
}

/// The kinds of `err` and `cerr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum ErrKind {
    Duplicate,
    Invalid,
    Unavailable,
    InDoubt,
    Shutdown,
    /// A kind outside the protocol.
    Other,
}

impl ErrKind {
    fn parse(kind: &str) -> ErrKind {
        match kind {
            "duplicate" => ErrKind::Duplicate,
            "invalid" => ErrKind::Invalid,
            "unavailable" => ErrKind::Unavailable,
            "indoubt" => ErrKind::InDoubt,
            "shutdown" => ErrKind::Shutdown,
            _ => ErrKind::Other,
        }
    }
}

/// A payment's cancel and its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CancelState {
    /// The buyer never paid (or not yet).
    NoPayment,
    /// Paid before the schedule's answer: the cancel waits for `ok`.
    Deferred,
    /// Paid, but the schedule failed: nothing to cancel.
    Skipped,
    /// Sent, no answer yet.
    Pending,
    /// `cancelled`: the timer will never fire.
    Cancelled,
    /// `fired`: the expiry won.
    Fired,
    /// `notfound`: fired and acked already.
    NotFound,
    /// `cerr` of this kind.
    Failed(ErrKind),
    /// The node that owed the answer died first.
    Unknown,
}

/// One `ev` as received.
#[derive(Clone, Debug)]
pub(super) struct Delivery {
    pub(super) ev: Ev,
    /// Index of the node that wrote it.
    pub(super) node: usize,
    pub(super) received_wall_ms: u64,
}

/// One order as the platform saw it.
#[derive(Clone, Debug)]
pub(super) struct Order {
    /// On the node clock.
    pub(super) deadline_ms: u64,
    pub(super) sched: Sched,
    pub(super) sched_node: usize,
    pub(super) cancel: CancelState,
    pub(super) cancel_node: usize,
    pub(super) deliveries: Vec<Delivery>,
    /// Units of stock it reserves (`--effects pg`).
    pub(super) qty: u32,
    /// What its deliveries carry: `o<order>`, or with `--effects pg` the
    /// quantity (the node's order mode schedules that).
    pub(super) payload: String,
}

impl Order {
    /// The order's timer id (order index + 1).
    pub(super) fn id_of(order: usize) -> u64 {
        order as u64 + 1
    }

    /// The payload of a plain schedule.
    pub(super) fn payload_of(order: usize) -> String {
        format!("o{order}")
    }
}

/// What a node held when it stopped serving (killed or paused), and who
/// took it over.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(super) struct Handover {
    /// The shards it owned at that moment.
    pub(super) shards: Vec<u32>,
    /// Their epochs then (a later claim has a higher one).
    #[serde(skip)]
    pub(super) epochs: BTreeMap<u32, u64>,
    /// Real ms after the signal at which its last lease expired (by the
    /// database clock); `None` if it owned nothing.
    pub(super) lease_expired_after_ms: Option<f64>,
    /// Real ms after the signal at which every one of its shards had
    /// another owner; `None` if that never happened.
    pub(super) taken_after_ms: Option<u64>,
    /// Who took them: owner → shards.
    pub(super) taken_by: BTreeMap<String, u32>,
    /// Rows of its shards claimed and not acked, read 200 ms after the
    /// signal: the deliveries handed out that no ack ended, which bound the
    /// duplicates it can cause.
    pub(super) claimed_unacked: u64,
    #[serde(skip)]
    pub(super) claimed_ids: BTreeSet<u64>,
    /// `ev` lines (of every node) read in the real second before the
    /// signal: the expiries in flight.
    pub(super) deliveries_last_second: u64,
    /// Deliveries beyond the first of the ids in `claimed_ids`: the
    /// duplicates it explains (at most one per claimed id, since the node
    /// can deliver a claim once and the next owner claims it once more,
    /// unless that one dies too).
    pub(super) duplicates: u64,
}

/// A kill and its takeover.
#[derive(Clone, Debug, serde::Serialize)]
pub(super) struct Kill {
    /// Index of the victim (0-based).
    #[serde(skip)]
    pub(super) node: usize,
    pub(super) name: String,
    /// Sale time after the opening at which it was killed.
    pub(super) at_sale_ms: u64,
    #[serde(skip)]
    pub(super) at_wall_ms: u64,
    #[serde(flatten)]
    pub(super) handover: Handover,
    /// Answers it owed when it died (left unknown).
    pub(super) answers_lost: u64,
    /// Orders of its shards delivered again after the kill (attempt > 1).
    pub(super) redelivered: u64,
    /// Orders of its shards delivered by the survivors.
    pub(super) fired_by_survivors: u64,
}

/// A pause (SIGSTOP, then SIGCONT) and its takeover.
#[derive(Clone, Debug, serde::Serialize)]
pub(super) struct Pause {
    /// Index of the node (0-based).
    #[serde(skip)]
    pub(super) node: usize,
    pub(super) name: String,
    /// Sale time after the opening at which it was stopped.
    pub(super) at_sale_ms: u64,
    /// Sale time it was to stay stopped (`+D`).
    pub(super) for_sale_ms: u64,
    /// The same in real time.
    pub(super) for_wall_ms: u64,
    #[serde(skip)]
    pub(super) at_wall_ms: u64,
    /// Real ms after the stop at which it was continued; `None` if the run
    /// ended first.
    pub(super) resumed_after_ms: Option<u64>,
    #[serde(flatten)]
    pub(super) handover: Handover,
    /// Its deliveries after `CONT` under the epoch of a shard it had lost:
    /// rows claimed before the pause, printed late (a node that checks its
    /// lease before delivering prints none).
    pub(super) late_deliveries: u64,
    /// Of those, ids it had NOT claimed before the pause: a claim under a
    /// lost lease (must be 0).
    pub(super) stale_claims: u64,
}

/// The database restart (`--restart-db-at`) as it happened.
#[derive(Clone, Debug, serde::Serialize)]
pub(super) struct DbRestartRun {
    /// Sale time after the opening at which the command started.
    pub(super) at_sale_ms: u64,
    #[serde(skip)]
    pub(super) at_wall_ms: u64,
    /// Real ms the command took (the server down and up again); `None`
    /// while it runs.
    pub(super) took_ms: Option<u64>,
    /// `exit 0`, or what went wrong.
    pub(super) end: String,
}

/// One node as the run saw it.
#[derive(Clone, Debug, serde::Serialize)]
pub(super) struct NodeRun {
    pub(super) name: String,
    pub(super) sent: u64,
    pub(super) answered: u64,
    pub(super) deliveries: u64,
    /// Shards it owned after start-up, when the sale opened.
    pub(super) shards_at_open: u32,
    /// Its last `stats` line (survivors only).
    pub(super) stats: BTreeMap<String, String>,
    /// `killed`, `exit 0`, `exit N`, or what went wrong.
    pub(super) end: String,
    /// Killed by `--kill-node`.
    pub(super) killed: bool,
    /// Stopped and continued by `--pause-node`.
    pub(super) paused: bool,
    /// Died or exited without being told to (or failed to exit).
    pub(super) unexpected_end: bool,
    /// Its last stderr lines, when it ended unexpectedly.
    pub(super) stderr_tail: Option<String>,
}

/// Everything the run observed, for the checks and the report.
pub(super) struct Outcome {
    pub(super) orders: Vec<Order>,
    pub(super) clock: NodeClock,
    /// The sale's opening on the node clock.
    pub(super) open_ms: u64,
    pub(super) nodes: Vec<NodeRun>,
    pub(super) kills: Vec<Kill>,
    pub(super) pauses: Vec<Pause>,
    /// `--restart-db-at`, as it happened.
    pub(super) restart: Option<DbRestartRun>,
    /// `--effects pg`: the application's tables at the end, and the stock
    /// they started with.
    pub(super) effects: Option<Effects>,
    pub(super) stock_initial: u64,
    /// `--effects pg`: a read of the tables failed.
    pub(super) effects_error: Option<String>,
    /// Lines outside the protocol and answers nobody asked for.
    pub(super) strays: Vec<String>,
    pub(super) stray_count: u64,
    /// Rows left in the `timers` table after every node quit.
    pub(super) leftover: Option<Leftover>,
    /// For the first orders that should have fired and did not: their row
    /// as the database holds it at the end (absent: deleted).
    pub(super) missing_rows: BTreeMap<u64, String>,
    pub(super) shard_map: ShardMap,
    /// The drain timed out: something expected never arrived.
    pub(super) timed_out: bool,
    pub(super) wall_s: f64,
    /// Real time from the opening to the last expected delivery.
    pub(super) sale_wall_s: f64,
    pub(super) first_send_wall_ms: u64,
    pub(super) last_ok_wall_ms: u64,
    pub(super) first_ev_wall_ms: u64,
    pub(super) last_ev_wall_ms: u64,
    pub(super) schema: String,
}

/// What happens at a moment of the sale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    // Declared in the order that same-moment actions run: an order is
    // placed before it is paid, and the faults come last.
    Schedule(u32),
    Pay(u32),
    Kill(usize),
    Pause(usize),
    Resume(usize),
    RestartDb,
}

/// Runs the cluster simulation; `Ok(true)` if every invariant held.
pub(super) fn run(config: &Config) -> Result<bool, Error> {
    let started = Instant::now();
    let Some(cluster) = config.cluster.as_ref() else {
        return Err(Error::Run("not a --cluster configuration".into()));
    };
    let Some(speed) = config.real_time_speed else {
        return Err(Error::Run("--cluster runs on a sped-up clock".into()));
    };
    let shards = u32::try_from(config.shards)
        .map_err(|_| Error::Usage(format!("--shards {} is too many", config.shards)))?;
    let shard_map =
        ShardMap::new(shards).map_err(|e| Error::Usage(format!("--shards {shards}: {e}")))?;
    let sale = Sale::draw(config);
    let exe = std::env::current_exe()
        .map_err(|e| Error::Run(format!("cannot find this executable to start nodes: {e}")))?;

    let schema = format!("sim_{}_{}", std::process::id(), wall_now_ms());
    // Declared before the nodes: dropped after them, so the schema goes
    // once no node uses it.
    let mut db = Database::create(&cluster.dsn, &schema, shards)?;
    let app_schema = format!("{schema}_app");
    if cluster.effects_pg {
        db.with_app_schema(&app_schema);
    }
    let clock = NodeClock {
        origin_ms: wall_now_ms(),
        speed,
    };
    let names: Vec<String> = (1..=cluster.nodes).map(|k| format!("simN-{k}")).collect();
    let mut common = node_args(&cluster.dsn, &schema, shards, clock);
    if cluster.effects_pg {
        common.extend([
            "--orders".to_string(),
            "--app-schema".to_string(),
            app_schema,
            "--stock".to_string(),
            config.stock.to_string(),
        ]);
    }
    let nodes = Nodes::spawn(&exe, &common, &names).map_err(Error::Run)?;
    let mut run = Driver::new(config, &sale, nodes, clock, shard_map, schema);
    run.await_ready()?;
    run.note_shards_at_open(&mut db)?;
    run.drive(&sale, config, &mut db)?;
    let outcome = run.finish(&mut db, started, config.stock);
    let invariants = cluster_checks::run(&outcome);
    let report = cluster_report::Report::new(config, &outcome, invariants);
    if config.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Run(format!("could not encode the report: {e}")))?;
        println!("{json}");
    } else {
        print!("{}", report.to_text());
    }
    if !report.ok && cluster.keep_failed {
        // For a post-mortem: the rows as the failure left them.
        eprintln!(
            "note: an invariant failed; schema {} kept (--keep-failed): drop it with \
             DROP SCHEMA ... CASCADE",
            db.keep()
        );
    } else if let Err(e) = db.drop_schema() {
        eprintln!("warning: {e}");
    }
    Ok(report.ok)
}

/// The arguments every node gets (its `--node-id` comes on top).
fn node_args(dsn: &str, schema: &str, shards: u32, clock: NodeClock) -> Vec<String> {
    [
        ("--pg", dsn.to_string()),
        ("--schema", schema.to_string()),
        ("--shards", shards.to_string()),
        ("--lease-ttl-ms", LEASE_TTL_MS.to_string()),
        ("--renew-ms", RENEW_MS.to_string()),
        ("--grace-ms", GRACE_MS.to_string()),
        ("--sweep-ms", SWEEP_MS.to_string()),
        ("--clock-origin-ms", clock.origin_ms.to_string()),
        ("--clock-speed", clock.speed.to_string()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .collect()
}

/// A kill or a pause.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill(usize),
    Pause(usize),
}

/// A fault whose claimed rows are to be read and whose takeover is
/// awaited.
struct Watch {
    fault: Fault,
    /// The claimed rows were read.
    claims_read: bool,
    done: bool,
}

struct Driver {
    nodes: Nodes,
    clock: NodeClock,
    open_ms: u64,
    orders: Vec<Order>,
    runs: Vec<NodeRun>,
    kills: Vec<Kill>,
    watches: Vec<Watch>,
    eof: Vec<bool>,
    /// Commands sent and not yet answered (or given up as unknown).
    outstanding: u64,
    strays: Vec<String>,
    stray_count: u64,
    rng: Rng,
    shard_map: ShardMap,
    schema: String,
    first_send_wall_ms: u64,
    last_ok_wall_ms: u64,
    first_ev_wall_ms: u64,
    last_ev_wall_ms: u64,
    /// The last expected delivery arrived at (real).
    done_wall_ms: u64,
    timed_out: bool,
    /// `quit` was sent: an `Eof` is expected now.
    quitting: bool,
    /// `kill_node` from the configuration, 0-based.
    planned_kills: Vec<(usize, u64)>,
    /// `pause_node` from the configuration, 0-based: (node, at, for).
    planned_pauses: Vec<(usize, u64, u64)>,
    pauses: Vec<Pause>,
    /// `--effects pg`.
    effects_pg: bool,
    /// `--restart-db-at`: (at, command).
    restart: Option<(u64, String)>,
    restart_run: Option<DbRestartRun>,
    /// The thread running the restart command: its exit status.
    restart_thread: Option<std::thread::JoinHandle<Result<std::process::ExitStatus, String>>>,
}

impl Driver {
    fn new(
        config: &Config,
        sale: &Sale,
        nodes: Nodes,
        clock: NodeClock,
        shard_map: ShardMap,
        schema: String,
    ) -> Driver {
        let n = nodes.len();
        let runs = (0..n)
            .map(|k| NodeRun {
                name: nodes.name(k).to_string(),
                sent: 0,
                answered: 0,
                deliveries: 0,
                shards_at_open: 0,
                stats: BTreeMap::new(),
                end: String::from("running"),
                killed: false,
                paused: false,
                unexpected_end: false,
                stderr_tail: None,
            })
            .collect();
        let effects_pg = config.cluster.as_ref().is_some_and(|c| c.effects_pg);
        let orders = sale
            .plans
            .iter()
            .enumerate()
            .map(|(order, plan)| Order {
                deadline_ms: 0,
                sched: Sched::NotSent,
                sched_node: usize::MAX,
                cancel: CancelState::NoPayment,
                cancel_node: usize::MAX,
                deliveries: Vec::new(),
                qty: plan.qty,
                payload: if effects_pg {
                    plan.qty.to_string()
                } else {
                    Order::payload_of(order)
                },
            })
            .collect();
        let planned_kills = config
            .cluster
            .as_ref()
            .map(|c| {
                c.kills
                    .iter()
                    .map(|k| (k.node as usize - 1, k.at_ms))
                    .collect()
            })
            .unwrap_or_default();
        let planned_pauses = config
            .cluster
            .as_ref()
            .map(|c| {
                c.pauses
                    .iter()
                    .map(|p| (p.node as usize - 1, p.at_ms, p.for_ms.unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        Driver {
            nodes,
            clock,
            open_ms: 0,
            orders,
            runs,
            kills: Vec::new(),
            watches: Vec::new(),
            eof: vec![false; n],
            outstanding: 0,
            strays: Vec::new(),
            stray_count: 0,
            rng: Rng::new(config.seed ^ 0x0063_6c75_7374_6572),
            shard_map,
            schema,
            first_send_wall_ms: 0,
            last_ok_wall_ms: 0,
            first_ev_wall_ms: 0,
            last_ev_wall_ms: 0,
            done_wall_ms: 0,
            timed_out: false,
            quitting: false,
            planned_kills,
            planned_pauses,
            pauses: Vec::new(),
            effects_pg,
            restart: config
                .cluster
                .as_ref()
                .and_then(|c| c.restart.clone())
                .map(|r| (r.at_ms, r.command)),
            restart_run: None,
            restart_thread: None,
        }
    }

    /// Waits for every node's `ready`; a node that exits first or stays
    /// silent is an error carrying its stderr.
    fn await_ready(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut ready = vec![false; self.nodes.len()];
        while !ready.iter().all(|&r| r) {
            let left = deadline.saturating_duration_since(Instant::now());
            let waiting = || {
                ready
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| !**r)
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>()
            };
            if left.is_zero() {
                let k = waiting()[0];
                return Err(Error::Run(format!(
                    "node {} did not print `ready` within {} s; its stderr:\n{}",
                    self.nodes.name(k),
                    READY_TIMEOUT.as_secs(),
                    self.nodes.stderr_tail(k)
                )));
            }
            match self
                .nodes
                .lines()
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(Received {
                    node,
                    line: Some(Line::Ready(name)),
                    ..
                }) => {
                    if name != self.nodes.name(node) {
                        self.stray(format!(
                            "{}: `ready {name}` names another node",
                            self.nodes.name(node)
                        ));
                    }
                    ready[node] = true;
                }
                Ok(Received {
                    node, line: None, ..
                }) => {
                    // Let its exit status and stderr arrive.
                    std::thread::sleep(Duration::from_millis(200));
                    let fate = self.nodes.poll_exit(node);
                    return Err(Error::Run(format!(
                        "node {} ended before it was ready ({}); its stderr:\n{}",
                        self.nodes.name(node),
                        describe_fate(fate),
                        self.nodes.stderr_tail(node)
                    )));
                }
                Ok(r) => {
                    let name = self.nodes.name(r.node).to_string();
                    self.stray(format!("{name}: {:?} before `ready`", r.line));
                }
                Err(_) => {
                    for k in waiting() {
                        if let Fate::Exited(code) = self.nodes.poll_exit(k) {
                            std::thread::sleep(Duration::from_millis(200));
                            return Err(Error::Run(format!(
                                "node {} exited ({}) before it was ready; its stderr:\n{}",
                                self.nodes.name(k),
                                describe_fate(Fate::Exited(code)),
                                self.nodes.stderr_tail(k)
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads who owns what now that every node is ready, and opens the
    /// sale on the node clock.
    fn note_shards_at_open(&mut self, db: &mut Database) -> Result<(), Error> {
        // The nodes take their shards right after `ready`; give the first
        // acquisitions a moment so the table shows the starting spread.
        let settle = Instant::now() + Duration::from_millis(LEASE_TTL_MS / 2);
        loop {
            let rows = db.shards(None).map_err(Error::Run)?;
            let owned = rows.iter().filter(|r| r.owner.is_some()).count();
            for run in &mut self.runs {
                run.shards_at_open = rows
                    .iter()
                    .filter(|r| r.owner.as_deref() == Some(&run.name))
                    .count() as u32;
            }
            if owned == rows.len() || Instant::now() >= settle {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.open_ms = self.clock.now_ms();
        Ok(())
    }

    fn stray(&mut self, what: String) {
        self.stray_count += 1;
        if self.strays.len() < 10 {
            self.strays.push(what);
        }
    }

    /// A node that is up, drawn at random; `None` if none is.
    fn pick_node(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&k| self.nodes.is_up(k))
            .collect();
        if up.is_empty() {
            return None;
        }
        Some(up[self.rng.next_u64() as usize % up.len()])
    }

    /// Sends `line` to a random node that takes it; the node, or `None`.
    fn send_somewhere(&mut self, command: &Command) -> Option<usize> {
        loop {
            let node = self.pick_node()?;
            if self.nodes.send(node, command) {
                self.runs[node].sent += 1;
                self.outstanding += 1;
                if self.first_send_wall_ms == 0 {
                    self.first_send_wall_ms = wall_now_ms();
                }
                return Some(node);
            }
        }
    }

    fn schedule(&mut self, order: usize) {
        let o = &self.orders[order];
        let id = Order::id_of(order);
        // `--effects pg`: the order row, its stock and its deadline in one
        // transaction (`duewheel node --orders`).
        let command = if self.effects_pg {
            Command::Order {
                id,
                deadline_ms: o.deadline_ms,
                qty: o.qty,
            }
        } else {
            Command::Schedule {
                id,
                deadline_ms: o.deadline_ms,
                payload: o.payload.clone(),
            }
        };
        if let Some(node) = self.send_somewhere(&command) {
            let o = &mut self.orders[order];
            o.sched = Sched::Pending;
            o.sched_node = node;
        }
    }

    fn pay(&mut self, order: usize) {
        match self.orders[order].sched {
            Sched::Ok => self.cancel(order),
            Sched::Pending => self.orders[order].cancel = CancelState::Deferred,
            Sched::NotSent | Sched::Refused(_) | Sched::Unknown => {
                self.orders[order].cancel = CancelState::Skipped;
            }
        }
    }

    fn cancel(&mut self, order: usize) {
        let id = Order::id_of(order);
        // `--effects pg`: the payment cancels the deadline in its own
        // transaction; `fired` means the expiry won and it was refunded.
        let command = if self.effects_pg {
            Command::Pay { id }
        } else {
            Command::Cancel { id }
        };
        match self.send_somewhere(&command) {
            Some(node) => {
                let o = &mut self.orders[order];
                o.cancel = CancelState::Pending;
                o.cancel_node = node;
            }
            None => self.orders[order].cancel = CancelState::Skipped,
        }
    }

    fn kill(&mut self, node: usize, at_sale_ms: u64, db: &mut Database) -> Result<(), Error> {
        self.nodes.flush();
        self.nodes.kill(node).map_err(Error::Run)?;
        let at_wall_ms = wall_now_ms();
        let handover = self.handover(node, at_wall_ms, db)?;
        self.runs[node].killed = true;
        self.runs[node].end = String::from("killed (SIGKILL)");
        self.kills.push(Kill {
            node,
            name: self.nodes.name(node).to_string(),
            at_sale_ms,
            at_wall_ms,
            handover,
            answers_lost: 0,
            redelivered: 0,
            fired_by_survivors: 0,
        });
        self.watches.push(Watch {
            fault: Fault::Kill(self.kills.len() - 1),
            claims_read: false,
            done: false,
        });
        Ok(())
    }

    /// SIGSTOPs node `node`; [`Action::Resume`] continues it.
    fn pause(&mut self, k: usize, db: &mut Database) -> Result<(), Error> {
        let (node, at_sale_ms, for_sale_ms) = self.planned_pauses[k];
        // What the driver wrote so far reaches it; what it writes while the
        // node sleeps waits in the pipe, as a load balancer's requests wait
        // on a frozen process.
        self.nodes.flush();
        self.nodes.signal(node, "STOP").map_err(Error::Run)?;
        let at_wall_ms = wall_now_ms();
        let handover = self.handover(node, at_wall_ms, db)?;
        self.runs[node].paused = true;
        self.pauses.push(Pause {
            node,
            name: self.nodes.name(node).to_string(),
            at_sale_ms,
            for_sale_ms,
            for_wall_ms: (for_sale_ms as f64 / self.clock.speed).round() as u64,
            at_wall_ms,
            resumed_after_ms: None,
            handover,
            late_deliveries: 0,
            stale_claims: 0,
        });
        self.watches.push(Watch {
            fault: Fault::Pause(self.pauses.len() - 1),
            claims_read: false,
            done: false,
        });
        Ok(())
    }

    /// Starts the restart command in a thread of its own (the nodes go on
    /// meanwhile, and so does the sale).
    fn restart_db(&mut self, at_sale_ms: u64) {
        let Some((_, command)) = self.restart.clone() else {
            return;
        };
        self.restart_run = Some(DbRestartRun {
            at_sale_ms,
            at_wall_ms: wall_now_ms(),
            took_ms: None,
            end: String::from("running"),
        });
        self.restart_thread = Some(std::thread::spawn(move || {
            std::process::Command::new("sh")
                .args(["-c", &command])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map_err(|e| format!("cannot run the restart command: {e}"))
        }));
    }

    /// Notes the restart's end once its command exited.
    fn poll_restart(&mut self) {
        if !self
            .restart_thread
            .as_ref()
            .is_some_and(std::thread::JoinHandle::is_finished)
        {
            return;
        }
        let Some(thread) = self.restart_thread.take() else {
            return;
        };
        let end = match thread.join() {
            Ok(Ok(status)) if status.success() => String::from("exit 0"),
            Ok(Ok(status)) => format!("{status}"),
            Ok(Err(e)) => e,
            Err(_) => String::from("the restart thread panicked"),
        };
        if let Some(run) = &mut self.restart_run {
            run.took_ms = Some(wall_now_ms().saturating_sub(run.at_wall_ms));
            run.end = end;
        }
    }

    /// SIGCONTs the node of planned pause `k`.
    fn resume(&mut self, k: usize) -> Result<(), Error> {
        let node = self.planned_pauses[k].0;
        let Some(pause) = self.pauses.iter_mut().find(|p| p.node == node) else {
            return Ok(());
        };
        self.nodes.signal(node, "CONT").map_err(Error::Run)?;
        pause.resumed_after_ms = Some(wall_now_ms().saturating_sub(pause.at_wall_ms));
        Ok(())
    }

    /// What node `node` holds now that it stopped serving at `at_wall_ms`
    /// (its claimed rows are read later, see [`CLAIMS_SETTLE_MS`]).
    fn handover(
        &mut self,
        node: usize,
        at_wall_ms: u64,
        db: &mut Database,
    ) -> Result<Handover, Error> {
        let name = self.nodes.name(node).to_string();
        // Read after the signal: the node renews no more, so its rows show
        // its last lease.
        let rows = db.shards(None).map_err(Error::Run)?;
        let theirs: Vec<&ShardRow> = rows
            .iter()
            .filter(|r| r.owner.as_deref() == Some(&name))
            .collect();
        let lease_expired_after_ms = theirs
            .iter()
            .filter_map(|r| r.lease_left_ms)
            .fold(None, |max: Option<f64>, left| {
                Some(max.map_or(left, |m| m.max(left)))
            })
            .map(|left| left.max(0.0) + wall_now_ms().saturating_sub(at_wall_ms) as f64);
        let since = at_wall_ms.saturating_sub(1_000);
        let deliveries_last_second = self
            .orders
            .iter()
            .flat_map(|o| &o.deliveries)
            .filter(|d| d.received_wall_ms >= since)
            .count() as u64;
        Ok(Handover {
            shards: theirs.iter().map(|r| r.shard).collect(),
            epochs: theirs.iter().map(|r| (r.shard, r.epoch)).collect(),
            lease_expired_after_ms,
            deliveries_last_second,
            ..Handover::default()
        })
    }

    /// Reads the claimed rows of the faults that settled, and looks
    /// whether the awaited takeovers happened. A pause's takeover is
    /// awaited until a lease after its `CONT` (a pause shorter than a
    /// lease is not taken over at all).
    fn poll_takeovers(&mut self, db: &mut Database) -> Result<(), Error> {
        let now = wall_now_ms();
        for w in self.watches.iter_mut().filter(|w| !w.done) {
            let (name, at_wall_ms, handover, give_up) = match w.fault {
                Fault::Kill(k) => {
                    let kill = &mut self.kills[k];
                    (&kill.name, kill.at_wall_ms, &mut kill.handover, false)
                }
                Fault::Pause(k) => {
                    let pause = &mut self.pauses[k];
                    let give_up = pause
                        .resumed_after_ms
                        .is_some_and(|after| now >= pause.at_wall_ms + after + LEASE_TTL_MS);
                    (&pause.name, pause.at_wall_ms, &mut pause.handover, give_up)
                }
            };
            if !w.claims_read {
                if now < at_wall_ms + CLAIMS_SETTLE_MS {
                    continue;
                }
                handover.claimed_ids = db.claimed(&handover.shards).map_err(Error::Run)?;
                handover.claimed_unacked = handover.claimed_ids.len() as u64;
                w.claims_read = true;
            }
            if handover.shards.is_empty() || give_up {
                w.done = true;
                continue;
            }
            let rows = db.shards(Some(&handover.shards)).map_err(Error::Run)?;
            let taken = rows
                .iter()
                .all(|r| r.owner.as_deref().is_some_and(|o| o != name));
            if taken {
                handover.taken_after_ms = Some(wall_now_ms().saturating_sub(at_wall_ms));
                for r in &rows {
                    if let Some(owner) = &r.owner {
                        *handover.taken_by.entry(owner.clone()).or_default() += 1;
                    }
                }
                w.done = true;
            }
        }
        Ok(())
    }

    /// Handles one line from a node.
    fn receive(&mut self, r: Received) {
        let node = r.node;
        let name = self.nodes.name(node).to_string();
        let order_of = |id: u64, orders: &[Order]| -> Option<usize> {
            let order = usize::try_from(id.checked_sub(1)?).ok()?;
            (order < orders.len()).then_some(order)
        };
        let Some(line) = r.line else {
            self.closed(node);
            return;
        };
        match line {
            Line::Ok(id) | Line::Err { id: Some(id), .. } => {
                let ok = matches!(line, Line::Ok(_));
                let Some(order) = order_of(id, &self.orders).filter(|&o| {
                    self.orders[o].sched == Sched::Pending && self.orders[o].sched_node == node
                }) else {
                    self.stray(format!("{name}: `{line}` answers no schedule sent to it"));
                    return;
                };
                self.outstanding -= 1;
                self.runs[node].answered += 1;
                let o = &mut self.orders[order];
                if ok {
                    o.sched = Sched::Ok;
                    self.last_ok_wall_ms = r.wall_ms;
                } else if let Line::Err { kind, .. } = &line {
                    o.sched = Sched::Refused(ErrKind::parse(kind));
                }
                if o.cancel == CancelState::Deferred {
                    if ok {
                        self.cancel(order);
                    } else {
                        o.cancel = CancelState::Skipped;
                    }
                }
            }
            Line::Cancelled(id) => self.answer_cancel(node, id, CancelState::Cancelled),
            Line::Fired(id) => self.answer_cancel(node, id, CancelState::Fired),
            Line::NotFound(id) => self.answer_cancel(node, id, CancelState::NotFound),
            Line::Cerr {
                id: Some(id), kind, ..
            } => {
                self.answer_cancel(node, id, CancelState::Failed(ErrKind::parse(&kind)));
            }
            Line::Ev(ev) => {
                self.runs[node].deliveries += 1;
                if self.first_ev_wall_ms == 0 {
                    self.first_ev_wall_ms = r.wall_ms;
                }
                self.last_ev_wall_ms = r.wall_ms;
                match order_of(ev.id, &self.orders) {
                    Some(order) => self.orders[order].deliveries.push(Delivery {
                        ev,
                        node,
                        received_wall_ms: r.wall_ms,
                    }),
                    None => self.stray(format!(
                        "{name}: a delivery of id {}, never scheduled",
                        ev.id
                    )),
                }
            }
            Line::Stats(kv) => {
                self.runs[node].stats = kv.into_iter().map(|(k, v)| (k, v.to_string())).collect();
            }
            Line::Err { id: None, .. } | Line::Cerr { id: None, .. } => {
                self.stray(format!("{name}: `{line}`: the driver sent no bad line"));
            }
            Line::Ready(_) => self.stray(format!("{name}: a second `ready`")),
            Line::Unknown(text) => {
                self.stray(format!("{name}: a line outside the protocol: {text:?}"))
            }
        }
    }

    /// Records node `node`'s answer `state` to the cancel of timer `id`.
    fn answer_cancel(&mut self, node: usize, id: u64, state: CancelState) {
        let order = usize::try_from(id.wrapping_sub(1))
            .ok()
            .filter(|&o| o < self.orders.len())
            .filter(|&o| {
                self.orders[o].cancel == CancelState::Pending && self.orders[o].cancel_node == node
            });
        match order {
            Some(order) => {
                self.outstanding -= 1;
                self.runs[node].answered += 1;
                self.orders[order].cancel = state;
            }
            None => {
                let name = self.nodes.name(node).to_string();
                self.stray(format!(
                    "{name}: {state:?} for id {id} answers no cancel sent to it"
                ));
            }
        }
    }

    /// Node `node`'s stdout closed: whatever it owed is unknown now.
    fn closed(&mut self, node: usize) {
        self.eof[node] = true;
        let mut lost = 0u64;
        for o in &mut self.orders {
            if o.sched == Sched::Pending && o.sched_node == node {
                o.sched = Sched::Unknown;
                if o.cancel == CancelState::Deferred {
                    o.cancel = CancelState::Skipped;
                }
                lost += 1;
            }
            if o.cancel == CancelState::Pending && o.cancel_node == node {
                o.cancel = CancelState::Unknown;
                lost += 1;
            }
        }
        self.outstanding -= lost;
        if let Some(kill) = self.kills.iter_mut().find(|k| k.node == node) {
            kill.answers_lost = lost;
        } else if !self.quitting {
            // It takes no more commands, whatever became of the process.
            self.nodes.retire(node);
            std::thread::sleep(Duration::from_millis(100));
            let fate = self.nodes.poll_exit(node);
            let run = &mut self.runs[node];
            run.unexpected_end = true;
            run.end = format!("closed its stdout unasked ({})", describe_fate(fate));
            run.stderr_tail = Some(self.nodes.stderr_tail(node));
        }
    }

    /// Orders acked `ok` whose cancel did not win (or was never sent) and
    /// that have not been delivered yet.
    fn missing_deliveries(&self) -> usize {
        self.orders
            .iter()
            .filter(|o| cluster_checks::must_fire(o) && o.deliveries.is_empty())
            .count()
    }

    /// Runs the sale to its end.
    fn drive(&mut self, sale: &Sale, config: &Config, db: &mut Database) -> Result<(), Error> {
        let mut actions: Vec<(u64, Action)> = Vec::with_capacity(sale.plans.len() * 2);
        for (order, plan) in sale.plans.iter().enumerate() {
            self.orders[order].deadline_ms = self.open_ms + (plan.deadline_ms - SALE_OPENS_MS);
            actions.push((
                plan.arrival_ms - SALE_OPENS_MS,
                Action::Schedule(order as u32),
            ));
        }
        for &(confirmed_ms, order) in &sale.payments {
            actions.push((confirmed_ms - SALE_OPENS_MS, Action::Pay(order)));
        }
        for (k, &(_, at_ms)) in self.planned_kills.iter().enumerate() {
            actions.push((at_ms, Action::Kill(k)));
        }
        if let Some((at_ms, _)) = &self.restart {
            actions.push((*at_ms, Action::RestartDb));
        }
        for (k, &(_, at_ms, for_ms)) in self.planned_pauses.iter().enumerate() {
            actions.push((at_ms, Action::Pause(k)));
            actions.push((at_ms + for_ms, Action::Resume(k)));
        }
        actions.sort_unstable();
        // The last moment anything is due: the last deadline, or a late
        // payment after it (a pending payer's gateway can confirm minutes
        // after the window closed).
        let last_action_ms = actions.last().map_or(0, |a| a.0);
        let end_ms = self.open_ms + (config.sale_ms + config.window_ms).max(last_action_ms);
        let drain_until = self.clock.wall_of(end_ms) as u64 + DRAIN_TIMEOUT.as_millis() as u64;

        let mut next = 0;
        let mut last_poll = Instant::now();
        let mut last_scan = Instant::now();
        let mut complete_at: Option<Instant> = None;
        loop {
            let now_sale = self.clock.now_ms().saturating_sub(self.open_ms);
            while next < actions.len() && actions[next].0 <= now_sale {
                match actions[next].1 {
                    Action::Schedule(order) => self.schedule(order as usize),
                    Action::Pay(order) => self.pay(order as usize),
                    Action::Kill(k) => {
                        let (node, at_ms) = self.planned_kills[k];
                        self.kill(node, at_ms, db)?;
                    }
                    Action::Pause(k) => self.pause(k, db)?,
                    Action::Resume(k) => self.resume(k)?,
                    Action::RestartDb => self.restart_db(now_sale),
                }
                next += 1;
            }
            self.nodes.flush();

            if last_poll.elapsed() >= TAKEOVER_POLL && self.watches.iter().any(|w| !w.done) {
                self.poll_takeovers(db)?;
                last_poll = Instant::now();
            }

            // Wait for lines until the next action is due (a few ms at most).
            let wait = match actions.get(next) {
                Some(&(at, _)) => {
                    let due = self.clock.wall_of(self.open_ms + at);
                    Duration::from_micros(((due - wall_now_ms() as f64).max(0.0) * 1e3) as u64)
                        .min(Duration::from_millis(5))
                }
                None => Duration::from_millis(5),
            };
            if let Ok(r) = self.nodes.lines().recv_timeout(wait) {
                self.receive(r);
                while let Ok(r) = self.nodes.lines().try_recv() {
                    self.receive(r);
                }
            }

            self.poll_restart();
            if next < actions.len() {
                continue;
            }
            if last_scan.elapsed() >= Duration::from_millis(100) {
                last_scan = Instant::now();
                let complete = self.outstanding == 0
                    && self.watches.iter().all(|w| w.done)
                    && self.restart_thread.is_none()
                    && self.clock.now_ms() >= end_ms
                    && (self.missing_deliveries() == 0
                        // `--effects pg`: an expiry whose commit's answer
                        // was lost (a restart) committed without its `ev`
                        // line; the tables say it happened.
                        || (self.effects_pg && db.open_orders().is_ok_and(|n| n == 0)));
                match (complete, complete_at) {
                    (true, None) => {
                        complete_at = Some(Instant::now());
                        self.done_wall_ms = wall_now_ms();
                    }
                    (true, Some(at)) if at.elapsed() >= SETTLE => return Ok(()),
                    (false, _) => complete_at = None,
                    _ => {}
                }
                if wall_now_ms() > drain_until {
                    self.timed_out = true;
                    self.done_wall_ms = wall_now_ms();
                    return Ok(());
                }
            }
        }
    }

    /// Collects the survivors' stats, shuts them down, and reads what is
    /// left in the database.
    fn finish(mut self, db: &mut Database, started: Instant, stock: u64) -> Outcome {
        // A restart still running (the drain timed out first) ends first.
        if let Some(thread) = &self.restart_thread {
            while !thread.is_finished() {
                std::thread::sleep(Duration::from_millis(50));
            }
            self.poll_restart();
        }
        // The expiries of orders whose answer was lost (committed all the
        // same) may still be in their transactions: give them a moment.
        let (effects, effects_error) = if self.effects_pg {
            let until = Instant::now() + EFFECTS_SETTLE;
            while Instant::now() < until && db.open_orders().is_ok_and(|n| n > 0) {
                std::thread::sleep(Duration::from_millis(100));
            }
            match db.effects() {
                Ok(e) => (Some(e), None),
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, None)
        };
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&k| self.nodes.is_up(k))
            .collect();
        for &k in &up {
            self.nodes.send(k, &Command::Stats);
        }
        self.nodes.flush();
        let until = Instant::now() + STATS_TIMEOUT;
        let mut got = vec![false; self.nodes.len()];
        while up.iter().any(|&k| !got[k]) && Instant::now() < until {
            if let Ok(r) = self.nodes.lines().recv_timeout(Duration::from_millis(50)) {
                if matches!(r.line, Some(Line::Stats(_))) {
                    got[r.node] = true;
                }
                self.receive(r);
            }
        }
        self.quitting = true;
        for (node, status) in self.nodes.quit_all(QUIT_TIMEOUT) {
            let run = &mut self.runs[node];
            match status {
                Ok(s) if s.success() => run.end = String::from("exit 0 after quit"),
                Ok(s) => {
                    run.end = format!("{s} after quit");
                    run.unexpected_end = true;
                }
                Err(e) => {
                    run.end = e;
                    run.unexpected_end = true;
                }
            }
            if run.unexpected_end {
                run.stderr_tail = Some(self.nodes.stderr_tail(node));
            }
        }
        // `--effects pg`: the nodes say on stderr which expiry batches did
        // not commit, and why; kept for a failure's post-mortem.
        if self.effects_pg {
            for (node, run) in self.runs.iter_mut().enumerate() {
                if run.stderr_tail.is_none() {
                    run.stderr_tail = Some(self.nodes.stderr_tail(node));
                }
            }
        }
        // What they wrote before exiting.
        let until = Instant::now() + Duration::from_secs(5);
        while self.eof.iter().any(|e| !e) && Instant::now() < until {
            if let Ok(r) = self.nodes.lines().recv_timeout(Duration::from_millis(50)) {
                self.receive(r);
            }
        }
        let leftover = db.leftover().ok();
        // What the database says of the first timers that never fired.
        let missing: Vec<u64> = self
            .orders
            .iter()
            .enumerate()
            .filter(|(_, o)| cluster_checks::must_fire(o) && o.deliveries.is_empty())
            .map(|(order, _)| Order::id_of(order))
            .take(MISSING_DESCRIBED)
            .collect();
        let missing_rows = if missing.is_empty() {
            BTreeMap::new()
        } else {
            db.describe(&missing)
                .unwrap_or_else(|e| vec![(0, e)])
                .into_iter()
                .collect()
        };
        for kill in &mut self.kills {
            let in_victim_shard = |order: usize| {
                kill.handover
                    .shards
                    .binary_search(&self.shard_map.shard_of_id(Order::id_of(order)))
                    .is_ok()
            };
            for (order, o) in self.orders.iter().enumerate() {
                if o.deliveries.is_empty() || !in_victim_shard(order) {
                    continue;
                }
                let after_kill = |d: &&Delivery| d.received_wall_ms >= kill.at_wall_ms;
                if o.deliveries
                    .iter()
                    .filter(after_kill)
                    .any(|d| d.ev.attempt > 1)
                {
                    kill.redelivered += 1;
                }
                if o.deliveries.iter().any(|d| d.node != kill.node) {
                    kill.fired_by_survivors += 1;
                }
            }
        }
        self.explain_duplicates();
        let sale_wall_s =
            (self.done_wall_ms as f64 - self.clock.wall_of(self.open_ms)).max(0.0) / 1e3;
        Outcome {
            orders: self.orders,
            clock: self.clock,
            open_ms: self.open_ms,
            nodes: self.runs,
            kills: self.kills,
            pauses: self.pauses,
            restart: self.restart_run,
            effects,
            effects_error,
            stock_initial: stock,
            strays: self.strays,
            stray_count: self.stray_count,
            leftover,
            missing_rows,
            timed_out: self.timed_out,
            wall_s: started.elapsed().as_secs_f64(),
            sale_wall_s,
            first_send_wall_ms: self.first_send_wall_ms,
            last_ok_wall_ms: self.last_ok_wall_ms,
            first_ev_wall_ms: self.first_ev_wall_ms,
            last_ev_wall_ms: self.last_ev_wall_ms,
            schema: self.schema,
            shard_map: self.shard_map,
        }
    }
}

impl Driver {
    /// Counts the duplicates each kill and pause explains, and each
    /// pause's deliveries after `CONT` under an epoch it had lost.
    fn explain_duplicates(&mut self) {
        for (order, o) in self.orders.iter().enumerate() {
            let id = Order::id_of(order);
            let extra = (o.deliveries.len() as u64).saturating_sub(1);
            // The first fault (kill or pause) that held the id claimed
            // explains all its duplicates.
            let mut faults: Vec<(u64, &mut Handover)> = self
                .kills
                .iter_mut()
                .map(|k| (k.at_wall_ms, &mut k.handover))
                .chain(
                    self.pauses
                        .iter_mut()
                        .map(|p| (p.at_wall_ms, &mut p.handover)),
                )
                .filter(|(_, h)| h.claimed_ids.contains(&id))
                .collect();
            faults.sort_by_key(|(at, _)| *at);
            if let Some((_, h)) = faults.into_iter().next() {
                h.duplicates += extra;
            }
        }
        for pause in &mut self.pauses {
            let Some(after) = pause.resumed_after_ms else {
                continue;
            };
            let resumed_wall_ms = pause.at_wall_ms + after;
            for (order, o) in self.orders.iter().enumerate() {
                let id = Order::id_of(order);
                let shard = self.shard_map.shard_of_id(id);
                // Shards it kept (a pause shorter than its lease) it may
                // go on delivering under the same epoch.
                let Some(&lost_epoch) = pause.handover.epochs.get(&shard) else {
                    continue;
                };
                if pause.handover.taken_after_ms.is_none() {
                    continue;
                }
                for d in &o.deliveries {
                    // Epoch 0: the node no longer knew the claim's epoch
                    // (its ack ended it first); judged by the id alone.
                    let stale = d.ev.epoch <= lost_epoch;
                    if d.node != pause.node || d.received_wall_ms < resumed_wall_ms || !stale {
                        continue;
                    }
                    if pause.handover.claimed_ids.contains(&id) {
                        pause.late_deliveries += 1;
                    } else if d.ev.epoch != 0 {
                        pause.stale_claims += 1;
                    }
                }
            }
        }
    }
}

fn describe_fate(fate: Fate) -> String {
    match fate {
        Fate::Running => "still running".into(),
        Fate::Killed => "killed".into(),
        Fate::Exited(Some(code)) => format!("exit code {code}"),
        Fate::Exited(None) => "killed by a signal".into(),
    }
}
