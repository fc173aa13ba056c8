//! How a store connects: the DSN, the schema, the shard map and the limits on
//! waiting.

use std::time::Duration;

use super::error::OpenError;
use super::shard_map::DEFAULT_SHARDS;
use super::store::PgStore;

/// Settings for [`PgStore::open`]. Every wait has a limit: connecting
/// (`connect_timeout`, 5 s by default) and each statement
/// (`statement_timeout`, 30 s by default), so an unreachable or stuck server
/// becomes an error value instead of a hang.
///
/// ```no_run
/// use duewheel_cluster::StoreConfig;
/// use std::time::Duration;
///
/// let mut store = StoreConfig::new("host=/run/postgresql user=duewheel dbname=payments")
///     .schema("duewheel")
///     .shards(1024)
///     .connect_timeout(Duration::from_secs(2))
///     .open()?;
/// # Ok::<(), duewheel_cluster::OpenError>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a configuration does nothing until used; each setter returns the updated one"]
pub struct StoreConfig {
    pub(super) dsn: String,
    pub(super) schema: String,
    pub(super) shards: u32,
    pub(super) connect_timeout: Duration,
    pub(super) statement_timeout: Duration,
}

impl StoreConfig {
    /// Settings for the database at `dsn`, in libpq's key=value form
    /// (`host=... port=... user=... dbname=...`) or as a
    /// `postgresql://` URL.
    pub fn new(dsn: impl Into<String>) -> Self {
        Self {
            dsn: dsn.into(),
            schema: String::from("duewheel"),
            shards: DEFAULT_SHARDS,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }

    /// The PostgreSQL schema (namespace) that holds duewheel's tables;
    /// created if missing. Lower-case letters, digits and `_`, starting with
    /// a letter or `_`, at most 63 bytes. Default `duewheel`.
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.schema = name.into();
        self
    }

    /// Number of logical shards (1..=65,536, default 1024). Fixed when the
    /// schema is created; every node must use the same number.
    pub fn shards(mut self, shards: u32) -> Self {
        self.shards = shards;
        self
    }

    /// How long to wait for the server when connecting (at least 1 ms).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one statement may run before the server cancels it (at least
    /// 1 ms). A cancelled statement is [`QueryError::Refused`](super::QueryError::Refused).
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Connects, checks (or creates, or migrates) the schema, and prepares
    /// the statements. Same as [`PgStore::open`].
    pub fn open(&self) -> Result<PgStore, OpenError> {
        PgStore::open(self)
    }
}
