//! A crash loop aimed at the log's own moments of danger: a child process
//! opens a durable engine on one directory, schedules and cancels while
//! checkpoints run back to back (each one rotates to a new segment: a
//! segment roll), and is killed with SIGKILL at a random moment, often
//! during its open (recovery, the new segment) and during a checkpoint.
//! The next child opens the same directory; at the end the parent opens it
//! once more. Opening must always succeed, and every schedule acknowledged
//! and not cancelled must still be pending.
//!
//! 40 kills in CI; `DUEWHEEL_CRASH_LOOP_KILLS=300 cargo test --release
//! --test crash_loop -- --nocapture` for the soak (result in
//! `docs/GUARANTEES.md`).

use duewheel::{Cancel, Deadline, Engine};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/wal_layout.rs"]
mod segment;

const CHILD_DIR: &str = "DUEWHEEL_CRASH_LOOP_DIR";
const CHILD_BASE: &str = "DUEWHEEL_CRASH_LOOP_BASE";
/// Deadlines an hour out: nothing fires during the loop, so every
/// acknowledged schedule must be found pending at the end.
const HOUR_MS: u64 = 3_600_000;

fn open_engine(dir: &Path) -> Result<Engine<u64, String>, duewheel::BuildError> {
    Engine::builder()
        .shards(2)
        .group("orders")
        .checkpoint_every(Duration::from_millis(1))
        .durable(dir)
        .build()
}

/// The child: runs only when the parent sets the environment.
#[test]
fn crash_loop_child() {
    let (Ok(dir), Ok(base)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_BASE)) else {
        return;
    };
    let base: u64 = base.parse().unwrap();
    // Markers on lines of their own: libtest's "test crash_loop_child ... "
    // has no newline of its own.
    println!("\no");
    // The lock of a directory a parent just closed can outlive its close
    // for a moment: a process the other test forked at that instant holds a
    // copy of the descriptor until its exec. Only that is retried.
    let mut tries = 0;
    let engine = loop {
        match open_engine(Path::new(&dir)) {
            Ok(engine) => break engine,
            Err(e) if tries < 100 && e.to_string().contains("locked") => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                println!("E {e}");
                std::process::exit(3);
            }
        }
    };
    println!("O");
    let s = engine.scheduler();
    let payload = "x".repeat(16);
    // A state worth a few milliseconds of checkpoint and recovery, so the
    // kills find those in progress; bounded, so the loop stays fast.
    let pending = engine.recovered().map_or(0, |r| r.timers);
    if pending < 15_000 {
        let deadline = s.now_ms() + HOUR_MS;
        let batch: Vec<_> = (0..3_000)
            .map(|i| (base + i, Deadline::at_unix_ms(deadline), payload.clone()))
            .collect();
        for (i, result) in s.schedule_batch(batch).into_iter().enumerate() {
            if result.is_ok() {
                println!("S {}", base + i as u64);
            }
        }
    }
    for i in 3_000.. {
        let id = base + i;
        let deadline = s.now_ms() + HOUR_MS;
        if s.schedule(id, Deadline::at_unix_ms(deadline), payload.clone())
            .is_ok()
        {
            println!("S {id}");
        }
        if i % 3 == 2 {
            let victim = id - 2;
            println!("c {victim}");
            if let Ok(Cancel::Cancelled(_)) = s.cancel(&victim) {
                println!("C {victim}");
            }
        }
    }
}

#[derive(Default)]
struct Ledger {
    scheduled: BTreeSet<u64>,
    cancelled: BTreeSet<u64>,
    /// A cancel whose answer the kill cut off: either outcome is right.
    in_doubt: BTreeSet<u64>,
}

impl Ledger {
    fn record(&mut self, line: &str) {
        let Some(id) = line.get(2..).and_then(|s| s.parse::<u64>().ok()) else {
            return; // a line cut by the kill
        };
        match line.as_bytes()[0] {
            b'S' => {
                self.scheduled.insert(id);
            }
            b'c' => {
                self.in_doubt.insert(id);
            }
            b'C' => {
                self.in_doubt.remove(&id);
                self.cancelled.insert(id);
            }
            _ => {}
        }
    }
}

/// What the directory showed right after a kill.
#[derive(Debug, Default)]
struct Tally {
    kills: u64,
    /// The child had started opening and not finished.
    during_open: u64,
    /// A `snapshot.tmp` was left: killed during a checkpoint.
    during_checkpoint: u64,
    /// A segment shorter than its header was left: killed while creating it.
    during_segment_creation: u64,
    /// Opens that succeeded (children and the final one).
    opens: u64,
    failures: Vec<String>,
}

fn spawn_child(dir: &Path, base: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_loop_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_BASE, base.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn inspect(dir: &Path, tally: &mut Tally) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let len = entry.metadata().map_or(0, |m| m.len());
        if name == "snapshot.tmp" {
            tally.during_checkpoint += 1;
        }
        if name.starts_with("wal-") && len < segment::HEADER_BYTES as u64 {
            tally.during_segment_creation += 1;
        }
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("duewheel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn killed_at_random_during_open_checkpoint_and_segment_roll_the_directory_always_opens() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let kills: u64 = std::env::var("DUEWHEEL_CRASH_LOOP_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let dir = temp_dir("crash-loop");
    let mut ledger = Ledger::default();
    let mut tally = Tally::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    // How long an open took, from the children that finished one.
    let mut open_us = 5_000u64;
    for iteration in 0..kills {
        let mut child = spawn_child(&dir, iteration * 10_000_000);
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send((Instant::now(), line));
            }
        });
        let mut lines = Vec::new();
        let give_up = Instant::now() + Duration::from_secs(60);
        let wait_for = |marker: &str, lines: &mut Vec<String>| -> Option<Instant> {
            let left = || give_up.saturating_duration_since(Instant::now());
            while let Ok((at, line)) = rx.recv_timeout(left()) {
                let found = line == marker;
                lines.push(line);
                if found {
                    return Some(at);
                }
            }
            None
        };
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // A third of the kills inside the open (recovery, the headerless
        // repair, the new segment), the rest among the checkpoints and
        // their segment rolls that follow.
        match seed % 3 {
            0 => {
                if let Some(began) = wait_for("o", &mut lines) {
                    let at = began + Duration::from_micros(seed / 3 % open_us.max(1));
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                }
            }
            phase => {
                if let Some(began) = wait_for("o", &mut lines)
                    && let Some(opened) = wait_for("O", &mut lines)
                {
                    let took = opened.duration_since(began).as_micros() as u64;
                    open_us = (open_us + took.max(100)) / 2;
                }
                let ms = if phase == 1 {
                    seed % 40
                } else {
                    40 + seed % 80
                };
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        let exited_alone = child.try_wait().unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        tally.kills += 1;
        reader.join().unwrap();
        lines.extend(rx.try_iter().map(|(_, line)| line));
        let (began, opened) = (
            lines.iter().any(|l| l == "o"),
            lines.iter().any(|l| l == "O"),
        );
        tally.opens += u64::from(opened);
        tally.during_open += u64::from(began && !opened);
        if let Some(error) = lines.iter().find(|l| l.starts_with("E ")) {
            tally.failures.push(format!("kill {iteration}: {error}"));
            break;
        }
        if let Some(status) = exited_alone {
            tally.failures.push(format!(
                "kill {iteration}: the child exited by itself: {status}"
            ));
            break;
        }
        for line in &lines {
            ledger.record(line);
        }
        inspect(&dir, &mut tally);
    }

    // Once more, in this process: it opens, and holds every acknowledged
    // schedule that was not cancelled.
    let mut lost = Vec::new();
    match open_engine(&dir) {
        Err(e) => tally.failures.push(format!("final open: {e}")),
        Ok(engine) => {
            tally.opens += 1;
            let s = engine.scheduler();
            for id in &ledger.scheduled {
                let pending = matches!(s.cancel(id), Ok(Cancel::Cancelled(_)));
                let cancelled = ledger.cancelled.contains(id);
                if pending == cancelled && !ledger.in_doubt.contains(id) {
                    lost.push(*id);
                }
            }
            drop(s);
            drop(engine.shutdown());
        }
    }
    eprintln!(
        "crash loop: {} kills ({} during open, {} during a checkpoint, {} during a segment's \
         creation), {} opens, {} failures; {} schedules and {} cancels acknowledged, {} wrong \
         after the last open",
        tally.kills,
        tally.during_open,
        tally.during_checkpoint,
        tally.during_segment_creation,
        tally.opens,
        tally.failures.len(),
        ledger.scheduled.len(),
        ledger.cancelled.len(),
        lost.len()
    );
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert!(lost.is_empty(), "wrong after the last open: {lost:?}");
    assert!(
        !ledger.scheduled.is_empty(),
        "no child got as far as a schedule"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_engine_killed_after_opening_beside_a_headerless_segment_opens_again() {
    // The reproducer: a clean shutdown, an empty `wal-(N+1).log`
    // beside the last segment (a crash while creating it), an engine that
    // opens, acknowledges a schedule and is killed; then open again.
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let dir = temp_dir("headerless");
    let engine = open_engine(&dir).unwrap();
    let s = engine.scheduler();
    for id in 0..10u64 {
        s.schedule(
            id,
            Deadline::at_unix_ms(s.now_ms() + HOUR_MS),
            "before".into(),
        )
        .unwrap();
    }
    drop(s);
    drop(engine.shutdown());
    let last = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| segment::number(&e.unwrap().file_name().to_string_lossy()))
        .max()
        .unwrap();
    std::fs::write(dir.join(segment::name(last + 1)), b"").unwrap();

    let mut child = spawn_child(&dir, 1_000);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = loop {
        let line = lines.next().expect("the child ran").unwrap();
        assert!(!line.starts_with("E "), "{line}");
        if let Some(id) = line.strip_prefix("S ") {
            break id.parse::<u64>().unwrap();
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();

    let engine = open_engine(&dir).unwrap_or_else(|e| panic!("the directory is bricked: {e}"));
    let s = engine.scheduler();
    for id in (0..10).chain([first]) {
        assert!(
            s.cancel(&id).unwrap().is_cancelled(),
            "acknowledged {id} lost"
        );
    }
    drop(s);
    drop(engine.shutdown());
    let _ = std::fs::remove_dir_all(&dir);
}
