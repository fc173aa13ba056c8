//! `wal_decode`: arbitrary bytes fed to the record decoder, the segment and
//! snapshot readers, and a whole log open. None may panic, and nothing is
//! allocated past the record cap (bodies are borrowed from the input).

use duewheel::wal::{FaultStorage, Storage, Wal, WalOptions, record, segment, snapshot};
use std::sync::Arc;

/// Runs the decoders over `data`.
pub fn run(data: &[u8]) {
    const CAP: u32 = 1 << 16;
    let mut at = 0;
    while at < data.len() {
        match record::decode(&data[at..], CAP) {
            Ok((r, size)) => {
                assert!(r.body.len() <= CAP as usize);
                at += size;
            }
            Err(_) => at += 1,
        }
    }
    let mut seq = 0;
    let _ = segment::scan(data, 0, true, CAP, &mut seq, |_| Ok(()));
    let _ = snapshot::read(data, 0, CAP, |_| Ok(()));

    // The same bytes as the only segment of a log (after a valid header, so
    // the records themselves are exercised), then as a snapshot.
    for name in [segment::name(0), snapshot::name(1)] {
        let storage = FaultStorage::new();
        {
            let mut file = storage.create(&name).expect("in memory");
            if name.starts_with("wal-") {
                file.write_all(&segment::header(0)).expect("in memory");
            }
            file.write_all(data).expect("in memory");
            file.sync().expect("in memory");
        }
        let opts = WalOptions {
            max_record_bytes: CAP,
            ..WalOptions::default()
        };
        if let Ok((wal, _)) =
            Wal::open(Arc::new(storage) as Arc<dyn Storage>, opts, |_, _, _, _| {
                Ok::<(), ()>(())
            })
        {
            let _ = wal.close();
        }
    }
}
