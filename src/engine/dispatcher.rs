//! Rounds: advancing every shard's wheel with the clock and handing the
//! events to the consumer groups. The dispatcher thread runs them; so does a
//! thread that steps a [`ManualClock`](crate::ManualClock) or calls
//! [`settle`](crate::Scheduler::settle), when the dispatcher is not.
//!
//! # Rounds
//!
//! Each round finds the earliest tick with work across all shards and fires,
//! in every shard, what is due at or before it (at most `batch` events per
//! shard per round, so a burst is taken in pieces and schedules and cancels
//! keep getting the locks in between). Events therefore reach the groups in
//! deadline order across shards, not only within one. Rounds add to one
//! delivery, handed over with no shard lock held once it holds `batch`
//! events or nothing more is due: a catch-up of timers at many distinct
//! ticks goes out in full batches, not one channel slot per event. A
//! delivery is one `Arc`'d batch sent to every group (see
//! [`super::consumer`]), only once every group it reaches has room for it.
//! Fired events are never dropped: at shutdown or fail-stop what is held is
//! handed over first, and what a full group cannot take is handed back.
//!
//! # Who runs a round
//!
//! Whoever holds [`Rounds`], a lock around the undelivered events: the
//! dispatcher thread, a [`settle`] (which then needs no handshake with the
//! dispatcher: it has caught up itself when it returns `true`), or a clock
//! step ([`clock_advanced`]) that finds something due and the lock free.
//! With [`Hooks`](super::Hooks) (a store that claims before delivery, maybe
//! over the network) only the dispatcher thread runs rounds; `settle`
//! watches between them. A store whose [`pipeline`](super::Hooks::pipeline)
//! is above 1 has its admits run on claim threads while the dispatcher
//! fires on (see [`super::pipeline`]). A
//! clock step runs at most one full delivery and never waits for room; what
//! it leaves, it leaves to the dispatcher thread, which it unparks. A step
//! with nothing due reads one atomic and returns: stepping a `ManualClock`
//! costs the work due at each step, not a cross-thread handshake.
//!
//! # Waking
//!
//! See [`super::wake`]: the protocol that cannot lose a wake-up (tokio
//! #6682), checked with loom, including the clock step that wakes nobody
//! when nothing is due. Every round runner plans, then reads the clock once
//! more before it stops. A bounded park (`max_idle`, one second by default)
//! is a second line of defence, not the mechanism; a test sets it to an hour
//! to prove that.

use super::Inner;
use super::consumer::{Batch, Group};
use super::pipeline::{Admitted, Pipeline};
use super::shard::Fired;
use crate::sync::Mutex;
use crate::trace;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

/// How often a delivery waiting for room checks for shutdown.
const SEND_POLL: Duration = Duration::from_millis(50);

/// Lateness past which the dispatcher reports itself behind (a warning
/// when it starts, a note when it has caught up).
const BEHIND_MS: u64 = 1_000;

/// The right to run rounds, and what they fired and have not delivered.
pub(crate) struct Rounds<K, P>(Mutex<Outbox<K, P>>);

impl<K, P> Rounds<K, P> {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(Outbox::new()))
    }
}

/// How long a round runner waits for a group to have room.
#[derive(Clone, Copy)]
enum Wait {
    /// The dispatcher thread: until there is room or shutdown.
    Forever,
    /// [`settle`]: until its timeout.
    Until(Instant),
    /// A clock step: not at all.
    Never,
}

/// How a run of rounds ended.
enum Caught {
    /// Nothing is due at the clock's present and everything fired was
    /// delivered, or is in an admit of the claim pipeline (which unparks
    /// the dispatcher when it answers); the next work is at this tick
    /// (`u64::MAX`: none).
    Up(u64),
    /// The budget of full deliveries is spent; more may be due.
    More,
    /// A group had no room in time; the delivery is kept.
    Blocked,
    /// Something is due and no group exists to take it.
    NoGroups,
    /// The log failed: nothing fires until a restart.
    Failed,
    /// Shutdown began.
    Stopped,
}

/// The dispatcher thread.
pub(crate) fn run<K, P>(inner: Arc<Inner<K, P>>)
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    let _ = inner.dispatcher.set(thread::current());
    if let Some(hooks) = &inner.hooks {
        let depth = hooks.pipeline();
        if depth > 1 {
            inner.rounds.0.lock().pipeline =
                Some(Pipeline::start(hooks.clone(), depth, thread::current()));
        }
    }
    // The claim threads end with the pipeline, once every round in it was
    // delivered (see `catch_up`'s stop).
    let _stop_claims = StopClaims(&inner);
    let mut last_publish = Instant::now();
    let mut fail_stop_reported = false;
    loop {
        let caught = catch_up(
            &inner,
            &mut inner.rounds.0.lock(),
            Wait::Forever,
            usize::MAX,
        );
        match caught {
            Caught::Stopped => return,
            Caught::Failed => {
                // Fail-stop: memory may hold changes the log never made
                // durable, so nothing more fires until a restart recovers
                // from the log.
                if !fail_stop_reported {
                    trace::error!("the write-ahead log failed: nothing fires until a restart");
                    fail_stop_reported = true;
                }
                park(&inner, None);
            }
            // Nobody to deliver to: hold every timer pending (visible as
            // overdue in stats) until a group subscribes and unparks us.
            Caught::NoGroups => park(&inner, None),
            // Neither ends a run that may wait forever with no budget.
            Caught::More | Caught::Blocked => {}
            Caught::Up(planned) => {
                #[cfg(feature = "metrics")]
                if last_publish.elapsed() >= Duration::from_secs(1) {
                    super::Scheduler::from_inner(inner.clone())
                        .stats()
                        .publish();
                    last_publish = Instant::now();
                }
                #[cfg(not(feature = "metrics"))]
                let _ = &mut last_publish;
                let sleep = (planned != u64::MAX)
                    .then(|| inner.clock.time_until(inner.ticks.start_ms(planned)))
                    .flatten();
                park(&inner, sleep);
            }
        }
    }
}

/// Drops the dispatcher's claim pipeline (its threads end) when the
/// dispatcher thread does.
struct StopClaims<'a, K, P>(&'a Inner<K, P>);

impl<K, P> Drop for StopClaims<'_, K, P> {
    fn drop(&mut self) {
        drop(self.0.rounds.0.lock().pipeline.take());
    }
}

/// [`Scheduler::settle`](crate::Scheduler::settle): runs the rounds itself,
/// once the dispatcher (or another runner) lets go of them, until nothing is
/// due at the clock's present and every fired event is in its groups.
pub(crate) fn settle<K, P>(inner: &Inner<K, P>, timeout: Duration) -> bool
where
    K: Hash + Eq + Clone,
    P: Clone,
{
    // A year stands for "no timeout": `Instant` cannot add `Duration::MAX`.
    let until = Instant::now() + timeout.min(Duration::from_secs(365 * 24 * 3_600));
    if inner.hooks.is_some() {
        return settle_by_watching(inner, until);
    }
    let Some(mut out) = inner.rounds.0.try_lock_until(until) else {
        return false;
    };
    let caught = catch_up(inner, &mut out, Wait::Until(until), usize::MAX);
    drop(out);
    match caught {
        Caught::Up(planned) => {
            // The dispatcher may sleep until a later time than this plan; a
            // clock that moves by itself will not wake it, so it is told.
            // A `ManualClock`'s steps read the plan (see `clock_advanced`).
            if inner
                .clock
                .time_until(inner.ticks.start_ms(planned))
                .is_some()
            {
                inner.unpark();
            }
            true
        }
        // What is left is the dispatcher's.
        _ => {
            inner.unpark();
            false
        }
    }
}

/// `settle` with a store that claims before delivery: its claim may wait
/// on the network for longer than the timeout, so the rounds stay on the
/// dispatcher thread and this only looks, between rounds, until nothing is
/// due at the clock's present and nothing fired is held.
fn settle_by_watching<K: Hash + Eq + Clone, P: Clone>(inner: &Inner<K, P>, until: Instant) -> bool {
    loop {
        let Some(out) = inner.rounds.0.try_lock_until(until) else {
            return false;
        };
        let now_tick = inner.ticks.now_tick(inner.clock.now_ms());
        let due = inner
            .shards()
            .filter_map(|s| s.lock().next_tick())
            .any(|tick| tick <= now_tick);
        if !due && out.fired.is_empty() && out.pipeline.as_ref().is_none_or(Pipeline::is_idle) {
            return true;
        }
        drop(out);
        inner.unpark();
        if Instant::now() >= until {
            return false;
        }
        thread::sleep(Duration::from_micros(200));
    }
}

/// The clock was stepped forward by command: if something is due, run the
/// round here when no one else is (a bounded one: one full delivery, no
/// waiting for room), and leave the rest to the dispatcher thread.
pub(crate) fn clock_advanced<K, P>(inner: &Inner<K, P>)
where
    K: Hash + Eq + Clone,
    P: Clone,
{
    let now_tick = inner.ticks.now_tick(inner.clock.now_ms());
    // The step's half of the wake-up protocol (see `wake`): time was
    // stored before this read.
    if !inner.next_wake.due_by(now_tick) {
        return;
    }
    // The store's claim may wait on the network: never in the stepping
    // thread.
    if inner.hooks.is_some() {
        return inner.unpark();
    }
    let Some(mut out) = inner.rounds.0.try_lock() else {
        // A runner is at work; it reads the clock again before it stops,
        // and the dispatcher is told in case that runner is not it.
        return inner.unpark();
    };
    let caught = catch_up(inner, &mut out, Wait::Never, 1);
    drop(out);
    if !matches!(caught, Caught::Up(_)) {
        inner.unpark();
    }
}

/// Runs rounds until nothing is due at the clock's present (read again
/// after the plan), or `full_deliveries` (at least 1) full batches are out,
/// or a group has no room by `wait`.
fn catch_up<K, P>(
    inner: &Inner<K, P>,
    out: &mut Outbox<K, P>,
    wait: Wait,
    mut full_deliveries: usize,
) -> Caught
where
    K: Hash + Eq + Clone,
    P: Clone,
{
    loop {
        let stopping = inner.stopping.load(Ordering::SeqCst);
        let failed = inner.journal.as_ref().is_some_and(|j| j.failed());
        if stopping || failed {
            // What already fired is handed over (or, if shutdown finds a
            // group full, kept for it to return), never dropped: by the
            // dispatcher thread, which every other runner leaves it to.
            if matches!(wait, Wait::Forever)
                && let Some(groups) = inner.registry.snapshot()
            {
                if out.pipeline.is_some() {
                    out.flush_pipelined(inner, &groups, true);
                } else if !out.fired.is_empty() {
                    out.flush(inner, &groups, inner.clock.now_ms(), wait);
                }
            }
            return if stopping {
                Caught::Stopped
            } else {
                Caught::Failed
            };
        }
        inner.next_wake.begin_scan();
        let now_ms = inner.clock.now_ms();
        let now_tick = inner.ticks.now_tick(now_ms);
        let Some(groups) = inner.registry.snapshot() else {
            return Caught::Stopped;
        };
        let earliest = inner.shards().filter_map(|s| s.lock().next_tick()).min();
        if let Some(tick) = earliest.filter(|&t| t <= now_tick) {
            if groups.is_empty() {
                return Caught::NoGroups;
            }
            for shard in inner.shards() {
                shard.lock().fire(tick, inner.batch, now_ms, &mut out.fired);
                // Rounds add to one delivery until it is a full batch: a
                // catch-up of timers at distinct ticks must not become one
                // channel slot per event.
                if out.fired.len() >= inner.batch {
                    if let Some(stop) = out.flush(inner, &groups, now_ms, wait) {
                        return stop;
                    }
                    // Handed over whole: the next runner starts a fresh
                    // delivery rather than one of two batches.
                    full_deliveries -= 1;
                    if full_deliveries == 0 {
                        return Caught::More;
                    }
                }
            }
            continue;
        }
        if let Some(stop) = out.flush(inner, &groups, now_ms, wait) {
            return stop;
        }
        if out.behind {
            out.behind = false;
            trace::info!("dispatcher caught up");
        }
        let planned = inner.next_wake.plan(earliest.unwrap_or(u64::MAX));
        // A clock step stored after `now_ms` was read may have found the
        // scan's `MAX` in `next_wake` and woken no one: look again, after
        // the plan (see `wake`).
        // (`MAX` is "nothing planned", even once the clock stands there.)
        if planned != u64::MAX && planned <= inner.ticks.now_tick(inner.clock.now_ms()) {
            continue;
        }
        return Caught::Up(planned);
    }
}

/// What has been fired and not yet handed to the groups.
pub(crate) struct Outbox<K, P> {
    fired: Vec<Fired<K, P>>,
    /// Whether the dispatcher runs more than `BEHIND_MS` late, so a stall
    /// is reported once, not per batch.
    behind: bool,
    /// With hooks whose `pipeline()` is above 1: the rounds in admit on
    /// claim threads (set by the dispatcher thread when it starts).
    pipeline: Option<Pipeline<K, P>>,
}

impl<K, P> Outbox<K, P> {
    fn new() -> Self {
        Self {
            fired: Vec::new(),
            behind: false,
            pipeline: None,
        }
    }
}

impl<K: Hash + Eq + Clone, P: Clone> Outbox<K, P> {
    /// Delivers what is held, once every group it reaches has room (see
    /// [`deliver`]); `None` when delivered (or nothing was held), else why
    /// not: what was not delivered stays held, or at shutdown is handed
    /// back.
    fn flush(
        &mut self,
        inner: &Inner<K, P>,
        groups: &[Group<K, P>],
        now_ms: u64,
        wait: Wait,
    ) -> Option<Caught> {
        if self.pipeline.is_some() {
            return self.flush_pipelined(inner, groups, false);
        }
        if self.fired.is_empty() {
            return None;
        }
        // Room first: the store claims nothing, and nothing is recorded,
        // for a delivery that must wait and be tried again.
        // At shutdown the dispatcher thread goes on: `deliver` hands back
        // what a full group cannot take.
        if !wait_for_room(inner, groups, &counts(groups, &self.fired), wait)
            && !matches!(wait, Wait::Forever)
        {
            return Some(Caught::Blocked);
        }
        if let Some(hooks) = &inner.hooks {
            // Cluster mode: deliver only what the store claimed; what it
            // refused (cancelled elsewhere, or the shard is no longer ours)
            // leaves the engine.
            let mut dropped = Vec::new();
            hooks.admit(&mut super::hooks::Round::new(&mut self.fired, &mut dropped));
            forget(inner, dropped);
        }
        let mut fired = std::mem::take(&mut self.fired);
        let stop = self.hand_over(inner, groups, now_ms, &mut fired);
        // The emptied vector keeps its capacity for the next round.
        self.fired = fired;
        stop
    }

    /// With the claim pipeline: hands what is fired to a claim thread
    /// (room permitting, ids in admit held back), and delivers, in the
    /// order they fired, the rounds whose admit answered. It waits for the
    /// oldest admit when the pipeline is full (or when room must be freed
    /// for the next round), and for all of them if `drain`; otherwise it
    /// returns with rounds still in admit, whose claim threads unpark the
    /// dispatcher when they answer. `None` unless a delivery found the
    /// engine stopping.
    fn flush_pipelined(
        &mut self,
        inner: &Inner<K, P>,
        groups: &[Group<K, P>],
        drain: bool,
    ) -> Option<Caught> {
        let mut pipe = self.pipeline.take()?;
        let stop = self.pump(&mut pipe, inner, groups, drain);
        self.pipeline = Some(pipe);
        stop
    }

    fn pump(
        &mut self,
        pipe: &mut Pipeline<K, P>,
        inner: &Inner<K, P>,
        groups: &[Group<K, P>],
        drain: bool,
    ) -> Option<Caught> {
        loop {
            pipe.hold_back_claiming(&mut self.fired);
            let mut block = drain;
            if !self.fired.is_empty() {
                if pipe.in_flight() >= pipe.depth() {
                    block = true;
                } else if fits_with(groups, &self.fired, pipe.held()) {
                    if let Err(round) = pipe.submit(&mut self.fired) {
                        // No claim thread runs: admitted here.
                        self.fired = round;
                        return self.flush_inline(inner, groups);
                    }
                } else if pipe.in_flight() > 0 {
                    // Delivering the rounds in admit frees their room.
                    block = true;
                } else {
                    // Nothing in flight: wait for room as a lone round
                    // does (at shutdown it goes on: see `deliver`).
                    wait_for_room(inner, groups, &counts(groups, &self.fired), Wait::Forever);
                    if let Err(round) = pipe.submit(&mut self.fired) {
                        self.fired = round;
                        return self.flush_inline(inner, groups);
                    }
                }
            }
            block |= pipe.in_flight() >= pipe.depth();
            match pipe.next(block, &mut self.fired) {
                Some(Admitted { mut fired, dropped }) => {
                    forget(inner, dropped);
                    let now_ms = inner.clock.now_ms();
                    if let Some(stop) = self.hand_over(inner, groups, now_ms, &mut fired) {
                        // Shutdown found a group without room: every round
                        // still in admit, and what was held back, goes the
                        // same way (handed over or back), none is dropped.
                        while let Some(Admitted { mut fired, dropped }) =
                            pipe.next(true, &mut self.fired)
                        {
                            forget(inner, dropped);
                            let _ = self.hand_over(inner, groups, now_ms, &mut fired);
                        }
                        if !self.fired.is_empty() {
                            let _ = self.flush_inline(inner, groups);
                        }
                        return Some(stop);
                    }
                }
                // Nothing answered yet, or nothing in flight; what an
                // answer released (held back for an id it had) goes next.
                None if self.fired.is_empty() => return None,
                None => {}
            }
        }
    }

    /// A round admitted on this thread (the claim threads are gone).
    fn flush_inline(&mut self, inner: &Inner<K, P>, groups: &[Group<K, P>]) -> Option<Caught> {
        if let Some(hooks) = &inner.hooks {
            let mut dropped = Vec::new();
            hooks.admit(&mut super::hooks::Round::new(&mut self.fired, &mut dropped));
            forget(inner, dropped);
        }
        let mut fired = std::mem::take(&mut self.fired);
        self.hand_over(inner, groups, inner.clock.now_ms(), &mut fired)
    }

    /// Records the lateness of an admitted round and delivers it (see
    /// [`deliver`]); `fired` is left empty.
    fn hand_over(
        &mut self,
        inner: &Inner<K, P>,
        groups: &[Group<K, P>],
        now_ms: u64,
        fired: &mut Vec<Fired<K, P>>,
    ) -> Option<Caught> {
        if fired.is_empty() {
            return None;
        }
        let now_tick = inner.ticks.now_tick(now_ms);
        let mut oldest_ms = u64::MAX;
        {
            // Recorded in place: merging a histogram, and clearing it, walk
            // every bucket, which costs more than a stepped clock's
            // handful of events.
            let mut lateness = inner.lateness.lock();
            for (due_tick, _, event) in fired.iter() {
                let _ = lateness.record(now_tick.saturating_sub(*due_tick));
                oldest_ms = oldest_ms.min(event.due_ms);
            }
        }
        let late_ms = now_ms.saturating_sub(oldest_ms);
        trace::trace!(events = fired.len(), late_ms, "delivering a batch");
        if late_ms > BEHIND_MS && !self.behind {
            self.behind = true;
            trace::warning!(
                late_ms,
                "dispatcher behind: events leave the wheel over a second late"
            );
        }
        inner.delivering_since_ms.store(oldest_ms, Ordering::SeqCst);
        let delivered = deliver(inner, groups, fired);
        inner.delivering_since_ms.store(u64::MAX, Ordering::SeqCst);
        (!delivered).then_some(Caught::Stopped)
    }
}

/// The engine forgets the timers of the ids an admit dropped.
fn forget<K: Hash + Eq + Clone, P: Clone>(inner: &Inner<K, P>, dropped: Vec<K>) {
    for id in dropped {
        inner.shard_of(&id).lock().discard(&id);
    }
}

/// Whether every group has room for its part of `fired` on top of `held`
/// events already reserved for rounds in admit: the same rule as for one
/// delivery of both (see [`Shared::has_room`](super::consumer)).
fn fits_with<K, P>(groups: &[Group<K, P>], fired: &[Fired<K, P>], held: usize) -> bool {
    groups
        .iter()
        .zip(counts(groups, fired))
        .all(|(group, count)| count == 0 || group.shared.has_room(count + held))
}

/// How many of `fired` each group must receive.
fn counts<K, P>(groups: &[Group<K, P>], fired: &[Fired<K, P>]) -> Vec<usize> {
    if fired.iter().all(|(_, mask, _)| *mask == u64::MAX) {
        // The usual case: every group gets every event.
        return vec![fired.len(); groups.len()];
    }
    groups
        .iter()
        .map(|g| {
            let bit = g.shared.bit;
            fired.iter().filter(|(_, mask, _)| mask & bit != 0).count()
        })
        .collect()
}

fn park<K, P>(inner: &Inner<K, P>, sleep: Option<Duration>) {
    if inner.stopping.load(Ordering::SeqCst) {
        return;
    }
    thread::park_timeout(sleep.map_or(inner.max_idle, |d| d.min(inner.max_idle)));
}

/// Waits, as `wait` allows, until every group has room for its part of the
/// delivery; `false` if one has not.
fn wait_for_room<K, P>(
    inner: &Inner<K, P>,
    groups: &[Group<K, P>],
    counts: &[usize],
    wait: Wait,
) -> bool {
    let stopping = || inner.stopping.load(Ordering::SeqCst);
    for (group, &count) in groups.iter().zip(counts) {
        if count == 0 || group.shared.has_room(count) {
            continue;
        }
        let fits = match wait {
            Wait::Never => false,
            Wait::Until(until) => group
                .shared
                .wait_room(count, Some(until), SEND_POLL, stopping),
            Wait::Forever => {
                let since = Instant::now();
                trace::warning!(
                    group = &*group.name,
                    queued = group.shared.queued.load(Ordering::Relaxed),
                    "consumer group full: the dispatcher waits (backpressure)"
                );
                let fits = group.shared.wait_room(count, None, SEND_POLL, stopping);
                if fits {
                    let waited_ms = since.elapsed().as_millis() as u64;
                    trace::info!(
                        group = &*group.name,
                        waited_ms,
                        "consumer group has room again"
                    );
                }
                fits
            }
        };
        if !fits {
            return false;
        }
    }
    true
}

/// Sends the fired events to the groups each must reach, as one shared
/// batch, and empties `fired`. Every group has room (see
/// [`wait_for_room`]) unless shutdown began: then a group without room, or
/// whose channel closed, gets its events handed back (kept for
/// [`Engine::shutdown`](crate::Engine::shutdown) to return) and this
/// returns `false`.
fn deliver<K: Clone, P: Clone>(
    inner: &Inner<K, P>,
    groups: &[Group<K, P>],
    fired: &mut Vec<Fired<K, P>>,
) -> bool {
    let counts = counts(groups, fired);
    let stopping = inner.stopping.load(Ordering::SeqCst);
    let takers = counts.iter().filter(|&&c| c > 0).count();
    // The next delivery is sized like this one: full batches while catching
    // up, a handful while a clock is stepped.
    let len = fired.len();
    let round = Batch::share(std::mem::replace(fired, Vec::with_capacity(len)), takers);
    let mut delivered = true;
    for (group, &count) in groups.iter().zip(&counts) {
        if count == 0 {
            continue;
        }
        let sent = if stopping && !group.shared.has_room(count) {
            false
        } else {
            group
                .shared
                .queued
                .fetch_add(count as u64, Ordering::SeqCst);
            match group.tx.send(Batch::of(round.clone(), count)) {
                Ok(()) => {
                    group.shared.wake();
                    true
                }
                Err(_closed) => {
                    group
                        .shared
                        .queued
                        .fetch_sub(count as u64, Ordering::SeqCst);
                    false
                }
            }
        };
        if !sent {
            delivered = false;
            // Copied before this group stops counting as a taker, so that
            // no other group can have moved the events out yet.
            let back = Batch::copy_for(&round, group.shared.bit);
            Batch::refused(&round);
            let mut kept = inner.undelivered.lock();
            kept.extend(back.into_iter().map(|e| (group.name.clone(), e)));
        }
    }
    delivered
}
