//! Helpers for the end-to-end tests: find and run the real `svm` binary.
//!
//! The tests in `tests/tests/` run `svm` as a user would, on corpora made by the `corpus`
//! crate, and run `svm serve` as a real daemon ([`Daemon`]) that tests talk to in raw frames. Run them with `cargo test --workspace --release` so the binary is built.
//!
//! # Current limitations
//! - Guests in these tests are test code speaking the protocol; real QEMU guests come with
//!   the thin agent.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `svm` binary: `$SVM_BIN`, or the one next to the running test's target directory.
pub fn svm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SVM_BIN") {
        return PathBuf::from(p);
    }
    built_bin("svm")
}

/// A binary built by `cargo test --workspace` (`svm`, `svm-agent`).
pub fn built_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/svm
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{name} binary not found at {}; run the tests with `cargo test --workspace`",
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

/// A running `svm serve` in a temporary directory, stopped (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Daemon {
    /// The process.
    pub child: std::process::Child,
    /// Its directory (config, socket, audit log).
    pub dir: tempfile::TempDir,
    /// The unix socket.
    pub socket: PathBuf,
    /// `host:port` of /metrics.
    pub metrics: String,
    /// Everything it printed on standard error so far.
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    /// Start `svm serve` with this TOML config (the `[server]` listen, metrics and audit
    /// settings are given on the command line) and `extra` arguments; wait until it is ready.
    pub fn start(config: &str, extra: &[&str]) -> Daemon {
        Self::start_on(config, extra, None)
    }

    /// Like [`Daemon::start`], listening on `socket` instead of one in its own directory.
    pub fn start_on(config: &str, extra: &[&str], socket: Option<&std::path::Path>) -> Daemon {
        Self::start_with(config, extra, socket, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables.
    pub fn start_env(config: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_with(config, extra, None, env)
    }

    fn start_with(
        config: &str,
        extra: &[&str],
        socket: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> Daemon {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let cfg = dir.path().join("svm.toml");
        std::fs::write(&cfg, config).unwrap_or_else(|e| panic!("write config: {e}"));
        let socket = socket.map_or_else(|| dir.path().join("svm.sock"), PathBuf::from);
        let mut child = Command::new(svm_bin())
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .arg("--listen")
            .arg(&socket)
            .args(["--metrics", "127.0.0.1:0"])
            // `extra` may name its own audit log (one on a filesystem a test breaks).
            .args(if extra.contains(&"--audit-log") {
                Vec::new()
            } else {
                vec![
                    std::ffi::OsString::from("--audit-log"),
                    dir.path().join("audit.jsonl").into(),
                ]
            })
            .args(extra)
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start svm serve: {e}"));
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take();
        let log = stderr.clone();
        std::thread::spawn(move || {
            let Some(pipe) = pipe else { return };
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                // Logged first, so the ready line is in `stderr` once `start` returns.
                if let Ok(mut l) = log.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
                if let Some(rest) = line.split(" metrics=").nth(1) {
                    if line.contains("ready:") {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                        let _ = ready_tx.send(addr);
                    }
                }
            }
        });
        let metrics = match ready_rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "svm serve did not become ready: {}",
                    stderr.lock().map(|s| s.clone()).unwrap_or_default()
                );
            }
        };
        Daemon {
            child,
            dir,
            socket,
            metrics,
            stderr,
        }
    }

    /// GET a path from the metrics server; returns the body.
    pub fn http_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.metrics)
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.metrics));
        let _ = write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }

    /// The value of one metric line (`name{labels}` exactly as exposed), or 0.
    pub fn metric(&self, series: &str) -> f64 {
        let body = self.http_get("/metrics");
        body.lines()
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == series).then(|| v.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// The audit log's records.
    pub fn audit(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The first audit record holding every one of `needles`, waiting for it up to `secs`
    /// (the audit log is written by its own thread); panics with the log if none comes.
    pub fn wait_audit(&self, needles: &[&str], secs: u64) -> String {
        let find = || {
            self.audit()
                .into_iter()
                .find(|r| needles.iter().all(|n| r.contains(n)))
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(r) = find() {
                return r;
            }
            assert!(
                std::time::Instant::now() < until,
                "no audit record with {needles:?}: {:?}\n{}",
                self.audit(),
                self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Send a signal by name (`TERM`, `HUP`).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
        assert!(matches!(st, Ok(s) if s.success()), "kill -{sig} failed");
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The memory tests' payload: the same bytes the test guest's `mem-test` role assembles in
/// its memory. Built from pieces so no source file holds it whole.
pub fn mem_payload() -> Vec<u8> {
    [&b"svm-memory-test-"[..], b"payload-", b"0123456789abcdef"].concat()
}

/// Write `dir/mem.ndb`, a body signature (any offset) for [`mem_payload`], and return its path.
pub fn mem_payload_ndb(dir: &std::path::Path) -> PathBuf {
    let p = dir.join("mem.ndb");
    let hex: String = mem_payload().iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&p, format!("Test.Mem.Payload:0:*:{hex}\n"))
        .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

/// Wait (bounded, generous: never a timing assertion) until `f` holds; panics after `secs`.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// EICAR, built from pieces so no source file holds it whole.
pub fn eicar() -> Vec<u8> {
    [
        &b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$"[..],
        b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*",
    ]
    .concat()
}

/// A guest speaking raw protocol frames over a blocking unix stream, where every failure is
/// an `io::Error` (a test under faults tells a lost connection from a verdict).
#[derive(Debug)]
pub struct RawGuest {
    /// The stream.
    pub s: std::os::unix::net::UnixStream,
    buf: Vec<u8>,
}

impl RawGuest {
    /// A guest on a connected stream (reads time out after 15 s).
    pub fn new(s: std::os::unix::net::UnixStream) -> std::io::Result<RawGuest> {
        s.set_read_timeout(Some(std::time::Duration::from_secs(15)))?;
        Ok(RawGuest { s, buf: Vec::new() })
    }

    /// Connect to the daemon's unix socket and say HELLO.
    pub fn connect(path: &std::path::Path) -> std::io::Result<RawGuest> {
        let mut g = RawGuest::new(std::os::unix::net::UnixStream::connect(path)?)?;
        g.hello("")?;
        Ok(g)
    }

    /// Send one message.
    pub fn send(&mut self, m: &hypervisor_api::proto::Message) -> std::io::Result<()> {
        use std::io::Write;
        self.s.write_all(&m.to_frame())
    }

    /// The next message; `UnexpectedEof` when the connection ends.
    pub fn recv(&mut self) -> std::io::Result<hypervisor_api::proto::Message> {
        use std::io::Read;
        let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        loop {
            let got = hypervisor_api::proto::decode_frame(
                &self.buf,
                hypervisor_api::proto::HARD_MAX_PAYLOAD,
            )
            .map_err(|e| bad(e.to_string()))?;
            if let Some((m, n)) = got {
                self.buf.drain(..n);
                return Ok(m);
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => self
                    .buf
                    .extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
    }

    /// HELLO (with `vm` as the claimed name, "" for none), then the WELCOME.
    pub fn hello(&mut self, vm: &str) -> std::io::Result<hypervisor_api::proto::Welcome> {
        use hypervisor_api::proto::{caps, Hello, Message, OsKind};
        self.send(&Message::Hello(Hello {
            proto_version: 1,
            os: OsKind::Linux,
            os_detail: "test".into(),
            agent_version: "raw-test".into(),
            capabilities: caps::READ | caps::INLINE,
            vm_name: vm.into(),
        }))?;
        match self.recv()? {
            Message::Welcome(w) => Ok(w),
            other => Err(std::io::Error::other(format!(
                "expected WELCOME, got {other:?}"
            ))),
        }
    }

    /// The verdict for request `id` (other verdicts and INVALIDATEs are skipped).
    pub fn verdict(&mut self, id: u64) -> std::io::Result<hypervisor_api::proto::VerdictMsg> {
        use hypervisor_api::proto::Message;
        loop {
            match self.recv()? {
                Message::Verdict(v) if v.request_id == id => return Ok(v),
                Message::Verdict(_) | Message::Invalidate(_) => {}
                other => {
                    return Err(std::io::Error::other(format!(
                        "expected VERDICT {id}, got {other:?}"
                    )))
                }
            }
        }
    }

    /// An inline `open` of `data` (file identity `id`), and its verdict.
    pub fn scan(
        &mut self,
        id: u64,
        data: &[u8],
    ) -> std::io::Result<hypervisor_api::proto::VerdictMsg> {
        self.send(&inline_open(id, data))?;
        self.verdict(id)
    }
}

/// An inline `open` event of `data` as request `id` (also its file identity and path).
pub fn inline_open(id: u64, data: &[u8]) -> hypervisor_api::proto::Message {
    use hypervisor_api::proto::{Content, FileEvent, FileIdentity, FileOp, Message};
    Message::FileEvent(FileEvent {
        request_id: id,
        op: FileOp::Open,
        deadline_ms: 0,
        identity: FileIdentity::Posix {
            dev: 8,
            ino: id,
            size: data.len() as u64,
            mtime_ns: 1_700_000_000_000_000_000,
            ctime_ns: 1_700_000_000_000_000_000,
        },
        size: data.len() as u64,
        path: format!("/srv/file-{id}").into_bytes(),
        content: Content::Inline(data.to_vec()),
    })
}

/// Whether a verdict says infected by the signature `name`.
pub fn infected_by(v: &hypervisor_api::proto::VerdictMsg, name: &str) -> bool {
    matches!(&v.status, hypervisor_api::proto::WireStatus::Infected(n) if n.iter().any(|x| x == name))
}

/// One HTTP/1.1 request over a unix socket (the admin API): (status, body); status 0 when
/// nothing came back.
pub fn http_unix(sock: &std::path::Path, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(60)));
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: svm\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_owned())
}

/// A publisher key pair made by `svm sigs keygen`: (secret key, public key).
pub fn publisher_keys(prefix: &std::path::Path) -> (PathBuf, PathBuf) {
    let o = svm([
        "sigs".as_ref(),
        "keygen".as_ref(),
        "-o".as_ref(),
        prefix.as_os_str(),
    ]);
    assert_eq!(code(&o), 0, "{o:?}");
    (prefix.with_extension("key"), prefix.with_extension("pub"))
}

/// A bundle of `files` at `version` in `dir`, built and signed with `svm sigs build/sign`.
pub fn signed_bundle(
    dir: &std::path::Path,
    name: &str,
    version: u64,
    files: &[(&str, &[u8])],
    key: &std::path::Path,
) -> Vec<u8> {
    let src = dir.join(format!("src-{name}"));
    std::fs::create_dir_all(&src).unwrap_or_else(|e| panic!("mkdir {}: {e}", src.display()));
    for (f, data) in files {
        std::fs::write(src.join(f), data).unwrap_or_else(|e| panic!("write {f}: {e}"));
    }
    let out = dir.join(format!("{name}.svmb"));
    let v = version.to_string();
    let build: [&std::ffi::OsStr; 7] = [
        "sigs".as_ref(),
        "build".as_ref(),
        src.as_os_str(),
        "--set-version".as_ref(),
        v.as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ];
    let o = svm(build);
    assert_eq!(code(&o), 0, "{o:?}");
    let sign: [&std::ffi::OsStr; 5] = [
        "sigs".as_ref(),
        "sign".as_ref(),
        out.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
    ];
    let o = svm(sign);
    assert_eq!(code(&o), 0, "{o:?}");
    std::fs::read(&out).unwrap_or_else(|e| panic!("read {}: {e}", out.display()))
}

/// Whether this process runs as root; if not, says which test is skipped and why.
pub fn root_or_skip(why: &str) -> bool {
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    if uid == "0" {
        return true;
    }
    eprintln!("SKIPPED: not root (uid {uid}); needed to {why}");
    false
}
