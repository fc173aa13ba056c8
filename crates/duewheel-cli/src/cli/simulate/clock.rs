//! The simulation's two clocks, and how the driver moves through time on
//! each.
//!
//! - [`ManualClock`]: time moves only when the driver says so; the run goes
//!   as fast as the machine does and replays exactly.
//! - [`ScaledClock`]: the system's monotonic clock sped up `speed` times, so
//!   the engine's dispatcher sleeps and wakes on real time (`--real-time`).
//!
//! Invariant (the engine's [`Clock`] contract): `now_ms` never decreases.
//! `ScaledClock` derives it from one `Instant` by a monotonic function, and
//! rounds down, so it never runs ahead of its own schedule.

use duewheel::{Clock, ManualClock};
use std::time::{Duration, Instant};

/// The system clock, `speed` times faster, starting at `origin_ms`.
#[derive(Clone, Debug)]
pub(crate) struct ScaledClock {
    origin: Instant,
    origin_ms: u64,
    speed: f64,
}

impl ScaledClock {
    pub(crate) fn new(origin_ms: u64, speed: f64) -> Self {
        Self {
            origin: Instant::now(),
            origin_ms,
            speed,
        }
    }
}

impl Clock for ScaledClock {
    fn now_ms(&self) -> u64 {
        let simulated_ms = self.origin.elapsed().as_secs_f64() * self.speed * 1e3;
        self.origin_ms + simulated_ms as u64
    }

    fn time_until(&self, until_ms: u64) -> Option<Duration> {
        let target_s = until_ms.saturating_sub(self.origin_ms) as f64 / 1e3 / self.speed;
        let target = Duration::try_from_secs_f64(target_s).unwrap_or(Duration::MAX);
        Some(target.saturating_sub(self.origin.elapsed()))
    }
}

/// The clock the driver moves through the sale.
#[derive(Clone, Debug)]
pub(crate) enum SimClock {
    Manual(ManualClock),
    Scaled(ScaledClock),
}

impl SimClock {
    /// Moves (manual) or waits (scaled) until the time is at least `at_ms`.
    pub(crate) fn reach(&self, at_ms: u64) {
        match self {
            Self::Manual(clock) => clock.set_ms(at_ms),
            Self::Scaled(clock) => {
                while let Some(wait) = clock.time_until(at_ms).filter(|w| !w.is_zero()) {
                    std::thread::sleep(wait);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_clock_runs_faster_and_never_back() {
        let clock = ScaledClock::new(1_000, 1_000.0);
        let a = clock.now_ms();
        std::thread::sleep(Duration::from_millis(5));
        let b = clock.now_ms();
        assert!(b >= a + 5_000, "1000x: 5 ms real is at least 5 s simulated");
        assert!(clock.time_until(b + 1_000).unwrap() <= Duration::from_millis(1));
        assert_eq!(clock.time_until(0), Some(Duration::ZERO));
    }
}
