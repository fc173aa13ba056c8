//! The append buffers: records framed by their appenders into one of
//! several buffers striped by thread, numbered from one atomic counter, and
//! gathered back into sequence order by the writer.
//!
//! An appender takes **its stripe's** lock alone: threads that share no
//! stripe never wait for each other, and no lock is global. Under it the
//! appender draws the next sequence number and frames its record straight
//! into the stripe (encoded once; the checksum, which covers the sequence
//! number, is hardware CRC-32C over a few dozen bytes: combining a
//! checksum computed outside the lock cost microseconds a record and made
//! batches 5x slower), so within a stripe records are in increasing order.
//!
//! Invariant (the cut): the writer reads the counter `n` first, then visits
//! every stripe under its lock and takes the records numbered below `n`.
//! Each of those was drawn before `n` was read and pushed in the same
//! critical section that drew it, so by the time the writer holds that
//! stripe's lock it is there: the records taken are exactly the numbers
//! after the last batch and below `n`, dense, and the writer writes them in
//! order. A hole would be a bug; it poisons the log rather than write a gap.

use super::record;
use crate::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Stripes; threads are spread over them round-robin.
const STRIPES: usize = 16;

/// One stripe, alone on its cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Stripe(Mutex<Buf>);

/// Framed records of one stripe, in increasing sequence order.
#[derive(Default)]
pub(super) struct Buf {
    bytes: Vec<u8>,
    /// Sequence number and start offset of each record in `bytes`.
    index: Vec<(u64, usize)>,
}

/// The striped append buffers and the sequence counter.
pub(super) struct Stripes {
    stripes: Box<[Stripe]>,
    next_seq: AtomicU64,
    closing: AtomicBool,
}

/// Which stripe this thread appends to.
fn my_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    MINE.with(|m| *m)
}

impl Stripes {
    /// Empty buffers; the first record appended gets `next_seq`.
    pub(super) fn new(next_seq: u64) -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            next_seq: AtomicU64::new(next_seq),
            closing: AtomicBool::new(false),
        }
    }

    /// Frames `(kind, body)` and buffers it under the next sequence number;
    /// `None` once [`close`](Self::close) was called.
    pub(super) fn push(&self, kind: u8, body: &[u8]) -> Option<u64> {
        let mut buf = self.stripes[my_stripe()].0.lock();
        if self.closing.load(Ordering::SeqCst) {
            return None;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let start = buf.bytes.len();
        record::encode(&mut buf.bytes, seq, kind, body);
        buf.index.push((seq, start));
        Some(seq)
    }

    /// Refuses every later [`push`](Self::push).
    pub(super) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Appends to `out`, in sequence order, every buffered record numbered
    /// after `after_seq` and below the counter as read now (see the module
    /// invariant). Returns the last sequence number taken (`after_seq` if
    /// none), or the first missing number if the cut found a hole.
    /// `taken` is scratch, kept by the writer between calls.
    pub(super) fn take(
        &self,
        after_seq: u64,
        out: &mut Vec<u8>,
        taken: &mut Vec<Buf>,
    ) -> Result<u64, u64> {
        let below = self.next_seq.load(Ordering::SeqCst);
        taken.resize_with(STRIPES, Buf::default);
        let mut nonempty = 0;
        let mut only = 0;
        for (i, stripe) in self.stripes.iter().enumerate() {
            let into = &mut taken[i];
            into.bytes.clear();
            into.index.clear();
            let mut buf = stripe.0.lock();
            let k = buf.index.partition_point(|&(seq, _)| seq < below);
            if k == 0 {
                continue;
            }
            if k == buf.index.len() {
                std::mem::swap(&mut *buf, into);
            } else {
                // Records drawn after the counter was read stay for the
                // next batch.
                let split = buf.index[k].1;
                into.bytes.extend_from_slice(&buf.bytes[..split]);
                into.index.extend_from_slice(&buf.index[..k]);
                buf.bytes.drain(..split);
                buf.index.drain(..k);
                for entry in &mut buf.index {
                    entry.1 -= split;
                }
            }
            nonempty += 1;
            only = i;
        }
        let count = below.saturating_sub(after_seq + 1);
        match nonempty {
            0 if count == 0 => return Ok(after_seq),
            0 => return Err(after_seq + 1),
            1 => {
                // One stripe: already in order.
                let buf = &taken[only];
                for (j, &(seq, _)) in buf.index.iter().enumerate() {
                    if seq != after_seq + 1 + j as u64 {
                        return Err(after_seq + 1 + j as u64);
                    }
                }
                if buf.index.len() as u64 != count {
                    return Err(after_seq + 1 + buf.index.len() as u64);
                }
                out.extend_from_slice(&buf.bytes);
                return Ok(below - 1);
            }
            _ => {}
        }
        // Several stripes: place each record by its number, then copy in
        // order. `usize::MAX` marks a slot no record filled.
        let mut slots = vec![(usize::MAX, 0usize, 0usize); count as usize];
        for (i, buf) in taken.iter().enumerate() {
            for (j, &(seq, start)) in buf.index.iter().enumerate() {
                let end = buf.index.get(j + 1).map_or(buf.bytes.len(), |e| e.1);
                let slot = seq
                    .checked_sub(after_seq + 1)
                    .and_then(|s| slots.get_mut(s as usize))
                    .ok_or(after_seq + 1)?;
                *slot = (i, start, end);
            }
        }
        for (n, &(i, start, end)) in slots.iter().enumerate() {
            if i == usize::MAX {
                return Err(after_seq + 1 + n as u64);
            }
            out.extend_from_slice(&taken[i].bytes[start..end]);
        }
        Ok(below - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_from_many_threads_come_out_dense_in_order_and_decodable() {
        let stripes = std::sync::Arc::new(Stripes::new(1));
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let stripes = stripes.clone();
                std::thread::spawn(move || {
                    for i in 0..500u32 {
                        stripes.push(t, &i.to_le_bytes()).unwrap();
                    }
                })
            })
            .collect();
        let (mut out, mut taken, mut last) = (Vec::new(), Vec::new(), 0);
        while threads.iter().any(|t| !t.is_finished()) {
            last = stripes.take(last, &mut out, &mut taken).unwrap();
        }
        for t in threads {
            t.join().unwrap();
        }
        last = stripes.take(last, &mut out, &mut taken).unwrap();
        assert_eq!(last, 4_000);
        let mut at = 0;
        for expected in 1..=4_000u64 {
            let (r, size) = record::decode(&out[at..], 1024).unwrap();
            assert_eq!(r.seq, expected);
            at += size;
        }
        assert_eq!(at, out.len());
        stripes.close();
        assert_eq!(stripes.push(1, b"late"), None);
    }
}
