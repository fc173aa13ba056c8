//! kill -9 loop (sled's crash tests): a child process schedules, cancels and
//! acks continuously on a durable engine and reports every call that
//! returned `Ok`; the parent kills it with SIGKILL at a random moment,
//! reopens the directory and checks: every acknowledged schedule that was not
//! later acknowledged-cancelled or acked fires; nothing fires early; nothing
//! acknowledged-cancelled fires; nothing acked comes again, whether it was
//! acked alone or in a batch (`ack_batch`: durable before it returns).
//!
//! 100 iterations in CI; `DUEWHEEL_KILL9_ITERATIONS=1000` for more.

use duewheel::Engine;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_DIR: &str = "DUEWHEEL_KILL9_CHILD_DIR";
const CHILD_BASE: &str = "DUEWHEEL_KILL9_BASE";

fn engine(dir: &str) -> Engine<u64, u64> {
    Engine::builder()
        .group("orders")
        .ack_timeout(Duration::from_millis(500))
        .durable(dir)
        .build()
        .expect("the directory recovers")
}

/// The child: runs only when the parent sets the environment.
#[test]
fn kill9_child() {
    let (Ok(dir), Ok(base)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_BASE)) else {
        return;
    };
    let base: u64 = base.parse().unwrap();
    let engine = engine(&dir);
    let mut orders = engine.subscribe("orders").unwrap();
    std::thread::spawn(move || {
        // Acks go one by one and in batches (`ack_batch`, one durable wait
        // for all): whatever is ready when an event arrives, up to 64.
        while let Ok(first) = orders.recv() {
            let mut batch = vec![first];
            while batch.len() < 64 {
                match orders.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
            for event in &batch {
                println!("F {} {} {}", event.id, event.deadline_ms, event.fired_at_ms);
                // Intent first: if the kill lands between a durable ack and
                // its report, the parent knows the outcome is in doubt.
                println!("a {}", event.id);
            }
            let results = match batch.as_slice() {
                [one] => vec![orders.ack(one)],
                many => {
                    let results = orders.ack_batch(many);
                    println!("B {}", results.iter().filter(|r| r.is_ok()).count());
                    results
                }
            };
            for (event, result) in batch.iter().zip(results) {
                if result.is_ok() {
                    println!("A {}", event.id);
                }
            }
        }
    });
    let s = engine.scheduler();
    for i in 0.. {
        let id = base + i;
        let delay = Duration::from_millis(1 + (i * 7_919) % 300);
        let deadline = s.now_ms() + delay.as_millis() as u64;
        if s.schedule(id, duewheel::Deadline::at_unix_ms(deadline), id)
            .is_ok()
        {
            println!("S {id} {deadline}");
        }
        if i % 3 == 2 {
            let victim = id - 2;
            println!("c {victim}");
            if let Ok(duewheel::Cancel::Cancelled(_)) = s.cancel(&victim) {
                println!("C {victim}");
            }
        }
    }
}

#[derive(Default)]
struct Ledger {
    /// Acknowledged schedules: id -> deadline.
    scheduled: BTreeMap<u64, u64>,
    cancelled: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    /// A cancel or ack was attempted but its answer was not seen: the kill
    /// may have landed after it became durable. Such an id may or may not
    /// fire.
    in_doubt: BTreeSet<u64>,
    /// Events acked through `ack_batch` calls of more than one event.
    batch_acked: u64,
}

impl Ledger {
    fn record(&mut self, line: &str) {
        let parts: Vec<u64> = line[2..]
            .split(' ')
            .filter_map(|p| p.parse().ok())
            .collect();
        match (line.as_bytes()[0], parts.as_slice()) {
            (b'S', [id, deadline]) => {
                self.scheduled.insert(*id, *deadline);
            }
            (b'c' | b'a', [id]) => {
                self.in_doubt.insert(*id);
            }
            (b'C', [id]) => {
                assert!(!self.acked.contains(id), "{id}: cancelled after its ack");
                self.in_doubt.remove(id);
                self.cancelled.insert(*id);
            }
            (b'F', [id, deadline, fired_at]) => {
                assert!(fired_at >= deadline, "{id} fired early in the child");
                assert!(
                    !self.cancelled.contains(id),
                    "{id} fired after its cancel was acknowledged"
                );
                assert!(!self.acked.contains(id), "{id} came again after its ack");
            }
            (b'A', [id]) => {
                self.in_doubt.remove(id);
                self.acked.insert(*id);
            }
            (b'B', [n]) => self.batch_acked += n,
            _ => {} // a line cut by the kill
        }
    }

    fn outstanding(&self) -> BTreeSet<u64> {
        self.scheduled
            .keys()
            .filter(|id| {
                !self.cancelled.contains(id)
                    && !self.acked.contains(id)
                    && !self.in_doubt.contains(id)
            })
            .copied()
            .collect()
    }
}

#[test]
fn kill9_loop_loses_no_acknowledged_deadline() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let iterations: u64 = std::env::var("DUEWHEEL_KILL9_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = std::env::temp_dir().join(format!("duewheel-kill9-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_str = dir.to_str().unwrap().to_string();
    let mut ledger = Ledger::default();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let (mut kills, mut redelivered) = (0u64, 0u64);
    for iteration in 0..iterations {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kill9_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, &dir_str)
            .env(CHILD_BASE, (iteration * 10_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(50 + seed % 250));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        for line in reader.join().unwrap() {
            if line.len() > 2 && line.as_bytes()[1] == b' ' {
                ledger.record(&line);
            }
        }

        // Reopen and watch every outstanding timer fire.
        let engine = engine(&dir_str);
        let mut orders = engine.subscribe("orders").unwrap();
        let mut outstanding = ledger.outstanding();
        let give_up = Instant::now() + Duration::from_secs(30);
        while !outstanding.is_empty() {
            let Ok(event) = orders.recv_timeout(Duration::from_millis(100)) else {
                assert!(
                    Instant::now() < give_up,
                    "never fired: {:?}",
                    outstanding.first()
                );
                continue;
            };
            assert!(
                event.fired_at_ms >= event.deadline_ms,
                "{} fired early after restart",
                event.id
            );
            assert!(
                !ledger.cancelled.contains(&event.id),
                "{}: acknowledged cancel fired",
                event.id
            );
            assert!(
                !ledger.acked.contains(&event.id),
                "{}: acked event came again",
                event.id
            );
            redelivered += u64::from(event.attempt > 1);
            orders.ack(&event).unwrap();
            outstanding.remove(&event.id);
            ledger.in_doubt.remove(&event.id);
            ledger.acked.insert(event.id);
        }
        drop(orders);
        drop(engine.shutdown());
    }
    eprintln!(
        "{kills} kills: {} schedules, {} cancels and {} acks acknowledged ({} of them in \
         batches), {} in doubt at a kill; every outstanding timer fired after restart \
         ({redelivered} redeliveries)",
        ledger.scheduled.len(),
        ledger.cancelled.len(),
        ledger.acked.len(),
        ledger.batch_acked,
        ledger.in_doubt.len()
    );
    assert!(ledger.batch_acked > 0, "no batch ack was exercised");
    let _ = std::fs::remove_dir_all(&dir);
}
