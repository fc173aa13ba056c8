//! The invariants of `simulate --cluster`, checked once every node is
//! gone, from what the driver collected: each order's answers and every
//! `ev` line of every node.
//!
//! The cluster promises at-least-once delivery of every acknowledged
//! deadline, never early, never after a winning cancel, across `kill -9`.
//! Its duplicates are explained: a row claimed and not acked (its owner was
//! killed between writing `ev` and acking, or the ack timed out) is
//! delivered again with a higher attempt. So:
//!
//! - an order whose schedule was answered `ok` and whose cancel did not win
//!   (no payment, or the cancel answered `fired` or `notfound`) is delivered
//!   at least once;
//! - no delivery before its deadline (`fired_at_ms >= deadline_ms`), and
//!   every delivery carries the deadline and payload it was scheduled with;
//! - an order whose cancel answered `cancelled` is never delivered;
//! - a second delivery of an order has attempt > 1: attempt 1 is delivered
//!   at most once;
//! - every duplicate is explained: its id was claimed and not acked on a
//!   node when that node was killed or paused (read from the table 200 ms
//!   after the signal), or it was delivered again by the same node under
//!   the same claim (its ack timed out); anything else fails;
//! - only timers that may be stored are delivered (not one refused as
//!   `invalid`, `unavailable` or `shutdown`, which are definitely not);
//! - every command to a node that stayed up was answered exactly once, and
//!   every line was in the protocol;
//! - every node not killed stayed up and exited 0 after `quit`;
//! - every kill's shards were taken over by the survivors;
//! - a node paused for two leases or more had its shards taken over while
//!   it slept, and after `CONT` delivered nothing under a lost epoch that
//!   it had not claimed before the pause.
//!
//! Answers lost to a killed node (and `indoubt` ones) leave the order
//! unknown: it is excluded from the first three checks and counted in
//! their detail.
//!
//! With `--effects pg` the EFFECTS are judged too, from the application's
//! tables read at the end (the database is the truth, whatever answers
//! were lost): no order cancelled twice, no stock released twice (the
//! stock equals the initial stock less the quantity of the orders not
//! cancelled), no paid order cancelled, no unpaid order left uncancelled,
//! no order without its deadline (nor a deadline without its order), and
//! every order answered `ok` stored, none definitely refused stored.

use super::checks::{Check, Verdict};
use super::cluster::{CancelState, ErrKind, LEASE_TTL_MS, Order, Outcome, Sched};
use super::driver::group_digits;

/// Runs every check (with `--effects pg`, the effects' too).
pub(super) fn run(outcome: &Outcome) -> Vec<Check> {
    let mut checks = deliveries(outcome);
    if outcome.effects.is_some() || outcome.effects_error.is_some() {
        checks.extend(effects(outcome));
    }
    checks
}

fn deliveries(outcome: &Outcome) -> Vec<Check> {
    vec![
        acked_delivered(outcome),
        never_early(outcome),
        cancelled_never_delivered(outcome),
        duplicates_are_redeliveries(outcome),
        only_stored_delivered(outcome),
        every_command_answered(outcome),
        nodes_healthy(outcome),
        kills_taken_over(outcome),
        paused_nodes_fenced(outcome),
    ]
}

/// `true` if the order must be delivered: acked, and no cancel won or may
/// have won.
pub(super) fn must_fire(o: &Order) -> bool {
    o.sched == Sched::Ok
        && matches!(
            o.cancel,
            CancelState::NoPayment
                | CancelState::Fired
                | CancelState::NotFound
                | CancelState::Skipped
        )
}

fn acked_delivered(outcome: &Outcome) -> Check {
    let mut v = Verdict::new(
        "acked_delivered",
        "every order acked `ok` and not cancelled expired at least once",
    );
    let (mut expected, mut unknown_sched, mut unknown_cancel) = (0u64, 0u64, 0u64);
    let mut ev_lost = 0u64;
    for (order, o) in outcome.orders.iter().enumerate() {
        match o.sched {
            Sched::Unknown | Sched::Refused(ErrKind::InDoubt) => unknown_sched += 1,
            _ => {}
        }
        if o.sched == Sched::Ok
            && matches!(
                o.cancel,
                CancelState::Unknown | CancelState::Failed(ErrKind::InDoubt)
            )
        {
            unknown_cancel += 1;
        }
        if !must_fire(o) {
            continue;
        }
        expected += 1;
        // `--effects pg`: an expiry that committed without its `ev` line
        // (the commit's answer lost to a restart) shows in the tables.
        let id = Order::id_of(order);
        let effect_done = o.deliveries.is_empty()
            && outcome
                .effects
                .as_ref()
                .and_then(|e| e.orders.get(&id))
                .is_some_and(|r| r.status == "cancelled" && r.cancels >= 1);
        ev_lost += u64::from(effect_done);
        v.expect(!o.deliveries.is_empty() || effect_done, || {
            let id = Order::id_of(order);
            let shard = outcome.shard_map.shard_of_id(id);
            let victim = outcome
                .kills
                .iter()
                .find(|k| k.handover.shards.contains(&shard))
                .map(|k| format!(" (owned by {} when it was killed)", k.name))
                .unwrap_or_default();
            let row = outcome
                .missing_rows
                .get(&id)
                .map_or("no row left", String::as_str);
            format!(
                "order {order} (id {id}, deadline {} ms into the sale, shard {shard}{victim}): \
                 acked by {}, cancel {:?}, never delivered; {row}",
                o.deadline_ms.saturating_sub(outcome.open_ms),
                outcome.nodes[o.sched_node].name,
                o.cancel
            )
        });
    }
    v.done(format!(
        "{} acked orders without a winning cancel, each delivered{}; excluded as unknown: {} \
         schedules and {} cancels whose answer was lost to a killed node or in doubt",
        group_digits(expected),
        if ev_lost > 0 {
            format!(
                " ({} without an `ev` line, their expiry committed in the tables: the \
                 commit's answer was lost)",
                group_digits(ev_lost)
            )
        } else {
            String::new()
        },
        group_digits(unknown_sched),
        group_digits(unknown_cancel)
    ))
}

fn never_early(outcome: &Outcome) -> Check {
    let mut v = Verdict::new(
        "never_early",
        "no delivery before its deadline, each with the deadline and payload scheduled",
    );
    let mut deliveries = 0u64;
    for (order, o) in outcome.orders.iter().enumerate() {
        let payload = &o.payload;
        for d in &o.deliveries {
            deliveries += 1;
            let ev = &d.ev;
            v.expect(ev.fired_at_ms >= ev.deadline_ms, || {
                format!(
                    "order {order}: fired at {} ms, {} ms before its deadline (attempt {}, {})",
                    ev.fired_at_ms,
                    ev.deadline_ms - ev.fired_at_ms,
                    ev.attempt,
                    outcome.nodes[d.node].name
                )
            });
            v.expect(ev.deadline_ms == o.deadline_ms && ev.payload == *payload, || {
                format!(
                    "order {order}: delivered with deadline {} and payload {:?}, scheduled with \
                     {} and {payload:?}",
                    ev.deadline_ms, ev.payload, o.deadline_ms
                )
            });
        }
    }
    v.done(format!(
        "{} deliveries: fired_at_ms >= deadline_ms, deadline and payload as scheduled",
        group_digits(deliveries)
    ))
}

fn cancelled_never_delivered(outcome: &Outcome) -> Check {
    let mut v = Verdict::new(
        "cancelled_never_delivered",
        "no order whose cancel answered `cancelled` was delivered",
    );
    let mut cancelled = 0u64;
    for (order, o) in outcome.orders.iter().enumerate() {
        if o.cancel != CancelState::Cancelled {
            continue;
        }
        cancelled += 1;
        v.expect(o.deliveries.is_empty(), || {
            let d = &o.deliveries[0];
            format!(
                "order {order}: cancel answered `cancelled` by {}, yet delivered by {} (attempt \
                 {}, epoch {})",
                outcome.nodes[o.cancel_node].name,
                outcome.nodes[d.node].name,
                d.ev.attempt,
                d.ev.epoch
            )
        });
    }
    v.done(format!(
        "{} cancels won; none of them delivered",
        group_digits(cancelled)
    ))
}

fn duplicates_are_redeliveries(outcome: &Outcome) -> Check {
    let mut v = Verdict::new(
        "duplicates_are_redeliveries",
        "every duplicate delivery has attempt > 1 (a claimed, unacked row delivered again)",
    );
    let (mut duplicates, mut other_node, mut after_kill) = (0u64, 0u64, 0u64);
    let (mut by_fault, mut same_claim, mut one_effect) = (0u64, 0u64, 0u64);
    let first_kill_wall_ms = outcome.kills.iter().map(|k| k.at_wall_ms).min();
    for (order, o) in outcome.orders.iter().enumerate() {
        if o.deliveries.len() < 2 {
            continue;
        }
        let extra = o.deliveries.len() as u64 - 1;
        duplicates += extra;
        let id = Order::id_of(order);
        let cause = duplicate_cause(outcome, order);
        match cause {
            DuplicateCause::Fault => by_fault += extra,
            DuplicateCause::SameClaim => same_claim += extra,
            DuplicateCause::OneEffect => one_effect += extra,
            DuplicateCause::Unexplained => {}
        }
        v.expect(cause != DuplicateCause::Unexplained, || {
            format!(
                "order {order} (id {id}): delivered {} times, by {}; not claimed on a killed or \
                 paused node at that moment, and not one node's redelivery of one claim",
                o.deliveries.len(),
                o.deliveries
                    .iter()
                    .map(|d| format!(
                        "{} (attempt {}, epoch {})",
                        outcome.nodes[d.node].name, d.ev.attempt, d.ev.epoch
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        let firsts = o.deliveries.iter().filter(|d| d.ev.attempt <= 1).count();
        v.expect(firsts <= 1, || {
            let seen: Vec<String> = o
                .deliveries
                .iter()
                .map(|d| {
                    format!(
                        "attempt {} epoch {} by {}",
                        d.ev.attempt, d.ev.epoch, outcome.nodes[d.node].name
                    )
                })
                .collect();
            format!("order {order}: delivered {firsts} times as attempt 1: {seen:?}")
        });
        let first_node = o.deliveries[0].node;
        for d in &o.deliveries[1..] {
            other_node += u64::from(d.node != first_node);
            after_kill += u64::from(first_kill_wall_ms.is_some_and(|k| d.received_wall_ms >= k));
        }
    }
    v.done(format!(
        "{} duplicate deliveries, each with attempt > 1; {} of ids claimed and not acked on a \
         node killed or paused, {} one node's redelivery of one claim (ack timed out), {} `ev` \
         lines of orders with one effect in the tables (--effects pg); {} by another node than \
         the first (takeover), {} after a kill",
        group_digits(duplicates),
        group_digits(by_fault),
        group_digits(same_claim),
        group_digits(one_effect),
        group_digits(other_node),
        group_digits(after_kill)
    ))
}

/// Why an order was delivered more than once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DuplicateCause {
    /// Its row was claimed and not acked on a node when that node was
    /// killed or paused: the next owner claimed it again, or the paused
    /// node printed it late.
    Fault,
    /// One node delivered one claim again (its consumer's ack timed out).
    SameClaim,
    /// `--effects pg`: more than one `ev` line, one effect in the tables
    /// (a line printed for an attempt that did not commit); effects, not
    /// lines, are what this mode judges.
    OneEffect,
    /// Neither: a failure.
    Unexplained,
}

/// Why order `order` (delivered more than once) was.
pub(super) fn duplicate_cause(outcome: &Outcome, order: usize) -> DuplicateCause {
    let o = &outcome.orders[order];
    let id = Order::id_of(order);
    let held = outcome
        .kills
        .iter()
        .map(|k| &k.handover)
        .chain(outcome.pauses.iter().map(|p| &p.handover))
        .any(|h| h.claimed_ids.contains(&id));
    if held {
        return DuplicateCause::Fault;
    }
    let first = &o.deliveries[0];
    // Epoch 0: the node no longer knew the claim (its ack ended it first).
    let one_claim = o
        .deliveries
        .iter()
        .all(|d| d.node == first.node && (d.ev.epoch == first.ev.epoch || d.ev.epoch == 0));
    let one_effect = outcome
        .effects
        .as_ref()
        .and_then(|e| e.orders.get(&id))
        .is_some_and(|r| r.cancels <= 1);
    if one_claim {
        DuplicateCause::SameClaim
    } else if one_effect {
        DuplicateCause::OneEffect
    } else {
        DuplicateCause::Unexplained
    }
}

fn only_stored_delivered(outcome: &Outcome) -> Check {
    let mut v = Verdict::new(
        "only_stored_delivered",
        "no delivery of a timer that was never stored (refused `invalid`, `unavailable`, \
         `shutdown`, or never sent)",
    );
    let mut refused = 0u64;
    for (order, o) in outcome.orders.iter().enumerate() {
        let never_stored = matches!(
            o.sched,
            Sched::NotSent
                | Sched::Refused(ErrKind::Invalid | ErrKind::Unavailable | ErrKind::Shutdown)
        );
        refused += u64::from(never_stored);
        v.expect(!never_stored || o.deliveries.is_empty(), || {
            format!(
                "order {order}: schedule {:?}, yet delivered by {}",
                o.sched, outcome.nodes[o.deliveries[0].node].name
            )
        });
    }
    v.done(format!(
        "{} orders refused or never sent; none delivered",
        group_digits(refused)
    ))
}

fn every_command_answered(outcome: &Outcome) -> Check {
    let mut v = Verdict::new(
        "every_command_answered",
        "every command to a node that stayed up answered once, every line in the protocol",
    );
    let mut answered = 0u64;
    for (order, o) in outcome.orders.iter().enumerate() {
        v.expect(o.sched != Sched::Pending, || {
            format!(
                "order {order}: schedule sent to {} never answered",
                outcome.nodes[o.sched_node].name
            )
        });
        v.expect(o.cancel != CancelState::Pending, || {
            format!(
                "order {order}: cancel sent to {} never answered",
                outcome.nodes[o.cancel_node].name
            )
        });
        v.expect(o.cancel != CancelState::Deferred, || {
            format!("order {order}: its payment waited for a schedule answer that never came")
        });
    }
    for run in &outcome.nodes {
        answered += run.answered;
    }
    for stray in &outcome.strays {
        v.expect(false, || stray.clone());
    }
    // Strays beyond the ones kept count too.
    for _ in outcome.strays.len() as u64..outcome.stray_count {
        v.expect(false, String::new);
    }
    v.done(format!(
        "{} answers, {} lines outside the protocol or unasked for",
        group_digits(answered),
        group_digits(outcome.stray_count)
    ))
}

fn nodes_healthy(outcome: &Outcome) -> Check {
    let mut v = Verdict::new(
        "nodes_healthy",
        "every node not killed stayed up and exited 0 after `quit`; nothing timed out",
    );
    for run in &outcome.nodes {
        v.expect(!run.unexpected_end, || {
            format!(
                "{}: {}; stderr:\n{}",
                run.name,
                run.end,
                run.stderr_tail.as_deref().unwrap_or("")
            )
        });
    }
    v.expect(!outcome.timed_out, || {
        "the drain timed out: deliveries or answers still missing 30 s after the last deadline"
            .into()
    });
    let survivors = outcome.nodes.iter().filter(|r| !r.killed).count();
    v.done(format!(
        "{survivors} survivors exited 0, {} killed on purpose",
        outcome.nodes.len() - survivors
    ))
}

fn kills_taken_over(outcome: &Outcome) -> Check {
    let mut v = Verdict::new(
        "kills_taken_over",
        "every killed node's shards were taken over by the survivors",
    );
    let mut parts = Vec::new();
    for kill in &outcome.kills {
        v.expect(
            kill.handover.shards.is_empty() || kill.handover.taken_after_ms.is_some(),
            || {
                format!(
                    "{}: {} shards, not all taken over by the end",
                    kill.name,
                    kill.handover.shards.len()
                )
            },
        );
        let n = kill.handover.shards.len();
        parts.push(match kill.handover.taken_after_ms {
            Some(ms) => format!("{}: {n} shards in {ms} ms", kill.name),
            None if n == 0 => format!("{}: owned no shard", kill.name),
            None => format!("{}: {n} shards, never", kill.name),
        });
    }
    v.done(if parts.is_empty() {
        "no --kill-node".into()
    } else {
        parts.join("; ")
    })
}

fn paused_nodes_fenced(outcome: &Outcome) -> Check {
    let mut v = Verdict::new(
        "paused_nodes_fenced",
        "a node paused for two leases or more lost its shards while it slept, and after `CONT` \
         delivered under a lost epoch only rows it had claimed before the pause",
    );
    let mut parts = Vec::new();
    for pause in &outcome.pauses {
        let h = &pause.handover;
        let long = pause.for_wall_ms >= 2 * LEASE_TTL_MS;
        let taken_asleep = match (h.taken_after_ms, pause.resumed_after_ms) {
            (Some(taken), Some(resumed)) => taken <= resumed,
            (Some(_), None) => true,
            (None, _) => false,
        };
        v.expect(!long || h.shards.is_empty() || taken_asleep, || {
            format!(
                "{}: paused {} ms, yet its {} shards were not all taken over while it slept \
                 (taken after {:?} ms, resumed after {:?} ms)",
                pause.name,
                pause.for_wall_ms,
                h.shards.len(),
                h.taken_after_ms,
                pause.resumed_after_ms
            )
        });
        v.expect(pause.stale_claims == 0, || {
            format!(
                "{}: {} deliveries after `CONT` under a lost epoch of rows it had not claimed \
                 before the pause",
                pause.name, pause.stale_claims
            )
        });
        parts.push(format!(
            "{}: {} shards{}, {} late deliveries of rows claimed before the pause, {} stale claims",
            pause.name,
            h.shards.len(),
            match h.taken_after_ms {
                Some(ms) => format!(" taken in {ms} ms"),
                None => " not taken".into(),
            },
            pause.late_deliveries,
            pause.stale_claims
        ));
    }
    v.done(if parts.is_empty() {
        "no --pause-node".into()
    } else {
        parts.join("; ")
    })
}

/// The `--effects pg` checks, on the tables read at the end.
fn effects(outcome: &Outcome) -> Vec<Check> {
    let empty = Default::default();
    let e = outcome.effects.as_ref().unwrap_or(&empty);
    let mut read = Verdict::new(
        "effects_read",
        "the application's tables could be read at the end",
    );
    read.expect(outcome.effects_error.is_none(), || {
        outcome.effects_error.clone().unwrap_or_default()
    });
    let read = read.done(format!(
        "{} orders in the table",
        group_digits(e.orders.len() as u64)
    ));

    let mut twice = Verdict::new(
        "cancelled_at_most_once",
        "no order cancelled twice (each `cancel` effect is one expiry handled)",
    );
    let mut cancels = 0u64;
    for (id, row) in &e.orders {
        cancels += row.cancels;
        twice.expect(row.cancels <= 1, || {
            format!("order id {id}: {} cancel effects", row.cancels)
        });
    }
    twice.expect(e.orphan_cancels == 0, || {
        format!("{} cancel effects of ids with no order", e.orphan_cancels)
    });
    let twice = twice.done(format!(
        "{} cancel effects, at most one an order",
        group_digits(cancels)
    ));

    let mut stock = Verdict::new(
        "stock_released_once",
        "no stock released twice: the stock left is the initial stock less the units of the \
         orders not cancelled",
    );
    let held: i64 = e
        .orders
        .values()
        .filter(|r| r.status != "cancelled")
        .map(|r| r.qty)
        .sum();
    let expected = outcome.stock_initial as i64 - held;
    stock.expect(
        outcome.effects_error.is_some() || e.stock_available == expected,
        || {
            format!(
                "stock {} at the end, expected {} ({} initially, {held} held by orders not \
             cancelled): {} units released {}",
                e.stock_available,
                expected,
                outcome.stock_initial,
                (e.stock_available - expected).abs(),
                if e.stock_available > expected {
                    "too many (twice?)"
                } else {
                    "too few (never?)"
                }
            )
        },
    );
    let stock = stock.done(format!(
        "stock {} = {} initially - {held} units of orders not cancelled",
        e.stock_available, outcome.stock_initial
    ));

    let mut paid = Verdict::new(
        "paid_never_cancelled",
        "no paid order cancelled; every payment answered `cancelled` (paid) left its order paid",
    );
    let mut paid_n = 0u64;
    for (id, row) in &e.orders {
        if row.status == "paid" {
            paid_n += 1;
            paid.expect(row.cancels == 0, || {
                format!("order id {id}: paid, yet {} cancel effects", row.cancels)
            });
        }
    }
    for (order, o) in outcome.orders.iter().enumerate() {
        if o.cancel != CancelState::Cancelled {
            continue;
        }
        let id = Order::id_of(order);
        let status = e.orders.get(&id).map(|r| r.status.as_str());
        paid.expect(status == Some("paid"), || {
            format!("order id {id}: its payment answered paid, yet the order is {status:?}")
        });
    }
    let paid = paid.done(format!(
        "{} orders paid, none cancelled",
        group_digits(paid_n)
    ));

    let mut unpaid = Verdict::new(
        "unpaid_cancelled",
        "every order not paid was cancelled exactly once by its expiry (no order left open)",
    );
    let (mut cancelled, mut open) = (0u64, 0u64);
    for (id, row) in &e.orders {
        if row.status == "paid" {
            continue;
        }
        cancelled += u64::from(row.status == "cancelled");
        open += u64::from(row.status == "open");
        unpaid.expect(row.status == "cancelled" && row.cancels == 1, || {
            format!(
                "order id {id}: {}, {} cancel effects, timer row {:?}",
                row.status, row.cancels, row.timer_state
            )
        });
    }
    let unpaid = unpaid.done(format!(
        "{} unpaid orders cancelled, {} left open",
        group_digits(cancelled),
        group_digits(open)
    ));

    let mut deadline = Verdict::new(
        "every_order_has_its_deadline",
        "no order without its deadline, no deadline without its order; every order answered \
         `ok` is stored, none definitely refused is",
    );
    for (id, row) in &e.orders {
        deadline.expect(row.status != "open" || row.timer_state.is_some(), || {
            format!("order id {id}: open, and no timer row")
        });
    }
    deadline.expect(e.deadlines_without_order == 0, || {
        format!(
            "{} timer rows of ids with no order row",
            e.deadlines_without_order
        )
    });
    let (mut acked, mut refused) = (0u64, 0u64);
    if outcome.effects.is_some() {
        for (order, o) in outcome.orders.iter().enumerate() {
            let id = Order::id_of(order);
            let stored = e.orders.contains_key(&id);
            match o.sched {
                Sched::Ok => {
                    acked += 1;
                    deadline.expect(stored, || {
                        format!("order id {id}: answered `ok`, not in the orders table")
                    });
                }
                Sched::Refused(ErrKind::InDoubt) => {}
                Sched::Refused(kind) => {
                    refused += 1;
                    deadline.expect(!stored, || {
                        format!("order id {id}: refused ({kind:?}), yet in the orders table")
                    });
                }
                _ => {}
            }
        }
    }
    let deadline = deadline.done(format!(
        "{} orders acked, all stored; {} refused, none stored; {} timer rows without an order",
        group_digits(acked),
        group_digits(refused),
        group_digits(e.deadlines_without_order)
    ));
    vec![read, twice, stock, paid, unpaid, deadline]
}
