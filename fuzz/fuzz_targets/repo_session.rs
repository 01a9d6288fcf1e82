//! Fuzz target: see `accord_engine::fuzzing::repo_session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| accord_engine::fuzzing::repo_session(data));
