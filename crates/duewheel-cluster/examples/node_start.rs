//! How long a node takes to start and shut down: over the Unix socket
//! (`DUEWHEEL_PG_DSN`), over TLS (`DUEWHEEL_PG_TLS_DSN`, feature `tls`),
//! and a restart under an id whose holder died (its heartbeat row left
//! fresh: the start watches it stand still first). Prints medians of 5 with
//! `/proc/loadavg`.
//!
//! ```text
//! eval "$(DUEWHEEL_PG_TLS=1 scripts/pg-up.sh)"
//! cargo run --release -p duewheel-cluster --features tls --example node_start
//! ```

use duewheel_cluster::{Node, NodeConfig, StoreConfig};
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn config(dsn: &str, schema: &str) -> NodeConfig {
    NodeConfig::new(
        StoreConfig::new(dsn).schema(schema).shards(64),
        "bench-node",
    )
    .group("g")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let dsn = std::env::var("DUEWHEEL_PG_DSN")?;
    let schema = format!("node_start_{}", std::process::id());
    let mut runs: Vec<(&str, String)> = vec![("unix socket", dsn.clone())];
    if let Ok(tls) = std::env::var("DUEWHEEL_PG_TLS_DSN") {
        runs.push(("tls (tcp)", tls));
    }
    for (what, dsn) in &runs {
        let (mut start, mut stop) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let t = Instant::now();
            let node: Node<String> = config(dsn, &schema).start()?;
            start.push(t.elapsed());
            let t = Instant::now();
            node.shutdown();
            stop.push(t.elapsed());
        }
        println!(
            "{what}: start {:?}, shutdown {:?} (median of 5; loadavg {})",
            median(start),
            median(stop),
            loadavg().trim()
        );
    }
    let mut admin = postgres::Client::connect(&dsn, postgres::NoTls)?;
    let mut restart = Vec::new();
    for _ in 0..5 {
        // What a SIGKILLed holder leaves: a fresh row nobody updates.
        admin.execute(
            &format!(
                "INSERT INTO \"{schema}\".nodes (node_id, seen_at, session)
                 VALUES ('bench-node', now(), 'dead')
                 ON CONFLICT (node_id) DO UPDATE SET seen_at = now(), session = 'dead'"
            ),
            &[],
        )?;
        let t = Instant::now();
        let node: Node<String> = config(&dsn, &schema).start()?;
        restart.push(t.elapsed());
        node.shutdown();
    }
    println!(
        "restart after a crash (fresh row standing still): start {:?} (median of 5; loadavg {})",
        median(restart),
        loadavg().trim()
    );
    admin.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))?;
    Ok(())
}
