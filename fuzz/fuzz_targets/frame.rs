//! Fuzz target: see `accord_engine::fuzzing::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| accord_engine::fuzzing::frame(data));
