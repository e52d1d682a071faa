//! The ELF core parser of `hypervisor_api::mem` (memory dumps are hostile) (checks in harness.rs).
#![no_main]

#[path = "harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::elf_core(data));
