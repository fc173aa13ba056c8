//! Dispatch cost measured in CPU time per thread, which a loaded machine
//! distorts far less than wall time: 1M expiries due over 4 ticks, one
//! clock jump, drained by one thread per group (1 and 3 groups). For each
//! thread that works (the dispatcher, the thread that stepped the clock, the
//! consumers) it prints the CPU milliseconds it ran (from
//! `/proc/thread-self/schedstat`, nanoseconds), and the throughput the
//! busiest thread allows: events per second if every thread had a core of
//! its own. Wall time and `/proc/loadavg` are printed beside them. The
//! 3-group run is repeated with `String` payloads, whose copies allocate.
//!
//! `cargo run --release --example dispatch_cpu [repeats]`

use duewheel::{Engine, ManualClock};
use std::thread;
use std::time::{Duration, Instant};

const N: u64 = 1_000_000;
const T0: u64 = 1_700_000_000_000;

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

/// CPU nanoseconds the thread at `path` (a `schedstat` file) has run.
fn cpu_ns(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The `schedstat` path of this process's dispatcher thread.
fn dispatcher_schedstat() -> Option<String> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim().starts_with("duewheel-dispat") {
            return Some(task.path().join("schedstat").display().to_string());
        }
    }
    None
}

/// One run with payloads made by `payload` (a `u64`, or a 40-byte
/// `String` whose copies allocate).
fn run<P: Clone + Send + 'static>(
    groups: &[&str],
    payload: impl Fn(u64) -> P,
) -> Result<(), Box<dyn std::error::Error>> {
    let clock = ManualClock::new(T0);
    let mut builder = Engine::builder()
        .clock(clock.clone())
        .shards(2)
        .channel_capacity(1 << 20)
        .batch_size(4_096);
    for g in groups {
        builder = builder.group(*g);
    }
    let engine: Engine<u64, P> = builder.build()?;
    let s = engine.scheduler();
    for id in 0..N {
        s.schedule(id, Duration::from_millis(1 + id % 4), payload(id))
            .map_err(|e| e.to_string())?;
    }
    let consumers: Vec<_> = groups
        .iter()
        .map(|g| {
            let mut consumer = engine.subscribe(g).unwrap();
            thread::spawn(move || {
                let began = cpu_ns("/proc/thread-self/schedstat");
                for _ in 0..N {
                    consumer.recv().expect("the engine runs");
                }
                cpu_ns("/proc/thread-self/schedstat") - began
            })
        })
        .collect();
    let dispatcher = dispatcher_schedstat().ok_or("no dispatcher thread")?;
    let dispatcher_began = cpu_ns(&dispatcher);
    let main_began = cpu_ns("/proc/thread-self/schedstat");
    let began = Instant::now();
    clock.advance(Duration::from_millis(10));
    let stepper_ns = cpu_ns("/proc/thread-self/schedstat") - main_began;
    let consumer_ns: Vec<u64> = consumers
        .into_iter()
        .map(|c| c.join().expect("a consumer panicked"))
        .collect();
    let wall = began.elapsed();
    let dispatcher_ns = cpu_ns(&dispatcher) - dispatcher_began;
    drop(engine.shutdown());
    let busiest = consumer_ns
        .iter()
        .copied()
        .chain([dispatcher_ns + stepper_ns])
        .max()
        .unwrap_or(1)
        .max(1);
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "{} group(s), {}: dispatcher {:>6.1} ms + stepping thread {:>5.1} ms CPU, consumers {:?} ms CPU; \
         busiest thread allows {:>5.2} M events/s; wall {:>6.1} ms ({:.2} M/s); loadavg {}",
        groups.len(),
        std::any::type_name::<P>()
            .rsplit("::")
            .next()
            .unwrap_or("?"),
        ms(dispatcher_ns),
        ms(stepper_ns),
        consumer_ns
            .iter()
            .map(|&n| (ms(n) * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        N as f64 / busiest as f64 * 1e3,
        wall.as_secs_f64() * 1e3,
        N as f64 / wall.as_secs_f64() / 1e6,
        loadavg()
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repeats: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 5,
    };
    println!("1M expiries over 4 ticks, 2 shards, batch 4096, one clock jump");
    for _ in 0..repeats {
        run(&["a"], |id| id)?;
        run(&["a", "b", "c"], |id| id)?;
        run(&["a", "b", "c"], |id| {
            format!("order {id:>10} pending payment")
        })?;
    }
    Ok(())
}
