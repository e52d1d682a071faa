//! `svm sigs keygen | build | sign | verify | inspect` as a publisher and an operator use
//! them: a bundle verifies only with the right key and untouched, and every refusal says why.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use svm_tests::{code, svm};

fn run(args: &[&str]) -> (i32, String) {
    let o = svm(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (code(&o), text)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_publisher_builds_signs_and_an_operator_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sigs = d.join("sigs");
    std::fs::create_dir(&sigs).unwrap();
    std::fs::write(
        sigs.join("local.ndb"),
        "Demo.Body:0:*:68656c6c6f20776f726c64\n",
    )
    .unwrap();
    std::fs::write(
        sigs.join("local.hsb"),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855:0:Demo.Empty\n",
    )
    .unwrap();
    let (key, other) = (d.join("pub1"), d.join("pub2"));
    assert_eq!(run(&["sigs", "keygen", "-o", s(&key)]).0, 0);
    assert_eq!(run(&["sigs", "keygen", "-o", s(&other)]).0, 0);
    // The secret key is private to its owner, and never overwritten.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key.with_extension("key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (c, t) = run(&["sigs", "keygen", "-o", s(&key)]);
    assert_eq!(c, 2, "{t}");
    assert!(t.contains("refusing to overwrite"), "{t}");

    let b = d.join("set.svmb");
    let (c, t) = run(&["sigs", "build", s(&sigs), "--set-version", "7", "-o", s(&b)]);
    assert_eq!(c, 0, "{t}");
    let pubkey = key.with_extension("pub");
    // Unsigned: refused.
    let (c, t) = run(&["sigs", "verify", s(&b), "--trust", s(&pubkey)]);
    assert_eq!(c, 2, "{t}");
    assert!(t.contains("not signed"), "{t}");
    let (c, t) = run(&[
        "sigs",
        "sign",
        s(&b),
        "--key",
        s(&key.with_extension("key")),
    ]);
    assert_eq!(c, 0, "{t}");
    let (c, t) = run(&["sigs", "verify", s(&b), "--trust", s(&pubkey), "--json"]);
    assert_eq!(c, 0, "{t}");
    let v: serde_json::Value = serde_json::from_str(t.lines().next().unwrap()).unwrap();
    assert_eq!(v["set_version"], 7);
    assert_eq!(v["counts"]["body"], 1);
    assert_eq!(v["counts"]["sha256"], 1);
    // The key as hex works too; the wrong key does not.
    let hex = std::fs::read_to_string(&pubkey).unwrap();
    assert_eq!(run(&["sigs", "verify", s(&b), "--trust", hex.trim()]).0, 0);
    let (c, t) = run(&[
        "sigs",
        "verify",
        s(&b),
        "--trust",
        s(&other.with_extension("pub")),
    ]);
    assert_eq!(c, 2, "{t}");
    assert!(t.contains("does not verify with any trusted key"), "{t}");
    // inspect shows the manifest without trusting it.
    let (c, t) = run(&["sigs", "inspect", s(&b)]);
    assert_eq!(c, 0, "{t}");
    let m: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(m["signed"], true);
    assert_eq!(m["verified"], false);
    assert_eq!(m["manifest"]["files"].as_array().unwrap().len(), 2);
    // One flipped byte in the payload, or a cut, is refused.
    let good = std::fs::read(&b).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    std::fs::write(d.join("tampered.svmb"), &bad).unwrap();
    let (c, t) = run(&[
        "sigs",
        "verify",
        s(&d.join("tampered.svmb")),
        "--trust",
        s(&pubkey),
    ]);
    assert_eq!(c, 2, "{t}");
    assert!(t.contains("refused"), "{t}");
    std::fs::write(d.join("cut.svmb"), &good[..good.len() / 2]).unwrap();
    let (c, t) = run(&[
        "sigs",
        "verify",
        s(&d.join("cut.svmb")),
        "--trust",
        s(&pubkey),
    ]);
    assert_eq!(c, 2, "{t}");

    // A directory whose signatures do not load is never packed.
    std::fs::write(sigs.join("broken.ndb"), "Bad.Sig:0:*:41{5-2}42\n").unwrap();
    let (c, t) = run(&[
        "sigs",
        "build",
        s(&sigs),
        "--set-version",
        "8",
        "-o",
        s(&d.join("x")),
    ]);
    assert_eq!(c, 2, "{t}");
    assert!(t.contains("broken.ndb"), "{t}");
    assert!(!d.join("x").exists());
}
