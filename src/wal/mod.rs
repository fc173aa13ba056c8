//! The write-ahead log: segments of checksummed records, group commit,
//! checkpoints, and recovery that tells a torn tail from corruption.
//!
//! It knows nothing of timers: a record is `(kind, body)` with a sequence
//! number; the engine encodes bodies (see `durable.rs`). Layout and crash
//! argument: `docs/WAL_FORMAT.md`.
//!
//! Invariants:
//! - [`Wal::append`] only buffers (never does I/O) and takes no global lock
//!   (its thread's stripe of the append buffers, `stripes.rs`), so the
//!   engine may call it under a shard lock; [`Wal::wait`] returns `Ok` only
//!   once the record is durable per the [`SyncPolicy`];
//! - the log's unflushed bytes (buffered, plus the batch the writer is
//!   writing) never pass [`WalOptions::max_unflushed_bytes`], except by the
//!   one record let into an empty buffer (so a record up to the record cap
//!   never waits forever): an append that would pass it waits for the
//!   writer to drain (a slow disk pushes back instead of growing memory),
//!   and [`Wal::try_append`] refuses it with [`WalError::Full`];
//! - sequence numbers are dense and increase for the life of the
//!   directory, across restarts and checkpoints, and the segments hold them
//!   in order: recovery treats any gap as a missing file or corruption;
//! - a snapshot replaces the segments below its number only after it is
//!   synced and renamed into place and the directory is synced;
//! - any failed write or fsync poisons the log (fail-stop, see
//!   `writer.rs`).

// The on-disk layer is private: its layout is `docs/WAL_FORMAT.md`'s, not
// an API. `cargo fuzz` (`--cfg fuzzing`) opens the decoders to the fuzz
// targets; the crate's own tests reach them as `crate::wal::...`.
mod fault;
#[cfg(fuzzing)]
pub mod record;
#[cfg(not(fuzzing))]
#[allow(unreachable_pub, dead_code)] // the fuzz targets use more of it
pub(crate) mod record;
#[cfg(fuzzing)]
pub mod segment;
#[cfg(not(fuzzing))]
#[allow(unreachable_pub)]
pub(crate) mod segment;
#[cfg(fuzzing)]
pub mod snapshot;
#[cfg(not(fuzzing))]
#[allow(unreachable_pub)]
pub(crate) mod snapshot;
mod storage;
mod stripes;
mod writer;

pub use self::fault::{Fault, FaultStorage};
pub use self::snapshot::SnapshotWriter;
pub use self::storage::{FsStorage, OpenDirError, Storage, StorageFile, process_fsyncs};

/// Records written by every log of the process (counted per batch).
static RECORDS: AtomicU64 = AtomicU64::new(0);

/// How many records every [`Wal`] in this process has written so far (a
/// run's count is the difference between two readings; with
/// [`process_fsyncs`], records per fsync).
pub fn process_records() -> u64 {
    RECORDS.load(Ordering::Relaxed)
}

use crate::sync::{Condvar, Mutex};
use crate::trace;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;

/// When [`Wal::wait`] may return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncPolicy {
    /// After the record is fsynced (default). Concurrent callers share one
    /// fsync (group commit).
    Always,
    /// After the record is written to the OS; fsync at most every `n` ms.
    /// **A crash of the machine can lose the last `n` ms of operations that
    /// were acknowledged**; a crash of the process alone loses nothing.
    EveryMs(u64),
}

/// Settings of a log.
#[derive(Clone, Copy, Debug)]
pub struct WalOptions {
    /// When `wait` returns.
    pub sync: SyncPolicy,
    /// Start a new segment past this size (default 64 MiB).
    pub segment_bytes: u64,
    /// Hard cap on one record's body (default 1 MiB).
    pub max_record_bytes: u32,
    /// Most bytes of records not yet written to the disk (default 64 MiB):
    /// past it, appends wait for the writer (see the module invariant).
    pub max_unflushed_bytes: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            sync: SyncPolicy::Always,
            segment_bytes: 64 << 20,
            max_record_bytes: 1 << 20,
            max_unflushed_bytes: 64 << 20,
        }
    }
}

/// Where a replayed entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The newest snapshot.
    Snapshot,
    /// A log record after the snapshot.
    Log,
}

/// A torn tail cut off at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub segment: String,
    /// Where the tail started.
    pub offset: u64,
    /// Bytes dropped.
    pub dropped: u64,
}

/// What recovery found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Entries read from the snapshot.
    pub snapshot_entries: u64,
    /// Log records replayed after it.
    pub records: u64,
    /// Segments read.
    pub segments: u64,
    /// The last sequence number found.
    pub last_seq: u64,
    /// A torn tail that was truncated, if any.
    pub torn_tail: Option<TornTail>,
    /// Segments found without a complete header (a crash while creating
    /// them; they hold no record): the last one is removed, any other
    /// rewritten as an empty segment.
    pub headerless: Vec<TornTail>,
}

/// What a checkpoint did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointReport {
    /// The snapshot file written.
    pub snapshot: String,
    /// Entries in it.
    pub entries: u64,
    /// Segments deleted because the snapshot covers them.
    pub segments_removed: u64,
}

/// Why the log refused an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// A write or fsync failed earlier; the log accepts nothing more.
    #[error("the log is poisoned after an I/O failure: {0}")]
    Poisoned(String),
    /// A body over [`WalOptions::max_record_bytes`].
    #[error("record of {len} bytes over the cap of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The cap.
        max: u32,
    },
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
    /// A checkpoint failed; the log itself is intact.
    #[error("checkpoint failed: {0}")]
    Checkpoint(String),
    /// [`Wal::try_append`] only: the unflushed bytes are at
    /// [`WalOptions::max_unflushed_bytes`]; the disk has not caught up.
    #[error(
        "the log's buffer is full ({unflushed} unflushed bytes, bound {max}): the disk is behind"
    )]
    Full {
        /// Unflushed bytes when refused.
        unflushed: usize,
        /// The bound.
        max: usize,
    },
}

/// What the log has done since it opened ([`Wal::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records written to segments (counted per group commit).
    pub records: u64,
    /// Group commits: writes of one batch of records.
    pub commits: u64,
    /// fsyncs of segment files (group commits under `Always`, periodic ones
    /// under `EveryMs`, and at rotation and close).
    pub fsyncs: u64,
    /// Bytes written to segments.
    pub bytes_written: u64,
    /// Bytes not yet written now (buffered plus being written).
    pub unflushed_bytes: usize,
    /// The most unflushed bytes seen at once since the log opened.
    pub max_unflushed_bytes_seen: usize,
    /// Appends that waited for room.
    pub appends_waited: u64,
}

/// Why a log could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalOpenError<E> {
    /// Reading or preparing the directory failed.
    #[error("I/O error opening the log: {0}")]
    Io(#[from] io::Error),
    /// A bad record or file that is not a torn tail: a hard error, never
    /// skipped.
    #[error("log corrupt in {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment or snapshot file.
        file: String,
        /// Byte offset in it.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A file the log needs is missing: a segment after the snapshot, or
    /// the snapshot that replaced the segments before the first one left.
    /// Sequence numbers are dense, so this is never a crash artefact and
    /// never skipped.
    #[error(
        "log incomplete: {what} missing (the records after sequence number {after_seq} are gone)"
    )]
    Missing {
        /// The missing file or range of files.
        what: String,
        /// The last sequence number recovered before the gap.
        after_seq: u64,
    },
    /// The visitor refused an entry.
    #[error("replay refused an entry in {file} at offset {offset}")]
    Visit {
        /// The segment or snapshot file.
        file: String,
        /// Byte offset in it.
        offset: u64,
        /// The visitor's error.
        error: E,
    },
}

/// What appenders, waiters and the writer share.
pub(crate) struct Shared {
    storage: Arc<dyn Storage>,
    opts: WalOptions,
    /// The append buffers (appenders take only their stripe's lock).
    stripes: stripes::Stripes,
    /// Set by an appender after its push; the writer clears it when it
    /// takes a batch. Only the appender that sets it wakes the writer.
    dirty: AtomicBool,
    /// Batches under way ([`Wal::hold_wakes`]): while non-zero, an append
    /// leaves the writer asleep, so a batch's records reach the disk in one
    /// write and one fsync, not one each as a fast writer would take them.
    held: AtomicUsize,
    /// The writer thread, to unpark.
    writer_thread: std::sync::OnceLock<std::thread::Thread>,
    /// Bytes appended and not yet written (reserved before the push).
    unflushed: AtomicUsize,
    room_lock: Mutex<()>,
    /// Wakes appenders waiting for room under the byte bound.
    room: Condvar,
    room_waiters: AtomicUsize,
    counters: Counters,
    /// The writer's and checkpoints' state (never taken by an appender).
    state: Mutex<State>,
    /// Wakes a checkpoint waiting for its rotation.
    rotated: Condvar,
    durable_seq: AtomicU64,
    durable_lock: Mutex<()>,
    durable_cv: Condvar,
    /// Wakes async waiters ([`Wal::wait_async`]) whenever `durable_cv` is.
    #[cfg(feature = "tokio")]
    durable_notify: tokio::sync::Notify,
    poison: Mutex<Option<String>>,
    poisoned: AtomicBool,
    stopped: AtomicBool,
}

/// [`WalStats`] as atomics, so appenders share no lock to count.
#[derive(Default)]
struct Counters {
    records: AtomicU64,
    commits: AtomicU64,
    fsyncs: AtomicU64,
    bytes_written: AtomicU64,
    max_unflushed: AtomicUsize,
    appends_waited: AtomicU64,
}

struct State {
    segment: u64,
    rotate_requested: bool,
    rotations: u64,
    /// The last sequence number written to the segments below `segment`,
    /// as of the latest rotation: what a snapshot taken for it covers.
    /// Appends go on while the writer rotates, so a later number may
    /// already be in the new segment's buffer.
    rotated_after_seq: u64,
    stop: bool,
}

impl Shared {
    fn poison(&self, why: &str) {
        trace::error!(
            reason = why,
            "write-ahead log poisoned: the engine accepts no change until restarted"
        );
        *self.poison.lock() = Some(why.to_string());
        self.poisoned.store(true, Ordering::SeqCst);
        self.stopped.store(true, Ordering::SeqCst);
        let _guard = self.durable_lock.lock();
        self.durable_cv.notify_all();
        drop(_guard);
        self.wake_async_waiters();
        let _st = self.state.lock();
        self.rotated.notify_all();
        drop(_st);
        let _room = self.room_lock.lock();
        self.room.notify_all();
    }

    fn wake_writer(&self) {
        if let Some(writer) = self.writer_thread.get() {
            writer.unpark();
        }
    }

    /// After the writer wrote `bytes` of records: frees their room.
    fn written(&self, bytes: usize) {
        self.unflushed.fetch_sub(bytes, Ordering::SeqCst);
        if self.room_waiters.load(Ordering::SeqCst) > 0 {
            let _room = self.room_lock.lock();
            self.room.notify_all();
        }
    }

    fn poisoned_error(&self) -> WalError {
        WalError::Poisoned(self.poison.lock().clone().unwrap_or_default())
    }

    fn publish(&self, seq: u64) {
        self.durable_seq.fetch_max(seq, Ordering::SeqCst);
        let _guard = self.durable_lock.lock();
        self.durable_cv.notify_all();
        drop(_guard);
        self.wake_async_waiters();
    }

    /// After `durable_seq`, `poisoned` or `stopped` changed.
    fn wake_async_waiters(&self) {
        #[cfg(feature = "tokio")]
        self.durable_notify.notify_waiters();
    }

    /// Creates segment `number` with its header, synced, and syncs the
    /// directory so the new name survives a crash.
    fn new_segment(&self, number: u64) -> io::Result<Box<dyn StorageFile>> {
        let mut file = self.storage.create(&segment::name(number))?;
        file.write_all(&segment::header(number))?;
        file.sync()?;
        self.storage.sync_dir()?;
        Ok(file)
    }
}

/// A write-ahead log. Cloning gives another handle to the same log.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
    checkpointing: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field(
                "durable_seq",
                &self.shared.durable_seq.load(Ordering::SeqCst),
            )
            .field("poisoned", &self.is_poisoned())
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens the log in `storage`: replays the newest snapshot, then every
    /// log record after it, through `visit(source, seq, kind, body)`;
    /// truncates a torn tail; starts a fresh segment and the writer thread.
    pub fn open<E>(
        storage: Arc<dyn Storage>,
        opts: WalOptions,
        mut visit: impl FnMut(Source, u64, u8, &[u8]) -> Result<(), E>,
    ) -> Result<(Self, RecoveryReport), WalOpenError<E>> {
        trace::span!("wal_recovery");
        let started = std::time::Instant::now();
        let mut report = RecoveryReport::default();
        let names = storage.list()?;
        if names.iter().any(|n| n == snapshot::TEMP_NAME) {
            storage.remove(snapshot::TEMP_NAME)?;
        }
        let mut snapshots: Vec<u64> = names.iter().filter_map(|n| snapshot::covers(n)).collect();
        snapshots.sort_unstable();
        let mut segments: Vec<u64> = names.iter().filter_map(|n| segment::number(n)).collect();
        segments.sort_unstable();

        // The newest snapshot, then the segments it does not cover.
        let mut visit_error = None;
        let covers = snapshots.last().copied();
        let mut last_seq = 0;
        if let Some(covers) = covers {
            let file = snapshot::name(covers);
            let bytes = storage.read(&file)?;
            let read = snapshot::read(&bytes, covers, opts.max_record_bytes, |r| {
                visit(Source::Snapshot, r.seq, r.kind, r.body).map_err(|e| {
                    visit_error = Some(e);
                    String::from("visitor refused")
                })
            });
            match read {
                Ok((count, seq)) => {
                    report.snapshot_entries = count;
                    last_seq = seq;
                }
                Err((offset, reason)) => {
                    return Err(match visit_error {
                        Some(error) => WalOpenError::Visit {
                            file,
                            offset,
                            error,
                        },
                        None => WalOpenError::Corrupt {
                            file,
                            offset,
                            reason,
                        },
                    });
                }
            }
        }
        let live: Vec<u64> = segments
            .iter()
            .copied()
            .filter(|&n| covers.is_none_or(|c| n >= c))
            .collect();
        // The segments after the snapshot must start at the one it names
        // (created before the snapshot was written) and follow each other;
        // without a snapshot they start at 0 (the first snapshot is written
        // before any segment is deleted). Sequence numbers, dense, then
        // prove that no record is missing inside or between them.
        let first = covers.unwrap_or(0);
        let missing = match live.first() {
            None if covers.is_some() => Some((first, first)),
            Some(&n) if n != first => Some((first, n - 1)),
            _ => live
                .windows(2)
                .find(|pair| pair[1] != pair[0] + 1)
                .map(|pair| (pair[0] + 1, pair[1] - 1)),
        };
        if let Some((from, to)) = missing {
            let range = if from == to {
                segment::name(from)
            } else {
                format!("{}..={}", segment::name(from), segment::name(to))
            };
            // Without a snapshot, segments start at 0 unless one replaced
            // them: either file could be the one lost.
            let what = if covers.is_none() && from == 0 {
                format!("{range} (or the snapshot that replaced them)")
            } else {
                range
            };
            return Err(WalOpenError::Missing {
                what,
                after_seq: last_seq,
            });
        }
        let mut headerless = Vec::new();
        for (i, &number) in live.iter().enumerate() {
            let file = segment::name(number);
            let bytes = storage.read(&file)?;
            let is_last = i + 1 == live.len();
            let end = segment::scan(
                &bytes,
                number,
                is_last,
                opts.max_record_bytes,
                &mut last_seq,
                |r| {
                    report.records += 1;
                    visit(Source::Log, r.seq, r.kind, r.body).map_err(|e| {
                        visit_error = Some(e);
                        String::from("visitor refused")
                    })
                },
            );
            report.segments += 1;
            match end {
                Ok(segment::End::Clean) => {}
                Ok(segment::End::Headerless { len }) => {
                    headerless.push((number, is_last));
                    report.headerless.push(TornTail {
                        segment: file,
                        offset: 0,
                        dropped: len,
                    });
                }
                Ok(segment::End::Torn { offset, dropped }) => {
                    storage.truncate(&file, offset)?;
                    report.torn_tail = Some(TornTail {
                        segment: file,
                        offset,
                        dropped,
                    });
                }
                Err(corrupt) => {
                    return Err(match visit_error {
                        Some(error) => WalOpenError::Visit {
                            file,
                            offset: corrupt.offset,
                            error,
                        },
                        None => WalOpenError::Corrupt {
                            file,
                            offset: corrupt.offset,
                            reason: corrupt.reason,
                        },
                    });
                }
            }
        }
        // A segment whose creation a crash cut short held no record. Left
        // as it is, it would sit between two segments once a later one
        // exists, and every open after would refuse its missing header: the
        // last one is removed (the new segment takes its number), any other
        // (left by an older version) gets its header, so the numbers stay
        // contiguous. Either way the directory is synced before anything
        // is appended.
        for &(number, is_last) in &headerless {
            let file = segment::name(number);
            if is_last {
                storage.remove(&file)?;
            } else {
                let mut repaired = storage.create(&file)?;
                repaired.write_all(&segment::header(number))?;
                repaired.sync()?;
            }
        }
        if !headerless.is_empty() {
            storage.sync_dir()?;
            trace::warning!(
                segments = headerless.len() as u64,
                "segments without a header (a crash while creating them) replaced"
            );
        }
        if headerless.last().is_some_and(|&(_, is_last)| is_last) {
            segments.pop();
        }
        report.last_seq = last_seq;
        if let Some(torn) = &report.torn_tail {
            trace::warning!(
                segment = torn.segment.as_str(),
                offset = torn.offset,
                dropped = torn.dropped,
                "torn tail truncated (a crash during the last write)"
            );
        }
        trace::info!(
            snapshot_entries = report.snapshot_entries,
            records = report.records,
            segments = report.segments,
            last_seq,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "wal recovered"
        );

        // Leftovers of a checkpoint that crashed after its rename.
        for &old in snapshots.iter().rev().skip(1) {
            storage.remove(&snapshot::name(old))?;
        }
        for &n in segments.iter().filter(|&&n| covers.is_some_and(|c| n < c)) {
            storage.remove(&segment::name(n))?;
        }

        let segment_no = segments
            .last()
            .map_or(covers.unwrap_or(0), |&n| n + 1)
            .max(covers.unwrap_or(0));
        let shared = Arc::new(Shared {
            storage: storage.clone(),
            opts,
            stripes: stripes::Stripes::new(last_seq + 1),
            dirty: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            writer_thread: std::sync::OnceLock::new(),
            unflushed: AtomicUsize::new(0),
            room_lock: Mutex::new(()),
            room: Condvar::new(),
            room_waiters: AtomicUsize::new(0),
            counters: Counters::default(),
            state: Mutex::new(State {
                segment: segment_no,
                rotate_requested: false,
                rotations: 0,
                rotated_after_seq: last_seq,
                stop: false,
            }),
            rotated: Condvar::new(),
            durable_seq: AtomicU64::new(last_seq),
            durable_lock: Mutex::new(()),
            durable_cv: Condvar::new(),
            #[cfg(feature = "tokio")]
            durable_notify: tokio::sync::Notify::new(),
            poison: Mutex::new(None),
            poisoned: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        let file = shared.new_segment(segment_no)?;
        let for_thread = shared.clone();
        let writer = std::thread::Builder::new()
            .name("duewheel-wal".into())
            .spawn(move || writer::run(for_thread, file, segment_no, last_seq))?;
        let _ = shared.writer_thread.set(writer.thread().clone());
        Ok((
            Self {
                shared,
                writer: Arc::new(Mutex::new(Some(writer))),
                checkpointing: Arc::new(Mutex::new(())),
            },
            report,
        ))
    }

    /// Appends one record and returns its sequence number. Only buffers;
    /// waits (no I/O of its own) while the unflushed bytes are at
    /// [`WalOptions::max_unflushed_bytes`].
    pub fn append(&self, kind: u8, body: &[u8]) -> Result<u64, WalError> {
        self.append_inner(kind, body, true)
    }

    /// [`append`](Self::append) that never waits: past the byte bound it
    /// returns [`WalError::Full`] and buffers nothing.
    pub fn try_append(&self, kind: u8, body: &[u8]) -> Result<u64, WalError> {
        self.append_inner(kind, body, false)
    }

    fn append_inner(&self, kind: u8, body: &[u8], wait: bool) -> Result<u64, WalError> {
        let shared = &*self.shared;
        if body.len() > shared.opts.max_record_bytes as usize {
            return Err(WalError::TooLarge {
                len: body.len(),
                max: shared.opts.max_record_bytes,
            });
        }
        if self.is_poisoned() {
            return Err(shared.poisoned_error());
        }
        let size = record::HEADER_BYTES + body.len();
        let waited = self.reserve(size, wait)?;
        let Some(seq) = shared.stripes.push(kind, body) else {
            shared.written(size);
            return Err(WalError::Closed);
        };
        if waited {
            shared
                .counters
                .appends_waited
                .fetch_add(1, Ordering::Relaxed);
        }
        // Records are counted by the writer, per batch: no shared counter is
        // written per append but the room and the sequence number.
        // Within a held batch the wake is left to the hold's end or to the
        // first wait (both wake a dirty log): SeqCst on `dirty` and `held`
        // makes at least one of this append and the hold's end see the
        // other's write, so the records never sit unannounced.
        if !shared.dirty.load(Ordering::SeqCst)
            && !shared.dirty.swap(true, Ordering::SeqCst)
            && shared.held.load(Ordering::SeqCst) == 0
        {
            shared.wake_writer();
        }
        Ok(seq)
    }

    /// Holds the writer's wake-ups until the guard drops: the records of a
    /// batch (a batch ack, a batch of schedules) appended meanwhile are
    /// written together and share one fsync, however fast the writer is.
    /// A [`wait`](Self::wait) still wakes it, so no waiter sleeps on a held
    /// log; the guard's drop wakes it for what was appended meanwhile.
    pub(crate) fn hold_wakes(&self) -> WakeHold<'_> {
        self.shared.held.fetch_add(1, Ordering::SeqCst);
        WakeHold {
            shared: &self.shared,
        }
    }

    /// Reserves `size` unflushed bytes under the bound; `Ok(true)` if it
    /// had to wait for them.
    fn reserve(&self, size: usize, wait: bool) -> Result<bool, WalError> {
        let shared = &*self.shared;
        let max = shared.opts.max_unflushed_bytes;
        let mut waited = false;
        loop {
            // Read first: a full log costs waiting appenders no write to the
            // shared counter.
            let unflushed = shared.unflushed.load(Ordering::SeqCst);
            if unflushed == 0 || unflushed + size <= max {
                let now = unflushed + size;
                if shared
                    .unflushed
                    .compare_exchange_weak(unflushed, now, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
                {
                    continue;
                }
                if now > shared.counters.max_unflushed.load(Ordering::Relaxed) {
                    shared
                        .counters
                        .max_unflushed
                        .fetch_max(now, Ordering::Relaxed);
                }
                return Ok(waited);
            }
            if !wait {
                return Err(WalError::Full { unflushed, max });
            }
            if self.is_poisoned() {
                return Err(shared.poisoned_error());
            }
            if shared.stopped.load(Ordering::SeqCst) {
                return Err(WalError::Closed);
            }
            waited = true;
            shared.wake_writer();
            let mut room = shared.room_lock.lock();
            shared.room_waiters.fetch_add(1, Ordering::SeqCst);
            // Checked again after registering: a writer that freed room
            // before it saw the registration freed it before this load.
            let now = shared.unflushed.load(Ordering::SeqCst);
            if !(now == 0 || now + size <= max || shared.stopped.load(Ordering::SeqCst)) {
                shared
                    .room
                    .wait_for(&mut room, std::time::Duration::from_millis(100));
            }
            shared.room_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// What the log has done since it opened, and its unflushed bytes now.
    pub fn stats(&self) -> WalStats {
        let c = &self.shared.counters;
        WalStats {
            records: c.records.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            unflushed_bytes: self.shared.unflushed.load(Ordering::SeqCst),
            max_unflushed_bytes_seen: c.max_unflushed.load(Ordering::Relaxed),
            appends_waited: c.appends_waited.load(Ordering::Relaxed),
        }
    }

    /// Blocks until record `seq` is durable (see [`SyncPolicy`]).
    pub fn wait(&self, seq: u64) -> Result<(), WalError> {
        let shared = &*self.shared;
        if shared.durable_seq.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        // An append inside a held batch may have left the writer asleep.
        if shared.dirty.load(Ordering::SeqCst) {
            shared.wake_writer();
        }
        let mut guard = shared.durable_lock.lock();
        loop {
            if shared.durable_seq.load(Ordering::SeqCst) >= seq {
                return Ok(());
            }
            if shared.poisoned.load(Ordering::SeqCst) {
                return Err(shared.poisoned_error());
            }
            if shared.stopped.load(Ordering::SeqCst) {
                return Err(WalError::Closed);
            }
            shared.durable_cv.wait(&mut guard);
        }
    }

    /// [`wait`](Self::wait) without blocking a thread (feature `tokio`):
    /// the task sleeps until the writer publishes the commit that covers
    /// `seq`. Concurrent waiters, blocking or async, share one fsync.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn wait_async(&self, seq: u64) -> Result<(), WalError> {
        let shared = &*self.shared;
        if shared.durable_seq.load(Ordering::SeqCst) < seq && shared.dirty.load(Ordering::SeqCst) {
            // An append inside a held batch may have left the writer asleep.
            shared.wake_writer();
        }
        loop {
            // Registered before the checks, so a publish between a check and
            // the `.await` still wakes this waiter.
            let mut notified = std::pin::pin!(shared.durable_notify.notified());
            notified.as_mut().enable();
            if shared.durable_seq.load(Ordering::SeqCst) >= seq {
                return Ok(());
            }
            if shared.poisoned.load(Ordering::SeqCst) {
                return Err(shared.poisoned_error());
            }
            if shared.stopped.load(Ordering::SeqCst) {
                return Err(WalError::Closed);
            }
            notified.await;
        }
    }

    /// The last sequence number known durable.
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq.load(Ordering::SeqCst)
    }

    /// `true` once a write or fsync failed.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::SeqCst)
    }

    /// Writes a snapshot of the state `write` describes and drops the
    /// segments it covers. The log rotates first; appends made during the
    /// checkpoint go to the new segment and are replayed after the snapshot.
    /// `write` must describe the state as of at least the rotation.
    pub fn checkpoint(
        &self,
        write: impl FnOnce(&mut SnapshotWriter) -> io::Result<()>,
    ) -> Result<CheckpointReport, WalError> {
        let _one_at_a_time = self.checkpointing.lock();
        let shared = &*self.shared;
        let (covers, last_seq) = {
            let mut st = shared.state.lock();
            let before = st.rotations;
            st.rotate_requested = true;
            shared.wake_writer();
            while st.rotations == before {
                if shared.poisoned.load(Ordering::SeqCst) {
                    return Err(shared.poisoned_error());
                }
                if st.stop {
                    return Err(WalError::Closed);
                }
                shared.rotated.wait(&mut st);
            }
            (st.segment, st.rotated_after_seq)
        };
        let fail = |e: io::Error| WalError::Checkpoint(e.to_string());
        let storage = &shared.storage;
        let file = storage.create(snapshot::TEMP_NAME).map_err(fail)?;
        let mut writer = SnapshotWriter::new(file, covers, last_seq, shared.opts.max_record_bytes)
            .map_err(fail)?;
        write(&mut writer).map_err(fail)?;
        let entries = writer.finish().map_err(fail)?;
        let name = snapshot::name(covers);
        storage.rename(snapshot::TEMP_NAME, &name).map_err(fail)?;
        storage.sync_dir().map_err(fail)?;
        // Only now is anything below `covers` redundant.
        let mut segments_removed = 0;
        for file in storage.list().map_err(fail)? {
            let stale_segment = segment::number(&file).is_some_and(|n| n < covers);
            let stale_snapshot = snapshot::covers(&file).is_some_and(|n| n < covers);
            if stale_segment || stale_snapshot {
                storage.remove(&file).map_err(fail)?;
                segments_removed += u64::from(stale_segment);
            }
        }
        storage.sync_dir().map_err(fail)?;
        trace::info!(
            snapshot = name.as_str(),
            entries,
            segments_removed,
            "checkpoint written"
        );
        Ok(CheckpointReport {
            snapshot: name,
            entries,
            segments_removed,
        })
    }

    /// Writes and syncs what is buffered, then stops the writer. Later calls
    /// get [`WalError::Closed`].
    pub fn close(&self) -> Result<(), WalError> {
        self.shared.stripes.close();
        self.shared.state.lock().stop = true;
        self.shared.wake_writer();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
        let _guard = self.shared.durable_lock.lock();
        self.shared.durable_cv.notify_all();
        drop(_guard);
        self.shared.wake_async_waiters();
        if self.is_poisoned() {
            return Err(self.shared.poisoned_error());
        }
        Ok(())
    }
}

/// See [`Wal::hold_wakes`].
pub(crate) struct WakeHold<'a> {
    shared: &'a Shared,
}

impl Drop for WakeHold<'_> {
    fn drop(&mut self) {
        let shared = self.shared;
        if shared.held.fetch_sub(1, Ordering::SeqCst) == 1 && shared.dirty.load(Ordering::SeqCst) {
            shared.wake_writer();
        }
    }
}
