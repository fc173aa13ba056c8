//! The node's metrics: its counters and gauges ([`NodeStats`]) in the
//! Prometheus text format, and the in-flight claims the oldest-unacked gauge
//! is computed from.
//!
//! **Oldest unacked age** is kept in memory, not read from the table: the
//! gate notes the time of a row's *first* claim by this node
//! ([`InFlight::claimed`]; a redelivery keeps the first time, so a consumer
//! that never acks shows a growing age) and the engine's `ended` hook (every
//! group acked) forgets it. A query of `min(...)` over the claimed rows of
//! owned shards would scan every pending row of those shards on each sweep
//! (the only index is `(shard_id, deadline_ms)`), and the table keeps no
//! claim time. The price: a delivery this node claimed and then lost with
//! its shard is not counted here but by its next owner, whose age starts at
//! its own claim (after its takeover).
//!
//! Invariant: [`InFlight`] holds an id only between a claim by this node
//! and the end of that timer, or until its shard is no longer owned (pruned
//! when the gauge is read).
//!
//! The series (names as the core's exporter, `duewheel_` then the node's
//! own `node_` prefix; base units; `_total` on counters; every series has a
//! `node` label, the node id):
//!
//! | series | type | from |
//! |---|---|---|
//! | `duewheel_node_owned_shards` | gauge | [`NodeStats::owned`] |
//! | `duewheel_node_pending_timers` | gauge | [`NodeStats::pending`] |
//! | `duewheel_node_oldest_unacked_age_seconds` | gauge | [`NodeStats::oldest_unacked_age_ms`] |
//! | `duewheel_node_overdue_rows` | gauge | [`NodeStats::overdue`] |
//! | `duewheel_node_scheduled_total` … `duewheel_node_db_errors_total` | counter | the other [`NodeStats`] fields |

use super::NodeStats;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use std::fmt::Write as _;

/// First-claim times (UTC ms) of the deliveries this node claimed and that
/// have not ended.
#[derive(Default)]
pub(super) struct InFlight {
    claimed_at_ms: Mutex<FxHashMap<u64, u64>>,
}

impl InFlight {
    /// `id` was claimed at `now_ms` (a second claim keeps the first time).
    pub(super) fn claimed(&self, id: u64, now_ms: u64) {
        self.claimed_at_ms.lock().entry(id).or_insert(now_ms);
    }

    /// `id`'s timer ended: every group acked it.
    pub(super) fn ended(&self, id: u64) {
        self.claimed_at_ms.lock().remove(&id);
    }

    /// The age of the oldest delivery still in flight whose shard `owned`
    /// says is still ours; 0 if none. Forgets the others.
    pub(super) fn oldest_age_ms(&self, now_ms: u64, owned: impl Fn(u64) -> bool) -> u64 {
        let mut claimed = self.claimed_at_ms.lock();
        claimed.retain(|&id, _| owned(id));
        claimed
            .values()
            .min()
            .map_or(0, |&at_ms| now_ms.saturating_sub(at_ms))
    }
}

/// One family: `# HELP`, `# TYPE` and its single sample.
fn family(out: &mut String, node: &str, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name}{{node=\"{node}\"}} {value}");
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

impl NodeStats {
    /// Appends these figures to `out` in the Prometheus text format
    /// (version 0.0.4), each series labelled `node="<node_id>"` (see the
    /// table in the crate's SCALE_OUT.md, "Monitoring").
    /// [`Node::render_prometheus`](super::Node::render_prometheus) adds the
    /// node's id, and with the `prometheus` feature the engine's series.
    ///
    /// ```
    /// use duewheel_cluster::NodeStats;
    ///
    /// let mut text = String::new();
    /// NodeStats::default().render_prometheus("node-a", &mut text);
    /// assert!(text.contains("duewheel_node_owned_shards{node=\"node-a\"} 0"));
    /// ```
    pub fn render_prometheus(&self, node_id: &str, out: &mut String) {
        let node = escape_label(node_id);
        let n = node.as_str();
        let gauges: [(&str, &str, f64); 4] = [
            (
                "owned_shards",
                "Shards this node owns now.",
                self.owned as f64,
            ),
            (
                "pending_timers",
                "Timers in this node's wheel (within the horizon or in delivery).",
                self.pending as f64,
            ),
            (
                "oldest_unacked_age_seconds",
                "Age of the oldest delivery this node claimed that is not yet acked by every group (0: none): a stuck consumer.",
                self.oldest_unacked_age_ms as f64 / 1e3,
            ),
            (
                "overdue_rows",
                "At the last sweep: pending rows of owned shards more than a minute overdue.",
                self.overdue as f64,
            ),
        ];
        for (name, help, value) in gauges {
            family(
                out,
                n,
                &format!("duewheel_node_{name}"),
                "gauge",
                help,
                value,
            );
        }
        let counters: [(&str, &str, u64); 13] = [
            (
                "scheduled",
                "Schedules committed through this node.",
                self.scheduled,
            ),
            (
                "cancelled",
                "Cancels through this node that won.",
                self.cancelled,
            ),
            (
                "claimed",
                "Rows claimed by this node for delivery.",
                self.claimed,
            ),
            (
                "redelivered",
                "Claims of a row claimed before (attempt > 1).",
                self.redelivered,
            ),
            (
                "acked",
                "Claimed rows ended after every group acked.",
                self.acked,
            ),
            (
                "fenced",
                "Claims or acks refused for a stale epoch.",
                self.fenced,
            ),
            (
                "shards_lost",
                "Shards lost to another owner (renewal failed or a write was fenced).",
                self.lost,
            ),
            (
                "shards_acquired",
                "Shard acquisitions (each bumps the epoch).",
                self.acquired,
            ),
            (
                "shards_released",
                "Shards given up to rebalance or at shutdown.",
                self.released,
            ),
            (
                "loaded",
                "Rows loaded into the wheel (takeover and paging).",
                self.loaded,
            ),
            (
                "swept",
                "Rows the sweep found due but not in the wheel.",
                self.swept,
            ),
            (
                "notified",
                "Rows other nodes wrote into owned shards, taken on their notification.",
                self.notified,
            ),
            (
                "db_errors",
                "Statements or connections that failed.",
                self.db_errors,
            ),
        ];
        for (name, help, value) in counters {
            let name = format!("duewheel_node_{name}_total");
            family(out, n, &name, "counter", help, value as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_unacked_age_is_the_first_claim_of_what_is_still_in_flight() {
        let in_flight = InFlight::default();
        assert_eq!(in_flight.oldest_age_ms(1_000, |_| true), 0);
        in_flight.claimed(1, 1_000);
        in_flight.claimed(2, 1_500);
        // A redelivery keeps the first claim's time.
        in_flight.claimed(1, 1_900);
        assert_eq!(in_flight.oldest_age_ms(2_000, |_| true), 1_000);
        in_flight.ended(1);
        assert_eq!(in_flight.oldest_age_ms(2_000, |_| true), 500);
        // A shard no longer owned takes its deliveries out of the gauge.
        assert_eq!(in_flight.oldest_age_ms(2_000, |id| id != 2), 0);
        assert_eq!(in_flight.oldest_age_ms(2_000, |_| true), 0);
    }

    #[test]
    fn the_rendered_stats_parse_as_prometheus_text_with_every_figure() {
        let stats = NodeStats {
            owned: 3,
            pending: 7,
            acked: 11,
            db_errors: 2,
            oldest_unacked_age_ms: 1_500,
            ..NodeStats::default()
        };
        let mut text = String::new();
        stats.render_prometheus("node \"a\"", &mut text);
        let parsed = duewheel_testkit::prom_text::parse(&text).unwrap();
        let node = [("node", "node \"a\"")];
        let value = |name: &str| parsed.value(name, &node).unwrap();
        assert_eq!(value("duewheel_node_owned_shards"), 3.0);
        assert_eq!(value("duewheel_node_pending_timers"), 7.0);
        assert_eq!(value("duewheel_node_acked_total"), 11.0);
        assert_eq!(value("duewheel_node_db_errors_total"), 2.0);
        assert_eq!(value("duewheel_node_oldest_unacked_age_seconds"), 1.5);
        assert_eq!(
            parsed.type_of("duewheel_node_fenced_total"),
            Some("counter")
        );
        assert_eq!(parsed.type_of("duewheel_node_overdue_rows"), Some("gauge"));
        assert_eq!(parsed.samples.len(), 17, "every NodeStats figure, once");
    }

    #[test]
    fn node_ids_are_escaped_in_labels() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
