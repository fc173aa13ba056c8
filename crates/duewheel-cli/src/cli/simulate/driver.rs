//! The driver: builds the engine and the services, then moves simulated
//! time through the sale in steps.
//!
//! Each step `[t, t + step)`:
//! 1. the orders arriving in it are placed (stock reserved, timer
//!    scheduled);
//! 2. the payments reaching the platform in it are taken, except, on the
//!    manual clock, those that come after one of their own order's timer
//!    stages inside the step ([`Checkout::comes_after_a_stage`]): they wait
//!    for 5, so the engine sees payments and expiries in simulated order;
//! 3. the clock moves to `t + step` (manual), or the driver waits for it
//!    (real time);
//! 4. manual clock: `settle` (everything due is in the groups), then
//!    quiesce (every service handled it; see [`super::lockstep`]);
//! 5. the held-back payments are taken.
//!
//! With `--crash-at`, in the step where it falls: the services are told of
//! the crash before 3, so they handle nothing that step fires; after 4's
//! settle the engine is killed ([`super::crash`]) with those events in its
//! groups, the services are stopped, a new engine recovers from DIR, the
//! services re-subscribe to it, and 4 and 5 run on the new engine. Every call
//! the checkout and the services made has returned by then, so no call is
//! in doubt at the crash (the kill -9 test, `tests/kill9.rs`, covers calls
//! cut short), and the crashed engine's memory can be compared with what
//! the log gave back.
//!
//! The run ends once every order and payment was handled and the engine
//! holds no timer; or, as a guard, an hour of simulated time after the last
//! planned stage (the checks then report what was left).
//!
//! Invariant: on the manual clock, what the engine and the services do in a
//! step depends only on the state at the step's start and the sale drawn
//! from the seed, so a seed replays exactly (the timings do not). A crash
//! adds one thing timing decides: which of the step's firings had reached
//! the log when the engine died. That changes how each event comes again
//! (redelivered or fired again) and which reminders are lost, nothing
//! else (`tests/simulate.rs` compares a crashed sale with the same sale in
//! memory).

use super::Error;
use super::args::{Config, show_ms};
use super::buyers::{SALE_OPENS_MS, Sale};
use super::callers::Callers;
use super::clock::{ScaledClock, SimClock};
use super::crash::CutStorage;
use super::lockstep::LockStep;
use super::memory::{self, Rss};
use super::services::{
    Checkout, Context, Inventory, Notifier, OrderService, OrderTimer, Service, Timers, work,
};
use super::world::World;
use duewheel::wal::Storage;
use duewheel::{BuildError, Engine, ManualClock, Stats};
use indicatif::ProgressBar;
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Longest the driver waits for the engine or the services in one step.
const STEP_PATIENCE: Duration = Duration::from_secs(60);

/// The engine and the services, once per simulated second.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    /// Simulated time since the sale opened.
    pub(crate) t_ms: u64,
    pub(crate) pending: usize,
    pub(crate) expired_total: u64,
    pub(crate) reminders_total: u64,
    pub(crate) snoozed_total: u64,
    /// Orders paid so far.
    pub(crate) paid: u64,
    pub(crate) rss: Option<Rss>,
}

/// Everything a run produced, for the checks and the report.
pub(crate) struct Outcome {
    pub(crate) checkout: Checkout,
    pub(crate) orders: OrderService,
    pub(crate) inventory: Inventory,
    pub(crate) notifier: Notifier,
    /// The engine's statistics once the run ended, before shutdown (after
    /// a crash: the engine that recovered).
    pub(crate) final_stats: Stats,
    /// The engine's counters over the whole run.
    pub(crate) totals: Totals,
    /// `Some` if the engine crashed (`--crash-at`).
    pub(crate) crash: Option<Crash>,
    /// Timers and events [`Engine::shutdown`] handed back (must be 0).
    pub(crate) left_at_shutdown: usize,
    pub(crate) undelivered_at_shutdown: usize,
    /// `false` if the guard stopped the run with timers still pending.
    pub(crate) finished: bool,
    pub(crate) samples: Vec<Sample>,
    pub(crate) wall: Duration,
    /// Log records appended and fsyncs made during the run (durable only).
    pub(crate) log_records: u64,
    pub(crate) fsyncs: u64,
    /// Wall time spent placing orders (reserving and scheduling).
    pub(crate) placing_wall: Duration,
    pub(crate) simulated_ms: u64,
    pub(crate) peak_pending: usize,
    pub(crate) peak_pending_at_ms: u64,
    pub(crate) rss_baseline: Option<Rss>,
    pub(crate) rss_at_peak: Option<Rss>,
    pub(crate) rss_end: Option<Rss>,
    pub(crate) max_lag: [u64; 3],
}

/// Runs the sale. `progress` shows simulated time.
pub(crate) fn run(
    config: Arc<Config>,
    sale: Arc<Sale>,
    world: Arc<World>,
    progress: &ProgressBar,
) -> Result<Outcome, Error> {
    let step_ms = config.step_ms;
    // Steps start on multiples of the step, so they line up with the
    // engine's ticks (see `build_engine`).
    let first_step_ms = SALE_OPENS_MS / step_ms * step_ms;
    let clock = match config.real_time_speed {
        None => SimClock::Manual(ManualClock::new(first_step_ms)),
        Some(speed) => SimClock::Scaled(ScaledClock::new(SALE_OPENS_MS, speed)),
    };
    let manual = matches!(clock, SimClock::Manual(_));
    let dir = config.durable.as_ref().map(|d| d.dir.as_path());
    let crash_at_ms = config
        .durable
        .as_ref()
        .and_then(|d| d.crash_at_ms)
        .map(|at| SALE_OPENS_MS + at);
    // With --crash-at the first engine's log is on a storage the crash can
    // cut (see `super::crash`); the engine after the crash opens DIR itself.
    let cut =
        match (dir, crash_at_ms) {
            (Some(dir), Some(_)) => Some(Arc::new(CutStorage::open(dir).map_err(|e| {
                Error::Usage(format!("cannot use --durable {}: {e}", dir.display()))
            })?)),
            _ => None,
        };
    let log = match (dir, &cut) {
        (_, Some(cut)) => Log::Cut(cut.clone()),
        (Some(dir), None) => Log::Dir(dir),
        (None, None) => Log::Memory,
    };
    let engine = build_engine(&config, &clock, log).map_err(|e| match (e, dir) {
        // The first open of DIR is where an unusable directory shows.
        (BuildError::Storage(message), Some(dir)) => {
            Error::Usage(format!("cannot use --durable {}: {message}", dir.display()))
        }
        (e, _) => build_error(e),
    })?;
    let _metrics = match config.metrics_addr {
        // Scraped while the sale runs; stops when the run ends. It shows
        // the first engine: after a --crash-at, the crashed one's last state.
        Some(addr) => {
            let exporter = duewheel::prometheus::Exporter::new(&engine);
            let server = super::metrics_http::MetricsServer::serve(exporter, addr)
                .map_err(|e| Error::Run(format!("cannot serve metrics on {addr}: {e}")))?;
            eprintln!("metrics on http://{}/metrics", server.local_addr());
            Some(server)
        }
        None => None,
    };
    let timers: Timers = engine.scheduler();
    let mut ctx = Context {
        config: config.clone(),
        sale: sale.clone(),
        world,
        timers: timers.clone(),
    };
    let services = Stopped {
        orders: OrderService::new(ctx.clone()),
        inventory: Inventory::new(ctx.clone()),
        notifier: Notifier::new(ctx.clone()),
    };
    let mut live = Live {
        running: services.start(&engine, manual)?,
        engine,
        timers,
    };
    let rss_baseline = memory::rss();

    let plans = &sale.plans;
    let payments = &sale.payments;
    let last_stage_ms = plans
        .last()
        .map_or(SALE_OPENS_MS, |p| p.deadline_ms + config.recheck_span_ms())
        .max(payments.last().map_or(0, |p| p.0));
    let guard_ms = last_stage_ms + 4 * config.ack_timeout_ms + 3_600_000;
    progress.set_length(last_stage_ms + step_ms - SALE_OPENS_MS);
    let sample_every = (1_000 / step_ms).max(1);

    let mut checkout = Checkout::default();
    let mut samples: Vec<Sample> = Vec::new();
    let callers = Callers::new(config.checkout_threads)?;
    let mut arriving: Vec<u32> = Vec::new();
    let mut paying: Vec<u32> = Vec::new();
    let mut held_back: Vec<u32> = Vec::new();
    let (mut next_order, mut next_payment) = (0, 0);
    let mut placing_wall = Duration::ZERO;
    let mut peak = (0, 0, None);
    let mut max_lag = [0u64; 3];
    let mut finished = false;
    // The crashed engine's counters, once it crashed.
    let mut before_crash = Totals::default();
    let mut crash: Option<Crash> = None;
    let mut t_ms = first_step_ms;
    let (records_before, fsyncs_before) = (
        duewheel::wal::process_records(),
        duewheel::wal::process_fsyncs(),
    );
    let started = Instant::now();
    for step in 0u64.. {
        let end_ms = t_ms + step_ms;
        let placing = Instant::now();
        arriving.clear();
        while next_order < plans.len() && plans[next_order].arrival_ms < end_ms {
            arriving.push(next_order as u32);
            next_order += 1;
        }
        checkout.place(&ctx, &callers, &arriving)?;
        placing_wall += placing.elapsed();
        paying.clear();
        while let Some(&(paid_ms, order)) = payments.get(next_payment).filter(|p| p.0 < end_ms) {
            if manual && Checkout::comes_after_a_stage(&ctx, order, t_ms, paid_ms) {
                held_back.push(order);
            } else {
                paying.push(order);
            }
            next_payment += 1;
        }
        checkout.pay(&ctx, &callers, &paying)?;
        let crash_now = crash.is_none() && crash_at_ms.is_some_and(|at| end_ms >= at);
        if crash_now {
            // Every answer the checkout acts on is durable before the crash.
            checkout.finish(&ctx)?;
            // Before the clock moves: what this step fires stays in the
            // groups, unhandled, when the engine dies.
            live.running.lockstep.crash();
        }
        clock.reach(end_ms);
        let sampling = step % sample_every == 0;
        let mut lag = [0u64; 3];
        if manual {
            settle(&live.timers, &live.running.lockstep)?;
            if let (true, Some(cut), Some(dir)) = (crash_now, &cut, dir) {
                let at_ms = end_ms - SALE_OPENS_MS;
                let (recovered, crashed) =
                    crash_and_recover(&config, &clock, live, cut, dir, at_ms)?;
                live = recovered;
                ctx.timers = live.timers.clone();
                before_crash = crashed.before;
                crash = Some(crashed);
            }
            if sampling {
                lag = lags(&live.timers.stats());
            }
            if !live.running.lockstep.quiesce(STEP_PATIENCE) {
                return Err(Error::Run(format!(
                    "the services did not finish a step within {STEP_PATIENCE:?}"
                )));
            }
            // The step's calls and the services' acks wait for one fsync.
            checkout.finish(&ctx)?;
            checkout.pay(&ctx, &callers, &held_back)?;
            held_back.clear();
        } else {
            checkout.finish(&ctx)?;
        }
        t_ms = end_ms;
        let all_placed = next_order == plans.len() && next_payment == payments.len();
        if sampling || all_placed {
            let stats = live.timers.stats();
            if !manual {
                lag = lags(&stats);
            }
            let idle = stats.pending == 0 && stats.in_flight == 0 && lags(&stats) == [0; 3];
            if sampling {
                let sample = Sample {
                    t_ms: t_ms.saturating_sub(SALE_OPENS_MS),
                    pending: stats.pending,
                    expired_total: before_crash.expired + stats.expired_total,
                    reminders_total: before_crash.reminders + stats.reminders_total,
                    snoozed_total: before_crash.snoozed + stats.snoozed_total,
                    paid: checkout.paid,
                    rss: memory::rss(),
                };
                for (max, now) in max_lag.iter_mut().zip(lag) {
                    *max = (*max).max(now);
                }
                if sample.pending > peak.0 {
                    peak = (sample.pending, sample.t_ms, sample.rss);
                }
                progress.set_position(sample.t_ms.min(progress.length().unwrap_or(u64::MAX)));
                progress.set_message(format!(
                    "{} pending, {} paid, {} cancelled",
                    group_digits(stats.pending as u64),
                    group_digits(checkout.paid),
                    group_digits(before_crash.acked + stats.acked_total)
                ));
                samples.push(sample);
            }
            if all_placed && idle {
                finished = true;
                break;
            }
        }
        if t_ms >= guard_ms {
            break;
        }
    }
    checkout.finish(&ctx)?;
    let wall = started.elapsed();
    if let (Some(at_ms), None) = (crash_at_ms, &crash) {
        // Asked for, never happened: the checks would pass on a crash-free
        // run, which is not what was asked.
        return Err(Error::Run(format!(
            "the sale was over at {} simulated, before --crash-at {}: nothing was crashed",
            show_ms(t_ms.saturating_sub(SALE_OPENS_MS)),
            show_ms(at_ms - SALE_OPENS_MS)
        )));
    }
    let final_stats = live.timers.stats();
    let mut totals = before_crash;
    totals.add(&final_stats);
    let shutdown = live.engine.shutdown();
    let Stopped {
        orders,
        inventory,
        notifier,
    } = live.running.stop()?;
    Ok(Outcome {
        checkout,
        orders,
        inventory,
        notifier,
        final_stats,
        totals,
        crash,
        left_at_shutdown: shutdown.pending.len(),
        undelivered_at_shutdown: shutdown.undelivered.len(),
        finished,
        samples,
        wall,
        log_records: duewheel::wal::process_records() - records_before,
        fsyncs: duewheel::wal::process_fsyncs() - fsyncs_before,
        placing_wall,
        simulated_ms: t_ms.saturating_sub(SALE_OPENS_MS),
        peak_pending: peak.0,
        peak_pending_at_ms: peak.1,
        rss_baseline,
        rss_at_peak: peak.2,
        rss_end: memory::rss(),
        max_lag,
    })
}

impl Outcome {
    /// Copies of events the services took as already done, so far.
    pub(crate) fn duplicates(&self) -> u64 {
        self.orders.already_final + self.inventory.already_handled + self.notifier.duplicates
    }
}

/// The engine, a handle to it, and the services consuming it.
struct Live {
    engine: Engine<u64, OrderTimer>,
    timers: Timers,
    running: Running,
}

/// The services, running on their threads.
struct Running {
    lockstep: Arc<LockStep>,
    orders: JoinHandle<OrderService>,
    inventory: JoinHandle<Inventory>,
    notifier: JoinHandle<Notifier>,
}

/// The services, stopped: what they did so far.
struct Stopped {
    orders: OrderService,
    inventory: Inventory,
    notifier: Notifier,
}

impl Stopped {
    /// Subscribes each service to its group of `engine` and starts it.
    fn start(self, engine: &Engine<u64, OrderTimer>, manual: bool) -> Result<Running, Error> {
        let lockstep = Arc::new(LockStep::new(3));
        Ok(Running {
            orders: spawn(self.orders, engine, &lockstep, 0, !manual)?,
            inventory: spawn(self.inventory, engine, &lockstep, 1, !manual)?,
            notifier: spawn(self.notifier, engine, &lockstep, 2, !manual)?,
            lockstep,
        })
    }

    /// Points every service at `timers`, the engine that replaced a
    /// crashed one.
    fn reconnect(&mut self, timers: &Timers) {
        self.orders.context().timers = timers.clone();
        self.inventory.context().timers = timers.clone();
        self.notifier.context().timers = timers.clone();
    }

    /// Copies of an event the services took as already done.
    fn duplicates(&self) -> u64 {
        self.orders.already_final + self.inventory.already_handled + self.notifier.duplicates
    }
}

impl Running {
    /// Stops the services once their groups are empty.
    fn stop(self) -> Result<Stopped, Error> {
        self.lockstep.stop();
        Ok(Stopped {
            orders: join(self.orders)?,
            inventory: join(self.inventory)?,
            notifier: join(self.notifier)?,
        })
    }
}

/// The engine's counters; across a crash, the two engines' added up.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub(crate) struct Totals {
    pub(crate) scheduled: u64,
    pub(crate) cancelled: u64,
    pub(crate) expired: u64,
    pub(crate) reminders: u64,
    pub(crate) acked: u64,
    pub(crate) snoozed: u64,
    pub(crate) redelivered: u64,
    pub(crate) rejected_full: u64,
}

impl Totals {
    fn add(&mut self, s: &Stats) {
        self.scheduled += s.scheduled_total;
        self.cancelled += s.cancelled_total;
        self.expired += s.expired_total;
        self.reminders += s.reminders_total;
        self.acked += s.acked_total;
        self.snoozed += s.snoozed_total;
        self.redelivered += s.redelivered_total;
        self.rejected_full += s.rejected_full_total;
    }
}

/// What `--crash-at` did (see [`crash_and_recover`]).
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Crash {
    /// Simulated time after the sale opened: the end of the step in which
    /// `--crash-at` fell.
    pub(crate) at_ms: u64,
    /// The crashed engine's counters.
    #[serde(skip)]
    pub(crate) before: Totals,
    /// Timers in the crashed engine's memory: waiting, and in flight
    /// (fired, not acked by every group).
    pub(crate) alive_waiting: u64,
    pub(crate) alive_in_flight: u64,
    /// I/Os the crashed engine tried after the crash (its drop path's final
    /// checkpoint and log close), all refused.
    pub(crate) io_refused: u64,
    /// Timers recovered from DIR, of them in flight (redelivered at once)
    /// and overdue waiting ones (their firing had not reached the log, so
    /// they fire again at once).
    pub(crate) recovered: u64,
    pub(crate) recovered_in_flight: u64,
    pub(crate) recovered_overdue: u64,
    pub(crate) snapshot_entries: u64,
    pub(crate) log_records: u64,
    pub(crate) torn_tail_bytes: u64,
    /// Wall time to open DIR, replay it, and re-subscribe the groups.
    pub(crate) recovery_ms: f64,
    /// Events the new engine fired at once after recovery: redeliveries of
    /// the timers recovered in flight, and expiries and reminders fired
    /// again because their firing had not reached the log.
    pub(crate) redelivered: u64,
    pub(crate) fired_again_expired: u64,
    pub(crate) fired_again_reminders: u64,
    /// Copies the services had taken as done when the engine crashed (see
    /// [`Stopped::duplicates`]), to count the ones after it.
    #[serde(skip)]
    pub(crate) duplicates_before: u64,
}

/// `--crash-at`, with the events of this step in the groups and the
/// services told not to handle them: kills the engine (see
/// [`super::crash`]), stops the services, builds a new engine on DIR,
/// re-subscribes the services and hands it back once it has delivered
/// what it redelivers at once.
fn crash_and_recover(
    config: &Config,
    clock: &SimClock,
    live: Live,
    cut: &CutStorage,
    dir: &Path,
    at_ms: u64,
) -> Result<(Live, Crash), Error> {
    cut.cut();
    let memory = live.timers.stats();
    let mut before = Totals::default();
    before.add(&memory);
    // Its Drop stops its threads; the final checkpoint and the log's close
    // that it tries are refused at the cut.
    drop(live.engine);
    let mut services = live.running.stop()?;
    drop(live.timers);
    let io_refused = cut.refused();
    let duplicates_before = services.duplicates();

    let started = Instant::now();
    let engine = build_engine(config, clock, Log::Dir(dir)).map_err(|e| {
        Error::Run(format!(
            "could not recover the engine from {}: {e}",
            dir.display()
        ))
    })?;
    let recovered = engine
        .recovered()
        .cloned()
        .ok_or_else(|| Error::Run("the recovered engine is not durable".into()))?;
    let timers = engine.scheduler();
    services.reconnect(&timers);
    let running = services.start(&engine, clock_is_manual(clock))?;
    let recovery = started.elapsed();
    settle(&timers, &running.lockstep)?;
    let first = timers.stats();
    let log = &recovered.log;
    let crash = Crash {
        at_ms,
        before,
        alive_waiting: memory.pending as u64,
        alive_in_flight: memory.in_flight,
        io_refused,
        recovered: recovered.timers as u64,
        recovered_in_flight: recovered.in_flight as u64,
        recovered_overdue: recovered.overdue as u64,
        snapshot_entries: log.snapshot_entries,
        log_records: log.records,
        torn_tail_bytes: log.torn_tail.as_ref().map_or(0, |t| t.dropped),
        recovery_ms: recovery.as_secs_f64() * 1e3,
        redelivered: first.redelivered_total,
        fired_again_expired: first.expired_total,
        fired_again_reminders: first.reminders_total,
        duplicates_before,
    };
    Ok((
        Live {
            engine,
            timers,
            running,
        },
        crash,
    ))
}

fn clock_is_manual(clock: &SimClock) -> bool {
    matches!(clock, SimClock::Manual(_))
}

/// Where the engine keeps its timers.
enum Log<'a> {
    Memory,
    /// The write-ahead log in this directory.
    Dir(&'a Path),
    /// The write-ahead log on a storage that `--crash-at` cuts.
    Cut(Arc<CutStorage>),
}

fn build_error(e: BuildError) -> Error {
    match e {
        BuildError::Invalid(message) => Error::Usage(message.to_string()),
        other => Error::Run(format!("could not start the engine: {other}")),
    }
}

fn build_engine(
    config: &Config,
    clock: &SimClock,
    log: Log<'_>,
) -> Result<Engine<u64, OrderTimer>, BuildError> {
    // A payment may reach the platform this long after its order's
    // expiry; it must still hear `AlreadyFired`, not `NotFound`.
    let latest_payment_ms = config.pay_latency_ms.max(config.pending_max_ms);
    let mut builder = Engine::<u64, OrderTimer>::builder()
        .shards(config.shards)
        .group(OrderService::GROUP)
        .group(Inventory::GROUP)
        .group(Notifier::GROUP)
        .ack_timeout(Duration::from_millis(config.ack_timeout_ms))
        .max_snoozes(config.max_snoozes)
        .channel_capacity(config.channel_capacity)
        .batch_size(config.batch_size)
        .fired_memory(
            (config.orders as usize).max(1 << 20),
            Duration::from_millis(latest_payment_ms + 10 * 60_000),
        );
    if let Some(max) = config.max_pending {
        builder = builder.max_pending(max);
    }
    if config.real_time_speed.is_none() {
        // The manual clock moves a step at a time, so nothing finer than a
        // step is observable: one tick per step. With 1 ms ticks each jump
        // of the clock became one dispatcher round per distinct due
        // millisecond, each a batch of one or two events, and a group's
        // channel, bounded in batches (`channel_capacity / batch_size` =
        // 64), filled at about a hundred events: the dispatcher then waited
        // for the services, and the default run took 73 s instead of 5.
        // Deadlines round up to the tick, so never early; at most one step
        // late, which the `no_event_early` check holds the engine to.
        builder = builder.tick(Duration::from_millis(config.step_ms));
    }
    if let Some(durable) = &config.durable {
        builder = builder.sync_policy(durable.sync_policy());
    }
    builder = match log {
        Log::Memory => builder,
        Log::Dir(dir) => builder.durable(dir),
        Log::Cut(storage) => builder.durable_storage(storage as Arc<dyn Storage>),
    };
    let builder = match clock {
        SimClock::Manual(clock) => builder.clock(clock.clone()),
        SimClock::Scaled(clock) => builder.clock(clock.clone()),
    };
    builder.build()
}

fn spawn<S: Service>(
    service: S,
    engine: &Engine<u64, OrderTimer>,
    lockstep: &Arc<LockStep>,
    index: usize,
    real_time: bool,
) -> Result<JoinHandle<S>, Error> {
    let consumer = engine
        .subscribe(S::GROUP)
        .map_err(|e| Error::Run(format!("the {} service cannot subscribe: {e}", S::GROUP)))?;
    let lockstep_for_worker = lockstep.clone();
    let handle = thread::Builder::new()
        .name(format!("sim-{}", S::GROUP))
        .spawn(move || work(service, consumer, &lockstep_for_worker, index, real_time))
        .map_err(|e| Error::Run(format!("could not start the {} service: {e}", S::GROUP)))?;
    lockstep.add_worker(handle.thread().clone());
    Ok(handle)
}

fn join<S>(handle: JoinHandle<S>) -> Result<S, Error> {
    handle
        .join()
        .map_err(|_| Error::Run("a service thread panicked".into()))
}

/// Waits until every event due now is in the groups. A group may be full
/// while its worker sleeps: each time the wait runs out, the workers are
/// woken to make room, so the dispatcher can go on.
fn settle(timers: &Timers, lockstep: &LockStep) -> Result<(), Error> {
    let started = Instant::now();
    while !timers.settle(Duration::from_millis(20)) {
        lockstep.kick();
        if started.elapsed() > STEP_PATIENCE {
            return Err(Error::Run(format!(
                "the engine did not hand over a step's events within {STEP_PATIENCE:?}"
            )));
        }
    }
    Ok(())
}

/// Events queued per group, in the order the groups were declared.
fn lags(stats: &Stats) -> [u64; 3] {
    let mut lag = [0; 3];
    for group in &stats.groups {
        let index = match group.name.as_str() {
            OrderService::GROUP => 0,
            Inventory::GROUP => 1,
            Notifier::GROUP => 2,
            _ => continue,
        };
        lag[index] = group.lag;
    }
    lag
}

/// `1234567` as `1,234,567`.
pub(crate) fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
