//! Helpers for the end-to-end tests: find and run the real `svm` binary.
//!
//! The tests in `tests/tests/` run `svm` as a user would, on corpora made by the `corpus`
//! crate. Run them with `cargo test --workspace --release` so the binary is built.
//!
//! # Current limitations
//! - Only `svm scan` exists to test so far.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `svm` binary: `$SVM_BIN`, or the one next to the running test's target directory.
pub fn svm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SVM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/svm
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let bin = dir.join("svm");
    assert!(
        bin.exists(),
        "svm binary not found at {}; run the tests with `cargo test --workspace` or set SVM_BIN",
        bin.display()
    );
    bin
}

/// Run `svm` with arguments and capture its output.
pub fn svm<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(svm_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run svm: {e}"))
}

/// Exit code of a finished run (-1 if killed by a signal).
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}
