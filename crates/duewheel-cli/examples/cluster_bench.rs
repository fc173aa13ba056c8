//! The cluster benchmark: `duewheel node` processes on a real PostgreSQL.
//!
//! ```text
//! eval "$(scripts/pg-up.sh)"                    # or any DUEWHEEL_PG_DSN
//! cargo build --release -p duewheel-cli         # the node binary
//! cargo run --release -p duewheel-cli --example cluster_bench
//! ```
//!
//! Measures, and prints as a markdown table with the machine's core count
//! and load average (no assertions: the numbers follow the machine):
//!
//! - acked schedules/s through 1 and through 3 nodes: pipelined
//!   `s <id> <deadline> <payload>` lines (deadlines a day ahead, 64-byte
//!   payloads), each node fed as fast as it acks, at most `WINDOW` in
//!   flight, counting `ok` answers from the first line written to the last
//!   `ok` read;
//! - cancels/s through 1 and 3 nodes: `c <id>` for those same timers, each
//!   through a node that is usually not the owner;
//! - fires/s: timers all due at one moment shortly ahead, scheduled through
//!   3 nodes, and the rate of `ev` lines from the first to the last;
//! - takeover of one shard holding 1M pending timers (the library fills it
//!   with `PgStore::insert_unfenced`, 10k rows a statement): from a node's
//!   process start until its `stats` shows `owned=1` and all of them in its
//!   wheel; then a second node takes over after the first is killed with
//!   SIGKILL, timed from the lease's expiry (`lease_expires_at` in the
//!   `shards` table) to its `stats` showing all of them.
//!
//! Environment: `DUEWHEEL_PG_DSN` (required), `DUEWHEEL_BIN` (default
//! `target/release/duewheel`), `BENCH_TIMERS` (default 200000),
//! `BENCH_TAKEOVER_ROWS` (default 1000000). Each measurement works in a
//! schema of its own, dropped at the end; every node is killed on the way
//! out, error or not.

#[path = "cluster_bench/tx.rs"]
mod tx;

use duewheel_cluster::{NewTimer, StoreConfig};
use duewheel_testkit::process::{NodeProcess, Stderr};
use duewheel_testkit::protocol::{Command, Line};
use postgres::{Client, NoTls};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Lines in flight per node: enough to keep its commits full (1000 rows
/// each, two writers), bounded so the pipe and the node's queue stay small.
const WINDOW: u64 = 20_000;

/// Logical shards of the throughput runs.
const SHARDS: u32 = 256;

/// Short leases, so the takeover measurement is about loading, not waiting.
const LEASE_ARGS: [&str; 8] = [
    "--lease-ttl-ms",
    "3000",
    "--renew-ms",
    "750",
    "--grace-ms",
    "0",
    "--sweep-ms",
    "100",
];

type Result<T, E = String> = std::result::Result<T, E>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn env_count(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v
            .replace('_', "")
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{name}={v:?}: expected a positive whole number")),
    }
}

fn run() -> Result<()> {
    let dsn = std::env::var("DUEWHEEL_PG_DSN")
        .ok()
        .filter(|d| !d.trim().is_empty())
        .ok_or("DUEWHEEL_PG_DSN is not set (`eval \"$(scripts/pg-up.sh)\"` starts a server)")?;
    let bin = PathBuf::from(
        std::env::var("DUEWHEEL_BIN").unwrap_or_else(|_| "target/release/duewheel".into()),
    );
    if !bin.is_file() {
        return Err(format!(
            "{} not found: `cargo build --release -p duewheel-cli` first, or set DUEWHEEL_BIN",
            bin.display()
        ));
    }
    let timers = env_count("BENCH_TIMERS", 200_000)?;
    let takeover_rows = env_count("BENCH_TAKEOVER_ROWS", 1_000_000)?;
    let bench = Bench { dsn, bin };
    let load_before = loadavg();
    let mut rows = Vec::new();
    if std::env::var_os("BENCH_TX_ONLY").is_some() {
        let n = env_count("BENCH_TX_TIMERS", timers)?;
        rows.extend(tx::rows(&bench, n)?);
        println!(
            "\ncluster_bench (tx only): load average {load_before} before, {} after; {SHARDS} shards\n",
            loadavg()
        );
        for r in rows {
            println!(
                "| {} | {} | {} | {:.2} s | {} | {} |",
                r.what,
                r.nodes,
                r.count,
                r.time_s,
                r.rate.map_or("–".into(), |x| format!("{x:.0}")),
                r.note
            );
        }
        return Ok(());
    }

    let mut schedules_per_s = 0.0;
    for nodes in [1, 3] {
        eprintln!("schedules and cancels through {nodes} node(s)...");
        let (sched, cancel) = bench.schedule_and_cancel(nodes, timers)?;
        schedules_per_s = sched.count as f64 / sched.secs;
        rows.push(Row::rate("acked schedules", nodes, &sched));
        rows.push(Row::rate("cancels (`cancelled`)", nodes, &cancel));
    }
    eprintln!("fires through 3 nodes...");
    let fires = bench.fires(3, timers, schedules_per_s)?;
    rows.push(Row::rate("fires (`ev` lines)", 3, &fires.rate));
    rows.push(Row {
        what: "fires: the due moment to the last `ev`".into(),
        nodes: 3,
        count: fires.rate.count,
        time_s: fires.due_to_last_s,
        rate: None,
        note: format!(
            "first `ev` {:.0} ms after the due moment",
            fires.due_to_first_s * 1e3
        ),
    });
    eprintln!("takeover of one shard with {takeover_rows} timers...");
    let t = bench.takeover(takeover_rows)?;
    rows.push(Row {
        what: "fill one shard (`insert_unfenced`, 10k/statement)".into(),
        nodes: 0,
        count: takeover_rows,
        time_s: t.fill_s,
        rate: Some(takeover_rows as f64 / t.fill_s),
        note: "64-byte payloads, deadlines over the next hour".into(),
    });
    rows.push(Row {
        what: "node start → owned=1, all in its wheel".into(),
        nodes: 1,
        count: takeover_rows,
        time_s: t.start_to_loaded_s,
        rate: None,
        note: format!("`ready` after {:.0} ms", t.start_to_ready_s * 1e3),
    });
    rows.push(Row {
        what: "takeover: lease expiry → survivor has all in its wheel".into(),
        nodes: 2,
        count: takeover_rows,
        time_s: t.expiry_to_loaded_s,
        rate: None,
        note: format!(
            "acquired {:.0} ms after expiry; {:.0} ms after the SIGKILL (3 s lease, \
             renewed every 750 ms; target ≤ 2 s after expiry)",
            t.expiry_to_acquired_s * 1e3,
            t.kill_to_loaded_s * 1e3
        ),
    });
    rows.extend(tx::rows(&bench, timers)?);
    let load_after = loadavg();

    println!(
        "\ncluster_bench: {} cores (nproc), load average {load_before} before, {load_after} \
         after; {SHARDS} shards for the rates, {timers} timers each\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| measurement | nodes | timers | time | rate/s | note |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.2} s | {} | {} |",
            r.what,
            if r.nodes == 0 {
                "–".to_string()
            } else {
                r.nodes.to_string()
            },
            r.count,
            r.time_s,
            r.rate.map_or("–".into(), |x| format!("{x:.0}")),
            r.note
        );
    }
    Ok(())
}

/// `/proc/loadavg`'s three averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The 64-byte payload of timer `id`.
fn payload(id: u64) -> String {
    format!("{id:0>64}")
}

/// The `s` line scheduling `id` at `deadline_ms`.
fn schedule(id: u64, deadline_ms: u64) -> String {
    let payload = payload(id);
    Command::Schedule {
        id,
        deadline_ms,
        payload,
    }
    .to_string()
}

struct Row {
    what: String,
    nodes: u32,
    count: u64,
    time_s: f64,
    rate: Option<f64>,
    note: String,
}

impl Row {
    fn rate(what: &str, nodes: u32, m: &Measured) -> Row {
        Row {
            what: what.into(),
            nodes,
            count: m.count,
            time_s: m.secs,
            rate: Some(m.count as f64 / m.secs.max(1e-9)),
            note: if m.failed > 0 {
                format!("{} other answers, e.g. {:?}", m.failed, m.example)
            } else {
                String::new()
            },
        }
    }
}

/// A count over a span of real time.
struct Measured {
    count: u64,
    secs: f64,
    /// Answers other than the one counted.
    failed: u64,
    example: String,
}

struct Fires {
    rate: Measured,
    due_to_first_s: f64,
    due_to_last_s: f64,
}

struct Takeover {
    fill_s: f64,
    start_to_ready_s: f64,
    start_to_loaded_s: f64,
    expiry_to_loaded_s: f64,
    kill_to_loaded_s: f64,
    expiry_to_acquired_s: f64,
}

struct Bench {
    dsn: String,
    bin: PathBuf,
}

impl Bench {
    fn schema(&self, what: &str) -> Result<Schema> {
        let name = format!("bench_{what}_{}_{}", std::process::id(), wall_ms());
        let mut client = Client::connect(&self.dsn, NoTls)
            .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
        client
            .batch_execute("SELECT 1")
            .map_err(|e| format!("PostgreSQL: {e}"))?;
        Ok(Schema { client, name })
    }

    fn start(&self, schema: &str, name: &str, extra: &[&str]) -> Result<Node> {
        Node::start(&self.bin, &self.dsn, schema, name, extra)
    }

    /// Nodes on a fresh schema, ready and balanced.
    fn cluster(&self, schema: &mut Schema, n: u32) -> Result<Cluster> {
        let shards = SHARDS.to_string();
        let mut nodes = Cluster(Vec::new());
        for k in 1..=n {
            let name = format!("bench-{k}");
            let mut extra = vec!["--shards", shards.as_str()];
            extra.extend(LEASE_ARGS);
            nodes.0.push(self.start(&schema.name, &name, &extra)?);
        }
        for node in &nodes.0 {
            node.await_ready(Duration::from_secs(30))?;
        }
        schema.await_balance(n, SHARDS, Duration::from_secs(30))?;
        Ok(nodes)
    }

    fn schedule_and_cancel(&self, n: u32, timers: u64) -> Result<(Measured, Measured)> {
        let mut schema = self.schema("rate")?;
        let nodes = self.cluster(&mut schema, n)?;
        let deadline_ms = wall_ms() + 86_400_000;
        let ids: Vec<u64> = (1..=timers).collect();
        let sched = nodes.feed(&ids, 0, |id| schedule(id, deadline_ms), Counter::Ok)?;
        // Cancel each through the next node, not the one that scheduled it
        // (the owner is the shard's, by hash: a third of the time either).
        let cancel = nodes.feed(
            &ids,
            1,
            |id| Command::Cancel { id }.to_string(),
            Counter::Cancelled,
        )?;
        nodes.quit();
        schema.drop_now();
        Ok((sched, cancel))
    }

    /// `schedules_per_s`: the rate measured before, to choose how far
    /// ahead the timers are due (half as much again as scheduling should
    /// take, plus 2 s).
    fn fires(&self, n: u32, timers: u64, schedules_per_s: f64) -> Result<Fires> {
        let mut schema = self.schema("fire")?;
        let nodes = self.cluster(&mut schema, n)?;
        let ahead_ms = (timers as f64 / schedules_per_s.max(1_000.0) * 1.5e3) as u64 + 2_000;
        let due_ms = wall_ms() + ahead_ms;
        let ids: Vec<u64> = (1..=timers).collect();
        let sched = nodes.feed(&ids, 0, |id| schedule(id, due_ms), Counter::Ok)?;
        if wall_ms() > due_ms {
            eprintln!("note: the schedules finished after the due moment; fires overlap them");
        }
        let until = Instant::now() + Duration::from_millis(ahead_ms) + Duration::from_secs(120);
        let evs = || {
            nodes
                .0
                .iter()
                .map(|n| n.counts.ev.load(Relaxed))
                .sum::<u64>()
        };
        while evs() < sched.count && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let first = nodes.0.iter().map(|n| n.counts.first_ev_ms.load(Relaxed));
        let first_ms = first.filter(|&t| t > 0).min().unwrap_or(0);
        let last_ms = nodes
            .0
            .iter()
            .map(|n| n.counts.last_ev_ms.load(Relaxed))
            .max()
            .unwrap_or(0);
        let count = evs();
        if count < sched.count {
            eprintln!(
                "note: only {count} of {} timers fired within 2 minutes",
                sched.count
            );
        }
        nodes.quit();
        schema.drop_now();
        Ok(Fires {
            rate: Measured {
                count,
                secs: last_ms.saturating_sub(first_ms) as f64 / 1e3,
                failed: 0,
                example: String::new(),
            },
            due_to_first_s: first_ms.saturating_sub(due_ms) as f64 / 1e3,
            due_to_last_s: last_ms.saturating_sub(due_ms) as f64 / 1e3,
        })
    }

    fn takeover(&self, rows: u64) -> Result<Takeover> {
        let mut schema = self.schema("takeover")?;
        let mut store = StoreConfig::new(&self.dsn)
            .schema(&schema.name)
            .shards(1)
            .open()
            .map_err(|e| format!("cannot open the store: {e}"))?;
        let fill = Instant::now();
        let start_ms = wall_ms() + 120_000;
        let span_ms = 3_600_000 - 120_000;
        let mut next = 1u64;
        while next <= rows {
            let end = (next + 10_000).min(rows + 1);
            let payloads: Vec<String> = (next..end).map(payload).collect();
            let batch: Vec<NewTimer<'_>> = (next..end)
                .zip(&payloads)
                .map(|(id, p)| NewTimer {
                    id,
                    deadline_ms: start_ms + id * span_ms / rows,
                    payload: p.as_bytes(),
                })
                .collect();
            store
                .insert_unfenced(0, &batch)
                .map_err(|e| format!("insert_unfenced: {e}"))?;
            next = end;
        }
        drop(store);
        let fill_s = fill.elapsed().as_secs_f64();

        let mut extra = vec!["--shards", "1", "--horizon-ms", "3600000"];
        extra.extend(LEASE_ARGS);
        let started = Instant::now();
        let mut nodes = Cluster(vec![self.start(&schema.name, "first", &extra)?]);
        nodes.0[0].await_ready(Duration::from_secs(30))?;
        let start_to_ready_s = started.elapsed().as_secs_f64();
        nodes.0[0].await_loaded(rows, Duration::from_secs(300))?;
        let start_to_loaded_s = started.elapsed().as_secs_f64();

        nodes.0.push(self.start(&schema.name, "second", &extra)?);
        nodes.0[1].await_ready(Duration::from_secs(30))?;
        // Let the newcomer settle (balancing with one shard may move it;
        // the measurement needs the first node to hold it when killed).
        std::thread::sleep(Duration::from_millis(1_500));
        // Kill whichever holds the shard now; the other must take it over.
        let until = Instant::now() + Duration::from_secs(10);
        let victim = loop {
            match schema.owner_of_shard0()?.0.as_deref() {
                Some("first") => break 0,
                Some("second") => break 1,
                other if Instant::now() > until => {
                    return Err(format!("shard 0 has no steady owner: {other:?}"));
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let survivor = 1 - victim;
        nodes.0[victim].kill();
        let killed_ms = wall_ms();
        let (_, expires_ms) = schema.owner_of_shard0()?;
        // When the survivor's acquire committed (polled), then its load.
        let until = Instant::now() + Duration::from_secs(60);
        let acquired_ms = loop {
            if schema.owner_of_shard0()?.0.as_deref() == Some(nodes.0[survivor].name.as_str()) {
                break wall_ms();
            }
            if Instant::now() > until {
                return Err("the survivor did not take the shard within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let done_ms = {
            nodes.0[survivor].await_loaded(rows, Duration::from_secs(300))?;
            wall_ms()
        };
        nodes.quit();
        schema.drop_now();
        Ok(Takeover {
            fill_s,
            start_to_ready_s,
            start_to_loaded_s,
            expiry_to_loaded_s: (done_ms as f64 - expires_ms) / 1e3,
            expiry_to_acquired_s: (acquired_ms as f64 - expires_ms) / 1e3,
            kill_to_loaded_s: done_ms.saturating_sub(killed_ms) as f64 / 1e3,
        })
    }
}

/// A schema of the benchmark's own, dropped at the end.
struct Schema {
    client: Client,
    name: String,
}

impl Schema {
    /// Waits until all `shards` are owned, by `n` nodes (the nodes aim at
    /// `ceil(shards / n)` each, so the last one may hold a few less).
    fn await_balance(&mut self, n: u32, shards: u32, timeout: Duration) -> Result<()> {
        let until = Instant::now() + timeout;
        let sql = format!(
            "SELECT owner, count(*) FROM \"{}\".shards WHERE lease_expires_at > now() \
             GROUP BY owner",
            self.name
        );
        loop {
            let rows = self.client.query(&sql, &[]).map_err(|e| e.to_string())?;
            let counts: Vec<(Option<String>, i64)> = rows
                .iter()
                .map(|r| (r.get::<_, Option<String>>(0), r.get::<_, i64>(1)))
                .collect();
            let owned: i64 = counts.iter().filter(|c| c.0.is_some()).map(|c| c.1).sum();
            let balanced = counts.iter().filter(|c| c.0.is_some()).count() == n as usize;
            if owned == i64::from(shards) && balanced {
                return Ok(());
            }
            if Instant::now() > until {
                eprintln!(
                    "note: shards not balanced after {timeout:?} ({counts:?}); measuring anyway"
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Shard 0's owner and its lease expiry (UTC ms, database clock).
    fn owner_of_shard0(&mut self) -> Result<(Option<String>, f64)> {
        let sql = format!(
            "SELECT owner, (extract(epoch FROM lease_expires_at) * 1000)::float8 \
             FROM \"{}\".shards WHERE shard_id = 0",
            self.name
        );
        let row = self
            .client
            .query_one(&sql, &[])
            .map_err(|e| e.to_string())?;
        Ok((row.get(0), row.get(1)))
    }

    fn drop_now(&mut self) {
        let sql = format!(
            "SET lock_timeout = '15s'; DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.name
        );
        if let Err(e) = self.client.batch_execute(&sql) {
            eprintln!("warning: cannot drop schema {}: {e}", self.name);
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        self.drop_now();
    }
}

/// What a node's reader counted.
#[derive(Default)]
struct Counts {
    ready: AtomicU64,
    ok: AtomicU64,
    err: AtomicU64,
    cancelled: AtomicU64,
    cancel_other: AtomicU64,
    ev: AtomicU64,
    first_ev_ms: AtomicU64,
    last_ev_ms: AtomicU64,
    /// Wall ms of the last `ok` / cancel answer.
    last_answer_ms: AtomicU64,
    example: Mutex<String>,
    /// The last `stats` line, and how many were read.
    stats: Mutex<(u64, String)>,
}

#[derive(Clone, Copy)]
enum Counter {
    Ok,
    Cancelled,
}

impl Counts {
    fn answered(&self, c: Counter) -> u64 {
        match c {
            Counter::Ok => self.ok.load(Relaxed) + self.err.load(Relaxed),
            Counter::Cancelled => self.cancelled.load(Relaxed) + self.cancel_other.load(Relaxed),
        }
    }

    fn counted(&self, c: Counter) -> u64 {
        match c {
            Counter::Ok => self.ok.load(Relaxed),
            Counter::Cancelled => self.cancelled.load(Relaxed),
        }
    }

    fn read(&self, line: &Line) {
        let now = wall_ms();
        let note = |line: &Line| {
            if let Ok(mut e) = self.example.lock()
                && e.is_empty()
            {
                *e = line.to_string();
            }
        };
        match line {
            Line::Ok(_) => {
                self.ok.fetch_add(1, Relaxed);
                self.last_answer_ms.store(now, Relaxed);
            }
            Line::Err { .. } => {
                self.err.fetch_add(1, Relaxed);
                note(line);
            }
            Line::Cancelled(_) => {
                self.cancelled.fetch_add(1, Relaxed);
                self.last_answer_ms.store(now, Relaxed);
            }
            Line::Fired(_) | Line::NotFound(_) | Line::Cerr { .. } => {
                self.cancel_other.fetch_add(1, Relaxed);
                note(line);
            }
            Line::Ev(_) => {
                if self.ev.fetch_add(1, Relaxed) == 0 {
                    self.first_ev_ms.store(now, Relaxed);
                }
                self.last_ev_ms.store(now, Relaxed);
            }
            Line::Ready(_) => {
                self.ready.store(1, Relaxed);
            }
            Line::Stats(_) => {
                if let Ok(mut s) = self.stats.lock() {
                    s.0 += 1;
                    s.1 = line.to_string();
                }
            }
            Line::Unknown(_) => note(line),
        }
    }
}

/// One `duewheel node` process (testkit's `NodeProcess`: killed and
/// reaped on drop), its answers counted as they are read.
struct Node {
    name: String,
    process: Mutex<NodeProcess>,
    counts: Arc<Counts>,
}

impl Node {
    fn start(bin: &PathBuf, dsn: &str, schema: &str, name: &str, extra: &[&str]) -> Result<Node> {
        let counts = Arc::new(Counts::default());
        let mut args: Vec<String> = ["node", "--pg", dsn, "--schema", schema]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        let reading = counts.clone();
        let process = NodeProcess::spawn(bin, &args, name, Stderr::Tail, move |line| {
            if let Some(line) = line {
                reading.read(&line);
            }
        })
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        Ok(Node {
            name: name.to_string(),
            process: Mutex::new(process),
            counts,
        })
    }

    fn process(&self) -> MutexGuard<'_, NodeProcess> {
        self.process.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stderr_tail(&self) -> String {
        self.process().stderr_tail()
    }

    fn await_ready(&self, timeout: Duration) -> Result<()> {
        let until = Instant::now() + timeout;
        while self.counts.ready.load(Relaxed) == 0 {
            if Instant::now() > until {
                return Err(format!(
                    "node {} not ready after {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn send(&self, command: &Command) -> Result<()> {
        let mut process = self.process();
        if process.send(command) && process.flush() {
            return Ok(());
        }
        Err(format!(
            "{}: its stdin is closed; stderr:\n{}",
            self.name,
            process.stderr_tail()
        ))
    }

    /// Polls `stats` until the node owns its shard and holds `rows` timers
    /// in its wheel.
    fn await_loaded(&self, rows: u64, timeout: Duration) -> Result<()> {
        let until = Instant::now() + timeout;
        let mut asked = 0;
        loop {
            let (seen, text) = self
                .counts
                .stats
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default();
            if seen == asked {
                let stats = match Line::parse(&text) {
                    Line::Stats(kv) => kv,
                    _ => Vec::new(),
                };
                let field = |k: &str| {
                    stats
                        .iter()
                        .find_map(|(name, v)| (name == k).then_some(*v))
                        .unwrap_or(0)
                };
                if field("owned") == 1 && field("pending") >= rows {
                    return Ok(());
                }
                if Instant::now() > until {
                    return Err(format!(
                        "{}: not all {rows} timers loaded after {timeout:?}: {text}",
                        self.name
                    ));
                }
                self.send(&Command::Stats)?;
                asked += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, reap, and every line it wrote counted.
    fn kill(&mut self) {
        let _ = self.process().kill();
    }
}

/// Nodes that are killed when dropped (each `NodeProcess` is).
struct Cluster(Vec<Node>);

impl Cluster {
    /// Sends one line per id, id `i` to node `(i + shift) % n`, each
    /// node's share from its own thread with at most `WINDOW` in flight,
    /// and counts the answers `counter` names, from the first line written
    /// to the last answer read.
    fn feed(
        &self,
        ids: &[u64],
        shift: u64,
        line: impl Fn(u64) -> String + Sync,
        counter: Counter,
    ) -> Result<Measured> {
        let n = self.0.len() as u64;
        let before: Vec<u64> = self.0.iter().map(|x| x.counts.answered(counter)).collect();
        let counted_before: Vec<u64> = self.0.iter().map(|x| x.counts.counted(counter)).collect();
        let start_ms = wall_ms();
        let results: Vec<Result<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .0
                .iter()
                .enumerate()
                .map(|(k, node)| {
                    let (line, before) = (&line, before[k]);
                    s.spawn(move || -> Result<u64> {
                        let mine = ids.iter().filter(|&&id| (id + shift) % n == k as u64);
                        let mut process = node.process();
                        let broken = |p: &NodeProcess| {
                            format!(
                                "{}: its stdin broke; stderr:\n{}",
                                node.name,
                                p.stderr_tail()
                            )
                        };
                        let mut sent = 0u64;
                        for &id in mine {
                            while sent - (node.counts.answered(counter) - before) >= WINDOW {
                                if !process.flush() {
                                    return Err(broken(&process));
                                }
                                std::thread::sleep(Duration::from_micros(200));
                            }
                            if !process.write_text(&format!("{}\n", line(id))) {
                                return Err(broken(&process));
                            }
                            sent += 1;
                        }
                        if !process.flush() {
                            return Err(broken(&process));
                        }
                        drop(process);
                        let until = Instant::now() + Duration::from_secs(120);
                        while node.counts.answered(counter) - before < sent {
                            if Instant::now() > until {
                                return Err(format!(
                                    "{}: {} of {sent} answered after 2 minutes",
                                    node.name,
                                    node.counts.answered(counter) - before
                                ));
                            }
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        Ok(sent)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("feeder panicked".into())))
                .collect()
        });
        let mut sent = 0;
        for r in results {
            sent += r?;
        }
        let last_ms = self
            .0
            .iter()
            .map(|x| x.counts.last_answer_ms.load(Relaxed))
            .max()
            .unwrap_or(start_ms);
        let counted: u64 = self
            .0
            .iter()
            .zip(&counted_before)
            .map(|(x, b)| x.counts.counted(counter) - b)
            .sum();
        let example = self
            .0
            .iter()
            .filter_map(|x| x.counts.example.lock().ok().map(|e| e.clone()))
            .find(|e| !e.is_empty())
            .unwrap_or_default();
        Ok(Measured {
            count: counted,
            secs: last_ms.saturating_sub(start_ms).max(1) as f64 / 1e3,
            failed: sent - counted,
            example,
        })
    }

    /// `quit` to every node, then a moment for them to release their
    /// shards; the drop kills whatever is left.
    fn quit(self) {
        for node in &self.0 {
            let _ = node.send(&Command::Quit);
        }
        for node in &self.0 {
            node.process().close_stdin();
        }
        let until = Instant::now() + Duration::from_secs(10);
        for node in &self.0 {
            let left = until.saturating_duration_since(Instant::now());
            let _ = node.process().wait_timeout(left);
        }
    }
}
