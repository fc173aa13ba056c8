//! Waiting for a condition in tests, with a limit.

use std::time::{Duration, Instant};

/// Waits until `f` holds, polling every 20 ms; panics naming `what` after
/// `within`.
pub fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
