//! The QMP client (`hypervisor_api::qmp`) against a peer that sends arbitrary bytes (checks in harness.rs).
#![no_main]

#[path = "harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::qmp_reply(data));
