//! The thin agent on the host: a tmpfs marked with fanotify, `svm serve` on a unix socket,
//! real opens and execs by this test process. Needs root (fanotify permission events).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use svm_tests::Daemon;

fn eicar() -> Vec<u8> {
    [
        &b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$"[..],
        b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*",
    ]
    .concat()
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    mnt: PathBuf,
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new() -> Option<Tmpfs> {
        let d = tempfile::tempdir().unwrap();
        let mnt = d.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(&mnt)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Tmpfs { mnt, dir: d })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

struct Agent(Child);

impl Agent {
    fn start(socket: &Path, mnt: &Path, fallback: &str) -> Agent {
        let mut c = Command::new(svm_tests::built_bin("svm-agent"))
            .arg("--socket")
            .arg(socket)
            .arg("--mount")
            .arg(mnt)
            .args([
                "--open-perm",
                "--deadline-ms",
                "3000",
                "--fallback",
                fallback,
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for "ready" (the marks are in place once it is printed).
        let mut err = c.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            let mut seen = String::new();
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                if seen.contains("ready:") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("svm-agent did not become ready");
        Agent(c)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn denied<T: std::fmt::Debug>(r: std::io::Result<T>) -> bool {
    matches!(r, Err(ref e) if e.kind() == ErrorKind::PermissionDenied)
}

fn script(path: &Path, body: &[u8]) {
    let mut b = b"#!/bin/sh\necho ran\nexit 0\n# ".to_vec();
    b.extend_from_slice(body);
    b.push(b'\n');
    std::fs::write(path, b).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_agent_blocks_infected_files_and_follows_the_policy_when_the_svm_is_gone() {
    if !root() {
        eprintln!("SKIPPED: fanotify permission events need root; run the tests as root");
        return;
    }
    let Some(fs) = Tmpfs::new() else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (mount -t tmpfs failed)");
        return;
    };
    let mnt = fs.mnt.clone();
    let cfg = "[server]\n[groups.default]\ndeadline_ms = 2000\non_timeout = \"allow\"\n";
    let mut d = Daemon::start(cfg, &[]);
    let agent = Agent::start(&d.socket, &mnt, "deny");

    // Reading: EICAR is refused with EPERM, a clean file opens.
    std::fs::write(mnt.join("eicar.com"), eicar()).unwrap();
    std::fs::write(mnt.join("clean.txt"), b"hello\n").unwrap();
    assert!(denied(std::fs::read(mnt.join("eicar.com"))));
    assert_eq!(std::fs::read(mnt.join("clean.txt")).unwrap(), b"hello\n");
    // Executing: an infected script is refused, a clean one runs.
    let (bad, good) = (mnt.join("bad.sh"), mnt.join("good.sh"));
    script(&bad, &eicar());
    script(&good, b"nothing to see");
    let out = Command::new(&good).output().unwrap();
    assert_eq!(out.stdout, b"ran\n");
    // EICAR anchored at offset 0 is the default set's signature: put it first instead.
    std::fs::write(&bad, [eicar(), b"\n".to_vec()].concat()).unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(denied(Command::new(&bad).output()));
    assert!(d.metric("svm_events_total{op=\"open\",result=\"infected\"}") >= 1.0);
    // A huge sparse file (8 GiB, over the group's 100 MB max_file_size): answered by the
    // on_unscanned policy (allow by default) without the agent sending it.
    let huge = mnt.join("huge.bin");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(8 << 30)
        .unwrap();
    let t = Instant::now();
    assert!(std::fs::File::open(&huge).is_ok());
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(d.metric("svm_events_total{op=\"open\",result=\"unscanned\"}") >= 1.0);

    // The SVM dies: the group announced fail-open on timeout, so a new infected file opens,
    // within the deadline (the agent does not hang).
    let _ = d.child.kill();
    let _ = d.child.wait();
    std::fs::write(mnt.join("eicar2.com"), [eicar(), b" ".to_vec()].concat()).unwrap();
    let t = Instant::now();
    assert!(std::fs::read(mnt.join("eicar2.com")).is_ok(), "fail-open");
    assert!(t.elapsed() < Duration::from_secs(10));

    // A new SVM whose group fails closed: the agent reconnects and enforces again, then
    // applies fail-closed once that SVM is gone too.
    let cfg = "[server]\n[groups.default]\ndeadline_ms = 2000\non_timeout = \"deny\"\non_error = \"deny\"\n";
    let mut d2 = Daemon::start_on(cfg, &[], Some(&d.socket));
    std::fs::write(mnt.join("eicar3.com"), [eicar(), b"  ".to_vec()].concat()).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !denied(std::fs::read(mnt.join("eicar3.com"))) {
        assert!(Instant::now() < until, "the agent did not reconnect");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(std::fs::read(mnt.join("clean.txt")).unwrap(), b"hello\n");
    let _ = d2.child.kill();
    let _ = d2.child.wait();
    std::fs::write(mnt.join("clean2.txt"), b"new\n").unwrap_or(());
    assert!(denied(std::fs::read(mnt.join("clean2.txt"))), "fail-closed");
    drop(agent);
}

#[test]
fn with_no_svm_ever_seen_the_agent_applies_its_own_fallback() {
    if !root() {
        eprintln!("SKIPPED: fanotify permission events need root; run the tests as root");
        return;
    }
    for (fallback, expect_denied) in [("deny", true), ("allow", false)] {
        let Some(fs) = Tmpfs::new() else {
            eprintln!("SKIPPED: cannot mount a tmpfs here (mount -t tmpfs failed)");
            return;
        };
        std::fs::write(fs.mnt.join("f.txt"), b"x").unwrap();
        let nowhere = fs.dir.path().join("no-svm.sock");
        let agent = Agent::start(&nowhere, &fs.mnt, fallback);
        let t = Instant::now();
        assert_eq!(
            denied(std::fs::read(fs.mnt.join("f.txt"))),
            expect_denied,
            "--fallback {fallback}"
        );
        assert!(t.elapsed() < Duration::from_secs(10));
        drop(agent);
    }
}
