//! The QMP memory-tree parser (`info mtree -f` text from a QEMU the SVM does not trust): it
//! must return ranges or an error, never panic, and the ranges it returns must be non-empty
//! and not wrap around the address space; `check_layout` must then accept or refuse them
//! without panicking.
#![no_main]

use hypervisor_api::mem::check_layout;
use hypervisor_api::qmp::parse_mtree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(regions) = parse_mtree(&text, "mem") {
        for r in &regions {
            assert!(r.len > 0);
            assert!(r.gpa.checked_add(r.len - 1).is_some(), "range wraps");
        }
        let _ = check_layout(regions, 1 << 40);
    }
});
