//! The database side of `simulate --cluster`: the run's own schema, and
//! what the driver reads from it (who owns which shard, what is left).
//!
//! Invariant: each run works in a schema of its own, `sim_<pid>_<ms>`,
//! created before the nodes start and dropped (`DROP SCHEMA ... CASCADE`)
//! when the [`Database`] is dropped, on success or failure, so runs never
//! see each other's timers and leave nothing behind.
//!
//! The driver only reads here; every write to the timers is the nodes'.
//! With `--effects pg` the application's tables live in a second schema,
//! `<schema>_app`, created by the nodes and dropped with the first.
//!
//! A read that finds the connection broken (`--restart-db-at` restarted the
//! server) reconnects and tries again for up to 30 s.

use super::Error;
use duewheel_cluster::{OpenError, StoreConfig};
use postgres::{Client, NoTls};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long the driver waits to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a read retries across a broken connection (a restart).
const RECONNECT_FOR: Duration = Duration::from_secs(30);

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

/// One order as the application's tables hold it at the end.
#[derive(Clone, Debug)]
pub(super) struct OrderRow {
    pub(super) qty: i64,
    /// `open`, `paid` or `cancelled`.
    pub(super) status: String,
    /// Its `cancel` effects (each one released its stock).
    pub(super) cancels: u64,
    /// Its timer row's state (0 pending, 1 claimed, 2 fired and ended);
    /// `None`: no row (cancelled by the payment, or never written).
    pub(super) timer_state: Option<i16>,
}

/// What the application's tables hold at the end (`--effects pg`).
#[derive(Clone, Debug, Default)]
pub(super) struct Effects {
    /// Order id → its row.
    pub(super) orders: BTreeMap<u64, OrderRow>,
    /// `cancel` effects of ids with no order row.
    pub(super) orphan_cancels: u64,
    /// `refund` effects (a payment that lost to the expiry).
    pub(super) refunds: u64,
    /// Timer rows with no order row.
    pub(super) deadlines_without_order: u64,
    pub(super) stock_available: i64,
}

/// The run's schema and a connection to read it.
pub(super) struct Database {
    client: Client,
    config: postgres::Config,
    schema: String,
    /// `--effects pg`: the application's schema too.
    app_schema: Option<String>,
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
            config,
            schema: schema.to_string(),
            app_schema: None,
            dropped: false,
        })
    }

    /// The application's schema of `--effects pg` (created by the nodes),
    /// dropped with the run's.
    pub(super) fn with_app_schema(&mut self, app: &str) {
        self.app_schema = Some(app.to_string());
    }

    /// Runs `f`, reconnecting and running it again while the connection is
    /// broken, for up to [`RECONNECT_FOR`].
    fn read<T>(
        &mut self,
        mut f: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        let until = std::time::Instant::now() + RECONNECT_FOR;
        loop {
            match f(&mut self.client) {
                Ok(v) => return Ok(v),
                Err(e) if !(self.client.is_closed() || outage(&e)) => return Err(e),
                Err(e) if std::time::Instant::now() >= until => return Err(e),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100));
                    if let Ok(client) = self.config.connect(NoTls) {
                        self.client = client;
                    }
                }
            }
        }
    }

    /// Reads the application's tables (`--effects pg`).
    pub(super) fn effects(&mut self) -> Result<Effects, String> {
        let Some(app) = self.app_schema.clone() else {
            return Ok(Effects::default());
        };
        let cl = self.schema.clone();
        let err = |e: postgres::Error| format!("cannot read the application's tables: {e}");
        let rows = self
            .read(|c| {
                c.query(
                    &format!(
                        "SELECT o.id, o.qty::int8, o.status, coalesce(e.n, 0), t.state \
                         FROM \"{app}\".orders o \
                         LEFT JOIN (SELECT order_id, count(*) AS n FROM \"{app}\".effects \
                           WHERE kind = 'cancel' GROUP BY order_id) e ON e.order_id = o.id \
                         LEFT JOIN \"{cl}\".timers t ON t.timer_id = o.id"
                    ),
                    &[],
                )
            })
            .map_err(err)?;
        let mut effects = Effects::default();
        for r in &rows {
            let get = |e: postgres::Error| format!("unexpected row in the orders table: {e}");
            let id: i64 = r.try_get(0).map_err(get)?;
            effects.orders.insert(
                id as u64,
                OrderRow {
                    qty: r.try_get(1).map_err(get)?,
                    status: r.try_get(2).map_err(get)?,
                    cancels: r.try_get::<_, i64>(3).map_err(get)?.max(0) as u64,
                    timer_state: r.try_get(4).map_err(get)?,
                },
            );
        }
        let row = self
            .read(|c| {
                c.query_one(
                    &format!(
                        "SELECT \
                           (SELECT count(*) FROM \"{app}\".effects e WHERE e.kind = 'cancel' \
                              AND NOT EXISTS (SELECT 1 FROM \"{app}\".orders o \
                                              WHERE o.id = e.order_id)), \
                           (SELECT count(*) FROM \"{app}\".effects WHERE kind = 'refund'), \
                           (SELECT count(*) FROM \"{cl}\".timers t WHERE NOT EXISTS \
                              (SELECT 1 FROM \"{app}\".orders o WHERE o.id = t.timer_id)), \
                           (SELECT available FROM \"{app}\".stock)"
                    ),
                    &[],
                )
            })
            .map_err(err)?;
        let count = |i: usize| -> Result<u64, String> {
            let n: i64 = row.try_get(i).map_err(|e| e.to_string())?;
            Ok(n.max(0) as u64)
        };
        effects.orphan_cancels = count(0)?;
        effects.refunds = count(1)?;
        effects.deadlines_without_order = count(2)?;
        effects.stock_available = row.try_get(3).map_err(|e| e.to_string())?;
        Ok(effects)
    }

    /// Orders still `open` (`--effects pg`): expiries not yet handled.
    pub(super) fn open_orders(&mut self) -> Result<u64, String> {
        let Some(app) = self.app_schema.clone() else {
            return Ok(0);
        };
        let row = self
            .read(|c| {
                c.query_one(
                    &format!("SELECT count(*) FROM \"{app}\".orders WHERE status = 'open'"),
                    &[],
                )
            })
            .map_err(|e| format!("cannot read the orders table: {e}"))?;
        let n: i64 = row.try_get(0).map_err(|e| e.to_string())?;
        Ok(n.max(0) as u64)
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
            .read(|c| c.query(&sql, &[&only]))
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
            .read(|c| c.query(&sql, &[&shards]))
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
            .read(|c| c.query_one(&sql, &[]))
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
            .read(|c| c.query(&sql, &[&ids]))
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
                        match state {
                            0 => "pending",
                            1 => "claimed",
                            _ => "fired and ended (a tombstone)",
                        }
                    ),
                ))
            })
            .collect::<Result<_, String>>()
            .map_err(|e| format!("unexpected row in the timers table: {e}"))
    }

    /// Keeps the schemas (not dropped on drop); their names.
    pub(super) fn keep(mut self) -> String {
        self.dropped = true;
        match &self.app_schema {
            Some(app) => format!("{} (and {app})", self.schema),
            None => self.schema.clone(),
        }
    }

    /// Drops the schema now, reporting a failure (drop does so silently).
    pub(super) fn drop_schema(mut self) -> Result<(), String> {
        self.dropped = true;
        let sql = self.drop_all_sql();
        self.read(|c| c.batch_execute(&sql))
            .map_err(|e| format!("cannot drop schema {}: {e}", self.schema))
    }

    fn drop_all_sql(&self) -> String {
        let mut sql = drop_sql(&self.schema);
        if let Some(app) = &self.app_schema {
            sql.push_str(&format!("; DROP SCHEMA IF EXISTS \"{app}\" CASCADE"));
        }
        sql
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if !self.dropped {
            let sql = self.drop_all_sql();
            let _ = self.client.batch_execute(&sql);
        }
    }
}

/// `true` for an error of a server going away or not back yet (no SQL
/// state: the socket; class 08, connection exception; class 57, operator
/// intervention, as "the database system is shutting down").
fn outage(e: &postgres::Error) -> bool {
    e.code()
        .is_none_or(|c| c.code().starts_with("08") || c.code().starts_with("57"))
}

/// A node killed a moment ago may still hold locks until its backend
/// notices; wait for them a while, not forever.
fn drop_sql(schema: &str) -> String {
    format!("SET lock_timeout = '15s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")
}
