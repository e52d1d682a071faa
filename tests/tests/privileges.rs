//! Least privilege: `svm serve` with `[server] user` binds as root, then runs as that user,
//! in every thread, with no capabilities, and keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use svm_tests::Daemon;

const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// A field of a `/proc/.../status` file.
fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
        .to_owned()
}

#[test]
fn the_daemon_drops_to_its_user_in_every_thread_and_keeps_serving() {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| field(&s, "Uid").split_whitespace().nth(1) == Some("0"));
    if !is_root {
        eprintln!("SKIP: dropping privileges needs the test to run as root (CI does)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clamd = dir.path().join("clamd.sock");
    let cfg = format!(
        "[server]\nuser = \"nobody\"\n[clamd]\nsocket = \"{}\"\n",
        clamd.display()
    );
    let d = Daemon::start(&cfg, &[]);
    let log = d.stderr.lock().unwrap().clone();
    assert!(log.contains("running as nobody"), "{log}");
    let pid = d.child.id();
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .collect();
    assert!(tasks.len() > 2, "the daemon runs several threads");
    for t in tasks {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap();
        let name = field(&status, "Name");
        // Real, effective, saved and filesystem ids: all nobody's.
        assert_eq!(
            field(&status, "Uid"),
            "65534\t65534\t65534\t65534",
            "{name}"
        );
        assert_eq!(
            field(&status, "Gid"),
            "65534\t65534\t65534\t65534",
            "{name}"
        );
        assert_eq!(field(&status, "Groups"), "65534", "{name}");
        assert_eq!(field(&status, "CapEff"), "0000000000000000", "{name}");
        assert_eq!(field(&status, "CapPrm"), "0000000000000000", "{name}");
    }
    // Still serving: a scan through the clamd socket, bound before the drop.
    assert_eq!(
        instream(&clamd, EICAR),
        b"stream: Eicar-Test-Signature FOUND\0"
    );
}

/// One clamd `INSTREAM` of `data`: the reply.
fn instream(sock: &std::path::Path, data: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(sock).unwrap();
    let mut req = b"zINSTREAM\0".to_vec();
    req.extend_from_slice(&(data.len() as u32).to_be_bytes());
    req.extend_from_slice(data);
    req.extend_from_slice(&[0; 4]);
    s.write_all(&req).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn scanner_threads_run_under_a_seccomp_filter_and_still_scan() {
    let dir = tempfile::tempdir().unwrap();
    let clamd = dir.path().join("clamd.sock");
    let d = Daemon::start(&format!("[clamd]\nsocket = \"{}\"\n", clamd.display()), &[]);
    let scan = |data: &[u8]| instream(&clamd, data);
    // Scans happen on the confined threads: detection, and a clean answer.
    assert_eq!(scan(EICAR), b"stream: Eicar-Test-Signature FOUND\0");
    assert_eq!(scan(b"plain"), b"stream: OK\0");
    let pid = d.child.id();
    let mut scanners = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap();
        let name = field(&status, "Name");
        if name.starts_with("svm-scan-") {
            scanners += 1;
            assert_eq!(field(&status, "Seccomp"), "2", "{name}");
            assert_eq!(field(&status, "NoNewPrivs"), "1", "{name}");
        }
    }
    assert!(scanners >= 1, "no scanner thread found");
    let log = d.stderr.lock().unwrap().clone();
    assert!(!log.contains("WITHOUT a seccomp filter"), "{log}");
}

/// One clamd command (`zCOMMAND\0`): the reply.
fn clamd_cmd(sock: &std::path::Path, cmd: &str) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(format!("z{cmd}\0").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn landlock_confines_the_daemon_to_the_paths_its_config_names() {
    // Three places: the daemon's own directory (config, sockets, audit log), a directory
    // clamd may scan, and one it may not.
    let allowed = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let sock_dir = tempfile::tempdir().unwrap();
    let clamd = sock_dir.path().join("clamd.sock");
    for d in [allowed.path(), other.path()] {
        std::fs::write(d.join("eicar.com"), EICAR).unwrap();
    }
    let config = |landlock: bool| {
        format!(
            "[server]\nlandlock = {landlock}\n[clamd]\nsocket = \"{}\"\nscan_paths = [\"{}\"]\n",
            clamd.display(),
            allowed.path().display()
        )
    };
    let scan = |d: &tempfile::TempDir| {
        clamd_cmd(
            &clamd,
            &format!("SCAN {}", d.path().join("eicar.com").display()),
        )
    };
    let d = Daemon::start(&config(true), &[]);
    let log = d.stderr.lock().unwrap().clone();
    assert!(log.contains("landlock: enforced"), "{log}");
    assert!(scan(&allowed).ends_with("Eicar-Test-Signature FOUND\0"));
    let denied = scan(&other);
    assert!(
        denied.contains("Permission denied") && denied.ends_with("ERROR\0"),
        "{denied}"
    );
    // Streams need no path, and the daemon's own files stay usable.
    assert_eq!(
        instream(&clamd, EICAR),
        b"stream: Eicar-Test-Signature FOUND\0"
    );
    d.wait_audit(&["Eicar-Test-Signature"], 10);
    // A reload that names a new directory says it is out of reach until a restart.
    let state = other.path().join("state");
    std::fs::write(
        d.dir.path().join("svm.toml"),
        format!(
            "{}[update]\nstate_dir = \"{}\"\n",
            config(true),
            state.display()
        ),
    )
    .unwrap();
    d.signal("HUP");
    svm_tests::wait_until("the reload's Landlock warning", 10, || {
        let log = d.stderr.lock().unwrap().clone();
        log.contains("unreachable until a restart") && log.contains(&*state.to_string_lossy())
    });
    drop(d);
    // The same file is read once Landlock is off: the denial above was Landlock's.
    let d = Daemon::start(&config(false), &[]);
    let log = d.stderr.lock().unwrap().clone();
    assert!(log.contains("landlock: off"), "{log}");
    assert!(scan(&other).ends_with("Eicar-Test-Signature FOUND\0"));
}
