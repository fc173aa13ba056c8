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
//! The run ends once every order and payment was handled and the engine
//! holds no timer; or, as a guard, an hour of simulated time after the last
//! planned stage (the checks then report what was left).
//!
//! Invariant: on the manual clock, what the engine and the services do in a
//! step depends only on the state at the step's start and the sale drawn
//! from the seed, so a seed replays exactly (the timings do not).

use super::Error;
use super::args::Config;
use super::buyers::{SALE_OPENS_MS, Sale};
use super::clock::{ScaledClock, SimClock};
use super::lockstep::LockStep;
use super::memory::{self, Rss};
use super::services::{
    Checkout, Context, Inventory, Notifier, OrderService, OrderTimer, Service, Timers, work,
};
use super::world::World;
use duewheel::{BuildError, Consumer, Engine, ManualClock, Stats};
use indicatif::ProgressBar;
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
    /// The engine's statistics once the run ended, before shutdown.
    pub(crate) final_stats: Stats,
    /// Timers and events [`Engine::shutdown`] handed back (must be 0).
    pub(crate) left_at_shutdown: usize,
    pub(crate) undelivered_at_shutdown: usize,
    /// `false` if the guard stopped the run with timers still pending.
    pub(crate) finished: bool,
    pub(crate) samples: Vec<Sample>,
    pub(crate) wall: Duration,
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
    let engine = build_engine(&config, &clock)?;
    #[cfg(feature = "prometheus")]
    let _metrics = match config.metrics_addr {
        // Scraped while the sale runs; stops when the run ends.
        Some(addr) => {
            let server = duewheel::prometheus::Exporter::new(&engine)
                .serve(addr)
                .map_err(|e| Error::Run(format!("cannot serve metrics on {addr}: {e}")))?;
            eprintln!("metrics on http://{}/metrics", server.local_addr());
            Some(server)
        }
        None => None,
    };
    let timers: Timers = engine.scheduler();
    let ctx = Context {
        config: config.clone(),
        sale: sale.clone(),
        world,
        timers: timers.clone(),
    };
    let lockstep = Arc::new(LockStep::new(3));
    let orders = spawn(
        OrderService::new(ctx.clone()),
        engine.subscribe(OrderService::GROUP),
        &lockstep,
        0,
        !manual,
    )?;
    let inventory = spawn(
        Inventory::new(ctx.clone()),
        engine.subscribe(Inventory::GROUP),
        &lockstep,
        1,
        !manual,
    )?;
    let notifier = spawn(
        Notifier::new(ctx.clone()),
        engine.subscribe(Notifier::GROUP),
        &lockstep,
        2,
        !manual,
    )?;
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
    let mut held_back: Vec<u32> = Vec::new();
    let (mut next_order, mut next_payment) = (0, 0);
    let mut placing_wall = Duration::ZERO;
    let mut peak = (0, 0, None);
    let mut max_lag = [0u64; 3];
    let mut finished = false;
    let mut t_ms = first_step_ms;
    let started = Instant::now();
    for step in 0u64.. {
        let end_ms = t_ms + step_ms;
        let placing = Instant::now();
        while next_order < plans.len() && plans[next_order].arrival_ms < end_ms {
            checkout.place(&ctx, next_order as u32);
            next_order += 1;
        }
        placing_wall += placing.elapsed();
        while let Some(&(paid_ms, order)) = payments.get(next_payment).filter(|p| p.0 < end_ms) {
            if manual && Checkout::comes_after_a_stage(&ctx, order, t_ms, paid_ms) {
                held_back.push(order);
            } else {
                checkout.pay(&ctx, order);
            }
            next_payment += 1;
        }
        clock.reach(end_ms);
        let sampling = step % sample_every == 0;
        let mut lag = [0u64; 3];
        if manual {
            settle(&timers, &lockstep)?;
            if sampling {
                lag = lags(&timers.stats());
            }
            if !lockstep.quiesce(STEP_PATIENCE) {
                return Err(Error::Run(format!(
                    "the services did not finish a step within {STEP_PATIENCE:?}"
                )));
            }
            for order in held_back.drain(..) {
                checkout.pay(&ctx, order);
            }
        }
        t_ms = end_ms;
        let all_placed = next_order == plans.len() && next_payment == payments.len();
        if sampling || all_placed {
            let stats = timers.stats();
            if !manual {
                lag = lags(&stats);
            }
            let idle = stats.pending == 0 && stats.in_flight == 0 && lags(&stats) == [0; 3];
            if sampling {
                let sample = Sample {
                    t_ms: t_ms.saturating_sub(SALE_OPENS_MS),
                    pending: stats.pending,
                    expired_total: stats.expired_total,
                    reminders_total: stats.reminders_total,
                    snoozed_total: stats.snoozed_total,
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
                    group_digits(stats.acked_total)
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
    let wall = started.elapsed();
    let final_stats = timers.stats();
    let shutdown = engine.shutdown();
    lockstep.stop();
    let orders = join(orders)?;
    let inventory = join(inventory)?;
    let notifier = join(notifier)?;
    Ok(Outcome {
        checkout,
        orders,
        inventory,
        notifier,
        final_stats,
        left_at_shutdown: shutdown.pending.len(),
        undelivered_at_shutdown: shutdown.undelivered.len(),
        finished,
        samples,
        wall,
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

fn build_engine(config: &Config, clock: &SimClock) -> Result<Engine<u64, OrderTimer>, Error> {
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
    // TODO(durable): with `--durable DIR`, `builder.durable(dir)` here (the
    // id and `OrderTimer` need `Codec`), and `--crash-at` drops the engine
    // mid-sale and builds it again from DIR. Not offered until the durable
    // mode is declared ready.
    let builder = match clock {
        SimClock::Manual(clock) => builder.clock(clock.clone()),
        SimClock::Scaled(clock) => builder.clock(clock.clone()),
    };
    builder.build().map_err(|e| match e {
        BuildError::Invalid(message) => Error::Usage(message.to_string()),
        other => Error::Run(format!("could not start the engine: {other}")),
    })
}

fn spawn<S: Service>(
    service: S,
    consumer: Consumer<u64, OrderTimer>,
    lockstep: &Arc<LockStep>,
    index: usize,
    real_time: bool,
) -> Result<JoinHandle<S>, Error> {
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
