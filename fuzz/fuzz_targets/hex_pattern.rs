//! The `.ndb` hex-signature syntax alone, and matching the result on the input itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(patterns) = signatures::parse_pattern(text) {
        for p in patterns {
            let _ = p.min_len();
            let _ = p.best_atom();
            if let Some(seg) = p.segments().first() {
                let _ = seg.matches_at(data, 0);
            }
        }
    }
});
