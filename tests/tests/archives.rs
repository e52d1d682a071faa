//! Scanning inside containers with `svm scan`: Debian's `clamav-testfiles` (every zip, gz,
//! bz2 and tar variant of `clam.exe` that svm opens), xz made here, and hostile archives.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;
use svm_tests::{code, svm};

const TESTFILES: &str = "/usr/share/clamav-testfiles";
const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

fn scan(db: Option<&Path>, target: &Path) -> (i32, String) {
    let mut args: Vec<std::ffi::OsString> = vec!["scan".into(), "--no-summary".into()];
    if let Some(db) = db {
        args.push("-d".into());
        args.push(db.into());
    }
    args.push(target.into());
    let o = svm(&args);
    (code(&o), String::from_utf8_lossy(&o.stdout).into_owned())
}

fn run(cmd: &str, args: &[&str], dir: &Path) {
    let o = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{cmd} {args:?}: {o:?}");
}

#[test]
fn every_container_variant_of_clam_exe_is_detected() {
    let t = Path::new(TESTFILES);
    if !t.join("clam.exe").exists() {
        eprintln!("SKIP: {TESTFILES} is missing (.ci/run installs clamav-testfiles)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A signature for the inner clam.exe alone: its MD5, which only a member hash can match.
    let exe = std::fs::read(t.join("clam.exe")).unwrap();
    let db = dir.path().join("inner.hdb");
    let md5 = {
        use md5::Digest;
        hex::encode(md5::Md5::digest(&exe))
    };
    std::fs::write(&db, format!("{md5}:{}:Inner.Clam.Exe\n", exe.len())).unwrap();
    // xz, and a tar.bz2 nested in a zip, made here from the same clam.exe.
    std::fs::copy(t.join("clam.exe"), dir.path().join("clam.exe")).unwrap();
    run("xz", &["-k", "clam.exe"], dir.path());
    run("tar", &["cjf", "clam.tar.bz2", "clam.exe"], dir.path());
    run("zip", &["-q", "nested.zip", "clam.tar.bz2"], dir.path());
    let made = |n: &str| dir.path().join(n);
    let cases: Vec<(PathBuf, &str)> = vec![
        (t.join("clam.zip"), "clam.exe"),
        (t.join("clam.exe.bz2"), "(bzip2)"),
        (t.join("clam.tar.gz"), "clam.exe"),
        (t.join("clam.bz2.zip"), "clam.exe"), // a bzip2-compressed zip member
        (t.join("clam_cache_emax.tgz"), "clam.exe"),
        (made("clam.exe.xz"), "(xz)"),
        (made("nested.zip"), "clam.tar.bz2/(bzip2)/clam.exe"),
    ];
    for (file, inner) in &cases {
        // The raw file does not hash to clam.exe: found only by opening the container.
        let (rc, out) = scan(Some(&db), file);
        assert_eq!(rc, 1, "{}: {out}", file.display());
        assert!(
            out.contains("Inner.Clam.Exe FOUND"),
            "{}: {out}",
            file.display()
        );
        // The JSON report names the member.
        let o = svm([
            "scan".as_ref(),
            "--json".as_ref(),
            "-d".as_ref(),
            db.as_os_str(),
            file.as_os_str(),
        ]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("\"inner\":\""), "{text}");
        assert!(
            text.contains(inner),
            "{} should name {inner}: {text}",
            file.display()
        );
        // And the default set's body signature for clam.exe (a PE target) matches inside.
        let (rc, out) = scan(None, file);
        assert_eq!(rc, 1, "{}: {out}", file.display());
        assert!(out.contains("Clamav.Test.File-6 FOUND"), "{out}");
    }
    // With containers left closed (clamscan's --scan-archive=no), the member is not seen.
    let o = svm([
        "scan".as_ref(),
        "--scan-archive=no".as_ref(),
        "-d".as_ref(),
        db.as_os_str(),
        t.join("clam.zip").as_os_str(),
    ]);
    assert_eq!(code(&o), 0, "{o:?}");
}

#[test]
fn hostile_archives_are_bounded_and_never_clean() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A decompression bomb: 200 MiB of zeros, gzipped to about 200 kB; over the 100 MiB
    // member limit, so not known to be clean.
    std::fs::write(d.join("zeros"), vec![0u8; 200 << 20]).unwrap();
    run("gzip", &["-1", "zeros"], d);
    let (rc, out) = scan(None, &d.join("zeros.gz"));
    assert_eq!(rc, 2, "{out}");
    assert!(out.contains("archive limits exceeded"), "{out}");
    assert!(!out.contains(": OK"), "{out}");
    // Under the strict policy (clamscan's --alert-exceeds-max), a detection.
    let o = svm([
        "scan".as_ref(),
        "--no-summary".as_ref(),
        "--alert-exceeds-max".as_ref(),
        d.join("zeros.gz").as_os_str(),
    ]);
    assert_eq!(code(&o), 1, "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Heuristics.Limits.Exceeded FOUND"),
        "{o:?}"
    );
    // `../` member names are reported as given; nothing is written anywhere.
    std::fs::create_dir_all(d.join("a/b")).unwrap();
    std::fs::write(d.join("a/b/eicar.com"), EICAR).unwrap();
    run(
        "tar",
        &[
            "cf",
            "dots.tar",
            "-C",
            "a/b",
            "--transform",
            "s|^|../../|",
            "eicar.com",
        ],
        d,
    );
    let o = svm([
        "scan".as_ref(),
        "--json".as_ref(),
        d.join("dots.tar").as_os_str(),
    ]);
    assert_eq!(code(&o), 1, "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("\"inner\":\"../../eicar.com\""),
        "{o:?}"
    );
    // Nested 20 deep (more than the recursion limit): unscanned, not clean.
    std::fs::write(d.join("l0"), b"innermost").unwrap();
    for i in 0..20 {
        run("zip", &["-q", &format!("l{}", i + 1), &format!("l{i}")], d);
        std::fs::rename(
            d.join(format!("l{}.zip", i + 1)),
            d.join(format!("l{}", i + 1)),
        )
        .unwrap();
    }
    let (rc, out) = scan(None, &d.join("l20"));
    assert_eq!(rc, 2, "{out}");
    assert!(out.contains("nested deeper"), "{out}");
    // A truncated archive: its bytes are still scanned, and a clean prefix stays clean.
    let zip = std::fs::read(d.join("l1")).unwrap();
    std::fs::write(d.join("cut.zip"), &zip[..zip.len() / 2]).unwrap();
    let (rc, out) = scan(None, &d.join("cut.zip"));
    assert_eq!(rc, 0, "{out}");
}
