//! Fuzz target bodies, free of libfuzzer so that `tests/fuzz_corpus.rs` can
//! run them as ordinary tests over the committed corpus.

pub mod wal_decode;
pub mod wheel_ops;
