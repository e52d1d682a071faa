//! The xz container reader on hostile bytes (checks in harness.rs).
#![no_main]

#[path = "harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::archive(scanner::containers::Kind::Xz, data));
