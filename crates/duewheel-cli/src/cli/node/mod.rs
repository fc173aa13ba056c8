//! `duewheel node`: one cluster node as a process, serving the HTTP API
//! (`--listen`, see [`http`]), the stdin/stdout line protocol ([`stdio`]),
//! or both, until SIGTERM, SIGINT, or (with the line protocol) `quit`/EOF.
//!
//! The order of a stop is the point of this file. Invariant: once a stop is
//! asked for, the node (1) reports unready and refuses new work, (2) answers
//! its waiting long-polls and lets requests in progress finish, (3) stops
//! its consumers — a delivery handed out and not acked stays claimed and is
//! redelivered by the shard's next owner — and only then (4) shuts the node
//! down, which releases every lease at once (bumping its epoch) so another
//! node takes the shards over without waiting out the lease ttl.

mod config;
mod groups;
mod http;
mod metrics;
mod orders;
mod stdio;

pub(crate) use config::Args;

use duewheel::Clock;
use duewheel_cluster::{Node, NodeConfig, NodeScheduler, NodeStats, StoreConfig};
use parking_lot::RwLock;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why the node could not run: exit 2 (configuration) or 3 (database).
pub(crate) enum Error {
    Usage(String),
    Database(String),
}

/// The running node, shared by the HTTP handlers and the line protocol.
/// The node itself is taken out at shutdown; the scheduler outlives it
/// (answering `ShuttingDown`).
pub(crate) struct NodeCell {
    node: RwLock<Option<Node<String>>>,
    pub(crate) scheduler: NodeScheduler<String>,
    pub(crate) node_id: String,
    /// Set when a stop was asked for: the node is no longer ready.
    pub(crate) stopping: AtomicBool,
}

impl NodeCell {
    /// `f` on the node, unless it was shut down.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Node<String>) -> T) -> Option<T> {
        self.node.read().as_ref().map(f)
    }

    /// The node's counters, unless it was shut down.
    pub(crate) fn stats(&self) -> Option<NodeStats> {
        self.with(Node::stats)
    }
}

/// Wall time sped up `speed` times from `origin_ms` (where it equals the
/// wall clock): every process given the same two numbers reads the same
/// time. Monotonic: derived from one `Instant`.
struct SharedScaledClock {
    start: Instant,
    start_ms: f64,
    speed: f64,
}

impl SharedScaledClock {
    fn new(origin_ms: u64, speed: f64) -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let origin = origin_ms as f64;
        Self {
            start: Instant::now(),
            start_ms: origin + (wall - origin) * speed,
            speed,
        }
    }
}

impl Clock for SharedScaledClock {
    fn now_ms(&self) -> u64 {
        (self.start_ms + self.start.elapsed().as_secs_f64() * 1e3 * self.speed) as u64
    }

    fn time_until(&self, until_ms: u64) -> Option<Duration> {
        let ahead_ms = (until_ms as f64 - self.now_ms() as f64).max(0.0);
        Some(Duration::from_secs_f64(ahead_ms / 1e3 / self.speed))
    }
}

/// Logs to stderr: `DUEWHEEL_LOG`, else `RUST_LOG` (the `EnvFilter`
/// syntax, e.g. `duewheel=debug`), else `info`.
fn init_logging() {
    let filter = std::env::var("DUEWHEEL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("warning: log filter {filter:?}: {e}; using \"info\"");
        tracing_subscriber::EnvFilter::new("info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

pub(crate) fn run(args: Args) -> Result<(), Error> {
    init_logging();
    let s = args.resolve().map_err(Error::Usage)?;
    let stdio = s.listen.is_none() || s.stdio;
    if s.orders.orders && s.listen.is_some() {
        return Err(Error::Usage(
            "--orders speaks stdin/stdout only: drop --listen".into(),
        ));
    }
    if stdio && !s.groups.iter().any(|g| g == "out") {
        return Err(Error::Usage(
            "the stdin/stdout protocol consumes group `out`: declare it (--group out)".into(),
        ));
    }
    let ms = Duration::from_millis;
    let store = StoreConfig::new(s.pg.clone())
        .schema(s.schema.clone())
        .shards(s.shards);
    let mut config = NodeConfig::new(store, s.node_id.clone())
        .lease_ttl(ms(s.lease_ttl_ms))
        .renew_every(ms(s.renew_ms))
        .grace(ms(s.grace_ms))
        .horizon(ms(s.horizon_ms))
        .page_every(ms(s.page_ms))
        .sweep_every(ms(s.sweep_ms))
        .batch_rows(s.batch_rows)
        .batch_wait(Duration::from_micros(s.batch_wait_us))
        .writers(s.writers)
        .claim_pipeline(s.claim_pipeline)
        .ack_timeout(ms(s.ack_timeout_ms))
        .op_timeout(ms(s.op_timeout_ms));
    for group in &s.groups {
        config = config.group(group.clone());
    }
    if let Some((origin, speed)) = s.clock {
        config = config.clock(SharedScaledClock::new(origin, speed));
    }
    // Started before any tokio runtime exists: the node's database client
    // is the blocking one.
    let node = config.start::<String>().map_err(|e| {
        if e.is_database() {
            Error::Database(e.to_string())
        } else {
            Error::Usage(e.to_string())
        }
    })?;
    if s.orders.orders {
        // The order-service mode (tests and `simulate --cluster --effects
        // pg`): stdin/stdout only, its own consumer.
        return orders::run(node, &s, &stdio::stdout());
    }
    let cell = Arc::new(NodeCell {
        scheduler: node.scheduler(),
        node: RwLock::new(Some(node)),
        node_id: s.node_id.clone(),
        stopping: AtomicBool::new(false),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("duewheel-http")
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("tokio runtime: {e}")))?;
    // Whatever asks for the stop first (a signal, stdin closing) says why.
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    let line_protocol = if stdio {
        Some(stdio::start(&cell, stop_tx.clone()).map_err(Error::Usage)?)
    } else {
        None
    };
    let http_groups: Vec<String> = s
        .groups
        .iter()
        .filter(|g| !(stdio && *g == "out"))
        .cloned()
        .collect();
    let served = match s.listen {
        Some(addr) => {
            let limits = http::Limits {
                max_body_bytes: s.max_body_bytes,
                max_batch: s.max_batch,
                max_wait_ms: s.max_wait_ms,
            };
            let groups = groups::Groups::start(
                &cell,
                &http_groups,
                stdio.then_some("out"),
                Duration::from_millis(s.ack_timeout_ms).saturating_mul(2),
            )
            .map_err(Error::Usage)?;
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind(addr))
                .map_err(|e| Error::Usage(format!("--listen {addr}: {e}")))?;
            let local = listener
                .local_addr()
                .map_err(|e| Error::Usage(format!("--listen {addr}: {e}")))?;
            tracing::info!(target: "duewheel", node = %s.node_id, addr = %local, "listening");
            if !stdio {
                // Port 0 was a choice the caller needs to learn.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "listening http://{local}");
                let _ = out.flush();
            }
            let groups = Arc::new(groups);
            let (app, state) = http::router(cell.clone(), groups.clone(), limits, s.renew_ms);
            runtime.spawn(http::monitor(state));
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            let server = runtime.spawn(async move {
                let shutdown = async {
                    let _ = done_rx.await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(target: "duewheel", error = %e, "http server failed");
                }
            });
            Some((groups, done_tx, server))
        }
        None => None,
    };
    for (kind, name) in [
        (tokio::signal::unix::SignalKind::terminate(), "SIGTERM"),
        (tokio::signal::unix::SignalKind::interrupt(), "SIGINT"),
    ] {
        let mut signal = runtime
            .block_on(async { tokio::signal::unix::signal(kind) })
            .map_err(|e| Error::Usage(format!("{name} handler: {e}")))?;
        let stop_tx = stop_tx.clone();
        runtime.spawn(async move {
            if signal.recv().await.is_some() {
                let _ = stop_tx.send(name).await;
            }
            // A second one while stopping: the operator will not wait (the
            // leases not yet released expire with their ttl).
            if signal.recv().await.is_some() {
                tracing::warn!(target: "duewheel", signal = name, "second signal: exiting now");
                std::process::exit(130);
            }
        });
    }
    drop(stop_tx);

    let why = runtime
        .block_on(stop_rx.recv())
        .unwrap_or("no stop source left");
    let began = Instant::now();
    tracing::info!(target: "duewheel", node = %s.node_id, why, "stopping");
    cell.stopping.store(true, Ordering::SeqCst);
    if let Some((groups, done_tx, server)) = served {
        // Waiting long-polls answer now (empty), new requests are refused,
        // requests in progress finish; then the consumers stop.
        groups.stop_waiting();
        let _ = done_tx.send(());
        let _ =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), server).await });
        groups.stop();
    }
    if let Some(line_protocol) = line_protocol {
        line_protocol.stop();
    }
    let node = cell.node.write().take();
    if let Some(node) = node {
        node.shutdown();
    }
    tracing::info!(
        target: "duewheel",
        node = %s.node_id,
        took_ms = began.elapsed().as_millis() as u64,
        "stopped; leases released"
    );
    // A request still blocked in the node (none should be) is not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
