//! What every container-reader target checks: members stay within the limits, the total
//! stays within its cap, and nothing panics.

use scanner::containers::{for_each_member, ArchiveLimits, Budget, Flow, Kind};

pub fn check(kind: Kind, data: &[u8]) {
    let limits = ArchiveLimits {
        max_member: 1 << 20,
        max_total: 4 << 20,
        max_files: 64,
        ..ArchiveLimits::default()
    };
    let mut budget = Budget::new(&limits);
    let mut seen = 0u64;
    let _ = for_each_member(kind, data, &mut budget, &mut |_, bytes, _| {
        assert!(bytes.len() as u64 <= limits.max_member);
        seen += bytes.len() as u64;
        Flow::Continue
    });
    assert!(seen <= limits.max_total);
}
