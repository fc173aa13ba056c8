//! duewheel side by side with the Rust timer crates and a binary heap: the
//! payment workload at 1M and 10M timers and the flash sale at 1M, one
//! process per contender and run, median of 3 runs.
//!
//! ```text
//! cargo run --release --example compare               # the table, printed
//! cargo run --release --example compare -- --write   # ... and into docs/BENCHMARKS.md
//! cargo run --release --example compare -- --contender heap --scenario payment --n 1000000
//! ```
//!
//! Without arguments it re-executes itself once per (contender, scenario,
//! size, run) with `--contender NAME --scenario S --n N`; each child runs one
//! contender, prints one JSON line and exits, so the counting allocator's
//! peak belongs to that contender alone. The parent prints the markdown
//! table; with `--write` it also rewrites the section of
//! `docs/BENCHMARKS.md` between `<!-- compare:begin -->` and
//! `<!-- compare:end -->` (a tracked file: never without being asked).

// The counting allocator needs `unsafe impl GlobalAlloc`; nothing else in
// this file is unsafe. The crate's lint table denies unsafe code and the
// library forbids it.
#![allow(unsafe_code)]

#[path = "../benches/peers/mod.rs"]
mod peers;

use peers::workload::{Scenario, Workload, check};
use peers::{Contender, NAMES, Visitor};
use serde::{Deserialize, Serialize};
use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Counts the bytes currently allocated and their peak.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

impl Counting {
    fn added(size: usize) {
        let now = CURRENT.fetch_add(size, Ordering::Relaxed) + size;
        if now > PEAK.load(Ordering::Relaxed) {
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
    }

    fn removed(size: usize) {
        CURRENT.fetch_sub(size, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees are ours; the counters are plain
// atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract (non-zero size), which
        // is `System.alloc`'s.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            Self::added(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            Self::added(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller passes a block this allocator (so `System`)
        // returned, with its layout.
        unsafe { System.dealloc(ptr, layout) };
        Self::removed(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller passes a block `System` returned, its layout and
        // a valid new size, which is `System.realloc`'s contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            Self::added(new_size);
            Self::removed(layout.size());
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs per contender, scenario and size.
const RUNS: usize = 3;

/// A child taking longer than this is killed and reported as not finishing.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// A contender goes on to 10M only if 10× its slowest 1M run fits in this.
const MAX_10M_RUN: Duration = Duration::from_secs(25);

/// What one child measured. `error` set means the exactly-once check (or
/// the driver) failed, and then no time is reported.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Sample {
    contender: String,
    scenario: String,
    n: usize,
    error: Option<String>,
    schedule_ns: f64,
    cancel_ns: f64,
    /// Schedule phase plus cancel phase, per timer scheduled.
    schedule_cancel_ns_per_timer: f64,
    drain_ms: f64,
    fired: usize,
    /// Contender bytes per pending timer after the schedule phase.
    bytes_per_timer: f64,
    /// The same at the allocation peak of the schedule phase.
    peak_bytes_per_timer: f64,
    /// The driver's handle table, per timer.
    handle_bytes_per_timer: f64,
    /// `None` where the drain jumped the clock (the engine's payment drain).
    max_lateness_ms: Option<u64>,
    /// Schedule, cancel and drain phases together, ms.
    whole_ms: f64,
    /// The same in on-CPU time of all the child's threads, ms (0 where
    /// `/proc/self/task/*/schedstat` is missing). Time spent waiting for a
    /// core on a loaded machine is not in it; cache misses are.
    whole_cpu_ms: f64,
    /// The drain in on-CPU time, ms.
    drain_cpu_ms: f64,
    /// The child's whole run (workload generation included), seconds.
    wall_s: f64,
    /// Set by the parent: fewer runs than the others.
    #[serde(default)]
    note: Option<String>,
}

/// The child: one contender, one scenario, one size.
struct Measure {
    scenario: Scenario,
    n: usize,
}

impl Visitor for Measure {
    type Output = Sample;

    fn visit<C: Contender>(self, name: &'static str, _label: &'static str) -> Sample {
        let began = Instant::now();
        let workload = Workload::new(self.scenario, self.n);
        prefault(self.n * PREFAULT_BYTES_PER_TIMER);
        let mut fired = Vec::with_capacity(workload.live());
        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);

        let mut contender = C::new(self.n);
        let cpu0 = cpu_ns();
        let t0 = Instant::now();
        contender.schedule_all(&workload.deadlines_ms);
        let t1 = Instant::now();
        let held = CURRENT.load(Ordering::Relaxed).saturating_sub(base);
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        contender.cancel_all(&workload.cancels);
        let t2 = Instant::now();
        let cpu2 = cpu_ns();
        contender.drain(&mut fired);
        let t3 = Instant::now();
        let cpu3 = cpu_ns();

        let handles = contender.handle_bytes();
        let per_timer = |bytes: usize| bytes.saturating_sub(handles) as f64 / self.n as f64;
        let mut sample = Sample {
            contender: name.to_string(),
            scenario: self.scenario.name().to_string(),
            n: self.n,
            fired: fired.len(),
            ..Sample::default()
        };
        match check(&workload, &fired) {
            Err(why) => sample.error = Some(why),
            Ok(checked) => {
                let ns = |d: Duration, count: usize| d.as_nanos() as f64 / count.max(1) as f64;
                sample.schedule_ns = ns(t1 - t0, workload.len());
                if !workload.cancels.is_empty() {
                    sample.cancel_ns = ns(t2 - t1, workload.cancels.len());
                }
                sample.schedule_cancel_ns_per_timer = ns(t2 - t0, workload.len());
                sample.drain_ms = (t3 - t2).as_secs_f64() * 1e3;
                sample.whole_ms = (t3 - t0).as_secs_f64() * 1e3;
                sample.whole_cpu_ms = cpu3.saturating_sub(cpu0) as f64 / 1e6;
                sample.drain_cpu_ms = cpu3.saturating_sub(cpu2) as f64 / 1e6;
                sample.bytes_per_timer = per_timer(held);
                sample.peak_bytes_per_timer = per_timer(peak);
                sample.handle_bytes_per_timer = handles as f64 / self.n as f64;
                sample.max_lateness_ms = contender
                    .lateness_measured()
                    .then_some(checked.max_lateness_ms);
            }
        }
        drop(contender);
        sample.wall_s = began.elapsed().as_secs_f64();
        sample
    }
}

/// On-CPU nanoseconds of all this process's threads so far (0 if the
/// kernel does not say), from `/proc/self/task/*/schedstat`. Unlike wall
/// time it leaves out the time a thread waited for a core, which on this
/// shared machine is most of the noise between runs.
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Bytes per timer touched (and freed) before a child measures anything.
const PREFAULT_BYTES_PER_TIMER: usize = 128;

/// Touches `bytes` of fresh memory once and frees it, so that the
/// contender's first touch of its memory costs what it costs on a warm
/// machine: on this VM the first touch of a page the process never had is
/// several times slower (the host backs it), which would otherwise dominate
/// the schedule phase of the structures that presize.
fn prefault(bytes: usize) {
    let mut memory = vec![0u8; bytes];
    for page in memory.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&memory);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(name) = value("--contender") {
        let scenario = value("--scenario")
            .and_then(|s| Scenario::from_name(&s))
            .unwrap_or(Scenario::Payment);
        let n = value("--n")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1_000_000);
        let Some(sample) = peers::visit(&name, Measure { scenario, n }) else {
            eprintln!("unknown contender {name:?}; one of {NAMES:?}");
            return ExitCode::FAILURE;
        };
        println!(
            "{}",
            serde_json::to_string(&sample).expect("a sample serializes")
        );
        return ExitCode::SUCCESS;
    }
    let report = compare(args.iter().any(|a| a == "--quick"));
    println!("{report}");
    if args.iter().any(|a| a == "--write") {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/BENCHMARKS.md");
        match rewrite_doc(path, &report) {
            Ok(()) => eprintln!("rewrote the compare section of {path}"),
            Err(e) => {
                eprintln!("could not rewrite {path}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// One child run; a crash, a timeout or unreadable output becomes a failed
/// sample with the reason.
fn run_child(name: &str, scenario: Scenario, n: usize) -> Sample {
    let failed = |why: String| Sample {
        contender: name.to_string(),
        scenario: scenario.name().to_string(),
        n,
        error: Some(why),
        ..Sample::default()
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return failed(format!("cannot find own executable: {e}")),
    };
    let child = Command::new(exe)
        .args(["--contender", name, "--scenario", scenario.name()])
        .args(["--n", &n.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return failed(format!("cannot start child: {e}")),
    };
    let began = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if began.elapsed() > CHILD_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return failed(format!("did not finish in {} s", CHILD_TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return failed(format!("lost the child: {e}")),
        }
    }
    let output = match child.wait_with_output() {
        Ok(output) => output,
        Err(e) => return failed(format!("cannot read the child: {e}")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().last().map(serde_json::from_str::<Sample>) {
        Some(Ok(sample)) if output.status.success() => sample,
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let why = stderr
                .lines()
                .find(|l| l.contains("panicked") || l.contains("error"))
                .unwrap_or("no result")
                .trim()
                .to_string();
            failed(format!("child exited with {}: {why}", output.status))
        }
    }
}

/// The median of each measurement over `samples` (all of which passed).
fn median(samples: &[Sample]) -> Sample {
    fn mid(mut values: Vec<f64>) -> f64 {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    }
    let of = |f: fn(&Sample) -> f64| mid(samples.iter().map(f).collect());
    let lateness: Option<Vec<f64>> = samples
        .iter()
        .map(|s| s.max_lateness_ms.map(|l| l as f64))
        .collect();
    Sample {
        schedule_ns: of(|s| s.schedule_ns),
        cancel_ns: of(|s| s.cancel_ns),
        schedule_cancel_ns_per_timer: of(|s| s.schedule_cancel_ns_per_timer),
        drain_ms: of(|s| s.drain_ms),
        whole_ms: of(|s| s.whole_ms),
        whole_cpu_ms: of(|s| s.whole_cpu_ms),
        drain_cpu_ms: of(|s| s.drain_cpu_ms),
        bytes_per_timer: of(|s| s.bytes_per_timer),
        peak_bytes_per_timer: of(|s| s.peak_bytes_per_timer),
        handle_bytes_per_timer: of(|s| s.handle_bytes_per_timer),
        // The worst run, not the median: lateness is a bound.
        max_lateness_ms: lateness.map(|l| l.into_iter().fold(0.0, f64::max) as u64),
        wall_s: of(|s| s.wall_s),
        ..samples[0].clone()
    }
}

/// The result of one contender in one (scenario, size) cell.
enum Outcome {
    Passed(Sample),
    Failing(String),
    Skipped(String),
}

/// Runs each contender `how_many(name)` times (or skips it with the reason
/// given), in rounds: run 1 of every contender, then run 2 of every one, and
/// so on, so that a burst of load from elsewhere on the shared machine does
/// not land on one contender's runs only. Any failing run makes the
/// contender FAILING, and it is not run again.
fn measure_all(
    scenario: Scenario,
    n: usize,
    runs: usize,
    how_many: &dyn Fn(&str) -> Result<usize, String>,
) -> Vec<Row> {
    let plans: Vec<Result<usize, String>> = NAMES.iter().map(|(name, _)| how_many(name)).collect();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); NAMES.len()];
    let mut failed: Vec<Option<String>> = vec![None; NAMES.len()];
    for run in 1..=runs {
        for (i, &(name, _)) in NAMES.iter().enumerate() {
            if failed[i].is_some() || plans[i].as_ref().map_or(true, |&these| run > these) {
                continue;
            }
            let sample = run_child(name, scenario, n);
            eprintln!(
                "  {name:<12} {:<8} n={n:<9} run {run}: {}",
                scenario.name(),
                match &sample.error {
                    Some(why) => format!("FAILING: {why}"),
                    None => format!(
                        "schedule {:.1} ns, cancel {:.1} ns, drain {:.1} ms, {:.1} B/timer ({:.1} s)",
                        sample.schedule_ns,
                        sample.cancel_ns,
                        sample.drain_ms,
                        sample.bytes_per_timer,
                        sample.wall_s
                    ),
                }
            );
            match sample.error {
                Some(why) => failed[i] = Some(why),
                None => samples[i].push(sample),
            }
        }
    }
    NAMES
        .iter()
        .zip(plans)
        .zip(samples.iter().zip(failed))
        .map(|((&(name, label), plan), (samples, failed))| {
            let outcome = match (plan, failed) {
                (Err(why), _) => Outcome::Skipped(why),
                (_, Some(why)) => Outcome::Failing(why),
                (Ok(these), None) => Outcome::Passed(Sample {
                    note: (these < runs).then(|| format!("{these} run")),
                    ..median(samples)
                }),
            };
            (name, label, outcome)
        })
        .collect()
}

/// Runs everything and returns the markdown report.
fn compare(quick: bool) -> String {
    let (small, large, runs) = if quick {
        (100_000, 1_000_000, 1)
    } else {
        (1_000_000, 10_000_000, RUNS)
    };
    let mut report = String::new();
    let _ = writeln!(report, "{}\n", machine());
    let load_before = load_average();
    let began = Instant::now();

    let payment_small = measure_all(Scenario::Payment, small, runs, &|_| Ok(runs));
    // The large size: all runs for a contender whose 1M run, scaled by 10,
    // stays in budget; one run if it stays in three budgets; else skipped.
    let large_runs = |name: &str| -> Result<usize, String> {
        match payment_small.iter().find(|(n, _, _)| *n == name) {
            Some((_, _, Outcome::Passed(s))) => {
                let estimate = s.wall_s * (large / small) as f64;
                let budget = MAX_10M_RUN.as_secs_f64();
                if estimate <= budget {
                    Ok(runs)
                } else if estimate <= 3.0 * budget {
                    Ok(1)
                } else {
                    Err(format!(
                        "skipped: about {estimate:.0} s per run at {} (10× its {} run)",
                        count(large),
                        count(small)
                    ))
                }
            }
            _ => Err(format!("skipped: FAILING at {}", count(small))),
        }
    };
    let payment_large = measure_all(Scenario::Payment, large, runs, &large_runs);
    let flash = measure_all(Scenario::FlashSale, small, runs, &|_| Ok(runs));

    for (n, rows) in [(small, &payment_small), (large, &payment_large)] {
        let _ = writeln!(
            report,
            "### Payment workload, {} timers (70% cancelled, deadlines over 30 min)\n",
            count(n)
        );
        payment_table(&mut report, rows);
        ratios(&mut report, rows);
    }
    let _ = writeln!(
        report,
        "### Flash sale, {} timers due within one second\n",
        count(small)
    );
    flash_table(&mut report, &flash);
    let _ = writeln!(
        report,
        "Median of {runs} runs per contender (max lateness: the worst run), one process per run; \
         the whole comparison took {:.0} s. Load average (1 min) before: {load_before}, after: {} \
         (the machine is shared; above 2 means other work competed for the 2 cores).",
        began.elapsed().as_secs_f64(),
        load_average(),
    );
    report
}

/// The 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

type Row = (&'static str, &'static str, Outcome);

/// A measure's name and how to read it from a sample.
type NamedMeasure = (&'static str, fn(&Sample) -> f64);

fn payment_table(out: &mut String, rows: &[Row]) {
    let _ = writeln!(
        out,
        "| contender | ns/schedule | ns/cancel | schedule+cancel, ns per timer | drain ms (on-CPU) | whole ms (on-CPU) | bytes/timer (peak) | + handle B | max lateness ms | exactly-once |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for (_, label, outcome) in rows {
        match outcome {
            Outcome::Passed(s) => {
                let lateness = s
                    .max_lateness_ms
                    .map_or("— (clock jumped)".to_string(), |l| l.to_string());
                let label = match &s.note {
                    Some(note) => format!("{label} ({note})"),
                    None => label.to_string(),
                };
                let _ = writeln!(
                    out,
                    "| {label} | {:.1} | {:.1} | {:.1} | {:.1} ({:.1}) | {:.1} ({:.1}) | {:.1} ({:.1}) | {:.0} | {lateness} | ok |",
                    s.schedule_ns,
                    s.cancel_ns,
                    s.schedule_cancel_ns_per_timer,
                    s.drain_ms,
                    s.drain_cpu_ms,
                    s.whole_ms,
                    s.whole_cpu_ms,
                    s.bytes_per_timer,
                    s.peak_bytes_per_timer,
                    s.handle_bytes_per_timer,
                );
            }
            Outcome::Failing(why) => {
                let _ = writeln!(
                    out,
                    "| {label} | — | — | — | — | — | — | — | — | **FAILING**: {why} |"
                );
            }
            Outcome::Skipped(why) => {
                let _ = writeln!(out, "| {label} | — | — | — | — | — | — | — | — | {why} |");
            }
        }
    }
    let _ = writeln!(out);
}

fn flash_table(out: &mut String, rows: &[Row]) {
    let _ = writeln!(
        out,
        "| contender | ns/schedule | drain ms | max lateness ms | exactly-once |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (_, label, outcome) in rows {
        match outcome {
            Outcome::Passed(s) => {
                let lateness = s.max_lateness_ms.map_or("—".to_string(), |l| l.to_string());
                let _ = writeln!(
                    out,
                    "| {label} | {:.1} | {:.1} | {lateness} | ok |",
                    s.schedule_ns, s.drain_ms
                );
            }
            Outcome::Failing(why) => {
                let _ = writeln!(out, "| {label} | — | — | — | **FAILING**: {why} |");
            }
            Outcome::Skipped(why) => {
                let _ = writeln!(out, "| {label} | — | — | — | {why} |");
            }
        }
    }
    let _ = writeln!(out);
}

/// duewheel's rows against the best peer (not duewheel) on each measure,
/// lower is better; `k×` means the peer needs k times as much.
fn ratios(out: &mut String, rows: &[Row]) {
    let passed: Vec<(&str, &str, &Sample)> = rows
        .iter()
        .filter_map(|(name, label, o)| match o {
            Outcome::Passed(s) => Some((*name, *label, s)),
            _ => None,
        })
        .collect();
    let is_ours = |name: &str| name == "wheel" || name == "engine";
    let measures: [NamedMeasure; 6] = [
        ("whole", |s| s.whole_ms),
        ("whole, on-CPU", |s| s.whole_cpu_ms),
        ("schedule+cancel", |s| s.schedule_cancel_ns_per_timer),
        ("drain", |s| s.drain_ms),
        ("drain, on-CPU", |s| s.drain_cpu_ms),
        ("bytes/timer incl. handle", |s| {
            s.bytes_per_timer + s.handle_bytes_per_timer
        }),
    ];
    let best: Vec<Option<(&str, f64)>> = measures
        .iter()
        .map(|(_, f)| {
            passed
                .iter()
                .filter(|(name, _, _)| !is_ours(name))
                .map(|(_, label, s)| (*label, f(s)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
        })
        .collect();
    let _ = writeln!(
        out,
        "| against the best peer | whole workload | whole, on-CPU | schedule+cancel | drain | drain, on-CPU | bytes/timer incl. handle |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (_, label, s) in passed.iter().filter(|(name, _, _)| is_ours(name)) {
        let cells: Vec<String> = measures
            .iter()
            .zip(&best)
            .map(|((_, f), best)| match best {
                None => "no peer passed".to_string(),
                Some((peer, value)) => {
                    let ours = f(s);
                    let ratio = value / ours;
                    let verdict = if ratio >= 1.0 { "better" } else { "**worse**" };
                    format!("{ratio:.2}× {verdict} ({ours:.1} vs {value:.1}, {peer})")
                }
            })
            .collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    let _ = writeln!(out);
}

fn count(n: usize) -> String {
    if n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else {
        format!("{}k", n / 1_000)
    }
}

/// Cores, CPU model, memory, kernel and compiler of this machine.
fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .map_or("unknown".to_string(), |v| v.trim().to_string())
    };
    let mem_gib = field(&read("/proc/meminfo"), "MemTotal")
        .trim_end_matches(" kB")
        .parse::<f64>()
        .map_or("?".to_string(), |kb| format!("{:.0}", kb / 1024.0 / 1024.0));
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    format!(
        "**Machine**: {} cores (nproc), CPU \"{}\", {mem_gib} GiB, Linux {}, {rustc}, release profile. \
         Written by `cargo run --release --example compare -- --write`.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        field(&cpuinfo, "model name"),
        read("/proc/sys/kernel/osrelease").trim(),
    )
}

/// Replaces the marked section of the benchmarks page with `report`,
/// adding the heading and markers at the end the first time.
fn rewrite_doc(path: &str, report: &str) -> std::io::Result<()> {
    const BEGIN: &str = "<!-- compare:begin -->";
    const END: &str = "<!-- compare:end -->";
    let doc = std::fs::read_to_string(path)?;
    let section = format!("{BEGIN}\n{}\n{END}", report.trim_end());
    let updated = match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{section}{}", &doc[..b], &doc[e + END.len()..]),
        _ => format!("{}\n## Against the peers\n\n{section}\n", doc.trim_end()),
    };
    std::fs::write(path, updated)
}
