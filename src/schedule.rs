//! [`Schedule`]: the one scheduling interface, so code that places and
//! cancels payment deadlines does not care whether they live in one
//! process's [`Engine`](crate::Engine) or in a cluster of nodes sharing a
//! database (`duewheel-cluster`'s `NodeScheduler` implements it too).
//!
//! Invariant every implementation keeps: a refused schedule hands its
//! payload back ([`ScheduleError::into_payload`]), and cancel and expiry of
//! one id are decided atomically, so [`Cancel::Cancelled`] means the timer
//! will not fire and [`Cancel::AlreadyFired`] means it did (or is firing).
//! The answers are [`ScheduleError`], [`Cancel`], [`CancelError`] and
//! [`RescheduleError`] everywhere: one type each, whatever the backend.

use crate::clock::Deadline;
use crate::engine::Scheduler;
use crate::error::{Cancel, CancelError, RescheduleError, ScheduleError};
use std::hash::Hash;

/// Schedules, cancels and reschedules timers by id, `Clone + Send + Sync`
/// handles of which are shared by every thread that takes orders.
///
/// The inherent methods of [`Scheduler`] have the same names and
/// signatures (they are what this trait calls); use the trait to write
/// code generic over the backend:
///
/// ```
/// use duewheel::{Cancel, Engine, ManualClock, Schedule, ScheduleError};
/// use std::time::Duration;
///
/// /// Checkout: the order is cancelled unless paid within 30 minutes.
/// fn checkout(timers: &impl Schedule<u64, String>, order: u64) -> Result<(), ScheduleError<String>> {
///     timers.schedule(order, Duration::from_secs(30 * 60), format!("order {order}"))
/// }
///
/// /// Payment: whoever wins, the answer says what to do.
/// fn paid(timers: &impl Schedule<u64, String>, order: u64) -> &'static str {
///     match timers.cancel(&order) {
///         Ok(Cancel::Cancelled(_)) => "keep the payment",
///         Ok(Cancel::AlreadyFired) => "refund: the order was cancelled",
///         Ok(Cancel::NotFound) | Err(_) => "look the order up",
///     }
/// }
///
/// let engine = Engine::<u64, String>::builder().clock(ManualClock::new(0)).build()?;
/// let timers = engine.scheduler();
/// checkout(&timers, 1)?;
/// assert_eq!(paid(&timers, 1), "keep the payment");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// With feature `tokio`, each call has an `_async` form. The engine's
/// awaits the durable commit without blocking a thread; the provided
/// default (what a backend without an async path uses, the cluster node
/// among them) makes the blocking call when the future is created, so call
/// it from a blocking-tolerant context (`spawn_blocking`) there.
pub trait Schedule<K, P>: Send + Sync {
    /// Schedules `payload` for `id`, due at `deadline` (an absolute UTC time
    /// or a delay from now; see [`Deadline`]). `Ok` once the timer is
    /// accepted (in durable or cluster mode: once it is durable).
    ///
    /// # Errors
    ///
    /// A [`ScheduleError`] carrying the payload back: the id is taken, the
    /// deadline out of reach, the backend full, failed or shutting down.
    fn schedule(
        &self,
        id: K,
        deadline: impl Into<Deadline>,
        payload: P,
    ) -> Result<(), ScheduleError<P>>;

    /// Cancels `id`'s timer: exactly one of cancel and expiry wins, and the
    /// [`Cancel`] says which.
    ///
    /// # Errors
    ///
    /// A [`CancelError`] when the backend could not decide (shutting down,
    /// failed; a node's database unreachable or the outcome in doubt).
    fn cancel(&self, id: &K) -> Result<Cancel<P>, CancelError>;

    /// Moves `id`'s deadline, earlier or later.
    ///
    /// # Errors
    ///
    /// A [`RescheduleError`]: no such pending timer, already fired, out of
    /// reach, or (a cluster node) its database unavailable or in doubt.
    fn reschedule(&self, id: &K, deadline: impl Into<Deadline>) -> Result<(), RescheduleError>;

    /// [`schedule`](Self::schedule) for async code.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    fn schedule_async(
        &self,
        id: K,
        deadline: impl Into<Deadline> + Send,
        payload: P,
    ) -> impl Future<Output = Result<(), ScheduleError<P>>> + Send
    where
        P: Send,
    {
        std::future::ready(self.schedule(id, deadline, payload))
    }

    /// [`cancel`](Self::cancel) for async code.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    fn cancel_async(&self, id: &K) -> impl Future<Output = Result<Cancel<P>, CancelError>> + Send
    where
        P: Send,
    {
        std::future::ready(self.cancel(id))
    }

    /// [`reschedule`](Self::reschedule) for async code.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    fn reschedule_async(
        &self,
        id: &K,
        deadline: impl Into<Deadline> + Send,
    ) -> impl Future<Output = Result<(), RescheduleError>> + Send {
        std::future::ready(self.reschedule(id, deadline))
    }
}

impl<K, P> Schedule<K, P> for Scheduler<K, P>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    P: Clone + Send + Sync + 'static,
{
    fn schedule(
        &self,
        id: K,
        deadline: impl Into<Deadline>,
        payload: P,
    ) -> Result<(), ScheduleError<P>> {
        Scheduler::schedule(self, id, deadline, payload)
    }

    fn cancel(&self, id: &K) -> Result<Cancel<P>, CancelError> {
        Scheduler::cancel(self, id)
    }

    fn reschedule(&self, id: &K, deadline: impl Into<Deadline>) -> Result<(), RescheduleError> {
        Scheduler::reschedule(self, id, deadline)
    }

    #[cfg(feature = "tokio")]
    fn schedule_async(
        &self,
        id: K,
        deadline: impl Into<Deadline> + Send,
        payload: P,
    ) -> impl Future<Output = Result<(), ScheduleError<P>>> + Send
    where
        P: Send,
    {
        Scheduler::schedule_async(self, id, deadline, payload)
    }

    #[cfg(feature = "tokio")]
    fn cancel_async(&self, id: &K) -> impl Future<Output = Result<Cancel<P>, CancelError>> + Send
    where
        P: Send,
    {
        Scheduler::cancel_async(self, id)
    }

    #[cfg(feature = "tokio")]
    fn reschedule_async(
        &self,
        id: &K,
        deadline: impl Into<Deadline> + Send,
    ) -> impl Future<Output = Result<(), RescheduleError>> + Send {
        Scheduler::reschedule_async(self, id, deadline)
    }
}
