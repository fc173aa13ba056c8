#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| duewheel_fuzz::wheel_ops::run(data));
