//! The QMP memory-tree parser (`info mtree -f` text from a QEMU the SVM does not trust) (checks in harness.rs).
#![no_main]

#[path = "harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::mtree(data));
