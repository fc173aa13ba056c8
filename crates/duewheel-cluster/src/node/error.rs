//! What starting a cluster node can fail with. Its calls answer with the
//! core's types ([`duewheel::ScheduleError`], [`duewheel::CancelError`]),
//! the same as the engine's, through [`duewheel::Schedule`].

use crate::error::OpenError;

/// Why [`NodeConfig::start`](super::NodeConfig::start) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// Another live process runs with this node id: its heartbeat moved
    /// within the last moments (see SCALE_OUT.md, "Node ids"). Pick another
    /// id, or stop the other process; an id whose process died is free
    /// again after a second or so, one that shut down at once.
    #[error("node id {node_id:?} is in use by another live process")]
    NodeIdInUse {
        /// The id asked for.
        node_id: String,
    },
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
