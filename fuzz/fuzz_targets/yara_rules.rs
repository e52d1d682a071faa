//! YARA rule text through the daemon's loading path, then a scan (checks in
//! harness_yara.rs). Needs `--features yara`: yara-x takes a long build.
#![no_main]

#[path = "harness_yara.rs"]
mod harness_yara;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness_yara::yara_rules(data));
