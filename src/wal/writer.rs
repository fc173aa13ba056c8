//! The writer thread: group commit.
//!
//! Appenders frame records into striped buffers (`stripes.rs`) and never
//! touch I/O. The writer gathers every record below the sequence counter,
//! in order, writes them with one `write`, syncs them with one `fsync`
//! (policy `Always`), and only then publishes the last sequence number it
//! covered as durable, waking every waiter at once: concurrent callers
//! share one fsync.
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

pub(super) fn run(
    shared: Arc<Shared>,
    mut file: Box<dyn StorageFile>,
    mut segment_no: u64,
    mut last_seq: u64,
) {
    let mut batch: Vec<u8> = Vec::new();
    let mut taken = Vec::new();
    let mut written = segment::HEADER_BYTES as u64;
    let mut unsynced = false;
    let mut last_sync = Instant::now();
    let every = match shared.opts.sync {
        SyncPolicy::Always => None,
        SyncPolicy::EveryMs(ms) => Some(Duration::from_millis(ms.max(1))),
    };
    let counters = &shared.counters;
    loop {
        // Wait for records, a rotation, a stop, or a periodic sync.
        loop {
            let (rotate, stop) = {
                let st = shared.state.lock();
                (st.rotate_requested, st.stop)
            };
            if shared.dirty.swap(false, Ordering::SeqCst) || rotate || stop {
                break;
            }
            match every {
                Some(period) if unsynced => {
                    let left = period.saturating_sub(last_sync.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::park_timeout(left);
                }
                _ => std::thread::park(),
            }
        }
        let (rotate, stop) = {
            let mut st = shared.state.lock();
            (std::mem::take(&mut st.rotate_requested), st.stop)
        };
        batch.clear();
        match shared.stripes.take(last_seq, &mut batch, &mut taken) {
            Ok(seq) => {
                counters
                    .records
                    .fetch_add(seq - last_seq, Ordering::Relaxed);
                super::RECORDS.fetch_add(seq - last_seq, Ordering::Relaxed);
                last_seq = seq;
            }
            Err(missing) => {
                return shared.poison(&format!(
                    "record {missing} missing from the append buffers (a bug): nothing after \
                     {last_seq} is written"
                ));
            }
        }

        if !batch.is_empty() {
            let started = Instant::now();
            if let Err(e) = file.write_all(&batch) {
                return shared.poison(&format!("write failed: {e}"));
            }
            written += batch.len() as u64;
            let bytes = batch.len();
            if every.is_none() {
                if let Err(e) = file.sync() {
                    return shared.poison(&format!("fsync failed: {e}"));
                }
                counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            } else {
                unsynced = true;
            }
            counters.commits.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes_written
                .fetch_add(bytes as u64, Ordering::Relaxed);
            shared.written(bytes);
            shared.publish(last_seq);
            // One event per group commit, however many records it covers.
            let commit_us = started.elapsed().as_micros() as u64;
            trace::trace!(bytes, last_seq, commit_us, "wal commit");
            if started.elapsed() >= SLOW_SYNC {
                trace::warning!(bytes, last_seq, commit_us, "slow wal commit");
            }
            // A big batch is memory the next one can reuse, up to a point.
            if batch.capacity() > 64 << 20 {
                batch = Vec::new();
            }
        }
        let sync_due = every.is_some_and(|p| last_sync.elapsed() >= p);
        if unsynced && (sync_due || rotate || stop || written >= shared.opts.segment_bytes) {
            if let Err(e) = file.sync() {
                return shared.poison(&format!("fsync failed: {e}"));
            }
            counters.fsyncs.fetch_add(1, Ordering::Relaxed);
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
            // Everything taken up to this batch went to the old segment;
            // later appends wait in the buffers for the new one.
            st.rotated_after_seq = last_seq;
            st.rotations += 1;
            shared.rotated.notify_all();
        }
        if stop {
            shared.stopped.store(true, Ordering::SeqCst);
            shared.written(0);
            return;
        }
    }
}
