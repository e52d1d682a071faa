//! The clamd protocol (`hypervisor_api::clamd`): command lines and `INSTREAM` chunks (checks in harness.rs).
#![no_main]

#[path = "harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::clamd_protocol(data));
