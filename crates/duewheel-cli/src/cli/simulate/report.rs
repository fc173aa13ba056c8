//! The report: what happened to the orders, whether the invariants held,
//! and how the engine performed; as text for people and as JSON for
//! machines (`--json`).
//!
//! Invariant: on the manual clock, `sale` and `invariants` are functions of
//! the configuration and the seed only (a test compares two runs); the
//! `performance` section is measured and varies from run to run.

use super::args::{Config, show_ms};
use super::buyers::{Buyer, Sale};
use super::checks::Check;
use super::driver::{Crash, Outcome, Totals, group_digits};
use super::memory::Rss;
use super::world::{State, World};
use std::fmt::Write as _;
use std::sync::atomic::Ordering::SeqCst;

/// The whole report.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Report<'a> {
    /// `true` if every invariant held.
    pub(crate) ok: bool,
    /// The command line that reproduces the run.
    pub(crate) command: String,
    pub(crate) config: &'a Config,
    pub(crate) sale: SaleOutcome,
    pub(crate) invariants: Vec<Check>,
    pub(crate) performance: Performance,
    /// The engine's counters over the run (both engines' after a crash).
    pub(crate) engine: Totals,
    /// `--crash-at`: when the engine crashed and what recovered.
    pub(crate) crash: Option<CrashReport>,
}

/// The crash, as reported.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct CrashReport {
    #[serde(flatten)]
    pub(crate) crash: Crash,
    /// Events that were in the groups when the engine crashed (all groups).
    pub(crate) lost_in_groups: u64,
    /// Copies of events the services had already handled, received after
    /// the crash and absorbed (all groups).
    pub(crate) duplicates_absorbed: u64,
    /// Orders whose reminder was in the notifier's group at the crash and
    /// never came again (its firing had reached the log).
    pub(crate) reminders_lost: u64,
}

/// What happened to the orders (deterministic on the manual clock).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct SaleOutcome {
    pub(crate) orders: u64,
    /// Given a payment deadline.
    pub(crate) placed: u64,
    pub(crate) sold_out: u64,
    pub(crate) engine_refused: u64,
    pub(crate) paid: u64,
    pub(crate) paid_after_recheck: u64,
    pub(crate) cancelled: u64,
    pub(crate) cancelled_never_paid: u64,
    /// Payments that lost the race to the expiry (or whose re-checks ran
    /// out), refunded; their orders are among the cancelled.
    pub(crate) refunded: u64,
    /// Payments in the window's last second, and how many of them lost.
    pub(crate) last_second_payments: u64,
    pub(crate) last_second_refunded: u64,
    pub(crate) rechecks: u64,
    pub(crate) rechecks_ran_out: u64,
    pub(crate) reminders_sent: u64,
    pub(crate) stock_initial: u64,
    pub(crate) stock_sold: u64,
    pub(crate) stock_available: i64,
}

/// Measured, varies between runs.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Performance {
    /// `"manual clock, 100ms steps"` or `"system clock x60"`.
    pub(crate) clock: String,
    /// `"in memory"` or the durable log, its sync policy and the checkout
    /// threads.
    pub(crate) storage: String,
    pub(crate) wall_s: f64,
    /// With `--durable`: log records appended and fsyncs made (segments,
    /// snapshots, directory) during the run.
    pub(crate) log_records: Option<u64>,
    pub(crate) fsyncs: Option<u64>,
    pub(crate) simulated_s: f64,
    pub(crate) speedup: f64,
    /// Orders placed per second of wall time spent placing them.
    pub(crate) orders_scheduled_per_s: f64,
    /// Events received by all groups.
    pub(crate) events_delivered: u64,
    pub(crate) events_delivered_per_s: f64,
    pub(crate) lateness_p50_ms: u64,
    pub(crate) lateness_p99_ms: u64,
    pub(crate) lateness_max_ms: u64,
    /// The engine's tick: lateness is measured in whole ticks.
    pub(crate) tick_ms: u64,
    /// Longest time from an event's exact due time to its firing, as the
    /// services saw it (includes rounding up to the tick).
    pub(crate) due_to_fired_max_ms: u64,
    pub(crate) peak_pending: usize,
    pub(crate) peak_pending_at_s: f64,
    pub(crate) rss_bytes: Option<u64>,
    pub(crate) rss_peak_bytes: Option<u64>,
    pub(crate) rss_engine_start_bytes: Option<u64>,
    pub(crate) rss_at_peak_pending_bytes: Option<u64>,
    /// RSS growth from the engine's start to peak pending, per pending timer.
    pub(crate) bytes_per_pending_timer: Option<f64>,
    pub(crate) groups: Vec<GroupReport>,
}

/// One consumer group.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct GroupReport {
    pub(crate) name: &'static str,
    pub(crate) events: u64,
    /// Most events queued for the group right after a dispatch (sampled
    /// once per simulated second).
    pub(crate) max_lag: u64,
    pub(crate) final_lag: u64,
}

impl<'a> Report<'a> {
    pub(crate) fn new(
        config: &'a Config,
        sale: &Sale,
        world: &World,
        outcome: &Outcome,
        invariants: Vec<Check>,
    ) -> Self {
        Self {
            ok: invariants.iter().all(|c| c.ok),
            command: command_line(),
            config,
            sale: sale_outcome(config, sale, world, outcome),
            invariants,
            performance: performance(config, outcome),
            engine: outcome.totals,
            crash: outcome.crash.clone().map(|crash| CrashReport {
                lost_in_groups: [
                    &outcome.orders.receipts,
                    &outcome.inventory.receipts,
                    &outcome.notifier.receipts,
                ]
                .iter()
                .map(|r| r.lost_reminders + r.lost_expired)
                .sum(),
                duplicates_absorbed: outcome.duplicates().saturating_sub(crash.duplicates_before),
                reminders_lost: world.reminders_lost(),
                crash,
            }),
        }
    }

    /// The report for people.
    pub(crate) fn to_text(&self) -> String {
        let c = self.config;
        let s = &self.sale;
        let p = &self.performance;
        let pct = |n: u64| 100.0 * n as f64 / s.orders.max(1) as f64;
        let n = |v: u64| group_digits(v);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "duewheel simulate: {} orders over {}, {} payment window, reminder {} before; seed {}",
            n(s.orders),
            show_ms(c.sale_ms),
            show_ms(c.window_ms),
            show_ms(c.remind_before_ms),
            c.seed
        );
        let _ = writeln!(out, "  {}, {} shards, {}\n", p.clock, c.shards, p.storage);
        let _ = writeln!(out, "sale");
        let _ = writeln!(
            out,
            "  paid                 {:>11}  {:5.1}%  ({} after a \"pending\" re-check)",
            n(s.paid),
            pct(s.paid),
            n(s.paid_after_recheck)
        );
        let _ = writeln!(
            out,
            "  cancelled unpaid     {:>11}  {:5.1}%  ({} never paid, {} paid too late: refunded)",
            n(s.cancelled),
            pct(s.cancelled),
            n(s.cancelled_never_paid),
            n(s.refunded)
        );
        if s.sold_out + s.engine_refused > 0 {
            let _ = writeln!(
                out,
                "  turned away          {:>11}  {:5.1}%  ({} sold out, {} refused by the engine)",
                n(s.sold_out + s.engine_refused),
                pct(s.sold_out + s.engine_refused),
                n(s.sold_out),
                n(s.engine_refused)
            );
        }
        let _ = writeln!(
            out,
            "  last-second payments {:>11}           ({} lost the race to the expiry)",
            n(s.last_second_payments),
            n(s.last_second_refunded)
        );
        let _ = writeln!(
            out,
            "  re-checks            {:>11}           ({} orders cancelled when they ran out)",
            n(s.rechecks),
            n(s.rechecks_ran_out)
        );
        let _ = writeln!(out, "  reminders sent       {:>11}", n(s.reminders_sent));
        if let Some(crash) = &self.crash {
            crash.write_text(&mut out);
        }
        let _ = writeln!(out, "\ninvariants");
        for check in &self.invariants {
            let mark = if check.ok { "✓" } else { "✗" };
            let _ = writeln!(out, "  {mark} {}", check.name);
            let _ = writeln!(out, "      {}", check.detail);
            if !check.ok {
                let _ = writeln!(out, "      {} violations, e.g.:", n(check.violations));
                for example in &check.examples {
                    let _ = writeln!(out, "        - {example}");
                }
            }
        }
        let _ = writeln!(out, "\nperformance");
        let _ = writeln!(
            out,
            "  wall time            {:.1} s for {} simulated ({:.0}x real time)",
            p.wall_s,
            show_ms((p.simulated_s * 1e3) as u64),
            p.speedup
        );
        if let (Some(records), Some(fsyncs)) = (p.log_records, p.fsyncs) {
            let _ = writeln!(
                out,
                "  log                  {} records, {} fsyncs ({:.1} records per fsync)",
                n(records),
                n(fsyncs),
                records as f64 / fsyncs.max(1) as f64
            );
        }
        let _ = writeln!(
            out,
            "  scheduled            {} orders at {}/s",
            n(s.placed),
            rate(p.orders_scheduled_per_s)
        );
        let _ = writeln!(
            out,
            "  delivered            {} events at {}/s (all groups)",
            n(p.events_delivered),
            rate(p.events_delivered_per_s)
        );
        let _ = writeln!(
            out,
            "  lateness             p50 {} ms, p99 {} ms, max {} ms{}",
            p.lateness_p50_ms,
            p.lateness_p99_ms,
            p.lateness_max_ms,
            match c.real_time_speed {
                None => format!(
                    " behind the clock ({} ticks = steps; due -> fired at most {} ms)",
                    show_ms(p.tick_ms),
                    p.due_to_fired_max_ms
                ),
                Some(_) => format!(" ({} ms ticks)", p.tick_ms),
            }
        );
        let _ = writeln!(
            out,
            "  peak pending         {} timers at {}",
            n(p.peak_pending as u64),
            show_ms((p.peak_pending_at_s * 1e3) as u64)
        );
        match (p.rss_bytes, p.rss_peak_bytes) {
            (Some(now), Some(peak)) => {
                let per_timer = p
                    .bytes_per_pending_timer
                    .map_or(String::new(), |b| format!("; {b:.0} B per pending timer"));
                let _ = writeln!(
                    out,
                    "  memory               RSS {} (peak {}){per_timer}",
                    mib(now),
                    mib(peak)
                );
            }
            _ => {
                let _ = writeln!(out, "  memory               (no /proc/self/status here)");
            }
        }
        let lag: Vec<String> = p
            .groups
            .iter()
            .map(|g| format!("{} {} / {}", g.name, n(g.max_lag), n(g.final_lag)))
            .collect();
        let _ = writeln!(out, "  lag (max / end)      {}", lag.join(", "));
        let held = self.invariants.iter().filter(|c| c.ok).count();
        let _ = writeln!(
            out,
            "\n{}",
            if self.ok {
                format!("all {held} invariants hold")
            } else {
                format!(
                    "FAILED: {} of {} invariants broken",
                    self.invariants.len() - held,
                    self.invariants.len()
                )
            }
        );
        out
    }
}

fn sale_outcome(config: &Config, sale: &Sale, world: &World, outcome: &Outcome) -> SaleOutcome {
    let (mut cancelled, mut never, mut refunded) = (0, 0, 0);
    let (mut last_second, mut last_second_refunded) = (0, 0);
    for (plan, record) in sale.plans.iter().zip(&world.records) {
        let state = record.state().0;
        let was_refunded = record.refunds.load(SeqCst) > 0;
        if state == State::Cancelled {
            cancelled += 1;
            never += u64::from(plan.buyer == Buyer::Never);
            refunded += u64::from(was_refunded);
        }
        if plan.last_second && state != State::Rejected {
            last_second += 1;
            last_second_refunded += u64::from(was_refunded);
        }
    }
    let c = &outcome.checkout;
    SaleOutcome {
        orders: config.orders,
        placed: c.scheduled,
        sold_out: c.sold_out,
        engine_refused: c.engine_refused,
        paid: c.paid,
        paid_after_recheck: c.paid_after_recheck,
        cancelled,
        cancelled_never_paid: never,
        refunded,
        last_second_payments: last_second,
        last_second_refunded,
        rechecks: outcome.orders.rechecks,
        rechecks_ran_out: outcome.orders.gave_up,
        reminders_sent: outcome.notifier.sent,
        stock_initial: world.stock.initial,
        stock_sold: world.stock.sold(),
        stock_available: world.stock.available(),
    }
}

fn performance(config: &Config, outcome: &Outcome) -> Performance {
    let stats = &outcome.final_stats;
    let wall_s = outcome.wall.as_secs_f64();
    let simulated_s = outcome.simulated_ms as f64 / 1e3;
    let receipts = [
        ("orders", &outcome.orders.receipts, 0),
        ("inventory", &outcome.inventory.receipts, 1),
        ("notifier", &outcome.notifier.receipts, 2),
    ];
    let events_delivered = receipts.iter().map(|(_, r, _)| r.total()).sum();
    let groups = receipts
        .iter()
        .map(|&(name, r, i)| GroupReport {
            name,
            events: r.total(),
            max_lag: outcome.max_lag[i],
            final_lag: stats
                .groups
                .iter()
                .find(|g| g.name == name)
                .map_or(0, |g| g.lag),
        })
        .collect();
    let per_timer = match (outcome.rss_baseline, outcome.rss_at_peak) {
        (Some(base), Some(peak)) if outcome.peak_pending > 0 => {
            Some(peak.now_bytes.saturating_sub(base.now_bytes) as f64 / outcome.peak_pending as f64)
        }
        _ => None,
    };
    Performance {
        clock: match config.real_time_speed {
            None => format!("manual clock, {} steps", show_ms(config.step_ms)),
            Some(speed) => format!("system clock x{speed}"),
        },
        storage: match &config.durable {
            None => "in memory".into(),
            Some(d) => format!(
                "durable log in {} ({}), {} checkout callers",
                d.dir.display(),
                match d.sync_every_ms {
                    None => "fsync before each call returns, shared by group commit".into(),
                    Some(n) => format!("fsync every {n} ms"),
                },
                config.checkout_threads
            ),
        },
        wall_s,
        log_records: config.durable.as_ref().map(|_| outcome.log_records),
        fsyncs: config.durable.as_ref().map(|_| outcome.fsyncs),
        simulated_s,
        speedup: simulated_s / wall_s.max(1e-9),
        orders_scheduled_per_s: outcome.checkout.scheduled as f64
            / outcome.placing_wall.as_secs_f64().max(1e-9),
        events_delivered,
        events_delivered_per_s: events_delivered as f64 / wall_s.max(1e-9),
        lateness_p50_ms: stats.lateness.p50_ticks * stats.tick_ms,
        lateness_p99_ms: stats.lateness.p99_ticks * stats.tick_ms,
        lateness_max_ms: stats.lateness.max_ticks * stats.tick_ms,
        tick_ms: stats.tick_ms,
        due_to_fired_max_ms: receipts
            .iter()
            .map(|(_, r, _)| r.lateness_max_ms)
            .max()
            .unwrap_or(0),
        peak_pending: outcome.peak_pending,
        peak_pending_at_s: outcome.peak_pending_at_ms as f64 / 1e3,
        rss_bytes: outcome.rss_end.map(|r: Rss| r.now_bytes),
        rss_peak_bytes: outcome.rss_end.map(|r| r.peak_bytes),
        rss_engine_start_bytes: outcome.rss_baseline.map(|r| r.now_bytes),
        rss_at_peak_pending_bytes: outcome.rss_at_peak.map(|r| r.now_bytes),
        bytes_per_pending_timer: per_timer,
        groups,
    }
}

impl CrashReport {
    /// The crash section of the text report.
    pub(crate) fn write_text(&self, out: &mut String) {
        let c = &self.crash;
        let n = |v: u64| group_digits(v);
        let _ = writeln!(out, "\ncrash (--crash-at)");
        let _ = writeln!(
            out,
            "  killed at            {} simulated: no shutdown, no final checkpoint (I/O attempts \
             after the crash, all refused: {})",
            show_ms(c.at_ms),
            n(c.io_refused)
        );
        let _ = writeln!(
            out,
            "  in its memory        {} timers ({} waiting, {} in flight); {} events in its groups, \
             lost with it",
            n(c.alive_waiting + c.alive_in_flight),
            n(c.alive_waiting),
            n(c.alive_in_flight),
            n(self.lost_in_groups)
        );
        let torn = if c.torn_tail_bytes > 0 {
            format!(", a torn tail of {} bytes cut", n(c.torn_tail_bytes))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  recovered            {} timers ({} waiting, {} in flight, {} overdue) from {} \
             snapshot entries + {} log records{torn}, in {:.0} ms",
            n(c.recovered),
            n(c.recovered - c.recovered_in_flight),
            n(c.recovered_in_flight),
            n(c.recovered_overdue),
            n(c.snapshot_entries),
            n(c.log_records),
            c.recovery_ms
        );
        let _ = writeln!(
            out,
            "  after recovery       {} expiries redelivered (recovered in flight); {} expiries and \
             {} reminders fired again (their firing had not reached the log); {} copies absorbed \
             by the services",
            n(c.redelivered),
            n(c.fired_again_expired),
            n(c.fired_again_reminders),
            n(self.duplicates_absorbed)
        );
        let _ = writeln!(
            out,
            "  reminders lost       {} (in the notifier's group at the crash, firing logged: \
             reminders are not acknowledged, so nothing brings them back)",
            n(self.reminders_lost)
        );
    }
}

/// The command line as typed, quoted where a shell would need it.
fn command_line() -> String {
    std::env::args()
        .enumerate()
        .map(|(i, arg)| {
            let arg = if i == 0 { "duewheel".to_string() } else { arg };
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", arg.replace('\'', r"'\''"))
            } else {
                arg
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `1234567.0` as `1.23 M`.
pub(crate) fn rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.0} k", per_s / 1e3)
    } else {
        format!("{per_s:.0}")
    }
}

/// Bytes as MiB.
pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}
