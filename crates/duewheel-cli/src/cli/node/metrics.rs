//! `GET /metrics`: a node's [`NodeStats`] in the Prometheus text format
//! (version 0.0.4), plus the HTTP layer's own readiness gauge.
//!
//! TODO(lead): the `embed` branch gives the cluster crate its own rendering
//! of a node's metrics (with the oldest-unacked age); once merged, call it
//! here and delete [`render`]'s body. The names below follow the core's
//! scheme (`duewheel_` prefix, `_total` on counters) under `duewheel_node_`.
//!
//! Invariant: every series gets `# HELP` and `# TYPE` lines once, and
//! counters come straight from the node's monotonic totals.

use duewheel_cluster::NodeStats;
use std::fmt::Write as _;

/// Renders `stats` (absent once the node shut down: then only `ready`).
pub(super) fn render(stats: Option<&NodeStats>, ready: bool) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    };
    family(
        "duewheel_node_ready",
        "gauge",
        "1 while /healthz answers 200.",
        u64::from(ready),
    );
    let Some(s) = stats else {
        return out;
    };
    let gauges = [
        ("owned_shards", s.owned as u64, "Shards owned now."),
        (
            "pending_timers",
            s.pending as u64,
            "Timers in this node's wheel.",
        ),
        (
            "overdue_rows",
            s.overdue,
            "Pending rows of owned shards more than a minute overdue, at the last sweep.",
        ),
    ];
    for (name, value, help) in gauges {
        family(&format!("duewheel_node_{name}"), "gauge", help, value);
    }
    let counters = [
        (
            "scheduled",
            s.scheduled,
            "Schedules committed through this node.",
        ),
        (
            "cancelled",
            s.cancelled,
            "Cancels through this node that won.",
        ),
        ("claimed", s.claimed, "Rows claimed for delivery."),
        (
            "redelivered",
            s.redelivered,
            "Claims of a row claimed before.",
        ),
        (
            "acked",
            s.acked,
            "Claimed rows deleted after every group acked.",
        ),
        ("fenced", s.fenced, "Statements refused for a stale epoch."),
        ("lost", s.lost, "Shards lost to another owner."),
        ("acquired", s.acquired, "Shard acquisitions."),
        (
            "released",
            s.released,
            "Shards given up (rebalance, shutdown).",
        ),
        ("loaded", s.loaded, "Rows loaded into the wheel."),
        (
            "swept",
            s.swept,
            "Due rows the sweep found missing from the wheel.",
        ),
        (
            "notified",
            s.notified,
            "Rows other nodes wrote into owned shards.",
        ),
        (
            "db_errors",
            s.db_errors,
            "Statements or connections that failed.",
        ),
    ];
    for (name, value, help) in counters {
        family(
            &format!("duewheel_node_{name}_total"),
            "counter",
            help,
            value,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use duewheel_testkit::prom_text;

    #[test]
    fn renders_parseable_text_with_every_counter() {
        let mut stats = NodeStats::default();
        stats.owned = 3;
        stats.scheduled = 7;
        let text = render(Some(&stats), true);
        let parsed = prom_text::parse(&text).expect("valid exposition");
        assert_eq!(parsed.value("duewheel_node_owned_shards", &[]), Some(3.0));
        assert_eq!(
            parsed.value("duewheel_node_scheduled_total", &[]),
            Some(7.0)
        );
        assert_eq!(
            parsed.type_of("duewheel_node_fenced_total"),
            Some("counter")
        );
        assert_eq!(parsed.value("duewheel_node_ready", &[]), Some(1.0));
        let stopped = prom_text::parse(&render(None, false)).expect("valid exposition");
        assert_eq!(stopped.value("duewheel_node_ready", &[]), Some(0.0));
    }
}
