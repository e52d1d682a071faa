//! The shipped systemd unit keeps its hardening: `systemd-analyze security` (offline, on the
//! unit file) must rate it at most 2.0 (it rates 1.9; a unit with only `ExecStart` rates 9.6,
//! see packaging/security.txt).

use std::path::Path;
use std::process::Command;

#[test]
fn the_systemd_unit_stays_hardened() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/svm.service");
    let probe = Command::new("systemd-analyze").arg("--version").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIP: systemd-analyze is not installed (Debian's systemd package has it)");
        return;
    }
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "exposure above 2.0:\n{out}");
    assert!(
        out.contains("Overall exposure level for svm.service"),
        "{out}"
    );
}
