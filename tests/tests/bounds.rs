//! Per-VM bounds: a VM that queues more scans than `max_queued_per_vm` gets its group's
//! `on_error` verdict at once, and one that opens more than `max_connections_per_vm`
//! connections is refused; the other VMs are served as if nothing happened.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use hypervisor_api::proto::{Message, WireAction, WireStatus};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use svm_tests::{inline_open, Daemon, RawGuest};

const STALL: &str = "svm-bounds-stall";

/// A VM's virtio-serial socket in `dir`, which the daemon connects to.
fn vm_socket(dir: &Path, name: &str) -> UnixListener {
    UnixListener::bind(dir.join(format!("{name}.sock"))).unwrap()
}

/// The daemon's connection to a VM socket, greeted as `name`.
fn accept(l: &UnixListener, name: &str) -> RawGuest {
    let (s, _) = l.accept().unwrap();
    let mut g = RawGuest::new(s).unwrap();
    g.hello(name).unwrap();
    g
}

#[test]
fn a_vm_over_its_queue_cap_gets_the_policy_verdict_and_the_others_are_scanned() {
    let vms = tempfile::tempdir().unwrap();
    let (ln, lq) = (
        vm_socket(vms.path(), "noisy"),
        vm_socket(vms.path(), "quiet"),
    );
    // One scanner thread, each marked scan held 1.5 s: the noisy VM's first scan runs, two
    // more queue, and the rest find its queue full.
    let cfg = format!(
        "[server]\nworkers = 1\nmax_queued_per_vm = 2\n\
         [server.test_stall]\nmarker = \"{STALL}\"\nms = 1500\n\
         [groups.default]\ndeadline_ms = 60000\non_error = \"deny\"\n"
    );
    let d = Daemon::start(&cfg, &["--vm-socket-dir", vms.path().to_str().unwrap()]);
    let (mut noisy, mut quiet) = (accept(&ln, "noisy"), accept(&lq, "quiet"));
    for i in 1..=6u64 {
        let data = format!("noisy {i} {STALL}").into_bytes();
        noisy.send(&inline_open(i, &data)).unwrap();
    }
    // The quiet VM's scan is queued (its own queue is empty) and answered by a scan.
    let v = quiet.scan(1, format!("quiet {STALL}").as_bytes()).unwrap();
    assert_eq!(v.status, WireStatus::Clean);
    let mut refused = 0;
    let mut scanned = 0;
    for _ in 0..6 {
        match noisy.recv().unwrap() {
            Message::Verdict(v) => match v.status {
                WireStatus::Clean => scanned += 1,
                WireStatus::Unscanned(why) => {
                    assert!(why.contains("2 scans queued"), "{why}");
                    assert_eq!(v.action, WireAction::Deny);
                    refused += 1;
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
    // At most one scan runs and two wait; whether the first had left the queue when the
    // others arrived decides between 2 and 3 scanned. The rest were refused, never lost.
    assert_eq!(refused + scanned, 6);
    assert!(
        (2..=3).contains(&scanned),
        "{scanned} scanned, {refused} refused"
    );
    assert_eq!(d.metric("svm_queue_refused_total"), f64::from(refused));
}

#[test]
fn a_vm_over_its_connection_cap_is_refused_and_the_others_connect() {
    let vms = tempfile::tempdir().unwrap();
    let cfg = "[server]\nmax_connections_per_vm = 2\n";
    let d = Daemon::start(cfg, &["--vm-socket-dir", vms.path().to_str().unwrap()]);
    // Same-host agents: every connection from this uid is the same VM.
    let mut a = RawGuest::connect(&d.socket).unwrap();
    let b = RawGuest::connect(&d.socket).unwrap();
    let mut c = RawGuest::new(UnixStream::connect(&d.socket).unwrap()).unwrap();
    match c.recv() {
        Ok(Message::Error(e)) => assert!(e.message.contains("2 connections open"), "{e:?}"),
        other => panic!("the third connection was not refused: {other:?}"),
    }
    // Another VM (a virtio-serial socket) still connects and is served.
    let l = vm_socket(vms.path(), "other");
    let mut other = accept(&l, "other");
    assert_eq!(other.scan(1, b"other").unwrap().status, WireStatus::Clean);
    // The two admitted ones are served, and a place freed is a place to take again.
    assert_eq!(a.scan(1, b"a").unwrap().status, WireStatus::Clean);
    let _ = b.s.shutdown(std::net::Shutdown::Both);
    drop(b);
    svm_tests::wait_until("a freed connection place", 10, || {
        let Ok(mut g) = RawGuest::connect(&d.socket) else {
            return false;
        };
        g.scan(2, b"again")
            .is_ok_and(|v| v.status == WireStatus::Clean)
    });
}
