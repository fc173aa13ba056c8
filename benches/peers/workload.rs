//! The two scenarios and the exactly-once check.
//!
//! *Payment*: `n` timers scheduled at time 0, deadlines uniform in
//! [1 ms, 30 min] at 1 ms, a random 70% cancelled in random order (buyers
//! pay), then time runs until everything left has fired.
//!
//! *Flash sale*: `n` timers all due within one second (deadlines uniform in
//! [60 s, 61 s)), none cancelled: every one fires in the same second.
//!
//! Both are generated from fixed seeds, so every contender and every run
//! sees the same deadlines and the same cancel order.

use super::Fired;

/// The payment window: deadlines are uniform in `1..=WINDOW_MS`.
pub(crate) const WINDOW_MS: u64 = 30 * 60 * 1_000;

/// When the flash sale's second starts.
pub(crate) const SALE_MS: u64 = 60_000;

/// A fixed-seed xorshift: repeatable and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Which scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// 70% cancelled, deadlines over 30 minutes.
    Payment,
    /// None cancelled, all due in one second.
    FlashSale,
}

impl Scenario {
    /// Its name on the command line and in the results.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Payment => "payment",
            Scenario::FlashSale => "flash",
        }
    }

    /// The scenario called `name`.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        [Scenario::Payment, Scenario::FlashSale]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// Deadlines and cancellations of one run.
pub(crate) struct Workload {
    /// Deadline of timer `id`, ms.
    pub(crate) deadlines_ms: Vec<u64>,
    /// The ids to cancel, in the order to cancel them.
    pub(crate) cancels: Vec<u32>,
}

impl Workload {
    /// `n` timers of `scenario`.
    pub(crate) fn new(scenario: Scenario, n: usize) -> Self {
        assert!(u32::try_from(n).is_ok(), "ids are u32");
        match scenario {
            Scenario::Payment => {
                let mut rng = Rng(0x5eed_0001);
                let deadlines_ms = (0..n).map(|_| 1 + rng.below(WINDOW_MS)).collect();
                // Fisher-Yates over all ids; the first 70% are the cancels.
                let mut order: Vec<u32> = (0..n as u32).collect();
                for i in (1..n).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                order.truncate(n * 7 / 10);
                Workload {
                    deadlines_ms,
                    cancels: order,
                }
            }
            Scenario::FlashSale => {
                let mut rng = Rng(0x5eed_0002);
                let deadlines_ms = (0..n).map(|_| SALE_MS + rng.below(1_000)).collect();
                Workload {
                    deadlines_ms,
                    cancels: Vec::new(),
                }
            }
        }
    }

    /// Number of timers.
    pub(crate) fn len(&self) -> usize {
        self.deadlines_ms.len()
    }

    /// Timers that must fire.
    pub(crate) fn live(&self) -> usize {
        self.len() - self.cancels.len()
    }
}

/// What a drain that passed the check did.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Checked {
    /// The largest `fired at - deadline`, ms.
    pub(crate) max_lateness_ms: u64,
}

/// The exactly-once check: the fired set is exactly the not-cancelled set,
/// none fired early, none twice. Returns the first violation found.
pub(crate) fn check(workload: &Workload, fired: &[Fired]) -> Result<Checked, String> {
    const CANCELLED: u8 = 2;
    let mut seen = vec![0u8; workload.len()];
    for &id in &workload.cancels {
        seen[id as usize] = CANCELLED;
    }
    let mut max_lateness_ms = 0;
    for f in fired {
        let Some(slot) = seen.get_mut(f.id as usize) else {
            return Err(format!("fired id {} was never scheduled", f.id));
        };
        match *slot {
            0 => *slot = 1,
            1 => return Err(format!("timer {} fired twice", f.id)),
            _ => return Err(format!("cancelled timer {} fired", f.id)),
        }
        let deadline = workload.deadlines_ms[f.id as usize];
        if f.at_ms < deadline {
            return Err(format!(
                "timer {} fired early: at {} ms, due at {deadline} ms",
                f.id, f.at_ms
            ));
        }
        max_lateness_ms = max_lateness_ms.max(f.at_ms - deadline);
    }
    if let Some(id) = seen.iter().position(|&s| s == 0) {
        return Err(format!(
            "timer {id} never fired ({} of {} fired)",
            fired.len(),
            workload.live()
        ));
    }
    Ok(Checked { max_lateness_ms })
}
