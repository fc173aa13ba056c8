//! The durable mode's headline figures in one run, each printed beside
//! `/proc/loadavg`: acknowledged (fsynced) single-call schedules from 64
//! threads, `schedule_batch` calls of 100 from 64 threads, the log alone
//! (`Wal::append` + `wait` from 64 threads), and recovery of N pending
//! timers at open.
//!
//! `cargo run --release --example wal_throughput -- [RECOVER_N]`
//! (default 1,000,000; `0` skips recovery). Data goes under the system temp
//! dir and is removed afterwards.
//!
//! `... -- recover N DIR` only times recovery: it fills DIR with N pending
//! timers if DIR holds none, and keeps it, so a profiler can watch the open
//! alone (`perf record -g target/release/examples/wal_throughput recover
//! 1000000 /tmp/r` twice: the second run is the open).

use duewheel::wal::{FsStorage, Storage, SyncPolicy, Wal, WalOptions};
use duewheel::{Engine, ManualClock};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const T0: u64 = 1_700_000_000_000;
const WINDOW: Duration = Duration::from_secs(1_800);
const THREADS: u64 = 64;

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "n/a".into())
}

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("duewheel-walt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn open(dir: &PathBuf, sync: SyncPolicy) -> Engine<u64, u64> {
    Engine::builder()
        .clock(ManualClock::new(T0))
        .group("orders")
        .max_pending(20_000_000)
        .sync_policy(sync)
        .checkpoint_every(Duration::from_secs(3_600))
        .durable(dir)
        .build()
        .expect("the bench directory opens")
}

/// Runs `work(t)` on `THREADS` threads released together; the elapsed time.
fn run(work: impl Fn(u64) + Send + Sync + 'static) -> Duration {
    let work = Arc::new(work);
    let start = Arc::new(Barrier::new(THREADS as usize + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (work, start) = (work.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                work(t);
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for t in threads {
        t.join().expect("a producer panicked");
    }
    began.elapsed()
}

fn report(what: &str, ops: u64, took: Duration, fsyncs: u64) {
    println!(
        "{what:<44} {:>10.0}/s  ({ops} in {:.2} s, {:.1} per fsync)  load {}",
        ops as f64 / took.as_secs_f64(),
        took.as_secs_f64(),
        ops as f64 / fsyncs.max(1) as f64,
        loadavg()
    );
}

/// Fills `path` with `n` pending timers and shuts down cleanly.
fn fill(path: &PathBuf, n: u64) {
    let engine = open(path, SyncPolicy::EveryMs(50));
    let s = engine.scheduler();
    let ids: Vec<u64> = (0..n).collect();
    for batch in ids.chunks(10_000) {
        let results = s.schedule_batch(batch.iter().map(|&id| {
            let d = Duration::from_millis(1 + id.wrapping_mul(0x9e37_79b9) % 1_800_000);
            (id, d, id)
        }));
        assert!(results.iter().all(Result::is_ok));
    }
    drop(s);
    drop(engine.shutdown());
}

/// Opens `path` and prints how long recovery took.
fn time_recovery(path: &PathBuf, n: u64) {
    let began = Instant::now();
    let engine = open(path, SyncPolicy::Always);
    let took = began.elapsed();
    let recovered = engine.recovered().map_or(0, |r| r.timers);
    assert_eq!(recovered as u64, n);
    println!(
        "{:<44} {:>10.3} s  load {}",
        format!("recovery of {n} pending (open)"),
        took.as_secs_f64(),
        loadavg()
    );
    drop(engine.shutdown());
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("recover") {
        let n: u64 = args
            .get(2)
            .ok_or("recover N DIR")?
            .replace('_', "")
            .parse()?;
        let path = PathBuf::from(args.get(3).ok_or("recover N DIR")?);
        let filled = std::fs::read_dir(&path).is_ok_and(|mut d| d.next().is_some());
        if filled {
            time_recovery(&path, n);
        } else {
            fill(&path, n);
            println!("filled {} with {n} pending timers", path.display());
        }
        return Ok(());
    }
    let recover_n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.replace('_', "").parse())
        .transpose()?
        .unwrap_or(1_000_000);

    let path = dir("single");
    let engine = open(&path, SyncPolicy::Always);
    let s = engine.scheduler();
    const PER_THREAD: u64 = 1_000;
    let fsyncs = duewheel::wal::process_fsyncs();
    let took = run(move |t| {
        for id in t * PER_THREAD..(t + 1) * PER_THREAD {
            s.schedule(id, WINDOW, id).expect("accepted");
        }
    });
    let fsyncs = duewheel::wal::process_fsyncs() - fsyncs;
    report(
        "acked single-call schedules, 64 threads",
        THREADS * PER_THREAD,
        took,
        fsyncs,
    );
    drop(engine.shutdown());
    let _ = std::fs::remove_dir_all(&path);

    let path = dir("batch");
    let engine = open(&path, SyncPolicy::Always);
    let s = engine.scheduler();
    const PER_BATCH_THREAD: u64 = 10_000;
    let fsyncs = duewheel::wal::process_fsyncs();
    let took = run(move |t| {
        let ids: Vec<u64> = (t * PER_BATCH_THREAD..(t + 1) * PER_BATCH_THREAD).collect();
        for batch in ids.chunks(100) {
            let results = s.schedule_batch(batch.iter().map(|&id| (id, WINDOW, id)));
            assert!(results.iter().all(Result::is_ok));
        }
    });
    let fsyncs = duewheel::wal::process_fsyncs() - fsyncs;
    report(
        "acked schedule_batch(100), 64 threads",
        THREADS * PER_BATCH_THREAD,
        took,
        fsyncs,
    );
    drop(engine.shutdown());
    let _ = std::fs::remove_dir_all(&path);

    let path = dir("raw");
    let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(&path)?);
    let (wal, _) = Wal::open(storage, WalOptions::default(), |_, _, _, _| {
        Ok::<(), Infallible>(())
    })?;
    let fsyncs = duewheel::wal::process_fsyncs();
    let for_threads = wal.clone();
    let took = run(move |t| {
        let body = [t as u8; 60]; // about an upsert of a u64 id and payload
        for _ in 0..PER_THREAD {
            let seq = for_threads.append(1, &body).expect("appended");
            for_threads.wait(seq).expect("durable");
        }
    });
    let fsyncs = duewheel::wal::process_fsyncs() - fsyncs;
    report(
        "Wal::append + wait alone, 64 threads",
        THREADS * PER_THREAD,
        took,
        fsyncs,
    );
    wal.close()?;
    drop(wal);
    let _ = std::fs::remove_dir_all(&path);

    if recover_n > 0 {
        let path = dir("recover");
        fill(&path, recover_n);
        time_recovery(&path, recover_n);
        let _ = std::fs::remove_dir_all(&path);
    }
    Ok(())
}
