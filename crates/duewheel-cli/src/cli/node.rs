//! `duewheel node`: one cluster node as a process, driven over stdin and
//! stdout (the protocol drivers such as `simulate --cluster` and the
//! process tests speak; see `docs/SCALE_OUT.md`).
//!
//! The lines, both ways, are `duewheel_testkit::protocol`'s types: stdin
//! one [`Command`] per line (EOF is `quit`), stdout one [`Line`] per answer
//! or event.
//!
//! Invariant: an `ev` line is written and flushed before its delivery is
//! acknowledged, so every acked delivery is on stdout even if the process
//! is killed right after (a pipe keeps what was written).

#[path = "node_orders.rs"]
mod orders;

use clap::Args as ClapArgs;
use crossbeam_channel::{Receiver, Sender};
use duewheel::{Cancel, CancelError, Clock, Deadline, ScheduleError};
use duewheel_cluster::{NodeConfig, NodeScheduler, NodeStats, StoreConfig};
use duewheel_testkit::protocol::{Command, Ev, Line};
use parking_lot::Mutex;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Run one cluster node on a shared PostgreSQL database.
#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    /// PostgreSQL connection string, e.g. "host=/run/pg port=5432 user=duewheel".
    #[arg(long)]
    pg: String,
    /// This node's name, unique in the cluster.
    #[arg(long)]
    node_id: String,
    /// PostgreSQL schema holding the tables.
    #[arg(long, default_value = "duewheel")]
    schema: String,
    /// Logical shards (fixed when the schema is created).
    #[arg(long, default_value_t = 1024)]
    shards: u32,
    /// Lease length, ms (database clock).
    #[arg(long, default_value_t = 10_000)]
    lease_ttl_ms: u64,
    /// Lease renewal interval, ms.
    #[arg(long, default_value_t = 2_500)]
    renew_ms: u64,
    /// How long past expiry another node's lease is left alone, ms.
    #[arg(long, default_value_t = 1_000)]
    grace_ms: u64,
    /// How far ahead the wheel holds rows, ms.
    #[arg(long, default_value_t = 300_000)]
    horizon_ms: u64,
    /// How often the horizon moves, ms.
    #[arg(long, default_value_t = 1_000)]
    page_ms: u64,
    /// How often the table is swept for due rows the wheel lacks, ms.
    #[arg(long, default_value_t = 250)]
    sweep_ms: u64,
    /// Most rows per commit.
    #[arg(long, default_value_t = 1_000)]
    batch_rows: usize,
    /// Longest wait for a commit to fill, µs.
    #[arg(long, default_value_t = 2_000)]
    batch_wait_us: u64,
    /// Writer connections.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Redeliver an unacked event after this long, ms.
    #[arg(long, default_value_t = 30_000)]
    ack_timeout_ms: u64,
    /// How long a call retries a broken connection, ms.
    #[arg(long, default_value_t = 5_000)]
    op_timeout_ms: u64,
    /// Fast-forwarded clock: wall time (UTC ms) at which it agrees with the
    /// wall clock. Nodes given the same origin and speed agree.
    #[arg(long, requires = "clock_speed")]
    clock_origin_ms: Option<u64>,
    /// Fast-forwarded clock: how many times faster than the wall clock.
    #[arg(long, requires = "clock_origin_ms")]
    clock_speed: Option<f64>,
    #[command(flatten)]
    orders: orders::Args,
}

/// Why the node could not run: exit 2 (configuration) or 3 (database).
pub(crate) enum Error {
    Usage(String),
    Database(String),
}

/// Wall time sped up `speed` times from `origin_ms` (where it equals the
/// wall clock): every process given the same two numbers reads the same
/// time. Monotonic: derived from one `Instant`.
struct SharedScaledClock {
    start: Instant,
    start_ms: f64,
    speed: f64,
}

impl SharedScaledClock {
    fn new(origin_ms: u64, speed: f64) -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let origin = origin_ms as f64;
        Self {
            start: Instant::now(),
            start_ms: origin + (wall - origin) * speed,
            speed,
        }
    }
}

impl Clock for SharedScaledClock {
    fn now_ms(&self) -> u64 {
        (self.start_ms + self.start.elapsed().as_secs_f64() * 1e3 * self.speed) as u64
    }

    fn time_until(&self, until_ms: u64) -> Option<Duration> {
        let ahead_ms = (until_ms as f64 - self.now_ms() as f64).max(0.0);
        Some(Duration::from_secs_f64(ahead_ms / 1e3 / self.speed))
    }
}

type Out = Arc<Mutex<BufWriter<std::io::Stdout>>>;

/// Appends `line` and its newline to `buf`.
fn push(buf: &mut String, line: &Line) {
    let _ = writeln!(buf, "{line}");
}

fn write_line(out: &Out, line: &Line) {
    write_lines(out, &format!("{line}\n"));
}

fn write_lines(out: &Out, lines: &str) {
    let mut out = out.lock();
    // A closed stdout (the driver went away) leaves nothing to tell.
    let _ = out.write_all(lines.as_bytes());
    let _ = out.flush();
}

pub(crate) fn run(args: Args) -> Result<(), Error> {
    let usage = |m: &str| Error::Usage(m.to_owned());
    let ms = Duration::from_millis;
    let store = StoreConfig::new(args.pg.clone())
        .schema(args.schema.clone())
        .shards(args.shards);
    let mut config = NodeConfig::new(store, args.node_id.clone())
        .lease_ttl(ms(args.lease_ttl_ms))
        .renew_every(ms(args.renew_ms))
        .grace(ms(args.grace_ms))
        .horizon(ms(args.horizon_ms))
        .page_every(ms(args.page_ms))
        .sweep_every(ms(args.sweep_ms))
        .batch_rows(args.batch_rows)
        .batch_wait(Duration::from_micros(args.batch_wait_us))
        .writers(args.writers)
        .ack_timeout(ms(args.ack_timeout_ms))
        .op_timeout(ms(args.op_timeout_ms))
        .group("out");
    if let (Some(origin), Some(speed)) = (args.clock_origin_ms, args.clock_speed) {
        if !(speed.is_finite() && speed > 0.0 && speed <= 1e6) {
            return Err(usage("--clock-speed must be a number in (0, 1000000]"));
        }
        config = config.clock(SharedScaledClock::new(origin, speed));
    }
    let node = config.start::<String>().map_err(|e| {
        if e.is_database() {
            Error::Database(e.to_string())
        } else {
            Error::Usage(e.to_string())
        }
    })?;
    let out: Out = Arc::new(Mutex::new(BufWriter::new(std::io::stdout())));
    if args.orders.orders {
        return orders::run(node, &args, &out);
    }
    write_line(&out, &Line::Ready(args.node_id.clone()));

    let scheduler = node.scheduler();
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let mut events = node
            .subscribe("out")
            .map_err(|e| Error::Usage(e.to_string()))?;
        let (out, stop, scheduler) = (out.clone(), stop.clone(), scheduler.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(first) = events.recv_timeout(Duration::from_millis(100)) else {
                    continue;
                };
                let mut batch = vec![first];
                batch.extend(events.drain_ready());
                let mut lines = String::new();
                for e in &batch {
                    let ev = Ev {
                        id: e.id,
                        attempt: e.attempt,
                        fired_at_ms: e.fired_at_ms,
                        deadline_ms: e.deadline_ms,
                        epoch: scheduler.claim_epoch(e.id).unwrap_or(0),
                        payload: e.payload.clone(),
                    };
                    push(&mut lines, &Line::Ev(ev));
                }
                // Written and flushed before the acks (see the module doc).
                write_lines(&out, &lines);
                for e in &batch {
                    let _ = events.ack(e);
                }
            }
        })
    };

    let (work_tx, work_rx) = crossbeam_channel::bounded::<Work>(64);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (rx, s, out) = (work_rx.clone(), scheduler.clone(), out.clone());
            std::thread::spawn(move || worker(&rx, &s, &out))
        })
        .collect();
    read_commands(&node, &work_tx, &out);
    drop(work_tx);
    for w in workers {
        let _ = w.join();
    }
    stop.store(true, Ordering::SeqCst);
    let _ = consumer.join();
    node.shutdown();
    Ok(())
}

enum Work {
    Schedule(Vec<(u64, u64, String)>),
    Cancel(Vec<u64>),
}

/// Reads commands until `quit` or EOF; batches consecutive ones that are
/// already buffered.
fn read_commands(node: &duewheel_cluster::Node<String>, work: &Sender<Work>, out: &Out) {
    let mut input = BufReader::with_capacity(1 << 16, std::io::stdin());
    let mut schedules = Vec::new();
    let mut cancels = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        let eof = !matches!(input.read_line(&mut line), Ok(n) if n > 0);
        if !eof && !line.trim().is_empty() {
            match line.parse::<Command>() {
                Ok(Command::Schedule {
                    id,
                    deadline_ms,
                    payload,
                }) => schedules.push((id, deadline_ms, payload)),
                Ok(Command::Cancel { id }) => cancels.push(id),
                Ok(Command::Stats) => write_line(out, &stats_line(&node.stats())),
                Ok(Command::Quit) => break,
                Ok(c @ (Command::Order { .. } | Command::Pay { .. })) => {
                    orders::refuse(out, &c);
                }
                Err(e) => {
                    let id = Command::id_of(&line);
                    let (kind, message) = ("invalid".to_string(), Line::one_line(&e.0));
                    write_line(
                        out,
                        &if line.trim_start().starts_with("c ") {
                            Line::Cerr { id, kind, message }
                        } else {
                            Line::Err { id, kind, message }
                        },
                    );
                }
            }
        }
        // Hand over what is gathered once nothing more is buffered.
        let idle = input.buffer().is_empty();
        if (idle || schedules.len() >= 1000) && !schedules.is_empty() {
            let _ = work.send(Work::Schedule(std::mem::take(&mut schedules)));
        }
        if (idle || cancels.len() >= 1000) && !cancels.is_empty() {
            let _ = work.send(Work::Cancel(std::mem::take(&mut cancels)));
        }
        if eof {
            break;
        }
    }
    if !schedules.is_empty() {
        let _ = work.send(Work::Schedule(schedules));
    }
    if !cancels.is_empty() {
        let _ = work.send(Work::Cancel(cancels));
    }
}

fn worker(rx: &Receiver<Work>, scheduler: &NodeScheduler<String>, out: &Out) {
    for work in rx {
        let mut lines = String::new();
        match work {
            Work::Schedule(timers) => {
                let ids: Vec<u64> = timers.iter().map(|t| t.0).collect();
                let timers = timers
                    .into_iter()
                    .map(|(id, at, p)| (id, Deadline::at_unix_ms(at), p));
                for (&id, result) in ids.iter().zip(scheduler.schedule_batch(timers)) {
                    push(
                        &mut lines,
                        &match result {
                            Ok(()) => Line::Ok(id),
                            Err(e) => {
                                let kind = match &e {
                                    ScheduleError::AlreadyScheduled(_) => "duplicate",
                                    ScheduleError::Invalid { .. } => "invalid",
                                    ScheduleError::Unavailable { .. } => "unavailable",
                                    ScheduleError::InDoubt(_) => "indoubt",
                                    ScheduleError::ShuttingDown(_) => "shutdown",
                                    // The engine's own refusals; a node
                                    // does not answer them.
                                    _ => "other",
                                };
                                Line::Err {
                                    id: Some(id),
                                    kind: kind.into(),
                                    message: Line::one_line(&e.to_string()),
                                }
                            }
                        },
                    );
                }
            }
            Work::Cancel(ids) => {
                for (&id, result) in ids.iter().zip(scheduler.cancel_batch(ids.iter().copied())) {
                    push(
                        &mut lines,
                        &match result {
                            Ok(Cancel::Cancelled(_)) => Line::Cancelled(id),
                            Ok(Cancel::AlreadyFired) => Line::Fired(id),
                            Ok(Cancel::NotFound) => Line::NotFound(id),
                            Err(e) => {
                                let kind = match &e {
                                    CancelError::Unavailable(_) => "unavailable",
                                    CancelError::InDoubt => "indoubt",
                                    CancelError::ShuttingDown => "shutdown",
                                    CancelError::Corrupt(_) => "corrupt",
                                    _ => "other",
                                };
                                Line::Cerr {
                                    id: Some(id),
                                    kind: kind.into(),
                                    message: Line::one_line(&e.to_string()),
                                }
                            }
                        },
                    );
                }
            }
        }
        write_lines(out, &lines);
    }
}

fn stats_line(s: &NodeStats) -> Line {
    let kv = [
        ("owned", s.owned as u64),
        ("pending", s.pending as u64),
        ("scheduled", s.scheduled),
        ("cancelled", s.cancelled),
        ("claimed", s.claimed),
        ("redelivered", s.redelivered),
        ("acked", s.acked),
        ("fenced", s.fenced),
        ("lost", s.lost),
        ("acquired", s.acquired),
        ("released", s.released),
        ("loaded", s.loaded),
        ("swept", s.swept),
        ("notified", s.notified),
        ("db_errors", s.db_errors),
        ("overdue", s.overdue),
    ];
    Line::Stats(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}
