//! In-process stand-ins for the platform's services.
//!
//! Three consumer groups, each on its own thread, receive every timer event
//! (the engine's groups each get every event), and the checkout runs on the
//! driver's thread:
//!
//! - **checkout** places orders (reserve stock, then schedule the payment
//!   deadline with a reminder) and takes payments: a payment cancels the
//!   timer first; `Cancelled` means it was in time and the order is marked
//!   paid, `AlreadyFired` means the expiry won and the payment is refunded;
//! - **orders** acts on `Expired`: if the gateway still says "pending" it
//!   re-checks later (snooze, doubling backoff, at most `max_snoozes`),
//!   otherwise it cancels the order by a conditional update on id, state and
//!   version, then acks;
//! - **inventory** releases a cancelled order's stock, exactly once; it
//!   waits for the orders service's verdict on the same expiry, since only a
//!   cancelled order's stock goes back;
//! - **notifier** sends reminders, and acks expiries.
//!
//! Invariant kept by every service: it changes an order only through the
//! conditional update and the stock ledger of [`World`], and it acks an
//! expiry only once it has finished with it (a snooze instead of an ack
//! keeps the timer alive), so a crash-free run loses nothing and a
//! redelivered event is harmless (each action checks the order's state
//! first).

use super::Error;
use super::args::Config;
use super::buyers::{Plan, Sale};
use super::callers::{Answer, Call, Callers, Flight, block_on, poll_once};
use super::lockstep::{IDLE, LockStep};
use super::world::{
    NEVER, Record, SEEN_BY_INVENTORY, SEEN_BY_NOTIFIER, SEEN_BY_ORDERS, State, World,
};
use duewheel::RecvTimeoutError;
use duewheel::{
    AckError, Cancel, CancelError, Codec, Consumer, DecodeError, Event, EventKind, Scheduler,
    SnoozeError,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::task::Poll;
use std::time::Duration;

/// What the engine carries for an order: the version its timer was
/// scheduled at, for the conditional update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OrderTimer {
    pub(crate) version: u32,
}

/// In the durable log: the version, 4 bytes little-endian.
impl Codec for OrderTimer {
    fn encode(&self, out: &mut Vec<u8>) {
        self.version.encode(out);
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(Self {
            version: u32::decode(bytes)?,
        })
    }
}

/// The engine as the simulation types it: order ids and their timers.
pub(crate) type Timers = Scheduler<u64, OrderTimer>;
type Orders = Consumer<u64, OrderTimer>;
type TimerEvent = Event<u64, OrderTimer>;

/// How long inventory waits for the orders service's verdict before it
/// leaves the expiry unacked (the engine then redelivers it).
const VERDICT_WAIT: Duration = Duration::from_secs(30);

/// Most acks a service sends in one `ack_batch`: in durable mode the batch
/// pays one group commit, so a service that takes 64 ready events waits for
/// one fsync, not 64.
const ACK_BATCH: usize = 64;

/// Lateness histogram buckets: `[0]` is 0 ms, `[i]` is `2^(i-1) .. 2^i` ms.
pub(crate) const BUCKETS: usize = 24;

/// What one group received.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct Receipts {
    pub(crate) reminders: u64,
    pub(crate) expired: u64,
    /// Events with `attempt > 1` (re-checks and redeliveries).
    pub(crate) repeats: u64,
    /// Events whose `fired_at_ms < due_ms` (must stay 0).
    pub(crate) early: u64,
    /// With the manual clock, events fired a whole step or more after they
    /// were due (must stay 0: the driver settles every step).
    pub(crate) late_over_step: u64,
    pub(crate) lateness_max_ms: u64,
    #[serde(skip)]
    pub(crate) lateness_buckets: [u64; BUCKETS],
    /// Reminders and expiries that were in the group when the engine
    /// crashed, never received (`--crash-at`).
    pub(crate) lost_reminders: u64,
    pub(crate) lost_expired: u64,
}

impl Receipts {
    fn lost(&mut self, event: &TimerEvent) {
        match event.kind {
            EventKind::Reminder(_) => self.lost_reminders += 1,
            EventKind::Expired => self.lost_expired += 1,
            // A kind this simulation does not schedule.
            _ => {}
        }
    }

    fn note(&mut self, event: &TimerEvent, step_ms: Option<u64>) {
        match event.kind {
            EventKind::Reminder(_) => self.reminders += 1,
            EventKind::Expired => self.expired += 1,
            _ => {}
        }
        self.repeats += u64::from(event.attempt > 1);
        if event.fired_at_ms < event.due_ms {
            self.early += 1;
        }
        let late_ms = event.fired_at_ms.saturating_sub(event.due_ms);
        self.lateness_max_ms = self.lateness_max_ms.max(late_ms);
        if step_ms.is_some_and(|step| late_ms >= step) {
            self.late_over_step += 1;
        }
        let bucket = (64 - late_ms.leading_zeros()) as usize;
        self.lateness_buckets[bucket.min(BUCKETS - 1)] += 1;
    }

    pub(crate) fn total(&self) -> u64 {
        self.reminders + self.expired
    }
}

/// What every service reads.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) config: Arc<Config>,
    pub(crate) sale: Arc<Sale>,
    pub(crate) world: Arc<World>,
    pub(crate) timers: Timers,
}

impl Context {
    fn plan(&self, order: u64) -> &Plan {
        &self.sale.plans[order as usize]
    }

    /// With the manual clock, the step; lateness beyond it is a failure.
    fn step_ms(&self) -> Option<u64> {
        self.config
            .real_time_speed
            .is_none()
            .then_some(self.config.step_ms)
    }
}

/// A consumer group's service.
pub(crate) trait Service: Send + 'static {
    /// The group it consumes.
    const GROUP: &'static str;
    /// Handles one event; an ack it owes goes to [`Acks`], which [`work`]
    /// sends with the rest of the batch.
    fn handle(&mut self, consumer: &Orders, event: TimerEvent);
    /// What it shares with the others (the engine handle changes when a
    /// crashed engine is replaced).
    fn context(&mut self) -> &mut Context;
    fn receipts(&mut self) -> &mut Receipts;
    /// The acks this service owes, not yet sent.
    fn acks(&mut self) -> &mut Acks;
    /// Done with what it took: sends the acks it owes; with `wait`, waits
    /// until everything it sent is durable (when it stops).
    fn flush(&mut self, consumer: &Orders, wait: bool) {
        self.acks().send(consumer);
        self.acks().collect(wait);
    }
    /// `event` was in the group when the engine crashed: it dies with the
    /// engine's memory, unhandled.
    fn lost(&mut self, event: &TimerEvent) {
        self.receipts().lost(event);
    }
}

/// Runs `service` on `consumer` until stopped: in lock-step with the driver
/// on the manual clock, free-running on the real-time clock. The acks of
/// the events it takes at once go out together, [`ACK_BATCH`] at a time,
/// before it takes more (or reports idle): a batch is acked on the engine
/// it came from, and the driver never sees a step done with acks unsent
/// (taken by the engine; durable with the next fsync, see [`Acks::send`]).
/// When it stops it waits until everything it sent is durable.
pub(crate) fn work<S: Service>(
    mut service: S,
    mut consumer: Orders,
    lockstep: &LockStep,
    index: usize,
    real_time: bool,
) -> S {
    if real_time {
        loop {
            match consumer.recv_timeout(IDLE) {
                Ok(event) => {
                    service.handle(&consumer, event);
                    for event in consumer.drain_ready() {
                        service.handle(&consumer, event);
                        if service.acks().full() {
                            service.flush(&consumer, false);
                        }
                    }
                    service.flush(&consumer, false);
                }
                Err(RecvTimeoutError::Timeout) if lockstep.stopping() => {
                    service.flush(&consumer, true);
                    break;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    service.flush(&consumer, true);
                    break;
                }
            }
        }
        return service;
    }
    loop {
        let epoch = lockstep.epoch();
        let events = consumer.drain_ready();
        if !events.is_empty() {
            let crashed = lockstep.crashed();
            for event in events {
                if crashed {
                    service.lost(&event);
                } else {
                    service.handle(&consumer, event);
                    if service.acks().full() {
                        service.flush(&consumer, false);
                    }
                }
            }
            service.flush(&consumer, false);
            continue;
        }
        lockstep.report(index, epoch);
        if lockstep.stopping() {
            service.flush(&consumer, true);
            return service;
        }
        std::thread::park_timeout(IDLE);
    }
}

/// The acks a service owes: an expiry it is done with waits here until the
/// batch it came in is handled, then goes out in one `ack_batch`.
#[derive(Default)]
pub(crate) struct Acks {
    owed: Vec<TimerEvent>,
    /// Batches acked (accepted by the engine) and not yet known durable.
    sent: Vec<AckFlight>,
    /// Acks refused (a redelivered copy of a finished timer is refused
    /// with `NotInFlight`, which is harmless).
    pub(crate) refused: u64,
}

/// An `ack_batch_async` the engine accepted, waiting for the log.
type AckFlight = Pin<Box<dyn Future<Output = Vec<Result<(), AckError>>> + Send>>;

impl Acks {
    /// Owes an ack for `event`.
    fn owe(&mut self, event: TimerEvent) {
        self.owed.push(event);
    }

    /// `true` once the owed acks make a whole batch.
    fn full(&self) -> bool {
        self.owed.len() >= ACK_BATCH
    }

    /// Sends every owed ack in one `ack_batch_async`: the engine takes the
    /// acks at the call (the timers end, nothing is redelivered), and the
    /// service goes on without waiting for the log; the fsync that the
    /// checkout's next wait (or a later one) brings makes them durable. A
    /// crash before that loses only acks, whose events come again and are
    /// absorbed (each action checks the order's state first).
    fn send(&mut self, consumer: &Orders) {
        self.collect(false);
        if self.owed.is_empty() {
            return;
        }
        let mut flight: AckFlight = Box::pin(consumer.ack_batch_async(&self.owed));
        self.owed.clear();
        match poll_once(&mut flight) {
            Poll::Ready(results) => self.count(&results),
            Poll::Pending => self.sent.push(flight),
        }
    }

    /// Takes the results of batches sent before: those already durable,
    /// or with `wait`, all of them.
    fn collect(&mut self, wait: bool) {
        let mut still = Vec::new();
        for mut flight in std::mem::take(&mut self.sent) {
            let polled = if wait {
                Poll::Ready(block_on(&mut flight))
            } else {
                poll_once(&mut flight)
            };
            match polled {
                Poll::Ready(results) => self.count(&results),
                Poll::Pending => still.push(flight),
            }
        }
        self.sent = still;
    }

    fn count(&mut self, results: &[Result<(), AckError>]) {
        // `NotInFlight`, `Storage`, and whatever a later version adds
        // (`AckError` is non-exhaustive): a refusal.
        self.refused += results.iter().filter(|r| r.is_err()).count() as u64;
    }
}

/// The order service (group `orders`).
pub(crate) struct OrderService {
    ctx: Context,
    pub(crate) receipts: Receipts,
    /// Orders cancelled.
    pub(crate) cancelled: u64,
    /// Re-checks scheduled (snoozes).
    pub(crate) rechecks: u64,
    /// Orders cancelled although the gateway still said "pending": the
    /// re-checks ran out.
    pub(crate) gave_up: u64,
    /// Expiries for orders already paid or cancelled (redeliveries).
    pub(crate) already_final: u64,
    /// Conditional updates refused (must stay 0: the engine's exactly-once
    /// between cancel and fire means no payment can slip in).
    pub(crate) refused_updates: u64,
    /// Snoozes or states the engine or the table refused unexpectedly.
    pub(crate) anomalies: u64,
    pub(crate) acks: Acks,
    /// Snoozes the engine took, not yet known durable: waited for with the
    /// batch's acks, so a batch's snoozes and acks share one fsync.
    snoozing: Vec<Snoozing>,
}

/// A snooze the engine took, waiting for the log.
type Snoozing = Pin<Box<dyn Future<Output = Result<(), SnoozeError>> + Send>>;

impl OrderService {
    pub(crate) fn new(ctx: Context) -> Self {
        Self {
            ctx,
            receipts: Receipts::default(),
            cancelled: 0,
            rechecks: 0,
            gave_up: 0,
            already_final: 0,
            refused_updates: 0,
            anomalies: 0,
            acks: Acks::default(),
            snoozing: Vec::new(),
        }
    }

    /// Publishes that this service is done with `attempt` of `record`'s
    /// expiry (inventory waits for it).
    fn decided(&self, record: &Record, attempt: u32) {
        record.decided_attempt.fetch_max(attempt, SeqCst);
        self.ctx.world.verdicts.announce();
    }
}

impl Service for OrderService {
    const GROUP: &'static str = "orders";

    fn context(&mut self) -> &mut Context {
        &mut self.ctx
    }

    fn receipts(&mut self) -> &mut Receipts {
        &mut self.receipts
    }

    fn acks(&mut self) -> &mut Acks {
        &mut self.acks
    }

    /// Sends the acks and takes the snoozes' results as they become
    /// durable, like the acks' (all of them with `wait`).
    fn flush(&mut self, consumer: &Orders, wait: bool) {
        self.acks.send(consumer);
        self.acks.collect(wait);
        let mut still = Vec::new();
        for mut snooze in std::mem::take(&mut self.snoozing) {
            let polled = if wait {
                Poll::Ready(block_on(&mut snooze))
            } else {
                poll_once(&mut snooze)
            };
            match polled {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => self.anomalies += 1,
                Poll::Pending => still.push(snooze),
            }
        }
        self.snoozing = still;
    }

    fn handle(&mut self, consumer: &Orders, event: TimerEvent) {
        self.receipts.note(&event, self.ctx.step_ms());
        if event.kind != EventKind::Expired {
            return; // reminders are the notifier's
        }
        let record = self.ctx.world.record(event.id);
        record.seen.fetch_or(SEEN_BY_ORDERS, SeqCst);
        match record.state().0 {
            State::Unpaid => {}
            State::Paid | State::Cancelled => {
                self.already_final += 1;
                self.decided(record, event.attempt);
                self.acks.owe(event);
                return;
            }
            State::Absent | State::Rejected => {
                self.anomalies += 1;
                self.decided(record, event.attempt);
                return;
            }
        }
        let now_ms = self.ctx.timers.now_ms();
        if self.ctx.plan(event.id).gateway_pending(now_ms) {
            let taken = record.snoozes.load(SeqCst);
            if taken < self.ctx.config.max_snoozes {
                let delay_ms = self.ctx.config.backoff_ms(u32::from(taken));
                record.recheck_at_ms.store(now_ms + delay_ms, SeqCst);
                // Taken at the first poll; its wait for the log is left
                // for [`Service::flush`], with the batch's acks.
                let mut snooze: Snoozing =
                    Box::pin(consumer.snooze_async(&event, Duration::from_millis(delay_ms)));
                match poll_once(&mut snooze) {
                    ready @ (Poll::Pending | Poll::Ready(Ok(()))) => {
                        if ready.is_pending() {
                            self.snoozing.push(snooze);
                        }
                        record.snoozes.fetch_add(1, SeqCst);
                        self.rechecks += 1;
                        self.decided(record, event.attempt);
                        return;
                    }
                    // Our own bound equals the engine's, so the engine
                    // refusing means they disagree: cancel, and count it.
                    Poll::Ready(Err(SnoozeError::LimitReached { .. })) => self.anomalies += 1,
                    // `NotInFlight`, `Storage`, or a later refusal.
                    Poll::Ready(Err(_)) => {
                        self.anomalies += 1;
                        self.decided(record, event.attempt);
                        return;
                    }
                }
            } else {
                self.gave_up += 1;
            }
        }
        // UPDATE orders SET state = 'cancelled' WHERE id = ? AND
        // state = 'unpaid' AND version = ?
        match record.update(State::Unpaid, event.payload.version, State::Cancelled) {
            Ok(_) => {
                record.cancelled_at_ms.store(now_ms, SeqCst);
                record.cancels.fetch_add(1, SeqCst);
                self.cancelled += 1;
            }
            Err(_) => self.refused_updates += 1,
        }
        self.decided(record, event.attempt);
        self.acks.owe(event);
    }
}

/// The inventory service (group `inventory`).
pub(crate) struct Inventory {
    ctx: Context,
    pub(crate) receipts: Receipts,
    /// Cancelled orders whose stock went back.
    pub(crate) released: u64,
    /// Expiries the order service answered with a re-check: nothing to do.
    pub(crate) skipped_rechecks: u64,
    /// Expiries of orders already released or paid (redeliveries).
    pub(crate) already_handled: u64,
    /// No verdict within [`VERDICT_WAIT`]: left unacked (must stay 0).
    pub(crate) verdict_timeouts: u64,
    pub(crate) anomalies: u64,
    pub(crate) acks: Acks,
}

impl Inventory {
    pub(crate) fn new(ctx: Context) -> Self {
        Self {
            ctx,
            receipts: Receipts::default(),
            released: 0,
            skipped_rechecks: 0,
            already_handled: 0,
            verdict_timeouts: 0,
            anomalies: 0,
            acks: Acks::default(),
        }
    }
}

impl Service for Inventory {
    const GROUP: &'static str = "inventory";

    fn context(&mut self) -> &mut Context {
        &mut self.ctx
    }

    fn receipts(&mut self) -> &mut Receipts {
        &mut self.receipts
    }

    fn acks(&mut self) -> &mut Acks {
        &mut self.acks
    }

    fn handle(&mut self, _consumer: &Orders, event: TimerEvent) {
        self.receipts.note(&event, self.ctx.step_ms());
        if event.kind != EventKind::Expired {
            return;
        }
        let world = &self.ctx.world;
        let record = world.record(event.id);
        record.seen.fetch_or(SEEN_BY_INVENTORY, SeqCst);
        let verdict = || {
            matches!(record.state().0, State::Paid | State::Cancelled)
                || record.decided_attempt.load(SeqCst) >= event.attempt
        };
        if !world.verdicts.wait(VERDICT_WAIT, verdict) {
            self.verdict_timeouts += 1;
            return;
        }
        match record.state().0 {
            State::Cancelled => {
                if record
                    .releases
                    .compare_exchange(0, 1, SeqCst, SeqCst)
                    .is_ok()
                {
                    world.stock.release(record);
                    self.released += 1;
                } else {
                    self.already_handled += 1;
                }
                self.acks.owe(event);
            }
            State::Paid => {
                self.already_handled += 1;
                self.acks.owe(event);
            }
            // The order service snoozed this expiry; it comes again.
            State::Unpaid => self.skipped_rechecks += 1,
            State::Absent | State::Rejected => self.anomalies += 1,
        }
    }
}

/// The notification service (group `notifier`).
pub(crate) struct Notifier {
    ctx: Context,
    pub(crate) receipts: Receipts,
    pub(crate) sent: u64,
    /// Reminders received for an order already reminded, not sent again.
    pub(crate) duplicates: u64,
    pub(crate) acks: Acks,
}

impl Notifier {
    pub(crate) fn new(ctx: Context) -> Self {
        Self {
            ctx,
            receipts: Receipts::default(),
            sent: 0,
            duplicates: 0,
            acks: Acks::default(),
        }
    }
}

impl Service for Notifier {
    const GROUP: &'static str = "notifier";

    fn context(&mut self) -> &mut Context {
        &mut self.ctx
    }

    fn receipts(&mut self) -> &mut Receipts {
        &mut self.receipts
    }

    fn acks(&mut self) -> &mut Acks {
        &mut self.acks
    }

    fn lost(&mut self, event: &TimerEvent) {
        self.receipts.lost(event);
        if let EventKind::Reminder(_) = event.kind {
            let record = self.ctx.world.record(event.id);
            record.reminders_lost.fetch_add(1, SeqCst);
        }
    }

    fn handle(&mut self, _consumer: &Orders, event: TimerEvent) {
        self.receipts.note(&event, self.ctx.step_ms());
        let record = self.ctx.world.record(event.id);
        match event.kind {
            // Sent at most once per order: the reminder's record is the
            // idempotency key. A second copy comes only after a crash (the
            // engine logs a reminder's firing without waiting for it, so
            // one the notifier had handled can fire again from the log).
            EventKind::Reminder(_) if record.reminders.load(SeqCst) > 0 => {
                self.duplicates += 1;
            }
            EventKind::Reminder(_) => {
                // "Your order closes in 5 minutes." The checks compare when
                // it left the wheel with when the order was paid.
                record
                    .reminded_at_ms
                    .store(self.ctx.timers.now_ms(), SeqCst);
                record.reminder_fired_ms.store(event.fired_at_ms, SeqCst);
                record.reminders.fetch_add(1, SeqCst);
                self.sent += 1;
            }
            EventKind::Expired => {
                record.seen.fetch_or(SEEN_BY_NOTIFIER, SeqCst);
                self.acks.owe(event);
            }
            // A kind this simulation does not schedule: done with it.
            _ => self.acks.owe(event),
        }
    }
}

/// Order placement and the payment service, on the driver's thread.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Checkout {
    /// Orders given a payment deadline.
    pub(crate) scheduled: u64,
    /// Orders turned away: not enough stock left.
    pub(crate) sold_out: u64,
    /// Orders turned away: the engine refused the timer (`Full`, ...).
    pub(crate) engine_refused: u64,
    /// Payments that cancelled the timer in time: order paid.
    pub(crate) paid: u64,
    /// Of those, paid after at least one re-check.
    pub(crate) paid_after_recheck: u64,
    /// Payments that found the expiry had won (`AlreadyFired`): refunded.
    pub(crate) refunded: u64,
    /// Payments that found no timer (`NotFound`) for an order still unpaid:
    /// refunded (must stay 0: a timer was lost).
    pub(crate) not_found: u64,
    /// Payments that found no timer for an order already cancelled:
    /// refunded. Expected only after a crash (the engine's memory of fired
    /// ids is not durable); 0 otherwise.
    pub(crate) not_found_cancelled: u64,
    /// Payments for orders turned away at arrival.
    pub(crate) for_rejected: u64,
    /// Cancel won but the order was not unpaid (must stay 0).
    pub(crate) refused_updates: u64,
    /// Engine errors on cancel (must stay 0).
    pub(crate) errors: u64,
    /// Calls accepted and still waiting for the log, with the time they
    /// were made at: their answers are taken at [`Checkout::finish`].
    #[serde(skip)]
    waiting: Vec<(Vec<Call>, Flight, u64)>,
}

impl Checkout {
    /// Orders `orders` arrive, in this order: each reserves its stock, then
    /// (on `callers`) schedules its deadline and reminder. Without stock or
    /// a timer an order is turned away.
    pub(crate) fn place(
        &mut self,
        ctx: &Context,
        callers: &Callers,
        orders: &[u32],
    ) -> Result<(), Error> {
        let world = &ctx.world;
        let mut calls = Vec::with_capacity(orders.len());
        for &order in orders {
            let plan = ctx.plan(u64::from(order));
            let record = world.record(u64::from(order));
            if !world.stock.reserve(record, plan.qty) {
                world.place(record, false);
                self.sold_out += 1;
                continue;
            }
            world.place(record, true);
            calls.push(Call::Schedule {
                order,
                deadline_ms: plan.deadline_ms,
                remind_before_ms: ctx.config.remind_before_ms,
            });
        }
        self.make(ctx, callers, calls)
    }

    /// Makes `calls` (see [`Callers::start`]): the answers already known
    /// are taken now, the rest at [`finish`](Self::finish).
    fn make(&mut self, ctx: &Context, callers: &Callers, calls: Vec<Call>) -> Result<(), Error> {
        let mut flight = callers.start(&ctx.timers, &calls)?;
        let now_ms = ctx.timers.now_ms();
        for (at, answer) in flight.take_ready() {
            self.answered(ctx, calls[at], answer, now_ms)?;
        }
        self.waiting.push((calls, flight, now_ms));
        Ok(())
    }

    /// Takes the answers of every call still waiting for the log.
    pub(crate) fn finish(&mut self, ctx: &Context) -> Result<(), Error> {
        for (calls, flight, now_ms) in std::mem::take(&mut self.waiting) {
            for (at, answer) in flight.finish()? {
                self.answered(ctx, calls[at], answer, now_ms)?;
            }
        }
        Ok(())
    }

    /// What `call`, made at `now_ms`, was answered.
    fn answered(
        &mut self,
        ctx: &Context,
        call: Call,
        answer: Answer,
        now_ms: u64,
    ) -> Result<(), Error> {
        match (call, answer) {
            (Call::Schedule { .. }, Answer::Scheduled(true)) => self.scheduled += 1,
            (Call::Schedule { order, .. }, Answer::Scheduled(false)) => {
                let record = ctx.world.record(u64::from(order));
                ctx.world.reject(record);
                ctx.world.stock.release(record);
                self.engine_refused += 1;
            }
            (Call::Cancel { order }, Answer::Cancelled(answer)) => {
                self.paid_or_refunded(ctx, order, answer, now_ms);
            }
            _ => {
                return Err(Error::Run(
                    "a checkout call got another call's answer".into(),
                ));
            }
        }
        Ok(())
    }

    /// The payments of `orders` reach the platform: each cancels its
    /// order's timer (on `callers`), and the answer decides paid or
    /// refunded.
    pub(crate) fn pay(
        &mut self,
        ctx: &Context,
        callers: &Callers,
        orders: &[u32],
    ) -> Result<(), Error> {
        let mut calls = Vec::with_capacity(orders.len());
        for &order in orders {
            match ctx.world.record(u64::from(order)).state().0 {
                State::Unpaid | State::Cancelled => calls.push(Call::Cancel { order }),
                State::Rejected => self.for_rejected += 1,
                State::Absent | State::Paid => self.errors += 1,
            }
        }
        self.make(ctx, callers, calls)
    }

    fn paid_or_refunded(
        &mut self,
        ctx: &Context,
        order: u32,
        answer: Result<Cancel<OrderTimer>, CancelError>,
        now_ms: u64,
    ) {
        let record = ctx.world.record(u64::from(order));
        match answer {
            Ok(Cancel::Cancelled(timer)) => {
                match record.update(State::Unpaid, timer.version, State::Paid) {
                    Ok(_) => {
                        record.paid_at_ms.store(now_ms, SeqCst);
                        ctx.world.stock.sell(record);
                        self.paid += 1;
                        self.paid_after_recheck += u64::from(record.snoozes.load(SeqCst) > 0);
                    }
                    Err(_) => self.refused_updates += 1,
                }
            }
            Ok(Cancel::AlreadyFired) => {
                record.refunds.fetch_add(1, SeqCst);
                self.refunded += 1;
            }
            // The engine remembers fired ids in memory only, so after a
            // crash it no longer knows the timer of an order cancelled
            // before: the order table does.
            Ok(Cancel::NotFound) if record.state().0 == State::Cancelled => {
                record.refunds.fetch_add(1, SeqCst);
                self.not_found_cancelled += 1;
            }
            Ok(Cancel::NotFound) => {
                record.refunds.fetch_add(1, SeqCst);
                self.not_found += 1;
            }
            Err(_) => self.errors += 1,
        }
    }

    /// With the manual clock: `true` if a payment reaching the platform at
    /// `paid_ms`, during the step that starts at `step_ms`, comes after one
    /// of its order's own timer stages in that step (reminder, deadline,
    /// re-check). The driver then takes it after the step's dispatch, so the
    /// engine sees the same order of things as simulated time does.
    pub(crate) fn comes_after_a_stage(
        ctx: &Context,
        order: u32,
        step_ms: u64,
        paid_ms: u64,
    ) -> bool {
        let plan = ctx.plan(u64::from(order));
        let record = ctx.world.record(u64::from(order));
        let recheck_ms = record.recheck_at_ms.load(SeqCst);
        [plan.reminder_ms(&ctx.config), plan.deadline_ms, recheck_ms]
            .into_iter()
            .any(|due_ms| due_ms != NEVER && step_ms < due_ms && due_ms <= paid_ms)
    }
}
