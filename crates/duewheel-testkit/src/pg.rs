//! The real-server plumbing shared by the PostgreSQL tests: where the DSN
//! comes from, when a missing one skips and when it fails, and a schema of
//! one's own per test.
//!
//! The rule every PostgreSQL test keeps: without `DUEWHEEL_PG_DSN` a test
//! prints a note and passes, unless `CI=true`, where it fails — CI must never
//! skip the database tests silently (`.ci/run` starts a server and sets it).

use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable holding the DSN (`eval "$(scripts/pg-up.sh)"`).
pub const DSN_VAR: &str = "DUEWHEEL_PG_DSN";

/// A shell command that restarts the server (`scripts/pg-up.sh` and `.ci/run`
/// export it), for the tests that take the database away mid-run.
pub const RESTART_VAR: &str = "DUEWHEEL_PG_RESTART";

/// `CI=true` (or `1`): missing prerequisites fail instead of skipping.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The value of `var`, or `None` (with a note) when the test should skip.
/// Panics under `CI=true` when it is missing.
pub fn required_env(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => {
            assert!(
                !ci(),
                "CI=true but {var} is not set: {what} must run in CI (.ci/run sets it)"
            );
            eprintln!("note: {var} not set; skipping {what} (run `eval \"$(scripts/pg-up.sh)\"`)");
            None
        }
    }
}

/// The DSN, or `None` (with a note) when the tests should skip. Panics under
/// `CI=true` without a DSN.
pub fn dsn() -> Option<String> {
    required_env(DSN_VAR, "the PostgreSQL tests")
}

/// The restart command, or `None` (with a note) when the test should skip.
/// Panics under `CI=true` without it.
pub fn restart_command() -> Option<String> {
    required_env(RESTART_VAR, "the database-restart test")
}

/// A schema name no other test run uses: `<prefix>_<pid>_<nanos>`, lower
/// case, well under PostgreSQL's 63-byte identifier limit for short prefixes.
pub fn unique_schema(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!("{prefix}_{}_{nanos}", std::process::id());
    assert!(name.len() <= 63, "schema name too long: {name}");
    name
}

/// A plain client whose `search_path` is `schema`.
pub fn client(dsn: &str, schema: &str) -> postgres::Client {
    let mut client = postgres::Client::connect(dsn, postgres::NoTls).expect("connect");
    client
        .batch_execute(&format!("SET search_path TO \"{schema}\""))
        .unwrap();
    client
}

/// Drops `schema` and everything in it; errors are ignored (it is cleanup).
/// `DUEWHEEL_KEEP_SCHEMA=1` keeps it, to look at the tables after a failure.
pub fn drop_schema(dsn: &str, schema: &str) {
    if std::env::var("DUEWHEEL_KEEP_SCHEMA").is_ok() {
        eprintln!("note: DUEWHEEL_KEEP_SCHEMA set; schema {schema} kept");
        return;
    }
    if let Ok(mut c) = postgres::Client::connect(dsn, postgres::NoTls) {
        let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
    }
}

/// A schema of its own for one test, dropped when this is dropped.
pub struct TestSchema {
    /// The server's DSN.
    pub dsn: String,
    /// The schema's name, unique to this test run.
    pub name: String,
}

impl TestSchema {
    /// `None` when the tests skip (no DSN outside CI).
    pub fn new(prefix: &str) -> Option<Self> {
        Some(Self {
            dsn: dsn()?,
            name: unique_schema(prefix),
        })
    }

    /// A plain connection to this schema, for checks no API offers.
    pub fn client(&self) -> postgres::Client {
        client(&self.dsn, &self.name)
    }

    /// The `duewheel node` arguments a test cluster on this schema shares:
    /// `shards` shards, leases of `lease_ttl_ms` renewed every `renew_ms`,
    /// no grace, a 100 ms sweep; then `extra`.
    pub fn node_args(
        &self,
        shards: u32,
        lease_ttl_ms: u64,
        renew_ms: u64,
        extra: &[&str],
    ) -> Vec<String> {
        let (shards, ttl, renew) = (
            shards.to_string(),
            lease_ttl_ms.to_string(),
            renew_ms.to_string(),
        );
        let common = [
            "node",
            "--pg",
            &self.dsn,
            "--schema",
            &self.name,
            "--shards",
            &shards,
            "--lease-ttl-ms",
            &ttl,
            "--renew-ms",
            &renew,
            "--grace-ms",
            "0",
            "--sweep-ms",
            "100",
        ];
        common.iter().chain(extra).map(|s| s.to_string()).collect()
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        drop_schema(&self.dsn, &self.name);
    }
}
