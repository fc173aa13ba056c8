//! The platform's shared state: the order table, the stock ledger, and a
//! record per order of what each service did and when. The services change
//! it; the checks read it at the end.
//!
//! Invariants:
//! - an order's state changes only by a conditional update on its id, its
//!   expected state and its version (`UPDATE orders SET state = ..., version
//!   = version + 1 WHERE id = ? AND state = ? AND version = ?`), so of a
//!   payment and a cancellation racing for one order at most one wins;
//! - stock moves only between `available`, an order's reservation and
//!   `sold`, each move taking the reservation whole (`swap(0)`), so a unit
//!   is never counted twice and `initial = available + reserved + sold`
//!   holds at every instant; `available` never goes below zero (a
//!   reservation that does not fit is refused).

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

/// States of an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Not arrived (yet).
    Absent = 0,
    /// Waiting for payment: its timer is pending.
    Unpaid = 1,
    /// Paid in time.
    Paid = 2,
    /// Cancelled unpaid after its window closed.
    Cancelled = 3,
    /// Turned away on arrival: sold out, or the engine was full.
    Rejected = 4,
}

impl State {
    fn from_bits(bits: u64) -> Self {
        match bits & 0xff {
            1 => Self::Unpaid,
            2 => Self::Paid,
            3 => Self::Cancelled,
            4 => Self::Rejected,
            _ => Self::Absent,
        }
    }
}

/// Bits of [`Record::seen`]: which groups received an `Expired` for it.
pub(crate) const SEEN_BY_ORDERS: u8 = 1;
pub(crate) const SEEN_BY_INVENTORY: u8 = 2;
pub(crate) const SEEN_BY_NOTIFIER: u8 = 4;
pub(crate) const SEEN_BY_ALL: u8 = 7;

/// Marks "never" in the `*_ms` fields.
pub(crate) const NEVER: u64 = u64::MAX;

/// What happened to one order.
#[derive(Debug)]
pub(crate) struct Record {
    /// `version << 8 | state`: one word, so the conditional update is one
    /// compare-and-swap.
    row: AtomicU64,
    /// Engine time when the payment service marked it paid.
    pub(crate) paid_at_ms: AtomicU64,
    /// Engine time when the order service cancelled it.
    pub(crate) cancelled_at_ms: AtomicU64,
    /// Engine time when the notifier sent its reminder.
    pub(crate) reminded_at_ms: AtomicU64,
    /// When the reminder left the wheel (engine clock).
    pub(crate) reminder_fired_ms: AtomicU64,
    /// When the order service will look again (a snooze's end).
    pub(crate) recheck_at_ms: AtomicU64,
    /// Latest expiry attempt the order service decided on.
    pub(crate) decided_attempt: AtomicU32,
    /// Units reserved for it and not yet sold or released.
    pub(crate) reserved: AtomicU32,
    /// Successful cancellations (must end 0 or 1).
    pub(crate) cancels: AtomicU8,
    /// Stock releases (must end 0 or 1).
    pub(crate) releases: AtomicU8,
    /// Reminders sent.
    pub(crate) reminders: AtomicU8,
    /// Reminders lost in the crashed engine's groups (`--crash-at`).
    pub(crate) reminders_lost: AtomicU8,
    /// Re-checks the order service took.
    pub(crate) snoozes: AtomicU8,
    /// Payments refunded because the expiry won.
    pub(crate) refunds: AtomicU8,
    /// `SEEN_BY_*` bits.
    pub(crate) seen: AtomicU8,
}

impl Record {
    fn new() -> Self {
        Self {
            row: AtomicU64::new(0),
            paid_at_ms: AtomicU64::new(NEVER),
            cancelled_at_ms: AtomicU64::new(NEVER),
            reminded_at_ms: AtomicU64::new(NEVER),
            reminder_fired_ms: AtomicU64::new(NEVER),
            recheck_at_ms: AtomicU64::new(NEVER),
            decided_attempt: AtomicU32::new(0),
            reserved: AtomicU32::new(0),
            cancels: AtomicU8::new(0),
            releases: AtomicU8::new(0),
            reminders: AtomicU8::new(0),
            reminders_lost: AtomicU8::new(0),
            snoozes: AtomicU8::new(0),
            refunds: AtomicU8::new(0),
            seen: AtomicU8::new(0),
        }
    }

    /// The order's state and version.
    pub(crate) fn state(&self) -> (State, u32) {
        let row = self.row.load(SeqCst);
        (State::from_bits(row), (row >> 8) as u32)
    }

    /// The conditional update: moves the order from `from` at `version` to
    /// `to` at `version + 1`. On refusal, returns what the row holds.
    pub(crate) fn update(&self, from: State, version: u32, to: State) -> Result<u32, (State, u32)> {
        let expected = (u64::from(version) << 8) | from as u64;
        let next = (u64::from(version + 1) << 8) | to as u64;
        self.row
            .compare_exchange(expected, next, SeqCst, SeqCst)
            .map(|_| version + 1)
            .map_err(|row| (State::from_bits(row), (row >> 8) as u32))
    }
}

/// The stock ledger (see the module invariants).
#[derive(Debug)]
pub(crate) struct Stock {
    pub(crate) initial: u64,
    available: AtomicI64,
    sold: AtomicU64,
    /// Lowest `available` ever seen.
    low: AtomicI64,
    /// Moves of a reservation that was already gone (must stay 0).
    pub(crate) empty_moves: AtomicU64,
}

impl Stock {
    fn new(initial: u64) -> Self {
        let initial_i = i64::try_from(initial).unwrap_or(i64::MAX);
        Self {
            initial,
            available: AtomicI64::new(initial_i),
            sold: AtomicU64::new(0),
            low: AtomicI64::new(initial_i),
            empty_moves: AtomicU64::new(0),
        }
    }

    /// Reserves `qty` units for `record`'s order, if that many are left.
    pub(crate) fn reserve(&self, record: &Record, qty: u32) -> bool {
        let qty_i = i64::from(qty);
        let taken = self
            .available
            .fetch_update(SeqCst, SeqCst, |a| (a >= qty_i).then_some(a - qty_i));
        match taken {
            Ok(before) => {
                self.low.fetch_min(before - qty_i, SeqCst);
                record.reserved.store(qty, SeqCst);
                true
            }
            Err(_) => false,
        }
    }

    /// Gives a cancelled (or turned-away) order's units back.
    pub(crate) fn release(&self, record: &Record) {
        match record.reserved.swap(0, SeqCst) {
            0 => {
                self.empty_moves.fetch_add(1, SeqCst);
            }
            qty => {
                self.available.fetch_add(i64::from(qty), SeqCst);
            }
        }
    }

    /// A paid order's units are sold.
    pub(crate) fn sell(&self, record: &Record) {
        match record.reserved.swap(0, SeqCst) {
            0 => {
                self.empty_moves.fetch_add(1, SeqCst);
            }
            qty => {
                self.sold.fetch_add(u64::from(qty), SeqCst);
            }
        }
    }

    pub(crate) fn available(&self) -> i64 {
        self.available.load(SeqCst)
    }

    pub(crate) fn sold(&self) -> u64 {
        self.sold.load(SeqCst)
    }

    pub(crate) fn lowest(&self) -> i64 {
        self.low.load(SeqCst)
    }
}

/// Lets the inventory service wait for the order service's verdict on an
/// expiry (what it does depends on whether the order was cancelled).
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    lock: Mutex<()>,
    changed: Condvar,
}

impl Verdicts {
    /// Wakes the waiters; call after recording a verdict.
    pub(crate) fn announce(&self) {
        drop(self.lock.lock());
        self.changed.notify_all();
    }

    /// Waits until `ready()` or `timeout`; returns `ready()`.
    pub(crate) fn wait(&self, timeout: Duration, ready: impl Fn() -> bool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut guard = self.lock.lock();
        while !ready() {
            if self.changed.wait_until(&mut guard, deadline).timed_out() {
                return ready();
            }
        }
        true
    }
}

/// Everything the services share.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) records: Vec<Record>,
    pub(crate) stock: Stock,
    pub(crate) verdicts: Verdicts,
}

impl World {
    /// A world of `orders` absent orders and `stock` units. Every record is
    /// written here, so their memory is resident before the engine starts
    /// (the engine's own growth is then what the RSS shows).
    pub(crate) fn new(orders: usize, stock: u64) -> Self {
        Self {
            records: (0..orders).map(|_| Record::new()).collect(),
            stock: Stock::new(stock),
            verdicts: Verdicts::default(),
        }
    }

    pub(crate) fn record(&self, order: u64) -> &Record {
        &self.records[order as usize]
    }

    /// Places an order: `Absent -> Unpaid` at version 1, or `Rejected`.
    pub(crate) fn place(&self, record: &Record, accepted: bool) {
        let state = if accepted {
            State::Unpaid
        } else {
            State::Rejected
        };
        record.row.store((1 << 8) | state as u64, SeqCst);
    }

    /// Orders whose reminder was lost in a crash and never sent.
    pub(crate) fn reminders_lost(&self) -> u64 {
        self.records
            .iter()
            .filter(|r| r.reminders_lost.load(SeqCst) > 0 && r.reminders.load(SeqCst) == 0)
            .count() as u64
    }

    /// Turns away an order that was placed but could not get a timer.
    pub(crate) fn reject(&self, record: &Record) {
        let (state, version) = record.state();
        let _ = record.update(state, version, State::Rejected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_update_lets_only_one_writer_win() {
        let world = World::new(1, 10);
        let r = world.record(0);
        world.place(r, true);
        assert_eq!(r.update(State::Unpaid, 1, State::Paid), Ok(2));
        assert_eq!(
            r.update(State::Unpaid, 1, State::Cancelled),
            Err((State::Paid, 2))
        );
    }

    #[test]
    fn stock_never_goes_negative_and_moves_each_reservation_once() {
        let world = World::new(2, 3);
        let (a, b) = (world.record(0), world.record(1));
        assert!(world.stock.reserve(a, 2));
        assert!(!world.stock.reserve(b, 2), "only one unit left");
        world.stock.sell(a);
        world.stock.release(a);
        assert_eq!(world.stock.empty_moves.load(SeqCst), 1);
        assert_eq!((world.stock.available(), world.stock.sold()), (1, 2));
        assert_eq!(world.stock.lowest(), 1);
    }
}
