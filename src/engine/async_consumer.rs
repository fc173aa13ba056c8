//! Async consumers (feature `tokio`): a [`Consumer`] is a
//! [`Stream`](futures_core::Stream) of events, and
//! [`Consumer::recv_async`] awaits the next one, without a thread per
//! consumer.
//!
//! crossbeam-channel has no async receive, and a `spawn_blocking` per
//! receive would hold a thread each. Instead every group has a
//! `tokio::sync::Notify`: the dispatcher signals it (`notify_waiters`) after
//! each batch it sends, a dropped consumer after it hands events back, and
//! the registry at shutdown. An async receive is `try_recv` in a loop, with
//! a wait on that signal between tries.
//!
//! Invariant: no lost wake-up. The wait is registered (`enable`) *before*
//! the `try_recv` that decides to sleep, and `notify_waiters` reaches every
//! waiter registered before it is called, so a batch sent after that last
//! try wakes the waiter and a batch sent before it is found by it.
//! Backpressure is unchanged: a slow `.await` between receives leaves the
//! events in the bounded channel, and when it is full the dispatcher waits.

use super::consumer::Consumer;
use super::event::Event;
use crate::error::TryRecvError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl<K, P> Consumer<K, P> {
    /// Waits for the next event without blocking the runtime's thread;
    /// `None` once the engine shut down and every queued event was
    /// received. Cancel-safe: dropping the future loses no event.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use duewheel::{Engine, EventKind, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new(0);
    /// let engine = Engine::<u64, &str>::builder().clock(clock.clone()).build()?;
    /// let mut orders = engine.subscribe("orders")?;
    /// engine.scheduler().schedule_async(7, Duration::from_secs(60), "order 7").await?;
    ///
    /// clock.advance(Duration::from_secs(60));
    /// let event = orders.recv_async().await.expect("the engine is running");
    /// assert_eq!((event.id, event.kind), (7, EventKind::Expired));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv_async(&mut self) -> Option<Event<K, P>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next event: what [`recv_async`](Self::recv_async) and
    /// the [`Stream`](futures_core::Stream) implementation are built on.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event<K, P>>> {
        loop {
            match self.try_recv() {
                Ok(event) => return Poll::Ready(Some(event)),
                Err(TryRecvError::Disconnected) => return Poll::Ready(None),
                Err(TryRecvError::Empty) => {}
            }
            match self.waiting.as_mut() {
                // Registered before the `try_recv` above (see the module
                // invariant), so sleeping on it cannot miss a batch.
                Some(waiting) => {
                    if self.shared.closed.load(Ordering::SeqCst) {
                        // Shut down and drained: nothing more will arrive.
                        self.waiting = None;
                        return Poll::Ready(None);
                    }
                    ready!(waiting.as_mut().poll(cx));
                    self.waiting = None;
                }
                None => {
                    let mut waiting = Box::pin(self.shared.notify.clone().notified_owned());
                    waiting.as_mut().enable();
                    self.waiting = Some(waiting);
                }
            }
        }
    }
}

/// Nothing in a consumer is pinned in place: the wake-up it may be waiting
/// on is boxed.
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl<K, P> Unpin for Consumer<K, P> {}

/// The events of the consumer's group, in the order the group receives
/// them; ends after shutdown once every queued event was received.
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl<K, P> futures_core::Stream for Consumer<K, P> {
    type Item = Event<K, P>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl<K, P> Consumer<K, P>
where
    K: std::hash::Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    /// [`ack`](Self::ack) for async code: in durable mode the wait for the
    /// log is an `.await`. The ack itself is taken at the call; the future
    /// only waits for it to be durable, and owns what it needs (`'static`),
    /// so it can be spawned.
    pub fn ack_async(
        &self,
        event: &Event<K, P>,
    ) -> impl Future<Output = Result<(), crate::AckError>> + Send + 'static {
        let batch = self.ack_batch_async(std::slice::from_ref(event));
        async move { batch.await.pop().unwrap_or(Ok(())) }
    }

    /// [`ack_batch`](Self::ack_batch) for async code: every ack is taken at
    /// the call, and the future makes one durable wait for the batch.
    pub fn ack_batch_async(
        &self,
        events: &[Event<K, P>],
    ) -> impl Future<Output = Vec<Result<(), crate::AckError>>> + Send + 'static {
        let work = self.acker.as_ref().map(|acker| {
            let scheduler = acker.scheduler.clone();
            let results = scheduler.accept_acks(events, acker.group);
            (scheduler, results)
        });
        let refused = || Self::refused(events);
        let refused = work.is_none().then(refused);
        async move {
            let Some((scheduler, mut results)) = work else {
                return refused.unwrap_or_default();
            };
            let outcome = match results.last_seq {
                Some(seq) => scheduler.durable_async(Some(seq)).await,
                None => Ok(()),
            };
            scheduler.finish_acks(&mut results, outcome);
            results.each
        }
    }

    /// [`snooze`](Self::snooze) for async code: in durable mode the wait
    /// for the log is an `.await`. The snooze is taken at the call.
    pub fn snooze_async(
        &self,
        event: &Event<K, P>,
        delay: std::time::Duration,
    ) -> impl Future<Output = Result<(), crate::SnoozeError>> + Send + 'static {
        let work = match (&self.acker, event.kind) {
            (Some(acker), super::EventKind::Expired) => {
                let scheduler = acker.scheduler.clone();
                scheduler
                    .accept_snooze(event, delay)
                    .map(|seq| (scheduler, seq))
            }
            (_, super::EventKind::DeadLetter) => Err(crate::SnoozeError::DeadLettered),
            _ => Err(crate::SnoozeError::NotInFlight),
        };
        async move {
            let (scheduler, seq) = work?;
            scheduler
                .durable_async(seq)
                .await
                .map_err(|_| crate::SnoozeError::Storage)
        }
    }
}
