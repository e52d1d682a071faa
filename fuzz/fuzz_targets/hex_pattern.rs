//! The `.ndb` hex-signature syntax alone, then matching the result on the input itself (checks in harness.rs).
#![no_main]

#[path = "harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::hex_pattern(data));
