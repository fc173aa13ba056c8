//! The running engine: its threads, checkpoints and shutdown.

use super::dir::OwnedDir;
use super::{
    Builder, Consumer, Event, Inner, PendingTimer, Recovered, Scheduler, Stats, SubscribeError,
};
use crate::error::StorageError;
use crate::trace;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The timer engine: owns the dispatcher thread. Schedule and cancel through
/// its [`Scheduler`] handles; receive through [`Consumer`]s.
///
/// ```
/// use duewheel::{Cancel, Engine, EventKind, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(1_700_000_000_000);
/// let engine = Engine::<u64, String>::builder().clock(clock.clone()).build()?;
/// let mut orders = engine.subscribe("order-cancel")?;
/// let payments = engine.scheduler();
///
/// // Two unpaid orders with a 30-minute window and a reminder 5 minutes before.
/// let window = Duration::from_secs(30 * 60);
/// let remind = [Duration::from_secs(5 * 60)];
/// payments.schedule_with_reminders(1, window, &remind, "order 1".into()).unwrap();
/// payments.schedule_with_reminders(2, window, &remind, "order 2".into()).unwrap();
///
/// // Order 1 is paid; order 2 is not.
/// assert!(matches!(payments.cancel(&1)?, Cancel::Cancelled(_)));
/// clock.advance(window);
/// let reminder = orders.recv_timeout(Duration::from_secs(5))?;
/// let expiry = orders.recv_timeout(Duration::from_secs(5))?;
/// assert_eq!((reminder.id, reminder.kind), (2, EventKind::Reminder(1)));
/// assert_eq!((expiry.id, expiry.kind), (2, EventKind::Expired));
///
/// // A payment arriving now learns that the expiry won.
/// assert!(matches!(payments.cancel(&2)?, Cancel::AlreadyFired));
/// let shutdown = engine.shutdown();
/// assert!(shutdown.pending.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Engine<K, P>
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    pub(super) scheduler: Scheduler<K, P>,
    pub(super) thread: Option<JoinHandle<()>>,
    pub(super) checkpointer: Option<JoinHandle<()>>,
    pub(super) recovered: Option<Recovered>,
    /// The data directory of `Builder::durable`, released at stop.
    pub(super) dir: Option<Arc<OwnedDir>>,
}

/// Writes a checkpoint every `every` until the engine stops.
pub(super) fn checkpoint_loop<K: Hash + Eq + Clone, P: Clone>(
    inner: &Inner<K, P>,
    every: Duration,
) {
    let mut last = Instant::now();
    while !inner.stopping.load(Ordering::SeqCst) {
        thread::park_timeout(every.saturating_sub(last.elapsed()));
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        if last.elapsed() >= every {
            // A failed checkpoint leaves the log intact; the next one retries.
            if inner.checkpoint().is_err() {
                trace::warning!("checkpoint failed; the log is intact and the next one retries");
            }
            last = Instant::now();
        }
    }
}

/// What [`Engine::shutdown`] hands back: nothing accepted is lost.
#[derive(Debug)]
#[must_use = "the timers it hands back are lost unless read (nothing accepted is lost)"]
#[non_exhaustive]
pub struct Shutdown<K, P> {
    /// Timers that were still pending, with their remaining reminders. Empty
    /// in durable mode: there they stay in the log and come back on the next
    /// open.
    pub pending: Vec<PendingTimer<K, P>>,
    /// Fired events that shutdown interrupted before they reached a group,
    /// with the group's name. Events already queued in a group stay there:
    /// its consumers can still receive them.
    pub undelivered: Vec<(String, Event<K, P>)>,
}

impl<K, P> Engine<K, P>
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    /// A builder with the defaults: 1 ms ticks, a shard per core, the system
    /// clock.
    pub fn builder() -> Builder<K, P> {
        Builder::new()
    }

    /// A handle to schedule and cancel with; `Clone + Send + Sync`.
    pub fn scheduler(&self) -> Scheduler<K, P> {
        self.scheduler.clone()
    }

    /// A consumer of group `group`, creating the group if needed. A group
    /// created now receives the events fired from now on.
    ///
    /// # Errors
    ///
    /// [`SubscribeError::UnknownGroup`] when acknowledgements are on (they
    /// fix the groups at build, see [`Builder::group`]) and `group` was not
    /// declared; [`SubscribeError::TooManyGroups`] for a 65th group.
    pub fn subscribe(&self, group: &str) -> Result<Consumer<K, P>, SubscribeError> {
        self.scheduler.subscribe(group)
    }

    /// A snapshot of the engine's statistics.
    pub fn stats(&self) -> Stats {
        self.scheduler.stats()
    }

    /// What durable mode recovered at build; `None` in memory.
    pub fn recovered(&self) -> Option<&Recovered> {
        self.recovered.as_ref()
    }

    /// Writes a checkpoint now (durable mode; a no-op in memory).
    pub fn checkpoint(&self) -> Result<(), StorageError> {
        self.scheduler.inner.checkpoint()
    }

    /// Stops the dispatcher and hands back every timer still pending and
    /// every fired event that had not reached all groups. In durable mode
    /// the data directory is released when this returns, even while
    /// [`Scheduler`] clones live. Schedules, cancels and reschedules after
    /// this get `ShuttingDown` (a schedule with its payload); consumers can still drain
    /// what their groups hold, then see the channel disconnect.
    pub fn shutdown(mut self) -> Shutdown<K, P> {
        self.stop()
    }

    fn stop(&mut self) -> Shutdown<K, P> {
        let inner = &self.scheduler.inner;
        inner.stopping.store(true, Ordering::SeqCst);
        inner.unpark();
        if let Some(thread) = self.thread.take() {
            // The dispatcher never panics on input; if it did, the timers are
            // still in the shards and are handed back below.
            let _ = thread.join();
        }
        if let Some(checkpointer) = self.checkpointer.take() {
            checkpointer.thread().unpark();
            let _ = checkpointer.join();
        }
        if let Some(store) = &inner.journal {
            // Refuse changes first, so the final checkpoint is the state.
            for shard in inner.shards() {
                shard.lock().close_for_writes();
            }
            if !store.failed() {
                let _ = inner.checkpoint();
            }
            let _ = store.close();
        }
        if let Some(dir) = &self.dir {
            // The log is closed: the directory is free for the next engine,
            // even while clones of the scheduler live on.
            dir.release();
        }
        let mut pending = Vec::new();
        for shard in inner.shards() {
            shard.lock().close(&mut pending);
        }
        if inner.journal.is_some() {
            // Durable: they are in the log, not the caller's to keep.
            pending.clear();
        }
        inner.registry.close();
        let undelivered: Vec<_> = std::mem::take(&mut *inner.undelivered.lock())
            .into_iter()
            .map(|(group, event)| (group.to_string(), event))
            .collect();
        trace::info!(
            pending = pending.len(),
            undelivered = undelivered.len(),
            "engine stopped"
        );
        Shutdown {
            pending,
            undelivered,
        }
    }
}

impl<K, P> Drop for Engine<K, P>
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    /// Dropping without [`shutdown`](Engine::shutdown) stops the dispatcher
    /// and refuses further schedules; pending timers are dropped with it.
    fn drop(&mut self) {
        if self.thread.is_some() {
            drop(self.stop());
        }
    }
}

impl<K, P> std::fmt::Debug for Engine<K, P>
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}
