//! The clamd-compatible listener against real clients (Debian's `clamdscan`, the Python
//! `clamd` package) and a real `clamd` with the same signatures: the same replies, byte for
//! byte, except where svm differs on purpose (see `normalize`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;
use svm_tests::Daemon;

const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// Whether a tool is installed; `.ci/run` installs them all.
fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A real clamd on the default signatures of svm, in its own directory.
struct RealClamd {
    child: Child,
    socket: PathBuf,
}

impl RealClamd {
    fn start(dir: &Path) -> RealClamd {
        let db = dir.join("db");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("svm-default.ndb"), signatures::DEFAULT_NDB).unwrap();
        let socket = dir.join("clamd.sock");
        let conf = dir.join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "LocalSocket {}\nDatabaseDirectory {}\nLogFile {}\nForeground yes\n\
                 TemporaryDirectory {}\nStreamMaxLength 1M\n",
                socket.display(),
                db.display(),
                dir.join("clamd.log").display(),
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("clamd")
            .arg(format!("--config-file={}", conf.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("clamd runs");
        svm_tests::wait_until("clamd's socket", 60, || {
            UnixStream::connect(&socket).is_ok()
        });
        RealClamd { child, socket }
    }
}

impl Drop for RealClamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send raw bytes, read the whole reply (until the peer closes or 10 s pass).
fn raw(sock: &Path, request: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn chunked(cmd: &[u8], chunks: &[&[u8]]) -> Vec<u8> {
    let mut r = cmd.to_vec();
    for c in chunks {
        r.extend_from_slice(&(c.len() as u32).to_be_bytes());
        r.extend_from_slice(c);
    }
    r.extend_from_slice(&[0, 0, 0, 0]);
    r
}

/// The differences svm makes on purpose: clamd marks signatures from unsigned local files
/// `.UNOFFICIAL` (svm has no "official" database to contrast them with). Replies of several
/// records are compared as sets: clamd sends a tree's records in directory order, and
/// MULTISCAN's in the order its threads finish.
fn normalize(reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(reply).replace(".UNOFFICIAL", "");
    let term = if text.ends_with('\0') { '\0' } else { '\n' };
    let mut records: Vec<&str> = text.split_inclusive(term).collect();
    records.sort_unstable();
    records.concat()
}

fn svm_with_clamd(dir: &Path) -> (Daemon, PathBuf) {
    let sock = dir.join("svm-clamd.sock");
    let cfg = format!(
        "[clamd]\nsocket = \"{}\"\nmax_stream = \"1M\"\nread_timeout_ms = 1500\nmax_connections = 16\n",
        sock.display()
    );
    (Daemon::start(&cfg, &[]), sock)
}

fn files(dir: &Path) -> PathBuf {
    let f = dir.join("files");
    std::fs::create_dir_all(f.join("sub")).unwrap();
    std::fs::write(f.join("eicar.com"), EICAR).unwrap();
    std::fs::write(f.join("sub/e2.com"), EICAR).unwrap();
    std::fs::write(f.join("clean.txt"), b"hello\n").unwrap();
    f
}

#[test]
fn replies_match_a_real_clamd_byte_for_byte() {
    if !have("clamd") {
        eprintln!("SKIP: clamd is not installed (.ci/run installs clamav-daemon)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d0 = dir.path();
    let f = files(d0);
    let real = RealClamd::start(&d0.join("real"));
    let (svm, sock) = svm_with_clamd(d0);
    let p = |name: &str| f.join(name).display().to_string();
    let requests: Vec<Vec<u8>> = vec![
        b"zPING\0".to_vec(),
        b"nPING\n".to_vec(),
        b"PING\n".to_vec(),
        format!("zSCAN {}\0", p("eicar.com")).into_bytes(),
        format!("nSCAN {}\n", p("clean.txt")).into_bytes(),
        format!("zSCAN {}\0", f.display()).into_bytes(),
        format!("zCONTSCAN {}\0", f.display()).into_bytes(),
        format!("zMULTISCAN {}\0", f.display()).into_bytes(),
        format!("zALLMATCHSCAN {}\0", f.display()).into_bytes(),
        format!("zSCAN {}\0", p("missing")).into_bytes(),
        chunked(b"zINSTREAM\0", &[&EICAR[..10], &EICAR[10..]]),
        chunked(b"nINSTREAM\n", &[b"hello"]),
        chunked(
            b"zINSTREAM\0",
            &[&vec![b'x'; 1 << 20], b"one byte too many"],
        ),
        b"zFOO\0".to_vec(),
        b"nFOO\n".to_vec(),
        b"zSCAN\0".to_vec(),
        {
            let mut r = b"zIDSESSION\0zPING\0".to_vec();
            r.extend(chunked(b"zINSTREAM\0", &[EICAR]));
            r.extend_from_slice(b"zEND\0");
            r
        },
        b"zIDSESSION\0zIDSESSION\0".to_vec(),
        b"zRELOAD\0".to_vec(),
    ];
    for req in &requests {
        let want = normalize(&raw(&real.socket, req));
        let got = normalize(&raw(&sock, req));
        assert_eq!(got, want, "request {:?}", String::from_utf8_lossy(req));
        assert!(!got.is_empty(), "{req:?}");
    }
    // VERSION names svm and its set, on purpose; the command list is clamd's form.
    let v = String::from_utf8_lossy(&raw(&sock, b"zVERSIONCOMMANDS\0")).into_owned();
    assert!(v.starts_with("svm "), "{v}");
    assert!(
        v.contains("| COMMANDS: SCAN QUIT RELOAD PING CONTSCAN"),
        "{v}"
    );
    // SHUTDOWN is refused unless allowed; the daemon goes on.
    assert_eq!(raw(&sock, b"zSHUTDOWN\0"), b"COMMAND UNAVAILABLE\0");
    assert_eq!(raw(&sock, b"zPING\0"), b"PONG\0");
    // The scans went through the pipeline: metrics and audit.
    assert!(svm.metric("svm_clamd_requests_total") >= 10.0);
    svm.wait_audit(&["\"vm\":\"clamd\"", "Eicar-Test-Signature"], 10);
}

#[test]
fn clamdscan_and_the_python_clamd_package_work_unchanged() {
    if !have("clamdscan") {
        eprintln!("SKIP: clamdscan is not installed (.ci/run installs clamav-daemon)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d0 = dir.path();
    let f = files(d0);
    let (_svm, sock) = svm_with_clamd(d0);
    let conf = d0.join("clamdscan.conf");
    std::fs::write(&conf, format!("LocalSocket {}\n", sock.display())).unwrap();
    for mode in ["--stream", "--fdpass", "--multiscan"] {
        let o = Command::new("clamdscan")
            .arg(format!("--config-file={}", conf.display()))
            .args([mode, "--no-summary"])
            .arg(&f)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(1), "{mode}: {o:?}");
        assert!(
            out.contains(&format!(
                "{}: Eicar-Test-Signature FOUND",
                f.join("eicar.com").display()
            )),
            "{mode}: {out}"
        );
        assert!(
            out.contains("sub/e2.com: Eicar-Test-Signature FOUND"),
            "{mode}: {out}"
        );
        let o = Command::new("clamdscan")
            .arg(format!("--config-file={}", conf.display()))
            .args([mode, "--no-summary"])
            .arg(f.join("clean.txt"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{mode}: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("clean.txt: OK"),
            "{o:?}"
        );
    }
    // The Python package (`.ci/run` installs it with pip).
    let script = format!(
        "import clamd, io\n\
         c = clamd.ClamdUnixSocket({sock:?})\n\
         assert c.ping() == 'PONG'\n\
         print(c.instream(io.BytesIO({eicar:?}.encode())))\n\
         print(c.instream(io.BytesIO(b'hello')))\n\
         print(c.scan({clean:?}))\n\
         print(sorted(c.multiscan({dir:?}).items()))\n",
        sock = sock.display().to_string(),
        eicar = String::from_utf8_lossy(EICAR),
        clean = f.join("clean.txt").display().to_string(),
        dir = f.display().to_string(),
    );
    let o = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&o.stderr).contains("No module named 'clamd'") {
        eprintln!(
            "SKIP (python part): the clamd package is not installed (.ci/run pip-installs it)"
        );
        return;
    }
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("{'stream': ('FOUND', 'Eicar-Test-Signature')}"),
        "{out}"
    );
    assert!(out.contains("{'stream': ('OK', None)}"), "{out}");
    assert!(out.contains("clean.txt': ('OK', None)}"), "{out}");
    assert!(
        out.contains("e2.com', ('FOUND', 'Eicar-Test-Signature')"),
        "{out}"
    );
}

#[test]
fn protocol_abuse_gets_an_error_or_a_close_and_the_next_client_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let d0 = dir.path();
    let (_svm, sock) = svm_with_clamd(d0);
    // An endless INSTREAM stops at the size limit.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"zINSTREAM\0").unwrap();
    let chunk = vec![b'a'; 64 << 10];
    let mut sent = 0usize;
    while sent <= (2 << 20) {
        let mut c = (chunk.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(&chunk);
        if s.write_all(&c).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert_eq!(out, b"INSTREAM size limit exceeded. ERROR\0");
    // A chunk announced longer than sent: closed after the read timeout, no reply.
    let mut req = b"zINSTREAM\0".to_vec();
    req.extend_from_slice(&1000u32.to_be_bytes());
    req.extend_from_slice(b"short");
    assert_eq!(raw(&sock, &req), b"");
    // A command without its terminator, and one over the length limit: closed.
    assert_eq!(raw(&sock, b"zPING"), b"");
    assert_eq!(raw(&sock, &[b'z'; 20_000]), b"");
    // Unknown commands: clamd's reply, then a close.
    assert_eq!(raw(&sock, b"zHELLO\0zPING\0"), b"UNKNOWN COMMAND\0");
    // A flood of idle connections (more than max_connections) delays a client by at most
    // the read timeout, and it is served.
    let idle: Vec<UnixStream> = (0..40)
        .filter_map(|_| UnixStream::connect(&sock).ok())
        .collect();
    assert_eq!(raw(&sock, b"zPING\0"), b"PONG\0");
    drop(idle);
    assert_eq!(raw(&sock, b"nPING\n"), b"PONG\n");
}

#[test]
fn container_members_are_scanned_once_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let d0 = dir.path();
    let (svm, sock) = svm_with_clamd(d0);
    std::fs::write(d0.join("eicar.com"), EICAR).unwrap();
    std::fs::write(d0.join("one.txt"), b"only in the first archive").unwrap();
    std::fs::write(d0.join("two.txt"), b"only in the second archive").unwrap();
    for (zip, other) in [("a.zip", "one.txt"), ("b.zip", "two.txt")] {
        let o = Command::new("zip")
            .args(["-q", zip, "eicar.com", other])
            .current_dir(d0)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
    }
    let stream = |name: &str| {
        let data = std::fs::read(d0.join(name)).unwrap();
        raw(&sock, &chunked(b"zINSTREAM\0", &[&data]))
    };
    assert_eq!(stream("a.zip"), b"stream: Eicar-Test-Signature FOUND\0");
    let hits = svm.metric("svm_cache_member_hits_total");
    // Another archive (another content, so no whole-object cache hit) with the same member:
    // that member's verdict comes from the cache, the new one is scanned.
    assert_eq!(stream("b.zip"), b"stream: Eicar-Test-Signature FOUND\0");
    assert_eq!(svm.metric("svm_cache_member_hits_total"), hits + 1.0);
    // The member alone, as a file of its own, is the same cache entry.
    assert_eq!(
        raw(&sock, &chunked(b"zINSTREAM\0", &[EICAR])),
        b"stream: Eicar-Test-Signature FOUND\0"
    );
    assert!(svm.metric("svm_cache_hits_total") >= 1.0);
}

#[test]
fn streams_count_against_the_spool_cap_of_the_clamd_vm() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("c.sock");
    let cfg = format!(
        "[server]\nper_vm_spool_cap = \"64K\"\n[clamd]\nsocket = \"{}\"\nmax_stream = \"1M\"\n",
        sock.display()
    );
    let _svm = Daemon::start(&cfg, &[]);
    // Under max_stream but over what the clamd VM may hold: refused, not buffered.
    let big = vec![b'x'; 100 << 10];
    let r = raw(&sock, &chunked(b"zINSTREAM\0", &[&big]));
    assert_eq!(
        r,
        b"INSTREAM: the spool cap of 65536 bytes for clamd clients is in use. ERROR\0"
    );
    // Within it: scanned, and the reservation was released.
    assert_eq!(
        raw(&sock, &chunked(b"zINSTREAM\0", &[EICAR])),
        b"stream: Eicar-Test-Signature FOUND\0"
    );
    assert_eq!(
        raw(&sock, &chunked(b"zINSTREAM\0", &[&big[..32 << 10]])),
        b"stream: OK\0"
    );
}

#[test]
fn a_client_that_stops_reading_its_replies_loses_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("clamd.sock");
    // One connection at a time: the deaf client holds the only one.
    let _d = Daemon::start(
        &format!(
            "[clamd]\nsocket = \"{}\"\nmax_connections = 1\nread_timeout_ms = 500\n",
            sock.display()
        ),
        &[],
    );
    let mut deaf = UnixStream::connect(&sock).unwrap();
    deaf.set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    // A session of VERSION commands whose replies are never read: they fill both socket
    // buffers, and the daemon's next reply cannot be written.
    let _ = deaf.write_all(b"zIDSESSION\0");
    let burst = b"zVERSION\0".repeat(4096);
    for _ in 0..64 {
        if deaf.write_all(&burst).is_err() {
            break;
        }
    }
    // The next client is served once the deaf one is dropped (after the read timeout), not
    // never: `raw` gives up after 10 s.
    assert_eq!(raw(&sock, b"zPING\0"), b"PONG\0");
    drop(deaf);
}
