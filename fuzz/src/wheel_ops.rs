//! `wheel_ops`: arbitrary bytes as a sequence of wheel operations, checked
//! against a `BTreeMap` model after every step. Panics on any mismatch.

use duewheel::TimerKey;
use duewheel::wheel::{MAX_DELAY_TICKS, Wheel};
use std::collections::BTreeMap;

/// Reads the input front to back; runs out into zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *b
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| (acc << 8) | u64::from(self.u8()))
    }
    /// A tick offset that likes level boundaries.
    fn delta(&mut self) -> u64 {
        match self.u8() % 6 {
            0 => u64::from(self.u8()),
            1 => 64u64
                .pow(u32::from(self.u8() % 7))
                .wrapping_add(u64::from(self.u8() % 3))
                .wrapping_sub(1),
            2 => MAX_DELAY_TICKS
                .wrapping_add(u64::from(self.u8() % 3))
                .wrapping_sub(1),
            3 => self.u64() % (1 << 40),
            4 => self.u64(),
            _ => u64::from(self.u8()) * 4096,
        }
    }
}

/// Runs the operations in `data`.
pub fn run(data: &[u8]) {
    let mut input = Bytes(data);
    let mut wheel: Wheel<u64> = Wheel::new();
    let mut other: Wheel<u64> = Wheel::new();
    let mut model: BTreeMap<TimerKey, (u64, u64)> = BTreeMap::new();
    let mut keys: Vec<TimerKey> = Vec::new();
    let mut seq = 0u64;
    while !input.0.is_empty() {
        let now = wheel.now();
        match input.u8() % 6 {
            0 | 1 => {
                let deadline = if input.u8() % 4 == 0 {
                    now.saturating_sub(input.delta())
                } else {
                    now.saturating_add(input.delta())
                };
                seq += 1;
                // Every deadline is accepted (beyond the levels' reach it
                // waits in the overflow list).
                let key = wheel.insert(deadline, seq).expect("insert refused");
                assert!(!model.contains_key(&key), "live key reissued");
                model.insert(key, (deadline, seq));
                keys.push(key);
            }
            2 => {
                if let Some(&key) = keys.get(usize::from(input.u8()) % keys.len().max(1)) {
                    assert_eq!(wheel.cancel(key), model.remove(&key).map(|(_, p)| p));
                }
            }
            3 if input.u8() % 2 == 0 => {
                let key = TimerKey::from_bits(input.u64());
                assert_eq!(wheel.cancel(key), model.remove(&key).map(|(_, p)| p));
            }
            3 => {
                // A key of another wheel never reaches this wheel's timers.
                let key = other.insert(input.delta(), 0).expect("insert refused");
                assert!(!model.contains_key(&key), "foreign key collides");
                assert_eq!(wheel.cancel(key), None);
            }
            4 => {
                if let Some(&key) = keys.get(usize::from(input.u8()) % keys.len().max(1)) {
                    let deadline = now.saturating_add(input.delta());
                    let ok = wheel.reschedule(key, deadline).is_ok();
                    match model.get_mut(&key) {
                        Some(entry) => {
                            assert!(ok);
                            entry.0 = deadline;
                        }
                        None => assert!(!ok),
                    }
                }
            }
            _ => {
                let to = now.saturating_add(input.delta());
                let limit = if input.u8() % 2 == 0 {
                    usize::MAX
                } else {
                    usize::from(input.u8() % 8)
                };
                let mut fired = Vec::new();
                let done = wheel.advance_bounded(to, limit, |t| fired.push(t));
                let mut last = 0;
                for t in &fired {
                    assert!(t.deadline <= to, "fired early");
                    assert!(t.deadline >= last, "out of order");
                    last = t.deadline;
                    assert_eq!(
                        model.remove(&t.key),
                        Some((t.deadline, t.payload)),
                        "fired twice or unknown"
                    );
                }
                if done.complete {
                    assert!(
                        model.values().all(|(d, _)| *d > to),
                        "due timer left behind"
                    );
                    assert_eq!(wheel.now(), to);
                }
            }
        }
        assert_eq!(wheel.len(), model.len());
    }
    let mut rest = 0;
    wheel.advance_to(u64::MAX, |_| rest += 1);
    assert_eq!(rest, model.len());
}
