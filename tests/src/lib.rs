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
            .args(["--metrics", "127.0.0.1:0", "--audit-log"])
            .arg(dir.path().join("audit.jsonl"))
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
