//! The tar container reader on hostile bytes: members within the limits, never a panic,
//! never an allocation past the caps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scanner::containers::{for_each_member, ArchiveLimits, Budget, Flow, Kind};

fuzz_target!(|data: &[u8]| {
    let limits = ArchiveLimits {
        max_member: 1 << 20,
        max_total: 4 << 20,
        max_files: 64,
        ..ArchiveLimits::default()
    };
    let mut budget = Budget::new(&limits);
    let mut seen = 0u64;
    let _ = for_each_member(Kind::Tar, data, &mut budget, &mut |_, bytes, _| {
        assert!(bytes.len() as u64 <= limits.max_member);
        seen += bytes.len() as u64;
        Flow::Continue
    });
    assert!(seen <= limits.max_total);
});
