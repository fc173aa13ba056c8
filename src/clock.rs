//! Clocks, deadlines, and the one place where time becomes ticks.
//!
//! The engine measures time in **UTC milliseconds** (absolute, so a deadline
//! stored on disk means the same after a restart) and hands the wheel
//! **ticks** of `tick_ms` milliseconds. Invariants kept here and nowhere else:
//!
//! - a deadline becomes a tick by rounding **up** ([`Ticks::deadline_tick`]),
//!   and the present becomes a tick by rounding **down** ([`Ticks::now_tick`]),
//!   so a timer can only fire once `now_ms >= deadline_ms`: never early;
//! - the time a [`Clock`] reports never goes backwards, even if the system's
//!   wall clock does ([`SystemClock`] counts from a monotonic `Instant`);
//! - every sum of times saturates at `u64::MAX` ms: no step, delay or
//!   deadline wraps round to the past.

use crate::sync::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time for the engine.
///
/// Implementations must be monotonic: `now_ms` never decreases.
pub trait Clock: Send + Sync + 'static {
    /// The current time in milliseconds since the Unix epoch (UTC).
    fn now_ms(&self) -> u64;

    /// How long, in real time, until `now_ms()` reaches `until_ms`. `None`
    /// means time does not pass by itself: sleep until woken (see
    /// [`Clock::on_advance`]).
    fn time_until(&self, until_ms: u64) -> Option<Duration>;

    /// Registers `wake`, to be called whenever the clock jumps forward by
    /// command. Clocks that move by themselves ignore it.
    fn on_advance(&self, wake: Box<dyn Fn() + Send + Sync>) {
        let _ = wake;
    }
}

/// The system's clock: UTC milliseconds read once at creation, then advanced
/// by a monotonic [`Instant`], so wall-clock steps (NTP, an operator) never
/// move the engine's time backwards or make it jump.
///
/// ```
/// use duewheel::{Clock, SystemClock};
///
/// let clock = SystemClock::new();
/// let a = clock.now_ms();
/// assert!(clock.now_ms() >= a);
/// assert!(a > 1_600_000_000_000); // after September 2020
/// ```
#[derive(Clone, Debug)]
pub struct SystemClock {
    origin: Instant,
    origin_ms: u64,
}

impl SystemClock {
    /// A clock anchored to the current wall-clock time.
    pub fn new() -> Self {
        let origin_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            origin: Instant::now(),
            origin_ms,
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.origin_ms.saturating_add(elapsed)
    }

    fn time_until(&self, until_ms: u64) -> Option<Duration> {
        let target = Duration::from_millis(until_ms.saturating_sub(self.origin_ms));
        Some(target.saturating_sub(self.origin.elapsed()))
    }
}

/// A clock that moves only when told: tests and simulations drive the whole
/// engine deterministically with it. Clones share the same time.
///
/// ```
/// use duewheel::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_secs(30));
/// assert_eq!(clock.now_ms(), 31_000);
/// clock.set_ms(5); // earlier than now: ignored, time never goes back
/// assert_eq!(clock.now_ms(), 31_000);
/// ```
#[derive(Clone, Default)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Default)]
struct ManualInner {
    now_ms: AtomicU64,
    wakers: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl ManualClock {
    /// A clock standing at `now_ms` milliseconds since the Unix epoch.
    pub fn new(now_ms: u64) -> Self {
        let clock = Self::default();
        clock.inner.now_ms.store(now_ms, Ordering::SeqCst);
        clock
    }

    /// Moves time forward by `by` (rounded down to whole milliseconds). Time
    /// saturates at `u64::MAX` ms: a step past the end of time stays there
    /// rather than wrapping round to the past.
    pub fn advance(&self, by: Duration) {
        let by_ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        // `fetch_add` would wrap; the closure never refuses, so the update
        // always lands.
        let _ = self
            .inner
            .now_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now_ms| {
                Some(now_ms.saturating_add(by_ms))
            });
        self.wake();
    }

    /// Moves time forward to `now_ms`; an earlier value is ignored.
    pub fn set_ms(&self, now_ms: u64) {
        self.inner.now_ms.fetch_max(now_ms, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        for wake in self.inner.wakers.lock().iter() {
            wake();
        }
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.inner.now_ms.load(Ordering::SeqCst)
    }

    fn time_until(&self, _until_ms: u64) -> Option<Duration> {
        None
    }

    fn on_advance(&self, wake: Box<dyn Fn() + Send + Sync>) {
        self.inner.wakers.lock().push(wake);
    }
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("now_ms", &self.now_ms())
            .finish()
    }
}

/// When a timer is due: at an absolute UTC time, or after a delay from now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// Milliseconds since the Unix epoch (UTC).
    AtUnixMs(u64),
    /// This long after the engine clock's present.
    After(Duration),
}

impl Deadline {
    /// A deadline at `ms` milliseconds since the Unix epoch (UTC).
    pub const fn at_unix_ms(ms: u64) -> Self {
        Self::AtUnixMs(ms)
    }

    /// A deadline `delay` from now.
    pub const fn after(delay: Duration) -> Self {
        Self::After(delay)
    }

    /// The deadline in UTC milliseconds, given the present; a delay is rounded
    /// up to whole milliseconds (never early).
    pub fn to_unix_ms(self, now_ms: u64) -> u64 {
        match self {
            Self::AtUnixMs(ms) => ms,
            Self::After(delay) => {
                let ms = delay.as_nanos().div_ceil(1_000_000);
                now_ms.saturating_add(u64::try_from(ms).unwrap_or(u64::MAX))
            }
        }
    }
}

impl From<Duration> for Deadline {
    fn from(delay: Duration) -> Self {
        Self::After(delay)
    }
}

/// Conversion between UTC milliseconds and wheel ticks of a fixed length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticks {
    tick_ms: u64,
}

impl Ticks {
    /// `tick_ms` must be at least 1 (checked by the builder).
    pub(crate) const fn new(tick_ms: u64) -> Self {
        debug_assert!(tick_ms > 0);
        Self { tick_ms }
    }

    pub(crate) const fn tick_ms(self) -> u64 {
        self.tick_ms
    }

    /// The first tick at or after `deadline_ms`: rounding up, so that the
    /// tick's start is never before the deadline.
    pub(crate) const fn deadline_tick(self, deadline_ms: u64) -> u64 {
        deadline_ms.div_ceil(self.tick_ms)
    }

    /// The tick containing `now_ms`: rounding down, so that a tick counts as
    /// reached only once its start has passed.
    pub(crate) const fn now_tick(self, now_ms: u64) -> u64 {
        now_ms / self.tick_ms
    }

    /// The start of `tick` in UTC milliseconds.
    pub(crate) const fn start_ms(self, tick: u64) -> u64 {
        tick.saturating_mul(self.tick_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rounds_up_and_now_rounds_down() {
        let ticks = Ticks::new(10);
        assert_eq!(ticks.deadline_tick(100), 10);
        assert_eq!(ticks.deadline_tick(101), 11);
        assert_eq!(ticks.now_tick(109), 10);
        // A timer due at 101 ms sits at tick 11, which starts at 110 ms.
        assert!(ticks.start_ms(ticks.deadline_tick(101)) >= 101);
    }

    #[test]
    fn delay_rounds_up_to_whole_milliseconds() {
        assert_eq!(Deadline::after(Duration::from_micros(1)).to_unix_ms(5), 6);
        assert_eq!(Deadline::after(Duration::from_millis(3)).to_unix_ms(5), 8);
        assert_eq!(Deadline::after(Duration::MAX).to_unix_ms(5), u64::MAX);
    }

    #[test]
    fn manual_clock_never_goes_back_and_wakes_its_listeners() {
        let clock = ManualClock::new(100);
        let woken = Arc::new(AtomicU64::new(0));
        let w = woken.clone();
        clock.on_advance(Box::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        }));
        clock.set_ms(50);
        assert_eq!(clock.now_ms(), 100);
        clock.advance(Duration::from_millis(5));
        assert_eq!(clock.now_ms(), 105);
        assert_eq!(woken.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn advancing_by_duration_max_saturates_instead_of_wrapping() {
        let clock = ManualClock::new(1_000);
        clock.advance(Duration::MAX);
        assert_eq!(clock.now_ms(), u64::MAX);
        // Already at the end of time: a further step stays there.
        clock.advance(Duration::from_millis(1));
        assert_eq!(clock.now_ms(), u64::MAX);
    }

    #[test]
    fn ticks_at_the_end_of_time_do_not_overflow() {
        let ticks = Ticks::new(7);
        assert_eq!(ticks.deadline_tick(u64::MAX), u64::MAX.div_ceil(7));
        assert_eq!(ticks.start_ms(u64::MAX), u64::MAX);
        assert_eq!(ticks.now_tick(u64::MAX), u64::MAX / 7);
    }
}
