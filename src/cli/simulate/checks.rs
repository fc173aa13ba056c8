//! The invariants, checked once the run is over, order by order.
//!
//! Each check reads the final state of every order (the [`World`]), the
//! sale as drawn, what each service counted, and the engine's own counters,
//! and passes only if no order and no counter contradicts it. A failing
//! check names the first orders that broke it, so a seed that fails can be
//! replayed and looked at.

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
struct Verdict {
    check: Check,
}

impl Verdict {
    fn new(id: &'static str, name: &'static str) -> Self {
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
    fn expect(&mut self, holds: bool, what: impl FnOnce() -> String) {
        if !holds {
            self.check.ok = false;
            self.check.violations += 1;
            if self.check.examples.len() < EXAMPLES {
                self.check.examples.push(what());
            }
        }
    }

    fn done(mut self, detail: String) -> Check {
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
        reminders_in_time(config, sale, world),
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
            "{} payments found no timer (NotFound) for a placed order",
            c.not_found
        )
    });
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
    v.done(format!(
        "{} paid, {} of them also cancelled or released{late}; {} late payments refunded, \
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

fn reminders_in_time(config: &Config, sale: &Sale, world: &World) -> Check {
    let exact = config.real_time_speed.is_none();
    let mut v = Verdict::new(
        "reminders_before_expiry_none_after_payment",
        "every reminder sent before its expiry, and none after payment",
    );
    let (mut sent, mut margin_ms) = (0u64, u64::MAX);
    let (mut late, mut early, mut after_payment, mut missing, mut extra) = (0u64, 0, 0, 0, 0);
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
    v.done(format!(
        "{} sent{closest}; {} after expiry, {} early, {} after payment; {} missing{scope}, \
         {} unexpected",
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
    let groups: [(&str, &Receipts); 3] = [
        ("orders", &outcome.orders.receipts),
        ("inventory", &outcome.inventory.receipts),
        ("notifier", &outcome.notifier.receipts),
    ];
    for (name, got) in groups {
        v.expect(got.reminders == stats.reminders_total, || {
            format!(
                "{name}: {} reminders received, {} fired",
                got.reminders, stats.reminders_total
            )
        });
        v.expect(
            (stats.expired_total..=stats.expired_total + stats.redelivered_total)
                .contains(&got.expired),
            || {
                format!(
                    "{name}: {} expiries received, {} fired (+{} redelivered)",
                    got.expired, stats.expired_total, stats.redelivered_total
                )
            },
        );
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
    v.expect(stats.scheduled_total == c.scheduled, || {
        format!(
            "engine scheduled {}, checkout {}",
            stats.scheduled_total, c.scheduled
        )
    });
    v.expect(
        stats.scheduled_total == stats.cancelled_total + stats.acked_total,
        || {
            format!(
                "{} timers scheduled, {} cancelled + {} acked",
                stats.scheduled_total, stats.cancelled_total, stats.acked_total
            )
        },
    );
    v.expect(stats.acked_total == outcome.orders.cancelled, || {
        format!(
            "{} timers acked, {} orders cancelled",
            stats.acked_total, outcome.orders.cancelled
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
    v.done(format!(
        "{} events to each of 3 groups ({} reminders, {} expiries incl. re-checks); {} timers = \
         {} cancelled by payment + {} acked by every group; at the end {} pending, {} in flight, \
         {lag} queued, {} handed back by shutdown",
        group_digits(stats.reminders_total + stats.expired_total),
        group_digits(stats.reminders_total),
        group_digits(stats.expired_total),
        group_digits(stats.scheduled_total),
        group_digits(stats.cancelled_total),
        group_digits(stats.acked_total),
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
