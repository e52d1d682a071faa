//! The escape test: objects crafted to make the scanner slow or to blow up in memory end as
//! `Unscanned` within the time bound, and the worker that met them goes on scanning.
//!
//! - a pathological wildcard: `cd*a{0-20}b` over 16 MiB of `a…b…` without `cd` makes every
//!   atom hit search back to the start of the object (quadratic: minutes without a limit;
//!   signatures whose gaps are all open, `a*b*cd` or `cd*a*b`, are decided in one pass, see
//!   scanner/tests/matching.rs);
//! - a huge YARA loop: two nested `for` loops over every byte;
//! - deep nesting: EICAR in 40 layers of gzip;
//! - a decompression bomb: 32 MiB of zeros in a few hundred bytes of bzip2.
//!
//! Bounds are generous (seconds over the limit) and say what they guard: a scan limited to
//! 500 ms that ran for 10 s would mean the limit is not enforced inside the engine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use svm_tests::{code, svm, Daemon};

const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
/// The scan-time limit the tests set.
const LIMIT_MS: u64 = 500;
/// The most a limited scan may take here: the limit, plus slack for a loaded machine. The
/// objects take far longer without the limit (the wildcard about a minute).
const BOUND: Duration = Duration::from_secs(10);

/// Write the signatures and the hostile objects into `dir`; returns the object names.
fn craft(dir: &Path) -> Vec<&'static str> {
    let eicar: String = EICAR.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(
        dir.join("escape.ndb"),
        format!(
            "Escape.Wildcard:0:*:6364*6161616161616161{{0-20}}6262626262626262\n\
             Eicar-Test-Signature:0:0:{eicar}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("escape.yar"),
        "rule Escape_Loop {\n  condition:\n    uint8(0) == 0x7A and for all i in (0..filesize - 1) : (\n      \
         for all j in (0..filesize - 1) : ( uint8(j) != uint8(i) + 1 )\n    )\n}\n",
    )
    .unwrap();
    let objects = dir.join("objects");
    std::fs::create_dir(&objects).unwrap();
    std::fs::write(
        objects.join("wildcard.bin"),
        b"aaaaaaaabbbbbbbb".repeat((16 << 20) / 16),
    )
    .unwrap();
    // Every byte `z` (the rule's guard): each inner loop runs to its end, 2^40 steps in all.
    std::fs::write(objects.join("loop.bin"), vec![b'z'; 1 << 20]).unwrap();
    let mut nested = EICAR.to_vec();
    for _ in 0..40 {
        nested = compress("gzip", &nested);
    }
    std::fs::write(objects.join("nested.gz"), &nested).unwrap();
    std::fs::write(
        objects.join("bomb.bz2"),
        compress("bzip2", &vec![0u8; 32 << 20]),
    )
    .unwrap();
    vec!["wildcard.bin", "loop.bin", "nested.gz", "bomb.bz2"]
}

/// `data` through `gzip -c` or `bzip2 -c`.
fn compress(tool: &str, data: &[u8]) -> Vec<u8> {
    let mut child = std::process::Command::new(tool)
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{tool} failed");
    out.stdout
}

/// `svm scan` of one object: (exit code, report line, how long it took).
fn scan_one(dir: &Path, name: &str, limit_ms: u64, extra: &[&str]) -> (i32, String, Duration) {
    let mut args: Vec<String> = ["scan", "--no-summary", "--max-scantime"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(limit_ms.to_string());
    for db in ["escape.ndb", "escape.yar"] {
        args.push("-d".into());
        args.push(dir.join(db).display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(dir.join("objects").join(name).display().to_string());
    let t = Instant::now();
    let o = svm(&args);
    let took = t.elapsed();
    (
        code(&o),
        String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        took,
    )
}

#[test]
fn crafted_objects_end_unscanned_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    craft(dir.path());
    let expect = [
        ("wildcard.bin", "scan time exceeded the limit of 500 ms"),
        ("loop.bin", "scan time exceeded the limit of 500 ms"),
        ("nested.gz", "gzip nested deeper than 17"),
        (
            "bomb.bz2",
            "unpacks to over 1000 times its container's size",
        ),
    ];
    for (name, why) in expect {
        let (rc, line, took) = scan_one(dir.path(), name, LIMIT_MS, &[]);
        assert_eq!(rc, 2, "{name}: {line}");
        assert!(
            line.contains("Unscanned") && line.contains(why) && line.ends_with("ERROR"),
            "{name}: {line}"
        );
        assert!(took < BOUND, "{name} took {took:?}: {line}");
    }
    // The limits are what stopped them: raised, the nested EICAR is read through.
    let (rc, line, _) = scan_one(
        dir.path(),
        "nested.gz",
        LIMIT_MS,
        &["--max-recursion", "64"],
    );
    assert_eq!(rc, 1, "{line}");
    assert!(line.contains("Eicar-Test-Signature FOUND"), "{line}");
    // Without the ratio limit and with time to spare, the bomb unpacks (the size limits
    // allow 32 MiB) and its zeros are clean. (The time limit inside the decompressor is a
    // unit test of the container readers.)
    let (rc, line, _) = scan_one(dir.path(), "bomb.bz2", 120_000, &["--max-ratio", "0"]);
    assert_eq!(rc, 0, "{line}");
    assert!(line.ends_with("OK"), "{line}");
}

/// One clamd `INSTREAM` of `data`: the reply.
fn instream(sock: &Path, data: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(b"zINSTREAM\0").unwrap();
    for chunk in data.chunks(1 << 20) {
        s.write_all(&(chunk.len() as u32).to_be_bytes()).unwrap();
        s.write_all(chunk).unwrap();
    }
    s.write_all(&[0; 4]).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The thread ids of the daemon's scanner threads.
fn scanner_tids(pid: u32) -> Vec<String> {
    let mut tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("svm-scan-"))
        })
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .collect();
    tids.sort();
    tids
}

#[test]
fn the_daemon_worker_that_met_them_keeps_scanning() {
    let dir = tempfile::tempdir().unwrap();
    let names = craft(dir.path());
    let clamd = dir.path().join("clamd.sock");
    // One scanner thread, so the thread that met the hostile objects is the one checked.
    let d = Daemon::start(
        &format!(
            "[server]\nworkers = 1\nmax_scan_time_ms = {LIMIT_MS}\n\
             [clamd]\nsocket = \"{}\"\nmax_stream = \"64M\"\n",
            clamd.display()
        ),
        &[
            "-d",
            &dir.path().join("escape.ndb").display().to_string(),
            "-d",
            &dir.path().join("escape.yar").display().to_string(),
        ],
    );
    // A thread takes its name once it runs: wait for it.
    svm_tests::wait_until("the scanner thread", 10, || {
        scanner_tids(d.child.id()).len() == 1
    });
    let before = scanner_tids(d.child.id());
    for name in names {
        let data = std::fs::read(dir.path().join("objects").join(name)).unwrap();
        let t = Instant::now();
        let reply = instream(&clamd, &data);
        let took = t.elapsed();
        assert!(
            reply.starts_with("stream: ") && reply.ends_with("ERROR\0"),
            "{name}: {reply}"
        );
        assert!(took < BOUND, "{name} took {took:?}: {reply}");
        // The same worker answers the next object, rightly.
        assert_eq!(
            instream(&clamd, EICAR),
            "stream: Eicar-Test-Signature FOUND\0"
        );
        assert_eq!(instream(&clamd, b"clean"), "stream: OK\0");
    }
    // The original thread is still there (yara-x's timer thread, started from it on the
    // first time-limited scan, inherits its name and may be listed too).
    let after = scanner_tids(d.child.id());
    assert!(after.contains(&before[0]), "{before:?} {after:?}");
}
