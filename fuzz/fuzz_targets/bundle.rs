//! Signed bundles (`signatures::bundle`, fetched from hostile mirrors) (checks in harness.rs).
#![no_main]

#[path = "harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::bundle(data));
