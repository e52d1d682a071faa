//! End-to-end tests of `svm scan` with the real binary on a generated corpus.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use svm_tests::{code, svm};

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn detections(lines: &[Value], root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for v in lines {
        let Some(path) = v["path"].as_str() else {
            continue;
        };
        let rel = Path::new(path)
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let names: BTreeSet<String> = v["matches"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| m["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert_ne!(v["result"], "unscanned", "{v}");
        out.insert(rel, names);
    }
    out
}

#[test]
fn every_planted_positive_is_found_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let truth = corpus::generate(dir.path(), 42, 300).unwrap();
    let files = dir.path().join("files");
    let out = svm(["scan", "--json", "--threads", "2", "-d"]
        .iter()
        .map(|s| s.as_ref())
        .chain([dir.path().join("sigs").as_os_str(), files.as_os_str()]));
    assert_eq!(
        code(&out),
        1,
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    let summary = &lines.last().unwrap()["summary"];
    let got = detections(&lines, &files);
    assert_eq!(got.len(), truth.entries.len(), "every file reported once");
    let mut missed = Vec::new();
    let mut false_pos = Vec::new();
    for e in &truth.entries {
        let expected: BTreeSet<String> = e.expected.iter().cloned().collect();
        let found = got.get(&e.path).cloned().unwrap_or_default();
        if expected.is_empty() && !found.is_empty() {
            false_pos.push(format!("{} ({}) -> {found:?}", e.path, e.form));
        } else if found != expected {
            missed.push(format!(
                "{} ({}): expected {expected:?}, got {found:?}",
                e.path, e.form
            ));
        }
    }
    assert!(missed.is_empty(), "missed or wrong: {missed:#?}");
    assert!(false_pos.is_empty(), "false positives: {false_pos:#?}");
    let planted = truth
        .entries
        .iter()
        .filter(|e| !e.expected.is_empty())
        .count() as u64;
    assert_eq!(summary["infected_files"], planted);
    assert_eq!(summary["scanned_files"], truth.entries.len() as u64);
    // Every form the issue lists is among the planted positives.
    for form in [
        "md5",
        "sha1",
        "sha256",
        "sha256-anysize",
        "body-anybyte",
        "body-high-nibble",
        "body-low-nibble",
        "body-star",
        "body-jump-fixed",
        "body-jump-upto",
        "body-jump-atleast",
        "body-jump-range",
        "body-alt",
        "body-negated-alt",
        "offset-absolute",
        "offset-shift",
        "offset-eof",
        "target-pe",
        "target-elf",
        "target-macho",
        "yara-hex",
    ] {
        assert!(
            truth
                .entries
                .iter()
                .any(|e| e.form == form && !e.expected.is_empty()),
            "{form}"
        );
    }
}

#[test]
fn generation_is_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    corpus::generate(a.path(), 9, 20).unwrap();
    corpus::generate(b.path(), 9, 20).unwrap();
    for f in [
        "sigs/corpus.ndb",
        "sigs/corpus.hsb",
        "ground_truth.json",
        "files/benign/00007.bin",
    ] {
        assert_eq!(
            std::fs::read(a.path().join(f)).unwrap(),
            std::fs::read(b.path().join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn default_set_text_output_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut eicar = corpus::eicar();
    eicar.push(b'\n');
    std::fs::write(dir.path().join("eicar.com"), &eicar).unwrap();
    std::fs::write(dir.path().join("clean.txt"), b"nothing to see").unwrap();
    if Path::new("/usr/share/clamav-testfiles/clam.exe").exists() {
        std::fs::copy(
            "/usr/share/clamav-testfiles/clam.exe",
            dir.path().join("clam.exe"),
        )
        .unwrap();
    } else {
        eprintln!("SKIP part: clamav-testfiles not installed (.ci/run installs it)");
    }
    let out = svm([Path::new("scan"), dir.path()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 1, "{text}");
    let eicar_line = format!(
        "{}: Eicar-Test-Signature FOUND",
        dir.path().join("eicar.com").display()
    );
    assert!(text.lines().any(|l| l == eicar_line), "{text}");
    assert!(
        text.contains(&format!("{}: OK", dir.path().join("clean.txt").display())),
        "{text}"
    );
    if dir.path().join("clam.exe").exists() {
        assert!(
            text.contains("clam.exe: Clamav.Test.File-6 FOUND"),
            "{text}"
        );
    }
    assert!(
        text.contains("----------- SCAN SUMMARY -----------"),
        "{text}"
    );
    assert!(text.contains("Known viruses: 2"), "{text}");
    assert!(text.contains("MB/s"), "{text}");

    // Only clean files: exit 0. --infected prints nothing per file.
    let out = svm([
        Path::new("scan"),
        Path::new("-i"),
        Path::new("--no-summary"),
        &dir.path().join("clean.txt"),
    ]);
    assert_eq!(code(&out), 0);
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn limits_and_problem_files_are_errors_not_clean() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.bin"), vec![7u8; 5000]).unwrap();
    std::fs::write(dir.path().join("ok.bin"), b"fine").unwrap();
    // Over --max-filesize: unscanned, exit 2, and it says why.
    let out = svm([
        Path::new("scan"),
        Path::new("--max-filesize"),
        Path::new("1K"),
        dir.path(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 2, "{text}");
    assert!(
        text.contains("big.bin: Unscanned: size 5000 exceeds the limit of 1024 bytes ERROR"),
        "{text}"
    );
    assert!(text.contains("ok.bin: OK"), "{text}");

    // A FIFO is reported and skipped (never opened, so the scan cannot hang); a link is not
    // followed by default; a broken link followed is an error; nothing stops the scan.
    let d2 = tempfile::tempdir().unwrap();
    let fifo = d2.path().join("pipe");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink("/nonexistent/target", d2.path().join("broken")).unwrap();
    std::os::unix::fs::symlink(d2.path().join("ok.bin"), d2.path().join("good-link")).unwrap();
    std::fs::write(d2.path().join("ok.bin"), b"fine").unwrap();
    // A file whose name is not UTF-8.
    let odd = d2
        .path()
        .join(std::ffi::OsStr::from_bytes(b"name-\xff\xfe.bin"));
    std::fs::write(&odd, corpus::eicar()).unwrap();

    let out = svm([Path::new("scan"), Path::new("--json"), d2.path()]);
    let lines = json_lines(&out.stdout);
    assert_eq!(code(&out), 1, "the EICAR under an odd name is found");
    let by_name = |n: &str| {
        lines
            .iter()
            .find(|v| v["path"].as_str().is_some_and(|p| p.ends_with(n)))
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("pipe")["result"], "skipped");
    assert_eq!(by_name("broken")["result"], "skipped");
    assert_eq!(by_name("good-link")["result"], "skipped");
    assert_eq!(by_name("ok.bin")["result"], "clean");
    // Not `by_name(".bin")`: that could be ok.bin, depending on which worker finished first.
    let odd_line = lines
        .iter()
        .find(|v| v["path"].as_str().is_some_and(|p| p.contains("name-")))
        .unwrap();
    assert_eq!(odd_line["result"], "infected");

    let out = svm([
        Path::new("scan"),
        Path::new("--json"),
        Path::new("--follow-symlinks"),
        d2.path(),
    ]);
    let lines = json_lines(&out.stdout);
    assert_eq!(code(&out), 1);
    let broken = lines
        .iter()
        .find(|v| v["path"].as_str().is_some_and(|p| p.ends_with("broken")))
        .unwrap();
    assert_eq!(broken["result"], "error");
    assert_eq!(lines.last().unwrap()["summary"]["errors"], 1);

    // Without the infected file, a broken link followed makes the exit code 2.
    std::fs::remove_file(&odd).unwrap();
    let out = svm([Path::new("scan"), Path::new("--follow-symlinks"), d2.path()]);
    assert_eq!(code(&out), 2);
    // A missing path is an error too, and the rest is still scanned.
    let out = svm([
        Path::new("scan"),
        &d2.path().join("missing"),
        &d2.path().join("ok.bin"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 2);
    assert!(
        text.contains("missing: No such file or directory ERROR"),
        "{text}"
    );
    assert!(text.contains("ok.bin: OK"), "{text}");
}

#[test]
fn exclude_globs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("skipme")).unwrap();
    std::fs::write(dir.path().join("skipme/eicar.com"), corpus::eicar()).unwrap();
    std::fs::write(dir.path().join("eicar.log"), corpus::eicar()).unwrap();
    std::fs::write(dir.path().join("keep.txt"), b"x").unwrap();
    let out = svm([
        Path::new("scan"),
        Path::new("--exclude"),
        Path::new("skipme"),
        Path::new("--exclude"),
        Path::new("*.log"),
        dir.path(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 0, "{text}");
    assert!(text.contains("Excluded: 2"), "{text}");
}

#[test]
fn bad_signatures_fail_with_positions_or_load_with_skip_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bad.ndb");
    std::fs::write(
        &db,
        "Good:0:*:41424344\nBad:0:*:4142{9-1}4344\nAlsoBad:0:*:zz11\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("x.txt"), b"..ABCD..").unwrap();
    let out = svm([
        Path::new("scan"),
        Path::new("-d"),
        &db,
        &dir.path().join("x.txt"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{err}");
    assert!(err.contains("bad.ndb:2:14: error[SIG009]"), "{err}");
    assert!(err.contains("bad.ndb:3:13: error[SIG007]"), "{err}");
    let out = svm([
        Path::new("scan"),
        Path::new("--skip-invalid"),
        Path::new("-d"),
        &db,
        &dir.path().join("x.txt"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.contains("2 malformed signature line(s) were skipped"),
        "{err}"
    );
    // Unsupported kinds load with one summary warning.
    std::fs::write(dir.path().join("x.ldb"), "L;Target:0;0;4142\n").unwrap();
    std::fs::remove_file(&db).unwrap();
    std::fs::write(dir.path().join("good.ndb"), "Good:0:*:41424344\n").unwrap();
    let out = svm([
        Path::new("scan"),
        Path::new("-d"),
        dir.path(),
        &dir.path().join("x.txt"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 1, "{err}");
    assert_eq!(err.matches("warning:").count(), 1, "{err}");
    assert!(err.contains(".ldb/.ldu logical signatures: 1"), "{err}");
}

#[test]
fn sigs_info_describes_the_set() {
    let out = svm(["sigs", "info"]);
    assert_eq!(code(&out), 0);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["counts"]["body"], 2);
    assert_eq!(v["digest"].as_str().unwrap().len(), 64);
}
