//! Signed signature updates pushed to a running `svm serve` through its admin API (HTTP on a
//! unix socket): accepted only when signed by a trusted key and newer, swapped in without a
//! restart, persisted for the next start; every refusal is clear, audited, and leaves the old
//! set serving.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use svm_tests::{code, svm, wait_until, Daemon};

/// One HTTP/1.1 request over a unix socket: (status, body).
fn http(sock: &Path, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: svm\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    // A server may answer (413) and close before the whole body is sent, as HTTP allows.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    (status, body)
}

fn get_version(admin: &Path) -> u64 {
    let (st, body) = http(admin, "GET", "/v1/signatures", b"");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["version"].as_u64().unwrap()
}

/// A signed bundle of `files` at `version`, built and signed with the CLI.
fn bundle(dir: &Path, name: &str, version: u64, files: &[(&str, &[u8])], key: &Path) -> Vec<u8> {
    let src = dir.join(format!("src-{name}"));
    std::fs::create_dir_all(&src).unwrap();
    for (f, data) in files {
        std::fs::write(src.join(f), data).unwrap();
    }
    let out = dir.join(format!("{name}.svmb"));
    let v = version.to_string();
    let o = svm([
        "sigs".as_ref(),
        "build".as_ref(),
        src.as_os_str(),
        "--set-version".as_ref(),
        v.as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(code(&o), 0, "{o:?}");
    let o = svm([
        "sigs".as_ref(),
        "sign".as_ref(),
        out.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
    ]);
    assert_eq!(code(&o), 0, "{o:?}");
    std::fs::read(&out).unwrap()
}

/// A bundle made with the library, without `svm sigs build`'s check that the set loads: what
/// a compromised publisher or a bug could ship, signed with the trusted key.
fn crafted(version: u64, name: &str, data: Vec<u8>, key: &Path) -> Vec<u8> {
    use signatures::bundle;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(std::fs::read_to_string(key).unwrap().trim(), &mut seed).unwrap();
    let files = vec![(name.to_string(), data)];
    let b = bundle::build(&files, version, bundle::Counts::new(), 0).unwrap();
    bundle::sign(&b, &bundle::Keypair::from_seed(seed)).unwrap()
}

/// A publisher key pair in `dir`, and a daemon config trusting it with an admin socket:
/// (secret key, admin socket, config).
fn publisher_and_admin(dir: &Path) -> (PathBuf, PathBuf, String) {
    let (key, public) = keygen(&dir.join("publisher"));
    let admin = dir.join("admin.sock");
    let cfg = format!(
        "[update]\ntrusted_keys = [\"{}\"]\nadmin_socket = \"{}\"\n",
        public.display(),
        admin.display()
    );
    (key, admin, cfg)
}

fn keygen(prefix: &Path) -> (PathBuf, PathBuf) {
    let o = svm([
        "sigs".as_ref(),
        "keygen".as_ref(),
        "-o".as_ref(),
        prefix.as_os_str(),
    ]);
    assert_eq!(code(&o), 0, "{o:?}");
    (prefix.with_extension("key"), prefix.with_extension("pub"))
}

/// `svm check` exit code for a file holding `content`.
fn check(d: &Daemon, dir: &Path, content: &[u8]) -> i32 {
    code(&check_output(d, dir, content))
}

/// `svm check` of a file holding `content`.
fn check_output(d: &Daemon, dir: &Path, content: &[u8]) -> std::process::Output {
    let f = dir.join("probe.bin");
    std::fs::write(&f, content).unwrap();
    svm([
        "check".as_ref(),
        "--socket".as_ref(),
        d.socket.as_os_str(),
        f.as_os_str(),
    ])
}

const ONE: &[u8] = b"Demo.One:0:*:6f6e652d6d61726b6572\n"; // "one-marker"
const TWO: &[u8] = b"Demo.Two:0:*:74776f2d6d61726b6572\n"; // "two-marker"

#[test]
fn bundles_are_verified_swapped_in_persisted_and_refusals_audited() {
    let dir = tempfile::tempdir().unwrap();
    let d0 = dir.path();
    let (key, public) = keygen(&d0.join("publisher"));
    let (other_key, _) = keygen(&d0.join("stranger"));
    let admin = d0.join("admin.sock");
    let state = d0.join("state");
    let cfg = format!(
        "[update]\ntrusted_keys = [\"{}\"]\nadmin_socket = \"{}\"\nstate_dir = \"{}\"\nmax_bundle = \"64K\"\n",
        public.display(),
        admin.display(),
        state.display()
    );
    let v5 = bundle(d0, "v5", 5, &[("a.ndb", ONE)], &key);
    let v6 = bundle(d0, "v6", 6, &[("a.ndb", ONE), ("b.ndb", TWO)], &key);
    let v4 = bundle(d0, "v4", 4, &[("a.ndb", ONE)], &key);
    let wrong = bundle(d0, "wrong", 7, &[("a.ndb", ONE)], &other_key);
    let bomb = crafted(8, "bomb.ndb", vec![b'0'; 16 << 20], &key);
    let mut x = 88_172_645_463_325_252u64;
    let noise: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let big = crafted(9, "big.ndb", noise, &key);

    let d = Daemon::start(&cfg, &[]);
    // The -d set (here the embedded default) is version 1.
    assert_eq!(get_version(&admin), 1);
    assert_eq!(check(&d, d0, b"xx one-marker xx"), 0);

    let (st, body) = http(&admin, "POST", "/v1/signatures", &v5);
    assert_eq!(st, 200, "{body}");
    assert_eq!(get_version(&admin), 5);
    assert_eq!(check(&d, d0, b"xx one-marker xx"), 1);
    let (_, body) = http(&admin, "GET", "/v1/signatures", b"");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["counts"]["body"], 1, "{body}");
    assert!(info["publisher"].as_str().unwrap().len() == 16, "{body}");

    // Refused, each with its reason; the old set keeps serving.
    let mut tampered = v6.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let cut = &v6[..v6.len() / 2];
    for (what, bytes, status, reason) in [
        ("tampered", &tampered[..], 400, "does not match"),
        ("wrong key", &wrong[..], 403, "does not verify"),
        ("older", &v4[..], 409, "rollback"),
        ("replay", &v5[..], 409, "replay"),
        ("truncated", cut, 400, "cut short"),
        ("bomb", &bomb[..], 413, "ratio"),
        ("oversized", &big[..], 413, "at most 65536"),
    ] {
        let (st, body) = http(&admin, "POST", "/v1/signatures", bytes);
        assert_eq!(st, status, "{what}: {body}");
        assert!(body.contains(reason), "{what}: {body}");
        assert_eq!(get_version(&admin), 5, "{what}");
    }
    assert_eq!(check(&d, d0, b"xx one-marker xx"), 1);
    // The audit log is written by its own thread: wait for the records (bounded).
    let updates = |result: &str| -> Vec<String> {
        d.audit()
            .into_iter()
            .filter(|r| r.contains("\"op\":\"update\"") && r.contains(result))
            .collect()
    };
    wait_until("7 audited refusals", 60, || {
        updates("\"result\":\"refused\"").len() == 7
    });
    let refused = updates("\"result\":\"refused\"");
    assert!(
        refused.iter().any(|r| r.contains("rollback")),
        "{refused:?}"
    );
    assert_eq!(
        d.metric("svm_signature_updates_total{result=\"refused\"}"),
        7.0
    );

    // An explicit downgrade is allowed, and audited as one.
    let (st, body) = http(&admin, "POST", "/v1/signatures?allow_downgrade=true", &v4);
    assert_eq!(st, 200, "{body}");
    assert_eq!(get_version(&admin), 4);
    d.wait_audit(&["\"op\":\"update\"", "\"action\":\"downgrade\""], 60);
    let (st, body) = http(&admin, "POST", "/v1/signatures", &v6);
    assert_eq!(st, 200, "{body}");
    assert_eq!(check(&d, d0, b"xx two-marker xx"), 1);
    // The verdict names the version it was made with.
    let f = d0.join("probe.bin");
    let o = svm([
        "check".as_ref(),
        "--json".as_ref(),
        "--socket".as_ref(),
        d.socket.as_os_str(),
        f.as_os_str(),
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("\"sigset_version\":6"),
        "{o:?}"
    );

    // kill -9, restart without -d: the persisted bundle (verified again) serves.
    drop(d);
    assert!(state.join("current.svmb").exists());
    let d = Daemon::start(&cfg, &[]);
    assert_eq!(get_version(&admin), 6);
    assert_eq!(check(&d, d0, b"xx two-marker xx"), 1);
    // A persisted bundle that no longer verifies is not used: the daemon says so and
    // serves its -d set.
    drop(d);
    let mut bad = std::fs::read(state.join("current.svmb")).unwrap();
    let n = bad.len() - 1;
    bad[n] ^= 1;
    std::fs::write(state.join("current.svmb"), &bad).unwrap();
    let d = Daemon::start(&cfg, &[]);
    assert_eq!(get_version(&admin), 1);
    assert!(d
        .stderr
        .lock()
        .unwrap()
        .contains("persisted signature bundle is not used"));
}

/// `python3 -m http.server` on a free loopback port, serving `dir`; killed on drop.
struct HttpServer(std::process::Child, u16);

impl HttpServer {
    fn start(dir: &Path) -> Option<HttpServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            eprintln!("SKIPPED: python3 is not installed (needed for the local HTTP mirror)");
            return None;
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < until,
                "http.server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Some(HttpServer(child, port))
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn pull_mode_fetches_new_bundles_from_a_real_http_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let d0 = dir.path();
    let (key, public) = keygen(&d0.join("publisher"));
    let www = d0.join("www");
    std::fs::create_dir(&www).unwrap();
    let Some(server) = HttpServer::start(&www) else {
        return;
    };
    let admin = d0.join("admin.sock");
    let cfg = format!(
        "[update]\ntrusted_keys = [\"{}\"]\nadmin_socket = \"{}\"\n\
         mirror = \"http://127.0.0.1:{}/current.svmb\"\nmirror_interval_s = 1\n",
        public.display(),
        admin.display(),
        server.1
    );
    let v5 = bundle(d0, "v5", 5, &[("a.ndb", ONE)], &key);
    let v6 = bundle(d0, "v6", 6, &[("a.ndb", ONE), ("b.ndb", TWO)], &key);
    // Publish as a mirror does: each file with its own modification time (HTTP dates have
    // one-second resolution, and python's http.server sends no ETag), replaced atomically.
    let publish = |bytes: &[u8], age_s: u64| {
        let tmp = www.join(".current.svmb.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(age_s);
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(t)
            .unwrap();
        std::fs::rename(&tmp, www.join("current.svmb")).unwrap();
    };
    // Nothing on the mirror yet: errors, counted, and the daemon serves its own set.
    let d = Daemon::start(&cfg, &[]);
    wait_until("a failed fetch", 60, || {
        d.metric("svm_mirror_errors_total") >= 1.0
    });
    assert_eq!(get_version(&admin), 1);
    // Published: fetched, verified and swapped in.
    publish(&v5, 300);
    wait_until("version 5", 60, || get_version(&admin) == 5);
    assert_eq!(check(&d, d0, b"xx one-marker xx"), 1);
    publish(&v6, 200);
    wait_until("version 6", 60, || get_version(&admin) == 6);
    assert_eq!(check(&d, d0, b"xx two-marker xx"), 1);
    // A tampered bundle on the mirror is refused and audited; version 6 keeps serving.
    let mut bad = bundle(d0, "v7", 7, &[("a.ndb", ONE)], &key);
    let n = bad.len() - 1;
    bad[n] ^= 1;
    publish(&bad, 100);
    d.wait_audit(&["\"op\":\"update\"", "\"result\":\"refused\""], 60);
    assert_eq!(get_version(&admin), 6);
    let accepted = d
        .audit()
        .iter()
        .filter(|r| r.contains("\"op\":\"update\"") && r.contains("\"result\":\"accepted\""))
        .count();
    assert_eq!(accepted, 2, "{:?}", d.audit());
}

#[test]
fn a_crash_at_any_point_of_an_update_leaves_the_old_set_or_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let d0 = dir.path();
    let (key, public) = keygen(&d0.join("publisher"));
    let v5 = bundle(d0, "v5", 5, &[("a.ndb", ONE)], &key);
    let v6 = bundle(d0, "v6", 6, &[("a.ndb", ONE), ("b.ndb", TWO)], &key);
    // Where the process dies (abort, as kill -9), and the version a restart must serve.
    for (point, expect) in [("before-rename", 5), ("after-rename", 6), ("after-swap", 6)] {
        let admin = d0.join(format!("admin-{point}.sock"));
        let state = d0.join(format!("state-{point}"));
        let cfg = format!(
            "[update]\ntrusted_keys = [\"{}\"]\nadmin_socket = \"{}\"\nstate_dir = \"{}\"\n",
            public.display(),
            admin.display(),
            state.display()
        );
        let d = Daemon::start(&cfg, &[]);
        assert_eq!(http(&admin, "POST", "/v1/signatures", &v5).0, 200);
        drop(d);
        let mut d = Daemon::start_env(&cfg, &[], &[("SVM_TEST_CRASH_AT", point)]);
        let (status, _) = http(&admin, "POST", "/v1/signatures", &v6);
        assert_eq!(
            status, 0,
            "{point}: the daemon answered instead of crashing"
        );
        wait_until("the crash", 60, || !d.alive());
        drop(d);
        // The restart serves a complete set: the old one or the new one, never none or a mix.
        let d = Daemon::start(&cfg, &[]);
        assert_eq!(get_version(&admin), expect, "{point}");
        assert_eq!(check(&d, d0, b"xx one-marker xx"), 1, "{point}");
        let two = check(&d, d0, b"xx two-marker xx");
        assert_eq!(two, if expect == 6 { 1 } else { 0 }, "{point}");
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("current.svmb")],
            "{point}"
        );
    }
}

#[test]
fn swaps_under_a_storm_lose_no_event_and_versions_only_move_forward() {
    let dir = tempfile::tempdir().unwrap();
    let d0 = dir.path();
    let (key, public) = keygen(&d0.join("publisher"));
    let pushes: Vec<PathBuf> = (5..=7)
        .map(|v| {
            let b = bundle(d0, &format!("v{v}"), v, &[("a.ndb", ONE)], &key);
            let p = d0.join(format!("push-{v}.svmb"));
            std::fs::write(&p, b).unwrap();
            p
        })
        .collect();
    let files = d0.join("files");
    std::fs::create_dir(&files).unwrap();
    for i in 0..500 {
        std::fs::write(files.join(format!("f{i}")), format!("file {i} ").repeat(20)).unwrap();
    }
    let admin = d0.join("admin.sock");
    let cfg = d0.join("svm.toml");
    std::fs::write(
        &cfg,
        format!(
            "[update]\ntrusted_keys = [\"{}\"]\nadmin_socket = \"{}\"\n",
            public.display(),
            admin.display()
        ),
    )
    .unwrap();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "bench-storm".as_ref(),
        "--guests".as_ref(),
        "16".as_ref(),
        "--files".as_ref(),
        "500".as_ref(),
        "--from".as_ref(),
        files.as_os_str(),
        "--mode".as_ref(),
        "unique".as_ref(),
        "--reps".as_ref(),
        "1".as_ref(),
        "--json".as_ref(),
        "--admin-socket".as_ref(),
        admin.as_os_str(),
        "--push-every-ms".as_ref(),
        "20".as_ref(),
    ];
    for p in &pushes {
        args.push("--push".as_ref());
        args.push(p.as_os_str());
    }
    args.push("--".as_ref());
    args.push("--config".as_ref());
    args.push(cfg.as_os_str());
    let o = svm(args);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(code(&o), 0, "{text}{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rep = &v["reps"][0];
    let events = v["events_per_boot"].as_u64().unwrap();
    assert_eq!(events, 16 * 500);
    // No event failed: every one got its verdict, in both boots.
    assert_eq!(rep["boot1"]["verdicts"].as_u64(), Some(events), "{text}");
    assert_eq!(rep["boot2"]["verdicts"].as_u64(), Some(events), "{text}");
    let swap = &rep["swap"];
    assert_eq!(
        swap["statuses"],
        serde_json::json!([200, 200, 200]),
        "{text}"
    );
    assert_eq!(swap["version_regressions"], 0, "{text}");
    assert!(swap["max_version_seen"].as_u64().unwrap() >= 5, "{text}");
}

#[test]
fn the_admin_socket_is_private_and_a_live_one_is_not_taken_over() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("run/admin.sock");
    let cfg = format!("[update]\nadmin_socket = \"{}\"\n", admin.display());
    let d = Daemon::start(&cfg, &[]);
    let mode = std::fs::metadata(&admin).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Without trusted keys, nothing is accepted.
    let (st, body) = http(&admin, "POST", "/v1/signatures", b"SVMBNDL1");
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("no trusted publisher keys"), "{body}");
    // A second daemon with the same admin socket refuses to start.
    let o = std::process::Command::new(svm_tests::svm_bin())
        .arg("serve")
        .arg("--config")
        .arg(d.dir.path().join("svm.toml"))
        .arg("--listen")
        .arg(dir.path().join("other.sock"))
        .args(["--metrics", ""])
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use"),
        "{o:?}"
    );
    assert_eq!(get_version(&admin), 1);
}

#[test]
fn a_hash_only_update_revalidates_cached_verdicts_without_rescanning() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let d0 = dir.path();
    let (key, admin, cfg) = publisher_and_admin(d0);
    let content = b"a file every clone has, clean until a hash names it".repeat(10);
    let sha = hex::encode(sha2::Sha256::digest(&content));
    let other = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855:0:Demo.Empty\n";
    let named = format!("{sha}:{}:Demo.Hash.Hit\n", content.len());
    let v5 = bundle(d0, "v5", 5, &[("a.ndb", ONE), ("h.hsb", b"")], &key);
    let v6 = bundle(
        d0,
        "v6",
        6,
        &[("a.ndb", ONE), ("h.hsb", other.as_bytes())],
        &key,
    );
    let v7 = bundle(
        d0,
        "v7",
        7,
        &[
            ("a.ndb", ONE),
            ("h.hsb", format!("{other}{named}").as_bytes()),
        ],
        &key,
    );
    let v8 = bundle(
        d0,
        "v8",
        8,
        &[
            ("a.ndb", ONE),
            ("b.ndb", TWO),
            ("h.hsb", format!("{other}{named}").as_bytes()),
        ],
        &key,
    );
    let d = Daemon::start(&cfg, &[]);
    assert_eq!(http(&admin, "POST", "/v1/signatures", &v5).0, 200);
    let scans = || d.metric("svm_scans_total");
    // Scanned once under v5: clean.
    assert_eq!(check(&d, d0, &content), 0);
    let after_first = scans();
    assert!(after_first >= 1.0);
    // v6 only adds a hash (of other content): the cached verdict is revalidated, not rescanned.
    assert_eq!(http(&admin, "POST", "/v1/signatures", &v6).0, 200);
    assert_eq!(check(&d, d0, &content), 0);
    assert_eq!(scans(), after_first);
    assert_eq!(d.metric("svm_cache_revalidated_total"), 1.0);
    // v7 adds the content's own hash: found by the lookup, still without a rescan.
    assert_eq!(http(&admin, "POST", "/v1/signatures", &v7).0, 200);
    let (_, body) = http(&admin, "GET", "/v1/signatures", b"");
    // v5 (from the default set) added a body signature: v1's clean verdicts need a scan
    // against it; v5's and v6's only a lookup.
    assert!(body.contains("\"revalidates_from\":[6,5,1]"), "{body}");
    let o = check_output(&d, d0, &content);
    assert_eq!(code(&o), 1, "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Demo.Hash.Hit"),
        "{o:?}"
    );
    assert_eq!(scans(), after_first);
    assert_eq!(d.metric("svm_cache_revalidated_total"), 2.0);
    // v8 adds a body signature: an infected verdict is never revalidated, the content is
    // scanned again in full.
    assert_eq!(http(&admin, "POST", "/v1/signatures", &v8).0, 200);
    let (_, body) = http(&admin, "GET", "/v1/signatures", b"");
    assert!(body.contains("\"revalidates_from\":[7,6,5,1]"), "{body}");
    assert_eq!(check(&d, d0, &content), 1);
    assert!(scans() > after_first);
    assert_eq!(d.metric("svm_cache_delta_rescans_total"), 0.0);
}

#[test]
fn a_set_loaded_with_d_is_revalidated_by_a_hash_only_bundle_of_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let d0 = dir.path();
    let (key, admin, cfg) = publisher_and_admin(d0);
    let db = d0.join("db");
    std::fs::create_dir(&db).unwrap();
    std::fs::write(db.join("a.ndb"), ONE).unwrap();
    std::fs::write(db.join("h.hsb"), b"").unwrap();
    let extra = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855:0:Demo.Empty\n";
    let v2 = bundle(
        d0,
        "v2",
        2,
        &[("a.ndb", ONE), ("h.hsb", extra.as_bytes())],
        &key,
    );
    let d = Daemon::start(&cfg, &["-d", db.to_str().unwrap()]);
    assert_eq!(check(&d, d0, b"clean content of a -d set"), 0);
    let scans = d.metric("svm_scans_total");
    assert_eq!(http(&admin, "POST", "/v1/signatures", &v2).0, 200);
    assert_eq!(check(&d, d0, b"clean content of a -d set"), 0);
    assert_eq!(d.metric("svm_scans_total"), scans);
    assert_eq!(d.metric("svm_cache_revalidated_total"), 1.0);
}

#[test]
fn a_body_update_rescans_cached_contents_against_the_added_signatures_alone() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let d0 = dir.path();
    let (key, admin, cfg) = publisher_and_admin(d0);
    let plain = b"plain content that no signature names ".repeat(10);
    let marked = b"content that a later update names: two-marker ".repeat(10);
    let other = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855:0:Demo.Empty\n";
    let plain_hash = format!(
        "{}:{}:Demo.Plain\n",
        hex::encode(sha2::Sha256::digest(&plain)),
        plain.len()
    );
    let v2 = bundle(d0, "v2", 2, &[("a.ndb", ONE), ("h.hsb", b"")], &key);
    let v3 = bundle(
        d0,
        "v3",
        3,
        &[("a.ndb", ONE), ("h.hsb", other.as_bytes())],
        &key,
    );
    let v4 = bundle(
        d0,
        "v4",
        4,
        &[("a.ndb", ONE), ("b.ndb", TWO), ("h.hsb", other.as_bytes())],
        &key,
    );
    let v5 = bundle(
        d0,
        "v5",
        5,
        &[
            ("a.ndb", ONE),
            ("b.ndb", TWO),
            ("h.hsb", format!("{other}{plain_hash}").as_bytes()),
        ],
        &key,
    );
    let d = Daemon::start(&cfg, &[]);
    let epoch = || {
        let (_, body) = http(&admin, "GET", "/v1/signatures", b"");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (v["cache_epoch"].as_u64().unwrap(), body)
    };
    assert_eq!(http(&admin, "POST", "/v1/signatures", &v2).0, 200);
    assert_eq!(check(&d, d0, &plain), 0);
    assert_eq!(check(&d, d0, &marked), 0);
    let scans = d.metric("svm_scans_total");
    let (e2, _) = epoch();
    // A hash of content nobody has: no clean verdict changed, agents keep their caches.
    assert_eq!(http(&admin, "POST", "/v1/signatures", &v3).0, 200);
    let (e3, body) = epoch();
    assert_eq!(e3, e2, "{body}");
    assert_eq!(check(&d, d0, &plain), 0);
    assert_eq!(check(&d, d0, &marked), 0);
    assert_eq!(d.metric("svm_scans_total"), scans);
    // A body signature: clean verdicts may change, the epoch moves, and each cached content
    // is scanned against that one signature only.
    assert_eq!(http(&admin, "POST", "/v1/signatures", &v4).0, 200);
    let (e4, body) = epoch();
    assert_ne!(e4, e3, "{body}");
    assert!(
        body.contains("{\"version\":3,\"rescan_against_added\":1}"),
        "{body}"
    );
    assert_eq!(check(&d, d0, &plain), 0);
    let o = check_output(&d, d0, &marked);
    assert_eq!(code(&o), 1, "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Demo.Two"),
        "{o:?}"
    );
    assert_eq!(d.metric("svm_cache_delta_rescans_total"), 2.0);
    // A hash naming a content cached clean: its verdict changed, so the epoch moves.
    assert_eq!(http(&admin, "POST", "/v1/signatures", &v5).0, 200);
    let (e5, body) = epoch();
    assert_ne!(e5, e4, "{body}");
    assert_eq!(check(&d, d0, &plain), 1);
}

/// `curl` over TLS to the admin API on TCP: (HTTP status, body); status 0 when curl failed.
fn curl_tls(ca: &Path, url: &str, token: Option<&str>, post: Option<&Path>) -> (u16, String) {
    let mut c = std::process::Command::new("curl");
    c.args(["-s", "-w", "\n%{http_code}", "--cacert"]).arg(ca);
    if let Some(t) = token {
        c.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    if let Some(p) = post {
        c.arg("--data-binary").arg(format!("@{}", p.display()));
    }
    let o = c.arg(url).output().expect("curl runs");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn the_admin_api_on_tcp_is_tls_only_and_needs_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let d0 = dir.path();
    let (key, public) = keygen(&d0.join("publisher"));
    // A self-signed certificate for 127.0.0.1, made by the openssl CLI.
    let (cert, tls_key) = (d0.join("cert.pem"), d0.join("key.pem"));
    let o = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=svm-admin"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&tls_key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(o.status.success(), "{o:?}");
    let token = "admin-token-0123456789abcdef";
    let token_file = d0.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let cfg = format!(
        "[update]\ntrusted_keys = [\"{}\"]\nadmin_listen = \"127.0.0.1:0\"\n\
         admin_tls_cert = \"{}\"\nadmin_tls_key = \"{}\"\nadmin_token_file = \"{}\"\n",
        public.display(),
        cert.display(),
        tls_key.display(),
        token_file.display()
    );
    let d = Daemon::start(&cfg, &[]);
    let log = d.stderr.lock().unwrap().clone();
    let addr = log
        .split("admin API on https://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no admin address in {log}"))
        .to_owned();
    let url = format!("https://{addr}/v1/signatures");
    // With the token: the set in use.
    let (st, body) = curl_tls(&cert, &url, Some(token), None);
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"version\":1"), "{body}");
    // Without it, or with a wrong one: 401, and a refused push is audited.
    assert_eq!(curl_tls(&cert, &url, None, None).0, 401);
    assert_eq!(
        curl_tls(&cert, &url, Some("admin-token-0123456789abcdeX"), None).0,
        401
    );
    let b = bundle(d0, "v2", 2, &[("a.ndb", ONE)], &key);
    let bfile = d0.join("v2.svmb");
    std::fs::write(&bfile, &b).unwrap();
    assert_eq!(
        curl_tls(&cert, &url, Some("wrong-token-0123456789"), Some(&bfile)).0,
        401
    );
    d.wait_audit(&["\"op\":\"update\"", "no valid bearer token"], 10);
    // A push with the token is accepted.
    let (st, body) = curl_tls(&cert, &url, Some(token), Some(&bfile));
    assert_eq!(st, 200, "{body}");
    let (_, body) = curl_tls(&cert, &url, Some(token), None);
    assert!(body.contains("\"version\":2"), "{body}");
    // Plain HTTP on the TLS port gets no answer from the API.
    let plain = curl_tls(
        &cert,
        &format!("http://{addr}/v1/signatures"),
        Some(token),
        None,
    );
    assert_ne!(plain.0, 200, "{plain:?}");
    // A connection that never says hello blocks nobody.
    let _silent = std::net::TcpStream::connect(&addr).unwrap();
    assert_eq!(curl_tls(&cert, &url, Some(token), None).0, 200);
}
