//! What a cluster node's calls can fail with. Every failure hands the
//! payload back and says whether the timer may be stored.

use crate::error::OpenError;

/// Why [`NodeConfig::start`](super::NodeConfig::start) failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A setting is out of range; the message names it.
    #[error("invalid node configuration: {0}")]
    Config(String),
    /// The database could not be opened: bad DSN, unreachable, refused,
    /// a schema newer than this build, another shard count.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The in-process engine could not start.
    #[error("the engine could not start: {0}")]
    Engine(#[from] duewheel::BuildError),
    /// A node thread could not be started.
    #[error("could not start a node thread: {0}")]
    Spawn(String),
}

impl NodeError {
    /// `true` if the database is to blame (unreachable, refused, wrong
    /// schema), not the configuration.
    pub fn is_database(&self) -> bool {
        matches!(
            self,
            Self::Open(
                OpenError::Connect(_)
                    | OpenError::Schema(_)
                    | OpenError::SchemaTooNew { .. }
                    | OpenError::ShardCountMismatch { .. }
            )
        )
    }
}

/// Why a schedule through a node was not accepted. Each variant hands the
/// payload back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError<P> {
    /// A timer with this id is stored already (pending or being
    /// delivered) with another deadline or payload. (The same id, deadline
    /// and payload again is `Ok`: scheduling is idempotent, so a retry
    /// after `InDoubt` is safe.)
    #[error("a timer with this id is already scheduled")]
    AlreadyScheduled(P),
    /// The request is invalid (deadline beyond `i64::MAX` ms, payload too
    /// large); the reason says which. Nothing was stored.
    #[error("invalid timer: {reason}")]
    Invalid {
        /// What was wrong.
        reason: &'static str,
        /// The payload, handed back.
        payload: P,
    },
    /// The database was unreachable or refused the write: the timer is
    /// definitely **not** stored.
    #[error("the database is unavailable; the timer is not stored: {reason}")]
    Unavailable {
        /// What failed.
        reason: String,
        /// The payload, handed back.
        payload: P,
    },
    /// The connection failed while the commit was in flight and the node
    /// could not find out within its operation timeout whether it landed:
    /// the timer **may** be stored. Scheduling the same id, deadline and
    /// payload again is idempotent: it answers `Ok` if the row is there.
    #[error("the commit is in doubt: the timer may or may not be stored; retry the same schedule")]
    InDoubt(P),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown(P),
}

impl<P> ScheduleError<P> {
    /// The payload the call handed back.
    pub fn into_payload(self) -> P {
        match self {
            Self::AlreadyScheduled(p)
            | Self::Invalid { payload: p, .. }
            | Self::Unavailable { payload: p, .. }
            | Self::InDoubt(p)
            | Self::ShuttingDown(p) => p,
        }
    }
}

/// Why a cancel through a node did not get an answer.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CancelError {
    /// The database was unreachable or refused the delete: nothing changed.
    #[error("the database is unavailable; nothing was cancelled: {0}")]
    Unavailable(String),
    /// The connection failed mid-statement: the timer may or may not be
    /// cancelled. A second cancel answers `NotFound` if the first one won.
    #[error("the cancel is in doubt: it may or may not have taken effect")]
    InDoubt,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The cancel won, but the stored payload does not decode as `P`.
    #[error("the cancel won, but the stored payload does not decode: {0}")]
    Corrupt(String),
}
