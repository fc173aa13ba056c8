#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| duewheel_fuzz::wal_decode::run(data));
