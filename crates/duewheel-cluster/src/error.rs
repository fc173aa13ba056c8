//! The PostgreSQL layer's errors, one enum per operation.
//!
//! Two things a caller must always be able to tell apart:
//!
//! - **Fenced**: the shard's epoch moved on. The write was refused by the
//!   database and took no effect; the caller no longer owns the shard and must
//!   stop it at once (Temporal's "shard ownership lost").
//! - **In doubt** ([`QueryError::InDoubt`]): the connection failed while a
//!   statement was in flight, so it may or may not have committed. An owner
//!   that sees this re-acquires the shard (bumping the epoch) and reloads it
//!   before answering, as Temporal does; nothing may be acknowledged on it.
//!
//! Nothing here panics on bad input or a broken connection; every failure is
//! one of these values. Batches are borrowed, so a refused batch is still the
//! caller's.

/// A statement failed. Says whether it may have taken effect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// PostgreSQL refused the statement with an `ERROR` (constraint,
    /// statement timeout, lock failure, ...). Every statement here runs in its
    /// own implicit transaction, so a refused statement changed nothing.
    #[error("PostgreSQL refused the statement: {0}")]
    Refused(#[source] postgres::Error),
    /// The connection failed, the backend was terminated (`FATAL`), or a
    /// reply could not be read, while the statement was in flight: it may or
    /// may not have committed. Open a new
    /// store; an owner re-acquires its shard and reloads it.
    #[error("the connection failed mid-statement; it may or may not have committed: {0}")]
    InDoubt(#[source] postgres::Error),
}

impl From<postgres::Error> for QueryError {
    fn from(e: postgres::Error) -> Self {
        // Only an ERROR reported by the server proves that the statement did
        // not commit (an implicit transaction aborts as a whole). Anything
        // else may have come after the commit: I/O errors, a closed
        // connection, a reply we could not parse, and FATAL/PANIC reports
        // (the backend was terminated, e.g. pg_terminate_backend or a server
        // shutdown, which can happen after the commit record was written).
        use postgres::error::Severity;
        let refused = e
            .as_db_error()
            .is_some_and(|db| match db.parsed_severity() {
                Some(severity) => !matches!(severity, Severity::Fatal | Severity::Panic),
                // Servers before 9.6 send only the localised severity.
                None => !matches!(db.severity(), "FATAL" | "PANIC"),
            });
        if refused {
            Self::Refused(e)
        } else {
            Self::InDoubt(e)
        }
    }
}

/// Why [`PgStore::open`](super::PgStore::open) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration is invalid (DSN syntax, schema name, shard count,
    /// timeouts); the message names what is wrong.
    #[error("invalid PostgreSQL configuration: {0}")]
    InvalidConfig(String),
    /// The server could not be reached or refused the connection (wrong
    /// host/port, authentication, connect timeout).
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] postgres::Error),
    /// The database holds a schema written by a newer duewheel. Upgrade this
    /// binary; it will not touch tables it does not understand.
    #[error(
        "the duewheel schema in the database is version {found}, newer than this build supports ({supported})"
    )]
    SchemaTooNew {
        /// Version recorded in `duewheel_schema`.
        found: i32,
        /// The newest version this build knows.
        supported: i32,
    },
    /// The database was set up with a different number of shards. Every node
    /// must use the same shard map, or ids would be routed to different
    /// shards.
    #[error("the database has {found} shards but this store is configured for {configured}")]
    ShardCountMismatch {
        /// Shards recorded in `duewheel_schema`.
        found: u32,
        /// Shards in the [`StoreConfig`](super::StoreConfig).
        configured: u32,
    },
    /// Creating, migrating or checking the schema (or preparing the
    /// statements) failed.
    #[error("cannot set up the duewheel schema: {0}")]
    Schema(#[source] QueryError),
}

/// Why a lease operation ([`PgStore::acquire`](super::PgStore::acquire),
/// [`renew`](super::PgStore::renew), [`release`](super::PgStore::release))
/// failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// The shard is outside the store's shard map.
    #[error("shard {shard} does not exist (the map has {shards} shards)")]
    UnknownShard {
        /// The shard asked for.
        shard: u32,
        /// Shards in the map.
        shards: u32,
    },
    /// An argument is out of range; the message names it.
    #[error("invalid lease argument: {0}")]
    Invalid(&'static str),
    /// The statement failed.
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// The shard's epoch is no longer the caller's: another owner took it (or the
/// caller released it). The write took no effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "shard {shard}: epoch {epoch} is stale (the shard is at epoch {current}); ownership lost, stop the shard"
)]
pub struct Fenced {
    /// The shard written to.
    pub shard: u32,
    /// The epoch the caller wrote with.
    pub epoch: u64,
    /// The shard's epoch in the database when the write was refused.
    pub current: u64,
}

/// Why [`PgStore::insert`](super::PgStore::insert) or
/// [`insert_unfenced`](super::PgStore::insert_unfenced) wrote nothing.
/// The batch was borrowed and is still the caller's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InsertError {
    /// The epoch is stale (only from the fenced `insert`).
    #[error(transparent)]
    Fenced(#[from] Fenced),
    /// The shard is outside the store's shard map.
    #[error("shard {shard} does not exist (the map has {shards} shards)")]
    UnknownShard {
        /// The shard asked for.
        shard: u32,
        /// Shards in the map.
        shards: u32,
    },
    /// A timer in the batch is invalid (deadline beyond `i64::MAX`
    /// milliseconds, payload too large, id twice in the batch).
    #[error("timer {id}: {reason}")]
    InvalidTimer {
        /// The timer's id.
        id: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// More timers than [`MAX_BATCH`](super::MAX_BATCH) in one call.
    #[error("{len} timers in one batch; at most {max}")]
    BatchTooLarge {
        /// Timers in the refused batch.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The statement failed.
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// Why [`PgStore::claim_due`](super::PgStore::claim_due) claimed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// The epoch is stale: nothing was claimed.
    #[error(transparent)]
    Fenced(#[from] Fenced),
    /// The shard is outside the store's shard map.
    #[error("shard {shard} does not exist (the map has {shards} shards)")]
    UnknownShard {
        /// The shard asked for.
        shard: u32,
        /// Shards in the map.
        shards: u32,
    },
    /// An argument is out of range; the message names it.
    #[error("invalid claim argument: {0}")]
    Invalid(&'static str),
    /// A returned row breaks the schema's invariants.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The statement failed.
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// Why [`PgStore::ack`](super::PgStore::ack) deleted nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The epoch is stale: nothing was deleted; the new owner redelivers.
    #[error(transparent)]
    Fenced(#[from] Fenced),
    /// The shard is outside the store's shard map.
    #[error("shard {shard} does not exist (the map has {shards} shards)")]
    UnknownShard {
        /// The shard asked for.
        shard: u32,
        /// Shards in the map.
        shards: u32,
    },
    /// More ids than [`MAX_BATCH`](super::MAX_BATCH) in one call.
    #[error("{len} ids in one ack; at most {max}")]
    BatchTooLarge {
        /// Ids in the refused ack.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The statement failed.
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// Why [`PgStore::cancel`](super::PgStore::cancel) could not decide.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CancelError {
    /// The shard is outside the store's shard map.
    #[error("shard {shard} does not exist (the map has {shards} shards)")]
    UnknownShard {
        /// The shard asked for.
        shard: u32,
        /// Shards in the map.
        shards: u32,
    },
    /// A returned row breaks the schema's invariants.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The statement failed. If it is in doubt the timer may be cancelled.
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// Why [`PgStore::load`](super::PgStore::load) (or one of the rows it
/// streams) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The shard is outside the store's shard map.
    #[error("shard {shard} does not exist (the map has {shards} shards)")]
    UnknownShard {
        /// The shard asked for.
        shard: u32,
        /// Shards in the map.
        shards: u32,
    },
    /// `from_ms > to_ms`, or a bound beyond `i64::MAX`.
    #[error("invalid load range {from_ms}..{to_ms}")]
    InvalidRange {
        /// Lower bound asked for.
        from_ms: u64,
        /// Upper bound asked for.
        to_ms: u64,
    },
    /// A row breaks the schema's invariants.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The statement (or reading its rows) failed.
    #[error(transparent)]
    Query(#[from] QueryError),
}
