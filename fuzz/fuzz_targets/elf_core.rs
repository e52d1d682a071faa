//! The ELF core parser of `hypervisor_api::mem` (memory dumps are hostile): it must return
//! regions or an error, never panic, and every region it returns must lie inside the input
//! and not overlap the next one.
#![no_main]

use hypervisor_api::mem::elf_core_regions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(regions) = elf_core_regions(data) {
        let mut last_end = 0u64;
        for (i, r) in regions.iter().enumerate() {
            assert!(r.len > 0);
            let end = r.file_offset.checked_add(r.len).expect("offset overflow");
            assert!(end <= data.len() as u64, "region {i} outside the input");
            assert!(i == 0 || r.gpa >= last_end, "region {i} overlaps");
            last_end = r.gpa.checked_add(r.len).expect("address overflow");
        }
    }
});
