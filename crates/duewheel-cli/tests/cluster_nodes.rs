//! Cluster nodes as separate OS processes on a real PostgreSQL: `duewheel
//! node` killed with SIGKILL, frozen with SIGSTOP, racing cancels against
//! fires across nodes, losing its database, and refusing bad input — driven
//! through the line protocol (`duewheel_testkit::protocol`) and checked against
//! what the nodes printed and what the database holds.
//!
//! Needs `DUEWHEEL_PG_DSN` (`eval "$(scripts/pg-up.sh)"`); without it the
//! tests skip with a note, or fail under `CI=true`. The restart test also
//! needs `DUEWHEEL_PG_RESTART` (a shell command restarting that server).
//! The tests take one lock and run one at a time: one restarts the server
//! under everyone, and all of them want the machine's two cores.
//!
//! Sizes (defaults sized for CI on a loaded 2-core machine):
//! `DUEWHEEL_CLUSTER_TIMERS`, `DUEWHEEL_CLUSTER_KILLS`, `DUEWHEEL_CLUSTER_SECS`
//! (kill test), `DUEWHEEL_CLUSTER_RACE_IDS` (cancel vs fire),
//! `DUEWHEEL_CLUSTER_SEED` (repeat a run's random choices).
//! `DUEWHEEL_NODE_BIN` runs another build of `duewheel` than this one.

#[path = "support/cluster.rs"]
mod cluster;
use duewheel_testkit::pg;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use cluster::{Cluster, Command, Entry, Ev, Line, Rng, env_u64, lock, wait_timeout, wall_ms};
use duewheel_cluster::{SCHEMA_VERSION, ShardMap};
use pg::TestSchema;

/// The `duewheel` binary this test was built with, or `DUEWHEEL_NODE_BIN`
/// (to drive another build of the node with the same tests).
fn bin() -> String {
    std::env::var("DUEWHEEL_NODE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_duewheel").to_string())
}
const SHARDS: u32 = 64;
const TTL_MS: u64 = 2_000;
const RENEW_MS: u64 = 500;
/// How long a node may take to connect, migrate and print `ready`.
const READY: Duration = Duration::from_secs(60);
/// How long a graceful `quit` may take.
const QUIT: Duration = Duration::from_secs(30);

/// One test at a time (see the module doc).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    lock(&SERIAL)
}

fn ttl() -> Duration {
    Duration::from_millis(TTL_MS)
}

/// The arguments every node of a test shares (`--node-id` is the slot's).
fn node_args(db: &TestSchema, extra: &[&str]) -> Vec<String> {
    db.node_args(SHARDS, TTL_MS, RENEW_MS, extra)
}

fn payload(id: u64) -> String {
    format!("p{id}")
}

fn schedule_line(id: u64, deadline_ms: u64) -> String {
    let command = Command::Schedule {
        id,
        deadline_ms,
        payload: payload(id),
    };
    format!("{command}\n")
}

fn cancel_line(id: u64) -> String {
    format!("{}\n", Command::Cancel { id })
}

// ---------------------------------------------------------------------------
// The shards table

#[derive(Clone, Debug, PartialEq, Eq)]
struct ShardRow {
    shard: u32,
    epoch: u64,
    owner: Option<String>,
    /// The lease has not expired (database time).
    live: bool,
}

fn shard_rows(db: &mut postgres::Client) -> Vec<ShardRow> {
    db.query(
        "SELECT shard_id, epoch, owner, lease_expires_at > now() FROM shards ORDER BY shard_id",
        &[],
    )
    .expect("read the shards table")
    .iter()
    .map(|r| ShardRow {
        shard: r.get::<_, i32>(0) as u32,
        epoch: r.get::<_, i64>(1) as u64,
        owner: r.get(2),
        live: r.get(3),
    })
    .collect()
}

/// Shards `owner` holds a live lease on.
fn owned_by(rows: &[ShardRow], owner: &str) -> Vec<ShardRow> {
    rows.iter()
        .filter(|r| r.live && r.owner.as_deref() == Some(owner))
        .cloned()
        .collect()
}

/// Polls the shards table every 25 ms until `done` holds; returns the rows
/// and the time it took, or `None` after `limit`.
fn poll_shards(
    db: &mut postgres::Client,
    limit: Duration,
    mut done: impl FnMut(&[ShardRow]) -> bool,
) -> Option<(Vec<ShardRow>, Duration)> {
    let start = Instant::now();
    loop {
        // The table exists once the first node has opened the schema.
        let rows = match db.query("SELECT 1 FROM shards LIMIT 1", &[]) {
            Ok(_) => shard_rows(db),
            Err(_) => Vec::new(),
        };
        if !rows.is_empty() && done(&rows) {
            return Some((rows, start.elapsed()));
        }
        if start.elapsed() > limit {
            return None;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

fn all_owned(rows: &[ShardRow]) -> bool {
    rows.len() == SHARDS as usize && rows.iter().all(|r| r.live && r.owner.is_some())
}

/// Pending rows whose deadline is more than `late_ms` past.
fn overdue_pending(db: &mut postgres::Client, late_ms: u64) -> i64 {
    let before = (wall_ms() - late_ms) as i64;
    db.query_one(
        "SELECT count(*) FROM timers WHERE state = 0 AND deadline_ms < $1",
        &[&before],
    )
    .unwrap()
    .get(0)
}

fn claimed_rows(db: &mut postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM timers WHERE state = 1", &[])
        .unwrap()
        .get(0)
}

// ---------------------------------------------------------------------------
// What the test asked and what the nodes answered

#[derive(Clone, Copy, Debug)]
struct Sent {
    deadline_ms: u64,
    node: usize,
    inc: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum CancelAnswer {
    Cancelled,
    Fired,
    NotFound,
    Cerr(String),
}

#[derive(Clone, Debug)]
struct Delivery {
    node: usize,
    inc: u32,
    at: Duration,
    ev: Ev,
}

/// The run's ledger: every schedule and cancel the test sent, and every
/// answer and delivery that came back, built from the log.
#[derive(Default)]
struct Ledger {
    sent: HashMap<u64, Sent>,
    /// First `ok` per id, when it arrived.
    ok: HashMap<u64, Duration>,
    errs: HashMap<u64, Vec<(String, String)>>,
    cancel_sent: HashMap<u64, (usize, u32)>,
    cancels: HashMap<u64, Vec<CancelAnswer>>,
    evs: HashMap<u64, Vec<Delivery>>,
    /// Lines the protocol does not name, and answers about unknown ids.
    strange: Vec<String>,
    cursor: usize,
}

impl Ledger {
    fn absorb(&mut self, cluster: &Cluster) -> Vec<Entry> {
        let new = cluster.log.since(&mut self.cursor);
        for e in &new {
            self.note(cluster, e);
        }
        new
    }

    fn note(&mut self, cluster: &Cluster, e: &Entry) {
        let who = || format!("{}#{}", cluster.name(e.node), e.inc);
        match &e.line {
            Line::Ok(id) => {
                self.ok.entry(*id).or_insert(e.at);
            }
            Line::Err {
                id: Some(id),
                kind,
                message,
            } => {
                self.errs
                    .entry(*id)
                    .or_default()
                    .push((kind.clone(), message.clone()));
            }
            Line::Cancelled(id) => self.cancel_answer(*id, CancelAnswer::Cancelled),
            Line::Fired(id) => self.cancel_answer(*id, CancelAnswer::Fired),
            Line::NotFound(id) => self.cancel_answer(*id, CancelAnswer::NotFound),
            Line::Cerr {
                id: Some(id),
                kind,
                message,
            } => self.cancel_answer(*id, CancelAnswer::Cerr(format!("{kind} {message}"))),
            Line::Ev(ev) => self.evs.entry(ev.id).or_default().push(Delivery {
                node: e.node,
                inc: e.inc,
                at: e.at,
                ev: ev.clone(),
            }),
            Line::Ready(_) | Line::Stats(_) => {}
            other => self.strange.push(format!("{}: {other:?}", who())),
        }
    }

    fn cancel_answer(&mut self, id: u64, answer: CancelAnswer) {
        self.cancels.entry(id).or_default().push(answer);
    }

    fn answered(&self, id: u64) -> bool {
        self.ok.contains_key(&id) || self.errs.contains_key(&id)
    }

    /// Acked, and no cancel that may have won: must fire at least once. A
    /// cancel whose answer never came (lost with a killed node) or was
    /// `cerr` may have deleted the row; only `fired` / `notfound` prove it
    /// lost.
    fn must_fire(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .ok
            .keys()
            .filter(|id| !self.maybe_cancelled(**id))
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    fn maybe_cancelled(&self, id: u64) -> bool {
        if !self.cancel_sent.contains_key(&id) {
            return false;
        }
        !self.cancels.get(&id).is_some_and(|answers| {
            answers
                .iter()
                .all(|a| matches!(a, CancelAnswer::Fired | CancelAnswer::NotFound))
        })
    }

    /// Why `id` is where it is, for failure messages.
    fn story(&self, id: u64, cluster: &Cluster) -> String {
        let node = |n: usize| cluster.name(n).to_string();
        format!(
            "{id}: sent {:?} ok at {:?} errs {:?} cancel sent {:?} answers {:?} evs {:?}",
            self.sent
                .get(&id)
                .map(|s| (node(s.node), s.inc, s.deadline_ms)),
            self.ok.get(&id),
            self.errs.get(&id),
            self.cancel_sent.get(&id).map(|&(n, inc)| (node(n), inc)),
            self.cancels.get(&id),
            self.evs.get(&id).map(|v| v
                .iter()
                .map(|d| (node(d.node), d.inc, d.at, &d.ev))
                .collect::<Vec<_>>()),
        )
    }

    fn undelivered(&self, ids: &[u64]) -> Vec<u64> {
        ids.iter()
            .filter(|id| !self.evs.contains_key(id))
            .copied()
            .collect()
    }

    fn max_ok_deadline(&self) -> u64 {
        self.ok
            .keys()
            .filter_map(|id| self.sent.get(id))
            .map(|s| s.deadline_ms)
            .max()
            .unwrap_or(0)
    }
}

/// Failures collected across a test, reported together (a few samples each).
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, what: &str, bad: &[String]) {
        if !bad.is_empty() {
            let sample: Vec<&str> = bad.iter().take(8).map(String::as_str).collect();
            self.0.push(format!(
                "{what}: {} cases, e.g. {}",
                bad.len(),
                sample.join("; ")
            ));
        }
    }

    fn assert_none(&self, cluster: &Cluster) {
        if !self.0.is_empty() {
            panic!(
                "{} check(s) failed (node stderr in {}):\n  {}",
                self.0.len(),
                cluster.stderr_dir().display(),
                self.0.join("\n  ")
            );
        }
    }
}

/// Figures about duplicate deliveries.
#[derive(Debug, Default)]
struct Duplicates {
    ids: usize,
    extra: usize,
    /// The earlier delivery was by an incarnation later killed or stopped
    /// (a claimed-unacked row redelivered by the next owner).
    after_loss: usize,
    /// Redelivered by the same incarnation (ack timeout).
    same_incarnation: usize,
    /// A few of the duplicated ids, to print their story.
    samples: Vec<u64>,
}

/// The checks every test makes on deliveries: each `ev` is a timer the test
/// sent, with the deadline and payload it was given, never early; and
/// duplicates are only redeliveries — at most one first attempt per id, and
/// a delivery under a newer epoch always has a higher attempt.
fn check_deliveries(ledger: &Ledger, cluster: &Cluster, failures: &mut Failures) -> Duplicates {
    let mut unknown = Vec::new();
    let mut early = Vec::new();
    let mut mismatch = Vec::new();
    let mut firsts = Vec::new();
    let mut epochs = Vec::new();
    let mut unclaimed = Vec::new();
    let mut dups = Duplicates::default();
    for (id, evs) in &ledger.evs {
        let Some(sent) = ledger.sent.get(id) else {
            unknown.push(format!("{id}"));
            continue;
        };
        for d in evs {
            if d.ev.fired_at_ms < d.ev.deadline_ms {
                early.push(format!("{:?}", d.ev));
            }
            if d.ev.deadline_ms != sent.deadline_ms || d.ev.payload != payload(*id) {
                mismatch.push(format!(
                    "{:?} sent with deadline {}",
                    d.ev, sent.deadline_ms
                ));
            }
        }
        if evs.iter().filter(|d| d.ev.attempt == 1).count() > 1 {
            firsts.push(format!(
                "{id}: {:?}",
                evs.iter().map(|d| &d.ev).collect::<Vec<_>>()
            ));
        }
        // A claim is always at epoch 1 or later (acquiring a shard bumps
        // it), and a node prints the epoch the event itself carries
        // (`Event::claim`, set when the gate admitted it), so epoch 0 means
        // a delivery that bypassed the gate.
        for d in evs.iter().filter(|d| d.ev.epoch == 0) {
            unclaimed.push(format!("{id}: {:?} ({})", d.ev, cluster.name(d.node)));
        }
        for x in evs {
            for y in evs {
                if x.ev.epoch < y.ev.epoch && x.ev.attempt >= y.ev.attempt {
                    epochs.push(format!(
                        "{id}: attempt {} epoch {} ({}) then attempt {} epoch {} ({})",
                        x.ev.attempt,
                        x.ev.epoch,
                        cluster.name(x.node),
                        y.ev.attempt,
                        y.ev.epoch,
                        cluster.name(y.node)
                    ));
                }
            }
        }
        if evs.len() > 1 {
            if dups.samples.len() < 3 {
                dups.samples.push(*id);
            }
            dups.ids += 1;
            dups.extra += evs.len() - 1;
            let mut by_attempt: Vec<&Delivery> = evs.iter().collect();
            by_attempt.sort_by_key(|d| d.ev.attempt);
            let (a, b) = (by_attempt[0], by_attempt[1]);
            if a.node == b.node && a.inc == b.inc {
                dups.same_incarnation += 1;
            } else {
                dups.after_loss += 1;
            }
        }
    }
    failures.check("ev for an id the test never scheduled", &unknown);
    failures.check("ev with fired_at_ms < deadline_ms (early)", &early);
    failures.check(
        "ev whose deadline or payload differs from the schedule",
        &mismatch,
    );
    failures.check("id delivered with attempt 1 more than once", &firsts);
    failures.check(
        "id delivered under a newer epoch without a higher attempt",
        &epochs,
    );
    failures.check(
        "ev with claim epoch 0 (not admitted by a claim)",
        &unclaimed,
    );
    dups
}

/// Prints the story of a few duplicated ids (why they came twice).
fn print_duplicates(tag: &str, ledger: &Ledger, cluster: &Cluster, dups: &Duplicates) {
    for id in &dups.samples {
        eprintln!("{tag}: duplicate {}", ledger.story(*id, cluster));
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

/// Waits until every id in `ids` has been delivered, or `limit` passes.
fn wait_delivered(ledger: &mut Ledger, cluster: &Cluster, ids: &[u64], limit: Duration) {
    let start = Instant::now();
    loop {
        ledger.absorb(cluster);
        if ledger.undelivered(ids).is_empty() || start.elapsed() > limit {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn sleep_until_wall(ms: u64) {
    let now = wall_ms();
    if ms > now {
        thread::sleep(Duration::from_millis(ms - now));
    }
}

fn quit_all(cluster: &Cluster, failures: &mut Failures) {
    for node in 0..cluster.len() {
        if cluster.live(node).is_some() {
            match cluster.quit(node, QUIT) {
                Some(status) if status.success() => {}
                other => failures.0.push(format!(
                    "{} did not quit cleanly: {other:?}",
                    cluster.name(node)
                )),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 1. SIGKILL at random moments

/// One kill and how long its shards took to find a new owner.
#[derive(Debug)]
struct Takeover {
    /// When the kill was, on the log's clock.
    at: Duration,
    node: usize,
    inc: u32,
    shards: usize,
    /// `None`: still not taken over when polling gave up.
    took: Option<Duration>,
    /// The last shards taken: by whom, when.
    detail: String,
}

/// After `victim` was killed: the shards it held, and the time until each
/// has a newer epoch and an owner — another node, or the victim's next
/// incarnation (same name, but it must bump the epoch to acquire).
fn measure_takeover(
    db: &TestSchema,
    victim: &str,
    killed: Instant,
) -> (usize, Option<Duration>, String) {
    let mut client = db.client();
    let held: HashMap<u32, u64> = shard_rows(&mut client)
        .into_iter()
        .filter(|r| r.owner.as_deref() == Some(victim))
        .map(|r| (r.shard, r.epoch))
        .collect();
    // When each shard was seen taken, by whom, at which epoch.
    let mut taken: HashMap<u32, (Duration, String, u64)> = HashMap::new();
    let limit = ttl() + Duration::from_secs(30);
    let done = poll_shards(&mut client, limit, |rows| {
        for r in rows.iter().filter(|r| held.contains_key(&r.shard)) {
            if r.epoch > held[&r.shard]
                && let Some(owner) = &r.owner
            {
                taken
                    .entry(r.shard)
                    .or_insert_with(|| (killed.elapsed(), owner.clone(), r.epoch));
            }
        }
        taken.len() == held.len()
    });
    let mut last: Vec<_> = taken.iter().collect();
    last.sort_by_key(|(_, (at, _, _))| Reverse(*at));
    let detail = last
        .iter()
        .take(3)
        .map(|(shard, (at, owner, epoch))| {
            format!("shard {shard} by {owner} at epoch {epoch} after {at:?}")
        })
        .collect::<Vec<_>>()
        .join("; ");
    (held.len(), done.map(|_| killed.elapsed()), detail)
}

#[test]
fn kill9_takeover_loses_nothing() {
    let _serial = serial();
    let Some(db) = TestSchema::new("ct_kill9") else {
        return;
    };
    let timers = env_u64("DUEWHEEL_CLUSTER_TIMERS", 100_000);
    let kills = env_u64("DUEWHEEL_CLUSTER_KILLS", 20);
    let secs = env_u64("DUEWHEEL_CLUSTER_SECS", 30).max(1);
    let mut rng = Rng::from_env("DUEWHEEL_CLUSTER_SEED", "kill9_takeover_loses_nothing");
    let mut kill_rng = rng.fork();
    eprintln!(
        "kill9: {timers} timers over {secs} s through 3 nodes, ~30% cancelled, {kills} SIGKILLs"
    );

    let cluster = Cluster::new(&bin(), &db.name, &["n1", "n2", "n3"], node_args(&db, &[]));
    for node in 0..3 {
        cluster.start(node);
    }
    for node in 0..3 {
        cluster.wait_ready(node, 1, READY);
    }
    let mut client = db.client();
    poll_shards(&mut client, Duration::from_secs(30), all_owned)
        .expect("all shards owned within 30 s of start");

    let killing_done = AtomicBool::new(false);
    let takeovers: Mutex<Vec<Takeover>> = Mutex::new(Vec::new());
    let mut ledger = Ledger::default();
    let mut unsent = 0u64;
    // Kills and starts, for the story of a slow takeover.
    let timeline: Mutex<Vec<(Duration, String)>> = Mutex::new(Vec::new());
    let (cluster, db, takeovers_ref, killing) = (&cluster, &db, &takeovers, &killing_done);
    let timeline = &timeline;
    thread::scope(|s| {
        // The killer: a random live node at random moments, never the last
        // settled one; each victim restarts after a random delay in
        // [0, 2×TTL].
        s.spawn(move || {
            let mut restarts: Vec<(Instant, usize)> = Vec::new();
            let restart_due = |restarts: &mut Vec<(Instant, usize)>| {
                restarts.retain(|&(at, node)| {
                    if Instant::now() >= at {
                        let inc = cluster.start(node);
                        let at = cluster.log.now();
                        lock(timeline).push((at, format!("start {}#{inc}", cluster.name(node))));
                        false
                    } else {
                        true
                    }
                });
            };
            for _ in 0..kills {
                let wait = Instant::now() + Duration::from_millis(kill_rng.range(200, 3_001));
                while Instant::now() < wait {
                    restart_due(&mut restarts);
                    thread::sleep(Duration::from_millis(5));
                }
                // A victim leaves at least one *settled* node (up for a TTL,
                // so it has connected and holds shards) behind: the takeover
                // bound is about the survivors, not about a cluster whose
                // every node was just restarted.
                let candidates = loop {
                    restart_due(&mut restarts);
                    let settled = |n: usize| cluster.uptime(n).is_some_and(|up| up >= ttl());
                    let candidates: Vec<usize> = (0..3)
                        .filter(|&v| cluster.live(v).is_some())
                        .filter(|&v| (0..3).any(|u| u != v && settled(u)))
                        .collect();
                    if !candidates.is_empty() {
                        break candidates;
                    }
                    thread::sleep(Duration::from_millis(5));
                };
                let victim = candidates[kill_rng.range(0, candidates.len() as u64) as usize];
                let inc = cluster.kill9(victim).unwrap();
                let killed = Instant::now();
                let killed_at = cluster.log.now();
                lock(timeline).push((killed_at, format!("kill {}#{inc}", cluster.name(victim))));
                let name = cluster.name(victim).to_string();
                s.spawn(move || {
                    let (shards, took, detail) = measure_takeover(db, &name, killed);
                    lock(takeovers_ref).push(Takeover {
                        at: killed_at,
                        node: victim,
                        inc,
                        shards,
                        took,
                        detail,
                    });
                });
                let delay = Duration::from_millis(kill_rng.range(0, 2 * TTL_MS + 1));
                restarts.push((killed + delay, victim));
            }
            while !restarts.is_empty() {
                restart_due(&mut restarts);
                thread::sleep(Duration::from_millis(5));
            }
            killing.store(true, Ordering::SeqCst);
        });

        // The driver (this thread): schedules at a steady rate round-robin,
        // and cancels ~30% of what was acked through a random node at a
        // random moment between the ack and shortly after the deadline.
        let start = Instant::now();
        let per_ms = timers as f64 / (secs * 1_000) as f64;
        let mut next_id = 1u64;
        let mut rr = 0usize;
        let mut cancels: BinaryHeap<Reverse<(Duration, u64)>> = BinaryHeap::new();
        let mut outstanding: HashSet<u64> = HashSet::new();
        // Few enough that a kill loses little (its unanswered lines are
        // unknowns), enough to keep three nodes' batches full.
        const MAX_OUTSTANDING: usize = 6_000;
        loop {
            for e in ledger.absorb(cluster) {
                if let Line::Ok(id) | Line::Err { id: Some(id), .. } = e.line {
                    outstanding.remove(&id);
                }
            }
            if outstanding.len() >= MAX_OUTSTANDING {
                // Answers lost with a killed incarnation never come.
                outstanding.retain(|id| {
                    let s = ledger.sent[id];
                    cluster.live(s.node) == Some(s.inc)
                });
            }
            let due = ((start.elapsed().as_millis() as f64 * per_ms) as u64).min(timers);
            let mut batch: Vec<(String, Vec<u64>)> = vec![(String::new(), Vec::new()); 3];
            let mut deadlines = HashMap::new();
            while next_id <= due && outstanding.len() + deadlines.len() < MAX_OUTSTANDING {
                let Some(node) = (0..3)
                    .map(|k| (rr + k) % 3)
                    .find(|&n| cluster.live(n).is_some())
                else {
                    break;
                };
                rr = node + 1;
                let id = next_id;
                next_id += 1;
                let now = wall_ms();
                let deadline_ms = now + rng.range(500, 4_000);
                batch[node].0.push_str(&schedule_line(id, deadline_ms));
                batch[node].1.push(id);
                deadlines.insert(id, deadline_ms);
                if rng.percent(30) {
                    let after = rng.range(0, deadline_ms - now + 500);
                    cancels.push(Reverse((
                        start.elapsed() + Duration::from_millis(after),
                        id,
                    )));
                }
            }
            for (node, (text, ids)) in batch.into_iter().enumerate() {
                if ids.is_empty() {
                    continue;
                }
                match cluster.send(node, text) {
                    Some(inc) => {
                        for id in ids {
                            let deadline_ms = deadlines[&id];
                            ledger.sent.insert(
                                id,
                                Sent {
                                    deadline_ms,
                                    node,
                                    inc,
                                },
                            );
                            outstanding.insert(id);
                        }
                    }
                    None => unsent += ids.len() as u64,
                }
            }
            // Cancels that are due, for ids already acked.
            let mut retry = Vec::new();
            while let Some(&Reverse((at, id))) = cancels.peek() {
                if at > start.elapsed() {
                    break;
                }
                cancels.pop();
                let live: Vec<usize> = (0..3).filter(|&n| cluster.live(n).is_some()).collect();
                if ledger.ok.contains_key(&id) && !live.is_empty() {
                    let node = live[rng.range(0, live.len() as u64) as usize];
                    if let Some(inc) = cluster.send(node, cancel_line(id)) {
                        ledger.cancel_sent.insert(id, (node, inc));
                    }
                } else if ledger.ok.contains_key(&id) {
                    retry.push(Reverse((at + Duration::from_millis(50), id)));
                } else if let Some(s) = ledger.sent.get(&id)
                    && !ledger.answered(id)
                    && cluster.live(s.node) == Some(s.inc)
                {
                    retry.push(Reverse((at + Duration::from_millis(50), id)));
                }
            }
            cancels.extend(retry);
            if next_id > timers && cancels.is_empty() && killing_done.load(Ordering::SeqCst) {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
    });
    eprintln!(
        "kill9: scheduling done after {:?}; {} sent, {unsent} not sent (no node running)",
        cluster.log.now(),
        ledger.sent.len()
    );

    // Every sent line to a live incarnation is answered.
    let answers_by = Instant::now() + Duration::from_secs(60);
    loop {
        ledger.absorb(cluster);
        let waiting = ledger
            .sent
            .iter()
            .filter(|(id, s)| !ledger.answered(**id) && cluster.live(s.node) == Some(s.inc))
            .count();
        if waiting == 0 || Instant::now() > answers_by {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    // Every acked deadline plus the TTL plus a margin has passed; then the
    // deliveries still on their way get a generous bound.
    sleep_until_wall(ledger.max_ok_deadline() + TTL_MS + 3_000);
    let must_fire = ledger.must_fire();
    wait_delivered(&mut ledger, cluster, &must_fire, Duration::from_secs(60));
    let overdue = overdue_pending(&mut client, 5_000);
    let claimed = claimed_rows(&mut client);
    for node in 0..3 {
        eprintln!(
            "kill9: {} stats {:?}",
            cluster.name(node),
            cluster.stats(node, Duration::from_secs(30))
        );
    }
    let mut failures = Failures::default();
    quit_all(cluster, &mut failures);
    ledger.absorb(cluster);

    // The checks.
    let acked = ledger.ok.len();
    let unknown: Vec<u64> = ledger
        .sent
        .keys()
        .filter(|id| !ledger.answered(**id))
        .copied()
        .collect();
    let errs: Vec<String> = ledger
        .errs
        .iter()
        .map(|(id, e)| format!("{id}: {e:?}"))
        .collect();
    failures.check("schedule answered err (the database was healthy)", &errs);
    let lost: Vec<String> = ledger
        .undelivered(&must_fire)
        .iter()
        .map(|id| ledger.story(*id, cluster))
        .collect();
    failures.check("acked, not cancelled, never delivered", &lost);
    let mut split: BTreeMap<String, usize> = BTreeMap::new();
    let mut cancelled_fired = Vec::new();
    let mut claimed_lost = Vec::new();
    for (id, answers) in &ledger.cancels {
        for a in answers {
            let key = match a {
                CancelAnswer::Cancelled => "cancelled".to_string(),
                CancelAnswer::Fired => "fired".to_string(),
                CancelAnswer::NotFound => "notfound".to_string(),
                CancelAnswer::Cerr(m) => format!("cerr {}", m.split(' ').next().unwrap_or("")),
            };
            *split.entry(key).or_default() += 1;
            let delivered = ledger.evs.contains_key(id);
            match a {
                CancelAnswer::Cancelled if delivered => {
                    cancelled_fired.push(format!("{id}: {:?}", ledger.evs[id]))
                }
                // The cancel was sent after the `ok`: `fired` means claimed,
                // `notfound` fired and acked; either way it was delivered.
                CancelAnswer::Fired | CancelAnswer::NotFound if !delivered => {
                    claimed_lost.push(format!("{id}: {a:?}"))
                }
                _ => {}
            }
        }
    }
    let cerrs: Vec<String> = ledger
        .cancels
        .iter()
        .filter(|(_, a)| a.iter().any(|a| matches!(a, CancelAnswer::Cerr(_))))
        .take(3)
        .map(|(id, _)| ledger.story(*id, cluster))
        .collect();
    for story in &cerrs {
        eprintln!("kill9: cerr {story}");
    }
    failures.check(
        "cancel answered cancelled but the timer was delivered",
        &cancelled_fired,
    );
    failures.check(
        "cancel answered fired/notfound but no delivery",
        &claimed_lost,
    );
    failures.check("unexpected lines", &ledger.strange);
    let dups = check_deliveries(&ledger, cluster, &mut failures);
    print_duplicates("kill9", &ledger, cluster, &dups);
    let unknown_fired = unknown
        .iter()
        .filter(|id| ledger.evs.contains_key(id))
        .count();

    let mut takeovers = std::mem::take(&mut *lock(&takeovers));
    takeovers.sort_by_key(|t| t.took);
    let bound = ttl() + Duration::from_secs(5);
    let slow: Vec<String> = takeovers
        .iter()
        .filter(|t| t.took.is_none_or(|d| d > bound))
        .map(|t| format!("{t:?}"))
        .collect();
    failures.check(
        &format!("takeover slower than TTL + 5 s = {bound:?}"),
        &slow,
    );
    let times: Vec<Duration> = takeovers
        .iter()
        .filter(|t| t.shards > 0)
        .filter_map(|t| t.took)
        .collect();
    if overdue > 0 {
        failures.0.push(format!(
            "{overdue} pending rows more than 5 s past their deadline"
        ));
    }

    for t in takeovers
        .iter()
        .filter(|t| t.took.is_none_or(|d| d > ttl() * 2))
    {
        let took = t.took.unwrap_or(Duration::MAX);
        let around: Vec<String> = lock(timeline)
            .iter()
            .filter(|(at, _)| {
                *at + Duration::from_secs(5) >= t.at && *at <= t.at.saturating_add(took)
            })
            .map(|(at, what)| format!("{at:.1?} {what}"))
            .collect();
        eprintln!(
            "kill9: slow takeover after {}#{} at {:.1?}: {took:.1?}; last: {}; around: {}",
            cluster.name(t.node),
            t.inc,
            t.at,
            t.detail,
            around.join(", ")
        );
    }
    let each: Vec<String> = takeovers
        .iter()
        .map(|t| {
            format!(
                "{}#{} at {:?}: {} shards {:?}",
                cluster.name(t.node),
                t.inc,
                t.at,
                t.shards,
                t.took
            )
        })
        .collect();
    eprintln!("kill9: takeovers {}", each.join(", "));
    eprintln!(
        "kill9: {} kills ({} with shards to take over: {} shards in all); takeover median {:?}, max {:?}",
        takeovers.len(),
        times.len(),
        takeovers.iter().map(|t| t.shards).sum::<usize>(),
        percentile(&times, 50),
        times.last().copied().unwrap_or_default()
    );
    eprintln!(
        "kill9: {} scheduled, {acked} ok, {} err, {} unknown (lost with a killed node; {unknown_fired} of them fired anyway)",
        ledger.sent.len(),
        ledger.errs.len(),
        unknown.len()
    );
    eprintln!(
        "kill9: {} cancels sent, answers {split:?}; {} must fire, {} delivered ids, {} lines",
        ledger.cancel_sent.len(),
        must_fire.len(),
        ledger.evs.len(),
        ledger.evs.values().map(Vec::len).sum::<usize>()
    );
    eprintln!(
        "kill9: duplicates: {} ids, {} extra deliveries ({} after the deliverer was killed, {} by the same incarnation); at the end {overdue} overdue pending rows, {claimed} claimed rows",
        dups.ids, dups.extra, dups.after_loss, dups.same_incarnation
    );
    failures.assert_none(cluster);
}

// ---------------------------------------------------------------------------
// 2. SIGSTOP: a node that wakes up after losing its shards

#[test]
fn sigstop_node_is_fenced() {
    let _serial = serial();
    let Some(db) = TestSchema::new("ct_stop") else {
        return;
    };
    let rate = env_u64("DUEWHEEL_CLUSTER_STOP_RATE", 400).max(1); // schedules per second
    let burst_n = env_u64("DUEWHEEL_CLUSTER_STOP_BURST", 3_000);
    // Burst ids live far above the steady stream's.
    const BURST_BASE: u64 = 1 << 40;
    let cluster = Cluster::new(&bin(), &db.name, &["a", "b"], node_args(&db, &[]));
    let (a, b) = (0, 1);
    let mut client = db.client();
    cluster.start(a);
    cluster.wait_ready(a, 1, READY);
    poll_shards(&mut client, Duration::from_secs(30), |rows| {
        !owned_by(rows, "a").is_empty()
    })
    .expect("a owns shards within 30 s");
    cluster.start(b);
    cluster.wait_ready(b, 1, READY);
    poll_shards(&mut client, Duration::from_secs(30), all_owned).expect("all shards owned");

    let stop_driving = AtomicBool::new(false);
    let ledger = Mutex::new(Ledger::default());
    let mut failures = Failures::default();
    let (stopped_at, resumed_at, at_stop, taken) = thread::scope(|s| {
        s.spawn(|| {
            let mut rng = Rng::from_env("DUEWHEEL_CLUSTER_SEED", "sigstop_node_is_fenced");
            let start = Instant::now();
            let mut next_id = 1u64;
            while !stop_driving.load(Ordering::SeqCst) {
                let due = start.elapsed().as_millis() as u64 * rate / 1_000;
                let mut texts = [String::new(), String::new()];
                let mut ids: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
                while next_id <= due {
                    let node = (next_id % 2) as usize;
                    let deadline_ms = wall_ms() + rng.range(200, 2_000);
                    texts[node].push_str(&schedule_line(next_id, deadline_ms));
                    ids[node].push((next_id, deadline_ms));
                    next_id += 1;
                }
                for (node, (text, ids)) in texts.into_iter().zip(ids).enumerate() {
                    if ids.is_empty() {
                        continue;
                    }
                    let inc = cluster.send(node, text).expect("both nodes run");
                    let mut l = lock(&ledger);
                    for (id, deadline_ms) in ids {
                        l.sent.insert(
                            id,
                            Sent {
                                deadline_ms,
                                node,
                                inc,
                            },
                        );
                    }
                }
                thread::sleep(Duration::from_millis(10));
            }
        });

        thread::sleep(Duration::from_secs(2));
        // A burst due all at once in A's shards, through A, and the stop just
        // after its deadline: A is then likely frozen between claiming some
        // of it and acking, which is what the stale-epoch check looks at.
        let a_now: HashSet<u32> = owned_by(&shard_rows(&mut client), "a")
            .iter()
            .map(|r| r.shard)
            .collect();
        let map = ShardMap::new(SHARDS).unwrap();
        let burst: Vec<u64> = (BURST_BASE..)
            .filter(|id| a_now.contains(&map.shard_of_id(*id)))
            .take(burst_n as usize)
            .collect();
        let burst_deadline_ms = wall_ms() + 1_500;
        let from = cluster.log.len();
        let text: String = burst
            .iter()
            .map(|&id| schedule_line(id, burst_deadline_ms))
            .collect();
        let inc = cluster.send(a, text).unwrap();
        {
            let mut l = lock(&ledger);
            for &id in &burst {
                l.sent.insert(
                    id,
                    Sent {
                        deadline_ms: burst_deadline_ms,
                        node: a,
                        inc,
                    },
                );
            }
        }
        let want: HashSet<u64> = burst.iter().copied().collect();
        cluster.log.wait_for(from, Duration::from_secs(30), |entries| {
            let n = entries
                .iter()
                .filter(|e| matches!(&e.line, Line::Ok(id) | Line::Err { id: Some(id), .. } if want.contains(id)))
                .count();
            (n == want.len()).then_some(())
        });
        sleep_until_wall(burst_deadline_ms + 20);
        let stopped_at = cluster.log.now();
        cluster.signal(a, "STOP");
        // A is frozen: what the table says now is what it held.
        let at_stop = shard_rows(&mut client);
        let a_held: HashMap<u32, u64> = at_stop
            .iter()
            .filter(|r| r.owner.as_deref() == Some("a"))
            .map(|r| (r.shard, r.epoch))
            .collect();
        // B takes every one of them, each with a newer epoch; `taken` is the
        // epoch B took each shard under.
        let mut taken: HashMap<u32, u64> = HashMap::new();
        let took = poll_shards(&mut client, 3 * ttl() + Duration::from_secs(10), |rows| {
            for r in rows {
                if r.owner.as_deref() == Some("b") && !taken.contains_key(&r.shard) {
                    taken.insert(r.shard, r.epoch);
                }
            }
            a_held.iter().all(|(shard, epoch)| {
                let r = &rows[*shard as usize];
                r.owner.as_deref() == Some("b") && r.epoch > *epoch
            })
        });
        let takeover = took.as_ref().map(|(_, d)| *d);
        eprintln!(
            "sigstop: a held {} of {SHARDS} shards when stopped; b owned them all after {takeover:?}",
            a_held.len()
        );
        if takeover.is_none() {
            failures.0.push(format!(
                "b did not take a's {} shards within 3×TTL + 10 s",
                a_held.len()
            ));
        }
        let wake = stopped_at + 3 * ttl();
        let now = cluster.log.now();
        if wake > now {
            thread::sleep(wake - now);
        }
        let resumed_at = cluster.log.now();
        cluster.signal(a, "CONT");
        thread::sleep(3 * ttl());
        stop_driving.store(true, Ordering::SeqCst);
        (stopped_at, resumed_at, at_stop, taken)
    });
    let mut ledger = ledger.into_inner().unwrap();

    let answers_by = Instant::now() + Duration::from_secs(60);
    while Instant::now() < answers_by {
        ledger.absorb(&cluster);
        if ledger.sent.keys().all(|id| ledger.answered(*id)) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    sleep_until_wall(ledger.max_ok_deadline() + TTL_MS + 3_000);
    let must_fire = ledger.must_fire();
    wait_delivered(&mut ledger, &cluster, &must_fire, Duration::from_secs(60));
    let a_stats = cluster.stats(a, Duration::from_secs(30));
    let b_stats = cluster.stats(b, Duration::from_secs(30));
    let overdue = overdue_pending(&mut client, 5_000);
    quit_all(&cluster, &mut failures);
    ledger.absorb(&cluster);

    let stat = |m: &BTreeMap<String, i64>, k: &str| m.get(k).copied().unwrap_or(0);
    if stat(&a_stats, "fenced") + stat(&a_stats, "lost") == 0 {
        failures.0.push(format!(
            "a's stats show neither fenced nor lost after waking: {a_stats:?}"
        ));
    }
    let map = ShardMap::new(SHARDS).unwrap();
    let epoch_at_stop: HashMap<u32, u64> = at_stop.iter().map(|r| (r.shard, r.epoch)).collect();
    // A's deliveries printed after it woke under an epoch older than the one
    // B took the shard under must be claims A made before it froze: B found
    // them claimed and redelivered each with a higher attempt, under its
    // epoch or a later one.
    let mut stale = 0usize;
    let mut fresh = 0usize;
    let mut unproven = Vec::new();
    for (id, evs) in &ledger.evs {
        let shard = map.shard_of_id(*id);
        let b_took = taken
            .get(&shard)
            .copied()
            .unwrap_or(epoch_at_stop.get(&shard).copied().unwrap_or(0) + 1);
        for d in evs.iter().filter(|d| d.node == a && d.at > resumed_at) {
            if d.ev.epoch >= b_took {
                fresh += 1;
                continue;
            }
            stale += 1;
            // Normally by B; by A's next epoch if B handed the shard back
            // before delivering what it loaded.
            let redelivered = evs
                .iter()
                .any(|r| r.ev.attempt > d.ev.attempt && r.ev.epoch >= b_took);
            if !redelivered {
                unproven.push(format!(
                    "{id} shard {shard}: a printed {:?} after waking; b took the shard at epoch {b_took}; all: {:?}",
                    d.ev,
                    evs.iter().map(|d| (cluster.name(d.node), &d.ev)).collect::<Vec<_>>()
                ));
            }
        }
    }
    failures.check(
        "a delivered under a stale epoch after waking, and no owner since redelivered it",
        &unproven,
    );
    // The duplicate bound (the delivery fence): every receive after the
    // wake finds A's leases over by its own clock, so what A prints under a
    // stale epoch after waking is only what its consumer had already
    // received before the stop: the one batch it held, printed in one
    // write. Those lines are contiguous in A's output, and no other ev line
    // of A after the wake comes before them. From outside the process a
    // batch received before the stop and one received from the channel
    // after it look alike (the node takes all that is ready at once), so
    // this checks the shape only; the count is printed, and
    // `duewheel-cluster/tests/node_fence.rs` proves the bound itself.
    let stale_epoch = |ev: &Ev| {
        let shard = map.shard_of_id(ev.id);
        let b_took = taken
            .get(&shard)
            .copied()
            .unwrap_or(epoch_at_stop.get(&shard).copied().unwrap_or(0) + 1);
        ev.epoch < b_took
    };
    // A's lines after the wake: (is an ev line, is a stale-epoch ev line).
    let after_wake: Vec<(bool, bool)> = cluster.log.with(|entries| {
        entries
            .iter()
            .filter(|e| e.node == a && e.at > resumed_at)
            .map(|e| match &e.line {
                Line::Ev(ev) => (true, stale_epoch(ev)),
                _ => (false, false),
            })
            .collect()
    });
    let stale_at: Vec<usize> = (0..after_wake.len()).filter(|&i| after_wake[i].1).collect();
    let mut held_before = Vec::new();
    if let (Some(&first), Some(&last)) = (stale_at.first(), stale_at.last()) {
        if last - first + 1 != stale_at.len() {
            held_before.push(format!(
                "{} stale ev lines spread over A's lines {first}..={last} after the wake (more than one batch)",
                stale_at.len()
            ));
        }
        if after_wake[..first].iter().any(|&(ev, _)| ev) {
            held_before.push(format!(
                "a fresh ev line came before the {} stale ones after the wake",
                stale_at.len()
            ));
        }
    }
    failures.check(
        "a printed stale-epoch events after waking beyond the batch it held when stopped",
        &held_before,
    );
    let lost: Vec<String> = ledger
        .undelivered(&must_fire)
        .iter()
        .map(|id| ledger.story(*id, &cluster))
        .collect();
    failures.check("acked, never delivered", &lost);
    let errs: Vec<String> = ledger
        .errs
        .iter()
        .map(|(id, e)| format!("{id}: {e:?}"))
        .collect();
    failures.check("schedule answered err", &errs);
    failures.check("unexpected lines", &ledger.strange);
    let dups = check_deliveries(&ledger, &cluster, &mut failures);
    print_duplicates("sigstop", &ledger, &cluster, &dups);
    let two_epochs = ledger
        .evs
        .values()
        .filter(|evs| evs.iter().any(|d| d.ev.epoch != evs[0].ev.epoch))
        .count();
    if overdue > 0 {
        failures.0.push(format!(
            "{overdue} pending rows more than 5 s past their deadline"
        ));
    }
    eprintln!(
        "sigstop: stopped {:?}..{:?} (3×TTL); {} scheduled, {} ok, {} must fire, all delivered: {}",
        stopped_at,
        resumed_at,
        ledger.sent.len(),
        ledger.ok.len(),
        must_fire.len(),
        ledger.undelivered(&must_fire).is_empty()
    );
    eprintln!(
        "sigstop: a after waking: fenced={} lost={} acquired={} fence_held={}; a's deliveries after waking: {stale} under a stale epoch (all redelivered by b: {}; received before the stop, one batch: {}), {fresh} under a newer one",
        stat(&a_stats, "fenced"),
        stat(&a_stats, "lost"),
        stat(&a_stats, "acquired"),
        stat(&a_stats, "fence_held"),
        unproven.is_empty(),
        held_before.is_empty()
    );
    eprintln!(
        "sigstop: {two_epochs} ids delivered under two epochs; duplicates {dups:?}; a {a_stats:?}; b {b_stats:?}"
    );
    failures.assert_none(&cluster);
}

// ---------------------------------------------------------------------------
// 3. Cancel on one node vs fire on the owner

#[test]
fn cancel_vs_fire_across_nodes() {
    let _serial = serial();
    let Some(db) = TestSchema::new("ct_race") else {
        return;
    };
    let per_round = env_u64("DUEWHEEL_CLUSTER_RACE_IDS", 2_000).max(1);
    let cluster = Cluster::new(&bin(), &db.name, &["a", "b"], node_args(&db, &[]));
    let (a, b) = (0, 1);
    let mut client = db.client();
    // B first, so it holds shards before A exists.
    cluster.start(b);
    cluster.wait_ready(b, 1, READY);
    poll_shards(&mut client, Duration::from_secs(30), all_owned).expect("b owns all shards");
    cluster.start(a);
    cluster.wait_ready(a, 1, READY);
    // Let ownership settle (a balancing node may hand shards to A): two
    // snapshots a TTL apart that agree.
    let mut last = shard_rows(&mut client);
    let settle_by = Instant::now() + Duration::from_secs(20);
    loop {
        thread::sleep(ttl());
        let now = shard_rows(&mut client);
        if (now == last && all_owned(&now)) || Instant::now() > settle_by {
            last = now;
            break;
        }
        last = now;
    }
    let b_shards: HashSet<u32> = owned_by(&last, "b").iter().map(|r| r.shard).collect();
    assert!(!b_shards.is_empty(), "b owns no shard: {last:?}");
    eprintln!(
        "cancel-vs-fire: b owns {} of {SHARDS} shards; a cancels",
        b_shards.len()
    );
    let map = ShardMap::new(SHARDS).unwrap();

    let mut ledger = Ledger::default();
    let mut failures = Failures::default();
    let mut next_id = 1u64;
    // Cancels start this long after the deadline (negative: before).
    let mut offset_ms: i64 = -30;
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    for round in 0..4 {
        let mut ids = Vec::new();
        while ids.len() < per_round as usize {
            if b_shards.contains(&map.shard_of_id(next_id)) {
                ids.push(next_id);
            }
            next_id += 1;
        }
        let deadline_ms = wall_ms() + 2_000 + per_round / 2;
        let text: String = ids
            .iter()
            .map(|&id| schedule_line(id, deadline_ms))
            .collect();
        let inc = cluster.send(a, text).unwrap();
        for &id in &ids {
            ledger.sent.insert(
                id,
                Sent {
                    deadline_ms,
                    node: a,
                    inc,
                },
            );
        }
        let all_ok_by = Instant::now() + Duration::from_secs(60);
        while Instant::now() < all_ok_by && !ids.iter().all(|id| ledger.answered(*id)) {
            ledger.absorb(&cluster);
            thread::sleep(Duration::from_millis(10));
        }
        let not_ok: Vec<String> = ids
            .iter()
            .filter(|id| !ledger.ok.contains_key(id))
            .map(|id| format!("{id}: {:?}", ledger.errs.get(id)))
            .collect();
        failures.check("schedule not answered ok", &not_ok);
        let oks_done = wall_ms();
        // The cancels go out in CHUNKS slices spread evenly over WINDOW_MS
        // centred on deadline + offset, so the owner's claim lands inside
        // the spread: the early slices win, the late ones find the row
        // claimed or gone.
        const CHUNKS: usize = 20;
        const WINDOW_MS: i64 = 400;
        let first_ms = deadline_ms.saturating_add_signed(offset_ms - WINDOW_MS / 2);
        let chunk = ids.len().div_ceil(CHUNKS);
        for (k, slice) in ids.chunks(chunk).enumerate() {
            sleep_until_wall(first_ms + (k as i64 * WINDOW_MS / CHUNKS as i64) as u64);
            let text: String = slice.iter().map(|&id| cancel_line(id)).collect();
            cluster.send(a, text).unwrap();
        }
        for &id in &ids {
            ledger.cancel_sent.insert(id, (a, inc));
        }
        let answers_by = Instant::now() + Duration::from_secs(60);
        while Instant::now() < answers_by && !ids.iter().all(|id| ledger.cancels.contains_key(id)) {
            ledger.absorb(&cluster);
            thread::sleep(Duration::from_millis(10));
        }
        let mut split: BTreeMap<&str, usize> = BTreeMap::new();
        for id in &ids {
            let key = match ledger.cancels.get(id).map(Vec::as_slice) {
                Some([CancelAnswer::Cancelled]) => "cancelled",
                Some([CancelAnswer::Fired]) => "fired",
                Some([CancelAnswer::NotFound]) => "notfound",
                Some([CancelAnswer::Cerr(_)]) => "cerr",
                None => "unanswered",
                Some(_) => "several",
            };
            *split.entry(key).or_default() += 1;
            *totals.entry(key).or_default() += 1;
        }
        eprintln!(
            "cancel-vs-fire round {round}: {} ids due at {deadline_ms} (all ok {} ms before it), cancels sent from {} ms after it over {WINDOW_MS} ms: {split:?}",
            ids.len(),
            deadline_ms as i64 - oks_done as i64,
            first_ms as i64 - deadline_ms as i64,
        );
        let cancelled = split.get("cancelled").copied().unwrap_or(0);
        let fired =
            split.get("fired").copied().unwrap_or(0) + split.get("notfound").copied().unwrap_or(0);
        if cancelled > 0 && fired > 0 {
            break;
        }
        // One side got nothing: move the cancels toward the other side.
        offset_ms += if cancelled == 0 {
            -WINDOW_MS
        } else {
            WINDOW_MS
        } / 2;
    }

    sleep_until_wall(ledger.max_ok_deadline() + TTL_MS + 3_000);
    let must_fire = ledger.must_fire();
    wait_delivered(&mut ledger, &cluster, &must_fire, Duration::from_secs(60));
    // What is left in the table: nothing that fired and was acked
    // (tombstones, state 2, aside).
    let left: HashSet<u64> = client
        .query("SELECT timer_id FROM timers WHERE state < 2", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect();
    let after = shard_rows(&mut client);
    quit_all(&cluster, &mut failures);
    ledger.absorb(&cluster);

    let mut bad_outcome = Vec::new();
    for (id, answers) in &ledger.cancels {
        let delivered = ledger.evs.contains_key(id);
        let ok = match answers.as_slice() {
            [CancelAnswer::Cancelled] => !delivered,
            [CancelAnswer::Fired] => delivered,
            [CancelAnswer::NotFound] => delivered && !left.contains(id),
            _ => false,
        };
        if !ok {
            bad_outcome.push(format!(
                "{id}: cancel answered {answers:?}, delivered {:?}, row left {}",
                ledger
                    .evs
                    .get(id)
                    .map(|v| v.iter().map(|d| &d.ev).collect::<Vec<_>>()),
                left.contains(id)
            ));
        }
    }
    let unanswered: Vec<String> = ledger
        .cancel_sent
        .keys()
        .filter(|id| !ledger.cancels.contains_key(id))
        .map(|id| id.to_string())
        .collect();
    failures.check("cancel not answered", &unanswered);
    failures.check("cancel outcome inconsistent with deliveries", &bad_outcome);
    let lost: Vec<String> = ledger
        .undelivered(&must_fire)
        .iter()
        .map(|id| ledger.story(*id, &cluster))
        .collect();
    failures.check("acked, not cancelled, never delivered", &lost);
    failures.check("unexpected lines", &ledger.strange);
    let dups = check_deliveries(&ledger, &cluster, &mut failures);
    print_duplicates("cancel-vs-fire", &ledger, &cluster, &dups);
    let moved = after
        .iter()
        .filter(|r| b_shards.contains(&r.shard) && r.owner.as_deref() != Some("b"))
        .count();
    eprintln!(
        "cancel-vs-fire: totals {totals:?}; duplicates {dups:?}; {moved} of b's shards changed owner meanwhile"
    );
    let fired_or_gone = totals.contains_key("fired") || totals.contains_key("notfound");
    if !totals.contains_key("cancelled") || !fired_or_gone {
        eprintln!(
            "cancel-vs-fire: note: one outcome never occurred in 4 rounds (timing), not a failure"
        );
    }
    failures.assert_none(&cluster);
}

// ---------------------------------------------------------------------------
// 4. The database restarts under running nodes

/// One id's schedule attempts in the restart test.
#[derive(Debug, Default)]
struct Attempts {
    node: usize,
    deadline_ms: u64,
    /// When each `s` line was handed over, and when its answer came.
    sends: Vec<Duration>,
    answers: Vec<(Duration, String)>,
    /// Any answer so far was `indoubt`: the row may exist until a retry says.
    in_doubt: bool,
    final_answer: Option<String>,
}

#[test]
fn database_restart_mid_run() {
    let _serial = serial();
    let Some(restart) = pg::restart_command() else {
        return;
    };
    let Some(db) = TestSchema::new("ct_restart") else {
        return;
    };
    // Shorter than the outage of a fast restart (0.2-0.6 s measured), so the
    // nodes must answer some schedules with `unavailable` or `indoubt`
    // instead of riding it out.
    let op_timeout_ms = env_u64("DUEWHEEL_CLUSTER_OP_TIMEOUT_MS", 100);
    // The bound on any answer: the op timeout plus a margin for a backlog.
    let answer_bound = Duration::from_millis(op_timeout_ms + 7_000);
    let rate = env_u64("DUEWHEEL_CLUSTER_RESTART_RATE", 300).max(1);
    let op = op_timeout_ms.to_string();
    let cluster = Cluster::new(
        &bin(),
        &db.name,
        &["a", "b"],
        node_args(&db, &["--op-timeout-ms", &op]),
    );
    for node in 0..2 {
        cluster.start(node);
    }
    for node in 0..2 {
        cluster.wait_ready(node, 1, READY);
    }
    let mut client = db.client();
    poll_shards(&mut client, Duration::from_secs(30), all_owned).expect("all shards owned");
    drop(client);

    let stop = AtomicBool::new(false);
    let attempts: Mutex<BTreeMap<u64, Attempts>> = Mutex::new(BTreeMap::new());
    let mut failures = Failures::default();
    let (restart_from, restart_to) = thread::scope(|s| {
        s.spawn(|| {
            let mut cursor = 0usize;
            let start = Instant::now();
            let mut next_id = 1u64;
            let mut rng = Rng::from_env("DUEWHEEL_CLUSTER_SEED", "database_restart_mid_run");
            let mut retries: Vec<(Instant, u64)> = Vec::new();
            loop {
                let stopping = stop.load(Ordering::SeqCst);
                let mut texts = [String::new(), String::new()];
                let mut sent_ids: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
                let mut map = lock(&attempts);
                for e in cluster.log.since(&mut cursor) {
                    let (id, answer) = match &e.line {
                        Line::Ok(id) => (*id, "ok".to_string()),
                        Line::Err {
                            id: Some(id), kind, ..
                        } => (*id, kind.clone()),
                        _ => continue,
                    };
                    let Some(t) = map.get_mut(&id) else { continue };
                    t.answers.push((e.at, answer.clone()));
                    match answer.as_str() {
                        "indoubt" => {
                            t.in_doubt = true;
                            retries.push((Instant::now() + Duration::from_millis(300), id));
                        }
                        // Refused: definitely not stored by *this* attempt;
                        // an earlier in-doubt one still needs a retry.
                        "unavailable" if t.in_doubt => {
                            retries.push((Instant::now() + Duration::from_millis(500), id));
                        }
                        _ => t.final_answer = Some(answer),
                    }
                }
                retries.retain(|&(at, id)| {
                    if Instant::now() < at {
                        return true;
                    }
                    let t = map.get_mut(&id).unwrap();
                    texts[t.node].push_str(&schedule_line(id, t.deadline_ms));
                    sent_ids[t.node].push(id);
                    false
                });
                if !stopping {
                    let due = start.elapsed().as_millis() as u64 * rate / 1_000;
                    while next_id <= due {
                        let node = (next_id % 2) as usize;
                        let deadline_ms = wall_ms() + rng.range(300, 3_000);
                        texts[node].push_str(&schedule_line(next_id, deadline_ms));
                        sent_ids[node].push(next_id);
                        map.insert(
                            next_id,
                            Attempts {
                                node,
                                deadline_ms,
                                ..Attempts::default()
                            },
                        );
                        next_id += 1;
                    }
                }
                for (node, text) in texts.into_iter().enumerate() {
                    if text.is_empty() {
                        continue;
                    }
                    cluster.send(node, text).expect("both nodes run");
                    for id in &sent_ids[node] {
                        map.get_mut(id).unwrap().sends.push(cluster.log.now());
                    }
                }
                let unresolved = map.values().filter(|t| t.final_answer.is_none()).count();
                drop(map);
                if stopping && retries.is_empty() && unresolved == 0 {
                    return;
                }
                if stopping && retries.is_empty() {
                    // Waiting only for answers: they are bounded below.
                    let oldest = lock(&attempts)
                        .values()
                        .filter(|t| t.final_answer.is_none())
                        .filter_map(|t| t.sends.last().copied())
                        .min();
                    if oldest.is_some_and(|at| cluster.log.now() > at + answer_bound * 3) {
                        return;
                    }
                }
                thread::sleep(Duration::from_millis(5));
            }
        });

        thread::sleep(Duration::from_secs(3));
        let from = cluster.log.now();
        let status = std::process::Command::new("sh")
            .args(["-c", &restart])
            .stdout(Stdio::null())
            .status()
            .expect("run DUEWHEEL_PG_RESTART");
        let to = cluster.log.now();
        assert!(status.success(), "`{restart}` failed: {status}");
        thread::sleep(Duration::from_secs(8));
        stop.store(true, Ordering::SeqCst);
        (from, to)
    });
    let attempts = attempts.into_inner().unwrap();

    // Answers: every send answered, each within the bound.
    let mut ledger = Ledger::default();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut slow = Vec::new();
    let mut unanswered = Vec::new();
    let mut max_latency = Duration::ZERO;
    let mut oks_after = 0usize;
    let mut bad = Vec::new();
    let mut retried: BTreeMap<&str, usize> = BTreeMap::new();
    for (&id, t) in &attempts {
        ledger.sent.insert(
            id,
            Sent {
                deadline_ms: t.deadline_ms,
                node: t.node,
                inc: 1,
            },
        );
        for (k, at) in t.sends.iter().enumerate() {
            match t.answers.get(k) {
                Some((answered, kind)) => {
                    *counts.entry(kind.clone()).or_default() += 1;
                    let latency = *answered - *at;
                    max_latency = max_latency.max(latency);
                    if latency > answer_bound {
                        slow.push(format!("{id} attempt {k}: {kind} after {latency:?}"));
                    }
                    if kind == "ok" && *at > restart_to {
                        oks_after += 1;
                    }
                }
                None => unanswered.push(format!("{id} attempt {k} sent at {at:?}")),
            }
        }
        // The first answer is ok, unavailable or indoubt; `duplicate` only
        // for the retry of an in-doubt line (it was stored after all).
        let first = t.answers.first().map(|(_, a)| a.as_str());
        if !matches!(first, None | Some("ok" | "unavailable" | "indoubt")) {
            bad.push(format!("{id}: first answer {first:?}: {t:?}"));
        }
        match t.final_answer.as_deref() {
            None => {}
            Some("ok") if t.in_doubt => *retried.entry("ok").or_default() += 1,
            Some("duplicate") if t.in_doubt => *retried.entry("duplicate").or_default() += 1,
            Some("ok") => {}
            Some("unavailable") if !t.in_doubt => {}
            Some(other) => bad.push(format!("{id}: final answer {other}: {t:?}")),
        }
    }
    failures.check(
        &format!("answer slower than op-timeout + 7 s = {answer_bound:?}"),
        &slow,
    );
    failures.check("schedule never answered (a hang)", &unanswered);
    failures.check("answer out of place", &bad);
    if oks_after == 0 {
        failures.0.push(
            "no `ok` for a schedule sent after the restart: the nodes did not recover".into(),
        );
    }

    // Every stored timer fires; nothing refused does. The cursor is taken
    // under the same lock as the entries noted: read apart, an `ev` line
    // that arrived in between was skipped for good and showed as a timer
    // "answered ok, never delivered" (seen once in CI, id 2822).
    ledger.cursor = cluster.log.with(|entries| {
        for e in entries {
            if let Line::Ev(_) = e.line {
                ledger.note(&cluster, e);
            }
        }
        entries.len()
    });
    let stored: Vec<u64> = attempts
        .iter()
        .filter(|(_, t)| matches!(t.final_answer.as_deref(), Some("ok") | Some("duplicate")))
        .map(|(&id, _)| id)
        .collect();
    let max_deadline = stored
        .iter()
        .map(|id| attempts[id].deadline_ms)
        .max()
        .unwrap_or(0);
    sleep_until_wall(max_deadline + TTL_MS + 3_000);
    let wait_by = Instant::now() + Duration::from_secs(60);
    loop {
        for e in cluster.log.since(&mut ledger.cursor) {
            if let Line::Ev(_) = e.line {
                ledger.note(&cluster, &e);
            }
        }
        if ledger.undelivered(&stored).is_empty() || Instant::now() > wait_by {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    quit_all(&cluster, &mut failures);
    for e in cluster.log.since(&mut ledger.cursor) {
        if let Line::Ev(_) = e.line {
            ledger.note(&cluster, &e);
        }
    }
    let lost: Vec<String> = ledger
        .undelivered(&stored)
        .iter()
        .map(|id| format!("{id} {:?}", attempts[id]))
        .collect();
    failures.check("answered ok, never delivered", &lost);
    let refused_fired: Vec<String> = attempts
        .iter()
        .filter(|(id, t)| {
            !t.in_doubt
                && t.final_answer.as_deref() == Some("unavailable")
                && ledger.evs.contains_key(id)
        })
        .map(|(id, t)| format!("{id} {t:?}"))
        .collect();
    failures.check(
        "answered unavailable (not stored) yet delivered",
        &refused_fired,
    );
    let dups = check_deliveries(&ledger, &cluster, &mut failures);
    print_duplicates("restart", &ledger, &cluster, &dups);
    let in_doubt = attempts.values().filter(|t| t.in_doubt).count();
    eprintln!(
        "restart: `{restart}` took {:?} ({:?}..{:?}); {} ids, answers {counts:?}, max answer latency {max_latency:?}, {in_doubt} ids in doubt (retries resolved as {retried:?}), {oks_after} oks after the restart, {} stored, duplicates {dups:?}",
        restart_to - restart_from,
        restart_from,
        restart_to,
        attempts.len(),
        stored.len()
    );
    failures.assert_none(&cluster);
}

// ---------------------------------------------------------------------------
// 5. Bad input at start-up

fn as_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs `duewheel <args>` with stdin closed and returns (exit code, stderr,
/// how long it took); kills it after `limit`.
fn run_node(args: &[&str], limit: Duration) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    let mut child = std::process::Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let status = wait_timeout(&mut child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let took = start.elapsed();
    (status.and_then(|s| s.code()), reader.join().unwrap(), took)
}

#[test]
fn bad_input_is_a_clear_startup_error() {
    let _serial = serial();
    let limit = Duration::from_secs(30);
    let base = |pg: &str, schema: &str| -> Vec<String> {
        [
            "node",
            "--pg",
            pg,
            "--node-id",
            "n1",
            "--schema",
            schema,
            "--shards",
            "64",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut failures = Vec::new();
    let mut expect = |what: &str,
                      args: &[&str],
                      code: i32,
                      within: Duration,
                      needles: &[String]| {
        let (got, stderr, took) = run_node(args, limit);
        eprintln!(
            "bad input: {what}: exit {got:?} after {took:?}: {}",
            stderr.trim()
        );
        // Log lines (timestamped: the node's tracing output, e.g. a warning
        // about a password file) may come before the error.
        let first = stderr
            .lines()
            .find(|l| !l.starts_with(|c: char| c.is_ascii_digit()))
            .unwrap_or("");
        if got != Some(code) || !first.starts_with("error:") || took > within {
            failures.push(format!(
                "{what}: want exit {code} with `error: ...` within {within:?}, got {got:?} after {took:?}: {stderr:?}"
            ));
        }
        for n in needles {
            if !stderr.contains(n.as_str()) {
                failures.push(format!("{what}: stderr does not name {n:?}: {stderr:?}"));
            }
        }
    };

    // No database needed for these three.
    expect(
        "malformed DSN",
        &as_refs(&base("host=/tmp port=not-a-port", "ct_bad")),
        2,
        limit,
        &[],
    );
    expect(
        "unreachable database",
        &as_refs(&base("host=/nonexistent port=1", "ct_bad")),
        3,
        Duration::from_secs(10),
        &[],
    );
    let mut no_id = base("host=/nonexistent port=1", "ct_bad");
    no_id.drain(3..5);
    expect("missing --node-id", &as_refs(&no_id), 2, limit, &[]);

    if let Some(db) = TestSchema::new("ct_newer") {
        // A node creates the schema (stdin closed: it exits at once), so the
        // version is the binary's own, even with DUEWHEEL_NODE_BIN.
        let args = base(&db.dsn, &db.name);
        let (code, stderr, _) = run_node(&as_refs(&args), limit);
        assert_eq!(code, Some(0), "a node on a fresh schema: {stderr}");
        let found: i32 = db
            .client()
            .query_one(
                "UPDATE duewheel_schema SET version = version + 1 RETURNING version",
                &[],
            )
            .unwrap()
            .get(0);
        if std::env::var("DUEWHEEL_NODE_BIN").is_err() {
            assert_eq!(found, SCHEMA_VERSION + 1);
        }
        expect(
            "schema newer than this build",
            &as_refs(&args),
            3,
            limit,
            &[found.to_string(), (found - 1).to_string()],
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
