//! The invariants, checked once the run is over, order by order.
//!
//! Each check reads the final state of every order (the [`World`]), the
//! sale as drawn, what each service counted, and the engine's own counters,
//! and passes only if no order and no counter contradicts it. A failing
//! check names the first orders that broke it, so a seed that fails can be
//! replayed and looked at.
//!
//! After a crash (`--crash-at`) delivery is at-least-once, and three
//! definitions say so, each only when a crash happened (without one they
//! stay as strict as before):
//! - a copy of an event handled before the crash is expected and must be
//!   absorbed: the order service finds the order final, inventory finds the
//!   stock released, the notifier finds the reminder sent; "cancelled
//!   exactly once" and "released exactly once" are still per order;
//! - events that were in the groups when the engine died were fired but
//!   never received; they are counted and close the event sums;
//! - a payment may find no timer for an order cancelled before the crash
//!   (fired ids are remembered in memory only), and a reminder that was in
//!   the notifier's group is lost if its firing had reached the log
//!   (reminders are not acknowledged). Both are counted and reported.
//!
//! And one check is added: the log held exactly the timers the crashed
//! engine's memory held.

use super::args::{Config, show_ms};
use super::buyers::{Buyer, Sale};
use super::driver::{Outcome, group_digits};
use super::services::Receipts;
use super::world::{NEVER, SEEN_BY_ALL, State, World};
use std::sync::atomic::Ordering::SeqCst;

/// Examples of a failure kept per check.
const EXAMPLES: usize = 5;

/// One invariant and its verdict.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Check {
    /// Stable identifier, for scripts.
    pub(crate) id: &'static str,
    /// What it promises, in one line.
    pub(crate) name: &'static str,
    pub(crate) ok: bool,
    /// What was checked, with the numbers.
    pub(crate) detail: String,
    /// How many violations, and the first few.
    pub(crate) violations: u64,
    pub(crate) examples: Vec<String>,
}

/// Collects violations for one check.
pub(super) struct Verdict {
    check: Check,
}

impl Verdict {
    pub(super) fn new(id: &'static str, name: &'static str) -> Self {
        Self {
            check: Check {
                id,
                name,
                ok: true,
                detail: String::new(),
                violations: 0,
                examples: Vec::new(),
            },
        }
    }

    /// Records a violation unless `holds`.
    pub(super) fn expect(&mut self, holds: bool, what: impl FnOnce() -> String) {
        if !holds {
            self.check.ok = false;
            self.check.violations += 1;
            if self.check.examples.len() < EXAMPLES {
                self.check.examples.push(what());
            }
        }
    }

    pub(super) fn done(mut self, detail: String) -> Check {
        self.check.detail = detail;
        self.check
    }
}

/// Runs every check.
pub(crate) fn run(config: &Config, sale: &Sale, world: &World, outcome: &Outcome) -> Vec<Check> {
    vec![
        never_paid_cancelled_once(sale, world, outcome),
        no_paid_order_cancelled(config, sale, world, outcome),
        stock_conserved(sale, world),
        reminders_in_time(config, sale, world, outcome),
        no_event_dropped(world, outcome),
        no_event_early(config, outcome),
    ]
}

fn never_paid_cancelled_once(sale: &Sale, world: &World, outcome: &Outcome) -> Check {
    let mut v = Verdict::new(
        "never_paid_cancelled_once",
        "every never-paid order cancelled exactly once, never before its deadline",
    );
    let (mut cancelled, mut never, mut refunded) = (0u64, 0u64, 0u64);
    let (mut unpaid, mut twice, mut early) = (0u64, 0u64, 0u64);
    for (order, (plan, record)) in sale.plans.iter().zip(&world.records).enumerate() {
        let state = record.state().0;
        if matches!(state, State::Paid | State::Rejected) {
            continue;
        }
        unpaid += u64::from(state != State::Cancelled);
        v.expect(state == State::Cancelled, || {
            format!("order {order}: never paid, but left {state:?}")
        });
        let cancels = record.cancels.load(SeqCst);
        twice += u64::from(cancels > 1);
        v.expect(cancels == 1, || {
            format!("order {order}: cancelled {cancels} times")
        });
        let at_ms = record.cancelled_at_ms.load(SeqCst);
        let in_time = at_ms == NEVER || at_ms >= plan.deadline_ms;
        early += u64::from(!in_time);
        v.expect(in_time, || {
            format!(
                "order {order}: cancelled {} before its deadline",
                show_ms(plan.deadline_ms - at_ms)
            )
        });
        if state == State::Cancelled {
            cancelled += 1;
            never += u64::from(plan.buyer == Buyer::Never);
            refunded += u64::from(record.refunds.load(SeqCst) > 0);
        }
    }
    v.expect(outcome.orders.refused_updates == 0, || {
        format!(
            "{} cancellations refused by the conditional update",
            outcome.orders.refused_updates
        )
    });
    v.expect(outcome.finished, || {
        "the run stopped (guard) with timers still pending".into()
    });
    v.done(format!(
        "{} cancelled ({} never paid, {} paid too late and refunded); {} left unpaid, \
         {} cancelled more than once, {} cancelled before the deadline",
        group_digits(cancelled),
        group_digits(never),
        group_digits(refunded),
        group_digits(unpaid),
        group_digits(twice),
        group_digits(early)
    ))
}

fn no_paid_order_cancelled(
    config: &Config,
    sale: &Sale,
    world: &World,
    outcome: &Outcome,
) -> Check {
    let exact = config.real_time_speed.is_none();
    let mut v = Verdict::new("no_paid_order_cancelled", "no paid order cancelled");
    let (mut paid, mut paid_cancelled, mut paid_late) = (0u64, 0u64, 0u64);
    let (mut refunded, mut refunded_uncancelled) = (0u64, 0u64);
    for (order, (plan, record)) in sale.plans.iter().zip(&world.records).enumerate() {
        let state = record.state().0;
        let refunds = record.refunds.load(SeqCst);
        if refunds > 0 {
            refunded += 1;
            refunded_uncancelled += u64::from(state != State::Cancelled);
            v.expect(state == State::Cancelled, || {
                format!("order {order}: payment refunded, but the order is {state:?}")
            });
        }
        if state != State::Paid {
            continue;
        }
        paid += 1;
        let (cancels, releases) = (record.cancels.load(SeqCst), record.releases.load(SeqCst));
        paid_cancelled += u64::from(cancels + releases > 0);
        v.expect(cancels == 0 && releases == 0, || {
            format!("order {order}: paid, yet cancelled {cancels}x and released {releases}x")
        });
        v.expect(refunds == 0, || format!("order {order}: paid and refunded"));
        v.expect(plan.buyer != Buyer::Never, || {
            format!("order {order}: paid by a buyer who never pays")
        });
        // On the manual clock the engine sees payments and expiries in
        // simulated order, so a payment that reached the platform after
        // the deadline wins only while the expiry is being re-checked.
        if exact {
            let in_time = plan.confirmed_ms < plan.deadline_ms || record.snoozes.load(SeqCst) > 0;
            paid_late += u64::from(!in_time);
            v.expect(in_time, || {
                format!(
                    "order {order}: paid {} after its deadline, with no re-check pending",
                    show_ms(plan.confirmed_ms - plan.deadline_ms)
                )
            });
        }
    }
    let c = &outcome.checkout;
    v.expect(c.refused_updates == 0, || {
        format!(
            "{} payments won the cancel but found the order not unpaid",
            c.refused_updates
        )
    });
    v.expect(c.not_found == 0, || {
        format!(
            "{} payments found no timer (NotFound) for an order still unpaid",
            c.not_found
        )
    });
    // The engine keeps fired ids in memory only: after a crash, a late
    // payment for an order cancelled before it finds no timer. The order
    // table says cancelled, so it is refunded; without a crash the fired-id
    // memory (sized to the sale) answers `AlreadyFired`.
    v.expect(
        outcome.crash.is_some() || c.not_found_cancelled == 0,
        || {
            format!(
                "{} payments found no timer (NotFound) for a cancelled order, with no crash",
                c.not_found_cancelled
            )
        },
    );
    v.expect(c.errors == 0, || {
        format!("{} payments hit an engine error", c.errors)
    });
    let late = if exact {
        format!(
            ", {} after the deadline with no re-check",
            group_digits(paid_late)
        )
    } else {
        String::new()
    };
    let forgotten = if outcome.crash.is_some() {
        format!(
            " ({} of them after the crash for an order cancelled before it, whose timer the \
             engine no longer knew)",
            group_digits(c.not_found_cancelled)
        )
    } else {
        String::new()
    };
    v.done(format!(
        "{} paid, {} of them also cancelled or released{late}; {} late payments refunded{forgotten}, \
         {} of them for an order not cancelled",
        group_digits(paid),
        group_digits(paid_cancelled),
        group_digits(refunded),
        group_digits(refunded_uncancelled)
    ))
}

fn stock_conserved(sale: &Sale, world: &World) -> Check {
    let mut v = Verdict::new(
        "stock_conserved",
        "stock conserved: initial = sold + available, never negative, never leaked",
    );
    let stock = &world.stock;
    let (mut paid_units, mut reserved_units) = (0u64, 0u64);
    for (order, (plan, record)) in sale.plans.iter().zip(&world.records).enumerate() {
        let state = record.state().0;
        let reserved = record.reserved.load(SeqCst);
        reserved_units += u64::from(reserved);
        v.expect(reserved == 0, || {
            format!("order {order}: {reserved} units still reserved ({state:?})")
        });
        let releases = record.releases.load(SeqCst);
        match state {
            State::Paid => paid_units += u64::from(plan.qty),
            State::Cancelled => v.expect(releases == 1, || {
                format!("order {order}: cancelled, stock released {releases} times")
            }),
            _ => {}
        }
    }
    let (sold, available) = (stock.sold(), stock.available());
    v.expect(
        i128::from(stock.initial) == i128::from(sold) + i128::from(available),
        || {
            format!(
                "{} initial != {} sold + {available} available",
                stock.initial, sold
            )
        },
    );
    v.expect(sold == paid_units, || {
        format!("{sold} units sold, but paid orders hold {paid_units}")
    });
    v.expect(stock.lowest() >= 0, || {
        format!("available went down to {}", stock.lowest())
    });
    let empty = stock.empty_moves.load(SeqCst);
    v.expect(empty == 0, || {
        format!("{empty} moves of a reservation that was already gone")
    });
    v.done(format!(
        "{} initial = {} sold + {} available; {} reserved at the end; lowest available {}",
        group_digits(stock.initial),
        group_digits(sold),
        group_digits(available.max(0) as u64),
        group_digits(reserved_units),
        group_digits(stock.lowest().max(0) as u64),
    ))
}

fn reminders_in_time(config: &Config, sale: &Sale, world: &World, outcome: &Outcome) -> Check {
    let exact = config.real_time_speed.is_none();
    let mut v = Verdict::new(
        "reminders_before_expiry_none_after_payment",
        "every reminder sent before its expiry, and none after payment",
    );
    let (mut sent, mut margin_ms) = (0u64, u64::MAX);
    let (mut late, mut early, mut after_payment, mut missing, mut extra) = (0u64, 0, 0, 0, 0);
    let mut lost_for_good = 0u64;
    for (order, (plan, record)) in sale.plans.iter().zip(&world.records).enumerate() {
        let state = record.state().0;
        let count = record.reminders.load(SeqCst);
        sent += u64::from(count);
        v.expect(count <= 1, || format!("order {order}: {count} reminders"));
        let due_ms = plan.reminder_ms(config);
        if count > 0 {
            let sent_ms = record.reminded_at_ms.load(SeqCst);
            let fired_ms = record.reminder_fired_ms.load(SeqCst);
            let paid_ms = record.paid_at_ms.load(SeqCst);
            margin_ms = margin_ms.min(plan.deadline_ms.saturating_sub(sent_ms));
            late += u64::from(sent_ms >= plan.deadline_ms);
            v.expect(sent_ms < plan.deadline_ms, || {
                format!(
                    "order {order}: reminder sent {} after expiry",
                    show_ms(sent_ms - plan.deadline_ms)
                )
            });
            early += u64::from(fired_ms < due_ms);
            v.expect(fired_ms >= due_ms, || {
                format!(
                    "order {order}: reminder fired {} early",
                    show_ms(due_ms - fired_ms)
                )
            });
            // `paid_at_ms` is read after the cancel returned, so a reminder
            // that fired later than it fired after the payment's cancel.
            let before_payment = paid_ms == NEVER || fired_ms <= paid_ms;
            after_payment += u64::from(!before_payment);
            v.expect(before_payment, || {
                format!(
                    "order {order}: reminder fired {} after payment",
                    show_ms(fired_ms - paid_ms)
                )
            });
        }
        // Who must have had one: every order that stayed unpaid past its
        // reminder time (its timer was never cancelled). On the manual clock
        // this is exact: also every order paid at or after that time.
        let expected = match state {
            State::Cancelled => Some(true),
            State::Paid if exact => Some(plan.confirmed_ms >= due_ms),
            _ => None,
        };
        // A reminder in the notifier's group when the engine crashed is
        // lost with it if its firing had reached the log (reminders are not
        // acknowledged, so nothing brings it back), and fires again if not.
        let lost = record.reminders_lost.load(SeqCst) > 0;
        if lost && count == 0 && expected == Some(true) {
            lost_for_good += 1;
            continue;
        }
        if let Some(expected) = expected {
            missing += u64::from(expected && count == 0);
            extra += u64::from(!expected && count > 0);
            v.expect((count == 1) == expected, || {
                format!(
                    "order {order} ({state:?}): {count} reminders, expected {}",
                    u8::from(expected)
                )
            });
        }
    }
    let closest = if sent == 0 {
        String::new()
    } else {
        format!(", the latest {} before expiry", show_ms(margin_ms))
    };
    let scope = if exact {
        ""
    } else {
        " (of the unpaid orders: on the real-time clock, a payment near the reminder \
         time races it)"
    };
    // The notifier sends once per order; a second copy can only come from
    // the log after a crash (see `Notifier`).
    let duplicates = outcome.notifier.duplicates;
    v.expect(outcome.crash.is_some() || duplicates == 0, || {
        format!("{duplicates} reminders received twice, with no crash")
    });
    let crashed = match &outcome.crash {
        Some(_) => format!(
            "; crash: {} copies received again and not sent twice, {} lost with the crashed \
             engine (fired and logged, not acknowledged: never sent)",
            group_digits(duplicates),
            group_digits(lost_for_good)
        ),
        None => String::new(),
    };
    v.done(format!(
        "{} sent{closest}; {} after expiry, {} early, {} after payment; {} missing{scope}, \
         {} unexpected{crashed}",
        group_digits(sent),
        group_digits(late),
        group_digits(early),
        group_digits(after_payment),
        group_digits(missing),
        group_digits(extra)
    ))
}

fn no_event_dropped(world: &World, outcome: &Outcome) -> Check {
    let mut v = Verdict::new(
        "no_event_dropped",
        "no event dropped: every group got every event, and every timer ended",
    );
    let stats = &outcome.final_stats;
    let totals = &outcome.totals;
    let groups: [(&str, &Receipts); 3] = [
        ("orders", &outcome.orders.receipts),
        ("inventory", &outcome.inventory.receipts),
        ("notifier", &outcome.notifier.receipts),
    ];
    // Events in a group when the engine crashed were fired but never
    // received: they died with its memory. Counted, they close the sums.
    for (name, got) in groups {
        v.expect(
            got.reminders + got.lost_reminders == totals.reminders,
            || {
                format!(
                    "{name}: {} reminders received + {} lost in a crash, {} fired",
                    got.reminders, got.lost_reminders, totals.reminders
                )
            },
        );
        let expired = got.expired + got.lost_expired;
        v.expect(
            (totals.expired..=totals.expired + totals.redelivered).contains(&expired),
            || {
                format!(
                    "{name}: {} expiries received + {} lost in a crash, {} fired (+{} redelivered)",
                    got.expired, got.lost_expired, totals.expired, totals.redelivered
                )
            },
        );
    }
    if let Some(crash) = &outcome.crash {
        // No call was in doubt when the engine crashed (the driver crashes
        // it between steps), so the log must hold exactly the timers its
        // memory held: none lost, none that had ended come back.
        let alive = crash.alive_waiting + crash.alive_in_flight;
        v.expect(crash.recovered == alive, || {
            format!(
                "{} timers alive in the crashed engine, {} recovered from the log",
                alive, crash.recovered
            )
        });
        // Each event that died in the groups comes again, except a reminder
        // whose firing had reached the log (not acknowledged: lost).
        let again_expired = crash.redelivered + crash.fired_again_expired;
        for (name, got) in groups {
            v.expect(got.lost_expired <= again_expired, || {
                format!(
                    "{name}: {} expiries lost in the crash, {again_expired} came again",
                    got.lost_expired
                )
            });
        }
        // Reminders fired again are the lost ones whose firing the log did
        // not have, plus copies of ones already sent (the notifier's
        // duplicates, which only a crash makes).
        let lost_reminders = outcome.notifier.receipts.lost_reminders;
        let copies = outcome.notifier.duplicates;
        let reminders_lost = world.reminders_lost();
        v.expect(
            lost_reminders + copies == crash.fired_again_reminders + reminders_lost,
            || {
                format!(
                    "notifier: {lost_reminders} reminders lost in the crash + {copies} copies, \
                     {} fired again + {reminders_lost} never sent",
                    crash.fired_again_reminders
                )
            },
        );
        // The log lags memory only by firings (logged, not waited for), so
        // a timer in flight in memory may come back waiting and overdue,
        // never the other way round.
        v.expect(crash.recovered_in_flight <= crash.alive_in_flight, || {
            format!(
                "{} timers in flight in the crashed engine, {} recovered in flight",
                crash.alive_in_flight, crash.recovered_in_flight
            )
        });
    }
    for (order, record) in world.records.iter().enumerate() {
        if record.state().0 == State::Cancelled {
            let seen = record.seen.load(SeqCst);
            v.expect(seen == SEEN_BY_ALL, || {
                format!("order {order}: its expiry reached groups {seen:03b} of 111")
            });
        }
    }
    let c = &outcome.checkout;
    v.expect(totals.scheduled == c.scheduled, || {
        format!(
            "engine scheduled {}, checkout {}",
            totals.scheduled, c.scheduled
        )
    });
    v.expect(totals.scheduled == totals.cancelled + totals.acked, || {
        format!(
            "{} timers scheduled, {} cancelled + {} acked",
            totals.scheduled, totals.cancelled, totals.acked
        )
    });
    v.expect(totals.acked == outcome.orders.cancelled, || {
        format!(
            "{} timers acked, {} orders cancelled",
            totals.acked, outcome.orders.cancelled
        )
    });
    let lag: u64 = stats.groups.iter().map(|g| g.lag).sum();
    v.expect(
        stats.pending == 0 && stats.in_flight == 0 && lag == 0,
        || {
            format!(
                "at the end: {} pending, {} in flight, {lag} queued",
                stats.pending, stats.in_flight
            )
        },
    );
    v.expect(
        outcome.left_at_shutdown == 0 && outcome.undelivered_at_shutdown == 0,
        || {
            format!(
                "shutdown handed back {} timers and {} events",
                outcome.left_at_shutdown, outcome.undelivered_at_shutdown
            )
        },
    );
    let stuck =
        outcome.inventory.verdict_timeouts + outcome.inventory.anomalies + outcome.orders.anomalies;
    v.expect(stuck == 0, || {
        format!("{stuck} events the services could not act on")
    });
    let crashed = match &outcome.crash {
        Some(crash) => {
            let lost: u64 = groups
                .iter()
                .map(|g| g.1.lost_reminders + g.1.lost_expired)
                .sum();
            format!(
                "; crash: {} timers alive in the crashed engine = {} recovered, {} events lost \
                 in its groups, after recovery {} redelivered and {} fired again, {} reminders \
                 never sent",
                group_digits(crash.alive_waiting + crash.alive_in_flight),
                group_digits(crash.recovered),
                group_digits(lost),
                group_digits(crash.redelivered),
                group_digits(crash.fired_again_expired + crash.fired_again_reminders),
                group_digits(world.reminders_lost())
            )
        }
        None => String::new(),
    };
    v.done(format!(
        "{} events to each of 3 groups ({} reminders, {} expiries incl. re-checks); {} timers = \
         {} cancelled by payment + {} acked by every group; at the end {} pending, {} in flight, \
         {lag} queued, {} handed back by shutdown{crashed}",
        group_digits(totals.reminders + totals.expired),
        group_digits(totals.reminders),
        group_digits(totals.expired),
        group_digits(totals.scheduled),
        group_digits(totals.cancelled),
        group_digits(totals.acked),
        stats.pending,
        stats.in_flight,
        outcome.left_at_shutdown + outcome.undelivered_at_shutdown
    ))
}

fn no_event_early(config: &Config, outcome: &Outcome) -> Check {
    let mut v = Verdict::new("no_event_early", "no event early, none left behind");
    let groups = [
        ("orders", &outcome.orders.receipts),
        ("inventory", &outcome.inventory.receipts),
        ("notifier", &outcome.notifier.receipts),
    ];
    for (name, got) in groups {
        v.expect(got.early == 0, || {
            format!("{name}: {} events fired before their due time", got.early)
        });
        v.expect(got.late_over_step == 0, || {
            format!(
                "{name}: {} events fired a whole step ({}) or more after their due time",
                got.late_over_step,
                show_ms(config.step_ms)
            )
        });
    }
    let early: u64 = groups.iter().map(|g| g.1.early).sum();
    let behind: u64 = groups.iter().map(|g| g.1.late_over_step).sum();
    let latest = show_ms(outcome.orders.receipts.lateness_max_ms);
    let detail = match config.real_time_speed {
        None => format!(
            "{early} events fired before their due time, {behind} a whole step or more after it; \
             the latest {latest} after (the clock moves in {} steps)",
            show_ms(config.step_ms)
        ),
        Some(_) => format!("{early} events fired before their due time; the latest {latest} after"),
    };
    v.done(detail)
}
