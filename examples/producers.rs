//! Schedule + cancel from 1 and from 2 producer threads with 1M timers
//! pending (8 shards), the workload of `benches/engine.rs`'s
//! `schedule_cancel_1M_pending`, measured in wall time *and* in CPU time
//! per operation (each producer's `/proc/thread-self/schedstat`). On a
//! loaded machine two threads rarely get two cores, so the wall-clock
//! speed-up says as much about the machine as about the engine; the CPU
//! nanoseconds per operation say whether the engine itself slows down when
//! a second producer shares its shards (cache lines moving between cores,
//! lock waits).
//!
//! `cargo run --release --example producers [repeats] [shards]`

use duewheel::{Engine, ManualClock};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const T0: u64 = 1_700_000_000_000;
const WINDOW_MS: u64 = 30 * 60 * 1_000;
const OPS: u64 = 200_000;

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Wall time and the producers' total CPU time for `threads` producers
/// doing `OPS` schedule + cancel pairs each.
fn run(s: &duewheel::Scheduler<u64, u64>, threads: u64, round: u64) -> (Duration, u64) {
    let start = Arc::new(Barrier::new(threads as usize + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (s, start) = (s.clone(), start.clone());
            let base = 10_000_000 + (round * 16 + t) * OPS;
            thread::spawn(move || {
                start.wait();
                let began = cpu_ns();
                for id in base..base + OPS {
                    let d = Duration::from_millis(1 + id % WINDOW_MS);
                    s.schedule(id, d, id).expect("room for it");
                    let _ = s.cancel(&id).expect("in memory");
                }
                cpu_ns() - began
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    let cpu: u64 = workers
        .into_iter()
        .map(|w| w.join().expect("a producer panicked"))
        .sum();
    (began.elapsed(), cpu)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let repeats: u64 = args.next().map_or(Ok(5), |a| a.parse())?;
    let shards: usize = args.next().map_or(Ok(8), |a| a.parse())?;
    let engine: Engine<u64, u64> = Engine::builder()
        .clock(ManualClock::new(T0))
        .shards(shards)
        .group("g")
        .build()?;
    let s = engine.scheduler();
    for id in 0..1_000_000u64 {
        let d = Duration::from_millis(1 + id.wrapping_mul(0x9e37_79b9_7f4a_7c15) % WINDOW_MS);
        s.schedule(id, d, id).map_err(|e| e.to_string())?;
    }
    println!("schedule + cancel, 1M pending, {shards} shards, {OPS} pairs per producer");
    let mut round = 0;
    for _ in 0..repeats {
        let mut line = String::new();
        let mut rates = Vec::new();
        for threads in [1u64, 2] {
            round += 1;
            let (wall, cpu) = run(&s, threads, round);
            let pairs = (threads * OPS) as f64;
            let rate = pairs / wall.as_secs_f64() / 1e6;
            rates.push(rate);
            line += &format!(
                "{threads} thread(s): {rate:.2} M pairs/s wall, {:.0} ns CPU per pair;  ",
                cpu as f64 / pairs
            );
        }
        println!(
            "{line}2/1 wall {:.2}x   loadavg {}",
            rates[1] / rates[0],
            loadavg()
        );
    }
    Ok(())
}
