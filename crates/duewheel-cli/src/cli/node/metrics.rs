//! `GET /metrics`: the node's own series ([`Node::render_prometheus`]: its
//! counters and gauges with a `node` label, and the engine's series, the
//! cluster crate's `prometheus` feature) after the HTTP layer's readiness
//! gauge, `duewheel_node_ready`.
//!
//! Invariant: the text is one valid exposition (version 0.0.4): every
//! series gets its `# HELP` and `# TYPE` lines once, and once the node has
//! shut down only the readiness gauge (0) is left.

use duewheel_cluster::Node;
use std::fmt::Write as _;

/// Renders `node` (absent once it shut down) and `ready` for `node_id`.
pub(super) fn render(node: Option<&Node<String>>, node_id: &str, ready: bool) -> String {
    let mut out = String::new();
    let label = node_id
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    let _ = writeln!(
        out,
        "# HELP duewheel_node_ready 1 while /healthz answers 200."
    );
    let _ = writeln!(out, "# TYPE duewheel_node_ready gauge");
    let _ = writeln!(
        out,
        "duewheel_node_ready{{node=\"{label}\"}} {}",
        u8::from(ready)
    );
    if let Some(node) = node {
        node.render_prometheus(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use duewheel_testkit::prom_text;

    #[test]
    fn a_stopped_node_renders_its_readiness_alone() {
        let text = render(None, "a\"b", false);
        let parsed = prom_text::parse(&text).expect("valid exposition");
        assert_eq!(
            parsed.value("duewheel_node_ready", &[("node", "a\"b")]),
            Some(0.0)
        );
        assert_eq!(parsed.type_of("duewheel_node_ready"), Some("gauge"));
    }
}
