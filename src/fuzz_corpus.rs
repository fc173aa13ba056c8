//! The fuzz targets as ordinary tests: every file of the committed corpus,
//! plus deterministic pseudo-random inputs, so CI exercises them without a
//! nightly toolchain. `cargo fuzz run <target>` (in `fuzz/`) explores further.
//!
//! Inside the crate (a unit test module) because `wal_decode` drives the
//! log's private record, segment and snapshot decoders; the target files
//! name the crate `duewheel`, which `lib.rs` aliases to `self` under test.

#[allow(unreachable_pub, dead_code)] // `pub` for the fuzz crate that also includes it
#[path = "../fuzz/src/wal_decode.rs"]
mod wal_decode;
#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/wheel_ops.rs"]
mod wheel_ops;

use std::path::Path;

fn corpus(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        files += 1;
    }
    assert!(files > 0, "empty corpus in {}", dir.display());
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for len in 0..2_000usize {
        let bytes: Vec<u8> = (0..len % 512)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        run(&bytes);
    }
}

#[test]
fn wheel_ops_corpus_passes() {
    corpus("wheel_ops", wheel_ops::run);
}

#[test]
fn wal_decode_corpus_passes() {
    corpus("wal_decode", wal_decode::run);
}
