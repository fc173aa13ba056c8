//! Consumer groups and bounded delivery.
//!
//! Every group receives every event; the consumers inside one group share its
//! events, each event going to exactly one of them. A group is one
//! `crossbeam-channel` of event batches, bounded by the events it holds.
//!
//! # One batch per round, shared
//!
//! The dispatcher builds one [`Batch`] per delivery and sends the same
//! `Arc` to every group: it copies nothing per group. The first consumer of
//! each group to take the batch copies out the events its group gets (under
//! the round's lock: events need only be `Send`, not `Sync`, so two threads
//! never read one at once), on its own thread; the last group to take it
//! moves the events out and copies nothing, so with one group no event is
//! ever copied. An event's group mask says which groups get it (a
//! redelivery goes only to the groups that have not acked).
//!
//! # Bounded by events, memory allocated as used
//!
//! The channel is crossbeam's unbounded (linked-block) flavour, whose memory
//! grows with what it holds; the bound is kept here, in events: the
//! dispatcher sends to a group only while `queued + batch <= capacity` (or
//! the group holds nothing, so a delivery larger than the capacity still
//! passes, alone). A capacity of 2^30 therefore reserves nothing up front;
//! crossbeam's bounded flavour would allocate every slot at creation.
//!
//! Invariants:
//! - an event handed to a group is never dropped: the registry keeps a
//!   receiver of every group, so the channel stays open (and buffers, up to
//!   its capacity) even while no consumer is attached;
//! - when a group has no room the dispatcher waits: lateness grows, memory
//!   does not (at most `capacity` events per group in its channel, or one
//!   delivery if that is larger, plus what consumers hand back);
//! - `queued` counts the group's events in the channel, so lag is visible,
//!   and every decrease that a waiting dispatcher needs is signalled on
//!   `room` (no lost wake-up: see [`GroupShared::wait_room`]).

use super::event::{Event, EventKind};
use super::shard::Fired;
use super::{Scheduler, SubscribeError};
use crate::error::{self, RecvError, RecvTimeoutError, TryRecvError};
use crate::error::{AckError, SnoozeError};
use crate::sync::{Condvar, Mutex};
use crossbeam_channel::{Receiver, Sender};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One delivery as a group receives it: the round's events, shared by every
/// group they reach; `count` of them are for this group.
pub(crate) struct Batch<K, P> {
    round: Arc<Mutex<Round<K, P>>>,
    pub(crate) count: usize,
}

/// The events of one delivery and how many groups have yet to take them.
pub(crate) struct Round<K, P> {
    events: Vec<Fired<K, P>>,
    takers: usize,
}

impl<K, P> Batch<K, P> {
    /// Shares `events` among `takers` groups: [`Self::of`] makes each
    /// group's batch.
    pub(crate) fn share(events: Vec<Fired<K, P>>, takers: usize) -> Arc<Mutex<Round<K, P>>> {
        Arc::new(Mutex::new(Round { events, takers }))
    }

    /// A group's batch of a shared round, holding `count` of its events.
    pub(crate) fn of(round: Arc<Mutex<Round<K, P>>>, count: usize) -> Self {
        Self { round, count }
    }

    /// A group that will never take its batch: the others need not wait
    /// for it to move the events out.
    pub(crate) fn refused(round: &Mutex<Round<K, P>>) {
        round.lock().takers -= 1;
    }

    /// The events of group `bit`, each with its mask: the round itself for
    /// the last group to take it, a copy for the others.
    fn take(self, bit: u64, clone: fn(&Event<K, P>) -> Event<K, P>) -> Vec<Fired<K, P>> {
        let mut round = self.round.lock();
        round.takers -= 1;
        if round.takers == 0 {
            return std::mem::take(&mut round.events);
        }
        round
            .events
            .iter()
            .filter(|(_, mask, _)| mask & bit != 0)
            .map(|(tick, mask, event)| (*tick, *mask, clone(event)))
            .collect()
    }

    /// The events of group `bit`, copied for a shutdown hand-back.
    pub(crate) fn copy_for(round: &Mutex<Round<K, P>>, bit: u64) -> Vec<Event<K, P>>
    where
        K: Clone,
        P: Clone,
    {
        round
            .lock()
            .events
            .iter()
            .filter(|(_, mask, _)| mask & bit != 0)
            .map(|(_, _, event)| event.clone())
            .collect()
    }
}

/// The events a consumer has taken out of its group, in order; those
/// whose mask lacks its group are skipped as they come.
type Buffer<K, P> = std::vec::IntoIter<Fired<K, P>>;

/// One group, as the dispatcher sees it.
pub(crate) struct Group<K, P> {
    pub(crate) name: Arc<str>,
    pub(crate) tx: Sender<Batch<K, P>>,
    rx: Receiver<Batch<K, P>>,
    pub(crate) shared: Arc<GroupShared<K, P>>,
}

/// State shared by a group's consumers and the dispatcher.
pub(crate) struct GroupShared<K, P> {
    /// Events in the channel or handed back, not yet taken by a consumer.
    pub(crate) queued: AtomicU64,
    pub(crate) consumers: AtomicUsize,
    /// This group's bit in an event's group mask.
    pub(crate) bit: u64,
    /// The most events the channel holds before the dispatcher waits.
    capacity: u64,
    /// Deliveries waiting for room (see [`Self::wait_room`]).
    room_waiters: AtomicUsize,
    room_lock: Mutex<()>,
    room: Condvar,
    /// Lets a dropped consumer put its unread events back; `None` once the
    /// engine shut down (so the channel can disconnect).
    requeue: Mutex<Option<Sender<Batch<K, P>>>>,
    /// Handed-back batches that could not go back into the channel (it was
    /// closed); read first.
    handed_back: Mutex<Vec<Batch<K, P>>>,
    handed_back_len: AtomicUsize,
    /// Wakes async consumers (see [`super::async_consumer`]): signalled after every
    /// batch the dispatcher sends, every hand-back, and at close.
    #[cfg(feature = "tokio")]
    pub(crate) notify: Arc<tokio::sync::Notify>,
    /// Set at close: nothing more will arrive once the channel is empty.
    #[cfg(feature = "tokio")]
    pub(crate) closed: AtomicBool,
}

impl<K, P> GroupShared<K, P> {
    fn new(tx: Sender<Batch<K, P>>, position: usize, capacity: u64) -> Self {
        Self {
            queued: AtomicU64::new(0),
            consumers: AtomicUsize::new(0),
            bit: 1 << position,
            capacity,
            room_waiters: AtomicUsize::new(0),
            room_lock: Mutex::new(()),
            room: Condvar::new(),
            requeue: Mutex::new(Some(tx)),
            handed_back: Mutex::new(Vec::new()),
            handed_back_len: AtomicUsize::new(0),
            #[cfg(feature = "tokio")]
            notify: Arc::new(tokio::sync::Notify::new()),
            #[cfg(feature = "tokio")]
            closed: AtomicBool::new(false),
        }
    }

    /// Tells async consumers that something may have arrived. A no-op
    /// without feature `tokio`; with it, one uncontended lock when no
    /// consumer waits.
    #[inline]
    pub(crate) fn wake(&self) {
        #[cfg(feature = "tokio")]
        self.notify.notify_waiters();
    }

    /// Whether `count` more events fit: within the capacity, or the group
    /// holds nothing (a delivery larger than the capacity passes alone).
    pub(crate) fn has_room(&self, count: usize) -> bool {
        let queued = self.queued.load(Ordering::SeqCst);
        queued == 0 || queued.saturating_add(count as u64) <= self.capacity
    }

    /// Waits until `count` more events fit, or `until` passes, or `give_up`
    /// says so (checked at least every `poll`); `true` if they fit.
    ///
    /// No lost wake-up: the waiter counts itself in `room_waiters` and then
    /// checks the room, both `SeqCst`, holding `room_lock` until it sleeps;
    /// a consumer lowers `queued` and then reads `room_waiters`, both
    /// `SeqCst`, so one of the two sees the other, and a consumer that sees
    /// a waiter takes `room_lock` (so the waiter is asleep) to notify.
    pub(crate) fn wait_room(
        &self,
        count: usize,
        until: Option<Instant>,
        poll: Duration,
        give_up: impl Fn() -> bool,
    ) -> bool {
        if self.has_room(count) {
            return true;
        }
        let mut guard = self.room_lock.lock();
        self.room_waiters.fetch_add(1, Ordering::SeqCst);
        let fits = loop {
            if self.has_room(count) {
                break true;
            }
            if give_up() {
                break false;
            }
            let now = Instant::now();
            let wake = match until {
                Some(until) if until <= now => break false,
                Some(until) => until.min(now + poll),
                None => now + poll,
            };
            self.room.wait_until(&mut guard, wake);
        };
        self.room_waiters.fetch_sub(1, Ordering::SeqCst);
        fits
    }

    /// A consumer took `count` events out of the group.
    fn taken(&self, count: usize) {
        self.queued.fetch_sub(count as u64, Ordering::SeqCst);
        if self.room_waiters.load(Ordering::SeqCst) > 0 {
            let _asleep = self.room_lock.lock();
            self.room.notify_all();
        }
    }

    fn hand_back(&self, batch: Batch<K, P>) {
        self.queued.fetch_add(batch.count as u64, Ordering::SeqCst);
        let batch = match self.requeue.lock().as_ref() {
            // Unbounded underneath: only a closed channel refuses.
            Some(tx) => match tx.send(batch) {
                Ok(()) => return self.wake(),
                Err(closed) => closed.into_inner(),
            },
            None => batch,
        };
        self.handed_back.lock().push(batch);
        self.handed_back_len.fetch_add(1, Ordering::Release);
        self.wake();
    }

    fn take_handed_back(&self) -> Option<Batch<K, P>> {
        if self.handed_back_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let batch = self.handed_back.lock().pop()?;
        self.handed_back_len.fetch_sub(1, Ordering::Release);
        Some(batch)
    }
}

/// A snapshot of the groups; `None` in the registry once closed.
pub(crate) type Groups<K, P> = Arc<Vec<Group<K, P>>>;

/// The set of groups. The dispatcher takes a snapshot (one `Arc` clone) per
/// round, so subscribing never waits for a blocked delivery.
pub(crate) struct Registry<K, P> {
    groups: Mutex<Option<Groups<K, P>>>,
    /// Each group's capacity, in events.
    capacity: u64,
    /// With acknowledgements on, the groups are fixed at build: a group's
    /// position is its bit in the ack mask.
    frozen: AtomicBool,
}

impl<K, P> Registry<K, P> {
    /// Groups that hold at most `capacity` events each (see the module
    /// doc: memory is taken as events arrive, not reserved).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            groups: Mutex::new(Some(Arc::new(Vec::new()))),
            capacity: capacity as u64,
            frozen: AtomicBool::new(false),
        }
    }

    /// The current groups, or `None` once closed.
    pub(crate) fn snapshot(&self) -> Option<Groups<K, P>> {
        self.groups.lock().clone()
    }

    /// Drops the registry's senders: once the dispatcher's snapshot is gone,
    /// consumers see `Disconnected` after draining what is queued.
    pub(crate) fn close(&self) {
        if let Some(groups) = self.groups.lock().take() {
            for group in groups.iter() {
                group.shared.requeue.lock().take();
                #[cfg(feature = "tokio")]
                group.shared.closed.store(true, Ordering::SeqCst);
                group.shared.wake();
            }
        }
    }

    /// No group can be added from now on.
    pub(crate) fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// A consumer of `name`, creating the group if needed, and the group's
    /// position.
    pub(crate) fn subscribe(&self, name: &str) -> Result<(Consumer<K, P>, u32), SubscribeError>
    where
        K: Clone,
        P: Clone,
    {
        let mut guard = self.groups.lock();
        let groups = guard.as_mut().ok_or(SubscribeError::ShuttingDown)?;
        let group = match groups.iter().find(|g| &*g.name == name) {
            Some(g) => g,
            None if self.frozen.load(Ordering::SeqCst) => {
                return Err(SubscribeError::UnknownGroup(name.to_string()));
            }
            None if groups.len() == 64 => return Err(SubscribeError::TooManyGroups),
            None => {
                let (tx, rx) = crossbeam_channel::unbounded();
                let position = groups.len();
                let mut next: Vec<Group<K, P>> = groups
                    .iter()
                    .map(|g| Group {
                        name: g.name.clone(),
                        tx: g.tx.clone(),
                        rx: g.rx.clone(),
                        shared: g.shared.clone(),
                    })
                    .collect();
                next.push(Group {
                    name: name.into(),
                    shared: Arc::new(GroupShared::new(tx.clone(), position, self.capacity)),
                    tx,
                    rx,
                });
                *groups = Arc::new(next);
                groups.last().expect("just pushed")
            }
        };
        group.shared.consumers.fetch_add(1, Ordering::Relaxed);
        let position = groups
            .iter()
            .position(|g| Arc::ptr_eq(&g.shared, &group.shared))
            .expect("the group is in the list");
        let consumer = Consumer {
            group: group.name.clone(),
            rx: group.rx.clone(),
            shared: group.shared.clone(),
            buffer: Vec::new().into_iter(),
            clone: Event::clone,
            acker: None,
            hooks: None,
            #[cfg(feature = "tokio")]
            waiting: None,
        };
        Ok((
            consumer,
            u32::try_from(position).expect("at most 64 groups"),
        ))
    }
}

/// Receives the events of one consumer group.
///
/// Built on a `crossbeam-channel` bounded by events (see
/// [`Builder::channel_capacity`](crate::Builder::channel_capacity)); the
/// verbs read like its own: [`recv`](Self::recv),
/// [`try_recv`](Self::try_recv), [`recv_timeout`](Self::recv_timeout), and
/// [`iter`](Self::iter). Events arrive in batches, one per dispatcher
/// delivery, shared by every group; a consumer takes a whole batch at a
/// time, so the other consumers of its group get the next batches. With feature `tokio` a
/// consumer is also a `futures_core::Stream` of events and has
/// `recv_async`, `ack_async` and `snooze_async`: async code needs no thread
/// per consumer.
///
/// ```
/// use duewheel::{Engine, EventKind, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(0);
/// let engine = Engine::<u64, &str>::builder().clock(clock.clone()).build()?;
/// let mut orders = engine.subscribe("orders")?;
/// engine.scheduler().schedule(7, Duration::from_secs(60), "order 7").unwrap();
///
/// clock.advance(Duration::from_secs(60));
/// let event = orders.recv_timeout(Duration::from_secs(5))?;
/// assert_eq!((event.id, event.kind), (7, EventKind::Expired));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Consumer<K, P> {
    group: Arc<str>,
    rx: Receiver<Batch<K, P>>,
    pub(crate) shared: Arc<GroupShared<K, P>>,
    buffer: Buffer<K, P>,
    /// `Event::clone`, kept here so that the receive calls need no `Clone`
    /// bound of their own.
    clone: fn(&Event<K, P>) -> Event<K, P>,
    pub(crate) acker: Option<Acker<K, P>>,
    /// The store's hooks, asked whether each event is still
    /// [deliverable](super::Hooks::deliverable); `None` without a store.
    pub(crate) hooks: Option<Arc<dyn super::Hooks<K, P>>>,
    /// The wake-up an async receive waits on (see [`super::async_consumer`]).
    #[cfg(feature = "tokio")]
    pub(crate) waiting: Option<std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>>,
}

/// Lets a consumer ack and snooze: the engine and the group's bit.
pub(crate) struct Acker<K, P> {
    pub(crate) scheduler: Scheduler<K, P>,
    pub(crate) group: u32,
}

impl<K, P> Consumer<K, P> {
    /// The group this consumer belongs to.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The next buffered or handed-back event, without touching the channel.
    fn next_local(&mut self) -> Option<Event<K, P>> {
        if let Some(event) = self.pop() {
            return Some(event);
        }
        while let Some(batch) = self.shared.take_handed_back() {
            if let Some(event) = self.take(batch) {
                return Some(event);
            }
        }
        None
    }

    /// Makes `batch`, just taken from the group, the buffer, and returns its
    /// first event.
    fn take(&mut self, batch: Batch<K, P>) -> Option<Event<K, P>> {
        self.shared.taken(batch.count);
        self.buffer = batch.take(self.shared.bit, self.clone).into_iter();
        self.pop()
    }

    /// The next buffered event for this consumer's group that the store
    /// (if any) still lets through: every receive path ends here, so this
    /// is the last check before an event reaches the caller. A refused
    /// event is skipped (it stays in flight; see `Hooks::deliverable`).
    #[inline]
    fn pop(&mut self) -> Option<Event<K, P>> {
        let bit = self.shared.bit;
        let hooks = self.hooks.as_deref();
        self.buffer
            .find(|(_, mask, event)| {
                mask & bit != 0 && hooks.is_none_or(|hooks| hooks.deliverable(event))
            })
            .map(|(_, _, event)| event)
    }

    /// Blocks until an event arrives. Fails only after the engine shut down
    /// and every queued event was received.
    pub fn recv(&mut self) -> Result<Event<K, P>, RecvError> {
        loop {
            if let Some(event) = self.next_local() {
                return Ok(event);
            }
            let batch = self.rx.recv().map_err(error::recv_error)?;
            if let Some(event) = self.take(batch) {
                return Ok(event);
            }
        }
    }

    /// Takes an event if one is ready.
    pub fn try_recv(&mut self) -> Result<Event<K, P>, TryRecvError> {
        loop {
            if let Some(event) = self.next_local() {
                return Ok(event);
            }
            let batch = self.rx.try_recv().map_err(error::try_recv_error)?;
            if let Some(event) = self.take(batch) {
                return Ok(event);
            }
        }
    }

    /// Waits at most `timeout` for an event (a timeout too long to
    /// represent waits as [`recv`](Self::recv) does).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Event<K, P>, RecvTimeoutError> {
        let Some(deadline) = Instant::now().checked_add(timeout) else {
            return self.recv().map_err(|_| RecvTimeoutError::Disconnected);
        };
        loop {
            if let Some(event) = self.next_local() {
                return Ok(event);
            }
            let batch = self
                .rx
                .recv_deadline(deadline)
                .map_err(error::recv_timeout_error)?;
            if let Some(event) = self.take(batch) {
                return Ok(event);
            }
        }
    }

    /// Every event ready now, buffered ones first, without waiting.
    pub fn drain_ready(&mut self) -> Vec<Event<K, P>> {
        let mut out = Vec::new();
        while let Ok(event) = self.try_recv() {
            out.push(event);
        }
        out
    }

    /// Acknowledges an `Expired` event: this group is done with it. Once
    /// every group acked, the timer ends (durably, in durable mode: this
    /// returns after the ack is logged). Unacked events are redelivered
    /// after the ack timeout. Acking a reminder is accepted and does nothing.
    ///
    /// The ack names the event, not only the id: an ack of an earlier
    /// expiry of the same id (a retried ack, after the id was scheduled
    /// again and fired again) is refused with [`AckError::Stale`] and
    /// leaves the new expiry in flight.
    pub fn ack(&self, event: &Event<K, P>) -> Result<(), AckError>
    where
        K: Hash + Eq + Clone + Send + 'static,
        P: Clone + Send + 'static,
    {
        if let EventKind::Reminder(_) = event.kind {
            return Ok(());
        }
        let acker = self.acker.as_ref().ok_or(AckError::NotInFlight)?;
        acker.scheduler.ack(event, acker.group)
    }

    /// Acknowledges many events at once, with one durable wait for the
    /// whole batch (in durable mode: a batch of 64 pays one group commit,
    /// not 64). Returns each event's result, in order, as
    /// [`ack`](Self::ack) would give it: a stale or unknown event is
    /// refused alone, without failing the rest. Every `Ok` is durable when
    /// this returns.
    ///
    /// ```
    /// use duewheel::{Engine, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new(0);
    /// let engine = Engine::<u64, u64>::builder()
    ///     .clock(clock.clone())
    ///     .ack_timeout(Duration::from_secs(30))
    ///     .group("orders")
    ///     .build()?;
    /// let mut orders = engine.subscribe("orders")?;
    /// let s = engine.scheduler();
    /// for id in 0..3 {
    ///     s.schedule(id, Duration::from_secs(1), id).unwrap();
    /// }
    /// clock.advance(Duration::from_secs(1));
    /// s.settle(Duration::from_secs(5));
    /// let events = orders.drain_ready();
    /// assert_eq!(events.len(), 3);
    /// assert!(orders.ack_batch(&events).iter().all(Result::is_ok));
    /// assert_eq!(engine.stats().in_flight, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ack_batch(&self, events: &[Event<K, P>]) -> Vec<Result<(), AckError>>
    where
        K: Hash + Eq + Clone + Send + 'static,
        P: Clone + Send + 'static,
    {
        match &self.acker {
            Some(acker) => acker.scheduler.ack_batch(events, acker.group),
            None => Self::refused(events),
        }
    }

    /// Results for a consumer that takes no acks: reminders `Ok`, the rest
    /// `NotInFlight`.
    pub(crate) fn refused(events: &[Event<K, P>]) -> Vec<Result<(), AckError>> {
        events
            .iter()
            .map(|event| match event.kind {
                EventKind::Reminder(_) => Ok(()),
                EventKind::Expired | EventKind::DeadLetter => Err(AckError::NotInFlight),
            })
            .collect()
    }

    /// Asks for an `Expired` event to come again after `delay` instead of
    /// acking it: the payment gateway still says "pending", so look again
    /// later. The timer waits again (a cancel can still win) and fires with
    /// `attempt + 1`, to every group. Limited by
    /// [`Builder::max_snoozes`](crate::Builder::max_snoozes). A snooze of an
    /// earlier expiry of the id is refused with [`SnoozeError::Stale`].
    pub fn snooze(&self, event: &Event<K, P>, delay: Duration) -> Result<(), SnoozeError>
    where
        K: Hash + Eq + Clone + Send + 'static,
        P: Clone + Send + 'static,
    {
        let acker = self.acker.as_ref().ok_or(SnoozeError::NotInFlight)?;
        if event.kind == EventKind::DeadLetter {
            return Err(SnoozeError::DeadLettered);
        }
        if event.kind != EventKind::Expired {
            return Err(SnoozeError::NotInFlight);
        }
        acker.scheduler.snooze(event, delay)
    }

    /// A blocking iterator over events; it ends after shutdown, once every
    /// queued event was received.
    pub fn iter(&mut self) -> impl Iterator<Item = Event<K, P>> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }
}

impl<K, P> std::fmt::Debug for Consumer<K, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl<K, P> Drop for Consumer<K, P> {
    fn drop(&mut self) {
        self.shared.consumers.fetch_sub(1, Ordering::Relaxed);
        // Events this consumer took out of the channel but never returned go
        // back to its group: dropping a consumer loses nothing.
        let bit = self.shared.bit;
        let rest: Vec<_> = self.buffer.by_ref().filter(|f| f.1 & bit != 0).collect();
        if !rest.is_empty() {
            let count = rest.len();
            self.shared
                .hand_back(Batch::of(Batch::share(rest, 1), count));
        }
    }
}
