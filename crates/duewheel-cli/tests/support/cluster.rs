//! `duewheel node` processes under a test's control, and the one log their
//! output goes to.
//!
//! A [`Cluster`] holds a fixed set of node *slots* (`n1`, `n2`, ... — the
//! `--node-id`); each slot runs at most one process at a time, its
//! *incarnation* counting restarts. Every process is a
//! `duewheel_testkit::process::NodeProcess`, whose reader thread parses each
//! stdout line into the shared [`Log`], stamped on receipt; its stdin is
//! handed to a writer thread fed by a channel (so a test never blocks on a
//! stopped node's full pipe). The log is append-only: an index into it is a point in
//! the run's receipt order. Lines a node wrote before it died stay in its pipe
//! and still reach the log (the reader runs until EOF).
//!
//! Dropping a `Cluster` SIGKILLs and reaps every process it still runs, so a
//! panicking test leaves no node behind.
// Each test crate that includes this file uses only part of it.
#![allow(dead_code)]

use duewheel_testkit::process::{NodeProcess, Stderr};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the node's clock (no
/// `--clock-origin-ms`), in which deadlines and `fired_at_ms` are written.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A `u64` from the environment, or `default`.
pub(crate) fn env_u64(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Locks `m`, ignoring poison: a panicking test thread must not hide the
/// state the Drop guards need to clean up.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) use duewheel_testkit::protocol::{Command, Ev, Line};

/// One received line: which slot and incarnation wrote it, and when it
/// arrived (since the cluster was created, and as wall-clock ms).
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) node: usize,
    pub(crate) inc: u32,
    pub(crate) at: Duration,
    pub(crate) wall_ms: u64,
    pub(crate) line: Line,
}

/// Every line of every node, in receipt order.
pub(crate) struct Log {
    entries: Mutex<Vec<Entry>>,
    grew: Condvar,
    start: Instant,
}

impl Log {
    fn new() -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
            grew: Condvar::new(),
            start: Instant::now(),
        }
    }

    /// Time since the log (the cluster) was created.
    pub(crate) fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn push(&self, node: usize, inc: u32, line: Line) {
        let entry = Entry {
            node,
            inc,
            at: self.start.elapsed(),
            wall_ms: wall_ms(),
            line,
        };
        lock(&self.entries).push(entry);
        self.grew.notify_all();
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// The entries after `*cursor`, advancing it.
    pub(crate) fn since(&self, cursor: &mut usize) -> Vec<Entry> {
        let entries = lock(&self.entries);
        let new = entries[*cursor..].to_vec();
        *cursor = entries.len();
        new
    }

    /// Runs `f` over all entries so far.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&[Entry]) -> R) -> R {
        f(&lock(&self.entries))
    }

    /// Waits until `f` over the entries from index `from` on returns `Some`,
    /// or `timeout` passes (`None`).
    pub(crate) fn wait_for<R>(
        &self,
        from: usize,
        timeout: Duration,
        mut f: impl FnMut(&[Entry]) -> Option<R>,
    ) -> Option<R> {
        let deadline = Instant::now() + timeout;
        let mut entries = lock(&self.entries);
        loop {
            if let Some(r) = f(&entries[from.min(entries.len())..]) {
                return Some(r);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            entries = self
                .grew
                .wait_timeout(entries, left.min(Duration::from_millis(100)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// One running node process.
struct NodeProc {
    process: NodeProcess,
    inc: u32,
    started: Instant,
    lines: Option<mpsc::Sender<String>>,
    writer: Option<JoinHandle<()>>,
}

impl NodeProc {
    /// Closes stdin, waits for the process (killing it after `timeout`) and
    /// for its reader to reach EOF. `None` if it had to be killed.
    fn finish(mut self, timeout: Duration) -> Option<ExitStatus> {
        self.lines = None; // the writer drains, then drops stdin: EOF
        let status = self.process.wait_timeout(timeout);
        self.reap();
        status
    }

    fn reap(&mut self) {
        self.lines = None;
        // SIGKILL unless it exited, reap, and join the reader: all it
        // wrote is in the log.
        let _ = self.process.kill();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.reap();
    }
}

/// Polls `child` until it exits or `timeout` passes.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Default)]
struct Slot {
    proc: Option<NodeProc>,
    /// Incarnations started so far (the running one's number, if running).
    started: u32,
}

/// A set of node slots sharing one log.
pub(crate) struct Cluster {
    pub(crate) log: Arc<Log>,
    bin: PathBuf,
    names: Vec<String>,
    args: Vec<String>,
    dir: PathBuf,
    slots: Vec<Mutex<Slot>>,
}

impl Cluster {
    /// Slots named `names` (the `--node-id`s), each started as
    /// `bin <args> --node-id <name>`. Stderr of each process goes to a file
    /// under a temporary directory named after `tag`.
    pub(crate) fn new(bin: &str, tag: &str, names: &[&str], args: Vec<String>) -> Self {
        let dir = std::env::temp_dir().join(format!("duewheel-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            log: Arc::new(Log::new()),
            bin: PathBuf::from(bin),
            names: names.iter().map(|n| n.to_string()).collect(),
            args,
            dir,
            slots: names.iter().map(|_| Mutex::new(Slot::default())).collect(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn name(&self, node: usize) -> &str {
        &self.names[node]
    }

    fn stderr_path(&self, node: usize, inc: u32) -> PathBuf {
        self.dir.join(format!("{}.{inc}.stderr", self.names[node]))
    }

    /// Starts a new incarnation in `node`'s slot (which must be empty) and
    /// returns its number (1 for the first).
    pub(crate) fn start(&self, node: usize) -> u32 {
        let mut slot = lock(&self.slots[node]);
        assert!(
            slot.proc.is_none(),
            "{} is already running",
            self.names[node]
        );
        slot.started += 1;
        let inc = slot.started;
        let log = Arc::clone(&self.log);
        let mut process = NodeProcess::spawn(
            &self.bin,
            &self.args,
            &self.names[node],
            Stderr::File(self.stderr_path(node, inc)),
            move |line| {
                // The end of stdout needs no entry: the reader's join says it.
                if let Some(line) = line {
                    log.push(node, inc, line);
                }
            },
        )
        .expect("spawn duewheel node");
        let mut stdin = process.take_stdin().expect("a stdin pipe");
        let (tx, rx) = mpsc::channel::<String>();
        let writer = thread::spawn(move || {
            for text in rx {
                if stdin.write_all(text.as_bytes()).is_err() || stdin.flush().is_err() {
                    break; // the process died; what is left is lost with it
                }
            }
        });
        slot.proc = Some(NodeProc {
            process,
            inc,
            started: Instant::now(),
            lines: Some(tx),
            writer: Some(writer),
        });
        inc
    }

    /// The running incarnation of `node`, if any.
    pub(crate) fn live(&self, node: usize) -> Option<u32> {
        lock(&self.slots[node]).proc.as_ref().map(|p| p.inc)
    }

    /// How long `node`'s running incarnation has been up.
    pub(crate) fn uptime(&self, node: usize) -> Option<Duration> {
        lock(&self.slots[node])
            .proc
            .as_ref()
            .map(|p| p.started.elapsed())
    }

    /// The process id of `node`'s running incarnation.
    pub(crate) fn pid(&self, node: usize) -> Option<u32> {
        lock(&self.slots[node])
            .proc
            .as_ref()
            .map(|p| p.process.pid())
    }

    /// Hands `text` (whole lines) to `node`'s running incarnation; returns
    /// which incarnation took it, or `None` if none runs. Never blocks on the
    /// process: a stopped node's lines wait in the channel.
    pub(crate) fn send(&self, node: usize, text: String) -> Option<u32> {
        let slot = lock(&self.slots[node]);
        let proc = slot.proc.as_ref()?;
        proc.lines.as_ref()?.send(text).ok()?;
        Some(proc.inc)
    }

    /// SIGKILLs `node`'s running incarnation, reaps it and waits until all it
    /// wrote is in the log. Returns the incarnation killed.
    pub(crate) fn kill9(&self, node: usize) -> Option<u32> {
        let proc = lock(&self.slots[node]).proc.take()?;
        let inc = proc.inc;
        drop(proc); // Drop kills, waits and joins the reader
        Some(inc)
    }

    /// Sends `signal` (`STOP`, `CONT`) to `node`'s process with kill(1)
    /// (the tests forbid `unsafe`, so no libc).
    pub(crate) fn signal(&self, node: usize, signal: &str) {
        let pid = self.pid(node).expect("node running");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// Waits for `node`'s incarnation `inc` to print `ready <name>`.
    pub(crate) fn wait_ready(&self, node: usize, inc: u32, timeout: Duration) {
        let ready = self.log.wait_for(0, timeout, |entries| {
            entries
                .iter()
                .any(|e| e.node == node && e.inc == inc && matches!(e.line, Line::Ready(_)))
                .then_some(())
        });
        if ready.is_none() {
            panic!(
                "{} (incarnation {inc}) not ready within {timeout:?}; stderr:\n{}",
                self.names[node],
                self.stderr_tail(node, inc)
            );
        }
    }

    /// Asks `node` for a `stats` line and returns it.
    pub(crate) fn stats(&self, node: usize, timeout: Duration) -> BTreeMap<String, i64> {
        let from = self.log.len();
        let inc = self
            .send(node, format!("{}\n", Command::Stats))
            .expect("node running");
        self.log
            .wait_for(from, timeout, |entries| {
                entries.iter().find_map(|e| match &e.line {
                    Line::Stats(kv) if e.node == node && e.inc == inc => Some(
                        kv.iter()
                            .map(|(k, v)| (k.clone(), i64::try_from(*v).unwrap_or(i64::MAX)))
                            .collect(),
                    ),
                    _ => None,
                })
            })
            .unwrap_or_else(|| panic!("{}: no stats line within {timeout:?}", self.names[node]))
    }

    /// Sends `quit`, closes stdin and waits for the exit (killing the
    /// process after `timeout`: `None`).
    pub(crate) fn quit(&self, node: usize, timeout: Duration) -> Option<ExitStatus> {
        let proc = lock(&self.slots[node]).proc.take()?;
        if let Some(lines) = &proc.lines {
            let _ = lines.send(format!("{}\n", Command::Quit));
        }
        proc.finish(timeout)
    }

    /// The last lines of what incarnation `inc` of `node` wrote to stderr.
    pub(crate) fn stderr_tail(&self, node: usize, inc: u32) -> String {
        let text = std::fs::read_to_string(self.stderr_path(node, inc)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Where the stderr files are (printed when a test fails).
    pub(crate) fn stderr_dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for slot in &self.slots {
            drop(lock(slot).proc.take());
        }
        if thread::panicking() {
            eprintln!("node stderr kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// SplitMix64: a seeded, reproducible source of the tests' random choices
/// (no `rand` dependency).
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded from `var` if set, else from the clock; prints the seed so a
    /// failing run can be repeated.
    pub(crate) fn from_env(var: &str, what: &str) -> Self {
        let seed = std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{what}: seed {seed} (repeat with {var}={seed})");
        Self(seed)
    }

    pub(crate) fn fork(&mut self) -> Self {
        Self(self.next_u64())
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`lo` if the range is empty).
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo)
        }
    }

    /// True with probability `percent`/100.
    pub(crate) fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}
