//! The `simulate` arguments, and their validation into a [`Config`].
//!
//! Invariant: a [`Config`] exists only if every value is in range and the
//! values agree with each other (ratios sum to at most 1, the reminder falls
//! inside the window, the report file can be written, ...). Everything after
//! this module may rely on that instead of checking again, and every refusal
//! happens here, before the run, with a message that names the argument.

use super::Error;
use duewheel::wal::SyncPolicy;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most orders one run may place (memory: about 150 bytes each, with the
/// engine's share).
const MAX_ORDERS: u64 = 50_000_000;

/// Checkout callers with `--durable`: more than one makes a step's calls
/// together, and calls in flight together share an fsync (one call at a
/// time: 5.2k acknowledged schedules/s, `docs/BENCHMARKS.md`).
const DURABLE_CHECKOUT_THREADS: usize = 64;

/// Most events a consumer group's channel may hold: with three groups,
/// ~100 MiB of events at most, where 2^30 reserved 32 GiB a group and
/// aborted the process.
const MAX_CHANNEL_CAPACITY: u64 = 1 << 20;

/// Most orders one `--cluster` run may place: every order is a row in
/// PostgreSQL and a line through a pipe, and the driver keeps every answer.
const MAX_CLUSTER_ORDERS: u64 = 5_000_000;

/// Orders of a `--cluster` run unless `--orders` says otherwise: enough to
/// keep the nodes' batches full at the sale's opening, few enough that the
/// run takes well under a minute on a shared 2-core machine.
const DEFAULT_CLUSTER_ORDERS: u64 = 20_000;

/// Logical shards of a `--cluster` run unless `--shards` says otherwise.
const DEFAULT_CLUSTER_SHARDS: u32 = 256;

/// Sale seconds per real second of a `--cluster` run unless `--speed` says
/// otherwise: the default sale (10 minutes, 30-minute windows) takes about
/// 40 s of real time.
const DEFAULT_CLUSTER_SPEED: f64 = 60.0;

/// Arguments of `duewheel simulate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Durations take a unit: 250ms, 30s, 5m, 1h, 1m30s.\n\
    --durable DIR keeps the engine's log in DIR (left there after the run); \
    --crash-at kills the engine mid-sale and recovers it from DIR.\n\
    --cluster N runs the sale on N `duewheel node` processes sharing one \
    PostgreSQL; --kill-node 1@35m kills one with SIGKILL mid-sale, \
    --pause-node 2@33m stops one with SIGSTOP past its lease and continues it. \
    Expiries fire from --window to --sale + --window, densest first: with the \
    defaults from 30m to 40m, so 1@35m lands while they are in flight. It \
    models the payment deadline only (no reminders, re-checks or stock), on \
    the system clock sped up by --speed; --effects pg adds the orders and the \
    stock as PostgreSQL tables and judges the effects read from them, and \
    --restart-db-at restarts the database mid-sale.\n\
    Exit codes: 0 every invariant held, 1 an invariant failed, 2 bad arguments.")]
pub(crate) struct Args {
    /// Orders arriving during the sale (underscores allowed: 1_000_000)
    /// [default: 1000000; 20000 with --cluster].
    #[arg(long, value_parser = parse_count)]
    orders: Option<u64>,
    /// How long orders keep arriving (front-loaded, as at a sale's opening).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    sale: Duration,
    /// Payment window of each order: unpaid after this, it is cancelled.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    window: Duration,
    /// Reminder to the buyer this long before the window closes.
    #[arg(long, default_value = "5m", value_parser = parse_duration, conflicts_with = "cluster")]
    remind_before: Duration,
    /// Share of buyers who pay at a random moment in the window.
    #[arg(long, default_value = "0.70", value_parser = parse_ratio)]
    pay_ratio: f64,
    /// Share of buyers who pay near the end while the gateway reports
    /// "pending" for a while, so the order service re-checks before
    /// cancelling. The rest of the buyers never pay.
    #[arg(long, default_value = "0.05", value_parser = parse_ratio)]
    pending_ratio: f64,
    /// Share of the paying buyers who pay in the window's last second,
    /// racing the expiry.
    #[arg(long, default_value = "0.02", value_parser = parse_ratio)]
    last_second_ratio: f64,
    /// Longest delay between a buyer paying and the payment reaching the
    /// order platform.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pay_latency: Duration,
    /// How long the gateway reports "pending" for the pending buyers: a
    /// range MIN..MAX.
    #[arg(long, default_value = "10s..6m", value_parser = parse_range)]
    pending_for: (Duration, Duration),
    /// First re-check after a "pending" answer; each re-check doubles it.
    #[arg(long, default_value = "15s", value_parser = parse_duration, conflicts_with = "cluster")]
    recheck: Duration,
    /// Most re-checks per order (the engine's `max_snoozes`).
    #[arg(long, default_value = "4", conflicts_with = "cluster")]
    max_snoozes: u8,
    /// Redelivery of an expiry a consumer group has not acknowledged.
    #[arg(long, default_value = "30s", value_parser = parse_duration, conflicts_with = "cluster")]
    ack_timeout: Duration,
    /// Units in stock when the sale opens [default: enough for every order].
    #[arg(long, value_parser = parse_amount, conflicts_with = "cluster")]
    stock: Option<u64>,
    /// Each order buys 1 to this many units.
    #[arg(long, default_value = "2", value_parser = clap::value_parser!(u32).range(1..=1000), conflicts_with = "cluster")]
    max_qty: u32,
    /// Seed of every random choice: the same seed gives the same sale.
    #[arg(long, default_value = "42")]
    seed: u64,
    /// Engine shards [default: one per core; with --cluster, the
    /// PostgreSQL logical shards: 256].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    shards: Option<u32>,
    /// Events each consumer group may hold before the dispatcher waits.
    #[arg(long, default_value = "65536", value_parser = parse_count, conflicts_with = "cluster")]
    channel_capacity: u64,
    /// Most events the dispatcher takes from a shard per round.
    #[arg(long, default_value = "1024", value_parser = parse_count, conflicts_with = "cluster")]
    batch_size: u64,
    /// Admission cap on pending timers; orders beyond it are turned away
    /// [default: the engine's, 50 million].
    #[arg(long, value_parser = parse_count, conflicts_with = "cluster")]
    max_pending: Option<u64>,
    /// Simulated time per step of the driver: the arrivals and payments of
    /// a step are taken together. With the manual clock it is also the
    /// engine's tick, so events fire up to one step after they fall due,
    /// never before.
    #[arg(long, default_value = "100ms", value_parser = parse_duration, conflicts_with = "cluster")]
    step: Duration,
    /// Run on the system clock, sped up by --speed, instead of a manual
    /// clock driven as fast as the machine goes.
    #[arg(long, conflicts_with = "cluster")]
    real_time: bool,
    /// With --real-time or --cluster: simulated seconds per real second
    /// [default: 60].
    #[arg(long, value_parser = parse_speed)]
    speed: Option<f64>,
    /// Print the report as JSON (and no progress bar).
    #[arg(long)]
    json: bool,
    /// Also write the report as a self-contained HTML page with charts.
    #[arg(long, value_name = "PATH", conflicts_with = "cluster")]
    report: Option<PathBuf>,
    /// Run the engine on its write-ahead log in DIR (created if needed).
    /// Every schedule, cancel, final ack and snooze is in the log before it
    /// returns. DIR must be new or empty: a log left by an earlier run is
    /// refused, since this run's orders start from nothing.
    #[arg(long, value_name = "DIR", conflicts_with = "cluster")]
    durable: Option<PathBuf>,
    /// With --durable: when a durable call returns. `always`: after the
    /// fsync its group commit shares. `every-ms:N`: after the write, with an
    /// fsync at most every N ms (a machine crash, not a process crash, can
    /// lose the last N ms).
    #[arg(long, default_value = "always", requires = "durable", value_parser = parse_sync)]
    sync: SyncPolicy,
    /// With --durable: crash the engine when the sale's simulated clock
    /// reaches this (e.g. 5m after it opened): no shutdown, no final
    /// checkpoint, the events in its groups lost. A new engine then recovers
    /// from DIR, the services re-subscribe, and the sale goes on.
    #[arg(long, requires = "durable", value_parser = parse_duration)]
    crash_at: Option<Duration>,
    /// Callers that place orders and take payments: 1 makes one engine
    /// call at a time; more make each step's calls together (async calls
    /// accepted in order, waited for together), so with --durable they
    /// share fsyncs [default: 1 in memory, 64 with --durable].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024), conflicts_with = "cluster")]
    checkout_threads: Option<u32>,
    /// Serve the engine's Prometheus metrics at http://ADDR/metrics while
    /// the sale runs (port 0 picks one and prints it).
    #[arg(long, value_name = "ADDR", conflicts_with = "cluster")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Run the sale on N `duewheel node` processes (1..=16) of this
    /// executable, sharing the timers through PostgreSQL. Each order's
    /// deadline is scheduled, and each
    /// payment cancels it, through a node drawn at random (often not the
    /// owner of the order's shard).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16))]
    cluster: Option<u32>,
    /// With --cluster: the PostgreSQL to share, as a libpq key=value DSN or
    /// a postgresql:// URL [default: env DUEWHEEL_PG_DSN]. Each run creates
    /// a fresh schema there and drops it at the end.
    #[arg(long, value_name = "DSN", requires = "cluster")]
    pg: Option<String>,
    /// With --cluster: SIGKILL node I (1-based) when the sale's clock
    /// reaches T after the opening, e.g. `1@5m` or `2@90s`; repeatable (at
    /// least one node must survive).
    #[arg(long, value_name = "I@T", requires = "cluster", value_parser = parse_kill)]
    kill_node: Vec<KillAt>,
    /// With --cluster: SIGSTOP node I (1-based) when the sale's clock
    /// reaches T after the opening, and SIGCONT it D of sale time later,
    /// e.g. `2@35m+6m` [default D: two leases of real time, so its shards
    /// are taken over while it sleeps]; repeatable. A node paused is not
    /// also killed, and at least one node is neither.
    #[arg(long, value_name = "I@T[+D]", requires = "cluster", value_parser = parse_pause)]
    pause_node: Vec<PauseAt>,
    /// With --cluster: where the orders' effects live. `pg`: the orders
    /// and the stock are PostgreSQL tables; each order is created with its
    /// deadline in one transaction, each payment cancels the deadline in
    /// its transaction, and the nodes (`duewheel node --orders`) cancel
    /// expired orders and release their stock in the transaction that ends
    /// the timer; the report then counts effects read from the tables.
    #[arg(long, value_name = "WHERE", requires = "cluster", value_parser = ["pg"])]
    effects: Option<String>,
    /// With --cluster: restart the database (with --pg-restart-cmd) when
    /// the sale's clock reaches T after the opening.
    #[arg(long, value_name = "T", requires = "cluster", value_parser = parse_duration)]
    restart_db_at: Option<Duration>,
    /// The shell command (`sh -c`) that restarts the database
    /// [default: env DUEWHEEL_PG_RESTART, as scripts/pg-up.sh sets it].
    #[arg(long, value_name = "CMD", requires = "restart_db_at")]
    pg_restart_cmd: Option<String>,
    /// With --cluster: when an invariant fails, keep the run's schemas
    /// (timers, shards, and with --effects pg the orders) for a
    /// post-mortem instead of dropping them.
    #[arg(long, requires = "cluster")]
    keep_failed: bool,
}

/// `--restart-db-at`: when, and how.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct DbRestart {
    /// Sale time after the opening.
    pub(crate) at_ms: u64,
    /// Run with `sh -c`; not in the report (it may name paths or users).
    #[serde(skip)]
    pub(crate) command: String,
}

/// `--pause-node I@T[+D]`: which node, when, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct PauseAt {
    /// 1-based, as on the command line.
    pub(crate) node: u32,
    /// Sale time after the opening.
    pub(crate) at_ms: u64,
    /// Sale time it stays stopped; `None` on the command line without
    /// `+D`, always `Some` in a [`Cluster`].
    pub(crate) for_ms: Option<u64>,
}

/// `--kill-node I@T`: which node, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct KillAt {
    /// 1-based, as on the command line.
    pub(crate) node: u32,
    /// Sale time after the opening.
    pub(crate) at_ms: u64,
}

/// `--cluster`'s settings.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Cluster {
    /// Node processes.
    pub(crate) nodes: u32,
    /// Not in the report: a DSN may carry a password.
    #[serde(skip)]
    pub(crate) dsn: String,
    /// Kills, in sale order.
    pub(crate) kills: Vec<KillAt>,
    /// Pauses, in sale order, each with its `for_ms`.
    pub(crate) pauses: Vec<PauseAt>,
    /// `--effects pg`: orders, stock and effects in PostgreSQL tables.
    pub(crate) effects_pg: bool,
    /// `--restart-db-at`.
    pub(crate) restart: Option<DbRestart>,
    /// `--keep-failed`.
    pub(crate) keep_failed: bool,
}

/// A validated configuration (see the module invariant). Times are in
/// milliseconds.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Config {
    pub(crate) orders: u64,
    pub(crate) sale_ms: u64,
    pub(crate) window_ms: u64,
    pub(crate) remind_before_ms: u64,
    pub(crate) pay_ratio: f64,
    pub(crate) pending_ratio: f64,
    pub(crate) last_second_ratio: f64,
    pub(crate) pay_latency_ms: u64,
    pub(crate) pending_min_ms: u64,
    pub(crate) pending_max_ms: u64,
    pub(crate) recheck_ms: u64,
    pub(crate) max_snoozes: u8,
    pub(crate) ack_timeout_ms: u64,
    pub(crate) stock: u64,
    pub(crate) max_qty: u32,
    pub(crate) seed: u64,
    pub(crate) shards: usize,
    pub(crate) channel_capacity: usize,
    pub(crate) batch_size: usize,
    pub(crate) max_pending: Option<usize>,
    pub(crate) step_ms: u64,
    /// `Some(speed)` on the sped-up system clock; `None` on the manual clock.
    pub(crate) real_time_speed: Option<f64>,
    /// Threads placing orders and taking payments.
    pub(crate) checkout_threads: usize,
    /// `Some` with `--durable`.
    pub(crate) durable: Option<Durable>,
    /// `Some` with `--cluster` (then `real_time_speed` is `Some` too and
    /// `shards` is the PostgreSQL shard count).
    pub(crate) cluster: Option<Cluster>,
    #[serde(skip)]
    pub(crate) json: bool,
    #[serde(skip)]
    pub(crate) report: Option<(PathBuf, File)>,
    #[serde(skip)]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
}

/// The durable mode's settings.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Durable {
    /// The log's directory: empty or new when the run starts.
    pub(crate) dir: PathBuf,
    /// `None`: fsync before every call returns; `Some(n)`: at most every
    /// `n` ms.
    pub(crate) sync_every_ms: Option<u64>,
    /// Simulated time after the sale opened at which the engine crashes.
    pub(crate) crash_at_ms: Option<u64>,
}

impl Durable {
    /// The engine's sync policy.
    pub(crate) fn sync_policy(&self) -> SyncPolicy {
        self.sync_every_ms
            .map_or(SyncPolicy::Always, SyncPolicy::EveryMs)
    }
}

impl Config {
    /// Checks `args` and opens the report file (so an unwritable path is
    /// refused now, not after the run).
    pub(crate) fn from_args(mut args: Args) -> Result<Self, Error> {
        let usage = |message: String| Err(Error::Usage(message));
        let cluster = match args.cluster {
            None => None,
            Some(nodes) => {
                let mut cluster = Self::cluster(
                    nodes,
                    args.pg.take(),
                    &args.kill_node,
                    &args.pause_node,
                    args.speed.unwrap_or(DEFAULT_CLUSTER_SPEED),
                )?;
                cluster.effects_pg = args.effects.as_deref() == Some("pg");
                cluster.keep_failed = args.keep_failed;
                if let Some(at) = args.restart_db_at {
                    let command = match args
                        .pg_restart_cmd
                        .take()
                        .or_else(|| std::env::var("DUEWHEEL_PG_RESTART").ok())
                    {
                        Some(c) if !c.trim().is_empty() => c,
                        _ => {
                            return Err(Error::Usage(
                                "--restart-db-at needs --pg-restart-cmd CMD or \
                                 DUEWHEEL_PG_RESTART (scripts/pg-up.sh sets it)"
                                    .into(),
                            ));
                        }
                    };
                    let at_ms = u64::try_from(at.as_millis()).unwrap_or(u64::MAX);
                    if at_ms == 0 {
                        return Err(Error::Usage(
                            "--restart-db-at must be after the opening".into(),
                        ));
                    }
                    cluster.restart = Some(DbRestart { at_ms, command });
                }
                Some(cluster)
            }
        };
        let max_orders = if cluster.is_some() {
            MAX_CLUSTER_ORDERS
        } else {
            MAX_ORDERS
        };
        let orders = args.orders.unwrap_or(if cluster.is_some() {
            DEFAULT_CLUSTER_ORDERS
        } else {
            1_000_000
        });
        if orders > max_orders {
            return usage(format!(
                "--orders {orders} is more than this simulation holds ({max_orders}{})",
                if cluster.is_some() {
                    " with --cluster"
                } else {
                    ""
                }
            ));
        }
        if args.speed.is_some() && !args.real_time && cluster.is_none() {
            return usage("--speed needs --real-time (or --cluster)".into());
        }
        let real_time_speed = if cluster.is_some() {
            Some(args.speed.unwrap_or(DEFAULT_CLUSTER_SPEED))
        } else {
            args.real_time.then(|| args.speed.unwrap_or(60.0))
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (sale_ms, window_ms, remind_ms) =
            (ms(args.sale), ms(args.window), ms(args.remind_before));
        if sale_ms == 0 || sale_ms > 7 * 24 * 3_600_000 {
            return usage("--sale must be between 1ms and 7 days".into());
        }
        if !(2_000..=7 * 24 * 3_600_000).contains(&window_ms) {
            return usage("--window must be between 2s and 7 days".into());
        }
        // --cluster models no reminders; its pending payers still pay in
        // the window's last stretch, 5m of 30m by default: a sixth.
        let remind_ms = if cluster.is_some() {
            remind_ms.min(window_ms / 6)
        } else {
            remind_ms
        };
        if remind_ms == 0 || remind_ms >= window_ms {
            return usage(format!(
                "--remind-before ({}) must be positive and shorter than --window ({})",
                show(args.remind_before),
                show(args.window)
            ));
        }
        if args.pay_ratio + args.pending_ratio > 1.0 + 1e-9 {
            return usage(format!(
                "--pay-ratio ({}) and --pending-ratio ({}) add up to more than 1",
                args.pay_ratio, args.pending_ratio
            ));
        }
        let (pending_min_ms, pending_max_ms) = (ms(args.pending_for.0), ms(args.pending_for.1));
        if pending_min_ms == 0 || pending_min_ms > pending_max_ms || pending_max_ms > 86_400_000 {
            return usage(
                "--pending-for MIN..MAX needs 0 < MIN <= MAX <= 24h, e.g. 10s..6m".into(),
            );
        }
        let pay_latency_ms = ms(args.pay_latency);
        if pay_latency_ms > 3_600_000 {
            return usage("--pay-latency must be at most 1h".into());
        }
        let recheck_ms = ms(args.recheck);
        if recheck_ms == 0 || recheck_ms > 86_400_000 {
            return usage("--recheck must be between 1ms and 24h".into());
        }
        let ack_timeout_ms = ms(args.ack_timeout);
        if ack_timeout_ms == 0 || ack_timeout_ms > 86_400_000 {
            return usage("--ack-timeout must be between 1ms and 24h".into());
        }
        let step_ms = ms(args.step);
        if step_ms == 0 || step_ms > 60_000 || !args.step.subsec_nanos().is_multiple_of(1_000_000) {
            return usage("--step must be a whole number of milliseconds, from 1ms to 60s".into());
        }
        if real_time_speed.is_none() && cluster.is_none() && remind_ms < step_ms {
            // On the manual clock the engine ticks once a step and rounds
            // deadlines up to the tick: a reminder less than a tick before
            // the expiry can fire in the expiry's own tick, after it.
            return usage(format!(
                "--remind-before ({}) must be at least one --step ({}): the engine ticks once \
                 a step, and a reminder closer to the expiry than a tick fires with it",
                show(args.remind_before),
                show(args.step)
            ));
        }
        let shards = match (args.shards, &cluster) {
            (Some(n), _) => n as usize,
            (None, Some(_)) => DEFAULT_CLUSTER_SHARDS as usize,
            (None, None) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let max_pending = args.max_pending.map(|n| n as usize);
        if let Some(max) = max_pending
            && (max < shards || max >= u32::MAX as usize)
        {
            return usage(format!(
                "--max-pending must be at least the number of shards ({shards}) and below 2^32 - 1"
            ));
        }
        if args.batch_size > 1 << 20 {
            return usage("--batch-size must be at most 1048576".into());
        }
        if args.channel_capacity > MAX_CHANNEL_CAPACITY {
            return usage(format!(
                "--channel-capacity must be at most {MAX_CHANNEL_CAPACITY} events per group, \
                 got {}",
                args.channel_capacity
            ));
        }
        let stock = args.stock.unwrap_or(orders * u64::from(args.max_qty));
        let crash_at_ms = args.crash_at.map(ms);
        if let Some(at_ms) = crash_at_ms {
            // The last moment anything can happen: the last order's deadline
            // and its re-checks.
            let last_ms = Self::last_ms(sale_ms, window_ms, recheck_ms, args.max_snoozes);
            if at_ms == 0 || at_ms > last_ms {
                return usage(format!(
                    "--crash-at must fall inside the run: between 1ms and {} (sale + window + \
                     re-checks), got {}",
                    show_ms(last_ms),
                    show_ms(at_ms)
                ));
            }
            if args.real_time {
                return usage(
                    "--crash-at needs the manual clock (drop --real-time): only there is the \
                     crash a moment at which no call to the engine is in doubt"
                        .into(),
                );
            }
        }
        let durable = match args.durable {
            None => None,
            Some(dir) => {
                prepare_dir(&dir).map_err(Error::Usage)?;
                Some(Durable {
                    dir,
                    sync_every_ms: match args.sync {
                        SyncPolicy::EveryMs(n) => Some(n),
                        // `Always`, the flag's only other value.
                        _ => None,
                    },
                    crash_at_ms,
                })
            }
        };
        let checkout_threads = match (args.checkout_threads, &durable) {
            (Some(n), _) => n as usize,
            (None, None) => 1,
            (None, Some(_)) => DURABLE_CHECKOUT_THREADS,
        };
        let report = match args.report {
            None => None,
            Some(path) => match open_report(&path) {
                Ok(file) => Some((path, file)),
                Err(e) => {
                    return usage(format!(
                        "cannot write the report to {}: {e}",
                        path.display()
                    ));
                }
            },
        };
        if let Some(cluster) = &cluster {
            // The last order's deadline: nothing happens after it.
            let last_ms = sale_ms + window_ms;
            if let Some(kill) = cluster.kills.iter().find(|k| k.at_ms > last_ms) {
                return usage(format!(
                    "--kill-node {}@{} falls after the run: the last deadline is at {} (sale + \
                     window)",
                    kill.node,
                    show_ms(kill.at_ms),
                    show_ms(last_ms)
                ));
            }
            if let Some(restart) = cluster.restart.as_ref().filter(|r| r.at_ms > last_ms) {
                return usage(format!(
                    "--restart-db-at {} falls after the run: the last deadline is at {} (sale + \
                     window)",
                    show_ms(restart.at_ms),
                    show_ms(last_ms)
                ));
            }
            if let Some(pause) = cluster.pauses.iter().find(|p| p.at_ms > last_ms) {
                return usage(format!(
                    "--pause-node {}@{} falls after the run: the last deadline is at {} (sale + \
                     window)",
                    pause.node,
                    show_ms(pause.at_ms),
                    show_ms(last_ms)
                ));
            }
        }
        Ok(Self {
            orders,
            sale_ms,
            window_ms,
            remind_before_ms: remind_ms,
            pay_ratio: args.pay_ratio,
            pending_ratio: args.pending_ratio,
            last_second_ratio: args.last_second_ratio,
            pay_latency_ms,
            pending_min_ms,
            pending_max_ms,
            recheck_ms,
            max_snoozes: args.max_snoozes,
            ack_timeout_ms,
            stock,
            max_qty: args.max_qty,
            seed: args.seed,
            shards,
            channel_capacity: args.channel_capacity as usize,
            batch_size: args.batch_size as usize,
            max_pending,
            step_ms,
            real_time_speed,
            checkout_threads,
            durable,
            cluster,
            json: args.json,
            report,
            metrics_addr: args.metrics_addr,
        })
    }

    /// Checks the `--cluster` arguments that stand alone: the node count,
    /// the DSN (flag or environment), the kills and the pauses (whose
    /// default length, two leases of real time, is converted to sale time
    /// at `speed`).
    fn cluster(
        nodes: u32,
        pg: Option<String>,
        kills: &[KillAt],
        pauses: &[PauseAt],
        speed: f64,
    ) -> Result<Cluster, Error> {
        let usage = |message: String| Err(Error::Usage(message));
        let dsn = match pg.or_else(|| std::env::var("DUEWHEEL_PG_DSN").ok()) {
            Some(dsn) if !dsn.trim().is_empty() => dsn,
            _ => {
                return usage(
                    "--cluster needs a PostgreSQL: pass --pg DSN or set DUEWHEEL_PG_DSN \
                     (e.g. `eval \"$(scripts/pg-up.sh)\"` starts a throwaway one)"
                        .into(),
                );
            }
        };
        let mut kills = kills.to_vec();
        kills.sort_by_key(|k| (k.at_ms, k.node));
        let mut victims = Vec::new();
        for kill in &kills {
            if kill.node > nodes {
                return usage(format!(
                    "--kill-node {}@{}: there are only {nodes} nodes (numbered from 1)",
                    kill.node,
                    show_ms(kill.at_ms)
                ));
            }
            if victims.contains(&kill.node) {
                return usage(format!(
                    "--kill-node: node {} is killed twice (a killed node stays dead)",
                    kill.node
                ));
            }
            victims.push(kill.node);
        }
        if victims.len() as u32 >= nodes {
            return usage(format!(
                "--kill-node kills all {nodes} nodes: at least one must survive to take over"
            ));
        }
        let default_pause_ms = (2.0 * super::cluster::LEASE_TTL_MS as f64 * speed).ceil() as u64;
        let mut pauses: Vec<PauseAt> = pauses
            .iter()
            .map(|p| PauseAt {
                for_ms: Some(p.for_ms.unwrap_or(default_pause_ms)),
                ..*p
            })
            .collect();
        pauses.sort_by_key(|p| (p.at_ms, p.node));
        let mut paused = Vec::new();
        for pause in &pauses {
            let shown = format!("--pause-node {}@{}", pause.node, show_ms(pause.at_ms));
            if pause.node > nodes {
                return usage(format!(
                    "{shown}: there are only {nodes} nodes (numbered from 1)"
                ));
            }
            if victims.contains(&pause.node) {
                return usage(format!(
                    "{shown}: node {} is also killed (pause another node)",
                    pause.node
                ));
            }
            if paused.contains(&pause.node) {
                return usage(format!(
                    "--pause-node: node {} is paused twice (one pause a node)",
                    pause.node
                ));
            }
            paused.push(pause.node);
        }
        if (victims.len() + paused.len()) as u32 >= nodes {
            return usage(format!(
                "--kill-node and --pause-node touch all {nodes} nodes: at least one must run \
                 throughout to take over"
            ));
        }
        Ok(Cluster {
            nodes,
            dsn,
            kills,
            pauses,
            effects_pg: false,
            restart: None,
            keep_failed: false,
        })
    }

    /// Checks what only the drawn sale tells: a `--crash-at` after the
    /// sale's last certain event (the last payment to reach the platform, or
    /// the last deadline of an order never paid) would crash nothing.
    pub(crate) fn check_against(&self, sale: &super::buyers::Sale) -> Result<(), Error> {
        let Some(at_ms) = self.durable.as_ref().and_then(|d| d.crash_at_ms) else {
            return Ok(());
        };
        let opens_ms = super::buyers::SALE_OPENS_MS;
        let last_ms = sale
            .plans
            .iter()
            .map(|p| {
                if p.confirmed_ms == u64::MAX {
                    p.deadline_ms
                } else {
                    p.confirmed_ms
                }
            })
            .max()
            .map_or(0, |t| t.saturating_sub(opens_ms));
        if at_ms > last_ms {
            return Err(Error::Usage(format!(
                "--crash-at {} falls after this sale's last certain event at {} (its last \
                 payment or the deadline of its last unpaid order): nothing would be crashed; \
                 pick a moment up to {}",
                show_ms(at_ms),
                show_ms(last_ms),
                show_ms(last_ms)
            )));
        }
        Ok(())
    }

    fn last_ms(sale_ms: u64, window_ms: u64, recheck_ms: u64, max_snoozes: u8) -> u64 {
        sale_ms + window_ms + Self::span_ms(recheck_ms, max_snoozes)
    }

    /// The longest a "pending" order can be re-checked after its deadline.
    pub(crate) fn recheck_span_ms(&self) -> u64 {
        Self::span_ms(self.recheck_ms, self.max_snoozes)
    }

    fn span_ms(recheck_ms: u64, max_snoozes: u8) -> u64 {
        (0..u32::from(max_snoozes))
            .map(|n| Self::backoff(recheck_ms, n))
            .fold(0u64, u64::saturating_add)
    }

    /// Delay before re-check number `n + 1` (0-based): doubling, capped at
    /// a day.
    pub(crate) fn backoff_ms(&self, n: u32) -> u64 {
        Self::backoff(self.recheck_ms, n)
    }

    fn backoff(recheck_ms: u64, n: u32) -> u64 {
        recheck_ms.saturating_mul(1u64 << n.min(40)).min(86_400_000)
    }
}

/// Opens the report file and writes to it now, so a path that opens but
/// cannot take bytes (a full disk, `/dev/full`) is refused before the sale,
/// not after it. A regular file is emptied again for the report.
fn open_report(path: &Path) -> std::io::Result<File> {
    use std::io::{Seek, Write};
    let mut file = File::create(path)?;
    file.write_all(b"<!-- duewheel simulate: the report follows when the run ends -->\n")?;
    file.flush()?;
    if file.metadata()?.is_file() {
        file.set_len(0)?;
        file.rewind()?;
    }
    Ok(file)
}

/// Makes `dir` ready for a fresh log: created if missing, refused if it
/// holds anything (a log of an earlier run would be replayed into a sale
/// that never placed those orders) or cannot be written.
fn prepare_dir(dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "--durable {shown} is not empty (a log from an earlier run?): the \
                     simulation starts from an empty log; remove it or name a new directory"
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create the --durable directory {shown}: {e}"))?;
        }
        Err(e) => return Err(format!("cannot use --durable {shown}: {e}")),
    }
    // The engine's first file: find out now, not after drawing the sale.
    let probe = dir.join(".duewheel-probe");
    File::create(&probe)
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|e| format!("cannot write in the --durable directory {shown}: {e}"))
}

/// `I@T`: node `I` (1-based) at sale time `T`.
fn parse_kill(s: &str) -> Result<KillAt, String> {
    let bad = || format!("expected NODE@TIME with NODE from 1, e.g. 1@5m or 2@90s, got {s:?}");
    let (node, at) = s.split_once('@').ok_or_else(bad)?;
    let node: u32 = node.trim().parse().map_err(|_| bad())?;
    if node == 0 {
        return Err(bad());
    }
    let at = parse_duration(at)?;
    let at_ms = u64::try_from(at.as_millis()).map_err(|_| bad())?;
    if at_ms == 0 {
        return Err(format!(
            "the kill time must be after the opening, got {s:?}"
        ));
    }
    Ok(KillAt { node, at_ms })
}

/// `I@T[+D]`: node `I` (1-based) at sale time `T`, for sale time `D`.
fn parse_pause(s: &str) -> Result<PauseAt, String> {
    let bad = || {
        format!("expected NODE@TIME[+DURATION] with NODE from 1, e.g. 2@35m or 2@35m+6m, got {s:?}")
    };
    let (at, for_ms) = match s.split_once('+') {
        None => (s, None),
        Some((at, d)) => {
            let d = parse_duration(d).map_err(|e| format!("{e}; {}", bad()))?;
            let d_ms = u64::try_from(d.as_millis()).map_err(|_| bad())?;
            if d_ms == 0 {
                return Err(format!("the pause must last more than 0, got {s:?}"));
            }
            (at, Some(d_ms))
        }
    };
    let kill = parse_kill(at).map_err(|e| e.replace("NODE@TIME", "NODE@TIME[+DURATION]"))?;
    Ok(PauseAt {
        node: kill.node,
        at_ms: kill.at_ms,
        for_ms,
    })
}

/// `always` or `every-ms:N`.
fn parse_sync(s: &str) -> Result<SyncPolicy, String> {
    if s == "always" {
        return Ok(SyncPolicy::Always);
    }
    let bad = || format!("expected `always` or `every-ms:N` (1 <= N <= 60000), got {s:?}");
    let n: u64 = s
        .strip_prefix("every-ms:")
        .ok_or_else(bad)?
        .parse()
        .map_err(|_| bad())?;
    if (1..=60_000).contains(&n) {
        Ok(SyncPolicy::EveryMs(n))
    } else {
        Err(bad())
    }
}

/// A count of at least 1; `_` and `,` may group digits.
fn parse_count(s: &str) -> Result<u64, String> {
    match parse_amount(s)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// A non-negative whole number; `_` and `,` may group digits.
fn parse_amount(s: &str) -> Result<u64, String> {
    let digits: String = s.chars().filter(|c| !matches!(c, '_' | ',')).collect();
    digits
        .parse()
        .map_err(|_| format!("expected a whole number, got {s:?}"))
}

/// A share between 0 and 1.
fn parse_ratio(s: &str) -> Result<f64, String> {
    let value: f64 = s
        .parse()
        .map_err(|_| format!("expected a number between 0 and 1, got {s:?}"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be between 0 and 1 (a share), got {value}"))
    }
}

/// Simulated seconds per real second.
fn parse_speed(s: &str) -> Result<f64, String> {
    let value: f64 = s
        .parse()
        .map_err(|_| format!("expected a number, got {s:?}"))?;
    if value.is_finite() && (0.001..=100_000.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be between 0.001 and 100000, got {s}"))
    }
}

/// A duration such as `250ms`, `30s`, `5m`, `1h`, `1m30s` or `1.5s`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration such as 250ms, 30s, 5m or 1h, got {s:?}");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" | "min" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(bad());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mut part_ns = whole.checked_mul(unit_ns).ok_or_else(bad)?;
        let mut scale = unit_ns;
        for digit in fraction.chars() {
            scale /= 10;
            part_ns += u128::from(digit.to_digit(10).ok_or_else(bad)?) * scale;
        }
        total_ns = total_ns.checked_add(part_ns).ok_or_else(bad)?;
        rest = tail;
    }
    let secs = u64::try_from(total_ns / 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, (total_ns % 1_000_000_000) as u32))
}

/// `MIN..MAX`, two durations.
fn parse_range(s: &str) -> Result<(Duration, Duration), String> {
    let (min, max) = s
        .split_once("..")
        .ok_or_else(|| format!("expected MIN..MAX, e.g. 10s..6m, got {s:?}"))?;
    Ok((parse_duration(min)?, parse_duration(max)?))
}

/// A duration as people write it: `90s` as `1m30s`, `100ms`.
pub(crate) fn show(d: Duration) -> String {
    show_ms(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds as people write them: `1h05m`, `10m`, `1m30s`, `2.5s`, `100ms`.
pub(crate) fn show_ms(ms: u64) -> String {
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        return if ms.is_multiple_of(1_000) {
            format!("{}s", ms / 1_000)
        } else {
            format!("{:.1}s", ms as f64 / 1e3)
        };
    }
    let s = ms / 1_000;
    let (h, m, s) = (s / 3_600, s / 60 % 60, s % 60);
    match (h, s) {
        (0, 0) => format!("{m}m"),
        (0, _) => format!("{m}m{s:02}s"),
        (_, 0) => format!("{h}h{m:02}m"),
        _ => format!("{h}h{m:02}m{s:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_combine() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert!(parse_duration("30").is_err(), "a bare number has no unit");
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration(".s").is_err());
    }

    #[test]
    fn ratios_outside_zero_to_one_are_refused() {
        assert_eq!(parse_ratio("0.7"), Ok(0.7));
        assert!(parse_ratio("1.5").unwrap_err().contains("between 0 and 1"));
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("NaN").is_err());
    }

    #[test]
    fn counts_start_at_one_and_may_be_grouped() {
        assert_eq!(parse_count("1_000_000"), Ok(1_000_000));
        assert!(parse_count("0").unwrap_err().contains("at least 1"));
    }

    #[test]
    fn kills_name_a_node_from_one_and_a_moment() {
        assert_eq!(
            parse_kill("2@90s"),
            Ok(KillAt {
                node: 2,
                at_ms: 90_000
            })
        );
        assert!(parse_kill("0@5m").is_err());
        assert!(parse_kill("1").is_err());
        assert!(parse_kill("1@").is_err());
        assert!(parse_kill("1@0s").is_err());
        assert!(parse_kill("x@5m").is_err());
    }

    #[test]
    fn pauses_name_a_node_a_moment_and_maybe_a_length() {
        assert_eq!(
            parse_pause("2@35m"),
            Ok(PauseAt {
                node: 2,
                at_ms: 35 * 60_000,
                for_ms: None
            })
        );
        assert_eq!(
            parse_pause("1@90s+6m"),
            Ok(PauseAt {
                node: 1,
                at_ms: 90_000,
                for_ms: Some(6 * 60_000)
            })
        );
        assert!(parse_pause("1@90s+").is_err());
        assert!(parse_pause("1@90s+0s").is_err());
        assert!(parse_pause("0@5m").is_err());
        assert!(parse_pause("1@0s+5s").is_err());
    }

    #[test]
    fn durations_print_as_people_write_them() {
        assert_eq!(show_ms(100), "100ms");
        assert_eq!(show_ms(90_000), "1m30s");
        assert_eq!(show_ms(600_000), "10m");
        assert_eq!(show_ms(3_900_000), "1h05m");
    }
}
