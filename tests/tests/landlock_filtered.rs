//! Landlock degrades with a clear line: with its system calls filtered (as an older systemd
//! unit's `SystemCallFilter=@system-service` does), `svm serve` says file access is not
//! confined, and serves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use svm_tests::{built_bin, svm_bin, Daemon};

#[test]
fn filtered_landlock_calls_leave_the_daemon_unconfined_and_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    // SVM_BIN is read by this test binary's only test: a wrapper under the filter.
    let wrapper = dir.path().join("svm-filtered");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} {},{},{} {} \"$@\"\n",
            built_bin("deny-syscalls").display(),
            libc::SYS_landlock_create_ruleset,
            libc::SYS_landlock_add_rule,
            libc::SYS_landlock_restrict_self,
            svm_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::env::set_var("SVM_BIN", &wrapper);
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("f.txt"), b"plain").unwrap();
    let clamd = dir.path().join("clamd.sock");
    let d = Daemon::start(
        &format!(
            "[clamd]\nsocket = \"{}\"\nscan_paths = [\"{}\"]\n",
            clamd.display(),
            dir.path().display()
        ),
        &[],
    );
    let log = d.stderr.lock().unwrap().clone();
    assert!(
        log.contains("landlock: not available") && log.contains("not confined"),
        "{log}"
    );
    // Unconfined indeed: a path outside scan_paths is read.
    let mut s = UnixStream::connect(&clamd).unwrap();
    s.write_all(format!("zSCAN {}\0", other.path().join("f.txt").display()).as_bytes())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.ends_with(": OK\0"), "{out}");
}
