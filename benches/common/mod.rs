//! Shared by the benches: time N producer threads released together.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// Starts `threads` threads running `body(t)`, releases them at once, and
/// returns the time from release until the last one finished.
pub(crate) fn time_producers<F>(threads: u64, body: impl Fn(u64) -> F) -> Duration
where
    F: FnOnce() + Send + 'static,
{
    let start = Arc::new(Barrier::new(threads as usize + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let start = start.clone();
            let work = body(t);
            thread::spawn(move || {
                start.wait();
                work();
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for w in workers {
        w.join().unwrap();
    }
    began.elapsed()
}
