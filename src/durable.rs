//! The durable mode: the engine's journal on the write-ahead log, its
//! checkpoints, and recovery at open.
//!
//! Every accepted change to a timer is logged as its **whole state** (an
//! *upsert*) or its **end** (a *remove*), keyed by the id. Replay is
//! last-writer-wins per id, so it needs no ordering across ids and is
//! idempotent: a checkpoint may copy the shards one at a time while changes
//! continue (each shard is consistent under its lock, and any later change
//! to an id writes a newer record after the checkpoint's rotation point), and
//! recovery = snapshot entries, then the log records after them, each
//! overwriting or removing the id's state.
//!
//! Deadlines are stored as absolute UTC milliseconds, never as delays, so a
//! restart neither fires early (Pulsar #22716) nor forgets how late it is:
//! overdue timers fire at once on open (catch-up), the rest wait.
//!
//! The record layout is in [`crate::journal`]; this module does not know
//! the engine's in-memory entry.

use crate::codec::{Codec, DecodeError};
use crate::error::BuildError;
use crate::error::StorageError;
use crate::journal::{
    Journal, KIND_REMOVE, KIND_UPSERT, TimerRecord, TimerState, decode_upsert, encode_upsert,
};
use crate::wal::{RecoveryReport, Source, Storage, Wal, WalError, WalOptions};
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

thread_local! {
    /// Scratch for encoding a record: no allocation per logged change.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Yields every timer to the callback it is given (one shard at a time).
pub(crate) type VisitTimers<'a, K, P> = dyn FnMut(&mut dyn FnMut(&K, &P, &TimerState)) + 'a;

/// The journal and checkpoints, type-erased for the engine.
pub(crate) trait Store<K, P>: Journal<K, P> {
    /// Writes a snapshot of every timer `visit` yields, then drops the log
    /// segments it covers.
    fn checkpoint(&self, visit: &mut VisitTimers<'_, K, P>) -> Result<(), StorageError>;
    /// Flushes, syncs and stops the log (after a final checkpoint).
    fn close(&self) -> Result<(), StorageError>;
}

/// [`Store`] on the write-ahead log.
pub(crate) struct WalStore<K, P> {
    wal: Wal,
    _types: PhantomData<fn(K, P)>,
}

impl<K: Codec, P: Codec> WalStore<K, P> {
    pub(crate) fn new(wal: Wal) -> Self {
        Self {
            wal,
            _types: PhantomData,
        }
    }
}

fn storage(_: WalError) -> StorageError {
    StorageError
}

impl<K: Codec, P: Codec> Journal<K, P> for WalStore<K, P> {
    fn upsert(&self, id: &K, payload: &P, state: &TimerState) -> Result<u64, StorageError> {
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            encode_upsert(id, payload, state, buf);
            self.wal.append(KIND_UPSERT, buf).map_err(storage)
        })
    }

    fn remove(&self, id: &K) -> Result<u64, StorageError> {
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            id.encode(buf);
            self.wal.append(KIND_REMOVE, buf).map_err(storage)
        })
    }

    fn wait(&self, seq: u64) -> Result<(), StorageError> {
        self.wal.wait(seq).map_err(storage)
    }

    #[cfg(feature = "tokio")]
    fn wait_async(
        &self,
        seq: u64,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send + '_>> {
        Box::pin(async move { self.wal.wait_async(seq).await.map_err(storage) })
    }

    fn failed(&self) -> bool {
        self.wal.is_poisoned()
    }

    fn hold(&self) -> Option<crate::wal::WakeHold<'_>> {
        Some(self.wal.hold_wakes())
    }
}

impl<K: Codec, P: Codec> Store<K, P> for WalStore<K, P> {
    fn checkpoint(&self, visit: &mut VisitTimers<'_, K, P>) -> Result<(), StorageError> {
        self.wal
            .checkpoint(|snapshot| {
                let mut buf = Vec::new();
                let mut failed = None;
                visit(&mut |id, payload, state| {
                    if failed.is_some() {
                        return;
                    }
                    buf.clear();
                    encode_upsert(id, payload, state, &mut buf);
                    if let Err(e) = snapshot.append(KIND_UPSERT, &buf) {
                        failed = Some(e);
                    }
                });
                failed.map_or(Ok(()), Err)
            })
            .map(drop)
            .map_err(storage)
    }

    fn close(&self) -> Result<(), StorageError> {
        self.wal.close().map_err(storage)
    }
}

/// Records per chunk of a shard's list: 16,384 of about 100 bytes, so a
/// chunk is a couple of MB, allocated once, never moved.
const CHUNK_LEN: usize = 16_384;

/// The timers replayed for one shard, in chunks of at most [`CHUNK_LEN`]:
/// a list that grows by whole chunks copies nothing (a `Vec` of 10M records
/// doubling copied about 1 GB and faulted its pages in twice), and restore
/// frees each chunk once it is in the shard.
pub(crate) type ShardList<K, P> = Vec<Vec<TimerRecord<K, P>>>;

/// What opening the log produced.
pub(crate) struct Opened<K, P> {
    pub(crate) store: Arc<dyn Store<K, P>>,
    /// The timers to restore, one list per shard (`shard_of` at open).
    pub(crate) shards: Vec<ShardList<K, P>>,
    pub(crate) report: RecoveryReport,
}

/// Opens the log in `storage` and replays it into `shards` lists, placing
/// each timer where `shard_of` says.
pub(crate) fn open<K, P>(
    storage: Arc<dyn Storage>,
    opts: WalOptions,
    shards: usize,
    shard_of: &dyn Fn(&K) -> usize,
) -> Result<Opened<K, P>, BuildError>
where
    K: Codec + Hash + Eq + Clone + 'static,
    P: Codec + 'static,
{
    let mut replay = Replay::<K, P>::new(shards, shard_of);
    let (wal, report) = Wal::open(storage, opts, |source, _seq, kind, body| {
        replay.apply(source, kind, body)
    })
    .map_err(|e| BuildError::Recovery(e.to_string()))?;
    Ok(Opened {
        store: Arc::new(WalStore::<K, P>::new(wal)),
        shards: replay.finish(),
        report,
    })
}

/// Replays snapshot and log into the timers to restore, last writer wins.
///
/// A snapshot holds each id at most once (a checkpoint copies every shard
/// under its lock, and an id lives in one shard), so its entries go straight
/// into their shard's list with no map: at 10M timers a map of them cost
/// most of recovery (its growth alone, in page faults). Only the log tail,
/// which may touch an id many times, goes through a map, and it is applied
/// over the snapshot at the end.
pub(crate) struct Replay<'a, K, P> {
    shards: Vec<ShardList<K, P>>,
    shard_of: &'a dyn Fn(&K) -> usize,
    /// Each id the log tail touched: its last state, `None` if removed.
    tail: FxHashMap<K, Option<TimerRecord<K, P>>>,
}

impl<'a, K: Codec + Hash + Eq + Clone, P: Codec> Replay<'a, K, P> {
    pub(crate) fn new(shards: usize, shard_of: &'a dyn Fn(&K) -> usize) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| Vec::new()).collect(),
            shard_of,
            tail: FxHashMap::default(),
        }
    }

    pub(crate) fn apply(
        &mut self,
        source: Source,
        kind: u8,
        body: &[u8],
    ) -> Result<(), DecodeError> {
        match (source, kind) {
            (Source::Snapshot, KIND_UPSERT) => {
                let timer = decode_upsert::<K, P>(body)?;
                self.place(timer);
            }
            (Source::Snapshot, KIND_REMOVE) => {
                return Err(DecodeError::new("a remove record in a snapshot"));
            }
            (Source::Log, KIND_UPSERT) => {
                let timer = decode_upsert::<K, P>(body)?;
                self.tail.insert(timer.id.clone(), Some(timer));
            }
            (Source::Log, KIND_REMOVE) => {
                self.tail.insert(K::decode(body)?, None);
            }
            (_, other) => {
                return Err(DecodeError::new(format_args!(
                    "unknown record kind {other}"
                )));
            }
        }
        Ok(())
    }

    fn place(&mut self, timer: TimerRecord<K, P>) {
        let shard = (self.shard_of)(&timer.id).min(self.shards.len() - 1);
        let list = &mut self.shards[shard];
        match list.last_mut() {
            Some(chunk) if chunk.len() < CHUNK_LEN => chunk.push(timer),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK_LEN);
                chunk.push(timer);
                list.push(chunk);
            }
        }
    }

    /// The surviving timers, per shard: the snapshot's, less every id the
    /// log touched, plus the log's last upserts.
    pub(crate) fn finish(mut self) -> Vec<ShardList<K, P>> {
        if !self.tail.is_empty() {
            for chunk in self.shards.iter_mut().flatten() {
                chunk.retain(|timer| !self.tail.contains_key(&timer.id));
            }
            for timer in std::mem::take(&mut self.tail).into_values().flatten() {
                self.place(timer);
            }
        }
        self.shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer(id: u64, deadline_ms: u64) -> TimerRecord<u64, u64> {
        TimerRecord {
            id,
            payload: id * 10,
            state: TimerState::plain(deadline_ms),
        }
    }

    fn upsert(replay: &mut Replay<'_, u64, u64>, source: Source, t: &TimerRecord<u64, u64>) {
        let mut body = Vec::new();
        encode_upsert(&t.id, &t.payload, &t.state, &mut body);
        replay.apply(source, KIND_UPSERT, &body).unwrap();
    }

    fn remove(replay: &mut Replay<'_, u64, u64>, id: u64) {
        let mut body = Vec::new();
        id.encode(&mut body);
        replay.apply(Source::Log, KIND_REMOVE, &body).unwrap();
    }

    #[test]
    fn log_tail_overrides_the_snapshot_last_writer_wins() {
        let shard_of = |id: &u64| (*id % 2) as usize;
        let mut replay = Replay::<u64, u64>::new(2, &shard_of);
        for id in 1..=4 {
            upsert(&mut replay, Source::Snapshot, &timer(id, 100 + id));
        }
        remove(&mut replay, 2); // ended after the checkpoint
        upsert(&mut replay, Source::Log, &timer(3, 500)); // rescheduled
        upsert(&mut replay, Source::Log, &timer(5, 600)); // new ...
        upsert(&mut replay, Source::Log, &timer(5, 700)); // ... then moved
        upsert(&mut replay, Source::Log, &timer(6, 800)); // new ...
        remove(&mut replay, 6); // ... then cancelled
        remove(&mut replay, 9); // never known: nothing
        let shards = replay.finish();
        let mut got: Vec<(usize, u64, u64)> = shards
            .iter()
            .enumerate()
            .flat_map(|(s, list)| {
                list.iter()
                    .flatten()
                    .map(move |t| (s, t.id, t.state.deadline_ms))
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, [(0, 4, 104), (1, 1, 101), (1, 3, 500), (1, 5, 700)]);
    }

    #[test]
    fn a_remove_record_inside_a_snapshot_is_refused() {
        let shard_of = |_: &u64| 0;
        let mut replay = Replay::<u64, u64>::new(1, &shard_of);
        let mut body = Vec::new();
        7u64.encode(&mut body);
        assert!(replay.apply(Source::Snapshot, KIND_REMOVE, &body).is_err());
    }
}
