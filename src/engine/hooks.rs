//! What a store outside the engine adds to firing and to acks: the seam
//! cluster mode runs on (see `crate::cluster::node`).
//!
//! In memory and in durable mode the engine's shards decide alone whether a
//! timer fires. In cluster mode the shared table decides: a timer may be
//! delivered only once its row is *claimed* under the owner's epoch, so the
//! dispatcher hands every round to [`Hooks::admit`] before delivery, and a
//! timer acknowledged by every group is reported to [`Hooks::ended`] so the
//! store can delete its row. The wheel, the dispatcher and the consumer API
//! are the same in every mode.
//!
//! Invariant: an event reaches a consumer only if `admit` kept it; an id
//! `admit` drops is forgotten by its shard (it is not redelivered by the
//! engine; the store owns what happens to it next).

pub(crate) use super::shard::Fired;

/// A store's say in firing and acknowledgement (cluster mode).
pub(crate) trait Hooks<K, P>: Send + Sync {
    /// Keeps in `fired` only what may be delivered now, and may set each
    /// kept event's `attempt`. Pushes the id of each event it removes onto
    /// `dropped`. Runs on the dispatcher thread with no lock held; it may
    /// block on I/O, and must give up (dropping everything) once the engine
    /// stops.
    fn admit(&self, fired: &mut Vec<Fired<K, P>>, dropped: &mut Vec<K>);

    /// `id`'s delivery was acknowledged by every group: its timer ended.
    fn ended(&self, id: &K);
}
