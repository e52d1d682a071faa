//! End-to-end tests of `svm serve`: a real daemon on a temporary unix socket (and a socket
//! directory, as QEMU provides), with the tests speaking raw protocol frames.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use hypervisor_api::proto::{
    self, caps, Content, ErrorCode, FileEvent, FileIdentity, FileOp, Hello, Message, OsKind,
    ReadData, ReadStatus, VerdictMsg, Welcome, WireAction, WireStatus,
};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};
use svm_tests::Daemon;

const STALL: &str = "SVM-TEST-STALL";

fn eicar() -> Vec<u8> {
    [
        &b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$"[..],
        b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*",
    ]
    .concat()
}

/// A config with short protocol timeouts and the stall marker; `groups` is appended.
fn config(groups: &str) -> String {
    format!(
        r#"
[server]
frame_timeout_ms = 500
read_timeout_ms = 800
hello_timeout_ms = 3000
[server.test_stall]
marker = "{STALL}"
ms = 1500
{groups}
"#
    )
}

/// A guest speaking raw frames over a blocking socket.
struct Raw {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Raw {
    fn new(s: UnixStream) -> Raw {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        Raw { s, buf: Vec::new() }
    }
    fn unix(path: &Path) -> Raw {
        Raw::new(UnixStream::connect(path).unwrap())
    }
    fn send(&mut self, m: &Message) {
        self.s.write_all(&m.to_frame()).unwrap();
    }
    fn send_bytes(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b);
    }
    /// The next message, or None at the end of the stream.
    fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some((m, n)) = proto::decode_frame(&self.buf, proto::HARD_MAX_PAYLOAD).unwrap() {
                self.buf.drain(..n);
                return Some(m);
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }
    fn hello(&mut self, vm: &str) -> Welcome {
        self.send(&Message::Hello(Hello {
            proto_version: 1,
            os: OsKind::Linux,
            os_detail: "test".into(),
            agent_version: "raw-test".into(),
            capabilities: caps::READ | caps::INLINE,
            vm_name: vm.into(),
        }));
        match self.recv() {
            Some(Message::Welcome(w)) => w,
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }
    /// Expect an ERROR with this code, then the close.
    fn expect_error_and_close(&mut self, code: ErrorCode) {
        match self.recv() {
            Some(Message::Error(e)) => assert_eq!(e.code, code, "{e:?}"),
            other => panic!("expected ERROR {code:?}, got {other:?}"),
        }
        assert_eq!(self.recv(), None, "the connection should be closed");
    }
    /// Send an inline `open` and wait for its verdict.
    fn open_inline(&mut self, id: u64, ident: u64, data: &[u8]) -> VerdictMsg {
        self.send(&inline_event(id, FileOp::Open, ident, data));
        self.verdict(id)
    }
    fn verdict(&mut self, id: u64) -> VerdictMsg {
        loop {
            match self.recv() {
                Some(Message::Verdict(v)) if v.request_id == id => return v,
                Some(Message::Verdict(_)) | Some(Message::Invalidate(_)) => {}
                other => panic!("expected VERDICT {id}, got {other:?}"),
            }
        }
    }
}

fn identity(n: u64, size: u64) -> FileIdentity {
    FileIdentity::Posix {
        dev: 8,
        ino: n,
        size,
        mtime_ns: 1_700_000_000_000_000_000,
        ctime_ns: 1_700_000_000_000_000_000,
    }
}

fn inline_event(id: u64, op: FileOp, ident: u64, data: &[u8]) -> Message {
    Message::FileEvent(FileEvent {
        request_id: id,
        op,
        deadline_ms: 0,
        identity: identity(ident, data.len() as u64),
        size: data.len() as u64,
        path: format!("/srv/file-{ident}").into_bytes(),
        content: Content::Inline(data.to_vec()),
    })
}

fn read_event(id: u64, ident: u64, size: u64) -> Message {
    Message::FileEvent(FileEvent {
        request_id: id,
        op: FileOp::Exec,
        deadline_ms: 0,
        identity: identity(ident, size),
        size,
        path: format!("/srv/big-{ident}").into_bytes(),
        content: Content::Read,
    })
}

fn is_infected(v: &VerdictMsg, name: &str) -> bool {
    matches!(&v.status, WireStatus::Infected(n) if n.iter().any(|x| x == name))
}

/// Serve every READ_REQ of `id` from `data` until the verdict comes.
fn serve_reads(g: &mut Raw, id: u64, data: &[u8]) -> (VerdictMsg, usize) {
    let mut reqs = 0;
    loop {
        match g.recv() {
            Some(Message::ReadReq(r)) => {
                assert_eq!(r.request_id, id);
                reqs += 1;
                let start = r.offset as usize;
                let end = (start + r.len as usize).min(data.len());
                g.send(&Message::ReadData(ReadData {
                    request_id: id,
                    offset: r.offset,
                    status: if end - start == r.len as usize {
                        ReadStatus::Ok
                    } else {
                        ReadStatus::Eof
                    },
                    data: data[start..end].to_vec(),
                }));
            }
            Some(Message::Verdict(v)) if v.request_id == id => return (v, reqs),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Big content (over the 1 MiB memory threshold, so it is spooled to a memfd) that starts
/// with EICAR (the default set's EICAR signature is anchored at offset 0).
fn big_infected() -> Vec<u8> {
    let mut d = eicar();
    d.extend((0..3_000_000u32).map(|i| (i * 7 % 251) as u8));
    d
}

#[test]
fn infected_is_denied_and_clean_is_allowed() {
    let d = Daemon::start(&config(""), &[]);
    let mut g = Raw::unix(&d.socket);
    let w = g.hello("");
    assert!(w.vm.starts_with("uid-"), "{w:?}");
    assert_eq!(w.group, "default");
    let v = g.open_inline(1, 1, &eicar());
    assert_eq!(v.action, WireAction::Deny);
    assert!(is_infected(&v, "Eicar-Test-Signature"), "{v:?}");
    assert_eq!(v.sigset_version, w.sigset_version);
    assert_eq!(v.cache_epoch, w.cache_epoch);
    let v = g.open_inline(2, 2, b"just a text file\n");
    assert_eq!(
        (v.action, &v.status),
        (WireAction::Allow, &WireStatus::Clean)
    );
    // Pulled in ranges with READ_REQ, spooled (3 MB > 1 MiB threshold), infected.
    let big = big_infected();
    g.send(&read_event(3, 3, big.len() as u64));
    let (v, reqs) = serve_reads(&mut g, 3, &big);
    assert_eq!(v.action, WireAction::Deny);
    assert!(is_infected(&v, "Eicar-Test-Signature"), "{v:?}");
    assert_eq!(reqs, big.len().div_ceil(512 << 10));
    // A PING is answered.
    g.send(&Message::Ping(42));
    assert_eq!(g.recv(), Some(Message::Pong(42)));
    // The audit log has the two detections with their hash and names.
    std::thread::sleep(Duration::from_millis(200));
    let audit = d.audit();
    assert_eq!(audit.len(), 2, "{audit:?}");
    let rec: serde_json::Value = serde_json::from_str(&audit[0]).unwrap();
    assert_eq!(rec["result"], "infected");
    assert_eq!(rec["action"], "deny");
    assert_eq!(rec["signatures"][0], "Eicar-Test-Signature");
    assert_eq!(rec["content_hash"].as_str().unwrap().len(), 64);
    assert_eq!(
        d.metric("svm_events_total{op=\"open\",result=\"infected\"}"),
        1.0
    );
    assert_eq!(
        d.metric("svm_events_total{op=\"exec\",result=\"infected\"}"),
        1.0
    );
}

/// Bind `NAME.sock` in `dir` like QEMU's chardev and accept the SVM's connection.
fn vm_socket(dir: &Path, name: &str) -> UnixListener {
    let l = UnixListener::bind(dir.join(format!("{name}.sock"))).unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

fn accept(l: &UnixListener) -> Raw {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return Raw::new(s);
            }
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("the SVM did not connect: {e}"),
        }
    }
}

#[test]
fn cloned_guests_share_one_scan() {
    let vms = tempfile::tempdir().unwrap();
    let (la, lb) = (
        vm_socket(vms.path(), "clone-a"),
        vm_socket(vms.path(), "clone-b"),
    );
    let d = Daemon::start(
        &config(""),
        &["--vm-socket-dir", vms.path().to_str().unwrap()],
    );
    let (mut a, mut b) = (accept(&la), accept(&lb));
    assert_eq!(a.hello("clone-a").vm, "clone-a");
    assert_eq!(b.hello("").vm, "clone-b");
    // Sequential: the second guest is answered from the cache.
    let content = b"#!/bin/sh\necho the same base image file\n".repeat(100);
    assert_eq!(a.open_inline(1, 10, &content).action, WireAction::Allow);
    assert_eq!(b.open_inline(1, 10, &content).action, WireAction::Allow);
    assert_eq!(d.metric("svm_scans_total"), 1.0);
    // Concurrent: the scan stalls, the second request joins it.
    let mut stalled = b"payload ".repeat(50);
    stalled.extend_from_slice(STALL.as_bytes());
    a.send(&inline_event(2, FileOp::Open, 11, &stalled));
    std::thread::sleep(Duration::from_millis(300));
    b.send(&inline_event(2, FileOp::Open, 11, &stalled));
    assert_eq!(a.verdict(2).status, WireStatus::Clean);
    assert_eq!(b.verdict(2).status, WireStatus::Clean);
    assert_eq!(d.metric("svm_scans_total"), 2.0);
    assert_eq!(d.metric("svm_singleflight_joins_total"), 1.0);
    // Per-VM identity cache: a second open of the same identity needs no content.
    a.send(&Message::FileEvent(FileEvent {
        request_id: 3,
        op: FileOp::Open,
        deadline_ms: 0,
        identity: identity(10, content.len() as u64),
        size: content.len() as u64,
        path: b"/srv/file-10".to_vec(),
        content: Content::Read,
    }));
    assert_eq!(a.verdict(3).status, WireStatus::Clean);
    assert!(d.metric("svm_identity_cache_hits_total") >= 1.0);
    // The identity shortcut is per VM: another VM claiming that identity with different
    // content gets that content scanned, not the first VM's verdict.
    let v = b.open_inline(4, 10, &eicar());
    assert_eq!(v.action, WireAction::Deny);
    // A guest claiming another VM's name is refused.
    let lc = vm_socket(vms.path(), "clone-c");
    let mut c = accept(&lc);
    c.send(&Message::Hello(Hello {
        proto_version: 1,
        os: OsKind::Linux,
        os_detail: String::new(),
        agent_version: String::new(),
        capabilities: 0,
        vm_name: "clone-a".into(),
    }));
    c.expect_error_and_close(ErrorCode::IdentityMismatch);
}

#[test]
fn a_missed_deadline_gets_the_policy_verdict_and_is_counted() {
    let d = Daemon::start(
        &config("[groups.default]\ndeadline_ms = 300\non_timeout = \"deny\"\n"),
        &[],
    );
    let mut g = Raw::unix(&d.socket);
    assert_eq!(g.hello("").deadline_ms, 300);
    let mut data = b"stalled content ".to_vec();
    data.extend_from_slice(STALL.as_bytes());
    let v = g.open_inline(1, 1, &data);
    assert_eq!(v.action, WireAction::Deny);
    match &v.status {
        WireStatus::Unscanned(r) => assert!(r.contains("deadline"), "{r}"),
        s => panic!("{s:?}"),
    }
    assert_eq!(
        d.metric("svm_policy_fallbacks_total{policy=\"on_timeout\",action=\"deny\"}"),
        1.0
    );
    assert_eq!(
        d.metric("svm_events_total{op=\"open\",result=\"timeout\"}"),
        1.0
    );
    // The scan still finishes and fills the cache: the retry is answered from it.
    std::thread::sleep(Duration::from_millis(1600));
    let v = g.open_inline(2, 1, &data);
    assert_eq!((v.action, v.status), (WireAction::Allow, WireStatus::Clean));
    assert_eq!(d.metric("svm_scans_total"), 1.0);
    let audit = d.audit();
    assert!(
        audit
            .iter()
            .any(|l| l.contains("\"policy\":\"on_timeout\"")),
        "{audit:?}"
    );
}

#[test]
fn a_guest_that_disconnects_mid_event_harms_no_one() {
    let mut d = Daemon::start(&config(""), &[]);
    let mut g = Raw::unix(&d.socket);
    g.hello("");
    g.send(&read_event(1, 1, 5_000_000));
    assert!(matches!(g.recv(), Some(Message::ReadReq(_))));
    drop(g);
    // Also one that leaves while its scan is running.
    let mut h = Raw::unix(&d.socket);
    h.hello("");
    let mut data = b"x".repeat(100);
    data.extend_from_slice(STALL.as_bytes());
    h.send(&inline_event(1, FileOp::Open, 2, &data));
    drop(h);
    let mut ok = Raw::unix(&d.socket);
    ok.hello("");
    assert_eq!(ok.open_inline(1, 3, &eicar()).action, WireAction::Deny);
    assert!(d.alive());
}

#[test]
fn sigterm_drains_in_flight_events_then_exits() {
    let mut d = Daemon::start(&config(""), &[]);
    let mut g = Raw::unix(&d.socket);
    g.hello("");
    let mut data = b"y".repeat(100);
    data.extend_from_slice(STALL.as_bytes());
    g.send(&inline_event(7, FileOp::Open, 1, &data));
    std::thread::sleep(Duration::from_millis(200));
    d.signal("TERM");
    // The stalled scan ends after the signal; its verdict still arrives.
    let v = g.verdict(7);
    assert_eq!((v.action, v.status), (WireAction::Allow, WireStatus::Clean));
    assert_eq!(g.recv(), None);
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "svm serve did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(!d.socket.exists(), "the socket should be removed");
}

#[test]
fn hostile_input_closes_only_that_connection() {
    let mut d = Daemon::start(&config(""), &[]);
    // A well-behaved guest connected throughout.
    let mut good = Raw::unix(&d.socket);
    good.hello("");

    let header = |ty: u8, len: u32| {
        let mut h = vec![proto::MAGIC, proto::VERSION, ty, 0];
        h.extend_from_slice(&len.to_le_bytes());
        h
    };
    // A length over the limit: refused from the header alone.
    let mut g = Raw::unix(&d.socket);
    g.send_bytes(&header(proto::ty::HELLO, u32::MAX));
    g.expect_error_and_close(ErrorCode::FrameTooLarge);
    // An oversized frame actually sent (2 MiB against a 1 MiB limit).
    let mut g = Raw::unix(&d.socket);
    g.hello("");
    let mut big = header(proto::ty::READ_DATA, 2 << 20);
    big.extend(std::iter::repeat_n(0u8, 2 << 20));
    g.send_bytes(&big);
    g.expect_error_and_close(ErrorCode::FrameTooLarge);
    // An unknown type.
    let mut g = Raw::unix(&d.socket);
    g.hello("");
    g.send_bytes(&header(0x7E, 0));
    g.expect_error_and_close(ErrorCode::UnknownType);
    // A frame the guest ends halfway (half-close, so it can still read the ERROR).
    let mut g = Raw::unix(&d.socket);
    g.hello("");
    let f = inline_event(1, FileOp::Open, 1, b"abcdef").to_frame();
    g.send_bytes(&f[..f.len() / 2]);
    g.s.shutdown(std::net::Shutdown::Write).unwrap();
    g.expect_error_and_close(ErrorCode::Malformed);
    // Garbage after HELLO.
    let mut g = Raw::unix(&d.socket);
    g.hello("");
    g.send_bytes(b"GET / HTTP/1.1\r\n\r\n");
    g.expect_error_and_close(ErrorCode::BadFrame);
    // Something other than HELLO first.
    let mut g = Raw::unix(&d.socket);
    g.send(&Message::Ping(1));
    g.expect_error_and_close(ErrorCode::Unexpected);
    // A payload that does not decode (a FILE_EVENT cut short inside a correct frame).
    let mut g = Raw::unix(&d.socket);
    g.hello("");
    let mut bad = header(proto::ty::FILE_EVENT, 3);
    bad.extend_from_slice(&[1, 2, 3]);
    g.send_bytes(&bad);
    g.expect_error_and_close(ErrorCode::Malformed);
    // Slowloris: a frame started and never finished (frame timeout 500 ms).
    let mut g = Raw::unix(&d.socket);
    g.hello("");
    g.send_bytes(&header(proto::ty::PING, 8)[..5]);
    g.expect_error_and_close(ErrorCode::Timeout);
    // A guest that never answers READ_REQ (read timeout 800 ms): its verdict comes from
    // the policy at the deadline or never, then the ERROR and the close.
    let mut g = Raw::unix(&d.socket);
    g.hello("");
    g.send(&read_event(1, 1, 4_000_000));
    let mut got_error = false;
    while let Some(m) = g.recv() {
        match m {
            Message::ReadReq(_) | Message::Verdict(_) => {}
            Message::Error(e) => {
                assert_eq!(e.code, ErrorCode::Timeout, "{e:?}");
                got_error = true;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(got_error);
    // A duplicate pending request id.
    let mut g = Raw::unix(&d.socket);
    g.hello("");
    g.send(&read_event(5, 1, 4_000_000));
    g.send(&read_event(5, 2, 4_000_000));
    loop {
        match g.recv() {
            Some(Message::ReadReq(_)) => {}
            Some(Message::Error(e)) => {
                assert_eq!(e.code, ErrorCode::DuplicateRequest);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    // An fd-mode event with no descriptor passed.
    let mut g = Raw::unix(&d.socket);
    g.hello("");
    g.send(&Message::FileEvent(FileEvent {
        request_id: 1,
        op: FileOp::Open,
        deadline_ms: 0,
        identity: identity(1, 10),
        size: 10,
        path: b"/x".to_vec(),
        content: Content::Fd,
    }));
    g.expect_error_and_close(ErrorCode::Malformed);
    // READ_DATA nobody asked for.
    let mut g = Raw::unix(&d.socket);
    g.hello("");
    g.send(&Message::ReadData(ReadData {
        request_id: 99,
        offset: 0,
        status: ReadStatus::Ok,
        data: vec![1],
    }));
    g.expect_error_and_close(ErrorCode::Malformed);

    // The good guest still gets its verdicts; nothing crashed.
    assert_eq!(good.open_inline(1, 1, &eicar()).action, WireAction::Deny);
    assert_eq!(good.open_inline(2, 2, b"fine").action, WireAction::Allow);
    assert!(d.alive());
    assert!(d.metric("svm_protocol_errors_total{kind=\"timeout\"}") >= 2.0);
    assert!(!d.stderr.lock().unwrap().contains("panicked"));
}

#[test]
fn a_write_found_infected_invalidates_the_file_for_the_agent() {
    let d = Daemon::start(&config(""), &[]);
    let mut g = Raw::unix(&d.socket);
    g.hello("");
    // close_write waits for nothing; an infected result comes back as INVALIDATE.
    g.send(&inline_event(1, FileOp::CloseWrite, 5, &eicar()));
    match g.recv() {
        Some(Message::Invalidate(i)) => {
            assert_eq!(i.identity, identity(5, eicar().len() as u64));
            assert_eq!(i.path, b"/srv/file-5");
        }
        other => panic!("expected INVALIDATE, got {other:?}"),
    }
    // The next open of that file (same identity, content not sent) is denied.
    g.send(&Message::FileEvent(FileEvent {
        request_id: 2,
        op: FileOp::Open,
        deadline_ms: 0,
        identity: identity(5, eicar().len() as u64),
        size: eicar().len() as u64,
        path: b"/srv/file-5".to_vec(),
        content: Content::Read,
    }));
    let v = g.verdict(2);
    assert_eq!(v.action, WireAction::Deny);
    std::thread::sleep(Duration::from_millis(200));
    assert!(d
        .audit()
        .iter()
        .any(|l| l.contains("\"op\":\"close_write\"") && l.contains("infected")));
}

#[test]
fn policies_excludes_and_size_limits_and_sighup_reload() {
    let d = Daemon::start(
        &config(
            "[groups.default]\non_infected = \"allow_and_log\"\nmax_file_size = 1000\nexclude = [\"/srv/skip/**\"]\n",
        ),
        &[],
    );
    let mut g = Raw::unix(&d.socket);
    g.hello("");
    // allow_and_log: allowed, still reported infected, audited.
    let v = g.open_inline(1, 1, &eicar());
    assert_eq!(v.action, WireAction::Allow);
    assert!(is_infected(&v, "Eicar-Test-Signature"));
    // Over the group's max_file_size: unscanned, on_unscanned (allow by default).
    let v = g.open_inline(2, 2, &[b'a'; 2000]);
    assert_eq!(v.action, WireAction::Allow);
    assert!(matches!(v.status, WireStatus::Unscanned(_)), "{v:?}");
    // Excluded path: allowed without a scan, counted.
    let mut ev = inline_event(3, FileOp::Open, 3, &eicar());
    if let Message::FileEvent(e) = &mut ev {
        e.path = b"/srv/skip/x".to_vec();
    }
    g.send(&ev);
    let v = g.verdict(3);
    assert!(matches!(v.status, WireStatus::Unscanned(ref r) if r.contains("excluded")));
    assert_eq!(
        d.metric("svm_events_total{op=\"open\",result=\"unscanned\"}"),
        2.0
    );
    // SIGHUP reloads the config: new policies apply without a restart.
    std::fs::write(
        d.dir.path().join("svm.toml"),
        config("[groups.default]\ndeadline_ms = 1234\n"),
    )
    .unwrap();
    d.signal("HUP");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let mut h = Raw::unix(&d.socket);
        if h.hello("").deadline_ms == 1234 {
            let v = h.open_inline(1, 9, &eicar());
            assert_eq!(v.action, WireAction::Deny);
            break;
        }
        assert!(Instant::now() < until, "config not reloaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(d.http_get("/healthz").starts_with("ok"));
}

#[test]
fn svm_check_prints_verdicts_with_exit_codes() {
    let d = Daemon::start(&config(""), &[]);
    let dir = tempfile::tempdir().unwrap();
    let (bad, good) = (dir.path().join("eicar.com"), dir.path().join("ok.txt"));
    std::fs::write(&bad, eicar()).unwrap();
    std::fs::write(&good, "hello").unwrap();
    let sock = d.socket.to_str().unwrap();
    let out = svm_tests::svm(["check", "--socket", sock, good.to_str().unwrap()]);
    assert_eq!(svm_tests::code(&out), 0, "{out:?}");
    let out = svm_tests::svm(["check", "--socket", sock, bad.to_str().unwrap()]);
    assert_eq!(svm_tests::code(&out), 1);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Eicar-Test-Signature FOUND (deny)"), "{text}");
    // Passed as a descriptor (SCM_RIGHTS), large enough to be spooled to a memfd.
    let big = dir.path().join("big.bin");
    std::fs::write(&big, big_infected()).unwrap();
    let out = svm_tests::svm([
        "check",
        "--pass-fd",
        "--socket",
        sock,
        big.to_str().unwrap(),
    ]);
    assert_eq!(svm_tests::code(&out), 1, "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Eicar-Test-Signature FOUND (deny)"));
    let out = svm_tests::svm([
        "check",
        "--pass-fd",
        "--socket",
        sock,
        good.to_str().unwrap(),
    ]);
    assert_eq!(svm_tests::code(&out), 0, "{out:?}");
    let missing = dir.path().join("missing");
    let out = svm_tests::svm(["check", "--socket", sock, missing.to_str().unwrap()]);
    assert_eq!(svm_tests::code(&out), 2);
}

#[test]
fn a_noisy_vm_does_not_starve_the_others() {
    // One scanner thread, 300 ms per stalled scan: VM "noisy" queues ten scans, then VM
    // "quiet" asks for one. Served round-robin per VM, the quiet VM's scan runs right after the
    // noisy VM's current one, not after all ten.
    let vms = tempfile::tempdir().unwrap();
    let (ln, lq) = (
        vm_socket(vms.path(), "noisy"),
        vm_socket(vms.path(), "quiet"),
    );
    let cfg = config("[groups.default]\ndeadline_ms = 60000\n")
        .replace("ms = 1500", "ms = 300")
        .replace("[server]\n", "[server]\nworkers = 1\n");
    let _d = Daemon::start(&cfg, &["--vm-socket-dir", vms.path().to_str().unwrap()]);
    let (mut noisy, mut quiet) = (accept(&ln), accept(&lq));
    noisy.hello("noisy");
    quiet.hello("quiet");
    for i in 0..10u64 {
        let data = format!("noisy content {i} {STALL}").into_bytes();
        noisy.send(&inline_event(i + 1, FileOp::Open, i + 1, &data));
    }
    std::thread::sleep(Duration::from_millis(100));
    quiet.send(&inline_event(
        1,
        FileOp::Open,
        1,
        format!("quiet {STALL}").as_bytes(),
    ));
    let reader = std::thread::spawn(move || {
        (0..10)
            .map(|_| match noisy.recv() {
                Some(Message::Verdict(_)) => Instant::now(),
                other => panic!("{other:?}"),
            })
            .collect::<Vec<_>>()
    });
    let v = quiet.verdict(1);
    let quiet_at = Instant::now();
    assert_eq!(v.status, WireStatus::Clean);
    let noisy_at = reader.join().unwrap();
    let before = noisy_at.iter().filter(|t| **t < quiet_at).count();
    assert!(
        before <= 2,
        "the quiet VM waited for {before} of the noisy VM's scans"
    );
}

#[test]
fn a_vsock_listener_is_bound_when_configured() {
    // This machine has no vhost-vsock and no vsock loopback, so no guest can connect here;
    // what can be checked is that the daemon owns the port (a second bind fails).
    let port = 40_000 + std::process::id() % 20_000;
    let d = Daemon::start(&config(""), &["--vsock-port", &port.to_string()]);
    let log = d.stderr.lock().unwrap().clone();
    assert!(log.contains(&format!("vsock={port}")), "{log}");
    let st = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket,sys\ns=socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\ntry:\n s.bind((socket.VMADDR_CID_ANY, int(sys.argv[1])))\nexcept OSError as e:\n print(e); sys.exit(3)\n",
            &port.to_string(),
        ])
        .status()
        .unwrap();
    assert_eq!(
        st.code(),
        Some(3),
        "the vsock port was free: svm serve did not bind it"
    );
}
