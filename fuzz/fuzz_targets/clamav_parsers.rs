//! Every ClamAV database parser, on arbitrary bytes: the first byte picks the file kind.
//! A load may fail with errors; it must never panic or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signatures::{LoadOptions, Loader};

const KINDS: &[&str] = &["x.hdb", "x.hsb", "x.fp", "x.sfp", "x.ign2", "x.ndb", "x.cvd", "x.cld", "x.ldb"];

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else { return };
    let name = KINDS[usize::from(k) % KINDS.len()];
    for skip in [false, true] {
        let mut l = Loader::new(LoadOptions::strict().skip_invalid(skip));
        if l.add_bytes(name, rest).is_ok() {
            if let Ok(set) = l.build() {
                // Touch what a scanner would use.
                let _ = set.hashes().wanted(rest.len() as u64);
                for s in set.bodies().sigs() {
                    let _ = s.pattern.best_atom();
                    let _ = s.offset.start_range(rest.len());
                }
            }
        }
    }
});
