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

use super::checks::{Check, Verdict};
use super::cluster::{CancelState, ErrKind, LEASE_TTL_MS, Order, Outcome, Sched};
use super::driver::group_digits;

/// Runs every check.
pub(super) fn run(outcome: &Outcome) -> Vec<Check> {
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
        v.expect(!o.deliveries.is_empty(), || {
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
        "{} acked orders without a winning cancel, each delivered; excluded as unknown: {} \
         schedules and {} cancels whose answer was lost to a killed node or in doubt",
        group_digits(expected),
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
        let payload = Order::payload_of(order);
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
            v.expect(ev.deadline_ms == o.deadline_ms && ev.payload == payload, || {
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
    let (mut by_fault, mut same_claim) = (0u64, 0u64);
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
         node killed or paused, {} one node's redelivery of one claim (ack timed out); {} by \
         another node than the first (takeover), {} after a kill",
        group_digits(duplicates),
        group_digits(by_fault),
        group_digits(same_claim),
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
    if one_claim {
        DuplicateCause::SameClaim
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
