//! The report of `simulate --cluster`: what happened to the orders, the
//! invariants, lateness and rates, and each kill's takeover; as text for
//! people and as JSON (`--json`) for machines.
//!
//! Sale times (deadlines, `fired_at_ms`, lateness in sale ms) are on the
//! nodes' fast-forwarded clock; real times (lateness in real ms, takeovers,
//! rates) are the wall clock. Nothing here is deterministic: the nodes race.

use super::args::{Config, show_ms};
use super::checks::Check;
use super::cluster::{
    CancelState, DbRestartRun, ErrKind, GRACE_MS, Handover, Kill, LEASE_TTL_MS, NodeRun, Order,
    Outcome, Pause, RENEW_MS, SWEEP_MS, Sched,
};
use super::cluster_checks::{DuplicateCause, duplicate_cause};
use super::cluster_db::Leftover;
use super::driver::group_digits;
use super::report::rate;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Orders delivered more than once shown in the report.
const DUPLICATE_EXAMPLES: usize = 5;

/// The whole report.
#[derive(Debug, serde::Serialize)]
pub(super) struct Report {
    /// `true` if every invariant held.
    pub(super) ok: bool,
    /// The command line (with `--pg`'s value hidden).
    pub(super) command: String,
    pub(super) setup: Setup,
    pub(super) sale: SaleCounts,
    pub(super) invariants: Vec<Check>,
    pub(super) lateness: Lateness,
    pub(super) performance: Performance,
    pub(super) kills: Vec<Kill>,
    pub(super) pauses: Vec<Pause>,
    /// `--restart-db-at`, as it happened.
    pub(super) restart: Option<DbRestartRun>,
    /// `--effects pg`: the effects, counted from the tables at the end.
    pub(super) effects: Option<EffectCounts>,
    /// Every duplicate delivery, by cause.
    pub(super) duplicates: Duplicates,
    /// The first orders delivered more than once, each delivery with its
    /// node, attempt and epoch: what explains a duplicate.
    pub(super) duplicate_examples: Vec<String>,
    pub(super) nodes: Vec<NodeRun>,
    /// Rows in the `timers` table after every node quit.
    pub(super) leftover: Option<Leftover>,
}

/// The duplicate deliveries by cause (see
/// [`super::cluster_checks::DuplicateCause`]); each kill's and pause's own
/// share, with its bound, is in `kills` and `pauses`.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct Duplicates {
    /// Deliveries beyond the first of their order.
    pub(super) total: u64,
    /// Of ids claimed and not acked on a node killed or paused.
    pub(super) by_fault: u64,
    /// One node delivering one claim again (its ack timed out).
    pub(super) same_claim: u64,
    /// `--effects pg`: extra `ev` lines of orders with one effect.
    pub(super) one_effect: u64,
    /// Neither: an invariant failure.
    pub(super) unexplained: u64,
}

/// The effects of `--effects pg`, read from the application's tables at
/// the end (what happened, whatever answers were lost).
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct EffectCounts {
    pub(super) orders: u64,
    pub(super) paid: u64,
    pub(super) cancelled: u64,
    pub(super) open: u64,
    /// `cancel` effects (each released its order's stock).
    pub(super) cancel_effects: u64,
    /// Orders with more than one `cancel` effect.
    pub(super) cancelled_twice: u64,
    /// Paid orders with a `cancel` effect.
    pub(super) paid_cancelled: u64,
    /// Orders not paid and not cancelled exactly once.
    pub(super) unpaid_not_cancelled: u64,
    /// Open orders with no timer row, and timer rows with no order.
    pub(super) without_deadline: u64,
    pub(super) deadlines_without_order: u64,
    /// `refund` effects: payments that lost to the expiry.
    pub(super) refunds: u64,
    pub(super) stock_initial: u64,
    pub(super) stock_available: i64,
    /// The initial stock less the units of the orders not cancelled.
    pub(super) stock_expected: i64,
}

/// How the run was set up.
#[derive(Debug, serde::Serialize)]
pub(super) struct Setup {
    pub(super) nodes: u32,
    pub(super) shards: usize,
    pub(super) orders: u64,
    pub(super) sale_ms: u64,
    pub(super) window_ms: u64,
    pub(super) pay_ratio: f64,
    pub(super) pending_ratio: f64,
    pub(super) seed: u64,
    /// Sale ms per real ms.
    pub(super) speed: f64,
    pub(super) schema: String,
    pub(super) lease_ttl_ms: u64,
    pub(super) renew_ms: u64,
    pub(super) grace_ms: u64,
    pub(super) sweep_ms: u64,
}

/// What happened to the orders.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct SaleCounts {
    pub(super) orders: u64,
    /// Schedules answered `ok`.
    pub(super) scheduled_ok: u64,
    /// Schedules answered `err`, by kind.
    pub(super) schedule_refused: BTreeMap<ErrKind, u64>,
    /// Schedules whose answer was lost to a killed node.
    pub(super) schedule_unknown: u64,
    /// Schedules no node was up to take.
    pub(super) not_sent: u64,
    /// Payments that reached the platform.
    pub(super) payments: u64,
    /// Cancel answers.
    pub(super) cancelled: u64,
    pub(super) cancel_lost_to_fire: u64,
    pub(super) cancel_notfound: u64,
    pub(super) cancel_failed: BTreeMap<ErrKind, u64>,
    pub(super) cancel_unknown: u64,
    /// Payments for orders whose schedule failed: nothing to cancel.
    pub(super) cancel_skipped: u64,
    /// Orders delivered at least once.
    pub(super) fired: u64,
    /// Every `ev` line.
    pub(super) deliveries: u64,
    /// Deliveries beyond the first of their order.
    pub(super) duplicates: u64,
    /// Orders delivered more than once.
    pub(super) orders_duplicated: u64,
}

/// Lateness of each order's first delivery.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct Lateness {
    /// `fired_at_ms - deadline_ms`, on the node clock.
    pub(super) sale_ms: Percentiles,
    /// The driver's receipt of the line, against the wall-clock moment of
    /// the deadline.
    pub(super) real_ms: Percentiles,
}

#[derive(Debug, Default, serde::Serialize)]
pub(super) struct Percentiles {
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) max: f64,
}

impl Percentiles {
    fn of(mut values: Vec<f64>) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Percentiles {
            p50: at(0.5),
            p99: at(0.99),
            max: values[values.len() - 1],
        }
    }
}

/// Rates, in real time.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct Performance {
    /// The whole command, start-up and shutdown included.
    pub(super) wall_s: f64,
    /// From the opening to the last expected delivery.
    pub(super) sale_wall_s: f64,
    /// `ok` answers per second, from the first `s` sent to the last `ok`.
    pub(super) schedules_per_s: f64,
    /// `ev` lines per second, from the first to the last.
    pub(super) fires_per_s: f64,
}

impl Report {
    /// Counts and measures `outcome`.
    pub(super) fn new(config: &Config, outcome: &Outcome, invariants: Vec<Check>) -> Report {
        let mut s = SaleCounts {
            orders: outcome.orders.len() as u64,
            ..SaleCounts::default()
        };
        let (mut sale_late, mut real_late) = (Vec::new(), Vec::new());
        let mut duplicate_examples = Vec::new();
        let mut duplicates = Duplicates::default();
        for (order, o) in outcome.orders.iter().enumerate() {
            match o.sched {
                Sched::Ok => s.scheduled_ok += 1,
                Sched::Refused(kind) => *s.schedule_refused.entry(kind).or_default() += 1,
                Sched::Unknown | Sched::Pending => s.schedule_unknown += 1,
                Sched::NotSent => s.not_sent += 1,
            }
            match o.cancel {
                CancelState::NoPayment => {}
                CancelState::Cancelled => s.cancelled += 1,
                CancelState::Fired => s.cancel_lost_to_fire += 1,
                CancelState::NotFound => s.cancel_notfound += 1,
                CancelState::Failed(kind) => *s.cancel_failed.entry(kind).or_default() += 1,
                CancelState::Unknown | CancelState::Pending | CancelState::Deferred => {
                    s.cancel_unknown += 1;
                }
                CancelState::Skipped => s.cancel_skipped += 1,
            }
            s.payments += u64::from(o.cancel != CancelState::NoPayment);
            s.deliveries += o.deliveries.len() as u64;
            if let Some(first) = o.deliveries.iter().min_by_key(|d| d.received_wall_ms) {
                s.fired += 1;
                let ev = &first.ev;
                sale_late.push(ev.fired_at_ms as f64 - ev.deadline_ms as f64);
                real_late
                    .push(first.received_wall_ms as f64 - outcome.clock.wall_of(o.deadline_ms));
            }
            if o.deliveries.len() > 1 {
                let extra = o.deliveries.len() as u64 - 1;
                duplicates.total += extra;
                match duplicate_cause(outcome, order) {
                    DuplicateCause::Fault => duplicates.by_fault += extra,
                    DuplicateCause::SameClaim => duplicates.same_claim += extra,
                    DuplicateCause::OneEffect => duplicates.one_effect += extra,
                    DuplicateCause::Unexplained => duplicates.unexplained += extra,
                }
                if duplicate_examples.len() < DUPLICATE_EXAMPLES {
                    let seen: Vec<String> = o
                        .deliveries
                        .iter()
                        .map(|d| {
                            format!(
                                "attempt {} epoch {} by {} (fired at +{} sale ms)",
                                d.ev.attempt,
                                d.ev.epoch,
                                outcome.nodes[d.node].name,
                                d.ev.fired_at_ms.saturating_sub(d.ev.deadline_ms)
                            )
                        })
                        .collect();
                    duplicate_examples.push(format!(
                        "order {order} (id {}): {}",
                        Order::id_of(order),
                        seen.join("; ")
                    ));
                }
                s.orders_duplicated += 1;
                s.duplicates += o.deliveries.len() as u64 - 1;
            }
        }
        let per_s = |n: u64, from_ms: u64, to_ms: u64| {
            if to_ms > from_ms {
                n as f64 * 1e3 / (to_ms - from_ms) as f64
            } else {
                0.0
            }
        };
        let performance = Performance {
            wall_s: outcome.wall_s,
            sale_wall_s: outcome.sale_wall_s,
            schedules_per_s: per_s(
                s.scheduled_ok,
                outcome.first_send_wall_ms,
                outcome.last_ok_wall_ms,
            ),
            fires_per_s: per_s(
                s.deliveries,
                outcome.first_ev_wall_ms,
                outcome.last_ev_wall_ms,
            ),
        };
        let cluster = config.cluster.as_ref();
        Report {
            ok: invariants.iter().all(|c| c.ok),
            command: command_line(),
            setup: Setup {
                nodes: cluster.map_or(0, |c| c.nodes),
                shards: config.shards,
                orders: config.orders,
                sale_ms: config.sale_ms,
                window_ms: config.window_ms,
                pay_ratio: config.pay_ratio,
                pending_ratio: config.pending_ratio,
                seed: config.seed,
                speed: outcome.clock.speed,
                schema: outcome.schema.clone(),
                lease_ttl_ms: LEASE_TTL_MS,
                renew_ms: RENEW_MS,
                grace_ms: GRACE_MS,
                sweep_ms: SWEEP_MS,
            },
            sale: s,
            invariants,
            lateness: Lateness {
                sale_ms: Percentiles::of(sale_late),
                real_ms: Percentiles::of(real_late),
            },
            performance,
            kills: outcome.kills.clone(),
            pauses: outcome.pauses.clone(),
            restart: outcome.restart.clone(),
            effects: outcome.effects.as_ref().map(|e| {
                let mut c = EffectCounts {
                    orders: e.orders.len() as u64,
                    refunds: e.refunds,
                    deadlines_without_order: e.deadlines_without_order,
                    stock_initial: outcome.stock_initial,
                    stock_available: e.stock_available,
                    stock_expected: outcome.stock_initial as i64,
                    ..EffectCounts::default()
                };
                for row in e.orders.values() {
                    let paid = row.status == "paid";
                    c.paid += u64::from(paid);
                    c.cancelled += u64::from(row.status == "cancelled");
                    c.open += u64::from(row.status == "open");
                    c.cancel_effects += row.cancels;
                    c.cancelled_twice += u64::from(row.cancels > 1);
                    c.paid_cancelled += u64::from(paid && row.cancels > 0);
                    c.unpaid_not_cancelled +=
                        u64::from(!(paid || row.status == "cancelled" && row.cancels == 1));
                    c.without_deadline +=
                        u64::from(row.status == "open" && row.timer_state.is_none());
                    if row.status != "cancelled" {
                        c.stock_expected -= row.qty;
                    }
                }
                c
            }),
            duplicates,
            duplicate_examples,
            nodes: outcome.nodes.clone(),
            leftover: outcome.leftover,
        }
    }

    /// The report for people.
    pub(super) fn to_text(&self) -> String {
        let c = &self.setup;
        let s = &self.sale;
        let p = &self.performance;
        let n = |v: u64| group_digits(v);
        let pct = |v: u64| 100.0 * v as f64 / s.orders.max(1) as f64;
        let kinds = |m: &BTreeMap<ErrKind, u64>| {
            m.iter()
                .map(|(k, v)| format!("{} {k:?}", n(*v)).to_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "duewheel simulate --cluster {}: {} orders over {}, {} payment window; seed {}",
            c.nodes,
            n(c.orders),
            show_ms(c.sale_ms),
            show_ms(c.window_ms),
            c.seed
        );
        let _ = writeln!(
            out,
            "  {} node processes, {} PostgreSQL shards (schema {}), clock {}x; leases {} ms, \
             renew {} ms, sweep {} ms\n",
            c.nodes, c.shards, c.schema, c.speed, c.lease_ttl_ms, c.renew_ms, c.sweep_ms
        );
        let _ = writeln!(out, "sale");
        let _ = writeln!(
            out,
            "  scheduled ok         {:>11}  {:5.1}%",
            n(s.scheduled_ok),
            pct(s.scheduled_ok)
        );
        let refused: u64 = s.schedule_refused.values().sum();
        if refused + s.schedule_unknown + s.not_sent > 0 {
            let _ = writeln!(
                out,
                "  not acked            {:>11}  {:5.1}%  ({} unknown: answer lost to a killed \
                 node; {} refused{}{}; {} not sent)",
                n(refused + s.schedule_unknown + s.not_sent),
                pct(refused + s.schedule_unknown + s.not_sent),
                n(s.schedule_unknown),
                n(refused),
                if refused > 0 { ": " } else { "" },
                kinds(&s.schedule_refused),
                n(s.not_sent)
            );
        }
        let _ = writeln!(
            out,
            "  payments             {:>11}  {:5.1}%  (cancels: {} cancelled, {} lost to the \
             expiry, {} notfound, {} failed, {} unknown, {} skipped)",
            n(s.payments),
            pct(s.payments),
            n(s.cancelled),
            n(s.cancel_lost_to_fire),
            n(s.cancel_notfound),
            n(s.cancel_failed.values().sum()),
            n(s.cancel_unknown),
            n(s.cancel_skipped)
        );
        let _ = writeln!(
            out,
            "  fired                {:>11}  {:5.1}%  ({} deliveries, {} duplicates of {} orders)",
            n(s.fired),
            pct(s.fired),
            n(s.deliveries),
            n(s.duplicates),
            n(s.orders_duplicated)
        );
        for kill in &self.kills {
            write_kill(&mut out, kill);
        }
        for pause in &self.pauses {
            write_pause(&mut out, pause);
        }
        if let Some(r) = &self.restart {
            let _ = writeln!(
                out,
                "  restarted the database at {} into the sale: {} in {}",
                show_ms(r.at_sale_ms),
                r.end,
                r.took_ms
                    .map_or("(still running)".to_string(), |ms| format!("{ms} ms real"))
            );
        }
        self.write_duplicates(&mut out);
        if !self.duplicate_examples.is_empty() {
            let _ = writeln!(out, "  duplicates, e.g.:");
            for example in &self.duplicate_examples {
                let _ = writeln!(out, "    - {example}");
            }
        }
        if let Some(e) = &self.effects {
            let _ = writeln!(
                out,
                "\neffects (read from the PostgreSQL tables at the end)"
            );
            let _ = writeln!(
                out,
                "  orders               {:>11}  ({} paid, {} cancelled by their expiry, {} open)",
                n(e.orders),
                n(e.paid),
                n(e.cancelled),
                n(e.open)
            );
            let _ = writeln!(
                out,
                "  cancel effects       {:>11}  ({} orders cancelled twice, {} paid orders \
                 cancelled, {} unpaid orders not cancelled exactly once)",
                n(e.cancel_effects),
                n(e.cancelled_twice),
                n(e.paid_cancelled),
                n(e.unpaid_not_cancelled)
            );
            let _ = writeln!(
                out,
                "  stock                {:>11}  (expected {}: {} initially less the units of the \
                 orders not cancelled; a double release would show above it)",
                e.stock_available,
                e.stock_expected,
                n(e.stock_initial)
            );
            let _ = writeln!(
                out,
                "  refunds              {:>11}  (payments that lost to the expiry); {} open orders \
                 without a deadline, {} deadlines without an order",
                n(e.refunds),
                n(e.without_deadline),
                n(e.deadlines_without_order)
            );
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
        let l = &self.lateness;
        let _ = writeln!(out, "\nperformance");
        let _ = writeln!(
            out,
            "  wall time            {:.1} s ({:.1} s from the opening to the last delivery)",
            p.wall_s, p.sale_wall_s
        );
        let _ = writeln!(
            out,
            "  lateness             p50 {:.0} / p99 {:.0} / max {:.0} sale ms;  p50 {:.0} / p99 \
             {:.0} / max {:.0} real ms (deadline to the driver reading `ev`)",
            l.sale_ms.p50,
            l.sale_ms.p99,
            l.sale_ms.max,
            l.real_ms.p50,
            l.real_ms.p99,
            l.real_ms.max
        );
        let _ = writeln!(
            out,
            "  achieved             {}/s schedules acked, {}/s deliveries (the sale's pace, not \
             the nodes' limit)",
            rate(p.schedules_per_s),
            rate(p.fires_per_s)
        );
        let _ = writeln!(out, "\nnodes");
        for node in &self.nodes {
            let stats = [
                "owned",
                "acquired",
                "released",
                "lost",
                "fenced",
                "redelivered",
                "db_errors",
                "overdue",
            ]
            .iter()
            .filter_map(|k| node.stats.get(*k).map(|v| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(" ");
            let _ = writeln!(
                out,
                "  {:<8} {:>4} shards at the opening, {:>8} commands, {:>8} deliveries; {}{}",
                node.name,
                node.shards_at_open,
                n(node.sent),
                n(node.deliveries),
                node.end,
                if stats.is_empty() {
                    String::new()
                } else {
                    format!("; {stats}")
                }
            );
        }
        if !self.ok {
            for node in &self.nodes {
                if let Some(tail) = &node.stderr_tail {
                    let _ = writeln!(out, "  {} stderr (last lines):", node.name);
                    for line in tail.lines() {
                        let _ = writeln!(out, "    | {line}");
                    }
                }
            }
        }
        if let Some(left) = self.leftover {
            let _ = writeln!(
                out,
                "  timers table at the end: {} pending, {} claimed and not acked",
                n(left.pending),
                n(left.claimed)
            );
        }
        let _ = writeln!(
            out,
            "\n{}",
            if self.ok {
                "all invariants held"
            } else {
                "INVARIANTS FAILED"
            }
        );
        out
    }
}

impl Report {
    /// The duplicates in words: each explained by a kill, a pause or a
    /// node's own redelivery, with the bound a kill or pause puts on them.
    fn write_duplicates(&self, out: &mut String) {
        let d = &self.duplicates;
        if d.total == 0 {
            let _ = writeln!(
                out,
                "  duplicates           none: every order delivered at most once"
            );
            return;
        }
        let _ = writeln!(
            out,
            "  duplicates           {} deliveries beyond the first of their order:",
            group_digits(d.total)
        );
        for kill in &self.kills {
            let h = &kill.handover;
            let _ = writeln!(
                out,
                "    - {} after {}'s kill: of the {} rows it had claimed and not acked when it \
                 died (delivered, or about to be, with no ack), which the new owners claimed \
                 again and delivered with attempt > 1",
                group_digits(h.duplicates),
                kill.name,
                group_digits(h.claimed_unacked)
            );
        }
        for pause in &self.pauses {
            let h = &pause.handover;
            let _ = writeln!(
                out,
                "    - {} around {}'s pause: of the {} rows it had claimed and not acked when it \
                 stopped, delivered again by the new owners of its shards or printed late by it \
                 after SIGCONT ({} late prints)",
                group_digits(h.duplicates),
                pause.name,
                group_digits(h.claimed_unacked),
                group_digits(pause.late_deliveries)
            );
        }
        if d.same_claim > 0 {
            let _ = writeln!(
                out,
                "    - {} delivered again by the same node under the same claim (its consumer's \
                 ack timed out; at-least-once within a node)",
                group_digits(d.same_claim)
            );
        }
        if d.one_effect > 0 {
            let _ = writeln!(
                out,
                "    - {} `ev` lines of orders whose tables hold one effect (a line printed for a \
                 transaction that did not commit: the effect happened once)",
                group_digits(d.one_effect)
            );
        }
        if d.unexplained > 0 {
            let _ = writeln!(
                out,
                "    - {} UNEXPLAINED: not claimed on a killed or paused node, not one node's \
                 redelivery (see duplicates_are_redeliveries)",
                group_digits(d.unexplained)
            );
        }
    }
}

/// How `h`'s shards were taken over, in words (`what`: "the kill").
fn taken_words(h: &Handover, what: &str) -> String {
    match (h.taken_after_ms, h.shards.is_empty()) {
        (_, true) => "it owned no shard".to_string(),
        (Some(ms), false) => {
            let after_lease = h
                .lease_expired_after_ms
                .map(|lease| format!(", {:.0} ms after its lease expired", ms as f64 - lease))
                .unwrap_or_default();
            let by = h
                .taken_by
                .iter()
                .map(|(owner, k)| format!("{k} by {owner}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "its {} shards taken {ms} ms after {what}{after_lease} ({by})",
                h.shards.len()
            )
        }
        (None, false) => format!("its {} shards NOT taken over", h.shards.len()),
    }
}

fn write_kill(out: &mut String, kill: &Kill) {
    let h = &kill.handover;
    let _ = writeln!(
        out,
        "  killed {} (SIGKILL) at {} into the sale, {} deliveries in the second before (expiries \
         in flight), {} rows of its shards claimed and not acked: {}; {} answers lost; {} of \
         its timers redelivered (attempt > 1), {} fired by the survivors",
        kill.name,
        show_ms(kill.at_sale_ms),
        group_digits(h.deliveries_last_second),
        group_digits(h.claimed_unacked),
        taken_words(h, "the kill"),
        group_digits(kill.answers_lost),
        group_digits(kill.redelivered),
        group_digits(kill.fired_by_survivors)
    );
}

fn write_pause(out: &mut String, pause: &Pause) {
    let h = &pause.handover;
    let resumed = match pause.resumed_after_ms {
        Some(ms) => format!("continued (SIGCONT) {ms} ms after the stop"),
        None => "never continued (the run ended first)".into(),
    };
    let _ = writeln!(
        out,
        "  paused {} (SIGSTOP) at {} into the sale for {} ({} ms real; leases {} ms), {} \
         deliveries in the second before, {} rows of its shards claimed and not acked: {}; {}; \
         {} late deliveries by it after that of rows claimed before the pause, {} of rows it \
         had not claimed under a lost epoch",
        pause.name,
        show_ms(pause.at_sale_ms),
        show_ms(pause.for_sale_ms),
        pause.for_wall_ms,
        LEASE_TTL_MS,
        group_digits(h.deliveries_last_second),
        group_digits(h.claimed_unacked),
        taken_words(h, "the stop"),
        resumed,
        group_digits(pause.late_deliveries),
        group_digits(pause.stale_claims)
    );
}

/// The command line, quoted for a shell, `--pg`'s value hidden (a DSN may
/// carry a password).
fn command_line() -> String {
    let mut hide_next = false;
    std::env::args()
        .enumerate()
        .map(|(i, arg)| {
            let arg = if i == 0 {
                "duewheel".to_string()
            } else if std::mem::take(&mut hide_next) {
                "'<dsn>'".to_string()
            } else if let Some(_dsn) = arg.strip_prefix("--pg=") {
                "--pg='<dsn>'".to_string()
            } else {
                hide_next = arg == "--pg";
                arg
            };
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "\"$\\".contains(c)) {
                format!("'{}'", arg.replace('\'', r"'\''"))
            } else {
                arg
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
