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
