//! The fuzz target that needs YARA, like harness.rs: `yara_rules` calls it, and
//! `tests/tests/fuzz_regressions.rs` replays `fuzz/regressions/yara_rules/` through it.

use scanner::{Limits, MatchKind, ScanResult, Scanner};
use signatures::{LoadOptions, Loader};
use std::time::Duration;

/// What a compiled set scans: a little of everything a rule may look for.
const SAMPLE: &[u8] = b"MZ\x90\x00\x03\x00\x00\x00\x7fELF\x02\x01\x01\x00 hello world \
    X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR \x00\x01\x02\xfe\xff http://example.invalid/";

/// `yara_rules`: arbitrary rule text loaded as a `.yar` file through the `Loader`, as
/// `svm` loads its signature directory and bundles; it is refused with errors or compiles,
/// and a set that compiled scans a small buffer, with matches only of its own YARA rules.
pub fn yara_rules(data: &[u8]) {
    let mut loader = Loader::new(LoadOptions::strict());
    if loader.add_bytes("fuzz.yar", data).is_err() {
        return;
    }
    let Ok(set) = loader.build() else {
        return;
    };
    let rules = set.counts().yara;
    let mut scanner = Scanner::new(&set);
    scanner.set_limits(Limits {
        max_scan_time: Duration::from_secs(1),
        ..Limits::default()
    });
    if let ScanResult::Infected { matches } = scanner.scan_bytes(SAMPLE) {
        assert!(
            matches.len() as u64 <= rules,
            "{} matches of {rules} rules",
            matches.len()
        );
        assert!(matches.iter().all(|m| m.kind == MatchKind::Yara));
    }
}
