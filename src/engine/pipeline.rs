//! Claims in flight: with [`Hooks`] whose [`pipeline`](Hooks::pipeline)
//! is above 1, the dispatcher hands each round's [`admit`](Hooks::admit) to
//! a claim thread and goes on firing the next round while that one waits on
//! its store, so up to `pipeline` admits run at once (issue #16: a claim
//! waits on a database round trip, the dispatcher waited for it).
//!
//! Invariants:
//! - Rounds are delivered in the order they were fired (a round waits for
//!   the ones before it), so events still reach the groups in deadline
//!   order.
//! - An id is in at most one admit at a time. A timer fired again while an
//!   earlier round holding it is still in admit (a reminder, then its
//!   expiry; or a redelivery after the ack timeout) is held back, and goes
//!   out with the first round fired after that admit returned: the engine
//!   forgets an id its admit dropped (see [`Hooks`]) before it delivers
//!   anything later of that id.
//! - Room is reserved for every round in flight: a round is handed to a
//!   claim thread only once every group has room for it and for the rounds
//!   before it, as the store claims nothing for a delivery that must wait.
//! - Nothing fired is lost: shutdown waits for every admit in flight, then
//!   hands over (or back) what they kept, like any round.

use super::Hooks;
use super::shard::Fired;
use crate::trace;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::thread::{self, Thread};

/// A round on a claim thread, and where its answer goes.
struct Job<K, P> {
    fired: Vec<Fired<K, P>>,
    /// `None` if the admit panicked.
    done: Sender<Option<Admitted<K, P>>>,
}

/// Where a round's admit answers (`None`: it panicked).
type Answer<K, P> = Receiver<Option<Admitted<K, P>>>;

/// A round's admit, done: what it kept, and what it dropped.
pub(super) struct Admitted<K, P> {
    pub(super) fired: Vec<Fired<K, P>>,
    pub(super) dropped: Vec<K>,
}

impl<K, P> Admitted<K, P> {
    /// A round the store neither kept nor dropped anything of.
    fn nothing() -> Self {
        Self {
            fired: Vec::new(),
            dropped: Vec::new(),
        }
    }
}

/// The dispatcher's side of the claim threads.
pub(super) struct Pipeline<K, P> {
    /// Admits that may run at once (at least 2).
    depth: usize,
    jobs: Sender<Job<K, P>>,
    /// Rounds handed out, oldest first, each with the events it held when
    /// handed out (for the room reserved, see [`held`](Self::held)).
    pending: VecDeque<(Answer<K, P>, usize)>,
    /// Ids in a pending round.
    claiming: HashSet<K>,
    /// Events fired while their id was claiming: they go out after.
    deferred: Vec<Fired<K, P>>,
}

impl<K, P> Pipeline<K, P>
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    /// Starts `depth` claim threads running `hooks`' admits, each of which
    /// unparks `dispatcher` when it has answered. They end when the
    /// pipeline is dropped.
    pub(super) fn start(hooks: Arc<dyn Hooks<K, P>>, depth: usize, dispatcher: Thread) -> Self {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job<K, P>>();
        for n in 0..depth {
            let (hooks, queue, dispatcher) = (hooks.clone(), queue.clone(), dispatcher.clone());
            let spawned = thread::Builder::new()
                .name(format!("duewheel-claim-{n}"))
                .spawn(move || {
                    for Job { mut fired, done } in queue {
                        let mut dropped = Vec::new();
                        let admit = std::panic::AssertUnwindSafe(|| {
                            hooks.admit(&mut super::hooks::Round::new(&mut fired, &mut dropped));
                        });
                        // A store that panicked mid-admit answers `None`
                        // (see `next`); the thread goes on.
                        let admitted = std::panic::catch_unwind(admit)
                            .ok()
                            .map(|()| Admitted { fired, dropped });
                        let _ = done.send(admitted);
                        dispatcher.unpark();
                    }
                });
            if let Err(e) = spawned {
                // Fewer threads only means fewer admits at once: the jobs
                // queue until one is free (and with none, the dispatcher
                // admits them itself: see `submit`).
                trace::warning!(
                    error = e.to_string().as_str(),
                    "could not start a claim thread"
                );
            }
        }
        Self {
            depth,
            jobs,
            pending: VecDeque::new(),
            claiming: HashSet::new(),
            deferred: Vec::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, P> Pipeline<K, P> {
    /// Admits that may run at once.
    pub(super) fn depth(&self) -> usize {
        self.depth
    }

    /// `true` if no round is in admit and nothing is held back.
    pub(super) fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.deferred.is_empty()
    }

    /// Rounds in admit.
    pub(super) fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Events handed to admits not yet delivered (the room reserved for
    /// them).
    pub(super) fn held(&self) -> usize {
        self.pending.iter().map(|(_, n)| n).sum()
    }

    /// Moves the events of `fired` whose id is in a pending round to the
    /// held-back list.
    pub(super) fn hold_back_claiming(&mut self, fired: &mut Vec<Fired<K, P>>) {
        if self.claiming.is_empty() {
            return;
        }
        let claiming = &self.claiming;
        self.deferred
            .extend(fired.extract_if(.., |(_, _, event)| claiming.contains(&event.id)));
    }

    /// Hands `fired` (emptied) to a claim thread; `Err` gives the round
    /// back if none runs (the caller admits it itself).
    pub(super) fn submit(&mut self, fired: &mut Vec<Fired<K, P>>) -> Result<(), Vec<Fired<K, P>>> {
        let round = std::mem::take(fired);
        let (done, answer) = crossbeam_channel::bounded(1);
        let len = round.len();
        let ids: Vec<K> = round.iter().map(|(_, _, e)| e.id.clone()).collect();
        match self.jobs.send(Job { fired: round, done }) {
            Ok(()) => {
                self.claiming.extend(ids);
                self.pending.push_back((answer, len));
                Ok(())
            }
            Err(crossbeam_channel::SendError(job)) => Err(job.fired),
        }
    }

    /// The oldest pending round's answer: waits for it if `block`, else
    /// `None` unless it is there. Its ids stop claiming, and the events
    /// held back for them return to `release` (to go out with the next
    /// round).
    pub(super) fn next(
        &mut self,
        block: bool,
        release: &mut Vec<Fired<K, P>>,
    ) -> Option<Admitted<K, P>> {
        let (answer, _) = self.pending.front()?;
        let answered = if block {
            answer.recv().ok().flatten()
        } else {
            match answer.try_recv() {
                Ok(a) => a,
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => None,
            }
        };
        self.pending.pop_front();
        // An admit that panicked (or a claim thread gone) answers nothing:
        // the round's timers stay in the engine, neither delivered nor
        // forgotten, and come back after the ack timeout like any
        // undelivered fire.
        let admitted = answered.unwrap_or_else(|| {
            trace::error!("a round's admit panicked: nothing of it is delivered now");
            Admitted::nothing()
        });
        for (_, _, event) in &admitted.fired {
            self.claiming.remove(&event.id);
        }
        for id in &admitted.dropped {
            self.claiming.remove(id);
        }
        if self.pending.is_empty() {
            // Whatever a round that answered nothing held.
            self.claiming.clear();
        }
        let claiming = &self.claiming;
        release.extend(
            self.deferred
                .extract_if(.., |(_, _, event)| !claiming.contains(&event.id)),
        );
        Some(admitted)
    }
}
