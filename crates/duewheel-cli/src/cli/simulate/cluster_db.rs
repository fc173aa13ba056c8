//! The database side of `simulate --cluster`: the run's own schema, and
//! what the driver reads from it (who owns which shard, what is left).
//!
//! Invariant: each run works in a schema of its own, `sim_<pid>_<ms>`,
//! created before the nodes start and dropped (`DROP SCHEMA ... CASCADE`)
//! when the [`Database`] is dropped, on success or failure, so runs never
//! see each other's timers and leave nothing behind.
//!
//! The driver only reads here; every write to the timers is the nodes'.

use super::Error;
use duewheel_cluster::{OpenError, StoreConfig};
use postgres::{Client, NoTls};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long the driver waits to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A shard's row in the `shards` table.
#[derive(Clone, Debug)]
pub(super) struct ShardRow {
    pub(super) shard: u32,
    pub(super) owner: Option<String>,
    /// Bumped by every acquisition: claims carry it.
    pub(super) epoch: u64,
    /// Milliseconds until its lease expires, by the database's clock
    /// (negative: expired; `None`: released or never taken).
    pub(super) lease_left_ms: Option<f64>,
}

/// What the `timers` table still holds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub(super) struct Leftover {
    pub(super) pending: u64,
    pub(super) claimed: u64,
}

/// The run's schema and a connection to read it.
pub(super) struct Database {
    client: Client,
    schema: String,
    dropped: bool,
}

impl Database {
    /// Creates `schema` with `shards` shards through the library (the same
    /// DDL the nodes would run), and connects for reading. A DSN the
    /// library refuses is a usage error; a server that cannot be reached
    /// is a run error.
    pub(super) fn create(dsn: &str, schema: &str, shards: u32) -> Result<Database, Error> {
        let opened = StoreConfig::new(dsn)
            .schema(schema)
            .shards(shards)
            .connect_timeout(CONNECT_TIMEOUT)
            .open();
        match opened {
            Ok(store) => drop(store),
            Err(e @ OpenError::InvalidConfig(_)) => {
                return Err(Error::Usage(format!("--pg: {e}")));
            }
            Err(e) => return Err(Error::Run(format!("cannot set up the run's schema: {e}"))),
        }
        let mut config: postgres::Config = dsn
            .parse()
            .map_err(|e| Error::Usage(format!("--pg: invalid DSN: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        let client = match config.connect(NoTls) {
            Ok(client) => client,
            Err(e) => {
                // The schema exists now: try once more to remove it.
                if let Ok(mut c) = config.connect(NoTls) {
                    let _ = c.batch_execute(&drop_sql(schema));
                }
                return Err(Error::Run(format!("cannot connect to PostgreSQL: {e}")));
            }
        };
        Ok(Database {
            client,
            schema: schema.to_string(),
            dropped: false,
        })
    }

    /// Every shard's row, or only those in `only`.
    pub(super) fn shards(&mut self, only: Option<&[u32]>) -> Result<Vec<ShardRow>, String> {
        let sql = format!(
            "SELECT shard_id, owner, epoch, \
               CASE WHEN isfinite(lease_expires_at) \
                 THEN (extract(epoch FROM lease_expires_at - now()) * 1000)::float8 END \
             FROM \"{}\".shards WHERE $1::int[] IS NULL OR shard_id = ANY($1) ORDER BY shard_id",
            self.schema
        );
        let only: Option<Vec<i32>> =
            only.map(|s| s.iter().map(|&x| i32::try_from(x).unwrap_or(-1)).collect());
        let rows = self
            .client
            .query(&sql, &[&only])
            .map_err(|e| format!("cannot read the shards table: {e}"))?;
        rows.iter()
            .map(|r| {
                let shard: i32 = r.try_get(0).map_err(|e| e.to_string())?;
                Ok(ShardRow {
                    shard: u32::try_from(shard).map_err(|e| e.to_string())?,
                    owner: r.try_get(1).map_err(|e| e.to_string())?,
                    epoch: u64::try_from(r.try_get::<_, i64>(2).map_err(|e| e.to_string())?)
                        .map_err(|e| e.to_string())?,
                    lease_left_ms: r.try_get(3).map_err(|e| e.to_string())?,
                })
            })
            .collect::<Result<_, String>>()
            .map_err(|e| format!("unexpected row in the shards table: {e}"))
    }

    /// The ids of the rows of `shards` that are claimed and not acked
    /// (state 1): delivered, or about to be, and not ended.
    pub(super) fn claimed(&mut self, shards: &[u32]) -> Result<BTreeSet<u64>, String> {
        if shards.is_empty() {
            return Ok(BTreeSet::new());
        }
        let sql = format!(
            "SELECT timer_id FROM \"{}\".timers WHERE state = 1 AND shard_id = ANY($1)",
            self.schema
        );
        let shards: Vec<i32> = shards
            .iter()
            .map(|&s| i32::try_from(s).unwrap_or(-1))
            .collect();
        let rows = self
            .client
            .query(&sql, &[&shards])
            .map_err(|e| format!("cannot read the claimed rows: {e}"))?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get(0).map_err(|e| e.to_string())?;
                u64::try_from(id).map_err(|e| e.to_string())
            })
            .collect::<Result<_, String>>()
            .map_err(|e| format!("unexpected row in the timers table: {e}"))
    }

    /// Pending and claimed rows left in the `timers` table.
    pub(super) fn leftover(&mut self) -> Result<Leftover, String> {
        let sql = format!(
            "SELECT count(*) FILTER (WHERE state = 0), count(*) FILTER (WHERE state = 1) \
             FROM \"{}\".timers",
            self.schema
        );
        let row = self
            .client
            .query_one(&sql, &[])
            .map_err(|e| format!("cannot read the timers table: {e}"))?;
        let count = |i: usize| -> Result<u64, String> {
            let n: i64 = row.try_get(i).map_err(|e| e.to_string())?;
            Ok(n.max(0) as u64)
        };
        Ok(Leftover {
            pending: count(0)?,
            claimed: count(1)?,
        })
    }

    /// What the `timers` and `shards` tables say of the timers `ids`: one
    /// line per id still stored, for the report of a timer that never
    /// fired.
    pub(super) fn describe(&mut self, ids: &[u64]) -> Result<Vec<(u64, String)>, String> {
        let sql = format!(
            "SELECT t.timer_id, t.shard_id, t.state, t.fired_epoch, t.attempt, s.epoch, s.owner \
             FROM \"{0}\".timers t JOIN \"{0}\".shards s USING (shard_id) \
             WHERE t.timer_id = ANY($1)",
            self.schema
        );
        let ids: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
        let rows = self
            .client
            .query(&sql, &[&ids])
            .map_err(|e| format!("cannot read the timers table: {e}"))?;
        rows.iter()
            .map(|r| {
                let get = |e: postgres::Error| e.to_string();
                let id: i64 = r.try_get(0).map_err(get)?;
                let shard: i32 = r.try_get(1).map_err(get)?;
                let state: i16 = r.try_get(2).map_err(get)?;
                let fired_epoch: Option<i64> = r.try_get(3).map_err(get)?;
                let attempt: i32 = r.try_get(4).map_err(get)?;
                let epoch: i64 = r.try_get(5).map_err(get)?;
                let owner: Option<String> = r.try_get(6).map_err(get)?;
                Ok((
                    id as u64,
                    format!(
                        "row left in shard {shard}: {} (fired_epoch {fired_epoch:?}, attempt \
                         {attempt}); the shard now at epoch {epoch}, owner {owner:?}",
                        if state == 0 { "pending" } else { "claimed" }
                    ),
                ))
            })
            .collect::<Result<_, String>>()
            .map_err(|e| format!("unexpected row in the timers table: {e}"))
    }

    /// Drops the schema now, reporting a failure (drop does so silently).
    pub(super) fn drop_schema(mut self) -> Result<(), String> {
        self.dropped = true;
        self.client
            .batch_execute(&drop_sql(&self.schema))
            .map_err(|e| format!("cannot drop schema {}: {e}", self.schema))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if !self.dropped {
            let _ = self.client.batch_execute(&drop_sql(&self.schema));
        }
    }
}

/// A node killed a moment ago may still hold locks until its backend
/// notices; wait for them a while, not forever.
fn drop_sql(schema: &str) -> String {
    format!("SET lock_timeout = '15s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")
}
