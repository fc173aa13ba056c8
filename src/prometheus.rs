//! Prometheus exporter of the engine's statistics (feature `prometheus`).
//!
//! [`Stats`] is the single source of truth: an [`Exporter`] takes a
//! snapshot at every scrape (it locks each shard once, briefly), publishes
//! it through the `metrics` facade into its own
//! `metrics-exporter-prometheus` recorder (not the global one, so two
//! engines or two tests in one process do not mix their series), and
//! renders the Prometheus text format. Counters are set with `absolute`
//! from the engine's own totals, so they only grow.
//!
//! The series (names follow Prometheus conventions: base units, `_total`
//! on counters):
//!
//! | series | type | what |
//! |---|---|---|
//! | `duewheel_pending_timers` | gauge | timers waiting to fire |
//! | `duewheel_max_pending_timers` | gauge | the admission cap |
//! | `duewheel_in_flight` | gauge | expiries awaiting acks |
//! | `duewheel_scheduled_total`, `_cancelled_total`, `_rescheduled_total` | counter | schedule, cancel and reschedule calls accepted |
//! | `duewheel_fired_total{kind="expired"\|"reminder"}` | counter | events emitted |
//! | `duewheel_acked_total`, `_redelivered_total`, `_snoozed_total` | counter | acknowledgements |
//! | `duewheel_rejected_full_total` | counter | schedules refused by the cap |
//! | `duewheel_lateness_seconds` | histogram | how late events left the wheel |
//! | `duewheel_lateness_{p50,p99,max}_seconds` | gauge | the same, summarised |
//! | `duewheel_oldest_overdue_seconds` | gauge | age of the oldest due event not yet handed over: a stall alarm (Redisson #4088) |
//! | `duewheel_consumer_lag{group}` | gauge | events handed to a group, not yet taken |
//! | `duewheel_consumers{group}` | gauge | consumers attached |
//! | `duewheel_storage_failed` | gauge | 1 once the log failed (fail-stop) |
//!
//! ```
//! use duewheel::{Engine, ManualClock, prometheus::Exporter};
//! use std::time::Duration;
//!
//! let engine = Engine::<u64, ()>::builder().clock(ManualClock::new(0)).build()?;
//! engine.scheduler().schedule(1, Duration::from_secs(60), ()).unwrap();
//! let metrics = Exporter::new(&engine);
//! assert!(metrics.render().contains("duewheel_pending_timers 1"));
//! // Or serve it: `let server = metrics.serve("127.0.0.1:9464")?;`
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::engine::{Engine, Lateness, Scheduler, Stats};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::fmt::Write as _;
use std::hash::Hash;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Samples an engine's [`Stats`] into Prometheus text. Cheap to clone.
#[derive(Clone)]
pub struct Exporter {
    shared: Arc<Shared>,
}

struct Shared {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    stats: Box<dyn Fn() -> Stats + Send + Sync>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// An exporter of `engine`'s statistics.
    pub fn new<K, P>(engine: &Engine<K, P>) -> Self
    where
        K: Hash + Eq + Clone + Send + 'static,
        P: Clone + Send + 'static,
    {
        Self::for_scheduler(engine.scheduler())
    }

    /// An exporter reading through a [`Scheduler`] handle (what a service
    /// that does not own the [`Engine`] holds).
    pub fn for_scheduler<K, P>(scheduler: Scheduler<K, P>) -> Self
    where
        K: Hash + Eq + Clone + Send + 'static,
        P: Clone + Send + 'static,
    {
        Self::from_source(move || scheduler.stats())
    }

    /// An exporter of whatever `stats` returns (several engines summed, a
    /// test's fixed snapshot, ...).
    pub fn from_source(stats: impl Fn() -> Stats + Send + Sync + 'static) -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, describe);
        Self {
            shared: Arc::new(Shared {
                recorder,
                handle,
                stats: Box::new(stats),
            }),
        }
    }

    /// Takes a snapshot now and renders it in the Prometheus text format
    /// (version 0.0.4).
    pub fn render(&self) -> String {
        let stats = (self.shared.stats)();
        metrics::with_local_recorder(&self.shared.recorder, || stats.publish());
        let mut text = self.shared.handle.render();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        render_lateness(&mut text, &stats.lateness, stats.tick_ms);
        text
    }

    /// Serves [`render`](Self::render) over HTTP at `addr` (any path; say
    /// `/metrics`) on a thread of its own, until the returned server is
    /// dropped. One scrape at a time, each bounded by a 5 s timeout.
    pub fn serve(&self, addr: impl ToSocketAddrs) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let exporter = self.clone();
        let stopping = stop.clone();
        let thread = thread::Builder::new()
            .name("duewheel-metrics".into())
            .spawn(move || {
                while !stopping.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            // A broken scrape is the scraper's problem; the
                            // next one starts afresh.
                            let _ = answer(&exporter, stream);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            thread::sleep(ACCEPT_POLL);
                        }
                        Err(_) => thread::sleep(ACCEPT_POLL),
                    }
                }
            })?;
        Ok(MetricsServer {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }
}

/// How often the server's accept loop looks for a connection or a stop.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// Longest request head read before answering.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Reads one request head and answers it with the metrics.
fn answer(exporter: &Exporter, mut stream: TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, body) = if head.starts_with(b"GET ") || head.starts_with(b"HEAD ") {
        ("200 OK", exporter.render())
    } else {
        ("405 Method Not Allowed", String::from("only GET\n"))
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    if !head.starts_with(b"HEAD ") {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

/// An HTTP endpoint serving an [`Exporter`]; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `# HELP` lines for every series published through the facade.
fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!("duewheel_pending_timers", "Timers waiting to fire.");
    describe_gauge!("duewheel_max_pending_timers", "The admission cap.");
    describe_gauge!("duewheel_in_flight", "Expiries awaiting acknowledgements.");
    describe_counter!("duewheel_scheduled_total", "Timers accepted.");
    describe_counter!("duewheel_cancelled_total", "Timers removed by cancel.");
    describe_counter!("duewheel_rescheduled_total", "Successful reschedules.");
    describe_counter!("duewheel_fired_total", "Events emitted, by kind.");
    describe_counter!("duewheel_acked_total", "Timers ended by the last ack.");
    describe_counter!(
        "duewheel_redelivered_total",
        "Expiries sent again after the ack timeout."
    );
    describe_counter!("duewheel_snoozed_total", "Snoozes granted.");
    describe_counter!(
        "duewheel_rejected_full_total",
        "Schedules refused by the admission cap."
    );
    describe_gauge!("duewheel_lateness_p50_seconds", "Median lateness.");
    describe_gauge!("duewheel_lateness_p99_seconds", "99th percentile lateness.");
    describe_gauge!("duewheel_lateness_max_seconds", "Largest lateness.");
    describe_gauge!(
        "duewheel_oldest_overdue_seconds",
        "Age of the oldest due event not yet handed to the consumer groups."
    );
    describe_gauge!(
        "duewheel_consumer_lag",
        "Events handed to a consumer group and not yet taken."
    );
    describe_gauge!("duewheel_consumers", "Consumers attached to a group.");
    describe_gauge!(
        "duewheel_storage_failed",
        "1 once the write-ahead log failed (fail-stop)."
    );
}

/// Appends `duewheel_lateness_seconds` as a Prometheus histogram, from the
/// engine's cumulative lateness histogram (exact, bounded: no sample per
/// event passes through the facade).
fn render_lateness(out: &mut String, lateness: &Lateness, tick_ms: u64) {
    let name = "duewheel_lateness_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} How late events left the wheel after their due time."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (bound_ms, count) in Lateness::BOUNDS_MS.iter().zip(lateness.at_most) {
        let le = *bound_ms as f64 / 1e3;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", lateness.count);
    let sum_s = lateness.sum_ticks as f64 * tick_ms as f64 / 1e3;
    let _ = writeln!(out, "{name}_sum {sum_s}");
    let _ = writeln!(out, "{name}_count {}", lateness.count);
}
