//! Who buys, when, and how they pay: every random choice of a run.
//!
//! Invariant: the [`Sale`] is a pure function of the configuration and the
//! seed. It is drawn up front, in one fixed order, from one generator
//! (SplitMix64, Steele et al. 2014: tiny, fast, and good enough for
//! workloads), so a seed replays exactly and nothing else in the
//! simulation draws random numbers.
//!
//! The buyers:
//! - arrivals are front-loaded, as at a sale's opening: the rate decays
//!   exponentially over the sale (time constant a quarter of it);
//! - a payer pays at a random moment of the window; some pay in its last
//!   second, and the payment then reaches the platform up to
//!   `pay_latency` later, possibly after the deadline (the race);
//! - a pending payer pays in the last `remind_before` of the window (after
//!   the reminder), and the gateway says "pending" for a while before it
//!   confirms, possibly well after the deadline;
//! - everyone else never pays.

use super::args::Config;

/// The simulation's epoch: 2025-11-11 00:00 UTC, when the sale opens.
pub(crate) const SALE_OPENS_MS: u64 = 1_762_819_200_000;

/// A 64-bit SplitMix generator.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`; `lo` if the range is empty.
    pub(crate) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }
}

/// How a buyer behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Buyer {
    /// Pays at a random moment of the window (some in its last second).
    Pays,
    /// Pays near the end; the gateway says "pending" for a while.
    PaysPending,
    /// Never pays.
    Never,
}

/// One order's fate as drawn. Times are engine times (UTC milliseconds).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    pub(crate) arrival_ms: u64,
    pub(crate) deadline_ms: u64,
    /// When the buyer paid (or `u64::MAX`).
    pub(crate) paid_ms: u64,
    /// When the payment reaches the platform: after the network for a
    /// payer, after the gateway's "pending" for a pending payer (or
    /// `u64::MAX`).
    pub(crate) confirmed_ms: u64,
    pub(crate) qty: u32,
    pub(crate) buyer: Buyer,
    /// Paid in the window's last second.
    pub(crate) last_second: bool,
}

impl Plan {
    /// When the reminder is due.
    pub(crate) fn reminder_ms(&self, config: &Config) -> u64 {
        self.deadline_ms - config.remind_before_ms
    }

    /// `true` while the gateway answers "pending" for this order at `now_ms`.
    pub(crate) fn gateway_pending(&self, now_ms: u64) -> bool {
        self.buyer == Buyer::PaysPending && (self.paid_ms..self.confirmed_ms).contains(&now_ms)
    }
}

/// The whole sale: orders in arrival order (order id = index), and the
/// payments in the order they reach the platform.
#[derive(Debug)]
pub(crate) struct Sale {
    pub(crate) plans: Vec<Plan>,
    /// `(confirmed_ms, order)`, sorted.
    pub(crate) payments: Vec<(u64, u32)>,
}

impl Sale {
    /// Draws the sale for `config` (see the module invariant).
    pub(crate) fn draw(config: &Config) -> Self {
        let mut rng = Rng::new(config.seed);
        let n = config.orders as usize;
        let sale = config.sale_ms as f64;
        let tau = sale / 4.0;
        let tail = 1.0 - (-sale / tau).exp();
        // Inverse of the truncated exponential's distribution function.
        let mut arrivals: Vec<u64> = (0..n)
            .map(|_| {
                let at = -tau * (1.0 - rng.unit() * tail).ln();
                SALE_OPENS_MS + (at as u64).min(config.sale_ms - 1)
            })
            .collect();
        arrivals.sort_unstable();

        let mut plans = Vec::with_capacity(n);
        let mut payments = Vec::with_capacity(n);
        for (order, arrival_ms) in arrivals.into_iter().enumerate() {
            let deadline_ms = arrival_ms + config.window_ms;
            let qty = 1 + (rng.next_u64() % u64::from(config.max_qty)) as u32;
            let draw = rng.unit();
            let buyer = if draw < config.pay_ratio {
                Buyer::Pays
            } else if draw < config.pay_ratio + config.pending_ratio {
                Buyer::PaysPending
            } else {
                Buyer::Never
            };
            let mut plan = Plan {
                arrival_ms,
                deadline_ms,
                paid_ms: u64::MAX,
                confirmed_ms: u64::MAX,
                qty,
                buyer,
                last_second: false,
            };
            match buyer {
                Buyer::Pays => {
                    plan.last_second = rng.unit() < config.last_second_ratio;
                    let from = if plan.last_second {
                        deadline_ms.saturating_sub(1_000).max(arrival_ms)
                    } else {
                        arrival_ms
                    };
                    plan.paid_ms = rng.between(from, deadline_ms);
                    plan.confirmed_ms = plan.paid_ms + rng.between(0, config.pay_latency_ms + 1);
                }
                Buyer::PaysPending => {
                    let from = (deadline_ms - config.remind_before_ms).max(arrival_ms);
                    plan.paid_ms = rng.between(from, deadline_ms);
                    plan.confirmed_ms = plan.paid_ms
                        + rng.between(config.pending_min_ms, config.pending_max_ms + 1);
                }
                Buyer::Never => {}
            }
            if plan.confirmed_ms != u64::MAX {
                payments.push((plan.confirmed_ms, order as u32));
            }
            plans.push(plan);
        }
        payments.sort_unstable();
        Self { plans, payments }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_draws_the_same_numbers() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        assert_ne!(Rng::new(7).next_u64(), Rng::new(8).next_u64());
    }

    #[test]
    fn unit_stays_in_range() {
        let mut rng = Rng::new(1);
        assert!(
            (0..10_000)
                .map(|_| rng.unit())
                .all(|u| (0.0..1.0).contains(&u))
        );
        assert_eq!(rng.between(5, 5), 5);
    }
}
