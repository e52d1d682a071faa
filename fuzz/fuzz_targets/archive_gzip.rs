//! The gzip container reader on hostile bytes (see archive_common.rs).
#![no_main]

#[path = "archive_common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::check(scanner::containers::Kind::Gzip, data));
