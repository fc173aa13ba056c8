//! How a store connects: the DSN, the schema, the shard map and the limits on
//! waiting.

use std::time::Duration;

use super::error::OpenError;
use super::passfile;
use super::shard_map::DEFAULT_SHARDS;
use super::store::PgStore;
use super::tls::{self, Tls};
use std::path::PathBuf;

/// Settings for [`PgStore::open`]. Every wait has a limit: connecting
/// (`connect_timeout`, 5 s by default) and each statement
/// (`statement_timeout`, 30 s by default), so an unreachable or stuck server
/// becomes an error value instead of a hang.
///
/// Credentials and TLS follow libpq: a password not in the DSN comes from
/// `PGPASSWORD` or the password file (`PGPASSFILE`, `~/.pgpass`; see
/// [`passfile`](Self::passfile)), and `sslmode` / `sslrootcert` in the DSN
/// (or [`tls`](Self::tls)) ask for verified TLS (feature `tls`).
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
    pub(super) tls: Option<Tls>,
    pub(super) passfile: Option<PathBuf>,
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
            tls: None,
            passfile: None,
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

    /// How connections are secured; overrides `sslmode` / `sslrootcert` in
    /// the DSN. Without either, connections are plain. [`Tls::Require`]
    /// needs the `tls` feature (without it, opening is an
    /// [`OpenError::InvalidConfig`]).
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The password file to read when the DSN has no password and
    /// `PGPASSWORD` is unset (default: `PGPASSFILE`, else `~/.pgpass`).
    /// libpq's format; ignored unless only its owner may read it.
    pub fn passfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.passfile = Some(path.into());
        self
    }

    /// One connection: the DSN without its TLS options parsed, the
    /// timeouts and application name set, the password found if the DSN
    /// has none, and the TLS mode applied.
    pub(super) fn connect(&self) -> Result<postgres::Client, OpenError> {
        let split = tls::split_dsn(&self.dsn).map_err(OpenError::InvalidConfig)?;
        let mut pg: postgres::Config = split
            .rest
            .parse()
            .map_err(|e| OpenError::InvalidConfig(format!("DSN: {e}")))?;
        pg.connect_timeout(self.connect_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("duewheel");
        }
        if pg.get_password().is_none() {
            let host = match pg.get_hosts().first() {
                Some(postgres::config::Host::Tcp(name)) => name.clone(),
                // libpq: a socket directory matches `localhost`.
                _ => String::from("localhost"),
            };
            let user = pg.get_user().unwrap_or_default().to_owned();
            let dbname = pg.get_dbname().unwrap_or(&user).to_owned();
            let target = passfile::Target {
                host: &host,
                port: pg.get_ports().first().copied().unwrap_or(5432),
                dbname: &dbname,
                user: &user,
            };
            let found =
                passfile::lookup(&target, self.passfile.as_deref(), |k| std::env::var(k).ok());
            if let Some(password) = found {
                pg.password(password);
            }
        }
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let mode = tls::resolve(self.tls.as_ref(), &split, home)?;
        tls::connect(&mut pg, &mode)
    }

    /// Connects, checks (or creates, or migrates) the schema, and prepares
    /// the statements. Same as [`PgStore::open`].
    pub fn open(&self) -> Result<PgStore, OpenError> {
        PgStore::open(self)
    }
}
