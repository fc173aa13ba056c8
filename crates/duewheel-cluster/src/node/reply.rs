//! How a writer answers a caller: over a channel the caller blocks on, or
//! into a slot whose future an async caller awaits, so that no thread
//! waits for the commit on an async caller's behalf (any executor: the
//! future is woken by the writer thread's answer).
//!
//! Invariant: a caller is answered at most once, and a reply dropped
//! unanswered (the writer stopped) ends the wait with `None`, which the
//! caller reports as `ShuttingDown`; it never hangs.

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// The writer's end: where one answer goes.
pub(super) enum Reply<T> {
    /// A blocking caller waits on the channel's receiver.
    Blocking(Sender<T>),
    /// An async caller awaits the slot's [`Answer`].
    Async(Arc<Slot<T>>),
}

/// One answer's place, shared by a [`Reply`] and its [`Answer`].
pub(super) struct Slot<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    value: Option<T>,
    /// No answer will come after this one (answered, or the reply dropped).
    closed: bool,
    waker: Option<Waker>,
}

impl<T> Reply<T> {
    /// Answers the caller; the value back if it is gone (or answered).
    pub(super) fn send(&self, value: T) -> Result<(), T> {
        match self {
            Self::Blocking(tx) => tx.send(value).map_err(|e| e.into_inner()),
            Self::Async(slot) => {
                let waker = {
                    let mut state = slot.state.lock();
                    if state.closed {
                        return Err(value);
                    }
                    state.value = Some(value);
                    state.closed = true;
                    state.waker.take()
                };
                if let Some(waker) = waker {
                    waker.wake();
                }
                Ok(())
            }
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Self::Async(slot) = self {
            let waker = {
                let mut state = slot.state.lock();
                state.closed = true;
                state.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl<T> From<Sender<T>> for Reply<T> {
    fn from(tx: Sender<T>) -> Self {
        Self::Blocking(tx)
    }
}

/// The async caller's end: resolves to the answer, or `None` if the reply
/// was dropped unanswered.
pub(super) struct Answer<T>(Arc<Slot<T>>);

impl<T> Future for Answer<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.0.state.lock();
        if let Some(value) = state.value.take() {
            return Poll::Ready(Some(value));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        // Replaced each poll: the task may have moved.
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A reply for an async caller and the future it awaits.
pub(super) fn pair<T>() -> (Reply<T>, Answer<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State {
            value: None,
            closed: false,
            waker: None,
        }),
    });
    (Reply::Async(slot.clone()), Answer(slot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll<T>(answer: &mut Answer<T>, count: &Arc<Count>) -> Poll<Option<T>> {
        let waker = Waker::from(count.clone());
        Pin::new(answer).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn an_answer_wakes_the_waiting_future_and_resolves_it() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let (reply, mut answer) = pair();
        assert!(poll(&mut answer, &count).is_pending());
        reply.send(7).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut answer, &count), Poll::Ready(Some(7)));
        // A second answer is refused, its value handed back.
        assert_eq!(reply.send(8), Err(8));
    }

    #[test]
    fn a_reply_dropped_unanswered_resolves_to_none_and_never_hangs() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let (reply, mut answer) = pair::<u32>();
        assert!(poll(&mut answer, &count).is_pending());
        drop(reply);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut answer, &count), Poll::Ready(None));
    }
}
