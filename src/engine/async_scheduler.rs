//! Scheduling from async code (feature `tokio`).
//!
//! The work under a shard lock is the same O(1) step as the blocking calls
//! (no I/O, no waiting for another thread), so it runs inline. What differs
//! is the wait for durability: in durable mode the blocking calls park the
//! thread until the group commit that covers their record is fsynced; here
//! that wait is an `.await` on the log's commit signal
//! ([`Wal::wait_async`](crate::wal::Wal::wait_async)), so a runtime worker
//! keeps running other tasks while the fsync is under way. In memory mode
//! the futures complete on their first poll.
//!
//! Dropping one of these futures before it completes does not undo the
//! change: it was accepted under the lock, only its durability is then
//! unconfirmed, as for a thread that dies inside the blocking call.

use super::Scheduler;
use crate::clock::Deadline;
use crate::error::{Cancel, CancelError, RescheduleError, ScheduleError, StorageError};
use std::hash::Hash;
use std::time::Duration;

#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl<K, P> Scheduler<K, P>
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    /// Waits until a journaled change is durable, without blocking.
    pub(super) async fn durable_async(&self, seq: Option<u64>) -> Result<(), StorageError> {
        match (&self.inner.journal, seq) {
            (Some(journal), Some(seq)) => journal.wait_async(seq).await,
            (Some(_), None) => Err(StorageError),
            (None, _) => Ok(()),
        }
    }

    /// [`schedule`](Self::schedule) for async code: in durable mode the
    /// wait for the commit is an `.await`, not a blocked thread.
    pub async fn schedule_async(
        &self,
        id: K,
        deadline: impl Into<Deadline>,
        payload: P,
    ) -> Result<(), ScheduleError<P>> {
        self.schedule_with_reminders_async(id, deadline, &[], payload)
            .await
    }

    /// [`schedule_with_reminders`](Self::schedule_with_reminders) for async
    /// code.
    pub async fn schedule_with_reminders_async(
        &self,
        id: K,
        deadline: impl Into<Deadline>,
        reminders_before: &[Duration],
        payload: P,
    ) -> Result<(), ScheduleError<P>> {
        let deadline = deadline.into();
        let (seq, backup) = self.accept_schedule(id, deadline, reminders_before, payload)?;
        Self::schedule_outcome(self.durable_async(seq).await, backup)
    }

    /// [`cancel`](Self::cancel) for async code.
    pub async fn cancel_async(&self, id: &K) -> Result<Cancel<P>, CancelError> {
        let (hash, shard) = self.shard(id);
        let accepted = shard.lock().cancel(hash, id)?;
        if accepted.value.is_cancelled() {
            self.durable_async(accepted.seq)
                .await
                .map_err(|_| CancelError::Storage)?;
        }
        Ok(accepted.value)
    }

    /// [`reschedule`](Self::reschedule) for async code.
    pub async fn reschedule_async(
        &self,
        id: &K,
        deadline: impl Into<Deadline>,
    ) -> Result<(), RescheduleError> {
        let seq = self.accept_reschedule(id, deadline.into())?;
        self.durable_async(seq)
            .await
            .map_err(|_| RescheduleError::Storage)
    }
}
