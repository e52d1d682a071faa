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

struct Agent {
    child: Child,
    /// Everything it printed on standard error.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Agent {
    fn start(socket: &Path, mnt: &Path, fallback: &str) -> Agent {
        Self::connect(&format!("unix:{}", socket.display()), mnt, fallback)
    }

    fn connect(endpoint: &str, mnt: &Path, fallback: &str) -> Agent {
        let mut c = Command::new(svm_tests::built_bin("svm-agent"))
            .arg("--connect")
            .arg(endpoint)
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
        let mut err = c.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let seen = log.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let a = Agent { child: c, log };
        // The marks are in place once "ready" is printed.
        a.wait_for("ready:", 1);
        a
    }

    /// Complete lines printed so far.
    fn lines(&self) -> String {
        let log = self.log.lock().unwrap();
        log.rsplit_once('\n')
            .map(|(done, _)| done.to_owned())
            .unwrap_or_default()
    }

    /// Wait until `needle` has appeared on `n` complete lines.
    fn wait_for(&self, needle: &str, n: usize) {
        let until = Instant::now() + Duration::from_secs(20);
        while self.lines().matches(needle).count() < n {
            assert!(
                Instant::now() < until,
                "svm-agent never printed {needle:?}: {}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's counters (SIGUSR1 makes it print them).
    fn stats(&self) -> std::collections::HashMap<String, u64> {
        let n = self.lines().matches("stats: ").count();
        let st = Command::new("kill")
            .args(["-USR1", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        self.wait_for("stats: ", n + 1);
        let log = self.lines();
        let line = log.lines().rfind(|l| l.contains("stats: ")).unwrap();
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// A fresh tmpfs, or `None` (with the reason printed) where the test cannot run.
fn scratch() -> Option<Tmpfs> {
    if !root() {
        eprintln!("SKIPPED: fanotify permission events need root; run the tests as root");
        return None;
    }
    let fs = Tmpfs::new();
    if fs.is_none() {
        eprintln!("SKIPPED: cannot mount a tmpfs here (mount -t tmpfs failed)");
    }
    fs
}

/// A tmpfs protected by an agent (fallback deny) that asks a fresh `svm serve` whose group
/// fails open on timeouts.
fn protected() -> Option<(Tmpfs, Daemon, Agent)> {
    let fs = scratch()?;
    let cfg = "[server]\n[groups.default]\ndeadline_ms = 2000\non_timeout = \"allow\"\n";
    let d = Daemon::start(cfg, &[]);
    let agent = Agent::start(&d.socket, &fs.mnt, "deny");
    Some((fs, d, agent))
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
    let Some((fs, mut d, agent)) = protected() else {
        return;
    };
    let mnt = fs.mnt.clone();

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
    let before = agent.stats()["fallbacks"];
    let t = Instant::now();
    assert!(std::fs::read(mnt.join("eicar2.com")).is_ok(), "fail-open");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(
        agent.stats()["fallbacks"] > before,
        "the fallback was not counted"
    );

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
    let before = agent.stats()["fallbacks"];
    assert!(denied(std::fs::read(mnt.join("clean2.txt"))), "fail-closed");
    assert!(
        agent.stats()["fallbacks"] > before,
        "the fallback was not counted"
    );
    drop(agent);
}

#[test]
fn with_no_svm_ever_seen_the_agent_applies_its_own_fallback() {
    // A unix socket nobody listens on, and a vsock port nobody listens on (the local CID).
    for (fallback, expect_denied, vsock) in [
        ("deny", true, false),
        ("allow", false, false),
        ("deny", true, true),
    ] {
        let Some(fs) = scratch() else { return };
        std::fs::write(fs.mnt.join("f.txt"), b"x").unwrap();
        let nowhere = if vsock {
            "vsock:1:49999".to_string()
        } else {
            format!("unix:{}", fs.dir.path().join("no-svm.sock").display())
        };
        let agent = Agent::connect(&nowhere, &fs.mnt, fallback);
        let t = Instant::now();
        assert_eq!(
            denied(std::fs::read(fs.mnt.join("f.txt"))),
            expect_denied,
            "--fallback {fallback}"
        );
        assert!(t.elapsed() < Duration::from_secs(10));
        let st = agent.stats();
        assert_eq!(st["fallbacks"], 1, "{st:?}");
        assert_eq!(st["connects"], 0, "{st:?}");
        drop(agent);
    }
}

#[test]
fn files_that_vanish_grow_or_are_not_regular_still_get_an_answer() {
    let Some((fs, d, agent)) = protected() else {
        return;
    };
    let mnt = fs.mnt.clone();
    // Infected files (200 KB: pulled with READ_REQs, not inline) deleted while they are
    // being opened: the event's descriptor still reads them, so none is ever allowed.
    let mut body = eicar();
    body.resize(200_000, b' ');
    for i in 0..30 {
        let p = mnt.join(format!("gone{i}.com"));
        std::fs::write(&p, &body).unwrap();
        let q = p.clone();
        let rm = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_micros(100 * (i % 5)));
            let _ = std::fs::remove_file(&q);
        });
        match std::fs::read(&p) {
            Ok(_) => panic!("deleted infected file {i} was allowed"),
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::NotFound),
                "{i}: {e}"
            ),
        }
        rm.join().unwrap();
    }
    // Growing files: a writer appends while readers open them. Clean content opens, content
    // that starts with EICAR never does, and every open is answered.
    for (name, head, infected) in [
        ("grow.txt", b"clean\n".to_vec(), false),
        ("grow.com", eicar(), true),
    ] {
        let p = mnt.join(name);
        // The writer keeps the descriptor it created the file with: a new open of an
        // infected file for writing would be refused too.
        let mut f = std::fs::File::create(&p).unwrap();
        {
            use std::io::Write;
            f.write_all(&head).unwrap();
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let w = std::thread::spawn(move || {
            use std::io::Write;
            let chunk = vec![b'a'; 64 << 10];
            // At most 16 MiB: the tmpfs holds 64.
            for _ in 0..256 {
                if s.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                if f.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        for _ in 0..20 {
            let r = std::fs::File::open(&p);
            if infected {
                assert!(denied(r), "{name} was allowed");
            } else {
                assert!(r.is_ok(), "{name}: {r:?}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        w.join().unwrap();
        std::fs::remove_file(&p).unwrap();
    }
    // Not regular files: a FIFO and a directory open at once (nothing to scan, no hang).
    let fifo = mnt.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
        assert!(f.is_ok(), "{f:?}");
    }
    assert!(std::fs::read_dir(&mnt).is_ok());
    // Every open above was answered by the SVM, not by a fallback.
    let st = agent.stats();
    assert_eq!(st["fallbacks"], 0, "{st:?}");
    assert!(d.metric("svm_events_total{op=\"open\",result=\"infected\"}") >= 1.0);
}
