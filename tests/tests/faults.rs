//! Fault injection into the real `svm serve` (issue #8): the daemon is killed under load, its
//! state disk fills during a bundle write, its audit log's disk turns read-only, guests stall,
//! a QEMU and its QMP socket vanish, and a signed bundle does not compile. After each: no
//! verdict is lost or wrong (every request gets a correct verdict, the policy's counted
//! fallback, or a connection error, never a wrong "clean"), deadlines are seconds long and
//! never raced, and the daemon serves again (infected content is infected, clean is clean).
//!
//! Tests that mount filesystems need root; they say why and skip without it. The QMP test
//! needs `qemu-system-x86_64` (its VM never runs a guest: `-S`, RAM written by the test).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use hypervisor_api::proto::{ErrorCode, Message, VerdictMsg, WireAction, WireStatus};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use svm_tests::{
    eicar, http_unix, infected_by, inline_open, publisher_keys, root_or_skip, signed_bundle,
    wait_until, Daemon, RawGuest,
};

const STALL: &str = "SVM-TEST-STALL";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The bundles' signatures: EICAR named `Fault.Eicar` (so a verdict tells which set made
/// it) and a marker.
fn base_ndb() -> Vec<u8> {
    format!(
        "Fault.Eicar:0:0:{}\nFault.Marker:0:*:{}\n",
        hex(&eicar()),
        hex(b"fault-marker")
    )
    .into_bytes()
}

/// Infected content number `i` (EICAR at offset 0, then bytes that make it unique, so it is
/// scanned rather than found in the verdict cache).
fn infected(i: u64) -> Vec<u8> {
    let mut d = eicar();
    d.extend_from_slice(format!(" unique {i}").as_bytes());
    d
}

fn clean(i: u64) -> Vec<u8> {
    format!("a clean file, number {i}\n").repeat(3).into_bytes()
}

/// Whether `v` is the right verdict: infected by `sig` (denied) or clean (allowed).
fn right(v: &VerdictMsg, sig: Option<&str>) -> bool {
    match sig {
        Some(s) => v.action == WireAction::Deny && infected_by(v, s),
        None => v.action == WireAction::Allow && v.status == WireStatus::Clean,
    }
}

/// A publisher and a daemon config trusting it, with an admin socket and a state dir.
struct Publisher {
    dir: tempfile::TempDir,
    key: PathBuf,
    admin: PathBuf,
    state: PathBuf,
    cfg: String,
}

impl Publisher {
    /// `server`: the config's text before `[update]`.
    fn new(server: &str) -> Publisher {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = publisher_keys(&dir.path().join("publisher"));
        let (admin, state) = (dir.path().join("admin.sock"), dir.path().join("state"));
        let cfg = format!(
            "{server}\n[update]\ntrusted_keys = [\"{}\"]\nadmin_socket = \"{}\"\nstate_dir = \"{}\"\n",
            public.display(),
            admin.display(),
            state.display()
        );
        Publisher {
            dir,
            key,
            admin,
            state,
            cfg,
        }
    }

    fn bundle(&self, version: u64, files: &[(&str, &[u8])]) -> Vec<u8> {
        signed_bundle(
            self.dir.path(),
            &format!("v{version}"),
            version,
            files,
            &self.key,
        )
    }

    /// A bundle signed with the trusted key but made with the library, without `svm sigs
    /// build`'s check that the set loads: what a broken publisher pipeline could ship.
    fn unchecked_bundle(&self, version: u64, name: &str, data: &[u8]) -> Vec<u8> {
        use signatures::bundle;
        let mut seed = [0u8; 32];
        let text = std::fs::read_to_string(&self.key).unwrap();
        hex::decode_to_slice(text.trim(), &mut seed).unwrap();
        let files = vec![
            ("fault.ndb".to_string(), base_ndb()),
            (name.to_string(), data.to_vec()),
        ];
        let b = bundle::build(&files, version, bundle::Counts::new(), 0).unwrap();
        bundle::sign(&b, &bundle::Keypair::from_seed(seed)).unwrap()
    }

    fn push(&self, bytes: &[u8]) -> (u16, String) {
        http_unix(&self.admin, "POST", "/v1/signatures", bytes)
    }

    /// The version in use (GET on the admin socket).
    fn version(&self) -> u64 {
        let (st, body) = http_unix(&self.admin, "GET", "/v1/signatures", b"");
        assert_eq!(st, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["version"].as_u64().unwrap()
    }

    fn state_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lost+found")
            .collect();
        v.sort();
        v
    }
}

/// The daemon serves again: fresh infected content is denied by `sig`, fresh clean content
/// allowed, both made with set `version`.
fn serves(d: &Daemon, sig: &str, version: u64) {
    let mut g = RawGuest::connect(&d.socket).unwrap();
    let v = g.scan(900_001, &infected(900_001)).unwrap();
    assert!(right(&v, Some(sig)), "{v:?}");
    assert_eq!(v.sigset_version, version);
    let v = g.scan(900_002, &clean(900_002)).unwrap();
    assert!(right(&v, None), "{v:?}");
    assert_eq!(v.sigset_version, version);
}

fn stderr(d: &Daemon) -> String {
    d.stderr.lock().unwrap().clone()
}

/// What one load client saw.
#[derive(Debug, Default)]
struct Load {
    verdicts: u64,
    /// Verdicts that were not the right one (any is a failure).
    wrong: Vec<String>,
    /// How its connection ended (None: it stopped when told to).
    ended: Option<std::io::ErrorKind>,
}

/// A guest scanning infected and clean content in turn until its connection fails or `stop`;
/// each verdict must be right and made with set `version`. Stops by itself after
/// two minutes.
fn load(
    sock: PathBuf,
    client: u64,
    sig: &'static str,
    version: u64,
    answered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Load {
    let mut out = Load::default();
    let mut g = match RawGuest::connect(&sock) {
        Ok(g) => g,
        Err(e) => {
            out.ended = Some(e.kind());
            return out;
        }
    };
    let until = Instant::now() + Duration::from_secs(120);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        i += 1;
        let id = client * 1_000_000 + i;
        let bad = i % 2 == 0;
        let data = if bad { infected(id) } else { clean(id) };
        match g.scan(id, &data) {
            Ok(v) => {
                out.verdicts += 1;
                let ok = right(&v, bad.then_some(sig)) && v.sigset_version == version;
                if !ok {
                    out.wrong.push(format!("infected={bad}: {v:?}"));
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                out.ended = Some(e.kind());
                break;
            }
        }
    }
    out
}

/// `n` [`load`] clients of `d` expecting verdicts made with set `version`: (verdicts so far,
/// stop flag, clients).
#[allow(clippy::type_complexity)]
fn start_load(
    d: &Daemon,
    n: u64,
    version: u64,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicBool>,
    Vec<std::thread::JoinHandle<Load>>,
) {
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = (1..=n)
        .map(|c| {
            let (sock, a, s) = (d.socket.clone(), answered.clone(), stop.clone());
            std::thread::spawn(move || load(sock, c, "Fault.Eicar", version, a, s))
        })
        .collect();
    (answered, stop, clients)
}

#[test]
fn kill_9_under_load_loses_no_verdict_and_the_restart_serves_the_persisted_set() {
    // Deadlines of 30 s: no verdict here comes from a fallback (checked after the restart).
    let p = Publisher::new(&format!(
        "[server]\n[server.test_stall]\nmarker = \"{STALL}\"\nms = 60000\n\
         [groups.default]\ndeadline_ms = 30000\non_timeout = \"deny\"\n"
    ));
    let v5 = p.bundle(5, &[("fault.ndb", &base_ndb())]);
    let mut d = Daemon::start(&p.cfg, &[]);
    let (st, body) = p.push(&v5);
    assert_eq!(st, 200, "{body}");
    assert_eq!(p.state_files(), ["current.svmb"]);
    // One scan is in flight (stalled in a scanner thread) when the daemon dies.
    let mut stalled = RawGuest::connect(&d.socket).unwrap();
    let mut data = infected(1);
    data.extend_from_slice(STALL.as_bytes());
    stalled.send(&inline_open(1, &data)).unwrap();
    // Four guests under load.
    let (answered, _stop, clients) = start_load(&d, 4, 5);
    wait_until("400 verdicts under load", 120, || {
        answered.load(Ordering::Relaxed) >= 400
    });
    d.child.kill().unwrap(); // SIGKILL
    let status = d.child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}");
    // Every client's request in flight ends in a connection error, never a verdict.
    let loads: Vec<Load> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    for (c, l) in loads.iter().enumerate() {
        assert!(
            l.wrong.is_empty(),
            "client {c}: wrong verdicts {:?}",
            l.wrong
        );
        assert!(
            l.ended.is_some(),
            "client {c} never saw the daemon die: {l:?}"
        );
    }
    let total: u64 = loads.iter().map(|l| l.verdicts).sum();
    assert!(total >= 400, "{loads:?}");
    match stalled.verdict(1) {
        Err(e) => eprintln!("the stalled scan's guest saw: {e}"),
        Ok(v) => panic!("a verdict from a killed daemon: {v:?}"),
    }
    drop(d);
    // Restarted on the same config and state: the persisted version 5 serves (verified
    // again), and scans are right.
    let d = Daemon::start(&p.cfg, &[]);
    assert_eq!(p.version(), 5);
    assert!(
        !stderr(&d).contains("is not used"),
        "the persisted bundle was refused: {}",
        stderr(&d)
    );
    serves(&d, "Fault.Eicar", 5);
    let mut g = RawGuest::connect(&d.socket).unwrap();
    let v = g.scan(3, b"xx fault-marker xx").unwrap();
    assert!(right(&v, Some("Fault.Marker")), "{v:?}");
    assert_eq!(
        d.metric("svm_policy_fallbacks_total{policy=\"on_timeout\",action=\"deny\"}"),
        0.0
    );
    assert_eq!(p.state_files(), ["current.svmb"]);
}

/// A tmpfs mounted at a path, unmounted when dropped (lazily if busy).
struct Tmpfs(PathBuf);

fn run(cmd: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn ok(cmd: &str, args: &[&std::ffi::OsStr]) {
    let o = run(cmd, args);
    assert!(o.status.success(), "{cmd} {args:?}: {o:?}");
}

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let opts = format!("size={size},mode=0700");
        ok(
            "mount",
            &[
                "-t".as_ref(),
                "tmpfs".as_ref(),
                "-o".as_ref(),
                opts.as_ref(),
                "tmpfs".as_ref(),
                at.as_os_str(),
            ],
        );
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let opts = format!("remount,size={size}");
        ok("mount", &["-o".as_ref(), opts.as_ref(), self.0.as_os_str()]);
    }
}

/// Unmount everything mounted at `at` (stacked mounts too; lazily when busy).
fn unmount_all(at: &Path) {
    for _ in 0..5 {
        let mounted = run("mountpoint", &["-q".as_ref(), at.as_os_str()]);
        if !mounted.status.success() {
            return;
        }
        if !run("umount", &[at.as_os_str()]).status.success() {
            let _ = run("umount", &["-l".as_ref(), at.as_os_str()]);
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount_all(&self.0);
    }
}

#[test]
fn a_full_disk_during_a_bundle_write_refuses_the_push_and_keeps_the_old_set() {
    if !root_or_skip("mount a small tmpfs as the state dir") {
        return;
    }
    let p = Publisher::new("[server]\n");
    let disk = Tmpfs::mount(&p.state, "256k");
    let v5 = p.bundle(5, &[("fault.ndb", &base_ndb())]);
    // Version 6 is larger than the disk: thousands of random body signatures (random hex
    // does not compress below half), and one that content below will show.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut noise = String::from("Fault.Two:0:*:74776f2d6d61726b6572\n"); // "two-marker"
    for i in 0..6000 {
        let bytes: Vec<u8> = (0..64)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        noise.push_str(&format!("Fault.Noise.{i}:0:*:{}\n", hex(&bytes)));
    }
    let v6 = p.bundle(
        6,
        &[("fault.ndb", &base_ndb()), ("noise.ndb", noise.as_bytes())],
    );
    assert!(v6.len() > 300 << 10, "version 6 must not fit: {}", v6.len());
    let d = Daemon::start(&p.cfg, &[]);
    assert_eq!(p.push(&v5).0, 200);
    let (st, body) = p.push(&v6);
    assert_eq!(st, 500, "{body}");
    assert!(
        body.contains("cannot persist") && body.contains("No space left on device"),
        "{body}"
    );
    // The old set keeps serving and stays the persisted one; nothing partial is left.
    assert_eq!(p.version(), 5);
    serves(&d, "Fault.Eicar", 5);
    assert_eq!(p.state_files(), ["current.svmb"]);
    assert_eq!(std::fs::read(p.state.join("current.svmb")).unwrap(), v5);
    let rec = d.wait_audit(
        &[
            "\"op\":\"update\"",
            "\"result\":\"refused\"",
            "No space left",
        ],
        60,
    );
    assert!(rec.contains("\"sigset_version\":5"), "{rec}");
    assert_eq!(
        d.metric("svm_signature_updates_total{result=\"refused\"}"),
        1.0
    );
    // Space freed: the same push succeeds.
    disk.resize("8m");
    let (st, body) = p.push(&v6);
    assert_eq!(st, 200, "{body}");
    assert_eq!(p.version(), 6);
    assert_eq!(p.state_files(), ["current.svmb"]);
    serves(&d, "Fault.Eicar", 6);
    let mut g = RawGuest::connect(&d.socket).unwrap();
    assert!(right(
        &g.scan(7, b"xx two-marker xx").unwrap(),
        Some("Fault.Two")
    ));
    drop(d);
}

#[test]
fn a_bundle_that_does_not_compile_is_refused_while_guests_scan_on_the_old_set() {
    let p = Publisher::new("[server]\n[groups.default]\ndeadline_ms = 30000\n");
    let d = Daemon::start(&p.cfg, &[]);
    assert_eq!(p.push(&p.bundle(5, &[("fault.ndb", &base_ndb())])).0, 200);
    let (answered, stop, clients) = start_load(&d, 2, 5);
    wait_until("scans under way", 60, || {
        answered.load(Ordering::Relaxed) >= 20
    });
    // Correctly signed, but the rules do not compile.
    let bad_yara: &[u8] = b"rule broken { strings: $a = \"fault\" condition: $a and and }\n";
    let bad_hex: &[u8] = b"Fault.BadHex:0:*:6f6eZZ6b\n";
    for (version, name, data) in [(6, "broken.yar", bad_yara), (7, "broken.ndb", bad_hex)] {
        let before = answered.load(Ordering::Relaxed);
        let (st, body) = p.push(&p.unchecked_bundle(version, name, data));
        assert_eq!(st, 422, "{name}: {body}");
        assert!(
            body.contains("do not load") && body.contains(name),
            "{name}: {body}"
        );
        assert_eq!(p.version(), 5, "{name}");
        // Scans go on across the refusal.
        wait_until("scans after the refusal", 60, || {
            answered.load(Ordering::Relaxed) >= before + 20
        });
    }
    stop.store(true, Ordering::Relaxed);
    for (c, t) in clients.into_iter().enumerate() {
        let l = t.join().unwrap();
        assert!(l.wrong.is_empty(), "client {c}: {:?}", l.wrong);
        assert_eq!(l.ended, None, "client {c} lost its connection: {l:?}");
    }
    let refused = || {
        d.audit()
            .into_iter()
            .filter(|r| r.contains("\"op\":\"update\"") && r.contains("do not load"))
            .count()
    };
    wait_until("2 audited refusals", 60, || refused() == 2);
    assert_eq!(
        d.metric("svm_signature_updates_total{result=\"refused\"}"),
        2.0
    );
    assert_eq!(p.state_files(), ["current.svmb"]);
    serves(&d, "Fault.Eicar", 5);
    // The failed compiles left nothing held: a good bundle goes in.
    let v8 = p.bundle(8, &[("fault.ndb", &base_ndb())]);
    assert_eq!(p.push(&v8).0, 200);
    serves(&d, "Fault.Eicar", 8);
}

/// A VM socket in `dir` as QEMU's chardev binds it, and the guest behind it once the SVM has
/// connected and the guest said HELLO as `name`.
fn vm_guest(dir: &Path, name: &str) -> RawGuest {
    let l = std::os::unix::net::UnixListener::bind(dir.join(format!("{name}.sock"))).unwrap();
    let (s, _) = l.accept().unwrap();
    let mut g = RawGuest::new(s).unwrap();
    assert_eq!(g.hello(name).unwrap().vm, name);
    g
}

/// Expect an ERROR with `code`, then the end of the connection.
fn error_then_close(g: &mut RawGuest, code: ErrorCode, what: &str) {
    match g.recv() {
        Ok(Message::Error(e)) => assert_eq!(e.code, code, "{what}: {e:?}"),
        other => panic!("{what}: expected ERROR {code:?}, got {other:?}"),
    }
    let end = g.recv();
    assert!(end.is_err(), "{what}: still open: {end:?}");
}

#[test]
fn stuck_guests_are_timed_out_and_dropped_while_the_others_get_their_verdicts() {
    // serve.rs covers a frame of 5 header bytes never finished, a frame cut by a half-close,
    // and a guest that never answers READ_REQ (hostile_input_closes_only_that_connection).
    // Here: half of a FILE_EVENT left hanging, a frame trickled a byte at a time, and a guest
    // that stops reading its replies, all at once, while two other VMs scan.
    let vms = tempfile::tempdir().unwrap();
    let cfg = "[server]\nframe_timeout_ms = 1000\n[groups.default]\ndeadline_ms = 10000\n";
    let d = Daemon::start(cfg, &["--vm-socket-dir", vms.path().to_str().unwrap()]);
    let steady: Vec<RawGuest> = ["steady-a", "steady-b"]
        .iter()
        .map(|n| vm_guest(vms.path(), n))
        .collect();
    // Half a frame, then nothing (the connection stays open).
    let mut half = RawGuest::connect(&d.socket).unwrap();
    let f = inline_open(1, &clean(1)).to_frame();
    half.s.write_all(&f[..f.len() / 2]).unwrap();
    // A frame trickled: a byte every 100 ms (each byte in time, the frame not).
    let mut trickle = RawGuest::connect(&d.socket).unwrap();
    let mut w = trickle.s.try_clone().unwrap();
    let dripper = std::thread::spawn(move || {
        for b in inline_open(2, &infected(2)).to_frame() {
            if w.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // A guest that never reads: PINGs until the daemon, blocked on its PONGs, stops
    // reading too (a write here times out).
    let mut deaf = RawGuest::connect(&d.socket).unwrap();
    deaf.s
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let pings: Vec<u8> = (0..4096u64)
        .flat_map(|n| Message::Ping(n).to_frame())
        .collect();
    let mut sent = 0usize;
    loop {
        match deaf.s.write(&pings) {
            Ok(n) => sent += n,
            // Blocked; or, on a machine slow to run this loop, already dropped.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                break
            }
            Err(e) => panic!("the deaf guest's write: {e}"),
        }
        assert!(sent < 1 << 30, "the daemon never stopped reading");
    }
    // The other VMs get right verdicts, no fallback.
    let checkers: Vec<_> = steady
        .into_iter()
        .enumerate()
        .map(|(c, mut g)| {
            std::thread::spawn(move || {
                for i in 0..20u64 {
                    let id = (c as u64 + 1) * 1000 + i;
                    let bad = i % 2 == 0;
                    let v = g
                        .scan(id, &if bad { infected(id) } else { clean(id) })
                        .unwrap();
                    assert!(right(&v, bad.then_some("Eicar-Test-Signature")), "{v:?}");
                }
                g
            })
        })
        .collect();
    let steady: Vec<RawGuest> = checkers.into_iter().map(|t| t.join().unwrap()).collect();
    // Each stuck one is timed out and dropped.
    error_then_close(&mut half, ErrorCode::Timeout, "half a frame");
    error_then_close(&mut trickle, ErrorCode::Timeout, "trickled frame");
    dripper.join().unwrap();
    let end = loop {
        match deaf.recv() {
            Ok(Message::Pong(_)) => {}
            other => break other,
        }
    };
    assert!(
        matches!(&end, Err(e) if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset)),
        "the guest that stopped reading was not dropped: {end:?}"
    );
    wait_until("the three timeouts counted", 30, || {
        d.metric("svm_protocol_errors_total{kind=\"timeout\"}") >= 3.0
    });
    wait_until("only the steady connections left", 30, || {
        d.metric("svm_connections") == 2.0
    });
    for action in ["allow", "deny"] {
        let series =
            format!("svm_policy_fallbacks_total{{policy=\"on_timeout\",action=\"{action}\"}}");
        assert_eq!(d.metric(&series), 0.0, "{series}");
    }
    assert!(
        stderr(&d).contains("did not read its replies"),
        "{}",
        stderr(&d)
    );
    serves(&d, "Eicar-Test-Signature", 1);
    drop(steady);
}

/// An ext4 image on a loop device mounted with `errors=remount-ro` at `mnt` (what makes a
/// real disk turn read-only under open files: a filesystem error); everything mounted at
/// `mnt` is unmounted when dropped.
struct Ext4 {
    mnt: PathBuf,
    /// `/sys/fs/ext4/loopN/trigger_fs_error`.
    trigger: PathBuf,
}

impl Ext4 {
    /// None (with the reason printed) where this machine cannot do it.
    fn mount(dir: &Path) -> Option<Ext4> {
        let (img, mnt) = (dir.join("disk.img"), dir.join("mnt"));
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .output();
        if !matches!(&mkfs, Ok(o) if o.status.success()) {
            eprintln!("SKIPPED: mkfs.ext4 failed or is missing: {mkfs:?}");
            return None;
        }
        let m = run(
            "mount",
            &[
                "-o".as_ref(),
                "loop,errors=remount-ro".as_ref(),
                img.as_os_str(),
                mnt.as_os_str(),
            ],
        );
        if !m.status.success() {
            eprintln!("SKIPPED: no loop mount here: {m:?}");
            return None;
        }
        let dev = run(
            "findmnt",
            &["-no".as_ref(), "SOURCE".as_ref(), mnt.as_os_str()],
        );
        let dev = String::from_utf8_lossy(&dev.stdout).trim().to_owned();
        let name = dev.rsplit('/').next().unwrap_or_default().to_owned();
        let fs = Ext4 {
            trigger: PathBuf::from(format!("/sys/fs/ext4/{name}/trigger_fs_error")),
            mnt,
        };
        if !fs.trigger.exists() {
            eprintln!(
                "SKIPPED: {} is missing (kernel without it)",
                fs.trigger.display()
            );
            return None;
        }
        Some(fs)
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        unmount_all(&self.mnt);
    }
}

#[test]
fn an_audit_log_disk_gone_read_only_drops_records_visibly_and_recovers() {
    if !root_or_skip("mount an ext4 image and a tmpfs for the audit log") {
        return;
    }
    // A tmpfs cannot be made read-only under an open file (remount,ro fails: busy), and the
    // daemon keeps its log open, so the disk fails as real ones do: an ext4 error with
    // errors=remount-ro turns it read-only under the open log. Such a filesystem cannot be
    // made writable again without unmounting it: the admin mounts a good disk in its place.
    let p = Publisher::new("[server]\n");
    let Some(disk) = Ext4::mount(p.dir.path()) else {
        return;
    };
    let log = disk.mnt.join("audit.jsonl");
    let records = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let mut d = Daemon::start(&p.cfg, &["--audit-log", log.to_str().unwrap()]);
    let mut g = RawGuest::connect(&d.socket).unwrap();
    assert!(right(
        &g.scan(1, &infected(1)).unwrap(),
        Some("Eicar-Test-Signature")
    ));
    wait_until("the first record", 30, || records().len() == 1);

    std::fs::write(&disk.trigger, "1").unwrap();
    let probe = std::fs::write(disk.mnt.join("probe"), "x");
    assert!(probe.is_err(), "the disk did not turn read-only");
    // Scans and pushes are answered; the records are dropped, counted and logged.
    for i in 2..5 {
        assert!(right(
            &g.scan(i, &infected(i)).unwrap(),
            Some("Eicar-Test-Signature")
        ));
        assert!(right(&g.scan(100 + i, &clean(100 + i)).unwrap(), None));
    }
    let (st, body) = p.push(&p.bundle(5, &[("fault.ndb", &base_ndb())]));
    assert_eq!(st, 200, "{body}");
    serves(&d, "Fault.Eicar", 5);
    // Three infected scans, the push, and the infected scan of `serves`.
    wait_until("5 records counted as dropped", 30, || {
        d.metric("svm_audit_dropped_total") == 5.0
    });
    wait_until("the log line", 30, || {
        stderr(&d).contains("cannot write the audit log")
    });
    assert!(d.alive());

    // A good disk in its place: records are written again.
    let _ = run("umount", &["-l".as_ref(), disk.mnt.as_os_str()]);
    let _fresh = Tmpfs::mount(&disk.mnt, "1m");
    assert!(right(
        &g.scan(9, &infected(9)).unwrap(),
        Some("Fault.Eicar")
    ));
    wait_until("a record on the new disk", 30, || {
        records().iter().any(|r| r.contains("Fault.Eicar"))
    });
    wait_until("the recovery log line", 30, || {
        stderr(&d).contains("is written again")
    });
    for r in records() {
        serde_json::from_str::<serde_json::Value>(&r).unwrap_or_else(|e| panic!("{e}: {r}"));
    }
    assert_eq!(d.metric("svm_audit_dropped_total"), 5.0);
    assert!(!stderr(&d).contains("panicked"));
    drop(d);
}

/// A QEMU that never runs its guest (`-S`), with its RAM in `ram` and QMP on `qmp`; killed
/// on drop.
struct Qemu(std::process::Child);

impl Qemu {
    fn start(ram: &Path, qmp: &Path) -> Qemu {
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35,accel=tcg,memory-backend=mem", "-m", "64M"])
            .arg("-object")
            .arg(format!(
                "memory-backend-file,id=mem,size=64M,mem-path={},share=on",
                ram.display()
            ))
            .args(["-S", "-display", "none", "-nodefaults", "-monitor", "none"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let q = Qemu(child);
        wait_until("QEMU's QMP", 60, || {
            hypervisor_api::qmp::Qmp::connect(qmp, Duration::from_secs(5)).is_ok()
        });
        q
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Memory payload `n`, built from pieces so no source file holds it whole.
fn mem_marker(n: &str) -> Vec<u8> {
    [
        &b"svm-fault-"[..],
        b"mem-",
        n.as_bytes(),
        b"-0123456789abcdef",
    ]
    .concat()
}

#[test]
fn a_vanished_qemu_is_logged_and_counted_and_a_new_one_swept() {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed (.ci/run installs it)");
        return;
    }
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (ram, qmp, db) = (
        dir.path().join("ram"),
        dir.path().join("qmp.sock"),
        dir.path().join("sigs.ndb"),
    );
    std::fs::write(
        &db,
        format!(
            "Fault.Eicar:0:0:{}\nFault.Mem.One:0:*:{}\nFault.Mem.Two:0:*:{}\n",
            hex(&eicar()),
            hex(&mem_marker("one")),
            hex(&mem_marker("two"))
        ),
    )
    .unwrap();
    let poke = |at: u64, what: &[u8]| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&ram)
            .unwrap()
            .write_all_at(what, at)
            .unwrap();
    };
    let qemu = Qemu::start(&ram, &qmp);
    poke(0x20_0000 + 100, &mem_marker("one"));
    let cfg = format!(
        "[server]\nsweep_interval_ms = 100\nsweep_max_cpu = 0.5\n\
         [[vm]]\nname = \"memvm\"\nqemu_ram = \"{}\"\nqmp = \"{}\"\n",
        ram.display(),
        qmp.display()
    );
    let d = Daemon::start(&cfg, &["-d", db.to_str().unwrap()]);
    d.wait_audit(&["\"op\":\"memory\"", "Fault.Mem.One"], 60);

    // QEMU killed mid-sweep: logged, counted, not swept.
    drop(qemu);
    wait_until("the vanished QEMU counted", 30, || {
        d.metric("svm_memory_errors_total") >= 1.0
    });
    assert!(stderr(&d).contains("memory not swept"), "{}", stderr(&d));
    let rec = d.wait_audit(&["\"op\":\"memory\"", "\"result\":\"unscanned\""], 30);
    assert!(
        rec.contains("\"vm\":\"memvm\"") && rec.contains("QMP socket"),
        "{rec}"
    );
    // File events are served meanwhile.
    serves(&d, "Fault.Eicar", 1);

    // A new QEMU on the same paths is picked up and its memory swept.
    let qemu = Qemu::start(&ram, &qmp);
    poke(0x30_0000 + 200, &mem_marker("two"));
    d.wait_audit(&["\"op\":\"memory\"", "Fault.Mem.Two"], 60);

    // Its QMP socket removed under it: the same.
    let errors = d.metric("svm_memory_errors_total");
    std::fs::remove_file(&qmp).unwrap();
    wait_until("the removed socket counted", 30, || {
        d.metric("svm_memory_errors_total") > errors
    });
    d.wait_audit(&["\"result\":\"unscanned\"", "memvm", "No such file"], 30);
    serves(&d, "Fault.Eicar", 1);
    drop(qemu);
    let _qemu = Qemu::start(&ram, &qmp);
    let repeats = d.metric("svm_memory_repeats_total");
    poke(0x40_0000 + 300, &mem_marker("one"));
    wait_until("the third QEMU swept", 60, || {
        d.metric("svm_memory_repeats_total") > repeats
    });
    let mut d = d;
    assert!(d.alive());
}

#[test]
fn a_full_audit_disk_loses_no_record_uncounted_and_keeps_one_record_a_line() {
    if !root_or_skip("mount a small tmpfs for the audit log") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("audit"), "64k");
    let log = disk.0.join("audit.jsonl");
    let d = Daemon::start("[server]\n", &["--audit-log", log.to_str().unwrap()]);
    // Fill the disk, then free two pages: room for some records, not for all, and the
    // first that does not fit is cut short.
    let filler = disk.0.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while f.write_all(&[0u8; 4096]).is_ok() {}
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(8192)).unwrap();
    drop(f);
    let mut g = RawGuest::connect(&d.socket).unwrap();
    let mut scans = 0;
    while d.metric("svm_audit_dropped_total") < 1.0 {
        scans += 1;
        assert!(scans < 500, "the audit log never filled its disk");
        let v = g.scan(scans, &infected(scans)).unwrap();
        assert!(right(&v, Some("Eicar-Test-Signature")), "{v:?}");
    }
    wait_until("the log line", 30, || {
        stderr(&d).contains("cannot write the audit log")
    });
    // Room again: the next record is written, on a line of its own.
    std::fs::remove_file(&filler).unwrap();
    scans += 1;
    assert!(right(
        &g.scan(scans, &infected(scans)).unwrap(),
        Some("Eicar-Test-Signature")
    ));
    let last = format!("\"path\":\"/srv/file-{scans}\"");
    let parsed = || -> (usize, Vec<String>) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let bad: Vec<String> = text
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
            .map(str::to_owned)
            .collect();
        (text.lines().count() - bad.len(), bad)
    };
    wait_until("the record after the recovery", 30, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&last)
    });
    let (good, bad) = parsed();
    // At most the record the full disk cut is not JSON; every record is in the log or
    // counted as dropped.
    assert!(
        bad.len() <= 1 && !bad.iter().any(|l| l.contains(&last)),
        "{bad:?}"
    );
    let dropped = d.metric("svm_audit_dropped_total");
    assert_eq!(good as f64 + dropped, scans as f64, "{bad:?}");
    assert!(stderr(&d).contains("is written again"), "{}", stderr(&d));
    drop(d);
}
