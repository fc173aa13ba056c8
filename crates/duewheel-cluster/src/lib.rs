//! Scale-out for [`duewheel`]: nodes share the deadline space through
//! PostgreSQL, shard ownership fenced by epoch.
//!
//! - [`Node`] / [`NodeConfig`]: a cluster node, the engine running on the
//!   shared table (its wheel, dispatcher and consumers unchanged): leases,
//!   balancing, takeover, the fenced claim before every delivery. Run one
//!   per process with `duewheel node` (see [SCALE_OUT.md]).
//! - [`ShardMap`]: ids → a fixed set of logical shards, by a stable hash.
//! - [`PgStore::acquire`] / [`renew`](PgStore::renew) /
//!   [`release`](PgStore::release): a shard's lease, judged by the database's
//!   clock, and its **epoch**, bumped by every acquire.
//! - [`PgStore`]'s timer statements: insert, cancel, claim, ack, load.
//!
//! # Which writes are fenced, and why
//!
//! A write is fenced (carries the owner's epoch and is refused with
//! [`Fenced`] once the epoch moved on) when its correctness depends on
//! *being the owner*:
//!
//! - [`claim_due`](PgStore::claim_due): firing is the owner's job. A stale
//!   owner that claimed after a takeover would fire timers the new owner also
//!   fires from its load, and would mark rows claimed behind its back.
//! - [`ack`](PgStore::ack): deleting a claimed row ends its delivery. After a
//!   takeover the new owner redelivers what it loaded; a stale owner's ack
//!   racing that is refused, so the row stays until the *current* owner's
//!   consumer acknowledges it (at-least-once, never zero).
//! - [`insert`](PgStore::insert): for an owner that relies on the next
//!   owner seeing the row in its takeover [`load`](PgStore::load). The fence
//!   guarantees exactly that: an acknowledged insert committed before the
//!   epoch bump, so the load (which starts after it) contains it. ([`Node`]
//!   does not rely on it: its owners sweep the table, so its inserts are
//!   unfenced; see [SCALE_OUT.md].)
//!
//! Two writes need no fence, because the row itself decides them whoever
//! owns the shard:
//!
//! - [`cancel`](PgStore::cancel) deletes only a *pending* row, and a claim
//!   updates only a pending row; PostgreSQL's row lock lets exactly one of
//!   them win, and a cancel that wins leaves nothing to fire: an owner whose
//!   wheel still holds the id finds no row to claim. Any node may cancel.
//! - [`insert_unfenced`](PgStore::insert_unfenced) is for a node that does
//!   *not* own the shard (a schedule forwarded to the database). Its row is
//!   durable at `Ok`; it does not depend on anyone's ownership, only on being
//!   found. The owner claims from the table (`claim_due` selects by deadline,
//!   not from its wheel), so the row fires on the owner's next `claim_due`
//!   past its deadline; the node must therefore poll `claim_due` (or be
//!   woken by LISTEN/NOTIFY) and not rely on its wheel alone.
//!
//! # Representation
//!
//! - Timer ids are `u64`, stored as `bigint` bit-for-bit (`id as i64`): ids
//!   above `i64::MAX` look negative in SQL but round-trip exactly. They are
//!   routed with [`ShardMap::shard_of_id`] (the id's `Codec` bytes).
//! - Payloads are plain bytes (`bytea`): the store does not need to know the
//!   payload type, and the node encodes it with the crate's
//!   [`Codec`](duewheel::Codec) as the write-ahead log does.
//! - Deadlines are absolute UTC milliseconds in `bigint`, at most `i64::MAX`.
//!
//! Connections are plain (`NoTls`); use a Unix socket or a trusted network.
//!
//! [SCALE_OUT.md]: https://github.com/duewheel/duewheel/blob/main/docs/SCALE_OUT.md

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod config;
mod error;
mod lease;
mod node;
pub mod schema;
mod shard_map;
mod store;
mod txn;
// Not every level has a call site here.
#[allow(unused_macros)]
mod trace;

pub use config::StoreConfig;
pub use error::{
    AckError, CancelError, ClaimError, Fenced, InsertError, LeaseError, LoadError, OpenError,
    QueryError,
};
pub use lease::{Acquire, Lease, MAX_LEASE_TTL, MAX_OWNER_BYTES};
pub use node::{Node, NodeConfig, NodeError, NodeScheduler, NodeStats};
pub use node::{SubscribeTxError, TxConsumeError, TxConsumer};
pub use schema::SCHEMA_VERSION;
pub use shard_map::{DEFAULT_SHARDS, InvalidShardCount, MAX_SHARDS, ShardMap};
pub use store::{
    Cancel, Inserted, Load, MAX_BATCH, MAX_PAYLOAD_BYTES, NewTimer, PgStore, RowState, StoredTimer,
};
pub use txn::{TxCancelError, TxScheduleError, TxTimers};
