//! The tables, and the versioned migration that creates them.
//!
//! All of duewheel's tables live in one PostgreSQL schema (namespace), by
//! default `duewheel`, so they never mix with the application's and a test
//! can use a fresh one. The schema's own version is one row of
//! `duewheel_schema`:
//!
//! ```sql
//! CREATE TABLE duewheel_schema (
//!   singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
//!   version int NOT NULL,        -- SCHEMA_VERSION that last migrated it
//!   shards int NOT NULL);        -- the ShardMap's size, fixed at set-up
//!
//! -- version 1
//! CREATE TABLE shards (
//!   shard_id int PRIMARY KEY,
//!   epoch bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0),
//!   owner text,
//!   lease_expires_at timestamptz NOT NULL DEFAULT '-infinity');
//! CREATE TABLE timers (
//!   shard_id int NOT NULL,
//!   timer_id bigint NOT NULL,          -- u64 id, bit-cast to i64
//!   deadline_ms bigint NOT NULL CHECK (deadline_ms >= 0),   -- UTC ms
//!   state smallint NOT NULL DEFAULT 0 CHECK (state IN (0, 1)), -- pending, claimed
//!   fired_epoch bigint,                -- the epoch that claimed it
//!   payload bytea NOT NULL,
//!   PRIMARY KEY (shard_id, timer_id),
//!   CHECK ((state = 0) = (fired_epoch IS NULL))
//! ) PARTITION BY HASH (shard_id);      -- 16 partitions, timers_p0..timers_p15
//! CREATE INDEX ON timers (shard_id, deadline_ms);
//! INSERT INTO shards (shard_id) SELECT generate_series(0, shards - 1);
//!
//! -- version 2: the cluster node
//! ALTER TABLE timers ADD COLUMN attempt int NOT NULL DEFAULT 0; -- claims so far
//! CREATE TABLE nodes (                 -- heartbeats, for fair-share balancing
//!   node_id text PRIMARY KEY,
//!   seen_at timestamptz NOT NULL);     -- database clock
//!
//! -- version 3: tombstones, reminders, node sessions
//! ALTER TABLE timers DROP CONSTRAINT timers_state_check,
//!   ADD CONSTRAINT timers_state_check CHECK (state IN (0, 1, 2)); -- 2: fired and acked
//! ALTER TABLE timers ADD COLUMN ended_at_ms bigint;   -- UTC ms, set with state 2
//! ALTER TABLE timers DROP CONSTRAINT timers_deadline_ms_check,
//!   ADD CONSTRAINT timers_deadline_ms_check CHECK (deadline_ms >= 0 OR state = 2);
//!                                      -- a tombstone's deadline: -1 - deadline_ms
//! ALTER TABLE timers ADD COLUMN reminders_ms bigint[] NOT NULL DEFAULT '{}';
//!                                      -- reminder times (UTC ms) not yet delivered
//! ALTER TABLE nodes ADD COLUMN session text;          -- the live process's token
//!
//! -- version 4: room in every page for a claim's new row version
//! ALTER TABLE timers_p0 SET (fillfactor = 50);        -- and so on, to timers_p15
//! ```
//!
//! State 2 is a tombstone: a fired timer whose delivery every group acked.
//! Its deadline is stored mirrored (`-1 - deadline_ms`, negative) so the
//! tombstones sort below every live row in the deadline index and due-row
//! scans (which start at 0) skip them.
//! It is what lets a cancel that lost tell `AlreadyFired` from `NotFound`
//! after the fact (an in-doubt cancel after a reconnect, a cancel inside the
//! caller's transaction); tombstones are reaped once older than the
//! configured retention. `nodes.session` is a random token each live node
//! process writes with its heartbeat, so a second process under the same
//! node id is refused instead of sharing its leases.
//!
//! Opening a database:
//! - no `duewheel_schema` row: create everything (version 0 → current);
//! - an older version: apply the missing migrations in order;
//! - the current version: nothing to do;
//! - a newer version: [`OpenError::SchemaTooNew`];
//!   this build does not touch tables it does not understand;
//! - a different shard count:
//!   [`OpenError::ShardCountMismatch`].
//!
//! Nodes may start together: the check and the migration run in one
//! transaction under an advisory lock keyed by the schema's name, so exactly
//! one of them migrates and the others see its result. Creating or migrating
//! needs the `CREATE` privilege; opening a current schema runs no DDL, so a
//! node's role needs only `SELECT, INSERT, UPDATE, DELETE` on the tables.

use super::error::{OpenError, QueryError};

/// The newest schema version this build creates and understands.
pub const SCHEMA_VERSION: i32 = 4;

/// How full an insert leaves a page of `timers` (migration 4). A claim
/// changes no indexed column, so its new row version can be a HOT update
/// (no index entries) when it fits in the same page; with every row of a
/// page claimed in turn, half the page must stay free for that. Measured
/// (#16, `cluster_bench`, fires through 3 nodes, alternating builds on a
/// quiet machine): 64.6k and 68.2k fires/s at 50, against 52.3k and 52.8k
/// at 100; the claim alone went from ~10.5 to ~7 µs of database time per
/// row. The price is a table twice the size on disk.
const TIMER_FILLFACTOR: u32 = 50;

/// Hash partitions of `timers`. Fixed: changing it is a migration.
const TIMER_PARTITIONS: u32 = 16;

/// `true` if `name` is a plain lower-case SQL identifier (so it can be quoted
/// into DDL without any escaping): `[a-z_][a-z0-9_]*`, at most 63 bytes
/// (PostgreSQL's `NAMEDATALEN - 1`).
pub(super) fn is_valid_schema_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && name.len() <= 63
}

/// The statements of migration `to` (from `to - 1`).
fn migration(to: i32, shards: u32) -> String {
    match to {
        1 => {
            let mut sql = String::from(
                "CREATE TABLE shards (
                   shard_id int PRIMARY KEY,
                   epoch bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0),
                   owner text,
                   lease_expires_at timestamptz NOT NULL DEFAULT '-infinity');
                 CREATE TABLE timers (
                   shard_id int NOT NULL,
                   timer_id bigint NOT NULL,
                   deadline_ms bigint NOT NULL CHECK (deadline_ms >= 0),
                   state smallint NOT NULL DEFAULT 0 CHECK (state IN (0, 1)),
                   fired_epoch bigint,
                   payload bytea NOT NULL,
                   PRIMARY KEY (shard_id, timer_id),
                   CHECK ((state = 0) = (fired_epoch IS NULL))
                 ) PARTITION BY HASH (shard_id);\n",
            );
            for r in 0..TIMER_PARTITIONS {
                sql.push_str(&format!(
                    "CREATE TABLE timers_p{r} PARTITION OF timers \
                     FOR VALUES WITH (MODULUS {TIMER_PARTITIONS}, REMAINDER {r});\n"
                ));
            }
            sql.push_str(&format!(
                "CREATE INDEX timers_deadline ON timers (shard_id, deadline_ms);
                 INSERT INTO shards (shard_id) SELECT generate_series(0, {});\n",
                shards - 1
            ));
            sql
        }
        // The cluster node: a claim counts attempts (a redelivery after
        // takeover is attempt + 1), and nodes announce themselves for
        // balancing. (A partial index `WHERE state = 0` was tried and left
        // out: with it, `PgStore::claim_due` in the fencing test ran past
        // its 30 s statement timeout, where it takes milliseconds without.)
        2 => "ALTER TABLE timers ADD COLUMN attempt int NOT NULL DEFAULT 0;
              CREATE TABLE nodes (
                node_id text PRIMARY KEY,
                seen_at timestamptz NOT NULL);"
            .to_owned(),
        // Tombstones (state 2, reaped after a retention, deadline stored
        // mirrored below 0), pending reminder times, and node sessions (see
        // the module doc).
        3 => "ALTER TABLE timers DROP CONSTRAINT timers_state_check,
                ADD CONSTRAINT timers_state_check CHECK (state IN (0, 1, 2));
              ALTER TABLE timers ADD COLUMN ended_at_ms bigint;
              ALTER TABLE timers DROP CONSTRAINT timers_deadline_ms_check,
                ADD CONSTRAINT timers_deadline_ms_check CHECK (deadline_ms >= 0 OR state = 2);
              ALTER TABLE timers ADD COLUMN reminders_ms bigint[] NOT NULL DEFAULT '{}';
              ALTER TABLE nodes ADD COLUMN session text;"
            .to_owned(),
        // Room for HOT claims (see `TIMER_FILLFACTOR`). On a migrated
        // table it applies to pages written from now on; existing pages
        // change as they are rewritten (`VACUUM FULL`, or as rows come and
        // go).
        4 => (0..TIMER_PARTITIONS)
            .map(|r| format!("ALTER TABLE timers_p{r} SET (fillfactor = {TIMER_FILLFACTOR});\n"))
            .collect(),
        _ => unreachable!("no migration to version {to}"),
    }
}

/// Checks the schema `name` (already validated and set as `search_path`),
/// creating or migrating it as needed, for a map of `shards` shards.
pub(super) fn open(
    client: &mut postgres::Client,
    name: &str,
    shards: u32,
) -> Result<(), OpenError> {
    let q = |e: postgres::Error| OpenError::Schema(QueryError::from(e));
    let mut tx = client.transaction().map_err(q)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('duewheel schema ' || $1::text))",
        &[&name],
    )
    .map_err(q)?;
    // Only DDL when something must be created: a node whose role may read
    // and write the tables but not create them opens a migrated schema.
    let exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = $1 AND c.relname = 'duewheel_schema')",
            &[&name],
        )
        .map_err(q)?
        .try_get(0)
        .map_err(q)?;
    if !exists {
        // `name` is [a-z0-9_] only (checked by the caller), so quoting it is
        // enough.
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{name}\";
             CREATE TABLE duewheel_schema (
               singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
               version int NOT NULL,
               shards int NOT NULL);"
        ))
        .map_err(q)?;
    }
    let row = tx
        .query_opt("SELECT version, shards FROM duewheel_schema", &[])
        .map_err(q)?;
    let found = match row {
        None => 0,
        Some(row) => {
            let version: i32 = row.try_get(0).map_err(q)?;
            let found_shards: i32 = row.try_get(1).map_err(q)?;
            if version > SCHEMA_VERSION {
                return Err(OpenError::SchemaTooNew {
                    found: version,
                    supported: SCHEMA_VERSION,
                });
            }
            // A negative count cannot match any configured one.
            let found_shards = u32::try_from(found_shards).unwrap_or(u32::MAX);
            if found_shards != shards {
                return Err(OpenError::ShardCountMismatch {
                    found: found_shards,
                    configured: shards,
                });
            }
            version
        }
    };
    if found == SCHEMA_VERSION {
        return tx.commit().map_err(q);
    }
    for to in (found + 1)..=SCHEMA_VERSION {
        tx.batch_execute(&migration(to, shards)).map_err(q)?;
    }
    // shards <= MAX_SHARDS, so it fits an int.
    let shards_i32 = i32::try_from(shards).unwrap_or(i32::MAX);
    tx.execute(
        "INSERT INTO duewheel_schema (version, shards) VALUES ($1, $2)
         ON CONFLICT (singleton) DO UPDATE SET version = excluded.version",
        &[&SCHEMA_VERSION, &shards_i32],
    )
    .map_err(q)?;
    tx.commit().map_err(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["duewheel", "_x", "t_1_abc", &"a".repeat(63)] {
            assert!(is_valid_schema_name(ok), "{ok}");
        }
        for bad in ["", "1abc", "Dw", "a-b", "a\"b", "a;b", "é", &"a".repeat(64)] {
            assert!(!is_valid_schema_name(bad), "{bad}");
        }
    }
}
