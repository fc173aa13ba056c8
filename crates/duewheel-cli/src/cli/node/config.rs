//! `duewheel node`'s settings, from three sources: flags, then the
//! environment (`DUEWHEEL_*`, one variable per flag), then a TOML file
//! (`--config node.toml`, keys are the flag names in snake case), then the
//! defaults.
//!
//! Invariant: every setting is declared once (the `settings!` list below),
//! so a flag always has its variable and its file key, and the three
//! sources cannot disagree on a name. Flags and variables are clap's (a
//! flag beats its variable); the file only fills what both left unset.

use clap::Args as ClapArgs;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident: $t:ty = $default:expr, $env:literal;
    )*) => {
        /// Run one cluster node on a shared PostgreSQL database: over HTTP
        /// (`--listen`), or over stdin/stdout (the line protocol the process
        /// tests and `simulate --cluster` speak), or both.
        ///
        /// Every flag can also be given as an environment variable (shown)
        /// or as a key of the `--config` file (the flag's name in snake
        /// case); a flag beats its variable, which beats the file.
        #[derive(Debug, ClapArgs)]
        pub(crate) struct Args {
            /// A TOML file of settings, e.g. `pg = "host=/run/pg"` and
            /// `groups = ["billing", "mail"]`.
            #[arg(long, env = "DUEWHEEL_CONFIG")]
            config: Option<PathBuf>,
            /// PostgreSQL connection string, e.g. "host=/run/pg port=5432
            /// user=duewheel". The password may come from PGPASSWORD.
            #[arg(long, env = "DUEWHEEL_PG")]
            pg: Option<String>,
            /// This node's name, unique in the cluster.
            #[arg(long, env = "DUEWHEEL_NODE_ID")]
            node_id: Option<String>,
            /// Serve the HTTP API on this address, e.g. 127.0.0.1:8080
            /// (port 0 picks one; the address is printed on stdout).
            #[arg(long, env = "DUEWHEEL_LISTEN")]
            listen: Option<SocketAddr>,
            /// A consumer group, repeatable (the variable takes a comma
            /// separated list). Default: `out`.
            #[arg(long = "group", env = "DUEWHEEL_GROUPS", value_delimiter = ',')]
            groups: Vec<String>,
            /// With --listen, also speak the stdin/stdout protocol (it then
            /// consumes group `out`; EOF or `quit` stops the node).
            #[arg(long, env = "DUEWHEEL_STDIO")]
            stdio: bool,
            /// Fast-forwarded clock: wall time (UTC ms) at which it agrees
            /// with the wall clock. Nodes given the same origin and speed agree.
            #[arg(long, env = "DUEWHEEL_CLOCK_ORIGIN_MS")]
            clock_origin_ms: Option<u64>,
            /// Fast-forwarded clock: how many times faster than the wall clock.
            #[arg(long, env = "DUEWHEEL_CLOCK_SPEED")]
            clock_speed: Option<f64>,
            /// The order-service mode (flags only; not in the file).
            #[command(flatten)]
            orders: super::orders::Args,
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env)]
                $name: Option<$t>,
            )*
        }

        /// The `--config` file: every key optional, unknown keys refused.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            pg: Option<String>,
            node_id: Option<String>,
            listen: Option<SocketAddr>,
            groups: Option<Vec<String>>,
            stdio: Option<bool>,
            clock_origin_ms: Option<u64>,
            clock_speed: Option<f64>,
            $( $name: Option<$t>, )*
        }

        /// The settings the node runs with, every source applied.
        #[derive(Debug)]
        pub(crate) struct Settings {
            pub(crate) pg: String,
            pub(crate) node_id: String,
            pub(crate) listen: Option<SocketAddr>,
            pub(crate) groups: Vec<String>,
            pub(crate) stdio: bool,
            pub(crate) clock: Option<(u64, f64)>,
            pub(crate) orders: super::orders::Args,
            $( $(#[doc = $doc])* pub(crate) $name: $t, )*
        }

        impl Args {
            /// Applies the file (if any) under the flags and variables, then
            /// the defaults; refuses what is missing or contradictory.
            pub(crate) fn resolve(self) -> Result<Settings, String> {
                let file = match &self.config {
                    Some(path) => read_file(path)?,
                    None => File::default(),
                };
                let pg = self.pg.or(file.pg).ok_or("--pg (DUEWHEEL_PG) is required")?;
                let node_id = self
                    .node_id
                    .or(file.node_id)
                    .ok_or("--node-id (DUEWHEEL_NODE_ID) is required")?;
                let mut groups = if self.groups.is_empty() {
                    file.groups.unwrap_or_default()
                } else {
                    self.groups
                };
                if groups.is_empty() {
                    groups.push("out".to_owned());
                }
                for g in &groups {
                    check_group(g)?;
                }
                if (1..groups.len()).any(|i| groups[..i].contains(&groups[i])) {
                    return Err("a --group is declared twice".to_owned());
                }
                let clock = match (
                    self.clock_origin_ms.or(file.clock_origin_ms),
                    self.clock_speed.or(file.clock_speed),
                ) {
                    (Some(origin), Some(speed)) => {
                        if !(speed.is_finite() && speed > 0.0 && speed <= 1e6) {
                            return Err("--clock-speed must be a number in (0, 1000000]".into());
                        }
                        Some((origin, speed))
                    }
                    (None, None) => None,
                    _ => {
                        return Err(
                            "--clock-origin-ms and --clock-speed go together".to_owned()
                        )
                    }
                };
                Ok(Settings {
                    pg,
                    node_id,
                    listen: self.listen.or(file.listen),
                    groups,
                    stdio: self.stdio || file.stdio.unwrap_or(false),
                    clock,
                    orders: self.orders,
                    $( $name: self.$name.or(file.$name).unwrap_or($default), )*
                })
            }
        }
    };
}

settings! {
    /// PostgreSQL schema holding the tables. [default: duewheel]
    schema: String = "duewheel".to_owned(), "DUEWHEEL_SCHEMA";
    /// Logical shards (fixed when the schema is created). [default: 1024]
    shards: u32 = 1024, "DUEWHEEL_SHARDS";
    /// Lease length, ms (database clock). [default: 10_000]
    lease_ttl_ms: u64 = 10_000, "DUEWHEEL_LEASE_TTL_MS";
    /// Lease renewal interval, ms. [default: 2_500]
    renew_ms: u64 = 2_500, "DUEWHEEL_RENEW_MS";
    /// How long past expiry another node's lease is left alone, ms. [default: 1_000]
    grace_ms: u64 = 1_000, "DUEWHEEL_GRACE_MS";
    /// How far ahead the wheel holds rows, ms. [default: 300_000]
    horizon_ms: u64 = 300_000, "DUEWHEEL_HORIZON_MS";
    /// How often the horizon moves, ms. [default: 1_000]
    page_ms: u64 = 1_000, "DUEWHEEL_PAGE_MS";
    /// How often the table is swept for due rows the wheel lacks, ms. [default: 250]
    sweep_ms: u64 = 250, "DUEWHEEL_SWEEP_MS";
    /// Most rows per commit. [default: 1_000]
    batch_rows: usize = 1_000, "DUEWHEEL_BATCH_ROWS";
    /// Longest wait for a commit to fill, µs. [default: 2_000]
    batch_wait_us: u64 = 2_000, "DUEWHEEL_BATCH_WAIT_US";
    /// Writer connections. [default: 2]
    writers: usize = 2, "DUEWHEEL_WRITERS";
    /// Rounds of due timers claimed at once. [default: 2]
    claim_pipeline: usize = 2, "DUEWHEEL_CLAIM_PIPELINE";
    /// Redeliver an unacked event after this long, ms. [default: 30_000]
    ack_timeout_ms: u64 = 30_000, "DUEWHEEL_ACK_TIMEOUT_MS";
    /// How long a call retries a broken connection, ms. [default: 5_000]
    op_timeout_ms: u64 = 5_000, "DUEWHEEL_OP_TIMEOUT_MS";
    /// HTTP: largest request body, bytes. [default: 4194304]
    max_body_bytes: usize = 4 << 20, "DUEWHEEL_MAX_BODY_BYTES";
    /// HTTP: most timers (or acks) in one batch request. [default: 1_000]
    max_batch: usize = 1_000, "DUEWHEEL_MAX_BATCH";
    /// HTTP: longest long-poll `wait_ms` a client may ask for. [default: 60_000]
    max_wait_ms: u64 = 60_000, "DUEWHEEL_MAX_WAIT_MS";
}

fn read_file(path: &PathBuf) -> Result<File, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))
}

/// Group names go into URLs and metric labels: keep them plain.
fn check_group(name: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(plain) {
        return Err(format!(
            "group name {name:?}: 1 to 64 characters of A-Z a-z 0-9 _ - ."
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from(std::iter::once("node").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.args.resolve()
    }

    fn file(text: &str) -> tempfile_path::Path {
        tempfile_path::Path::new(text)
    }

    /// A file removed when dropped (no extra crate for one test helper).
    mod tempfile_path {
        pub(super) struct Path(pub(super) std::path::PathBuf);
        impl Path {
            pub(super) fn new(text: &str) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "duewheel-node-config-{}-{}.toml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, text).expect("temp dir writable");
                Self(path)
            }
            pub(super) fn arg(&self) -> &str {
                self.0.to_str().expect("utf-8 temp path")
            }
        }
        impl Drop for Path {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let f = file(
            "pg = \"host=f\"\nnode_id = \"from-file\"\nshards = 64\ngroups = [\"a\", \"b\"]\nrenew_ms = 7\n",
        );
        let s = parse(&["--config", f.arg(), "--node-id", "flag", "--renew-ms", "9"]).unwrap();
        assert_eq!(s.pg, "host=f");
        assert_eq!(s.node_id, "flag");
        assert_eq!(s.shards, 64);
        assert_eq!(s.renew_ms, 9);
        assert_eq!(s.groups, ["a", "b"]);
        assert_eq!(s.lease_ttl_ms, 10_000, "default");
    }

    #[test]
    fn groups_default_to_out_and_repeat() {
        let s = parse(&["--pg", "x", "--node-id", "n"]).unwrap();
        assert_eq!(s.groups, ["out"]);
        let s = parse(&[
            "--pg",
            "x",
            "--node-id",
            "n",
            "--group",
            "a",
            "--group",
            "b",
        ])
        .unwrap();
        assert_eq!(s.groups, ["a", "b"]);
    }

    #[test]
    fn refuses_missing_bad_and_unknown_settings() {
        assert!(parse(&["--node-id", "n"]).unwrap_err().contains("--pg"));
        assert!(parse(&["--pg", "x", "--node-id", "n", "--group", "a/b"]).is_err());
        assert!(
            parse(&[
                "--pg",
                "x",
                "--node-id",
                "n",
                "--group",
                "a",
                "--group",
                "a"
            ])
            .is_err()
        );
        assert!(parse(&["--pg", "x", "--node-id", "n", "--clock-speed", "2"]).is_err());
        let f = file("pg = \"x\"\nnode_id = \"n\"\nshardz = 3\n");
        let e = parse(&["--config", f.arg()]).unwrap_err();
        assert!(e.contains("shardz"), "{e}");
        let f = file("pg = \"x\"\nnode_id = \"n\"\nshards = \"many\"\n");
        assert!(parse(&["--config", f.arg()]).is_err());
        assert!(
            parse(&[
                "--pg",
                "x",
                "--node-id",
                "n",
                "--config",
                "/nonexistent/x.toml"
            ])
            .is_err()
        );
    }
}
