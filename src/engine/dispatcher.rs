//! The dispatcher thread: advances every shard's wheel with the clock and
//! hands the events to the consumer groups.
//!
//! # Rounds
//!
//! Each round finds the earliest tick with work across all shards and fires,
//! in every shard, what is due at or before it (at most `batch` events per
//! shard per round, so a burst is taken in pieces and schedules and cancels
//! keep getting the locks in between). Events therefore reach the groups in
//! deadline order across shards, not only within one. Rounds add to one
//! delivery, handed over with no lock held once it holds `batch` events or
//! nothing more is due: a catch-up of timers at many distinct ticks goes out
//! in full batches, not one channel slot per event. Fired events are never
//! dropped: at shutdown or fail-stop what is held is handed over first.
//!
//! # Waking
//!
//! See [`super::wake`]: the protocol that cannot lose a wake-up (tokio
//! #6682), checked with loom. A bounded park (`max_idle`, one second by
//! default) is a second line of defence, not the mechanism; a test sets it to
//! an hour to prove that.

use super::Inner;
use super::consumer::{Batch, Group};
use super::shard::Fired;
use crate::trace;
use crossbeam_channel::SendTimeoutError;
use hdrhistogram::Histogram;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

/// How often a blocked delivery checks for shutdown.
const SEND_POLL: Duration = Duration::from_millis(50);

/// Lateness past which the dispatcher reports itself behind (a warning
/// when it starts, a note when it has caught up).
const BEHIND_MS: u64 = 1_000;

pub(crate) fn run<K, P>(inner: Arc<Inner<K, P>>)
where
    K: Hash + Eq + Clone + Send + 'static,
    P: Clone + Send + 'static,
{
    let _ = inner.dispatcher.set(thread::current());
    let mut out = Outbox::new();
    let mut last_publish = Instant::now();
    let mut fail_stop_reported = false;
    loop {
        let stopping = inner.stopping.load(Ordering::SeqCst);
        let failed = inner.journal.as_ref().is_some_and(|j| j.failed());
        if (stopping || failed) && !out.fired.is_empty() {
            // What already fired is handed over (or, if shutdown finds a
            // group full, kept for it to return), never dropped.
            if let Some(groups) = inner.registry.snapshot() {
                out.flush(&inner, &groups, inner.clock.now_ms());
            }
        }
        if stopping {
            return;
        }
        if failed {
            // Fail-stop: memory may hold changes the log never made durable,
            // so nothing more fires until a restart recovers from the log.
            if !fail_stop_reported {
                trace::error!("the write-ahead log failed: nothing fires until a restart");
                fail_stop_reported = true;
            }
            park(&inner, None);
            continue;
        }
        inner.next_wake.begin_scan();
        let settle_requests = inner.settle_requests.load(Ordering::SeqCst);
        let now_ms = inner.clock.now_ms();
        let now_tick = inner.ticks.now_tick(now_ms);
        let Some(groups) = inner.registry.snapshot() else {
            return;
        };
        let earliest = inner.shards().filter_map(|s| s.lock().next_tick()).min();

        if groups.is_empty() {
            // Nobody to deliver to: hold every timer pending (visible as
            // overdue in stats) until a group subscribes and unparks us.
            park(&inner, None);
            continue;
        }
        if let Some(tick) = earliest.filter(|&t| t <= now_tick) {
            for shard in inner.shards() {
                shard.lock().fire(tick, inner.batch, now_ms, &mut out.fired);
                // Rounds add to one delivery until it is a full batch: a
                // catch-up of timers at distinct ticks must not become one
                // channel slot per event.
                if out.fired.len() >= inner.batch && !out.flush(&inner, &groups, now_ms) {
                    return;
                }
            }
            continue;
        }
        if !out.fired.is_empty() && !out.flush(&inner, &groups, now_ms) {
            return;
        }
        inner.mark_settled(now_ms, settle_requests);
        if out.behind {
            out.behind = false;
            trace::info!("dispatcher caught up");
        }

        #[cfg(feature = "metrics")]
        if last_publish.elapsed() >= Duration::from_secs(1) {
            super::Scheduler::from_inner(inner.clone())
                .stats()
                .publish();
            last_publish = Instant::now();
        }
        #[cfg(not(feature = "metrics"))]
        let _ = &mut last_publish;

        let wake = earliest.unwrap_or(u64::MAX);
        let planned = inner.next_wake.plan(wake);
        if planned <= now_tick {
            continue;
        }
        let sleep = (planned != u64::MAX)
            .then(|| inner.clock.time_until(inner.ticks.start_ms(planned)))
            .flatten();
        park(&inner, sleep);
    }
}

/// What the dispatcher has fired and not yet handed to the groups, with
/// the lateness it carries.
struct Outbox<K, P> {
    fired: Vec<Fired<K, P>>,
    /// Lateness of `fired`, merged into the engine's at each flush.
    lateness: Histogram<u64>,
    /// Whether the dispatcher runs more than `BEHIND_MS` late, so a stall
    /// is reported once, not per batch.
    behind: bool,
}

impl<K: Clone, P: Clone> Outbox<K, P> {
    fn new() -> Self {
        Self {
            fired: Vec::new(),
            lateness: Histogram::new(3).expect("3 significant figures is valid"),
            behind: false,
        }
    }

    /// Records the lateness of what is held and delivers it (see
    /// [`deliver`]); `false` if shutdown began first.
    fn flush(&mut self, inner: &Inner<K, P>, groups: &[Group<K, P>], now_ms: u64) -> bool
    where
        K: Hash + Eq,
    {
        if let Some(hooks) = &inner.hooks {
            // Cluster mode: deliver only what the store claimed; what it
            // refused (cancelled elsewhere, or the shard is no longer ours)
            // leaves the engine.
            let mut dropped = Vec::new();
            hooks.admit(&mut super::hooks::Round::new(&mut self.fired, &mut dropped));
            for id in dropped {
                inner.shard_of(&id).lock().discard(&id);
            }
            if self.fired.is_empty() {
                return true;
            }
        }
        let now_tick = inner.ticks.now_tick(now_ms);
        let mut oldest_ms = u64::MAX;
        for (due_tick, _, event) in &self.fired {
            let _ = self.lateness.record(now_tick.saturating_sub(*due_tick));
            oldest_ms = oldest_ms.min(event.due_ms);
        }
        inner.lateness.lock().add(&self.lateness).ok();
        self.lateness.reset();
        let late_ms = now_ms.saturating_sub(oldest_ms);
        trace::trace!(events = self.fired.len(), late_ms, "delivering a batch");
        if late_ms > BEHIND_MS && !self.behind {
            self.behind = true;
            trace::warning!(
                late_ms,
                "dispatcher behind: events leave the wheel over a second late"
            );
        }
        inner.delivering_since_ms.store(oldest_ms, Ordering::SeqCst);
        let delivered = deliver(inner, groups, &mut self.fired);
        inner.delivering_since_ms.store(u64::MAX, Ordering::SeqCst);
        delivered
    }
}

fn park<K, P>(inner: &Inner<K, P>, sleep: Option<Duration>) {
    if inner.stopping.load(Ordering::SeqCst) {
        return;
    }
    thread::park_timeout(sleep.map_or(inner.max_idle, |d| d.min(inner.max_idle)));
}

/// Hands the fired events to the groups each must reach, waiting while a
/// group is full, and empties `fired`. Returns `false` if shutdown began
/// first; what was not delivered is kept for
/// [`Engine::shutdown`](crate::Engine::shutdown) to return.
fn deliver<K: Clone, P: Clone>(
    inner: &Inner<K, P>,
    groups: &[Group<K, P>],
    fired: &mut Vec<Fired<K, P>>,
) -> bool {
    let everyone = fired.iter().all(|(_, mask, _)| *mask == u64::MAX);
    let mut delivered = true;
    for (i, group) in groups.iter().enumerate() {
        let bit = 1u64 << i;
        // The last group takes the events themselves when every group gets
        // every event (the usual case); the others take copies.
        let batch: Batch<K, P> = if everyone && i + 1 == groups.len() {
            fired.drain(..).map(|(_, _, e)| e).collect()
        } else {
            fired
                .iter()
                .filter(|(_, mask, _)| mask & bit != 0)
                .map(|(_, _, e)| e.clone())
                .collect()
        };
        let undelivered = if delivered {
            match send(inner, group, batch) {
                Ok(()) => continue,
                Err(back) => {
                    delivered = false;
                    back
                }
            }
        } else {
            batch
        };
        let mut kept = inner.undelivered.lock();
        kept.extend(undelivered.into_iter().map(|e| (group.name.clone(), e)));
    }
    fired.clear();
    delivered
}

/// Sends one batch, waiting while the group is full; gives it back if
/// shutdown began first.
fn send<K, P>(
    inner: &Inner<K, P>,
    group: &Group<K, P>,
    batch: Batch<K, P>,
) -> Result<(), Batch<K, P>> {
    if batch.is_empty() {
        return Ok(());
    }
    let len = batch.len() as u64;
    group.shared.queued.fetch_add(len, Ordering::Relaxed);
    let mut batch = batch;
    let mut blocked_since: Option<Instant> = None;
    loop {
        match group.tx.send_timeout(batch, SEND_POLL) {
            Ok(()) => {
                group.shared.wake();
                if let Some(since) = blocked_since {
                    let waited_ms =
                        since.elapsed().as_millis() as u64 + SEND_POLL.as_millis() as u64;
                    trace::info!(
                        group = &*group.name,
                        waited_ms,
                        "consumer group has room again"
                    );
                }
                return Ok(());
            }
            Err(SendTimeoutError::Timeout(back) | SendTimeoutError::Disconnected(back)) => {
                if !inner.stopping.load(Ordering::SeqCst) {
                    if blocked_since.is_none() {
                        blocked_since = Some(Instant::now());
                        trace::warning!(
                            group = &*group.name,
                            queued = group.shared.queued.load(Ordering::Relaxed),
                            "consumer group full: the dispatcher waits (backpressure)"
                        );
                    }
                    batch = back;
                    continue;
                }
                group.shared.queued.fetch_sub(len, Ordering::Relaxed);
                return Err(back);
            }
        }
    }
}
