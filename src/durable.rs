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
//! Upsert body layout (little-endian):
//!
//! ```text
//! id_len u32 | id | deadline_ms u64 | due_ms u64 | attempt u32 | snoozes u8 |
//! flags u8 (bit 0: in flight) | acked u64 | n u8 | fired u8 | n × offset_ms u64 | payload
//! ```
//!
//! A remove body is the encoded id alone.

use crate::codec::{Codec, DecodeError};
use crate::engine::{Journal, Pending, Reminders};
use crate::error::BuildError;
use crate::error::StorageError;
use crate::wal::{RecoveryReport, Source, Storage, Wal, WalError, WalOptions};
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

pub(crate) const KIND_UPSERT: u8 = 1;
pub(crate) const KIND_REMOVE: u8 = 2;

thread_local! {
    /// Scratch for encoding a record: no allocation per logged change.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn encode_upsert<K: Codec, P: Codec>(timer: &Pending<K, P>, out: &mut Vec<u8>) {
    let id_at = out.len();
    out.extend_from_slice(&[0; 4]);
    timer.id.encode(out);
    let id_len = u32::try_from(out.len() - id_at - 4).unwrap_or(u32::MAX);
    out[id_at..id_at + 4].copy_from_slice(&id_len.to_le_bytes());
    out.extend_from_slice(&timer.deadline_ms.to_le_bytes());
    out.extend_from_slice(&timer.due_ms.to_le_bytes());
    out.extend_from_slice(&timer.attempt.to_le_bytes());
    out.push(timer.snoozes);
    out.push(u8::from(timer.flight.is_some()));
    out.extend_from_slice(&timer.flight.unwrap_or(0).to_le_bytes());
    let (offsets, fired) = timer.reminders.parts();
    out.push(u8::try_from(offsets.len()).unwrap_or(u8::MAX));
    out.push(fired);
    for offset in offsets {
        out.extend_from_slice(&offset.to_le_bytes());
    }
    timer.payload.encode(out);
}

/// Reads a little-endian body front to back; every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or_else(|| DecodeError::new("record body too short"))?;
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        u32::decode(self.take(4)?)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        u64::decode(self.take(8)?)
    }
}

pub(crate) fn decode_upsert<K: Codec, P: Codec>(body: &[u8]) -> Result<Pending<K, P>, DecodeError> {
    let mut r = Reader(body);
    let id_len = r.u32()? as usize;
    let id = K::decode(r.take(id_len)?)?;
    let deadline_ms = r.u64()?;
    let due_ms = r.u64()?;
    let attempt = r.u32()?;
    let snoozes = r.u8()?;
    let in_flight = r.u8()?;
    let acked = r.u64()?;
    let n = r.u8()? as usize;
    let fired = r.u8()?;
    let mut offsets = Vec::with_capacity(n.min(crate::MAX_REMINDERS));
    for _ in 0..n {
        offsets.push(r.u64()?);
    }
    let reminders = Reminders::from_parts(&offsets, fired)
        .ok_or_else(|| DecodeError::new("malformed reminders"))?;
    let payload = P::decode(r.0)?;
    if in_flight > 1 {
        return Err(DecodeError::new("bad flags"));
    }
    Ok(Pending {
        id,
        payload,
        deadline_ms,
        reminders,
        due_ms,
        attempt,
        snoozes,
        flight: (in_flight == 1).then_some(acked),
    })
}

/// Yields every timer to the callback it is given (one shard at a time).
pub(crate) type VisitTimers<'a, K, P> = dyn FnMut(&mut dyn FnMut(&Pending<K, P>)) + 'a;

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
    fn upsert(&self, timer: &Pending<K, P>) -> Result<u64, StorageError> {
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            encode_upsert(timer, buf);
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
}

impl<K: Codec, P: Codec> Store<K, P> for WalStore<K, P> {
    fn checkpoint(&self, visit: &mut VisitTimers<'_, K, P>) -> Result<(), StorageError> {
        self.wal
            .checkpoint(|snapshot| {
                let mut buf = Vec::new();
                let mut failed = None;
                visit(&mut |timer| {
                    if failed.is_some() {
                        return;
                    }
                    buf.clear();
                    encode_upsert(timer, &mut buf);
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

/// What opening the log produced.
pub(crate) struct Opened<K, P> {
    pub(crate) store: Arc<dyn Store<K, P>>,
    pub(crate) timers: Vec<Pending<K, P>>,
    pub(crate) report: RecoveryReport,
}

/// Opens the log in `storage` and replays it.
pub(crate) fn open<K, P>(
    storage: Arc<dyn Storage>,
    opts: WalOptions,
) -> Result<Opened<K, P>, BuildError>
where
    K: Codec + Hash + Eq + Clone + 'static,
    P: Codec + 'static,
{
    let mut replay = Replay::<K, P>::new();
    let (wal, report) = Wal::open(storage, opts, |source, _seq, kind, body| {
        replay.apply(source, kind, body)
    })
    .map_err(|e| BuildError::Recovery(e.to_string()))?;
    Ok(Opened {
        store: Arc::new(WalStore::<K, P>::new(wal)),
        timers: replay.timers.into_values().collect(),
        report,
    })
}

/// Replays snapshot and log into the timers to restore, last writer wins.
pub(crate) struct Replay<K, P> {
    pub(crate) timers: FxHashMap<K, Pending<K, P>>,
}

impl<K: Codec + Hash + Eq + Clone, P: Codec> Replay<K, P> {
    pub(crate) fn new() -> Self {
        Self {
            timers: FxHashMap::default(),
        }
    }

    pub(crate) fn apply(
        &mut self,
        _source: Source,
        kind: u8,
        body: &[u8],
    ) -> Result<(), DecodeError> {
        match kind {
            KIND_UPSERT => {
                let timer = decode_upsert::<K, P>(body)?;
                self.timers.insert(timer.id.clone(), timer);
            }
            KIND_REMOVE => {
                self.timers.remove(&K::decode(body)?);
            }
            other => {
                return Err(DecodeError::new(format_args!(
                    "unknown record kind {other}"
                )));
            }
        }
        Ok(())
    }
}
