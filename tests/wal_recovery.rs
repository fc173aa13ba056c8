//! The write-ahead log under crashes: torn tails at every byte, corruption
//! in the middle, a fault at every I/O, checkpoints interrupted at every
//! I/O, concurrent group commit, and the directory lock.

use duewheel::wal::{
    Fault, FaultStorage, FsStorage, OpenDirError, Source, Storage, SyncPolicy, Wal, WalError,
    WalOpenError, WalOptions,
};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

#[path = "support/wal_layout.rs"]
mod segment;

type Replayed = Vec<(Source, u64, u8, Vec<u8>)>;

/// A segment's header, in bytes (`docs/WAL_FORMAT.md`, "Segment"): the
/// layout is documented, not exported, so the tests hold it to its word.
const SEGMENT_HEADER_BYTES: usize = 20;

/// The size of the record starting at `bytes` (`docs/WAL_FORMAT.md`,
/// "Record": `len u32 LE | crc u32 LE | len bytes`).
fn record_size(bytes: &[u8]) -> usize {
    8 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize
}

fn open(storage: &FaultStorage) -> Result<(Wal, Replayed), WalOpenError<Infallible>> {
    let mut seen = Vec::new();
    let storage: Arc<dyn Storage> = Arc::new(storage.clone());
    let (wal, _) = Wal::open(storage, WalOptions::default(), |src, seq, kind, body| {
        seen.push((src, seq, kind, body.to_vec()));
        Ok::<(), Infallible>(())
    })?;
    Ok((wal, seen))
}

fn body(i: u64) -> Vec<u8> {
    format!("record {i}").into_bytes()
}

/// Appends `n` records, waiting for each; returns the acknowledged seqs.
fn workload(wal: &Wal, n: u64) -> Vec<u64> {
    let mut acked = Vec::new();
    for i in 0..n {
        let Ok(seq) = wal.append(1, &body(i)) else {
            break;
        };
        if wal.wait(seq).is_err() {
            break;
        }
        acked.push(seq);
    }
    acked
}

#[test]
fn records_survive_a_restart_in_order_with_their_sequence_numbers() {
    let storage = FaultStorage::new();
    let (wal, seen) = open(&storage).unwrap();
    assert!(seen.is_empty());
    let acked = workload(&wal, 100);
    wal.close().unwrap();
    let (wal, seen) = open(&storage.reboot()).unwrap();
    assert_eq!(seen.iter().map(|r| r.1).collect::<Vec<_>>(), acked);
    assert_eq!(seen[7].3, body(7));
    // Sequence numbers continue after a restart.
    assert_eq!(wal.append(1, b"next").unwrap(), 101);
}

#[test]
fn truncating_the_last_segment_at_every_byte_loses_nothing_acknowledged_before_the_cut() {
    let storage = FaultStorage::new();
    let (wal, _) = open(&storage).unwrap();
    workload(&wal, 20);
    wal.close().unwrap();
    let segment = storage
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("wal-"))
        .max_by_key(|n| storage.len_of(n).unwrap_or(0))
        .unwrap();
    let full = storage.read(&segment).unwrap();
    let mut record_ends = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    while at < full.len() {
        at += record_size(&full[at..]);
        record_ends.push(at);
    }
    assert_eq!(at, full.len(), "the records tile the segment");
    for cut in 0..=full.len() {
        let copy = storage.reboot();
        copy.cut(&segment, cut);
        // Later (empty) segments were created by the run after; remove them
        // so the cut one is last, as after a crash in it.
        for name in copy.list().unwrap() {
            if name.starts_with("wal-") && name > segment {
                copy.remove(&name).unwrap();
            }
        }
        let (_, seen) = open(&copy).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let complete = record_ends.iter().filter(|&&end| end <= cut).count();
        assert_eq!(seen.len(), complete, "cut at {cut}");
    }
}

#[test]
fn a_flipped_byte_in_an_earlier_record_is_a_hard_error_naming_segment_and_offset() {
    let storage = FaultStorage::new();
    let (wal, _) = open(&storage).unwrap();
    workload(&wal, 10);
    wal.close().unwrap();
    let segment = "wal-0000000000000000.log";
    let header = SEGMENT_HEADER_BYTES;
    storage.flip_byte(segment, header + 12);
    let err = open(&storage.reboot()).expect_err("corruption must not open");
    match err {
        WalOpenError::Corrupt { file, offset, .. } => {
            assert_eq!((file.as_str(), offset), (segment, header as u64));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_fault_at_any_io_fail_stops_and_loses_nothing_acknowledged() {
    // Count the I/Os of the workload once.
    let probe = FaultStorage::new();
    let (wal, _) = open(&probe).unwrap();
    let start = probe.io_count();
    workload(&wal, 30);
    wal.close().unwrap();
    let total = probe.io_count();
    for fault in [Fault::Error, Fault::Tear(7)] {
        for k in start..total {
            let storage = FaultStorage::new();
            let (wal, _) = open(&storage).unwrap();
            storage.fail_at(k, fault);
            let acked = workload(&wal, 30);
            if acked.len() < 30 {
                // Fail-stop: once poisoned, nothing more is accepted.
                assert!(wal.is_poisoned(), "k={k}");
                assert!(matches!(wal.append(1, b"x"), Err(WalError::Poisoned(_))));
            }
            let _ = wal.close();
            storage.power_loss();
            let (_, seen) = open(&storage.reboot()).unwrap_or_else(|e| panic!("k={k}: {e}"));
            let seen: Vec<u64> = seen.iter().map(|r| r.1).collect();
            for seq in &acked {
                assert!(seen.contains(seq), "{fault:?} at {k}: acked {seq} lost");
            }
        }
    }
}

#[test]
fn a_checkpoint_interrupted_at_any_io_recovers_the_same_state() {
    // State: key -> value, written as (kind 1 = set, body = key byte + value).
    fn apply(state: &mut BTreeMap<u8, Vec<u8>>, body: &[u8]) {
        state.insert(body[0], body[1..].to_vec());
    }
    fn run(storage: &FaultStorage, fail: Option<u64>) -> (BTreeMap<u8, Vec<u8>>, u64) {
        let (wal, _) = open(storage).unwrap();
        let mut state = BTreeMap::new();
        for i in 0..40u8 {
            let rec = [i % 7, i];
            wal.wait(wal.append(1, &rec).unwrap()).unwrap();
            apply(&mut state, &rec);
        }
        let before = storage.io_count();
        if let Some(k) = fail {
            storage.fail_at(before + k, Fault::Error);
        }
        let _ = wal.checkpoint(|w| {
            for (k, v) in &state {
                let mut rec = vec![*k];
                rec.extend_from_slice(v);
                w.append(1, &rec)?;
            }
            Ok(())
        });
        let used = storage.io_count() - before;
        let _ = wal.close();
        (state, used)
    }
    let (expected, ios) = run(&FaultStorage::new(), None);
    for k in 0..ios {
        let storage = FaultStorage::new();
        run(&storage, Some(k));
        storage.power_loss();
        let (_, seen) = open(&storage.reboot()).unwrap_or_else(|e| panic!("k={k}: {e}"));
        let mut state = BTreeMap::new();
        for (_, _, _, body) in &seen {
            apply(&mut state, body);
        }
        assert_eq!(state, expected, "checkpoint failed at I/O {k}");
    }
}

#[test]
fn concurrent_callers_share_fsyncs_and_every_acknowledged_record_is_replayed() {
    let storage = FaultStorage::new();
    let (wal, _) = open(&storage).unwrap();
    let threads: Vec<_> = (0..64u64)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                (0..50u64)
                    .map(|i| {
                        let seq = wal.append(1, &body(t * 1_000 + i)).unwrap();
                        wal.wait(seq).unwrap();
                        seq
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    acked.sort_unstable();
    wal.close().unwrap();
    let (_, seen) = open(&storage.reboot()).unwrap();
    assert_eq!(seen.iter().map(|r| r.1).collect::<Vec<_>>(), acked);
}

#[test]
fn every_ms_policy_acknowledges_after_the_write() {
    let storage = FaultStorage::new();
    let shared: Arc<dyn Storage> = Arc::new(storage.clone());
    let opts = WalOptions {
        sync: SyncPolicy::EveryMs(5),
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(shared, opts, |_, _, _, _| Ok::<(), Infallible>(())).unwrap();
    let acked = workload(&wal, 50);
    wal.close().unwrap();
    let (_, seen) = open(&storage.reboot()).unwrap();
    assert_eq!(seen.len(), acked.len(), "close syncs what was written");
}

#[test]
fn a_second_open_of_a_locked_directory_is_refused() {
    let dir = std::env::temp_dir().join(format!("duewheel-lock-{}", std::process::id()));
    let first = FsStorage::open(&dir).unwrap();
    assert!(matches!(
        FsStorage::open(&dir),
        Err(OpenDirError::Locked { .. })
    ));
    drop(first);
    FsStorage::open(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_checkpoint_taken_while_appends_continue_leaves_a_log_that_opens_after_a_crash() {
    // The snapshot's last sequence number must be the last record of the
    // segments it replaces: an append that lands between the rotation and
    // the checkpoint reading the state goes to the new segment, and a
    // snapshot claiming it made the next open refuse the log as corrupt
    // ("sequence N after N"). Found by `duewheel simulate --crash-at`.
    let storage = FaultStorage::new();
    let (wal, _) = open(&storage).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appenders: Vec<_> = (0..4u64)
        .map(|t| {
            let (wal, stop) = (wal.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if wal.append(1, &body(t * 1_000_000 + i)).is_err() {
                        break;
                    }
                    i += 1;
                    if i % 16 == 0 {
                        // Paced: every round copies and replays the log.
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            })
        })
        .collect();
    for round in 0..50 {
        wal.checkpoint(|_| Ok(())).unwrap();
        let crashed = storage.reboot();
        if let Err(e) = open(&crashed) {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            panic!("after checkpoint {round}: {e}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for appender in appenders {
        appender.join().unwrap();
    }
}

fn segments_of(storage: &FaultStorage) -> Vec<String> {
    let mut names: Vec<String> = storage
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("wal-"))
        .collect();
    names.sort();
    names
}

fn seqs(seen: &Replayed) -> Vec<u64> {
    seen.iter().map(|r| r.1).collect()
}

#[test]
fn a_segment_a_crash_left_without_its_header_never_bricks_the_directory() {
    // The reproducer: after a clean shutdown a crash leaves the next
    // segment created but its header unwritten (0..=20 bytes); an engine
    // opens, appends, and crashes again before a clean close; then open.
    // The old open truncated the headerless file to 0 bytes and left it
    // in place before its new segment: from then on it was not the last
    // segment, and every open failed with "bad segment header".
    for len in [0, 7, segment::HEADER_BYTES] {
        let storage = FaultStorage::new();
        let (wal, _) = open(&storage).unwrap();
        let mut acked = workload(&wal, 10);
        wal.close().unwrap();
        let last = segments_of(&storage).pop().unwrap();
        let next = segment::number(&last).unwrap() + 1;
        let torn = segment::name(next);
        let mut header = segment::header(next).to_vec();
        header.truncate(len);
        if len == header.len() && len > 0 {
            header[len - 1] ^= 1; // a whole header, but not a valid one
        }
        let mut file = storage.create(&torn).unwrap();
        file.write_all(&header).unwrap();
        file.sync().unwrap();

        // Two crashes in a row, each after acknowledged appends.
        let mut storage = storage.reboot();
        for round in 0..2 {
            let (wal, seen) =
                open(&storage).unwrap_or_else(|e| panic!("len {len}, round {round}: {e}"));
            assert_eq!(seqs(&seen), acked, "len {len}, round {round}");
            acked.extend(workload(&wal, 5));
            // No close: the process dies here.
            storage = storage.reboot();
            drop(wal);
        }
        let (_, seen) = open(&storage).unwrap_or_else(|e| panic!("len {len}: {e}"));
        assert_eq!(seqs(&seen), acked, "len {len}");
        for name in segments_of(&storage) {
            let bytes = storage.read(&name).unwrap();
            assert!(
                bytes.len() >= segment::HEADER_BYTES,
                "len {len}: {name} left headerless"
            );
        }
    }
}

#[test]
fn a_headerless_segment_between_two_others_is_repaired_not_refused() {
    // What the old open left behind (a 0-byte segment, then later ones):
    // it held no record, and the sequence numbers of the next segment prove
    // that nothing is missing, so the directory opens again.
    let storage = FaultStorage::new();
    let (wal, _) = open(&storage).unwrap();
    let acked = workload(&wal, 10);
    wal.close().unwrap();
    open(&storage).unwrap().0.close().unwrap(); // an empty segment after it
    let mut names = segments_of(&storage);
    let empty = names.pop().unwrap();
    let number = segment::number(&empty).unwrap();
    storage.cut(&empty, 0);
    let after = segment::name(number + 1);
    let mut bytes = segment::header(number + 1).to_vec();
    segment::encode_record(&mut bytes, 11, 1, b"after the gap");
    let mut file = storage.create(&after).unwrap();
    file.write_all(&bytes).unwrap();
    file.sync().unwrap();
    let (_, seen) = open(&storage.reboot()).unwrap();
    let mut expected = acked;
    expected.push(11);
    assert_eq!(seqs(&seen), expected);
}

/// Three opens of 10 acknowledged records each, then a clean close: the
/// records are in segments 0, 1 and 2, segment 3 is empty.
fn three_runs() -> (FaultStorage, Vec<u64>) {
    let storage = FaultStorage::new();
    let mut acked = Vec::new();
    for _ in 0..3 {
        let (wal, _) = open(&storage).unwrap();
        acked.extend(workload(&wal, 10));
        wal.close().unwrap();
    }
    (storage, acked)
}

fn missing(err: WalOpenError<Infallible>) -> (String, u64) {
    match err {
        WalOpenError::Missing { what, after_seq } => (what, after_seq),
        other => panic!("expected Missing, got {other}"),
    }
}

#[test]
fn a_missing_first_or_middle_segment_is_an_error_naming_it() {
    use segment::name;
    let (storage, acked) = three_runs();
    assert_eq!(acked.len(), 30);
    let first = storage.reboot();
    first.remove(&name(0)).unwrap();
    let err = open(&first).expect_err("a missing first segment must not open");
    assert!(err.to_string().contains(&name(0)), "{err}");
    let (what, after_seq) = missing(err);
    assert!(
        what.starts_with(&name(0)) && what.contains("snapshot"),
        "{what}"
    );
    assert_eq!(after_seq, 0);

    let middle = storage.reboot();
    middle.remove(&name(1)).unwrap();
    let (what, after_seq) = missing(open(&middle).expect_err("a gap must not open"));
    assert_eq!((what, after_seq), (name(1), 0));

    let two = storage.reboot();
    two.remove(&name(0)).unwrap();
    two.remove(&name(1)).unwrap();
    let (what, _) = missing(open(&two).expect_err("a gap must not open"));
    assert!(
        what.starts_with(&format!("{}..={}", name(0), name(1))),
        "{what}"
    );
}

#[test]
fn a_segment_emptied_before_a_later_one_is_a_gap_in_sequence_numbers() {
    use segment::{HEADER_BYTES, name};
    let (storage, _) = three_runs();
    let emptied = storage.reboot();
    emptied.cut(&name(1), HEADER_BYTES);
    match open(&emptied).expect_err("missing records must not open") {
        WalOpenError::Corrupt { file, reason, .. } => {
            assert_eq!(file, name(2));
            assert!(reason.contains("11..=20 missing"), "{reason}");
        }
        other => panic!("{other}"),
    }
}

fn checkpointed() -> (FaultStorage, String, Vec<u64>) {
    let storage = FaultStorage::new();
    let (wal, _) = open(&storage).unwrap();
    let mut acked = workload(&wal, 10);
    let report = wal
        .checkpoint(|w| {
            for i in 0..10 {
                w.append(1, &body(i))?;
            }
            Ok(())
        })
        .unwrap();
    acked.extend(workload(&wal, 10));
    wal.close().unwrap();
    (storage, report.snapshot, acked)
}

#[test]
fn a_missing_snapshot_or_first_live_segment_after_it_is_an_error() {
    use segment::name;
    let (storage, snapshot, _) = checkpointed();
    let (_, seen) = open(&storage.reboot()).unwrap();
    assert_eq!(seen.len(), 20, "10 snapshot entries and 10 records");
    let covers = segment::snapshot_covers(&snapshot).unwrap();

    let no_snapshot = storage.reboot();
    no_snapshot.remove(&snapshot).unwrap();
    let (what, after_seq) = missing(open(&no_snapshot).expect_err("must not open"));
    assert!(what.contains("snapshot"), "{what}");
    assert!(what.contains(&name(covers - 1)), "{what}");
    assert_eq!(after_seq, 0);

    let no_first = storage.reboot();
    no_first.remove(&name(covers)).unwrap();
    let (what, after_seq) = missing(open(&no_first).expect_err("must not open"));
    assert_eq!((what, after_seq), (name(covers), 10));
}

/// Storage whose file syncs block while the gate is shut: a disk that
/// stops.
#[derive(Clone)]
struct StallingStorage {
    inner: FaultStorage,
    shut: Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>,
}

struct StallingFile {
    inner: Box<dyn duewheel::wal::StorageFile>,
    shut: Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>,
}

impl duewheel::wal::StorageFile for StallingFile {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(buf)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        let (lock, cv) = &*self.shut;
        let mut shut = lock.lock();
        while *shut {
            cv.wait(&mut shut);
        }
        drop(shut);
        self.inner.sync()
    }
}

impl Storage for StallingStorage {
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.inner.list()
    }
    fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
        self.inner.read(name)
    }
    fn create(&self, name: &str) -> std::io::Result<Box<dyn duewheel::wal::StorageFile>> {
        Ok(Box::new(StallingFile {
            inner: self.inner.create(name)?,
            shut: self.shut.clone(),
        }))
    }
    fn truncate(&self, name: &str, len: u64) -> std::io::Result<()> {
        self.inner.truncate(name, len)
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.inner.remove(name)
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        self.inner.sync_dir()
    }
}

#[test]
fn a_disk_that_stops_for_5_s_keeps_the_log_within_its_byte_bound_and_loses_nothing() {
    const BOUND: usize = 64 << 10;
    let storage = StallingStorage {
        inner: FaultStorage::new(),
        shut: Arc::new((parking_lot::Mutex::new(false), parking_lot::Condvar::new())),
    };
    let opts = WalOptions {
        max_unflushed_bytes: BOUND,
        ..WalOptions::default()
    };
    let shared: Arc<dyn Storage> = Arc::new(storage.clone());
    let (wal, _) = Wal::open(shared, opts, |_, _, _, _| Ok::<(), Infallible>(())).unwrap();
    let mut acked = workload(&wal, 10);

    *storage.shut.0.lock() = true; // the disk stops
    let appenders: Vec<_> = (0..8u64)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                // Appends without waiting pile up until the bound stops
                // them; every 100th waits for durability.
                let mut seqs = Vec::new();
                for i in 0..2_000u64 {
                    seqs.push(wal.append(1, &[t as u8; 100]).unwrap());
                    if i % 100 == 99 {
                        wal.wait(*seqs.last().unwrap()).unwrap();
                    }
                }
                wal.wait(*seqs.last().unwrap()).unwrap();
                seqs
            })
        })
        .collect();
    let stalled_until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut most = 0;
    let mut refused = false;
    let mut extra = Vec::new();
    while std::time::Instant::now() < stalled_until {
        let stats = wal.stats();
        most = most.max(stats.unflushed_bytes);
        assert!(stats.unflushed_bytes <= BOUND, "{stats:?}");
        if !refused && stats.unflushed_bytes + 200 > BOUND {
            match wal.try_append(1, &[9; 100]) {
                Err(WalError::Full { .. }) => refused = true,
                Ok(seq) => extra.push(seq),
                Err(e) => panic!("{e}"),
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        most > BOUND / 2,
        "the stall never filled the buffer: {most}"
    );
    assert!(
        refused,
        "try_append was never refused while the buffer was full"
    );
    assert!(
        appenders.iter().all(|a| !a.is_finished()),
        "nobody was held back"
    );
    let (lock, cv) = &*storage.shut;
    *lock.lock() = false; // the disk resumes
    cv.notify_all();
    for appender in appenders {
        acked.extend(appender.join().unwrap());
    }
    for seq in extra {
        wal.wait(seq).unwrap();
        acked.push(seq);
    }
    let stats = wal.stats();
    assert!(stats.max_unflushed_bytes_seen <= BOUND, "{stats:?}");
    assert!(stats.appends_waited > 0, "{stats:?}");
    wal.close().unwrap();
    acked.sort_unstable();
    let (_, seen) = open(&storage.inner.reboot()).unwrap();
    assert_eq!(seqs(&seen), acked, "every acknowledged record, in order");
}
