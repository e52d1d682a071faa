//! Every ClamAV database parser on arbitrary bytes; the first byte picks the file kind (checks in harness.rs).
#![no_main]

#[path = "harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::clamav_parsers(data));
