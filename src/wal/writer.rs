//! The writer thread: group commit.
//!
//! Appenders encode records into one shared buffer under a short mutex and
//! never touch I/O. The writer swaps the buffer out, writes it with one
//! `write`, syncs it with one `fsync` (policy `Always`), and only then
//! publishes the last sequence number it covered as durable, waking every
//! waiter at once: concurrent callers share one fsync.
//!
//! Invariants:
//! - `durable_seq` only grows, and only to a sequence number whose record was
//!   written (and, under `Always`, synced) without error;
//! - after the first failed write or sync the log is **poisoned**
//!   (PostgreSQL's fsyncgate: the page cache may have dropped the data, and a
//!   retried fsync would lie): nothing is written or synced again, every
//!   waiter and every later call gets `Poisoned`, and `durable_seq` never
//!   moves again.

use super::segment;
use super::storage::StorageFile;
use super::{Shared, SyncPolicy};
use crate::trace;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// An fsync slower than this is reported (a warning, once per commit).
const SLOW_SYNC: Duration = Duration::from_millis(500);

pub(super) fn run(shared: Arc<Shared>, mut file: Box<dyn StorageFile>, mut segment_no: u64) {
    let mut spare: Vec<u8> = Vec::new();
    let mut written = segment::HEADER_BYTES as u64;
    let mut unsynced = false;
    let mut last_sync = Instant::now();
    let every = match shared.opts.sync {
        SyncPolicy::Always => None,
        SyncPolicy::EveryMs(ms) => Some(Duration::from_millis(ms.max(1))),
    };
    loop {
        let (last_seq, rotate, stop) = {
            let mut st = shared.state.lock();
            while st.buf.is_empty() && !st.stop && !st.rotate_requested {
                match every {
                    Some(period) if unsynced => {
                        let left = period.saturating_sub(last_sync.elapsed());
                        if left.is_zero() || shared.work.wait_for(&mut st, left).timed_out() {
                            break;
                        }
                    }
                    _ => shared.work.wait(&mut st),
                }
            }
            std::mem::swap(&mut st.buf, &mut spare);
            st.writing = spare.len();
            let rotate = std::mem::take(&mut st.rotate_requested);
            (st.last_appended, rotate, st.stop)
        };

        if !spare.is_empty() {
            let started = Instant::now();
            if let Err(e) = file.write_all(&spare) {
                return shared.poison(&format!("write failed: {e}"));
            }
            written += spare.len() as u64;
            let bytes = spare.len();
            spare.clear();
            if every.is_none() {
                if let Err(e) = file.sync() {
                    return shared.poison(&format!("fsync failed: {e}"));
                }
            } else {
                unsynced = true;
            }
            {
                let mut st = shared.state.lock();
                st.writing = 0;
                st.stats.commits += 1;
                st.stats.fsyncs += u64::from(every.is_none());
                st.stats.bytes_written += bytes as u64;
            }
            shared.room.notify_all();
            shared.publish(last_seq);
            // One event per group commit, however many records it covers.
            let commit_us = started.elapsed().as_micros() as u64;
            trace::trace!(bytes, last_seq, commit_us, "wal commit");
            if started.elapsed() >= SLOW_SYNC {
                trace::warning!(bytes, last_seq, commit_us, "slow wal commit");
            }
        }
        let sync_due = every.is_some_and(|p| last_sync.elapsed() >= p);
        if unsynced && (sync_due || rotate || stop || written >= shared.opts.segment_bytes) {
            if let Err(e) = file.sync() {
                return shared.poison(&format!("fsync failed: {e}"));
            }
            shared.state.lock().stats.fsyncs += 1;
            unsynced = false;
            last_sync = Instant::now();
        }
        if rotate || written >= shared.opts.segment_bytes {
            match shared.new_segment(segment_no + 1) {
                Ok(next) => {
                    file = next;
                    segment_no += 1;
                    written = segment::HEADER_BYTES as u64;
                }
                Err(e) => return shared.poison(&format!("cannot start a segment: {e}")),
            }
            trace::debug!(segment = segment_no, "wal segment started");
            let mut st = shared.state.lock();
            st.segment = segment_no;
            // Everything appended up to the swap went to the old segment;
            // later appends wait in the buffer for the new one.
            st.rotated_after_seq = last_seq;
            st.rotations += 1;
            shared.rotated.notify_all();
        }
        if stop {
            shared.stopped.store(true, Ordering::SeqCst);
            return;
        }
    }
}
