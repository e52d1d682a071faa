//! Signed bundles (`signatures::bundle`, fetched from hostile mirrors): `inspect` and
//! `verify` must return a result or an error, never panic or allocate without bound. The
//! trusted key is the fixed test key whose signed seeds are in `seeds/bundle/`, so mutations
//! of a validly signed bundle reach the checks behind the signature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signatures::bundle::{inspect, verify, Keypair, Limits};

fuzz_target!(|data: &[u8]| {
    let key = Keypair::from_seed([7; 32]).public();
    let _ = inspect(data);
    let limits = Limits {
        max_bundle: 1 << 20,
        max_unpacked: 4 << 20,
        max_ratio: 1000,
    };
    if let Ok(v) = verify(data, &[key], &limits) {
        let total: usize = v.files.iter().map(|(_, b)| b.len()).sum();
        assert!(total as u64 <= limits.max_unpacked);
    }
});
